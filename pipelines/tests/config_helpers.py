"""Helpers for the config parser tests: parse dedented YAML, get the problems back."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest

from pipelines.config.parser import parse_pipeline
from pipelines.config.spec import ConfigError, ConfigProblem, PipelineSpec, TriggerContext


def context(**overrides: Any) -> TriggerContext:
    return TriggerContext(**overrides)


def files_reader(files: dict[str, str] | None):
    if files is None:
        return None

    def read(path: str) -> str:
        if path not in files:
            raise ConfigError.single(f"include {path!r}: no such file", key="include")
        return textwrap.dedent(files[path])

    return read


def parse(text: str, *, files: dict[str, str] | None = None, **ctx: Any) -> PipelineSpec:
    return parse_pipeline(textwrap.dedent(text), context=context(**ctx), read_file=files_reader(files))


def problems(text: str, *, files: dict[str, str] | None = None, **ctx: Any) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as caught:
        parse(text, files=files, **ctx)
    return caught.value.problems


def the_problem(text: str, *, files: dict[str, str] | None = None, **ctx: Any) -> ConfigProblem:
    found = problems(text, files=files, **ctx)
    assert len(found) == 1, [str(problem) for problem in found]
    return found[0]


def names(spec: PipelineSpec) -> list[str]:
    return [job.name for job in spec.jobs]


def warning_texts(spec: PipelineSpec) -> list[str]:
    return [str(warning) for warning in spec.warnings]
