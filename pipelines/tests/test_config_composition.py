"""Reusing config: anchors, hidden jobs, extends, !reference and include: local."""

from __future__ import annotations

import pytest

from .config_helpers import names, parse, problems, the_problem, warning_texts


def test_hidden_jobs_are_templates_not_jobs() -> None:
    spec = parse(".template:\n  script: x\njob:\n  script: y\n")
    assert names(spec) == ["job"]


def test_yaml_anchors_and_merge_keys_share_config_and_explicit_keys_win() -> None:
    spec = parse(
        """
        .defaults: &defaults
          image: ruby:3
          tags: [docker]
          script: [echo default]
        .scripts: &setup
          - bundle install
        job:
          <<: *defaults
          tags: [arm]
          before_script: *setup
        """
    )
    job = spec.job("job")
    assert (job.image, job.tags, job.script, job.before_script) == (
        {"name": "ruby:3"},
        ["arm"],
        ["echo default"],
        ["bundle install"],
    )


def test_merge_keys_take_a_list_of_mappings() -> None:
    spec = parse(".a: &a {script: a, stage: build}\n.b: &b {script: b}\njob:\n  <<: [*b, *a]\n")
    assert (spec.job("job").script, spec.job("job").stage) == (["b"], "build")


# --- extends --------------------------------------------------------------------------


def test_extends_deep_merges_mappings_and_replaces_lists() -> None:
    spec = parse(
        """
        .base:
          image: ruby:3
          variables: {A: base, B: base}
          tags: [docker, linux]
          script: [base]
        job:
          extends: .base
          variables: {B: job}
          tags: [arm]
        """
    )
    job = spec.job("job")
    assert job.image == {"name": "ruby:3"}
    assert job.variables == {"A": "base", "B": "job"}
    assert (job.tags, job.script) == (["arm"], ["base"])


def test_extends_takes_a_list_where_later_parents_win() -> None:
    spec = parse(".one:\n  script: one\n  stage: build\n.two:\n  script: two\njob:\n  extends: [.one, .two]\n")
    assert (spec.job("job").script, spec.job("job").stage) == (["two"], "build")


def test_extends_resolves_several_levels() -> None:
    spec = parse(
        ".a:\n  script: a\n  tags: [a]\n.b:\n  extends: .a\n  tags: [b]\n.c:\n  extends: .b\n"
        "  variables: {C: c}\njob:\n  extends: .c\n"
    )
    job = spec.job("job")
    assert (job.script, job.tags, job.variables) == (["a"], ["b"], {"C": "c"})


def test_extends_may_name_a_visible_job() -> None:
    spec = parse("build:\n  script: make\n  tags: [docker]\nbuild-arm:\n  extends: build\n  tags: [arm]\n")
    assert spec.job("build-arm").script == ["make"]
    assert spec.job("build-arm").tags == ["arm"]


def test_eleven_levels_of_extends_are_allowed() -> None:
    levels = "".join(f".t{i}:\n  extends: .t{i + 1}\n" for i in range(10)) + ".t10:\n  script: deep\n"
    spec = parse(levels + "job:\n  extends: .t0\n")
    assert spec.job("job").script == ["deep"]


# --- !reference -----------------------------------------------------------------------


def test_reference_reuses_a_value_of_another_job() -> None:
    spec = parse(
        """
        .setup:
          script: [install, configure]
          variables: {LEVEL: debug}
        job:
          variables: !reference [.setup, variables]
          script:
            - !reference [.setup, script]
            - run
        """
    )
    assert spec.job("job").script == ["install", "configure", "run"]
    assert spec.job("job").variables == {"LEVEL": "debug"}


def test_reference_is_resolved_after_extends() -> None:
    spec = parse(
        ".base:\n  script: [from-base]\n.child:\n  extends: .base\njob:\n  script: !reference [.child, script]\n"
    )
    assert spec.job("job").script == ["from-base"]


def test_references_may_nest() -> None:
    spec = parse(
        ".a:\n  script: [a]\n.b:\n  script: [!reference [.a, script], b]\n"
        "job:\n  script: [!reference [.b, script], c]\n"
    )
    assert spec.job("job").script == ["a", "b", "c"]


def test_a_reference_can_bring_in_rules() -> None:
    spec = parse(
        ".rules:\n  rules:\n    - if: $CI_COMMIT_TAG\n      when: never\njob:\n  script: x\n"
        "  rules:\n    - !reference [.rules, rules]\n    - when: on_success\n",
        ref="v1",
        is_tag=True,
    )
    assert spec.jobs == []


# --- include: local -------------------------------------------------------------------


def test_include_local_merges_the_file_under_the_main_config() -> None:
    spec = parse(
        """
        include:
          - local: ci/templates.yml
        job:
          extends: .template
          tags: [mine]
        """,
        files={"ci/templates.yml": ".template:\n  script: [from-include]\n  tags: [theirs]\n"},
    )
    assert (spec.job("job").script, spec.job("job").tags) == (["from-include"], ["mine"])


@pytest.mark.parametrize(
    "include",
    ["ci/a.yml", "/ci/a.yml", "[ci/a.yml]", "[{local: ci/a.yml}]", "{local: /ci/a.yml}"],
)
def test_include_takes_a_path_a_list_of_paths_or_local_mappings(include: str) -> None:
    spec = parse(f"include: {include}\nmain:\n  script: x\n", files={"ci/a.yml": "included:\n  script: y\n"})
    assert sorted(names(spec)) == ["included", "main"]


def test_the_main_file_wins_over_included_files_and_later_includes_over_earlier() -> None:
    spec = parse(
        "include: [a.yml, b.yml]\nvariables: {MAIN: main}\njob:\n  tags: [main]\n",
        files={
            "a.yml": "variables: {A: a, SHARED: a}\njob:\n  script: a\n  tags: [a]\n",
            "b.yml": "variables: {SHARED: b}\njob:\n  script: b\n",
        },
    )
    assert spec.variables == {"A": "a", "SHARED": "b", "MAIN": "main"}
    assert (spec.job("job").script, spec.job("job").tags) == (["b"], ["main"])


def test_included_files_may_include_more_files() -> None:
    spec = parse(
        "include: one.yml\nmain:\n  script: x\n",
        files={"one.yml": "include: two.yml\none:\n  script: x\n", "two.yml": "two:\n  script: x\n"},
    )
    assert sorted(names(spec)) == ["main", "one", "two"]


def test_the_same_file_included_twice_is_read_once() -> None:
    reads: list[str] = []
    files = {"a.yml": "a:\n  script: x\n"}

    def counting(path: str) -> str:
        reads.append(path)
        return files[path]

    from pipelines.config.parser import parse_pipeline
    from pipelines.config.spec import TriggerContext

    spec = parse_pipeline("include: [a.yml, /a.yml]\n", context=TriggerContext(), read_file=counting)
    assert (names(spec), reads) == (["a"], ["a.yml"])


def test_problems_in_an_included_file_name_the_file_and_its_line() -> None:
    found = problems(
        "include: ci/bad.yml\nmain:\n  script: x\n", files={"ci/bad.yml": "job:\n  script: x\n  tags: x\n"}
    )
    assert [(p.job, p.key, p.file, p.line) for p in found] == [("job", "tags", "ci/bad.yml", 3)]
    assert "file 'ci/bad.yml', line 3" in str(found[0])


def test_remote_template_and_project_includes_are_reported_as_unsupported() -> None:
    spec = parse(
        "include:\n  - remote: https://example.com/ci.yml\n  - template: Auto-DevOps.gitlab-ci.yml\n"
        "  - project: group/repo\n    file: ci.yml\njob:\n  script: x\n",
        files={},
    )
    assert len([text for text in warning_texts(spec) if "is not supported" in text]) == 3


def test_include_of_a_missing_file_is_a_config_error() -> None:
    problem = the_problem("include: missing.yml\njob:\n  script: x\n", files={})
    assert (problem.key, "no such file" in problem.message) == ("include", True)


def test_include_without_a_file_reader_is_a_config_error() -> None:
    problem = the_problem("include: ci.yml\njob:\n  script: x\n")
    assert problem.key == "include"
    assert "not available" in problem.message
