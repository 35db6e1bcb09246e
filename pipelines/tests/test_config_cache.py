"""`cache:` in the config: the shapes GitLab takes, `default:` inheritance, and keys that
cannot name a cache refused with the job, the key and the line."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from .config_helpers import parse, the_problem


def test_a_cache_with_every_key_comes_out_normalized() -> None:
    spec = parse(
        """
        job:
          script: x
          cache:
            key: deps-$CI_COMMIT_REF_SLUG
            paths: [node_modules/, .npm/]
            policy: pull
            when: always
            fallback_keys: [deps-main, deps]
        """
    )
    assert spec.job("job").cache == [
        {
            "key": "deps-$CI_COMMIT_REF_SLUG",
            "paths": ["node_modules/", ".npm/"],
            "untracked": False,
            "when": "always",
            "policy": "pull",
            "fallback_keys": ["deps-main", "deps"],
        }
    ]


def test_a_key_made_from_files_keeps_the_files_and_the_prefix() -> None:
    spec = parse("job:\n  script: x\n  cache: {key: {files: [Gemfile.lock], prefix: gems}, paths: [vendor]}\n")
    assert spec.job("job").cache[0]["key"] == {"files": ["Gemfile.lock"], "prefix": "gems"}


def test_a_job_inherits_the_default_cache_unless_it_sets_its_own_or_opts_out() -> None:
    spec = parse(
        """
        default:
          cache: {key: shared, paths: [.cache/]}
        inherits:
          script: x
        own:
          script: x
          cache: {key: mine, paths: [build/]}
        opted_out:
          script: x
          inherit: {default: false}
        """
    )
    assert [c["key"] for c in spec.job("inherits").cache] == ["shared"]
    assert [c["key"] for c in spec.job("own").cache] == ["mine"]
    assert spec.job("opted_out").cache == []


def test_up_to_four_caches_are_taken_and_a_fifth_is_an_error() -> None:
    four = "".join(f"    - {{key: k{i}, paths: [p{i}]}}\n" for i in range(4))
    assert len(parse(f"job:\n  script: x\n  cache:\n{four}").job("job").cache) == 4
    problem = the_problem(f"job:\n  script: x\n  cache:\n{four}    - {{key: k4, paths: [p4]}}\n")
    assert "at most 4 caches" in problem.message
    assert (problem.job, problem.key) == ("job", "cache")


@pytest.mark.parametrize(
    ("cache", "words"),
    [
        ("{key: a/b, paths: [x]}", "must not contain '/'"),
        ("{key: a%2Fb, paths: [x]}", "must not contain '/'"),
        ("{key: '.', paths: [x]}", "'.' or '..'"),
        ("{key: '..', paths: [x]}", "'.' or '..'"),
        ("{key: '%2E%2E', paths: [x]}", "'.' or '..'"),
        ("{key: k, fallback_keys: [ok, ../up], paths: [x]}", "cache:fallback_keys must not contain '/'"),
        ("{key: {files: [a.lock], prefix: a/b}, paths: [x]}", "cache:key:prefix must not contain '/'"),
        ("{key: {prefix: p}, paths: [x]}", "needs files"),
        ("{key: {files: [a, b, c]}, paths: [x]}", "one or two files"),
        ("{key: k, paths: [x], policy: pull-only}", "cache:policy"),
        ("{key: k, paths: [x], when: never}", "cache:when"),
        ("{key: k, paths: x}", "cache:paths"),
        ("{key: k, path: [x]}", "did you mean 'paths'"),
    ],
)
def test_a_cache_that_cannot_work_is_a_config_error_at_its_line(cache: str, words: str) -> None:
    problem = the_problem(f"job:\n  script: x\n  cache: {cache}\n")
    assert words in problem.message
    assert (problem.job, problem.key, problem.line) == ("job", "cache", 3)


def test_a_bad_default_cache_is_reported_under_default() -> None:
    problem = the_problem("default:\n  cache: {key: a/b}\njob:\n  script: x\n")
    assert "must not contain '/'" in problem.message
    assert (problem.key, problem.line) == ("default:cache", 2)


def test_a_policy_from_a_variable_is_left_for_the_runner_to_check() -> None:
    spec = parse("job:\n  script: x\n  cache: {key: k, paths: [x], policy: $CACHE_POLICY}\n")
    assert spec.job("job").cache[0]["policy"] == "$CACHE_POLICY"


_KEY_CHARS = st.text(st.sampled_from(list("ab19-_ .%2FfEe/$é")), min_size=1, max_size=12)


@given(key=_KEY_CHARS)
def test_a_key_is_taken_exactly_when_it_names_no_directory(key: str) -> None:
    text = f"job:\n  script: x\n  cache: {{key: '{key}', paths: [x]}}\n"
    decoded = key.replace("%2F", "/").replace("%2f", "/").replace("%2E", ".").replace("%2e", ".")
    if "/" in decoded or not key.strip() or decoded.strip(".") == "":
        assert the_problem(text).key == "cache"
    else:
        assert parse(text).job("job").cache[0]["key"] == key
