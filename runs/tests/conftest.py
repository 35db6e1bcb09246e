"""Fixtures of the runs tests: the people of a private repository (tests.access)."""

from tests.access import people  # noqa: F401
