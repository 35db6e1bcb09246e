#!/usr/bin/env python3
"""`conveyor-artifact`: what a job calls to record an artifact that is not a file of its
workspace. Standard library only: the runner copies this file into each job's workspace
(on its PATH as `conveyor-artifact`), so it works with any python3, without Conveyor.

    conveyor-artifact docker 127.0.0.1:5000/app:1.2 --digest-file digest.txt
    conveyor-artifact docker registry.example.com/app:1.2 --digest sha256:0123...

It appends one JSON line to the file named by $CI_ARTIFACTS_RECORD; after the job's
steps the runner records each line as a DOCKER artifact (reference + manifest digest),
under the same `artifacts: when:` rule as the job's other artifacts.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
REFERENCE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,999}$")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="conveyor-artifact", description="Record an artifact of this job.")
    commands = parser.add_subparsers(dest="command", required=True)
    docker = commands.add_parser("docker", help="an image pushed to a registry")
    docker.add_argument("reference", help="registry/name:tag as pushed")
    source = docker.add_mutually_exclusive_group(required=True)
    source.add_argument("--digest-file", help="the file `buildah push --digestfile` wrote")
    source.add_argument("--digest", help="the manifest digest, sha256:...")
    docker.add_argument("--name", default="", help="a name to show (default: the reference)")
    args = parser.parse_args(argv)

    record = os.environ.get("CI_ARTIFACTS_RECORD")
    if not record:
        print("conveyor-artifact: CI_ARTIFACTS_RECORD is not set (not in a Conveyor job?)", file=sys.stderr)
        return 2
    if args.digest_file:
        try:
            with open(args.digest_file, encoding="utf-8") as handle:
                digest = handle.read().strip()
        except OSError as exc:
            print(f"conveyor-artifact: cannot read {args.digest_file}: {exc}", file=sys.stderr)
            return 2
    else:
        digest = args.digest.strip()
    if not DIGEST.match(digest):
        print(f"conveyor-artifact: {digest!r} is not a digest (sha256: and 64 hex digits)", file=sys.stderr)
        return 2
    if not REFERENCE.match(args.reference):
        print(f"conveyor-artifact: {args.reference!r} is not an image reference", file=sys.stderr)
        return 2
    line = {"type": "DOCKER", "reference": args.reference, "digest": digest, "name": args.name}
    with open(record, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(line) + "\n")
    print(f"conveyor-artifact: {args.reference}@{digest} will be recorded after the job's steps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
