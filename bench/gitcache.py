"""The runner's git cache: what a new commit of a repository costs a runner's host.

A repository of `files` files (hex text, which compresses as source does) gets `commits`
commits of one changed file each. For each new commit, side by side and in turn:
- cache: `GitCache.fetch` into the host's cache, which names the commits it fetched before
  to the server (the refs it keeps): the commit's new objects only;
- snapshot: the same shallow fetch by sha into a cache that names none. That is what the
  cache did before it kept refs, and what a runner without a cache does for every job: a
  whole snapshot of the repository, written to disk again.
Reported per new commit: the fetch's time and the bytes it added to the cache's objects.
Local (a path, as `git` serves it over ssh): a network would add the transfer of those bytes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import percentile

COLUMNS = ["fetch", "repository_mb", "commits", "ms_p50", "ms_p99", "kb_added_p50", "kb_added_p99"]


def _git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def _commit(source: Path, message: str) -> str:
    _git("add", "-A", cwd=source)
    _git("-c", "user.name=bench", "-c", "user.email=bench@example.test", "commit", "--quiet", "-m", message, cwd=source)
    return _git("rev-parse", "HEAD", cwd=source)


def new_commits(*, files: int, commits: int, file_kb: int = 8) -> list[dict[str, object]]:
    from runners.executors.shell import _NO_PRUNING, GitCache, _tree_bytes

    root = Path(tempfile.mkdtemp(prefix="conveyor-bench-git-"))
    try:
        source = root / "source"
        source.mkdir()
        _git("init", "--quiet", "-b", "main", cwd=source)
        for i in range(files):
            (source / f"f{i:05}.txt").write_text(os.urandom(file_kb * 512).hex())
        first = _commit(source, "initial")
        cache = GitCache(root / "cache", max_age_s=86400.0, max_bytes=1 << 40)
        snapshots = root / "snapshots.git"
        _git("init", "--quiet", "--bare", "--template=", str(snapshots), cwd=root)
        cache.fetch(str(source), first)  # both start with the first commit
        _git(*_NO_PRUNING, "fetch", "--quiet", "--no-tags", "--depth", "1", str(source), first, cwd=snapshots)
        objects = {"cache": cache.repository(str(source)) / "objects", "snapshot": snapshots / "objects"}
        samples: dict[str, list[tuple[float, int]]] = {"cache": [], "snapshot": []}
        for n in range(commits):
            (source / f"f{n % files:05}.txt").write_text(os.urandom(file_kb * 512).hex())
            sha = _commit(source, f"change {n}")
            for name in ("cache", "snapshot") if n % 2 == 0 else ("snapshot", "cache"):
                before = _tree_bytes(objects[name])
                started = time.perf_counter()
                if name == "cache":
                    cache.fetch(str(source), sha)
                else:
                    fetch = ("fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--depth", "1")
                    _git(*_NO_PRUNING, *fetch, str(source), sha, cwd=snapshots)
                samples[name].append((time.perf_counter() - started, _tree_bytes(objects[name]) - before))
        size_mb = round(_tree_bytes(source) / 2**20 - _tree_bytes(source / ".git") / 2**20, 1)
        return [_row(name, samples[name], size_mb) for name in ("cache", "snapshot")]
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _row(name: str, samples: list[tuple[float, int]], size_mb: float) -> dict[str, object]:
    seconds, added = [s for s, _ in samples], [b for _, b in samples]
    return {
        "fetch": name,
        "repository_mb": size_mb,
        "commits": len(samples),
        "ms_p50": round(percentile(seconds, 50) * 1000, 1),
        "ms_p99": round(percentile(seconds, 99) * 1000, 1),
        "kb_added_p50": round(percentile(added, 50) / 1024, 1),
        "kb_added_p99": round(percentile(added, 99) / 1024, 1),
    }
