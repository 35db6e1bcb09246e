"""The CI expression language of rules:if, checked by example and against a Python reference."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.config.expressions import (
    MAX_EXPRESSION_LENGTH,
    AllOf,
    ExpressionError,
    compile_regex_literal,
    parse_expression,
    regex_literal_to_python,
)

VARIABLES = {"BRANCH": "main", "EMPTY": "", "TAG": "v1.2.3", "PATTERN": "/^ma/", "NOT_A_PATTERN": "main", "BAD": "/(/"}


def evaluate(source: str, variables: dict[str, str] | None = None) -> bool:
    return parse_expression(source).evaluate(VARIABLES if variables is None else variables)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("$BRANCH", True),
        ("${BRANCH}", True),
        ("$EMPTY", False),
        ("$UNSET", False),
        ('$BRANCH == "main"', True),
        ("$BRANCH == 'main'", True),
        ('$BRANCH != "main"', False),
        ('"main" == $BRANCH', True),
        ("$BRANCH == $BRANCH", True),
        ("$BRANCH == $TAG", False),
        ("$UNSET == null", True),
        ("$EMPTY == null", False),
        ('$EMPTY == ""', True),
        ("$BRANCH != null", True),
        ("null == null", True),
        ('$UNSET == ""', False),
        ("$BRANCH =~ /^ma/", True),
        ("$BRANCH =~ /^MA/", False),
        ("$BRANCH =~ /^MA/i", True),
        ("$BRANCH !~ /^ma/", False),
        ("$TAG =~ /^v\\d+\\.\\d+/", True),
        ("$TAG =~ /\\.3\\z/", True),
        ("$UNSET =~ /.*/", False),
        ("$UNSET !~ /.*/", True),
        ("$BRANCH =~ $PATTERN", True),
        ("$BRANCH !~ $PATTERN", False),
        ('$BRANCH =~ "/^ma/"', True),
        ("$BRANCH =~ $NOT_A_PATTERN", False),
        ("$BRANCH =~ $UNSET", False),
        ('$BRANCH == "x" || $BRANCH == "main"', True),
        ('$BRANCH == "main" && $TAG == "x"', False),
        ('$BRANCH == "x" || $BRANCH == "main" && $EMPTY', False),
        ('($BRANCH == "x" || $BRANCH == "main") && $TAG', True),
        ("$TAG && ($UNSET || ($BRANCH && $TAG =~ /v1/))", True),
        ('"literal"', True),
        ("null", False),
    ],
)
def test_an_expression_evaluates_like_gitlab(source: str, expected: bool) -> None:
    assert evaluate(source) is expected


@pytest.mark.parametrize(
    ("source", "words"),
    [
        ("", "empty expression"),
        ("$", "must be followed by a name"),
        ("${BRANCH", "expected ${NAME}"),
        ("$A ==", "found the end"),
        ('$A = "x"', "unexpected '='"),
        ("main", "variables start with '$'"),
        ("$A && && $B", "found '&&'"),
        ("($A", "to close the '('"),
        ("$A)", "found ')'"),
        ('"unterminated', "unterminated string"),
        ("$A =~ /abc", "unterminated /regex/"),
        ("$A =~ /(/", "invalid regex"),
        ("$A =~ //", "empty regex"),
        ("$A =~ /a/x", "unknown regex flag 'x'"),
        ('$A =~ "main"', "must be a /regex/"),
        ("$A =~ null", "after =~"),
        ("/a/", "can only follow =~"),
        ("$A =~ /(a+)+$/", "exponential time"),
        ("$A =~ /(a*b*)*/", "exponential time"),
        ("$A =~ /(?=a)/", "lookahead"),
        ("$A =~ /(a)\\1/", "backreferences"),
        ("(" * 40 + "$A" + ")" * 40, "nested more than"),
        ("$A =~ /" + "a" * 2000 + "/", "longer than"),
        ("$A" + " && $A" * MAX_EXPRESSION_LENGTH, "longer than"),
    ],
)
def test_an_invalid_expression_is_refused_with_a_reason(source: str, words: str) -> None:
    with pytest.raises(ExpressionError, match=None) as caught:
        parse_expression(source)
    assert words in str(caught.value)


def test_a_variable_holding_an_invalid_regex_is_an_error_when_evaluated() -> None:
    expression = parse_expression("$BRANCH =~ $BAD")
    with pytest.raises(ExpressionError, match="invalid regex"):
        expression.evaluate(VARIABLES)


def test_safe_nested_repetition_with_a_fixed_separator_is_allowed() -> None:
    assert compile_regex_literal(r"/^v\d+(\.\d+)*$/").search("v1.2.3")


def test_a_long_chain_of_operators_is_one_flat_node_not_a_deep_tree() -> None:
    expression = parse_expression(" && ".join(["$BRANCH"] * 350))
    assert isinstance(expression.root, AllOf)
    assert len(expression.root.items) == 350
    assert expression.evaluate(VARIABLES) is True


def test_a_regex_literal_converts_to_one_python_pattern() -> None:
    assert regex_literal_to_python("/total: (\\d+)%/im") == "(?im)total: (\\d+)%"


# --- properties against a reference evaluator ----------------------------------------

NAMES = ["A", "B", "C", "UNSET"]
VALUES = ["", "x", "main", "v1"]
variables_strategy = st.dictionaries(st.sampled_from(NAMES[:3]), st.sampled_from(VALUES))


def _operand():
    return st.one_of(
        st.sampled_from(NAMES).map(lambda name: (f"${name}", ("var", name))),
        st.sampled_from(VALUES).map(lambda value: (f'"{value}"', ("str", value))),
        st.just(("null", ("null",))),
    )


def _value(operand: tuple, env: dict[str, str]) -> str | None:
    kind = operand[0]
    if kind == "var":
        return env.get(operand[1])
    return operand[1] if kind == "str" else None


@st.composite
def _comparison(draw):
    left_text, left = draw(_operand())
    kind = draw(st.sampled_from(["truthy", "==", "!=", "=~", "!~"]))
    if kind == "truthy":
        return left_text, ("truthy", left)
    if kind in ("==", "!="):
        right_text, right = draw(_operand())
        return f"{left_text} {kind} {right_text}", (kind, left, right)
    prefix = draw(st.sampled_from(["a", "^", "m", "1$", "^(main|v1)$"]))
    return f"{left_text} {kind} /{prefix}/", (kind, left, prefix)


def _combine(children):
    pair = st.tuples(children, children)
    return st.one_of(
        pair.map(lambda p: (f"{p[0][0]} && {p[1][0]}", ("and", p[0][1], p[1][1]))),
        pair.map(lambda p: (f"{p[0][0]} || {p[1][0]}", ("or", p[0][1], p[1][1]))),
        children.map(lambda c: (f"({c[0]})", c[1])),
    )


expressions = st.recursive(_comparison(), _combine, max_leaves=8)


def _reference(tree: tuple, env: dict[str, str]) -> bool:
    """Python's own semantics for the parsed-by-hand tree (the text may drop parentheses)."""
    import re

    kind = tree[0]
    if kind == "truthy":
        return bool(_value(tree[1], env))
    if kind == "==":
        return _value(tree[1], env) == _value(tree[2], env)
    if kind == "!=":
        return _value(tree[1], env) != _value(tree[2], env)
    if kind in ("=~", "!~"):
        text = _value(tree[1], env)
        matched = text is not None and re.search(tree[2], text) is not None
        return matched if kind == "=~" else not matched
    left, right = _reference(tree[1], env), _reference(tree[2], env)
    return (left and right) if kind == "and" else (left or right)


@settings(max_examples=300, deadline=None)
@given(st.tuples(_comparison(), _comparison(), _comparison()), variables_strategy)
def test_and_binds_tighter_than_or_like_python(parts, env) -> None:
    (a_text, a), (b_text, b), (c_text, c) = parts
    as_written = evaluate(f"{a_text} || {b_text} && {c_text}", env)
    assert as_written == (_reference(a, env) or (_reference(b, env) and _reference(c, env)))
    assert evaluate(f"{a_text} && {b_text} || {c_text}", env) == (
        (_reference(a, env) and _reference(b, env)) or _reference(c, env)
    )


@settings(max_examples=300, deadline=None)
@given(expressions, variables_strategy)
def test_fully_parenthesized_expressions_match_the_reference_evaluator(expression, env) -> None:
    text, tree = expression
    parenthesized = _parenthesize(tree)
    assert evaluate(parenthesized, env) == _reference(tree, env)
    # The text as generated may rely on precedence; it must still parse and evaluate.
    assert isinstance(evaluate(text, env), bool)


def _parenthesize(tree: tuple) -> str:
    kind = tree[0]
    if kind in ("and", "or"):
        operator = "&&" if kind == "and" else "||"
        return f"({_parenthesize(tree[1])} {operator} {_parenthesize(tree[2])})"
    operand = _render(tree[1])
    if kind == "truthy":
        return operand
    if kind in ("==", "!="):
        return f"{operand} {kind} {_render(tree[2])}"
    return f"{operand} {kind} /{tree[2]}/"


def _render(operand: tuple) -> str:
    if operand[0] == "var":
        return f"${operand[1]}"
    return f'"{operand[1]}"' if operand[0] == "str" else "null"


@settings(max_examples=300, deadline=None)
@given(_operand(), _operand(), variables_strategy)
def test_equals_is_the_negation_of_not_equals(left, right, env) -> None:
    left_text, right_text = left[0], right[0]
    assert evaluate(f"{left_text} == {right_text}", env) is not evaluate(f"{left_text} != {right_text}", env)


@settings(max_examples=200, deadline=None)
@given(_operand(), st.sampled_from(["a", "^", "m", "x$"]), variables_strategy)
def test_matches_is_the_negation_of_does_not_match(left, pattern, env) -> None:
    assert evaluate(f"{left[0]} =~ /{pattern}/", env) is not evaluate(f"{left[0]} !~ /{pattern}/", env)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=60))
def test_any_text_either_parses_or_raises_expression_error(source: str) -> None:
    try:
        expression = parse_expression(source)
    except ExpressionError:
        return
    assert isinstance(expression.evaluate(VARIABLES), bool)
