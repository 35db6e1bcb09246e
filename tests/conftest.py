"""Fixtures shared by the project-wide tests: the people of a private repository
(tests.access), a real git repository behind a Repository (pipelines' `forge`), and the
harness that runs `manage.py runner` and uvicorn subprocesses (tests.test_runner_e2e)."""

from pipelines.tests.conftest import forge, mirrors  # noqa: F401
from tests.access import people  # noqa: F401
from tests.test_runner_e2e import harness, trigger  # noqa: F401
