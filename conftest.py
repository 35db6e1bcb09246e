"""Test session setup: make sure the embedded servers run when no URLs are given."""

from __future__ import annotations

import pytest

from cicd import embedded

_started: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    wanted = embedded.needed()
    if any(wanted.values()):
        _started.extend(embedded.up(**wanted))


def pytest_unconfigure(config: pytest.Config) -> None:
    # Stop only what this session started (a running `make run` keeps its servers).
    # xdist workers share the controller's servers and must not stop them.
    if _started and not hasattr(config, "workerinput"):
        embedded.down(postgres="postgres" in _started, redis="redis" in _started)
