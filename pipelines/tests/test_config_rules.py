"""Which jobs a trigger gets: rules, only/except and workflow:rules."""

from __future__ import annotations

import pytest

from .config_helpers import names, parse, warning_texts

RULES = """
stages: [build, deploy]
build:
  stage: build
  script: make
deploy:
  stage: deploy
  script: ./deploy
  variables: {TARGET: default}
  rules:
    - if: $CI_COMMIT_TAG
      when: never
    - if: $CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH
      when: manual
      variables: {TARGET: production}
    - if: $CI_COMMIT_BRANCH =~ /^release\\//
      allow_failure: true
    - if: $CI_PIPELINE_SOURCE == "schedule"
      when: delayed
      start_in: 1 hour
"""


def test_a_rule_with_when_manual_makes_a_blocking_manual_job() -> None:
    deploy = parse(RULES, ref="main").job("deploy")
    assert (deploy.when, deploy.allow_failure, deploy.blocking) == ("manual", False, True)


def test_rules_variables_override_the_job_variables() -> None:
    assert parse(RULES, ref="main").job("deploy").variables == {"TARGET": "production"}


def test_the_first_matching_rule_wins() -> None:
    deploy = parse(RULES, ref="release/1.2").job("deploy")
    assert (deploy.when, deploy.allow_failure, deploy.variables) == ("on_success", True, {"TARGET": "default"})


def test_when_never_in_a_matching_rule_leaves_the_job_out() -> None:
    assert names(parse(RULES, ref="v1.0", is_tag=True)) == ["build"]


def test_a_job_whose_rules_do_not_match_is_not_created() -> None:
    assert names(parse(RULES, ref="feature/x")) == ["build"]


def test_a_rule_can_delay_a_job() -> None:
    deploy = parse(RULES, ref="nightly", source="schedule").job("deploy")
    assert (deploy.when, deploy.start_in_s) == ("delayed", 3600)


def test_a_rule_without_condition_always_matches() -> None:
    spec = parse("job:\n  script: x\n  rules:\n    - if: $NOPE\n    - when: always\n")
    assert spec.job("job").when == "always"


def test_rules_allow_failure_keeps_a_manual_rule_job_from_blocking() -> None:
    spec = parse("job:\n  script: x\n  rules:\n    - when: manual\n      allow_failure: true\n")
    assert (spec.job("job").allow_failure, spec.job("job").blocking) == (True, False)


def test_job_level_allow_failure_applies_to_a_manual_rule_job() -> None:
    spec = parse("job:\n  script: x\n  allow_failure: true\n  rules:\n    - when: manual\n")
    assert (spec.job("job").allow_failure, spec.job("job").blocking) == (True, False)


def test_rules_needs_replace_the_job_needs() -> None:
    spec = parse("a:\n  script: x\nb:\n  script: x\nc:\n  script: x\n  needs: [a]\n  rules:\n    - needs: [b]\n")
    assert [need.job for need in spec.job("c").needs] == ["b"]


def test_rules_see_global_job_and_trigger_variables_with_trigger_variables_winning() -> None:
    text = (
        'variables: {FROM_GLOBAL: "yes", OVERRIDDEN: config}\n'
        "other:\n  script: x\n"
        'job:\n  script: x\n  variables: {FROM_JOB: "yes"}\n  rules:\n'
        '    - if: $FROM_GLOBAL == "yes" && $FROM_JOB == "yes" && $OVERRIDDEN == "trigger"\n'
    )
    assert names(parse(text, variables={"OVERRIDDEN": "trigger"})) == ["other", "job"]
    assert names(parse(text)) == ["other"]


def test_matrix_values_are_visible_to_rules() -> None:
    spec = parse(
        'job:\n  script: x\n  parallel:\n    matrix:\n      - CLOUD: [aws, gcp]\n  rules:\n    - if: $CLOUD == "aws"\n'
    )
    assert names(spec) == ["job: [aws]"]


def test_rules_changes_and_exists_count_as_true_with_a_warning() -> None:
    spec = parse("job:\n  script: x\n  rules:\n    - changes: [src/**/*]\n      exists: [Dockerfile]\n")
    assert names(spec) == ["job"]
    assert any("rules:changes is not evaluated" in text for text in warning_texts(spec))


# --- only / except --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("only", "context", "created"),
    [
        ("[main]", {"ref": "main"}, True),
        ("[main]", {"ref": "dev"}, False),
        ("[branches]", {"ref": "dev"}, True),
        ("[branches]", {"ref": "v1", "is_tag": True}, False),
        ("[branches]", {"ref": "dev", "source": "merge_request_event"}, False),
        ("[tags]", {"ref": "v1", "is_tag": True}, True),
        ("[tags]", {"ref": "main"}, False),
        ("[merge_requests]", {"source": "merge_request_event"}, True),
        ("[pushes]", {"source": "push"}, True),
        ("[pushes]", {"source": "web"}, False),
        ("[schedules]", {"source": "schedule"}, True),
        ("[web]", {"source": "web"}, True),
        ("[api]", {"source": "api"}, True),
        ("[triggers]", {"source": "trigger"}, True),
        ("[triggers]", {"source": "push"}, False),
        ("['/^release-.*$/']", {"ref": "release-1"}, True),
        ("['/^release-.*$/']", {"ref": "main"}, False),
        ('{refs: [main], variables: [$DEPLOY == "1"]}', {"ref": "main", "variables": {"DEPLOY": "1"}}, True),
        ('{refs: [main], variables: [$DEPLOY == "1"]}', {"ref": "main"}, False),
        ("{variables: [$A, $B]}", {"variables": {"B": "x"}}, True),
        ("{changes: [docs/*]}", {}, True),
    ],
)
def test_only_creates_the_job_when_the_trigger_matches(only: str, context: dict, created: bool) -> None:
    spec = parse(f"job:\n  script: x\n  only: {only}\nother:\n  script: x\n", **context)
    assert ("job" in names(spec)) is created


@pytest.mark.parametrize(
    ("except_", "context", "created"),
    [
        ("[main]", {"ref": "main"}, False),
        ("[main]", {"ref": "dev"}, True),
        ("[tags]", {"ref": "v1", "is_tag": True}, False),
        ("[schedules]", {"source": "schedule"}, False),
        ("{refs: [main], variables: [$SKIP]}", {"ref": "main"}, True),
        ("{refs: [main], variables: [$SKIP]}", {"ref": "main", "variables": {"SKIP": "1"}}, False),
    ],
)
def test_except_leaves_the_job_out_when_the_trigger_matches(except_: str, context: dict, created: bool) -> None:
    spec = parse(f"job:\n  script: x\n  except: {except_}\nother:\n  script: x\n", **context)
    assert ("job" in names(spec)) is created


def test_only_and_except_combine() -> None:
    text = "job:\n  script: x\n  only: [branches]\n  except: [main]\nother:\n  script: x\n"
    assert "job" in names(parse(text, ref="dev"))
    assert "job" not in names(parse(text, ref="main"))


def test_a_job_without_rules_or_only_is_created_for_every_trigger() -> None:
    for context in ({"source": "merge_request_event"}, {"ref": "v1", "is_tag": True}, {"source": "schedule"}):
        assert names(parse("job:\n  script: x\n", **context)) == ["job"]


# --- workflow:rules -------------------------------------------------------------------


WORKFLOW = """
variables: {DEPLOY_TO: nowhere}
workflow:
  rules:
    - if: $CI_PIPELINE_SOURCE == "merge_request_event"
      when: never
    - if: $CI_COMMIT_BRANCH == "main"
      variables: {DEPLOY_TO: production}
    - if: $CI_COMMIT_TAG
job:
  script: x
"""


def test_workflow_rules_that_match_let_the_run_be_created_with_their_variables() -> None:
    spec = parse(WORKFLOW, ref="main")
    assert spec.workflow_skipped is None
    assert spec.variables["DEPLOY_TO"] == "production"
    assert spec.job("job").variables["DEPLOY_TO"] == "production"


def test_workflow_rules_when_never_skips_the_run_and_says_why() -> None:
    spec = parse(WORKFLOW, source="merge_request_event")
    assert spec.workflow_skipped is not None
    assert "rule 1" in spec.workflow_skipped
    assert "when: never" in spec.workflow_skipped
    assert spec.jobs == []


def test_workflow_rules_that_do_not_match_skip_the_run() -> None:
    spec = parse(WORKFLOW, ref="feature")
    assert spec.workflow_skipped is not None
    assert "no rule matches" in spec.workflow_skipped


def test_a_matching_workflow_rule_without_variables_keeps_the_global_ones() -> None:
    assert parse(WORKFLOW, ref="v1", is_tag=True).variables["DEPLOY_TO"] == "nowhere"


def test_a_pipeline_whose_rules_leave_no_job_is_skipped() -> None:
    spec = parse("job:\n  script: x\n  only: [tags]\n", ref="main")
    assert spec.jobs == []
    assert "left no job" in (spec.workflow_skipped or "")


def test_a_pipeline_with_only_pre_and_post_jobs_left_is_skipped() -> None:
    spec = parse("setup:\n  stage: .pre\n  script: x\njob:\n  script: x\n  only: [tags]\n")
    assert names(spec) == ["setup"]
    assert "only .pre/.post" in (spec.workflow_skipped or "")
