"""cicd.supervisor: starts children, relays their output, and leaves nothing running."""

from __future__ import annotations

import io
import os
import signal
import sys
import threading
import time

import psutil
import pytest

from cicd.supervisor import ProcessSpec, Supervisor

PY = sys.executable


def sleeper(name: str, *, ignore_term: bool = False, spawn_grandchild: bool = False) -> ProcessSpec:
    code = [
        "import signal, subprocess, sys, time",
        f"print('{name} up', flush=True)",
    ]
    if ignore_term:
        code.append("signal.signal(signal.SIGTERM, signal.SIG_IGN)")
    if spawn_grandchild:
        code.append(f"subprocess.Popen([{PY!r}, '-c', 'import time; time.sleep(600)'])")
    code.append("time.sleep(600)")
    return ProcessSpec(name, [PY, "-c", "\n".join(code)])


def descendants_of(supervisor: Supervisor) -> list[psutil.Process]:
    found = []
    for process in supervisor.processes.values():
        try:
            leader = psutil.Process(process.pid)
            found += [leader, *leader.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue  # already exited and reaped
    return found


@pytest.fixture
def make_supervisor():
    """Supervisors whose children are killed at teardown even when a test fails half-way."""
    made: list[Supervisor] = []

    def make(specs: list[ProcessSpec], **kwargs) -> Supervisor:
        kwargs.setdefault("output", io.StringIO())
        supervisor = Supervisor(specs, env=dict(os.environ), cwd=".", **kwargs)
        made.append(supervisor)
        return supervisor

    yield make
    for supervisor in made:
        for process in supervisor.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_signal_stops_every_child_and_reports_success(make_supervisor) -> None:
    out = io.StringIO()
    supervisor = make_supervisor([sleeper("a"), sleeper("b")], output=out)
    supervisor.start()
    wait_for(lambda: "a up" in out.getvalue() and "b up" in out.getvalue())
    children = descendants_of(supervisor)
    supervisor._on_signal(signal.SIGTERM, None)
    assert supervisor._watch(ready=None, on_ready=None) == 0
    supervisor.stop()
    assert not any(child.is_running() for child in children)
    assert "SIGTERM received, stopping" in out.getvalue()
    assert "a  | a up" in out.getvalue()


def test_a_child_that_exits_stops_the_others_and_sets_the_exit_code(make_supervisor) -> None:
    out = io.StringIO()
    crash = ProcessSpec("crash", [PY, "-c", "import sys; sys.exit(3)"])
    supervisor = make_supervisor([sleeper("long"), crash], output=out)
    supervisor.start()
    assert supervisor._watch(ready=None, on_ready=None) == 3
    children = descendants_of(supervisor)
    supervisor.stop()
    assert not any(child.is_running() for child in children)
    assert "crash exited on its own (exit code 3)" in out.getvalue()


def test_children_that_ignore_sigterm_and_their_grandchildren_are_killed_after_the_timeout(make_supervisor) -> None:
    out = io.StringIO()
    stubborn = sleeper("stubborn", ignore_term=True, spawn_grandchild=True)
    supervisor = make_supervisor([stubborn], output=out, stop_timeout=0.5)
    supervisor.start()
    wait_for(lambda: "stubborn up" in out.getvalue())
    wait_for(lambda: len(descendants_of(supervisor)) == 2)
    children = descendants_of(supervisor)
    started = time.monotonic()
    supervisor.stop()
    assert time.monotonic() - started < 5
    wait_for(lambda: not any(child.is_running() and child.status() != psutil.STATUS_ZOMBIE for child in children))
    assert "did not stop in time; sending SIGKILL" in out.getvalue()


def test_ready_callback_runs_once_when_ready(make_supervisor) -> None:
    supervisor = make_supervisor([sleeper("a")])
    probes: list[int] = []
    calls: list[int] = []
    supervisor.start()

    def ready() -> bool:
        probes.append(1)
        if len(probes) == 3:
            # Ready from the third probe on; stop a little later so more probes could happen.
            threading.Timer(1.5, supervisor._on_signal, args=(signal.SIGINT, None)).start()
        return len(probes) >= 3

    assert supervisor._watch(ready=ready, on_ready=lambda: calls.append(1)) == 0
    supervisor.stop()
    assert calls == [1]
    assert len(probes) == 3


def test_process_names_must_be_unique() -> None:
    with pytest.raises(ValueError, match="unique"):
        Supervisor([sleeper("a"), sleeper("a")], env={}, cwd=".")
