"""The shell executor: each job in a fresh workspace on the runner's host.

Script lines run one per process (each is a Step with its own exit code and log), but
they behave like one shell session as in GitLab: the working directory and exported
variables carry over from line to line through a small state file.

The checkout takes its objects from a cache of the host (`GitCache`), so that a commit is
fetched once per host rather than once per job. A workspace is locked while its job runs
and emptied once the job is reported (`cleanup`): back to what a fresh one holds, for the
runner's next job (`_reset_tree`), or removed when that cannot be done. One whose runner
died is removed by the next runner that starts on the host (`sweep_workspaces`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import secrets
import selectors
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from django.conf import settings
from django.db import connections

from pipelines.git import GitError, run_git
from runners.artifacts import JobArtifacts
from runners.deploy.job import run_deploy_step
from runners.executors.base import JobResult, LogStream, Reporter
from runners.services import ClaimedJob, ClaimedStep, StepEnd
from runs.models import StepKind, StepStatus

logger = logging.getLogger(__name__)

_KILL_GRACE_S = 2.0
_DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
# A workspace nobody holds the lock of is a dead runner's, once it is this old (younger ones
# may be between their creation and their lock).
_ORPHAN_MIN_AGE_S = 60.0
# Emptied workspaces a runner keeps for its next jobs (see ShellExecutor._recycle).
_SPARE_WORKSPACES = 8
_COMMIT_SHA = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
# The cache fetches commits by their sha, so nothing references them: git must never prune
# them (gc, or maintenance in newer versions) while a workspace borrows them.
_NO_PRUNING = ("-c", "gc.auto=0", "-c", "maintenance.auto=false")
# The git cache's upkeep (GitCache): where its fetched commits' refs are, how many of the
# newest a repository keeps when it is trimmed, how many packs (one per fetch) it may have
# before, and how often a runner sweeps the cache.
_KEPT_REFS = "refs/conveyor/"
_KEPT_COMMITS = 16
_MAX_PACKS = 64
_SWEEP_EVERY_S = 3600.0
_TRASH = ".trash"

# The guardian (see ProcessGroupGuardian): it reads "+<pgid> <start>" / "-<pgid>" lines from
# the runner and, once its stdin ends (the runner exited, however it died, SIGKILL included),
# kills every process group still registered. Kept tiny: it runs no job code, imports nothing.
_GUARDIAN_CODE = """
import os, signal, sys
groups = {}
for line in sys.stdin:
    fields = line[1:].split()
    if line[:1] == "+" and fields:
        groups[int(fields[0])] = fields[1] if len(fields) > 1 else ""
    elif line[:1] == "-" and fields:
        groups.pop(int(fields[0]), None)
for pgid, start in groups.items():
    try:
        with open("/proc/%d/stat" % pgid) as stat:
            if start and stat.read().rsplit(")", 1)[1].split()[19] != start:
                continue
    except OSError:
        pass
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass
"""


def _start_time(pid: int) -> str:
    """When the process `pid` started (clock ticks since boot, from /proc), or "" where
    there is no /proc. A process group's number is its leader's pid: once the leader is
    gone and the group empty, the number may be reused, and this tells a new owner apart."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _kill_group_if_ours(pgid: int, start: str) -> None:
    """SIGKILL the process group `pgid` unless its number now belongs to another process.
    No process with that pid: the group is ours or empty (a number is not reused while its
    group has members). One that started at `start`: our leader, still alive."""
    now = _start_time(pgid)
    if now and start and now != start:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


class ProcessGroupGuardian:
    """Makes sure a job's processes never outlive their runner.

    Every step runs in a process group of its own (so a cancel or a timeout reaches all its
    children), which also means that a runner killed with SIGKILL would leave them running:
    nobody is left to kill them, and the job's next attempt on another runner would race its
    ghost. The guardian is a small process in a session of its own, fed the process groups
    of running jobs through a pipe that only the runner holds. When the runner dies the
    kernel closes the pipe, and the guardian kills what is still registered."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._groups: dict[int, str] = {}  # process group -> its leader's start time

    def _send(self, line: str) -> None:
        # The caller holds the lock. A dead guardian (killed by hand) is replaced and told
        # everything again.
        for _ in range(2):
            if self._process is None or self._process.poll() is not None:
                self._process = subprocess.Popen(
                    # The last argument only names it in `ps`.
                    [sys.executable, "-S", "-c", _GUARDIAN_CODE, "conveyor-runner-guardian"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    env={"PATH": _DEFAULT_PATH},
                    start_new_session=True,  # outlives a kill of the runner's own process group
                    text=True,
                )
                line = "".join(f"+{pgid} {start}\n" for pgid, start in self._groups.items()) + line
            try:
                self._process.stdin.write(line)
                self._process.stdin.flush()
                return
            except OSError:
                self._process = None

    def register(self, pgid: int, start: str) -> None:
        with self._lock:
            self._groups[pgid] = start
            self._send(f"+{pgid} {start}\n")

    def unregister(self, pgid: int) -> None:
        with self._lock:
            self._groups.pop(pgid, None)
            if self._process is not None:
                self._send(f"-{pgid}\n")


class GitCache:
    """The objects of the commits the host's jobs checked out: one bare repository per clone
    URL (named by its hash, so no credentials show in a path), shared by the runners of the
    host. A job's checkout borrows its objects (`objects/info/alternates`) instead of
    fetching them: one light process (checkout; see _git_init for the rest), where a fetch
    per job costs several (fetch, upload-pack, pack-objects, index-pack) and a round trip
    to the server. Fetches are shallow, as a job's own fetch was; the repository's
    `shallow` file goes with each checkout, so that history ends there, as in a shallow clone.

    A fetched commit keeps a ref (refs/conveyor/<sha>), which the next fetch names to the
    server as a commit the cache has: a new commit then brings only the objects it changed,
    not a whole snapshot of the repository again (bench/README.md, "the runner's git cache").

    Borrowing and upkeep: a job holds a shared lock on `<repository>.use` from its checkout
    until its workspace is emptied (`borrow`, `give_back`), and the lock file's time is when
    a job last took it. `sweep` works only on what no job of the host borrows (an exclusive
    lock, not waited for): it removes a repository unused for `max_age_s`, and one grown past
    `max_bytes` or `_MAX_PACKS` packs keeps only the `_KEPT_COMMITS` commits fetched last.

    The clone URL is never stored here (fetched by URL, without FETCH_HEAD): a URL with
    credentials stays in the job's own workspace, as before."""

    def __init__(self, root: Path, *, max_age_s: float, max_bytes: int):
        self.root = root
        self.max_age_s = max_age_s
        self.max_bytes = max_bytes

    def repository(self, clone_url: str) -> Path:
        return self.root / f"{hashlib.sha256(clone_url.encode()).hexdigest()[:32]}.git"

    @contextlib.contextmanager
    def _locked(self, repository: Path):
        # Runners of one host (processes, and jobs of one runner) fetch into a repository one
        # at a time; checkouts only read it.
        self.root.mkdir(parents=True, exist_ok=True)
        with open(f"{repository}.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def borrow(self, repository: Path) -> int:
        """Take the repository for a job's checkout: the returned descriptor holds a shared
        lock that keeps `sweep` off it until `give_back`. Taken before the repository is
        looked at, so that it cannot go between the look and the checkout."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = _open_use_file(repository)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            os.utime(fd)  # when a job last used it (sweep's max_age_s)
        except OSError:
            os.close(fd)
            raise
        return fd

    @staticmethod
    def give_back(fd: int) -> None:
        os.close(fd)

    def fetch(self, clone_url: str, sha: str) -> Path:
        """Make sure the cache has the commit; returns the repository. Raises GitError. The
        caller borrows the repository first."""
        repository = self.repository(clone_url)
        with self._locked(repository):
            if not (repository / "HEAD").exists():
                run_git("init", "--quiet", "--bare", "--template=", str(repository))
            present = run_git("-C", str(repository), "cat-file", "-e", f"{sha}^{{commit}}", check=False)
            if present.returncode == 0:
                return repository
            fetch = (*_NO_PRUNING, "-C", str(repository), "fetch", "--quiet", "--no-tags", "--no-write-fetch-head")
            fetched = run_git(*fetch, "--depth", "1", clone_url, f"{sha}:{_KEPT_REFS}{sha}", check=False)
            if fetched.returncode != 0:
                # Servers that refuse fetching by sha: fetch every branch and tag, then the
                # checkout picks the commit.
                run_git(*fetch, clone_url, "+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*")
            elif _loose_refs(repository / _KEPT_REFS) > 2 * _KEPT_COMMITS:
                # Every ref is named to the server at each fetch: with 200 of them a fetch of a
                # small repository took 26 ms instead of 19; with 16 to 32, 17.6 against 15.9.
                self._keep_last_fetched(repository)
        return repository

    def lend(self, repository: Path, git_dir: Path) -> None:
        """Let the repository at `git_dir` read the cache's objects (and its shallow boundary)."""
        (git_dir / "objects" / "info").mkdir(parents=True, exist_ok=True)
        (git_dir / "objects" / "info" / "alternates").write_text(f"{(repository / 'objects').resolve()}\n")
        shallow = repository / "shallow"
        if shallow.exists():
            shutil.copyfile(shallow, git_dir / "shallow")

    def sweep(self) -> None:
        """Upkeep of the repositories no job of the host borrows (see the class)."""
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return
        for entry in entries:
            try:
                if entry.name.endswith(_TRASH):  # what a sweep that was stopped left
                    shutil.rmtree(entry.path, ignore_errors=True)
                elif entry.name.endswith(".git") and entry.is_dir(follow_symlinks=False):
                    self._keep_up(Path(entry.path))
            except (OSError, GitError) as exc:
                logger.warning("git cache %s: upkeep failed: %s", entry.name, exc)

    def _keep_up(self, repository: Path) -> None:
        fd = _open_use_file(repository)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # a job borrows it
            if time.time() - os.fstat(fd).st_mtime > self.max_age_s:
                # Renamed first: a sweep stopped halfway leaves no half-deleted repository.
                trash = repository.with_name(f"{repository.name}.{secrets.token_hex(4)}{_TRASH}")
                os.rename(repository, trash)
                shutil.rmtree(trash, ignore_errors=True)
                logger.info("git cache: removed %s, unused for %.0f days", repository.name, self.max_age_s / 86400)
                return
            # The refs of the commits fetched last only: what a fetch names to the server as had.
            self._keep_last_fetched(repository)
            packs = [p for p in os.scandir(repository / "objects" / "pack") if p.name.endswith(".pack")]
            size = _tree_bytes(repository / "objects")
            if size <= self.max_bytes and len(packs) <= _MAX_PACKS:
                return
            # What those commits do not reach goes; nothing borrows the repository, so
            # nothing reads it. One pack again.
            run_git("-C", str(repository), "gc", "--quiet", "--prune=now")
            logger.info(
                "git cache: %s down to the %d commits fetched last: %d MB in %d packs before, %d MB after",
                repository.name,
                _KEPT_COMMITS,
                size >> 20,
                len(packs),
                _tree_bytes(repository / "objects") >> 20,
            )
        finally:
            os.close(fd)

    @staticmethod
    def _keep_last_fetched(repository: Path) -> None:
        """Drop the refs of all but the _KEPT_COMMITS commits fetched last (by their loose ref's
        time; refs packed by a gc are older than any loose one)."""
        listed = run_git("-C", str(repository), "for-each-ref", "--format=%(refname)", _KEPT_REFS)

        def fetched_at(ref: str) -> int:
            try:
                return os.stat(repository / ref).st_mtime_ns
            except FileNotFoundError:
                return 0

        old = sorted(listed.stdout.decode().split(), key=fetched_at, reverse=True)[_KEPT_COMMITS:]
        if old:
            run_git("-C", str(repository), "update-ref", "--stdin", input="".join(f"delete {ref}\n" for ref in old))


def _open_use_file(repository: Path) -> int:
    """The descriptor of `<repository>.use`, whose lock says who borrows the repository (GitCache)."""
    return os.open(f"{repository}.use", os.O_RDWR | os.O_CREAT, 0o600)


def _loose_refs(directory: Path) -> int:
    try:
        return len(os.listdir(directory))
    except FileNotFoundError:
        return 0


def _tree_bytes(path: Path) -> int:
    total = 0
    for directory, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(directory, name)).st_size
    return total


def _config_value(value: str) -> str:
    """`value` quoted for a git config file: inside double quotes only `"` and `\\` are
    escaped (`#` and `;` are plain there); a line break cannot be written at all."""
    if any(ord(char) < 0x20 and char != "\t" for char in value):
        raise GitError(f"invalid clone URL {value!r}")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _lock_workspace(workspace: Path) -> int:
    """Hold an exclusive lock on the workspace for as long as the returned descriptor is open:
    the kernel drops it when the runner exits, however it dies, which tells its workspaces
    from a live runner's. (Not inherited by the job's processes: Python opens it CLOEXEC.)"""
    fd = os.open(workspace, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise
    return fd


def sweep_workspaces(builds_dir: Path, *, min_age_s: float = _ORPHAN_MIN_AGE_S) -> int:
    """Remove the workspaces under `builds_dir` whose runner died (nobody holds their lock).
    Returns how many were removed."""
    removed = 0
    try:
        entries = list(os.scandir(builds_dir))
    except FileNotFoundError:
        return 0
    now = time.time()
    for entry in entries:
        try:
            if not entry.is_dir(follow_symlinks=False) or now - entry.stat().st_mtime < min_age_s:
                continue
            fd = _lock_workspace(Path(entry.path))
        except OSError:
            continue  # in use (locked), or gone meanwhile
        try:
            shutil.rmtree(entry.path, ignore_errors=True)
            removed += 1
        finally:
            os.close(fd)
    return removed


class ShellExecutor:
    def __init__(self, *, reporter: Reporter, builds_dir: Path | None = None, keep_workspace: bool = False):
        self.reporter = reporter
        self.builds_dir = Path(builds_dir or tempfile.gettempdir()) / "conveyor-builds"
        self.keep_workspace = keep_workspace
        self.git_cache = GitCache(
            self.builds_dir.parent / "conveyor-git",
            max_age_s=settings.CONVEYOR_GIT_CACHE_DAYS * 86400,
            max_bytes=settings.CONVEYOR_GIT_CACHE_MB << 20,
        )
        # The cache's repositories the jobs' checkouts borrow: job -> the descriptor that
        # holds the borrow (GitCache.borrow), given back once the workspace is emptied.
        self._borrowed: dict[str, int] = {}
        self._sweeping = threading.Lock()
        self._swept_at = -_SWEEP_EVERY_S
        self.guardian = ProcessGroupGuardian()
        self._job_groups: dict[str, list[tuple[int, str]]] = {}
        self._workspaces: dict[str, tuple[Path, int]] = {}
        # What `git init` makes (relative path -> contents, None for a directory), kept from
        # the first checkout (see _git_init).
        self._empty_git_dir: dict[str, bytes | None] | None = None
        # Workspaces of finished jobs, emptied back to what a fresh one holds, with their locks
        # (see _recycle): the next job takes one rather than making its directories anew.
        self._spares: list[tuple[Path, int]] = []
        self._spares_lock = threading.Lock()
        self._modes = _fresh_modes()
        # Reports sent while the job's thread goes on (the checkout's first log line). Long-lived
        # threads: an HTTP backend's connections (one per thread) are kept alive between jobs.
        self._background = ThreadPoolExecutor(max_workers=2, thread_name_prefix="shell-reports")
        # What a runner that died (killed, the host rebooted) left behind goes when the next starts.
        sweep_workspaces(self.builds_dir)
        self._sweep_git_cache()

    def _sweep_git_cache(self) -> None:
        """The git cache's upkeep (GitCache.sweep), at most once per _SWEEP_EVERY_S, in a thread
        of its own: no job waits for it."""
        if time.monotonic() - self._swept_at < _SWEEP_EVERY_S or not self._sweeping.acquire(blocking=False):
            return
        self._swept_at = time.monotonic()

        def sweep() -> None:
            try:
                self.git_cache.sweep()
            finally:
                self._sweeping.release()

        threading.Thread(target=sweep, name="git-cache-sweep", daemon=True).start()

    def run(self, job: ClaimedJob, stop: threading.Event) -> JobResult:
        """Run the job in a fresh workspace. The workspace stays (locked) until cleanup(job):
        removing it is no part of the job, and its report need not wait for it."""
        workspace, fd = self._workspace(job)
        self._workspaces[job.id] = (workspace, fd)
        self._job_groups[job.id] = []
        try:
            return self._run_in(workspace, job, stop)
        finally:
            # What a step left running in the background (`server &`) may serve the job's
            # later steps, but never outlives the job, as in GitLab.
            for pgid, start in self._job_groups.pop(job.id, []):
                _kill_group_if_ours(pgid, start)
                self.guardian.unregister(pgid)

    def _workspace(self, job: ClaimedJob) -> tuple[Path, int]:
        """A fresh workspace for the job, and the descriptor that holds its lock: an emptied one
        of an earlier job (renamed after this job, as a new one is named), or a new one."""
        with self._spares_lock:
            spare = self._spares.pop() if self._spares else None
        if spare is not None:
            workspace, fd = spare
            renamed = workspace.with_name(f"{job.id}-{secrets.token_hex(4)}")
            try:
                os.rename(workspace, renamed)  # the lock is on the directory, not its name
                return renamed, fd
            except OSError:
                _remove(workspace, fd)
        self.builds_dir.mkdir(parents=True, exist_ok=True)
        workspace = Path(tempfile.mkdtemp(prefix=f"{job.id}-", dir=self.builds_dir))
        return workspace, _lock_workspace(workspace)

    def cleanup(self, job: ClaimedJob) -> None:
        """Empty the job's workspace for the next job, or remove it (the runner calls this once
        the job is reported). With keep_workspace it stays, locked while this executor lives."""
        if self.keep_workspace:
            return
        held = self._workspaces.pop(job.id, None)
        if held is None:
            return
        workspace, fd = held
        if not self._recycle(workspace, fd):
            _remove(workspace, fd)
        borrowed = self._borrowed.pop(job.id, None)
        if borrowed is not None:  # the workspace reads the git cache no more
            self.git_cache.give_back(borrowed)
        self._sweep_git_cache()

    def _recycle(self, workspace: Path, fd: int) -> bool:
        """Bring a finished job's workspace back to what a fresh one holds before its checkout
        (see _skeleton) and keep it for the next job. False if it is not kept: enough are, or
        something in it cannot be removed or reset.

        Why: a job's workspace is some 25 files and directories, and making and removing them
        for every job was the largest part of a runner's CPU per job on ext4 without a journal,
        whose allocator passes over every inode removed in the last minutes on each new one
        (bench/README.md, "e2e"). Kept, the 13 directories and the files rewritten in place
        (HEAD, config) are not made again; what the job made is removed, as before."""
        if self._empty_git_dir is None:  # no checkout yet, so no skeleton to keep
            return False
        with self._spares_lock:
            if len(self._spares) >= _SPARE_WORKSPACES:
                return False
        try:
            root = os.open(workspace, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            try:
                _reset_tree(root, self._skeleton(), *self._modes, top_mode=0o700)
            finally:
                os.close(root)
        except OSError as exc:
            logger.info("workspace %s not kept for the next job: %s", workspace, exc)
            return False
        with self._spares_lock:
            self._spares.append((workspace, fd))
        return True

    def _skeleton(self) -> dict:
        """What a fresh workspace holds before its checkout: the directories _run_in makes,
        the repository _git_init makes (its files with their contents), and the artifacts
        directory JobArtifacts makes before the checkout's end is logged."""
        git: dict = {}
        for relative, contents in self._empty_git_dir.items():  # parents first
            *parents, name = Path(relative).parts
            node = git
            for part in parents:
                node = node[part]
            node[name] = {} if contents is None else contents
        return {"src": {".git": git}, "state": {}, "tmp": {}, "home": {}, "artifacts": {}}

    def _run_in(self, workspace: Path, job: ClaimedJob, stop: threading.Event) -> JobResult:
        project = workspace / "src"
        state = workspace / "state"
        for directory in (project, state, workspace / "tmp", workspace / "home"):
            directory.mkdir(exist_ok=True)  # there already in a recycled workspace
        env = self._environment(job, workspace, project)
        deadline = time.monotonic() + job.timeout_s
        steps = list(job.steps)
        if not steps:
            return JobResult(status=StepStatus.SUCCESS)

        # The checkout's lines, then the artifacts', then the first step's own output: one
        # stream, the first step's log, which nothing waits for until the step has begun.
        first_log = LogStream(self.reporter, job, steps[0])
        checkout_error = self._checkout(job, project, first_log)
        ended = None
        if not checkout_error:
            # Artifacts (runners.artifacts): the dependencies' archives are unpacked before the
            # steps, or an earlier build with the same reuse key ends the job at once.
            artifacts = JobArtifacts(self.reporter, job, workspace=workspace, project=project)
            artifacts.environment(env)
            ended = artifacts.before_steps(first_log)
        if checkout_error or ended is not None:
            first_log.flush(final=True)
            for step in steps:
                self.reporter.step_finished(job, step, status=StepStatus.SKIPPED, exit_code=None)
            return ended or JobResult(status=StepStatus.FAILURE, reason=checkout_error)

        result = JobResult(status=StepStatus.SUCCESS, exit_code=0)
        main_failed = False
        last_run: ClaimedStep | None = None
        for step in steps:
            if step.kind != StepKind.AFTER_SCRIPT and (main_failed or stop.is_set()):
                self.reporter.step_finished(job, step, status=StepStatus.SKIPPED, exit_code=None)
                continue
            if step.kind == StepKind.AFTER_SCRIPT and stop.is_set():
                self.reporter.step_finished(job, step, status=StepStatus.SKIPPED, exit_code=None)
                continue
            # after_script gets its own short budget even when the job timed out (GitLab: 5 min).
            step_deadline = deadline if step.kind != StepKind.AFTER_SCRIPT else time.monotonic() + 300
            log = first_log if step is steps[0] else None
            end = None
            if step.kind == StepKind.DEPLOY:  # a `deploy:` job's Kubernetes rollout, run here
                status, exit_code, note = run_deploy_step(
                    self.reporter, job, step, env, project, stop, step_deadline, log
                )
            else:
                status, exit_code, note, end = self._run_step(job, step, env, state, project, stop, step_deadline, log)
            last_run = step
            if step.kind != StepKind.AFTER_SCRIPT and status != StepStatus.SUCCESS:  # after_script's never counts
                main_failed = True
                result = JobResult(status=status, exit_code=exit_code, reason=note)
            if end is None:
                continue
            if step is steps[-1] and not stop.is_set() and not artifacts.work_after_steps(result):
                # Nothing follows the last step: its end goes with the job's finish, one
                # request instead of two (backends put it in the finish, or before it).
                result.step_ends.append(end)
            else:
                self.reporter.step_finished(job, step, status=end.status, exit_code=end.exit_code)
        # After after_script, as in GitLab; the upload's lines end the last step's log.
        return result if stop.is_set() else artifacts.after_steps(result, last_run)

    def _environment(self, job: ClaimedJob, workspace: Path, project: Path) -> dict[str, str]:
        # Built from scratch: the runner's own environment (database URL, secret key, cloud
        # credentials) must never reach a job.
        env = {
            "PATH": os.environ.get("CONVEYOR_JOB_PATH", _DEFAULT_PATH),
            "HOME": str(workspace / "home"),
            "TMPDIR": str(workspace / "tmp"),
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "CI_PROJECT_DIR": str(project),
            "CI_BUILDS_DIR": str(self.builds_dir),
        }
        env.update(job.variables)
        return env

    def _checkout(self, job: ClaimedJob, project: Path, log: LogStream) -> str:
        """Check out exactly the job's commit, writing to `log` (the first step's). Returns an
        error message, or ""."""
        log.write(f"Fetching {job.commit_sha[:12]} ({job.ref}) into {project}\n")
        try:
            self._git_checkout(job, project, log)
        except GitError as exc:
            log.write(f"Checkout failed: {exc}\n")
            return f"checkout failed: {exc}"
        return ""

    def _git_checkout(self, job: ClaimedJob, project: Path, log: LogStream) -> None:
        if not _COMMIT_SHA.match(job.commit_sha):
            raise GitError(f"invalid commit {job.commit_sha!r}")
        if job.clone_url.startswith("-"):
            raise GitError(f"invalid clone URL {job.clone_url!r}")
        self._git_init(project)
        # origin is the repository, as in a clone; the cache is only where objects come from.
        # Written here rather than by `git remote add`: one process less per job.
        with (project / ".git" / "config").open("a") as config:
            config.write(f'[remote "origin"]\n\turl = {_config_value(job.clone_url)}\n')
            config.write("\tfetch = +refs/heads/*:refs/remotes/origin/*\n")
        repository = self.git_cache.repository(job.clone_url)
        self._borrowed[job.id] = self.git_cache.borrow(repository)
        checkout = ("-C", str(project), "checkout", "--quiet", "--detach", job.commit_sha)
        if (repository / "HEAD").exists():
            # Cached already (the usual case): no lock, no fetch, no round trip. The first
            # line goes with the step's first output: a request of its own here, for a
            # checkout of a millisecond or two, was one of the five a job cost.
            self.git_cache.lend(repository, project / ".git")
            if run_git(*checkout, check=False).returncode == 0:
                return
        # A fetch may take a while: the first line is shipped while git works, for whoever
        # watches; nothing waits for it (LogStream sends in order: the step's output follows).
        self._background.submit(_flush_and_let_go, log)
        repository = self.git_cache.fetch(job.clone_url, job.commit_sha)
        self.git_cache.lend(repository, project / ".git")
        run_git(*checkout)

    def _git_init(self, project: Path) -> None:
        """An empty repository at `project`. `git init` runs once per executor: later jobs get
        a copy of what it made, written from memory. Its process took 5-10 ms of the 40-70 ms
        between a job's claim and its first step (bench e2e); the copy takes about 1 ms."""
        git_dir = project / ".git"
        empty = self._empty_git_dir
        if git_dir.is_dir():  # a recycled workspace: emptied back to this (see _recycle)
            return
        if empty is None:
            # No template (sample hooks, description): a job needs none of it, and copying it
            # made `git init` the slowest part of a checkout.
            run_git("init", "--quiet", "--template=", str(project))
            self._empty_git_dir = _read_tree(git_dir)
            return
        git_dir.mkdir()
        for relative, contents in empty.items():  # in walk order: a directory before its entries
            if contents is None:
                (git_dir / relative).mkdir()
            else:
                (git_dir / relative).write_bytes(contents)

    def _script(self, command: str, state: Path, project: Path) -> str:
        """The step's command, in the working directory and with the exports the previous
        step left (state/cwd, state/env), saving them in turn as it exits (state/env.new, made
        state/env by _keep_exports). Shell builtins only: a `$(cat ...)` and an `mv` here were
        two processes more per step."""
        env_file, cwd_file = shlex.quote(str(state / "env")), shlex.quote(str(state / "cwd"))
        new_env_file = shlex.quote(str(state / "env.new"))
        return "\n".join(
            [
                f"if [ -f {env_file} ]; then . {env_file}; fi",
                f"if [ -f {cwd_file} ] && IFS= read -r __conveyor_cwd < {cwd_file}; "
                f'then cd "$__conveyor_cwd"; else cd {shlex.quote(str(project))}; fi',
                f"__conveyor_save() {{ __rc=$?; export -p > {new_env_file}; pwd > {cwd_file}; exit $__rc; }}",
                "trap __conveyor_save EXIT",
                "set -eo pipefail",
                command,
                "",
            ]
        )

    def _run_step(
        self,
        job: ClaimedJob,
        step: ClaimedStep,
        env: dict[str, str],
        state: Path,
        project: Path,
        stop: threading.Event,
        deadline: float,
        log: LogStream | None,
    ) -> tuple[str, int | None, str, StepEnd]:
        """Run a script step: its log continues `log` (the first step's, after the checkout) or
        starts. Reports its start; its end (the last value) is the caller's to report."""
        self.reporter.step_started(job, step)
        log = log or LogStream(self.reporter, job, step)
        log.write(f"$ {step.command}\n")
        script = state / f"step-{step.index}.sh"
        script.write_text(self._script(step.command, state, project))
        shell = shutil.which("bash", path=env["PATH"]) or "/bin/sh"
        process = subprocess.Popen(
            [shell, "--noprofile", "--norc", str(script)] if shell.endswith("bash") else [shell, str(script)],
            cwd=project,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so a kill reaches every child
        )
        # The group id is the shell's pid (start_new_session): registered before any output is
        # read, so the guardian knows it for as long as anything may run in it.
        group = (process.pid, _start_time(process.pid))
        self.guardian.register(*group)
        self._job_groups.setdefault(job.id, []).append(group)
        note = ""
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            open_pipe = True
            while open_pipe:
                if stop.is_set():
                    note = "cancelled"
                    break
                if time.monotonic() > deadline:
                    note = f"timed out after {job.timeout_s}s"
                    break
                for _key, _ in selector.select(timeout=0.1):
                    data = os.read(process.stdout.fileno(), 65536)
                    if not data:
                        open_pipe = False
                        break
                    log.write_bytes(data)
                log.maybe_flush()
        if note:
            _kill_group(process)
            log.write(f"\n{'Cancelled' if note == 'cancelled' else 'Timeout'}: {note}\n")
        exit_code = process.wait()
        process.stdout.close()
        _keep_exports(state, complete=not note and exit_code >= 0)
        if not note and exit_code != 0:
            log.write(f"\nexit code {exit_code}\n")
        log.flush(final=True)
        if note == "cancelled":
            status = StepStatus.CANCELLED
        elif note or exit_code != 0:
            status = StepStatus.FAILURE
        else:
            status = StepStatus.SUCCESS
        end = StepEnd(step_id=step.id, status=status, exit_code=None if note else exit_code)
        return status, exit_code, note or (f"step {step.name!r} exited with {exit_code}" if exit_code else ""), end


def _keep_exports(state: Path, *, complete: bool) -> None:
    """The exports a step saved as it exited become the next step's. Not when it was stopped
    (a cancel, a timeout, a signal): its save may have been cut off halfway, and the next
    step (after_script) gets the previous step's instead."""
    saved = state / "env.new"
    if complete and saved.exists():
        os.replace(saved, state / "env")
    else:
        saved.unlink(missing_ok=True)


def _read_tree(root: Path) -> dict[str, bytes | None]:
    """The files (and directories: None) under `root`, by path relative to it, parents first."""
    tree: dict[str, bytes | None] = {}
    for directory, subdirectories, files in os.walk(root):
        base = Path(directory).relative_to(root)
        subdirectories.sort()
        for name in sorted(files):
            tree[str(base / name)] = (Path(directory) / name).read_bytes()
        for name in subdirectories:
            tree[str(base / name)] = None
    return tree


def _fresh_modes() -> tuple[int, int]:
    """The modes of the directories and files a fresh workspace gets (0o777 and 0o666 less the
    process's umask, read without changing it)."""
    umask = 0o022
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                umask = int(line.split()[1], 8)
    return 0o777 & ~umask, 0o666 & ~umask


def _reset_tree(fd: int, spec: dict, dir_mode: int, file_mode: int, *, top_mode: int | None = None) -> None:
    """Make the directory open at `fd` hold exactly `spec` (a name to a dict, a directory
    holding that; or to bytes, a file of those contents), with the modes a fresh one gets.
    Everything else in it is removed. Nothing is followed: a symlink, or anything else where a
    directory or file of `spec` should be, is removed and made anew. A file is rewritten in
    place only if it has no other link (a hard link from a job must not carry the write
    elsewhere), and a directory kept must be this process's. Raises OSError where it cannot."""
    info = os.fstat(fd)
    if info.st_uid != os.geteuid():
        raise PermissionError(f"a directory of uid {info.st_uid} in the workspace")
    os.fchmod(fd, dir_mode if top_mode is None else top_mode)
    kept = set()
    for entry in list(os.scandir(fd)):
        want = spec.get(entry.name)
        if isinstance(want, dict) and entry.is_dir(follow_symlinks=False):
            _reset_subtree(fd, entry.name, want, dir_mode, file_mode)
            kept.add(entry.name)
        elif (
            isinstance(want, bytes)
            and entry.is_file(follow_symlinks=False)
            and _rewrite(fd, entry.name, want, file_mode)
        ):
            kept.add(entry.name)
        elif entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.name, dir_fd=fd)
        else:
            os.unlink(entry.name, dir_fd=fd)
    for name, want in spec.items():
        if name in kept:
            continue
        if isinstance(want, dict):
            os.mkdir(name, dir_fd=fd)
            _reset_subtree(fd, name, want, dir_mode, file_mode)
        else:
            handle = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666, dir_fd=fd)
            with open(handle, "wb") as file:
                file.write(want)


def _reset_subtree(fd: int, name: str, spec: dict, dir_mode: int, file_mode: int) -> None:
    """_reset_tree on the directory `name` in the directory open at `fd` (not followed if a symlink)."""
    child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
    try:
        _reset_tree(child, spec, dir_mode, file_mode)
    finally:
        os.close(child)


def _rewrite(fd: int, name: str, contents: bytes, mode: int) -> bool:
    """Write `contents` over the file `name` in place (the same inode), with `mode`. False,
    nothing written, if it is not a regular file of this process's with no other link."""
    handle = os.open(name, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
    with open(handle, "wb") as file:
        info = os.fstat(handle)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1 or info.st_uid != os.geteuid():
            return False
        os.fchmod(handle, mode)
        file.truncate()
        file.write(contents)
    return True


def _remove(workspace: Path, fd: int) -> None:
    try:
        shutil.rmtree(workspace, ignore_errors=True)
    finally:
        os.close(fd)


def _flush_and_let_go(log: LogStream) -> None:
    try:
        log.flush()
    finally:
        # A trusted (database) runner's report used a connection of this pool thread: closed
        # now, rather than held by a thread that may not run again for a long time (an HTTP
        # runner's thread opened none: nothing to close).
        connections.close_all()


def _kill_group(process: subprocess.Popen) -> None:
    """TERM the whole process group, then KILL what is left after a grace period."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=_KILL_GRACE_S)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
