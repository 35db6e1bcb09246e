"""needs, dependencies, parallel expansion and the effective edges the engine waits on."""

from __future__ import annotations

from pipelines.config.dag import effective_edges
from pipelines.config.spec import Need

from .config_helpers import parse, warning_texts

PIPELINE = """
stages: [build, test, deploy]
compile:
  stage: build
  script: x
assets:
  stage: build
  script: x
unit:
  script: x
  needs: [compile]
lint:
  script: x
  needs: []
integration:
  script: x
ship:
  stage: deploy
  script: x
"""


def test_a_job_without_needs_waits_for_every_job_of_the_earlier_stages() -> None:
    edges = effective_edges(parse(PIPELINE))
    assert edges["integration"] == ["compile", "assets"]
    assert edges["ship"] == ["compile", "assets", "unit", "lint", "integration"]


def test_a_job_with_needs_waits_only_for_those_and_needs_empty_starts_at_once() -> None:
    spec = parse(PIPELINE)
    edges = effective_edges(spec)
    assert (edges["unit"], edges["lint"]) == (["compile"], [])
    assert (spec.job("integration").needs, spec.job("lint").needs) == (None, [])


def test_jobs_of_the_first_stage_wait_for_nothing() -> None:
    edges = effective_edges(parse(PIPELINE))
    assert edges["compile"] == edges["assets"] == []


def test_needs_may_name_a_job_of_the_same_stage() -> None:
    spec = parse("a:\n  script: x\nb:\n  script: x\n  needs: [a]\n")
    assert effective_edges(spec) == {"a": [], "b": ["a"]}


def test_needs_entries_keep_optional_and_artifacts() -> None:
    spec = parse(
        "stages: [build, test]\na:\n  stage: build\n  script: x\nb:\n  stage: build\n  script: x\n"
        "c:\n  script: x\n  needs: [{job: a, artifacts: false}, {job: b, optional: true}]\n"
    )
    assert spec.job("c").needs == [Need("a", optional=False, artifacts=False), Need("b", optional=True, artifacts=True)]


def test_needs_naming_a_parallel_job_waits_for_all_its_instances() -> None:
    spec = parse("build:\n  stage: build\n  script: x\n  parallel: 3\ntest:\n  script: x\n  needs: [build]\n")
    assert effective_edges(spec)["test"] == ["build 1/3", "build 2/3", "build 3/3"]


def test_needs_with_parallel_matrix_picks_the_matching_instances() -> None:
    spec = parse(
        """
        build:
          stage: build
          script: x
          parallel:
            matrix:
              - OS: [linux, mac]
                ARCH: [amd64, arm64]
        test:
          script: x
          needs:
            - job: build
              parallel:
                matrix:
                  - OS: linux
                    ARCH: [arm64, amd64]
        """
    )
    assert effective_edges(spec)["test"] == ["build: [linux, amd64]", "build: [linux, arm64]"]


def test_a_stage_order_job_waits_for_every_instance_of_an_earlier_parallel_job() -> None:
    spec = parse("build:\n  stage: build\n  script: x\n  parallel: 2\ntest:\n  script: x\n")
    assert effective_edges(spec)["test"] == ["build 1/2", "build 2/2"]


def test_stage_order_only_counts_the_jobs_this_run_has() -> None:
    spec = parse(
        "build:\n  stage: build\n  script: x\n  only: [tags]\nsetup:\n  stage: build\n  script: x\ntest:\n  script: x\n"
    )
    assert effective_edges(spec)["test"] == ["setup"]


def test_pre_and_post_jobs_frame_the_pipeline() -> None:
    spec = parse("first:\n  stage: .pre\n  script: x\nlast:\n  stage: .post\n  script: x\nmiddle:\n  script: x\n")
    edges = effective_edges(spec)
    assert (edges["first"], edges["middle"], edges["last"]) == ([], ["first"], ["first", "middle"])


def test_dependencies_name_the_jobs_whose_artifacts_to_fetch() -> None:
    spec = parse(
        "stages: [build, test]\na:\n  stage: build\n  script: x\n  parallel: 2\nb:\n  stage: build\n  script: x\n"
        "c:\n  script: x\n  dependencies: [a]\nd:\n  script: x\n  dependencies: []\ne:\n  script: x\n"
    )
    assert spec.job("c").dependencies == ["a 1/2", "a 2/2"]
    assert spec.job("d").dependencies == []
    assert spec.job("e").dependencies is None


def test_dependencies_on_a_job_left_out_are_dropped_with_a_warning() -> None:
    spec = parse(
        "stages: [build, test]\na:\n  stage: build\n  script: x\n  only: [tags]\n"
        "b:\n  stage: build\n  script: x\nc:\n  script: x\n  dependencies: [a, b]\n"
    )
    assert spec.job("c").dependencies == ["b"]
    assert any("its artifacts are skipped" in text for text in warning_texts(spec))


def test_a_job_named_in_needs_twice_is_waited_for_once() -> None:
    spec = parse("a:\n  script: x\nb:\n  script: x\n  needs: [a, {job: a}]\n")
    assert [need.job for need in spec.job("b").needs] == ["a"]


def test_cross_pipeline_needs_are_reported_as_unsupported_and_left_out() -> None:
    spec = parse(
        "a:\n  script: x\nb:\n  script: x\n  needs:\n    - a\n    - {pipeline: $PARENT_PIPELINE_ID, job: gen}\n"
        "    - {project: group/other, job: build, ref: main}\n"
    )
    assert [need.job for need in spec.job("b").needs] == ["a"]
    assert sum("cross-pipeline needs" in text for text in warning_texts(spec)) == 2
