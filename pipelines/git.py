"""Reading repositories: a bare mirror per repository, refreshed on demand.

Everything goes through `git` subprocesses with a fixed, minimal environment:
no prompts, and only safe transports (the `ext::` transport would run arbitrary
commands from a clone URL).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

# Transports a clone URL may use. Local paths count as "file".
ALLOWED_PROTOCOLS = "file:git:http:https:ssh"
GIT_TIMEOUT_S = 300
_SHA_RE = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")


class GitError(Exception):
    """A git operation failed; the message is fit to show to a user."""


@dataclass(frozen=True)
class Commit:
    sha: str
    message: str
    author: str


def git_env() -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),  # noqa: S108 (git needs a HOME; it writes nothing there)
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ALLOW_PROTOCOL": ALLOWED_PROTOCOLS,
        "GIT_CONFIG_NOSYSTEM": "1",
        "LC_ALL": "C",
    }
    # SSH keys for private forges come from the server's own environment, never from a job.
    if "GIT_SSH_COMMAND" in os.environ:
        env["GIT_SSH_COMMAND"] = os.environ["GIT_SSH_COMMAND"]
    return env


def run_git(
    *args: str, cwd: Path | None = None, check: bool = True, input: str | None = None, pass_fds: tuple[int, ...] = ()
) -> subprocess.CompletedProcess[bytes]:
    """`pass_fds`: descriptors git and its own children inherit (a lock they must hold too)."""
    try:
        result = subprocess.run(
            ["git", *args],
            cwd=cwd,
            env=git_env(),
            input=input.encode() if input is not None else None,
            capture_output=True,
            timeout=GIT_TIMEOUT_S,
            check=False,
            pass_fds=pass_fds,
        )
    except subprocess.TimeoutExpired:
        raise GitError(f"git {args[0]} timed out after {GIT_TIMEOUT_S}s") from None
    if check and result.returncode != 0:
        stderr = result.stderr.decode(errors="replace").strip().splitlines()
        detail = stderr[-1] if stderr else f"exit code {result.returncode}"
        raise GitError(f"git {args[0]} failed: {detail}")
    return result


def mirror_path(repository_id: int) -> Path:
    return Path(settings.CONVEYOR_MIRRORS_DIR) / f"{repository_id}.git"


@contextlib.contextmanager
def _mirror_lock(path: Path) -> Iterator[int]:
    """Two fetches into one mirror (two webhooks of a repository) go one after the other.

    Yields the lock's descriptor, which the fetch's git processes inherit (run_git's pass_fds):
    the lock is held until the last of them exits. A Celery worker killed mid-fetch leaves its
    git running, and a second fetch beside it would write the same objects (two fetches over
    git's dumb HTTP protocol write an object through the same temporary file, and the mirror
    ends up with a corrupt one). Waited for at most GIT_TIMEOUT_S."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "w") as handle:
        started = time.monotonic()
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                waited = time.monotonic() - started
                if waited > GIT_TIMEOUT_S:
                    raise GitError(f"another fetch of this repository still runs after {GIT_TIMEOUT_S}s") from None
                # A webhook burst of one repository queues its fetches here one after the other,
                # each some tens of ms: looked at often at first, the lock goes on at once.
                time.sleep(0.002 if waited < 1.0 else 0.05)
        yield handle.fileno()


def validate_ref(ref: str) -> str:
    """Reject refs git would misread (options, `..`, control characters): refs come from users and forges."""
    if not ref or ref.startswith("-") or len(ref) > 255:
        raise GitError(f"invalid ref {ref!r}")
    result = run_git("check-ref-format", "--allow-onelevel", f"refs/heads/{ref}", check=False)
    if result.returncode != 0:
        raise GitError(f"invalid ref {ref!r}")
    return ref


def mirror_fetch(*, repository_id: int, clone_url: str, extra_refs: tuple[str, ...] = ()) -> Path:
    """Create or refresh the bare mirror of a repository; returns its path.

    `extra_refs` are full ref names fetched too, if the server has them (a pull request's
    head ref, `refs/pull/N/head`, holds the commits of a pull request from a fork).
    """
    if clone_url.startswith("-"):
        raise GitError(f"invalid clone URL {clone_url!r}")
    for ref in extra_refs:
        if not ref.startswith("refs/") or run_git("check-ref-format", ref, check=False).returncode != 0:
            raise GitError(f"invalid ref {ref!r}")
    path = mirror_path(repository_id)
    with _mirror_lock(path) as lock:
        if not (path / "HEAD").exists():
            run_git("init", "--quiet", "--bare", str(path))
        run_git("-C", str(path), "config", "remote.origin.url", clone_url)
        # No automatic gc inside the fetch: it would go on in the background holding the lock
        # (see _mirror_lock), and the next webhook of the repository would wait for it.
        fetch = ("-C", str(path), "-c", "gc.auto=0", "-c", "maintenance.auto=false", "fetch", "--quiet", "--force")
        refspecs = ("+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*")
        run_git(*fetch, "--no-tags", "--prune", "origin", *refspecs, pass_fds=(lock,))
        for ref in extra_refs:
            # Best effort: not every server keeps such refs, and the commit may be on a branch anyway.
            run_git(*fetch, "--no-tags", "origin", f"+{ref}:{ref}", check=False, pass_fds=(lock,))
        # The gc the fetch would have started, when the mirror needs one: in the background
        # as before, without the lock (git keeps a gc and later fetches apart itself).
        run_git("-C", str(path), "gc", "--auto", "--quiet", check=False)
    return path


def resolve_ref(*, mirror: Path, ref: str, is_tag: bool | None = None) -> tuple[str, bool]:
    """Branch or tag name -> (commit sha, is_tag). A full sha is accepted as is."""
    if _SHA_RE.match(ref):
        return run_git("-C", str(mirror), "rev-parse", "--verify", f"{ref}^{{commit}}").stdout.decode().strip(), False
    validate_ref(ref)
    candidates = []
    if is_tag in (None, False):
        candidates.append((f"refs/heads/{ref}", False))
    if is_tag in (None, True):
        candidates.append((f"refs/tags/{ref}", True))
    for full, tag in candidates:
        result = run_git("-C", str(mirror), "rev-parse", "--verify", "--quiet", f"{full}^{{commit}}", check=False)
        if result.returncode == 0:
            return result.stdout.decode().strip(), tag
    raise GitError(f"no branch or tag named {ref!r} in the repository")


def commit_info(*, mirror: Path, sha: str) -> Commit:
    output = run_git("-C", str(mirror), "log", "-1", "--format=%H%x00%an <%ae>%x00%B", sha, "--").stdout
    full_sha, author, message = output.decode(errors="replace").split("\0", 2)
    return Commit(sha=full_sha.strip(), author=author, message=message.strip())


def read_file(*, mirror: Path, sha: str, path: str, max_bytes: int) -> str | None:
    """The text of `path` at commit `sha`, or None if there is no such file. Refuses huge files."""
    path = path.lstrip("/")
    if not path or ".." in Path(path).parts:
        raise GitError(f"invalid path {path!r}")
    spec = f"{sha}:{path}"
    kind = run_git("-C", str(mirror), "cat-file", "-t", spec, check=False)
    if kind.returncode != 0:
        return None
    if kind.stdout.decode().strip() != "blob":
        raise GitError(f"{path} is not a file")
    size = int(run_git("-C", str(mirror), "cat-file", "-s", spec).stdout.decode().strip())
    if size > max_bytes:
        raise GitError(f"{path} is {size} bytes; the limit is {max_bytes}")
    data = run_git("-C", str(mirror), "cat-file", "blob", spec).stdout
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise GitError(f"{path} is not valid UTF-8") from None
