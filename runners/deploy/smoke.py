"""Smoke tests of a freshly rolled out version: an HTTP GET expecting 2xx, or a local command.

Both run on the runner, not in the cluster: the runner already reaches the cluster's API, and a
URL the runner can reach (an ingress, a Service through the runner's own network) is what users
reach too.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping

from runners.deploy.spec import COLOR_PLACEHOLDER, SmokeTest

# Only the tail of a chatty smoke command goes into the job log.
MAX_OUTPUT_LINES = 20
_KILL_WAIT_S = 5.0


def run_smoke_test(
    test: SmokeTest,
    *,
    log: Callable[[str], None],
    env: Mapping[str, str],
    color: str | None = None,
    workdir: str | None = None,
    stop: threading.Event | None = None,
) -> str | None:
    """Run the test with its retries. None when it passed, else why it failed (its last attempt)."""
    url = _with_color(test.url, color)
    command = _with_color(test.command, color)
    target = f"GET {url}" if url else f"`{command}`"
    log(f"Smoke test: {target} (up to {test.attempts} attempt{'s' if test.attempts > 1 else ''})")
    failure = ""
    for attempt in range(1, test.attempts + 1):
        if url:
            passed, detail = _http_attempt(url, test.timeout_s)
        else:
            assert command is not None
            passed, detail = _command_attempt(command, test.timeout_s, env=env, workdir=workdir, log=log)
        if passed:
            log(f"Smoke test passed: {detail}")
            return None
        failure = detail
        log(f"Smoke test attempt {attempt}/{test.attempts} failed: {detail}")
        if attempt < test.attempts and _interrupted(stop, test.interval_s):
            return f"smoke test cancelled after {attempt} attempt{'s' if attempt > 1 else ''}: {failure}"
    return f"smoke test failed after {test.attempts} attempt{'s' if test.attempts > 1 else ''}: {failure}"


def _with_color(text: str | None, color: str | None) -> str | None:
    if text is None or color is None:
        return text
    return text.replace(COLOR_PLACEHOLDER, color)


def _interrupted(stop: threading.Event | None, seconds: float) -> bool:
    if stop is None:
        time.sleep(seconds)
        return False
    return stop.wait(seconds)


def _http_attempt(url: str, timeout_s: float) -> tuple[bool, str]:
    request = urllib.request.Request(url, headers={"User-Agent": "conveyor-deploy-smoke-test"})  # noqa: S310
    try:
        # The URL's scheme was checked to be http(s) when the spec was parsed.
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            status = response.status
    except urllib.error.HTTPError as exc:
        return False, f"GET {url} returned {exc.code} {exc.reason}"
    except urllib.error.URLError as exc:
        return False, f"GET {url} failed: {exc.reason}"
    except (OSError, http.client.HTTPException) as exc:
        return False, f"GET {url} failed: {exc or type(exc).__name__}"
    if 200 <= status < 300:
        return True, f"GET {url} returned {status}"
    return False, f"GET {url} returned {status}, expected 2xx"


def _command_attempt(
    command: str, timeout_s: float, *, env: Mapping[str, str], workdir: str | None, log: Callable[[str], None]
) -> tuple[bool, str]:
    try:
        process = subprocess.Popen(
            ["sh", "-c", command],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=workdir,
            # Its own process group, so a timeout kills whatever the command started too.
            start_new_session=True,
        )
    except OSError as exc:
        return False, f"`{command}` could not start: {exc}"
    timed_out = False
    try:
        output, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        try:
            output, _ = process.communicate(timeout=_KILL_WAIT_S)
        except subprocess.TimeoutExpired:
            # A grandchild that left the process group still holds the pipe: give up on its output.
            output = b""
    lines = output.decode(errors="replace").splitlines()
    if len(lines) > MAX_OUTPUT_LINES:
        log(f"  | ... ({len(lines) - MAX_OUTPUT_LINES} lines omitted)")
    for line in lines[-MAX_OUTPUT_LINES:]:
        log(f"  | {line}")
    if timed_out:
        return False, f"`{command}` timed out after {timeout_s:g}s"
    if process.returncode == 0:
        return True, f"`{command}` exited 0"
    return False, f"`{command}` exited {process.returncode}"
