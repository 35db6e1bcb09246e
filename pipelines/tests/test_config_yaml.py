"""The YAML layer: line numbers, duplicate keys, merge keys, limits; and durations."""

from __future__ import annotations

import pytest

from pipelines.config.durations import DurationError, parse_duration
from pipelines.config.spec import ConfigError
from pipelines.config.yaml_loader import NodeBudget, Reference, YamlMap, load_yaml


def test_every_mapping_knows_its_line_and_the_line_of_each_key() -> None:
    data = load_yaml("first:\n  script: x\n\nsecond:\n  stage: build\n  script: y\n", file="ci.yml")
    assert isinstance(data, YamlMap)
    assert data.key_lines == {"first": ("ci.yml", 1), "second": ("ci.yml", 4)}
    assert data["second"].key_lines["script"] == ("ci.yml", 6)


def test_all_duplicate_keys_are_reported_with_both_lines() -> None:
    with pytest.raises(ConfigError) as caught:
        load_yaml("a: 1\nb: 2\na: 3\nj:\n  x: 1\n  x: 2\n")
    assert [(p.line, p.message) for p in caught.value.problems] == [
        (3, "duplicate key 'a' in one mapping (first on line 1); YAML keeps only one of them"),
        (6, "duplicate key 'x' in one mapping (first on line 5); YAML keeps only one of them"),
    ]


def test_keys_brought_in_by_a_merge_key_are_not_duplicates() -> None:
    data = load_yaml(".t: &t {a: 1, b: 2}\njob:\n  <<: *t\n  a: 3\n")
    assert data["job"] == {"a": 3, "b": 2}


def test_in_a_list_of_merged_mappings_the_earlier_one_wins() -> None:
    data = load_yaml(".a: &a {k: a, only_a: 1}\n.b: &b {k: b}\njob:\n  <<: [*b, *a]\n")
    assert data["job"] == {"k": "b", "only_a": 1}


def test_reference_tags_load_as_references_with_their_line() -> None:
    data = load_yaml("job:\n  script: !reference [.setup, script]\n")
    assert data["job"]["script"] == Reference(path=(".setup", "script"), file=None, line=2)


def test_invalid_yaml_reports_the_line() -> None:
    with pytest.raises(ConfigError) as caught:
        load_yaml("job:\n  script: x\n   bad: indent\n")
    assert caught.value.problems[0].line == 3
    assert caught.value.problems[0].message.startswith("invalid YAML")


def test_the_node_budget_is_shared_across_files() -> None:
    budget = NodeBudget(limit=10)
    load_yaml("a: [1, 2]\n", budget=budget)
    with pytest.raises(ConfigError, match="more than 10 YAML nodes"):
        load_yaml("b: [1, 2, 3, 4, 5]\n", budget=budget)


def test_an_empty_document_loads_as_nothing() -> None:
    assert load_yaml("# only a comment\n") is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (3600, 3600),
        ("3600", 3600),
        ("90s", 90),
        ("1h 30m", 5400),
        ("1h30m", 5400),
        ("90 minutes", 5400),
        ("1 hour and 30 minutes", 5400),
        ("1 hour, 30 minutes", 5400),
        ("1.5h", 5400),
        ("2 days", 172800),
        ("1 week", 604800),
        ("1 month", 2592000),
        ("1 year", 31536000),
        ("1:30:00", 5400),
        ("2:30", 150),
        ("  10 mins  ", 600),
    ],
)
def test_durations_are_read_like_gitlab_reads_them(text: str | int, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "1 fortnight", "h", "1h 30", "-5", 0, True, None, 1.5, "x" * 300])
def test_anything_else_is_not_a_duration(text: object) -> None:
    with pytest.raises(DurationError):
        parse_duration(text)


def test_a_duration_above_the_maximum_is_refused() -> None:
    with pytest.raises(DurationError, match="maximum of 1 week"):
        parse_duration("8 days", maximum=7 * 86400)
