"""Properties of the parser: it never fails with anything but ConfigError, and DAGs come out right."""

from __future__ import annotations

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.config.dag import effective_edges
from pipelines.config.parser import JOB_KEYWORDS, parse_pipeline
from pipelines.config.spec import ConfigError, TriggerContext

FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))

CONTEXTS = st.builds(
    TriggerContext,
    source=st.sampled_from(["push", "merge_request_event", "schedule", "web", "api"]),
    ref=st.sampled_from(["main", "feature/x", "v1.0"]),
    is_tag=st.booleans(),
    variables=st.dictionaries(st.sampled_from(["X", "DEPLOY"]), st.sampled_from(["", "y", "/^y/"]), max_size=2),
)


def _files(path: str) -> str:
    known = {"ci/a.yml": "a-included:\n  script: x\n", "loop.yml": "include: loop.yml\n", "bad.yml": "[\n"}
    if path in known:
        return known[path]
    raise FileNotFoundError(path)


def assert_only_config_errors(text: str, context: TriggerContext) -> None:
    try:
        spec = parse_pipeline(text, context=context, read_file=_files)
    except ConfigError as exc:
        assert exc.problems, "a ConfigError must list its problems"
        # The parser's safety net turns crashes into this message: it must never be needed.
        assert not any("internal error" in problem.message for problem in exc.problems), exc.problems
    else:
        edges = effective_edges(spec)
        assert set(edges) == {job.name for job in spec.jobs}


# --- (1) nothing but ConfigError --------------------------------------------------------

FRAGMENTS = [
    "\n",
    "  ",
    "- ",
    ": ",
    "job:",
    "script:",
    "needs:",
    "extends:",
    "stages:",
    "rules:",
    "if:",
    "include:",
    "parallel:",
    "matrix:",
    "<<: ",
    "&a ",
    "*a",
    "!reference [",
    "]",
    "[",
    "{",
    "}",
    ",",
    "'",
    '"',
    '$X == "y"',
    "/(a+)+/",
    ".t",
    "x",
    "1",
    "-1",
    "null",
    "~",
    "? ",
    "|",
    ">",
    "#",
    "%YAML 1.1\n",
    "---\n",
    "!!binary ",
    "\t",
    "\x00",
    "\ufeff",
]


@FUZZ
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=40).map("".join), CONTEXTS)
def test_yaml_ish_text_gives_a_spec_or_a_config_error(text: str, context: TriggerContext) -> None:
    assert_only_config_errors(text, context)


@FUZZ
@given(st.text(max_size=300), CONTEXTS)
def test_arbitrary_text_gives_a_spec_or_a_config_error(text: str, context: TriggerContext) -> None:
    assert_only_config_errors(text, context)


JOB_KEYS = sorted(JOB_KEYWORDS) + ["trigger", "extends", "type", "scirpt"]
INNER_KEYS = ["if", "when", "job", "optional", "matrix", "refs", "variables", "name", "paths", "reports", "junit"]
INNER_KEYS += ["max", "key", "exit_codes", "value", "local", "changes", "start_in", "allow_failure", "needs", "default"]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 250),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        ["a", "b", ".t", "build", "test", "manual", "delayed", "never", "1h", "main", "ci/a.yml", "loop.yml"]
        + ["bad.yml", "$X", '$X == "y"', "/^v/", "30 minutes", "branches", "tags", "pull", "never", "$X =~ $X"]
    ),
    st.text(max_size=8),
)
TREES = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.sampled_from(INNER_KEYS), children, max_size=4)
    ),
    max_leaves=12,
)
JOBS = st.dictionaries(st.sampled_from(JOB_KEYS), TREES, max_size=7)
DOCUMENTS = st.dictionaries(
    st.sampled_from(["a", "b", "c", ".t", "stages", "variables", "default", "workflow", "include", "image"]),
    st.one_of(JOBS.map(lambda job: {"script": "x", **job}), JOBS, TREES),
    min_size=1,
    max_size=6,
)


@FUZZ
@given(DOCUMENTS, CONTEXTS)
def test_random_config_structures_give_a_spec_or_a_config_error(document: dict, context: TriggerContext) -> None:
    assert_only_config_errors(yaml.safe_dump(document, allow_unicode=True), context)


# --- (2) random valid DAGs --------------------------------------------------------------


@st.composite
def dag_configs(draw):
    """(config text, jobs: name -> (stage index, needs or None, parallel count or None), stages)."""
    stages = [f"s{index}" for index in range(draw(st.integers(1, 4)))]
    count = draw(st.integers(1, 10))
    jobs: dict[str, tuple[int, list[str] | None, int | None]] = {}
    for index in range(count):
        name = f"j{index}"
        stage = draw(st.integers(0, len(stages) - 1))
        # Jobs defined before this one in the same or an earlier stage: needs can never cycle.
        candidates = [other for other, (other_stage, _n, _p) in jobs.items() if other_stage <= stage]
        needs = draw(st.one_of(st.none(), st.lists(st.sampled_from(candidates), unique=True))) if candidates else None
        if needs is None and draw(st.booleans()):
            needs = [] if draw(st.booleans()) else None
        parallel = draw(st.one_of(st.none(), st.integers(1, 3)))
        jobs[name] = (stage, needs, parallel)
    document: dict = {"stages": stages}
    for name, (_stage, needs, parallel) in jobs.items():
        job: dict = {"stage": stages[stage], "script": [f"echo {name}"]}
        if needs is not None:
            job["needs"] = needs
        if parallel is not None:
            job["parallel"] = parallel
        document[name] = job
    return yaml.safe_dump(document, sort_keys=False), jobs, stages


def _instances(name: str, parallel: int | None) -> list[str]:
    return [name] if parallel is None else [f"{name} {i}/{parallel}" for i in range(1, parallel + 1)]


@settings(max_examples=150, deadline=None)
@given(dag_configs())
def test_random_valid_dags_parse_with_edges_that_respect_stages_and_needs(generated) -> None:
    text, jobs, stages = generated
    spec = parse_pipeline(text, context=TriggerContext())
    edges = effective_edges(spec)
    stage_of = {job.name: spec.stages.index(job.stage) for job in spec.jobs}
    expected_names = [instance for name, (_s, _n, parallel) in jobs.items() for instance in _instances(name, parallel)]
    assert [job.name for job in spec.jobs] == expected_names
    for name, (_stage, needs, parallel) in jobs.items():
        for instance in _instances(name, parallel):
            if needs is None:
                # Stage order: every job of every earlier stage, nothing else.
                earlier = {other for other, index in stage_of.items() if index < stage_of[instance]}
                assert set(edges[instance]) == earlier
            else:
                wanted = [target for need in needs for target in _instances(need, jobs[need][2])]
                assert edges[instance] == wanted
            # No edge ever points to a later stage.
            assert all(stage_of[target] <= stage_of[instance] for target in edges[instance])
    assert spec.stages == [".pre", *stages, ".post"]
    _assert_acyclic(edges)


def _assert_acyclic(edges: dict[str, list[str]]) -> None:
    remaining = {name: set(targets) for name, targets in edges.items()}
    while remaining:
        ready = [name for name, targets in remaining.items() if not targets]
        assert ready, f"cycle among {sorted(remaining)}"
        for name in ready:
            del remaining[name]
        for targets in remaining.values():
            targets.difference_update(ready)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 6), st.integers(0, 5))
def test_a_needs_cycle_of_any_length_is_reported_as_the_cycle(length: int, extra: int) -> None:
    names = [f"c{index}" for index in range(length)]
    jobs = {name: {"script": "x", "needs": [names[(index + 1) % length]]} for index, name in enumerate(names)}
    jobs.update({f"free{index}": {"script": "x"} for index in range(extra)})
    try:
        parse_pipeline(yaml.safe_dump(jobs), context=TriggerContext())
    except ConfigError as exc:
        cycles = [problem.message for problem in exc.problems if "cycle" in problem.message]
        assert len(cycles) == 1
        path = cycles[0].split(": ", 1)[1].split(" -> ")
        assert path[0] == path[-1]
        assert sorted(path[:-1]) == sorted(names)
    else:
        raise AssertionError("a cycle must be a config error")
