"""The CI expression language of `rules:if`, `workflow:rules:if` and `only/except:variables`.

    expression := or
    or         := and ( "||" and )*
    and        := primary ( "&&" primary )*           # && binds tighter than ||
    primary    := "(" expression ")" | comparison
    comparison := operand [ ("==" | "!=") operand
                          | ("=~" | "!~") ( /regex/flags | $VAR | "/regex/" ) ]
    operand    := $VAR | ${VAR} | "string" | 'string' | null

A bare operand is true when it is set and not empty. An unset variable is null: it equals
`null` (and only null), never matches `=~` and always matches `!~`. The right side of `=~`
may be a variable (or a quoted string) holding a `/regex/flags` literal, as in GitLab.

GitLab evaluates patterns with RE2 (linear time); here they run on Python's `re`, which
backtracks. So patterns are screened before use: length is capped, RE2-only syntax is
enforced (no backreferences, no lookaround: RE2 has neither) and nested repetition such as
`(a+)+`, the classic catastrophic-backtracking shape, is refused.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MAX_EXPRESSION_LENGTH = 4096
MAX_REGEX_LENGTH = 1024
MAX_PARENTHESES_DEPTH = 32

_FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_REGEX_LITERAL = re.compile(r"/(.*)/([a-zA-Z]*)", re.DOTALL)

try:  # The screening below reads the pattern's parse tree; without it, only the caps apply.
    from re import _constants as _sre
    from re import _parser as _sre_parse
except ImportError:  # pragma: no cover - CPython has had these since 3.11
    _sre = _sre_parse = None  # type: ignore[assignment]


class ExpressionError(Exception):
    """The expression (or a regex in it) is invalid. The message is fit to show a user."""


# --- Regex literals ---------------------------------------------------------------------


def is_regex_literal(text: str) -> bool:
    return len(text) >= 2 and text.startswith("/") and _REGEX_LITERAL.fullmatch(text) is not None


def compile_regex_literal(text: str) -> re.Pattern[str]:
    """Compile a `/pattern/flags` literal (flags: i, m, s); raise ExpressionError if it is bad."""
    match = _REGEX_LITERAL.fullmatch(text)
    if match is None:
        raise ExpressionError(f"{text!r} is not a /regex/ literal")
    return compile_pattern(match.group(1), match.group(2))


def regex_literal_to_python(text: str) -> str:
    """`/total: (\\d+)%/i` -> `(?i)total: (\\d+)%`: the literal as one Python pattern string."""
    compiled = compile_regex_literal(text)
    match = _REGEX_LITERAL.fullmatch(text)
    assert match is not None
    flags = "".join(sorted(set(match.group(2))))
    return f"(?{flags}){compiled.pattern}" if flags else compiled.pattern


@functools.lru_cache(maxsize=512)
def compile_pattern(pattern: str, flags: str = "") -> re.Pattern[str]:
    if not pattern:
        raise ExpressionError("empty regex //")
    if len(pattern) > MAX_REGEX_LENGTH:
        raise ExpressionError(f"regex longer than {MAX_REGEX_LENGTH} characters")
    value = 0
    for flag in flags:
        if flag not in _FLAGS:
            raise ExpressionError(f"unknown regex flag {flag!r} (supported: i, m, s)")
        value |= _FLAGS[flag]
    python_pattern = _from_re2(pattern)
    try:
        compiled = re.compile(python_pattern, value)
    except (re.error, OverflowError, RecursionError) as exc:
        raise ExpressionError(f"invalid regex /{pattern}/: {exc}") from None
    _screen(python_pattern, value, pattern)
    return compiled


def _from_re2(pattern: str) -> str:
    # RE2's end-of-text anchor is \z; Python spells it \Z (and rejects \z).
    out = []
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "\\" and index + 1 < len(pattern):
            nxt = pattern[index + 1]
            out.append("\\Z" if nxt == "z" else char + nxt)
            index += 2
            continue
        out.append(char)
        index += 1
    return "".join(out)


def _screen(pattern: str, flags: int, shown: str) -> None:
    if _sre_parse is None:
        return
    try:
        parsed = _sre_parse.parse(pattern, flags)
    except (re.error, RecursionError, OverflowError):  # re.compile accepted it; nothing to screen
        return
    try:
        _walk(list(parsed))
    except ExpressionError as exc:
        raise ExpressionError(f"regex /{shown}/: {exc}") from None


_REPEATS = () if _sre is None else (_sre.MAX_REPEAT, _sre.MIN_REPEAT, _sre.POSSESSIVE_REPEAT)


def _walk(items: list[tuple[Any, Any]]) -> None:
    for op, arg in items:
        if op in (_sre.GROUPREF, _sre.GROUPREF_EXISTS):
            raise ExpressionError("backreferences are not supported (GitLab's RE2 has none)")
        if op in (_sre.ASSERT, _sre.ASSERT_NOT):
            raise ExpressionError("lookahead/lookbehind is not supported (GitLab's RE2 has none)")
        if op in _REPEATS:
            _low, high, body = arg
            body = list(body)
            if high == _sre.MAXREPEAT and _has_repeat(body) and _fixed_width(body) == 0:
                raise ExpressionError(
                    "a repeated group that holds only repetitions, like (a+)+ or (a*b*)*, can take "
                    "exponential time; rewrite it (e.g. a+ instead of (a+)+)"
                )
            _walk(body)
        elif op == _sre.SUBPATTERN:
            _walk(list(arg[-1]))
        elif op == _sre.BRANCH:
            for branch in arg[1]:
                _walk(list(branch))
        elif op == _sre.ATOMIC_GROUP:
            _walk(list(arg))


def _has_repeat(items: list[tuple[Any, Any]]) -> bool:
    for op, arg in items:
        if op in _REPEATS and arg[1] > 1:
            return True
        if op == _sre.SUBPATTERN and _has_repeat(list(arg[-1])):
            return True
        if op == _sre.BRANCH and any(_has_repeat(list(branch)) for branch in arg[1]):
            return True
    return False


def _fixed_width(items: list[tuple[Any, Any]]) -> int:
    """Characters the items must consume outside of any repetition (0 = all optional/repeated)."""
    width = 0
    for op, arg in items:
        if op in _REPEATS:
            low, high, body = arg
            width += 0 if high > 1 else low * _fixed_width(list(body))
        elif op == _sre.SUBPATTERN:
            width += _fixed_width(list(arg[-1]))
        elif op == _sre.BRANCH:
            width += min(_fixed_width(list(branch)) for branch in arg[1])
        elif op in (_sre.LITERAL, _sre.NOT_LITERAL, _sre.ANY, _sre.IN):
            width += 1
    return width


# --- Tokens -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Token:
    kind: str  # var | string | null | regex | op | and | or | ( | ) | end
    text: str
    position: int  # 1-based column, for messages
    value: Any = None


_OPERATORS = {"==": "op", "!=": "op", "=~": "op", "!~": "op", "&&": "and", "||": "or"}


def _tokenize(source: str) -> list[_Token]:
    tokens: list[_Token] = []
    index = 0
    length = len(source)
    while index < length:
        char = source[index]
        column = index + 1
        if char.isspace():
            index += 1
        elif char == "$":
            if source.startswith("${", index):
                end = source.find("}", index)
                name = source[index + 2 : end] if end != -1 else ""
                if end == -1 or not _NAME.fullmatch(name):
                    raise ExpressionError(f"bad variable at position {column}: expected ${{NAME}}")
                tokens.append(_Token("var", source[index : end + 1], column, name))
                index = end + 1
            else:
                match = _NAME.match(source, index + 1)
                if match is None:
                    raise ExpressionError(f"bad variable at position {column}: '$' must be followed by a name")
                tokens.append(_Token("var", "$" + match.group(), column, match.group()))
                index = match.end()
        elif char in "\"'":
            end = source.find(char, index + 1)
            if end == -1:
                raise ExpressionError(f"unterminated string starting at position {column}")
            tokens.append(_Token("string", source[index : end + 1], column, source[index + 1 : end]))
            index = end + 1
        elif char == "/":
            index = _read_regex(source, index, tokens)
        elif source.startswith("null", index) and not _continues_name(source, index + 4):
            tokens.append(_Token("null", "null", column))
            index += 4
        elif source[index : index + 2] in _OPERATORS:
            text = source[index : index + 2]
            tokens.append(_Token(_OPERATORS[text], text, column))
            index += 2
        elif char in "()":
            tokens.append(_Token(char, char, column))
            index += 1
        else:
            hint = " (variables start with '$', strings are quoted)" if char.isalnum() or char == "_" else ""
            raise ExpressionError(f"unexpected {char!r} at position {column}{hint}")
    tokens.append(_Token("end", "", length + 1))
    return tokens


def _continues_name(source: str, index: int) -> bool:
    return index < len(source) and (source[index].isalnum() or source[index] == "_")


def _read_regex(source: str, start: int, tokens: list[_Token]) -> int:
    index = start + 1
    while index < len(source):
        char = source[index]
        if char == "\\":
            index += 2
            continue
        if char == "/":
            break
        index += 1
    else:
        raise ExpressionError(f"unterminated /regex/ starting at position {start + 1}")
    pattern = source[start + 1 : index]
    index += 1
    flags_start = index
    while index < len(source) and source[index].isalpha():
        index += 1
    flags = source[flags_start:index]
    compiled = compile_pattern(pattern, flags)
    tokens.append(_Token("regex", source[start:index], start + 1, compiled))
    return index


# --- Syntax tree ------------------------------------------------------------------------


@dataclass(frozen=True)
class Variable:
    name: str


@dataclass(frozen=True)
class Literal:
    value: str | None  # None is `null`


@dataclass(frozen=True)
class Regex:
    pattern: re.Pattern[str]


Operand = Variable | Literal


@dataclass(frozen=True)
class Truthy:
    operand: Operand


@dataclass(frozen=True)
class Equals:
    left: Operand
    right: Operand
    negated: bool


@dataclass(frozen=True)
class Matches:
    left: Operand
    right: Regex | Variable | Literal
    negated: bool


@dataclass(frozen=True)
class AllOf:
    # n-ary rather than nested binary nodes: a long `a && b && ...` chain must not turn
    # into a deep tree (evaluation recurses only as deep as the parentheses go).
    items: tuple[Node, ...]


@dataclass(frozen=True)
class AnyOf:
    items: tuple[Node, ...]


Node = Truthy | Equals | Matches | AllOf | AnyOf


class _Parser:
    def __init__(self, tokens: list[_Token]) -> None:
        self.tokens = tokens
        self.index = 0
        self.depth = 0

    @property
    def current(self) -> _Token:
        return self.tokens[self.index]

    def take(self) -> _Token:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def parse(self) -> Node:
        if self.current.kind == "end":
            raise ExpressionError("empty expression")
        node = self.parse_or()
        if self.current.kind != "end":
            raise self.unexpected("'&&', '||' or the end")
        return node

    def parse_or(self) -> Node:
        items = [self.parse_and()]
        while self.current.kind == "or":
            self.take()
            items.append(self.parse_and())
        return items[0] if len(items) == 1 else AnyOf(tuple(items))

    def parse_and(self) -> Node:
        items = [self.parse_primary()]
        while self.current.kind == "and":
            self.take()
            items.append(self.parse_primary())
        return items[0] if len(items) == 1 else AllOf(tuple(items))

    def parse_primary(self) -> Node:
        if self.current.kind == "(":
            opening = self.take()
            self.depth += 1
            if self.depth > MAX_PARENTHESES_DEPTH:
                raise ExpressionError(f"parentheses nested more than {MAX_PARENTHESES_DEPTH} deep")
            node = self.parse_or()
            if self.current.kind != ")":
                raise self.unexpected(f"')' to close the '(' at position {opening.position}")
            self.take()
            self.depth -= 1
            return node
        left = self.parse_operand()
        if self.current.kind != "op":
            return Truthy(left)
        operator = self.take()
        if operator.text in ("==", "!="):
            return Equals(left, self.parse_operand(), negated=operator.text == "!=")
        return Matches(left, self.parse_pattern(operator), negated=operator.text == "!~")

    def parse_operand(self) -> Operand:
        token = self.current
        if token.kind == "var":
            self.take()
            return Variable(token.value)
        if token.kind == "string":
            self.take()
            return Literal(token.value)
        if token.kind == "null":
            self.take()
            return Literal(None)
        if token.kind == "regex":
            raise ExpressionError(f"a /regex/ (position {token.position}) can only follow =~ or !~")
        raise self.unexpected('a $VARIABLE, a "string" or null')

    def parse_pattern(self, operator: _Token) -> Regex | Variable | Literal:
        token = self.current
        if token.kind == "regex":
            self.take()
            return Regex(token.value)
        if token.kind == "var":
            self.take()
            return Variable(token.value)
        if token.kind == "string":
            # GitLab accepts `=~ "/re/"`: a quoted literal is compiled like a variable's value.
            self.take()
            if not is_regex_literal(token.value):
                raise ExpressionError(
                    f"the right side of {operator.text} must be a /regex/ (position {token.position})"
                )
            return Regex(compile_regex_literal(token.value))
        raise self.unexpected(f"a /regex/ or a $VARIABLE after {operator.text}")

    def unexpected(self, expected: str) -> ExpressionError:
        token = self.current
        found = "the end" if token.kind == "end" else repr(token.text)
        return ExpressionError(f"expected {expected}, found {found} at position {token.position}")


# --- Evaluation -------------------------------------------------------------------------


def _value(operand: Operand, variables: Mapping[str, str]) -> str | None:
    if isinstance(operand, Variable):
        return variables.get(operand.name)
    return operand.value


def _evaluate(node: Node, variables: Mapping[str, str]) -> bool:
    if isinstance(node, AllOf):
        return all(_evaluate(item, variables) for item in node.items)
    if isinstance(node, AnyOf):
        return any(_evaluate(item, variables) for item in node.items)
    if isinstance(node, Truthy):
        return bool(_value(node.operand, variables))
    if isinstance(node, Equals):
        return (_value(node.left, variables) == _value(node.right, variables)) != node.negated
    return _matches(node, variables) != node.negated


def _matches(node: Matches, variables: Mapping[str, str]) -> bool:
    text = _value(node.left, variables)
    if isinstance(node.right, Regex):
        pattern: re.Pattern[str] | None = node.right.pattern
    else:
        held = _value(node.right, variables)
        # A variable that does not hold a /regex/ literal matches nothing (GitLab compares
        # it as a plain string, which is never what the author meant).
        pattern = compile_regex_literal(held) if held is not None and is_regex_literal(held) else None
    if text is None or pattern is None:
        return False
    return pattern.search(text) is not None


@dataclass(frozen=True)
class Expression:
    source: str
    root: Node

    def evaluate(self, variables: Mapping[str, str]) -> bool:
        """True or False for these variables; ExpressionError if a variable holds a bad regex."""
        return _evaluate(self.root, variables)


def parse_expression(source: str) -> Expression:
    """Parse an expression; raise ExpressionError with a readable message if it is invalid."""
    if not isinstance(source, str):
        raise ExpressionError(f"an expression must be a string, not {type(source).__name__}")
    if len(source) > MAX_EXPRESSION_LENGTH:
        raise ExpressionError(f"expression longer than {MAX_EXPRESSION_LENGTH} characters")
    return Expression(source, _Parser(_tokenize(source)).parse())
