"""A small process supervisor for `manage.py up`: start named commands, relay their output, stop them all.

Each child runs in its own session (process group), so a terminal's Ctrl-C reaches only the
supervisor, which then stops the children in order: SIGTERM to each child (a graceful
shutdown: uvicorn drains, a Celery worker finishes its tasks), then SIGKILL to each child's
whole process group after `stop_timeout`, which also takes out any grandchild left behind.
When one child exits on its own the others are stopped too: a half-running system is
worse than a stopped one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TextIO

_POLL_S = 0.1


@dataclass(frozen=True)
class ProcessSpec:
    name: str
    argv: list[str]


class Supervisor:
    def __init__(
        self,
        specs: list[ProcessSpec],
        *,
        env: dict[str, str],
        cwd: str,
        output: TextIO | None = None,
        stop_timeout: float = 10.0,
    ) -> None:
        names = [spec.name for spec in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"process names must be unique: {names}")
        self.specs = specs
        self.env = env
        self.cwd = cwd
        self.output = output or sys.stdout
        self.stop_timeout = stop_timeout
        self.width = max([len(name) for name in names] + [len("up")])
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._readers: list[threading.Thread] = []
        self._print_lock = threading.Lock()
        self._signals: list[int] = []

    # -- output --------------------------------------------------------------------------

    def say(self, text: str, *, name: str = "up") -> None:
        stamp = datetime.now().strftime("%H:%M:%S")
        with self._print_lock:
            for line in text.splitlines() or [""]:
                try:
                    self.output.write(f"{stamp} {name.ljust(self.width)} | {line}\n")
                    self.output.flush()
                except (OSError, ValueError):
                    return  # our own output went away (closed pipe); the children keep running

    def _relay(self, name: str, stream) -> None:
        for raw in iter(stream.readline, b""):
            self.say(raw.decode("utf-8", "replace").rstrip("\r\n"), name=name)
        stream.close()

    # -- lifecycle -----------------------------------------------------------------------

    def _on_signal(self, signum: int, frame) -> None:
        self._signals.append(signum)

    def start(self) -> None:
        for spec in self.specs:
            process = subprocess.Popen(
                spec.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            self.processes[spec.name] = process
            reader = threading.Thread(target=self._relay, args=(spec.name, process.stdout), daemon=True)
            reader.start()
            self._readers.append(reader)
            self.say(f"{spec.name} started (pid {process.pid})")

    def run(
        self,
        *,
        ready: Callable[[], bool] | None = None,
        on_ready: Callable[[], None] | None = None,
    ) -> int:
        """Start every process and block until a signal or a child's exit, then stop them all.

        Returns 0 after a requested stop (SIGINT/SIGTERM) and the failing child's exit code
        (or 1) when a child ended on its own. `on_ready` is called once `ready()` is true.
        """
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.start()
            exit_code = self._watch(ready=ready, on_ready=on_ready)
            self.stop()
            return exit_code
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _watch(self, *, ready: Callable[[], bool] | None, on_ready: Callable[[], None] | None) -> int:
        is_ready = ready is None
        next_probe = 0.0
        while True:
            if self._signals:
                self.say(f"{signal.Signals(self._signals[0]).name} received, stopping")
                return 0
            for name, process in self.processes.items():
                code = process.poll()
                if code is not None:
                    self.say(f"{name} exited on its own (exit code {code}); stopping the others")
                    # Killed by signal N shows as -N; report it the way a shell would (128 + N).
                    return code if code > 0 else 128 - code if code < 0 else 1
            if not is_ready and time.monotonic() >= next_probe:
                next_probe = time.monotonic() + 0.5
                is_ready = bool(ready and ready())
                if is_ready and on_ready:
                    on_ready()
            time.sleep(_POLL_S)

    def stop(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is None:
                self.say(f"sending SIGTERM to {name} (pid {process.pid})")
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        handled = len(self._signals)
        while any(p.poll() is None for p in self.processes.values()):
            # A second Ctrl-C means "now": skip the grace period.
            if time.monotonic() >= deadline or len(self._signals) > max(handled, 1):
                break
            time.sleep(_POLL_S)
        for name, process in self.processes.items():
            if process.poll() is None:
                self.say(f"{name} did not stop in time; sending SIGKILL")
            # The whole group: also grandchildren that outlived their parent.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        for process in self.processes.values():
            process.wait()
        for reader in self._readers:
            reader.join(timeout=2)
        for name, process in self.processes.items():
            self.say(f"{name} stopped (exit code {process.returncode})")
