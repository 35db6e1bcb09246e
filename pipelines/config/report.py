"""Collecting problems: the parser reports every error and warning it finds, then decides."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pipelines.config.spec import ConfigProblem
from pipelines.config.yaml_loader import Where, where_of


class Invalid(Exception):
    """One key's value is unusable. Raised by normalizers; the caller records it and goes on."""

    def __init__(self, message: str, *, sub: str | None = None, where: Where | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.sub = sub
        self.where = where


@dataclass
class Report:
    errors: list[ConfigProblem] = field(default_factory=list)
    warnings: list[ConfigProblem] = field(default_factory=list)
    _seen_errors: set[ConfigProblem] = field(default_factory=set, repr=False)
    _seen_warnings: set[ConfigProblem] = field(default_factory=set, repr=False)

    def error(
        self, message: str, *, job: str | None = None, key: str | None = None, where: Where | None = None
    ) -> None:
        problem = _problem(message, job, key, where)
        # Each instance of a parallel job evaluates the same rules: one report is enough.
        if problem not in self._seen_errors:
            self._seen_errors.add(problem)
            self.errors.append(problem)

    def warn(self, message: str, *, job: str | None = None, key: str | None = None, where: Where | None = None) -> None:
        problem = _problem(message, job, key, where)
        # The same unsupported key in a template shows up in every job that extends it.
        if problem not in self._seen_warnings:
            self._seen_warnings.add(problem)
            self.warnings.append(problem)

    def extend(self, problems: Iterable[ConfigProblem]) -> None:
        for problem in problems:
            if problem not in self._seen_errors:
                self._seen_errors.add(problem)
                self.errors.append(problem)

    def scope(self, *, job: str | None, key: str, where: Where | None) -> Scope:
        return Scope(self, job, key, where or (None, None))


def _problem(message: str, job: str | None, key: str | None, where: Where | None) -> ConfigProblem:
    file, line = where or (None, None)
    return ConfigProblem(message, job=job, key=key, line=line, file=file)


@dataclass
class Scope:
    """Where a normalizer is working: which job, which key, which line."""

    report: Report
    job: str | None
    key: str
    where: Where

    def key_path(self, sub: str | None) -> str:
        return f"{self.key}:{sub}" if sub else self.key

    def error(self, message: str, *, sub: str | None = None, where: Where | None = None) -> None:
        self.report.error(message, job=self.job, key=self.key_path(sub), where=_best(where, self.where))

    def warn(self, message: str, *, sub: str | None = None, where: Where | None = None) -> None:
        self.report.warn(message, job=self.job, key=self.key_path(sub), where=_best(where, self.where))

    def invalid(self, exc: Invalid) -> None:
        self.error(exc.message, sub=exc.sub, where=exc.where)


def _best(where: Where | None, fallback: Where) -> Where:
    return where if where and where[1] else fallback


def located(value: Any, key: Any = None) -> Where | None:
    """The line of `key` inside the mapping `value` (or of the mapping itself), if known."""
    where = where_of(value, key)
    return where if where[1] else None


def suggest(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'script'?)' for a likely typo, else ''."""
    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""
