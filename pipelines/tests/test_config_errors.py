"""Bad configs: each gives a ConfigError whose problems name the job, the key and the line."""

from __future__ import annotations

import pytest

from pipelines.config.parser import parse_pipeline
from pipelines.config.spec import ConfigError, TriggerContext

from .config_helpers import names, parse, problems, the_problem

# (config, expected job, key, line, words in the message)
BAD_CONFIGS = [
    pytest.param("job:\n  script: [a\n", None, None, 3, "invalid YAML", id="invalid-yaml"),
    pytest.param("- a\n- b\n", None, None, 1, "must be a mapping", id="top-level-list"),
    pytest.param("just text\n", None, None, 1, "must be a mapping", id="top-level-scalar"),
    pytest.param("job:\n  script: a\njob:\n  script: b\n", None, None, 3, "duplicate key 'job'", id="duplicate-job"),
    pytest.param(
        "job:\n  script: a\n  stage: build\n  script: b\n", None, None, 4, "duplicate key", id="duplicate-key"
    ),
    pytest.param("job:\n  stage: nope\n  script: x\n", "job", "stage", 2, "unknown stage 'nope'", id="unknown-stage"),
    pytest.param("job:\n  stage: test\n", "job", None, 1, "has no script", id="no-script"),
    pytest.param("job:\n  script: []\n", "job", "script", 2, "must not be empty", id="empty-script"),
    pytest.param("job:\n  script: 3\n", "job", "script", 2, "string or a list", id="script-number"),
    pytest.param("job:\n  script: [ok, {a: b}]\n", "job", "script", 2, "must be a string", id="script-mapping-line"),
    pytest.param("job:\n  script: x\n  scirpt: y\n", "job", "scirpt", 3, "did you mean 'script'", id="typo-key"),
    pytest.param("job:\n  script: x\n  tags: docker\n", "job", "tags", 3, "must be a list", id="tags-string"),
    pytest.param("job:\n  script: x\n  tags: [1]\n", "job", "tags", 3, "list of strings", id="tags-number"),
    pytest.param("job:\n  script: x\n  needs: [ghost]\n", "job", "needs", 3, "unknown job 'ghost'", id="unknown-need"),
    pytest.param(
        "job:\n  script: x\n  needs: [.hidden]\n.hidden:\n  script: y\n", "job", "needs", 3, "hidden", id="hidden-need"
    ),
    pytest.param(
        "a:\n  script: x\n  needs: [b]\nb:\n  script: x\n  needs: [a]\n",
        "a",
        "needs",
        3,
        "a -> b -> a",
        id="needs-cycle",
    ),
    pytest.param("a:\n  script: x\n  needs: [a]\n", "a", "needs", 3, "a -> a", id="needs-itself"),
    pytest.param(
        "stages: [build, deploy]\nb:\n  stage: build\n  script: x\n  needs: [d]\nd:\n  stage: deploy\n  script: x\n",
        "b",
        "needs",
        5,
        "later stage 'deploy'",
        id="needs-later-stage",
    ),
    pytest.param(
        "job:\n  script: x\n  needs: [gone]\ngone:\n  script: x\n  only: [tags]\n",
        "job",
        "needs",
        3,
        "left out",
        id="needs-left-out-job",
    ),
    pytest.param(
        "job:\n  script: x\n  rules: [{when: always}]\n  only: [main]\n", "job", "only", 4, "rules", id="rules-only"
    ),
    pytest.param(
        "job:\n  script: x\n  rules: [{when: always}]\n  except: [main]\n",
        "job",
        "except",
        4,
        "rules",
        id="rules-except",
    ),
    pytest.param(
        "job:\n  script: x\n  rules: [{when: always}]\n  when: manual\n", "job", "when", 4, "rules", id="rules-when"
    ),
    pytest.param("job:\n  script: x\n  when: never\n", "job", "when", 3, "only valid inside rules", id="when-never"),
    pytest.param("job:\n  script: x\n  when: sometimes\n", "job", "when", 3, "must be one of", id="when-unknown"),
    pytest.param("job:\n  script: x\n  when: delayed\n", "job", "when", 3, "needs start_in", id="delayed-no-start-in"),
    pytest.param(
        "job:\n  script: x\n  start_in: 5m\n", "job", "start_in", 3, "when: delayed", id="start-in-not-delayed"
    ),
    pytest.param(
        "job:\n  script: x\n  when: delayed\n  start_in: soonish\n",
        "job",
        "start_in",
        4,
        "not a duration",
        id="bad-start-in",
    ),
    pytest.param(
        "job:\n  script: x\n  when: delayed\n  start_in: 2 weeks\n",
        "job",
        "start_in",
        4,
        "maximum",
        id="start-in-too-long",
    ),
    pytest.param(
        "job:\n  script: x\n  rules:\n    - when: delayed\n",
        "job",
        "rules:when",
        4,
        "needs start_in",
        id="rule-delayed",
    ),
    pytest.param("job:\n  script: x\n  timeout: forever\n", "job", "timeout", 3, "not a duration", id="bad-timeout"),
    pytest.param("job:\n  script: x\n  timeout: 0\n", "job", "timeout", 3, "positive", id="zero-timeout"),
    pytest.param("job:\n  script: x\n  parallel: 0\n", "job", "parallel", 3, "1 to 200", id="parallel-zero"),
    pytest.param("job:\n  script: x\n  parallel: 201\n", "job", "parallel", 3, "1 to 200", id="parallel-too-many"),
    pytest.param(
        "job:\n  script: x\n  parallel:\n    matrix:\n      - A: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]\n"
        "        B: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]\n",
        "job",
        "parallel",
        3,
        "more than 200",
        id="matrix-too-big",
    ),
    pytest.param("job:\n  script: x\n  retry: 3\n", "job", "retry", 3, "0, 1 or 2", id="retry-too-many"),
    pytest.param(
        "job:\n  script: x\n  retry: {max: 1, when: gremlins}\n", "job", "retry", 3, "retry:when", id="retry-when"
    ),
    pytest.param(
        "job:\n  script: x\n  allow_failure: maybe\n", "job", "allow_failure", 3, "true, false", id="allow-failure"
    ),
    pytest.param(
        "job:\n  script: x\n  variables: {DEBUG: true}\n", "job", "variables", 3, "must be quoted", id="bool-var"
    ),
    pytest.param("job:\n  script: x\n  variables: [A]\n", "job", "variables", 3, "mapping", id="variables-list"),
    pytest.param(
        "job:\n  script: x\n  environment: {url: https://x}\n",
        "job",
        "environment",
        3,
        "needs a name",
        id="env-no-name",
    ),
    pytest.param(
        "job:\n  script: x\n  artifacts: {paths: [a], when: sometimes}\n",
        "job",
        "artifacts",
        3,
        "artifacts:when",
        id="art-when",
    ),
    pytest.param(
        "job:\n  script: x\n  artifacts: {reports: {junitt: r.xml}}\n",
        "job",
        "artifacts",
        3,
        "did you mean 'junit'",
        id="report",
    ),
    pytest.param(
        "job:\n  script: x\n  cache: {policy: sometimes}\n", "job", "cache", 3, "cache:policy", id="cache-policy"
    ),
    pytest.param(
        "job:\n  script: x\n  image: {entrypoint: [sh]}\n", "job", "image", 3, "needs a name", id="image-no-name"
    ),
    pytest.param("job:\n  script: x\n  coverage: 'Total: (\\d+)%'\n", "job", "coverage", 3, "/regex/", id="coverage"),
    pytest.param("job:\n  script: x\n  deploy: yes-please\n", "job", "deploy", 3, "mapping", id="deploy-not-mapping"),
    pytest.param(
        "job:\n  script: x\n  rules:\n    - if: $A ==\n", "job", "rules:if", 4, "invalid expression", id="bad-rules-if"
    ),
    pytest.param(
        "job:\n  script: x\n  rules:\n    - if: $A =~ /(a+)+$/\n",
        "job",
        "rules:if",
        4,
        "exponential",
        id="catastrophic-regex",
    ),
    pytest.param(
        "job:\n  script: x\n  rules:\n    - iff: $A\n", "job", "rules", 4, "did you mean 'if'", id="rule-typo"
    ),
    pytest.param("job:\n  script: x\n  rules: {if: $A}\n", "job", "rules", 3, "list of rules", id="rules-mapping"),
    pytest.param(
        "job:\n  script: x\n  only: {variables: ['$A =']}\n",
        "job",
        "only:variables",
        3,
        "invalid",
        id="bad-only-variables",
    ),
    pytest.param("job:\n  script: x\n  only: ['/(/']\n", "job", "only:refs", 3, "invalid regex", id="bad-only-regex"),
    pytest.param(
        "job:\n  script: x\n  extends: .ghost\n", "job", "extends", 3, "unknown job '.ghost'", id="unknown-parent"
    ),
    pytest.param(
        ".a:\n  extends: .b\n.b:\n  extends: .a\njob:\n  extends: .a\n  script: x\n",
        ".b",
        "extends",
        4,
        "cycle: .a -> .b -> .a",
        id="extends-cycle",
    ),
    pytest.param(
        "job:\n  script: !reference [.nowhere, script]\n",
        "job",
        "!reference",
        2,
        "'.nowhere' not found",
        id="reference-missing",
    ),
    pytest.param(
        ".a:\n  script: [x]\njob:\n  script: !reference [.a, before_script]\n",
        "job",
        "!reference",
        4,
        "'before_script' not found in [.a]",
        id="reference-missing-key",
    ),
    pytest.param(
        ".a:\n  script: !reference [.a, script]\njob:\n  script: !reference [.a, script]\n",
        ".a",
        "!reference",
        2,
        "!reference cycle",
        id="reference-cycle",
    ),
    pytest.param("job:\n  script: !reference .a\n", None, None, 2, "non-empty sequence", id="reference-not-a-list"),
    pytest.param("job:\n  script: !secret x\n", None, None, 2, "could not determine a constructor", id="unknown-tag"),
    pytest.param("", None, None, None, "empty", id="empty"),
    pytest.param(".only-hidden:\n  script: x\n", None, None, None, "no jobs", id="no-visible-jobs"),
    pytest.param("stages: build\njob:\n  script: x\n", None, "stages", 1, "list", id="stages-not-list"),
    pytest.param(
        "default:\n  stage: build\njob:\n  script: x\n", None, "default", 2, "unknown key 'stage'", id="default-key"
    ),
    pytest.param(
        "job:\n  script: x\nworkflow:\n  rules: [{when: manual}]\n",
        None,
        "workflow:rules:when",
        4,
        "always, never",
        id="wf",
    ),
    pytest.param(
        "job:\n  script: x\n  needs: [{project: a/b}]\n  needs: []\n", None, None, 4, "duplicate", id="dup-needs"
    ),
    pytest.param("stagse: [a]\njob:\n  script: x\n", "stagse", None, 1, "did you mean 'stages'", id="global-typo"),
    pytest.param(
        "a:\n  stage: build\n  script: x\nb:\n  script: x\n  dependencies: [c]\nc:\n  script: x\n",
        "b",
        "dependencies",
        6,
        "not in an earlier stage",
        id="dependency-same-stage",
    ),
    pytest.param(
        "a:\n  stage: build\n  script: x\nb:\n  script: x\n  needs: []\n  dependencies: [a]\n",
        "b",
        "dependencies",
        7,
        "also be listed in needs",
        id="dependency-not-needed",
    ),
    pytest.param(
        "job:\n  script: x\n  dependencies: [ghost]\n", "job", "dependencies", 3, "unknown job", id="unknown-dep"
    ),
]


@pytest.mark.parametrize(("text", "job", "key", "line", "words"), BAD_CONFIGS)
def test_a_bad_config_is_one_problem_naming_job_key_and_line(
    text: str, job: str | None, key: str | None, line: int | None, words: str
) -> None:
    problem = the_problem(text)
    assert words in problem.message
    assert (problem.job, problem.key, problem.line) == (job, key, line)


def test_every_problem_is_reported_at_once() -> None:
    found = problems(
        """
        stages: [build, test]
        a:
          stage: nope
          script: x
        b:
          script: 3
        c:
          script: x
          when: never
          timeout: never
        """
    )
    assert [(p.job, p.key) for p in found] == [("a", "stage"), ("b", "script"), ("c", "when"), ("c", "timeout")]


def test_a_problem_reads_as_a_sentence_with_its_location() -> None:
    problem = the_problem("job:\n  script: x\n  tags: docker\n")
    assert str(problem) == "job 'job', key 'tags', line 3: must be a list (tags: [docker]), not a string"


def test_an_optional_need_on_a_job_left_out_by_rules_is_dropped() -> None:
    spec = parse(
        "job:\n  script: x\n  needs: [{job: gone, optional: true}, kept]\nkept:\n  script: x\n"
        "gone:\n  script: x\n  rules: [{if: $NEVER}]\n"
    )
    assert [need.job for need in spec.job("job").needs] == ["kept"]


def test_an_optional_need_on_a_job_that_does_not_exist_is_still_an_error() -> None:
    problem = the_problem("job:\n  script: x\n  needs: [{job: ghost, optional: true}]\n")
    assert "unknown job 'ghost'" in problem.message


def test_extends_deeper_than_eleven_levels_is_an_error() -> None:
    levels = "".join(f".t{i}:\n  extends: .t{i + 1}\n" for i in range(11)) + ".t11:\n  script: deep\n"
    problem = the_problem(levels + "job:\n  extends: .t0\n")
    assert (problem.key, "more than 11 levels" in problem.message) == ("extends", True)


def test_a_very_long_extends_chain_is_refused_without_recursing_through_it() -> None:
    chain = "".join(f".t{i}:\n  extends: .t{i + 1}\n" for i in range(3000)) + ".t3000:\n  script: x\n"
    problem = the_problem(chain + "job:\n  extends: .t0\n")
    assert "more than 11 levels" in problem.message


def test_an_include_cycle_is_an_error_naming_the_chain() -> None:
    problem = the_problem(
        "include: a.yml\njob:\n  script: x\n", files={"a.yml": "include: b.yml\n", "b.yml": "include: a.yml\n"}
    )
    assert "include cycle: a.yml -> b.yml -> a.yml" in problem.message


def test_more_than_150_included_files_is_an_error() -> None:
    files = {f"f{i}.yml": f"include: f{i + 1}.yml\n" for i in range(200)}
    problem = the_problem("include: f0.yml\njob:\n  script: x\n", files=files)
    assert "more than 150 included files" in problem.message


@pytest.mark.parametrize(
    ("include", "words"),
    [
        ("../outside.yml", "inside the repository"),
        ("ci/*.yml", "wildcard"),
        ("ci/notes.txt", ".yml or .yaml"),
        ("{locale: a.yml}", "did you mean 'local'"),
    ],
)
def test_bad_include_paths_are_errors(include: str, words: str) -> None:
    problem = the_problem(f"include: {include}\njob:\n  script: x\n", files={})
    assert words in problem.message


def test_a_billion_laughs_alias_bomb_is_refused_before_it_expands() -> None:
    levels = ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for index in range(1, 9):
        previous = chr(ord("a") + index - 1)
        current = chr(ord("a") + index)
        levels.append(f"{current}: &{current} [" + ", ".join([f"*{previous}"] * 9) + "]")
    problem = the_problem("\n".join(levels) + "\n")
    assert "alias bomb" in problem.message


def test_a_recursive_alias_is_refused() -> None:
    assert "recursive alias" in the_problem("job: &job\n  script: x\n  again: *job\n").message


def test_nesting_deeper_than_the_limit_is_refused() -> None:
    assert "nested more than" in the_problem("job:\n  script: x\n  deploy: " + "[" * 40 + "]" * 40 + "\n").message


def test_a_config_over_the_size_limit_is_refused(settings) -> None:
    settings.CONVEYOR_MAX_CONFIG_BYTES = 2048
    problem = the_problem("job:\n  script: x\n" + "# padding\n" * 300)
    assert "limit is 2048" in problem.message


def test_more_jobs_than_the_limit_is_an_error(settings) -> None:
    settings.CONVEYOR_MAX_JOBS_PER_RUN = 5
    assert "limit is 5" in the_problem("".join(f"j{i}:\n  script: x\n" for i in range(6))).message
    assert "more than 5 jobs" in the_problem("job:\n  script: x\n  parallel: 6\n").message
    assert len(names(parse("job:\n  script: x\n  parallel: 5\n"))) == 5


def test_text_that_is_not_unicode_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not valid Unicode"):
        parse_pipeline("job:\n  script: '\ud800'\n", context=TriggerContext())


def test_references_nested_more_than_ten_levels_deep_are_an_error() -> None:
    chain = [".r0:\n  s: [x]"] + [f".r{i}:\n  s: [!reference [.r{i - 1}, s]]" for i in range(1, 12)]
    found = problems("\n".join(chain) + "\njob:\n  script: !reference [.r11, s]\n")
    assert all("more than 10 levels deep" in problem.message for problem in found)
    assert {problem.job for problem in found} == {".r11", "job"}


def test_references_that_multiply_a_template_past_the_node_limit_are_refused() -> None:
    levels = [".l0:\n  s: [" + ", ".join(["x"] * 10) + "]"]
    levels += [f".l{i}:\n  s: [" + ", ".join([f"!reference [.l{i - 1}, s]"] * 10) + "]" for i in range(1, 9)]
    problem = the_problem("\n".join(levels) + "\njob:\n  script: !reference [.l8, s]\n")
    assert "more than 1000000 nodes" in problem.message


def test_the_parser_works_without_django_settings_using_default_limits() -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "from pipelines.config.parser import parse_pipeline\n"
        "from pipelines.config.spec import ConfigError, TriggerContext\n"
        "print(len(parse_pipeline('j:\\n  script: x\\n  parallel: 200\\n', context=TriggerContext()).jobs))\n"
        "try:\n"
        "    parse_pipeline(''.join(f'j{i}:\\n  script: x\\n' for i in range(2001)), context=TriggerContext())\n"
        "except ConfigError as exc:\n"
        "    print(exc.problems[0].message)\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "DJANGO_SETTINGS_MODULE"}
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["200", "the config defines 2001 jobs; the limit is 2000"]
