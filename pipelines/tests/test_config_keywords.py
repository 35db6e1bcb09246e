"""Each supported keyword of the config language, read into the JobSpec the engine gets."""

from __future__ import annotations

import pytest

from pipelines.config.spec import DEFAULT_STAGES

from .config_helpers import names, parse, the_problem, warning_texts

# --- stages ---------------------------------------------------------------------------


def test_stages_default_to_pre_build_test_deploy_post() -> None:
    spec = parse("job:\n  script: x\n")
    assert spec.stages == DEFAULT_STAGES == [".pre", "build", "test", "deploy", ".post"]


def test_a_job_without_stage_is_in_test() -> None:
    assert parse("job:\n  script: x\n").job("job").stage == "test"


@pytest.mark.parametrize(
    ("listed", "expected"),
    [
        ("[compile, ship]", [".pre", "compile", "ship", ".post"]),
        ("[.post, compile, .pre, test]", [".pre", "compile", "test", ".post"]),
        ("[compile, .pre]", [".pre", "compile", ".post"]),
    ],
)
def test_pre_is_always_first_and_post_always_last(listed: str, expected: list[str]) -> None:
    spec = parse(f"stages: {listed}\njob:\n  stage: compile\n  script: x\n")
    assert spec.stages == expected


def test_a_stage_listed_twice_is_kept_once_with_a_warning() -> None:
    spec = parse("stages: [a, b, a]\njob:\n  stage: a\n  script: x\n")
    assert spec.stages == [".pre", "a", "b", ".post"]
    assert any("listed twice" in text for text in warning_texts(spec))


def test_deprecated_types_stand_in_for_stages_with_a_warning() -> None:
    spec = parse("types: [one]\njob:\n  stage: one\n  script: x\n")
    assert spec.stages == [".pre", "one", ".post"]
    assert any("types is deprecated" in text for text in warning_texts(spec))


# --- script ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "lines"),
    [
        ("make", ["make"]),
        ("[make, make test]", ["make", "make test"]),
        ("[a, [b, [c, d]], e]", ["a", "b", "c", "d", "e"]),
        ("|\n    echo one\n    echo two", ["echo one\necho two\n"]),
    ],
)
def test_script_is_a_string_or_nested_lists_flattened_to_one_line_per_step(script: str, lines: list[str]) -> None:
    assert parse(f"job:\n  script: {script}\n").job("job").script == lines


def test_before_and_after_script_are_read_like_script() -> None:
    job = parse("job:\n  before_script: setup\n  script: x\n  after_script: [a, [b]]\n").job("job")
    assert (job.before_script, job.after_script) == (["setup"], ["a", "b"])


# --- default and global variables ----------------------------------------------------


def test_default_keywords_apply_to_jobs_that_do_not_set_them() -> None:
    spec = parse(
        """
        default:
          image: ruby:3.3
          before_script: [bundle install]
          after_script: [cleanup]
          tags: [docker]
          retry: 1
          timeout: 30m
          interruptible: true
          cache: {key: gems, paths: [vendor]}
          services: [postgres:16]
          artifacts: {paths: [log/]}
        plain:
          script: x
        own:
          image: alpine
          tags: [arm]
          script: x
        """
    )
    plain, own = spec.job("plain"), spec.job("own")
    assert plain.image == {"name": "ruby:3.3"}
    assert plain.before_script == ["bundle install"]
    assert plain.after_script == ["cleanup"]
    assert plain.tags == ["docker"]
    assert plain.retry_max == 1
    assert plain.timeout_s == 1800
    assert plain.interruptible is True
    assert plain.cache[0]["key"] == "gems"
    assert plain.services == [{"name": "postgres:16"}]
    assert plain.artifacts["paths"] == ["log/"]
    assert (own.image, own.tags, own.before_script) == ({"name": "alpine"}, ["arm"], ["bundle install"])


def test_top_level_image_is_a_deprecated_default() -> None:
    spec = parse("image: node:20\njob:\n  script: x\n")
    assert spec.job("job").image == {"name": "node:20"}
    assert any("use default:image" in text for text in warning_texts(spec))


def test_global_variables_take_plain_values_and_value_description_mappings() -> None:
    spec = parse(
        """
        variables:
          PLAIN: hello
          NUMBER: 3
          DESCRIBED:
            value: staging
            description: Where to deploy
            options: [staging, production]
        job:
          script: x
        """
    )
    assert spec.variables == {"PLAIN": "hello", "NUMBER": "3", "DESCRIBED": "staging"}
    assert spec.variable_descriptions == {"DESCRIBED": "Where to deploy"}
    assert spec.job("job").variables == spec.variables


def test_job_variables_override_global_ones() -> None:
    spec = parse("variables: {A: global, B: global}\njob:\n  script: x\n  variables: {B: job, C: job}\n")
    assert spec.job("job").variables == {"A": "global", "B": "job", "C": "job"}


@pytest.mark.parametrize(
    ("inherit", "image", "variables"),
    [
        ("{default: false}", None, {"G": "1", "H": "2"}),
        ("{default: [tags]}", None, {"G": "1", "H": "2"}),
        ("{variables: false}", {"name": "alpine"}, {}),
        ("{variables: [H]}", {"name": "alpine"}, {"H": "2"}),
    ],
)
def test_inherit_chooses_which_defaults_and_global_variables_a_job_takes(
    inherit: str, image: dict | None, variables: dict
) -> None:
    spec = parse(f"variables: {{G: '1', H: '2'}}\ndefault:\n  image: alpine\njob:\n  script: x\n  inherit: {inherit}\n")
    assert (spec.job("job").image, spec.job("job").variables) == (image, variables)


# --- when, start_in, allow_failure ----------------------------------------------------


@pytest.mark.parametrize("when", ["on_success", "on_failure", "always"])
def test_when_takes_the_gitlab_values(when: str) -> None:
    job = parse(f"job:\n  script: x\n  when: {when}\n").job("job")
    assert (job.when, job.allow_failure, job.blocking) == (when, False, False)


def test_a_job_level_manual_job_is_optional_so_it_allows_failure_and_does_not_block() -> None:
    job = parse("job:\n  script: x\n  when: manual\n").job("job")
    assert (job.when, job.allow_failure, job.blocking) == ("manual", True, False)


def test_a_job_level_manual_job_with_allow_failure_false_blocks() -> None:
    job = parse("job:\n  script: x\n  when: manual\n  allow_failure: false\n").job("job")
    assert (job.allow_failure, job.blocking) == (False, True)


@pytest.mark.parametrize(
    ("start_in", "seconds"), [("30 minutes", 1800), ("1 hour", 3600), ("10s", 10), ("1 day", 86400)]
)
def test_delayed_jobs_start_after_start_in(start_in: str, seconds: int) -> None:
    job = parse(f"job:\n  script: x\n  when: delayed\n  start_in: {start_in}\n").job("job")
    assert (job.when, job.start_in_s) == ("delayed", seconds)


@pytest.mark.parametrize(
    ("value", "allowed", "codes"),
    [
        ("true", True, []),
        ("false", False, []),
        ("{exit_codes: 137}", True, [137]),
        ("{exit_codes: [1, 2]}", True, [1, 2]),
    ],
)
def test_allow_failure_is_a_bool_or_a_list_of_exit_codes(value: str, allowed: bool, codes: list[int]) -> None:
    job = parse(f"job:\n  script: x\n  allow_failure: {value}\n").job("job")
    assert (job.allow_failure, job.allow_failure_exit_codes) == (allowed, codes)


# --- environment, artifacts, cache, image, services -----------------------------------


def test_environment_as_a_string_is_its_name() -> None:
    job = parse("job:\n  script: x\n  environment: production\n").job("job")
    assert job.environment == {"name": "production", "action": "start"}


def test_environment_as_a_mapping_keeps_url_action_and_tier() -> None:
    job = parse(
        """
        stop:
          script: x
          environment: {name: review/$CI_COMMIT_REF_SLUG, action: stop}
        job:
          script: x
          environment:
            name: production
            url: https://example.com
            deployment_tier: production
            on_stop: stop
            auto_stop_in: 1 week
        """
    ).job("job")
    assert job.environment == {
        "name": "production",
        "url": "https://example.com",
        "action": "start",
        "deployment_tier": "production",
        "on_stop": "stop",
        "auto_stop_in": "1 week",
    }


def test_artifacts_keep_paths_exclusions_expiry_and_reports() -> None:
    job = parse(
        """
        job:
          script: x
          artifacts:
            name: build-$CI_JOB_ID
            paths: [dist/, build/]
            exclude: ["**/*.tmp"]
            expire_in: 1 week
            when: always
            untracked: false
            reports:
              junit: report.xml
              dotenv: [build.env]
              coverage_report: {coverage_format: cobertura, path: coverage.xml}
        """
    ).job("job")
    assert job.artifacts == {
        "name": "build-$CI_JOB_ID",
        "paths": ["dist/", "build/"],
        "exclude": ["**/*.tmp"],
        "expire_in": "1 week",
        "expire_in_s": 604800,
        "when": "always",
        "untracked": False,
        "reports": {
            "junit": ["report.xml"],
            "dotenv": ["build.env"],
            "coverage_report": {"coverage_format": "cobertura", "path": "coverage.xml"},
        },
    }


def test_artifacts_that_never_expire_have_no_expiry_seconds() -> None:
    job = parse("job:\n  script: x\n  artifacts: {paths: [a], expire_in: never}\n").job("job")
    assert (job.artifacts["expire_in"], job.artifacts["expire_in_s"]) == ("never", None)


def test_cache_is_one_mapping_or_a_list_and_always_comes_out_as_a_list() -> None:
    one = parse("job:\n  script: x\n  cache: {key: deps, paths: [node_modules]}\n").job("job")
    two = parse(
        "job:\n  script: x\n  cache:\n    - {key: {files: [package-lock.json]}, paths: [a], policy: pull}\n"
        "    - {paths: [b], when: on_failure, untracked: true}\n"
    ).job("job")
    assert one.cache == [
        {"key": "deps", "paths": ["node_modules"], "untracked": False, "when": "on_success", "policy": "pull-push"}
    ]
    assert two.cache[0]["key"] == {"files": ["package-lock.json"]}
    assert two.cache[0]["policy"] == "pull"
    assert (two.cache[1]["key"], two.cache[1]["when"], two.cache[1]["untracked"]) == ("default", "on_failure", True)


def test_an_empty_cache_list_turns_off_the_default_cache() -> None:
    spec = parse("default:\n  cache: {paths: [a]}\njob:\n  script: x\n  cache: []\n")
    assert spec.job("job").cache == []


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("python:3.11", {"name": "python:3.11"}),
        ("{name: python:3.11, entrypoint: ['']}", {"name": "python:3.11", "entrypoint": [""]}),
        ("{name: a, pull_policy: if-not-present}", {"name": "a", "pull_policy": ["if-not-present"]}),
    ],
)
def test_image_is_a_name_or_a_mapping(image: str, expected: dict) -> None:
    assert parse(f"job:\n  script: x\n  image: {image}\n").job("job").image == expected


def test_services_are_names_or_mappings() -> None:
    job = parse(
        "job:\n  script: x\n  services:\n    - redis:7\n"
        "    - {name: postgres:16, alias: db, command: [postgres, -c, fsync=off], variables: {POSTGRES_DB: t}}\n"
    ).job("job")
    assert job.services == [
        {"name": "redis:7"},
        {
            "name": "postgres:16",
            "alias": "db",
            "command": ["postgres", "-c", "fsync=off"],
            "variables": {"POSTGRES_DB": "t"},
        },
    ]


# --- tags, timeout, retry, interruptible, resource_group, coverage, deploy -------------


def test_tags_are_a_list_of_strings() -> None:
    assert parse("job:\n  script: x\n  tags: [docker, linux]\n").job("job").tags == ["docker", "linux"]


@pytest.mark.parametrize(
    ("timeout", "seconds"),
    [("1h 30m", 5400), ("90 minutes", 5400), ("3600", 3600), ("2 hours and 5 minutes", 7500), ("1:30:00", 5400)],
)
def test_timeout_is_a_duration_in_seconds(timeout: str, seconds: int) -> None:
    assert parse(f"job:\n  script: x\n  timeout: {timeout}\n").job("job").timeout_s == seconds


def test_a_job_without_timeout_leaves_it_to_the_server_default() -> None:
    assert parse("job:\n  script: x\n").job("job").timeout_s is None


@pytest.mark.parametrize(
    ("retry", "expected"),
    [
        ("0", (0, [], [])),
        ("2", (2, [], [])),
        ("{max: 2, when: runner_system_failure}", (2, ["runner_system_failure"], [])),
        (
            "{max: 1, when: [script_failure, api_failure], exit_codes: [137]}",
            (1, ["script_failure", "api_failure"], [137]),
        ),
    ],
)
def test_retry_is_a_count_or_max_when_and_exit_codes(retry: str, expected: tuple) -> None:
    job = parse(f"job:\n  script: x\n  retry: {retry}\n").job("job")
    assert (job.retry_max, job.retry_when, job.retry_exit_codes) == expected


def test_interruptible_and_resource_group_are_kept() -> None:
    job = parse("job:\n  script: x\n  interruptible: true\n  resource_group: production\n").job("job")
    assert (job.interruptible, job.resource_group) == (True, "production")


def test_coverage_becomes_a_python_pattern_with_its_flags_inlined() -> None:
    job = parse("job:\n  script: x\n  coverage: '/TOTAL.*\\s+(\\d+%)$/i'\n").job("job")
    assert job.coverage == "(?i)TOTAL.*\\s+(\\d+%)$"


def test_the_deploy_mapping_is_kept_as_written_for_the_runner() -> None:
    job = parse(
        "job:\n  script: x\n  deploy:\n    kind: kubernetes\n    namespace: web\n    manifests: [k8s/app.yml]\n"
    ).job("job")
    assert job.deploy == {"kind": "kubernetes", "namespace": "web", "manifests": ["k8s/app.yml"]}


# --- parallel -------------------------------------------------------------------------


def test_parallel_n_makes_n_numbered_instances() -> None:
    spec = parse("test:\n  script: x\n  parallel: 3\n")
    assert names(spec) == ["test 1/3", "test 2/3", "test 3/3"]
    assert spec.job("test 2/3").parallel == {"base": "test", "index": 2, "total": 3}


def test_parallel_matrix_makes_the_product_of_each_entry_with_its_values_as_variables() -> None:
    spec = parse(
        """
        variables: {G: g}
        deploy:
          script: x
          variables: {PROVIDER: none, OWN: o}
          parallel:
            matrix:
              - PROVIDER: aws
                STACK: [monitoring, app]
              - PROVIDER: [gcp, azure]
                REGION: 1
        """
    )
    assert names(spec) == [
        "deploy: [aws, monitoring]",
        "deploy: [aws, app]",
        "deploy: [gcp, 1]",
        "deploy: [azure, 1]",
    ]
    job = spec.job("deploy: [aws, app]")
    assert job.variables == {"G": "g", "PROVIDER": "aws", "OWN": "o", "STACK": "app"}
    assert job.parallel == {"base": "deploy", "index": 2, "total": 4, "matrix": {"PROVIDER": "aws", "STACK": "app"}}


# --- unsupported keywords -------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "secrets: {A: {vault: x}}",
        "id_tokens: {T: {aud: x}}",
        "release: {tag_name: v1}",
        "hooks: {pre_get_sources_script: x}",
    ],
)
def test_unsupported_gitlab_keywords_are_reported_as_warnings_not_dropped_silently(key: str) -> None:
    spec = parse(f"job:\n  script: x\n  {key}\n")
    name = key.split(":")[0]
    assert names(spec) == ["job"]
    assert [(w.job, w.key) for w in spec.warnings] == [("job", name)]
    assert "not supported" in spec.warnings[0].message


def test_a_trigger_job_warns_about_trigger_and_fails_for_its_missing_script() -> None:
    problem = the_problem("job:\n  trigger: other/project\n")
    assert "has no script" in problem.message


def test_workflow_name_names_the_run() -> None:
    assert parse("workflow: {name: 'Nightly build'}\njob:\n  script: x\n").name == "Nightly build"
