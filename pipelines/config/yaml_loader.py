"""YAML loading for pipeline configs: safe, bounded, and with line numbers.

PyYAML's SafeLoader is almost right for us, but it silently keeps the last of two
duplicate keys, forgets where each mapping came from, and will happily build an
alias bomb ("billion laughs") whose expansion only blows up later, when extends or
script flattening walk it. This loader fixes all three:

- duplicate keys in one mapping are collected as problems (merge keys `<<` excepted),
- every mapping is a YamlMap that knows its file and line and the line of each key,
- the composed node graph is measured *before* construction: the expanded node
  count and nesting depth are capped, and recursive aliases are refused.

`!reference [job, key, ...]` becomes a Reference, resolved later (after extends).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from pipelines.config.spec import ConfigError, ConfigProblem

# libyaml parses ~3x faster than the pure-Python scanner and caps flow nesting itself
# (the pure-Python one hits RecursionError instead). Constructors stay in Python either way.
_BaseLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# Expanded (alias-resolved) nodes across the main file and its includes. A 1 MiB config of
# ordinary jobs is ~100k nodes; a billion-laughs document is billions.
MAX_NODES = 500_000
# Deeper than this is no pipeline config anyone writes. It also keeps every later recursive
# walk far from Python's recursion limit, even where !reference chains (10 deep) stack
# documents on top of each other.
MAX_DEPTH = 32

_MERGE_TAG = "tag:yaml.org,2002:merge"
_MAP_TAG = "tag:yaml.org,2002:map"

Where = tuple[str | None, int | None]


class YamlMap(dict):  # type: ignore[type-arg]
    """A mapping that remembers where it (and each of its keys) was written."""

    __slots__ = ("file", "line", "key_lines")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.file: str | None = None
        self.line: int | None = None
        self.key_lines: dict[Any, Where] = {}

    @classmethod
    def like(cls, template: Any) -> YamlMap:
        """An empty map with the location of `template` (if it has one)."""
        result = cls()
        if isinstance(template, YamlMap):
            result.file = template.file
            result.line = template.line
            result.key_lines = dict(template.key_lines)
        return result

    def where(self, key: Any = None) -> Where:
        if key is not None and key in self.key_lines:
            return self.key_lines[key]
        return (self.file, self.line)


@dataclass(frozen=True)
class Reference:
    """`!reference [job, key, ...]`: replaced by the value at that path after extends."""

    path: tuple[str, ...]
    file: str | None
    line: int | None

    def __str__(self) -> str:
        return "!reference [" + ", ".join(self.path) + "]"


class NodeBudget:
    """How many expanded nodes the whole config (main file + includes) may still have."""

    def __init__(self, limit: int = MAX_NODES) -> None:
        self.limit = limit
        self.used = 0

    def spend(self, count: int) -> bool:
        self.used += count
        return self.used <= self.limit


def where_of(value: Any, key: Any = None) -> Where:
    if isinstance(value, YamlMap):
        return value.where(key)
    return (None, None)


class _Loader(_BaseLoader):  # type: ignore[misc, valid-type]
    # CSafeLoader's __cinit__ takes exactly the constructor arguments, so the file name
    # and the problem list are set as attributes after construction, not passed in.
    source_file: str | None = None
    duplicates: list[ConfigProblem]

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            self._find_duplicates(node)
        return super().construct_mapping(node, deep=deep)

    def _find_duplicates(self, node: yaml.MappingNode) -> None:
        # Before flatten_mapping: keys brought in by `<<` may be overridden on purpose.
        seen: dict[Any, int] = {}
        for key_node, _value in node.value:
            if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                self.duplicates.append(
                    ConfigProblem(
                        f"duplicate key {key!r} in one mapping (first on line {seen[key]}); "
                        "YAML keeps only one of them",
                        line=line,
                        file=self.source_file,
                    )
                )
            else:
                seen[key] = line

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        """Resolve `<<` merge keys as the YAML merge spec (and GitLab's Ruby parser) do.

        Explicit keys beat merged ones, and in `<<: [*a, *b]` the earlier mapping wins.
        PyYAML 6.0.4 decides ties by the identity of the key strings instead, so the
        outcome depended on string interning; the pairs are ordered lowest priority first.
        """
        merged: list[list[tuple[yaml.Node, yaml.Node]]] = []
        explicit: list[tuple[yaml.Node, yaml.Node]] = []
        for key_node, value_node in node.value:
            if key_node.tag != _MERGE_TAG:
                if key_node.tag == "tag:yaml.org,2002:value":
                    key_node.tag = "tag:yaml.org,2002:str"
                explicit.append((key_node, value_node))
                continue
            sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            for source in sources:
                if not isinstance(source, yaml.MappingNode):
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"<< merges mappings (or a list of mappings), not a {source.id}",
                        source.start_mark,
                    )
                self.flatten_mapping(source)
                merged.append(list(source.value))
        node.value = [pair for pairs in reversed(merged) for pair in pairs] + explicit

    def construct_yaml_map(self, node: yaml.MappingNode) -> Any:
        data = YamlMap()
        data.file = self.source_file
        data.line = node.start_mark.line + 1
        yield data
        value = self.construct_mapping(node)
        data.update(value)
        # node.value is flattened now (merged pairs first), so explicit keys win, as in `value`.
        for key_node, _value in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != _MERGE_TAG:
                key = self.construct_object(key_node, deep=True)
                data.key_lines[key] = (self.source_file, key_node.start_mark.line + 1)

    def construct_reference(self, node: yaml.Node) -> Reference:
        line = node.start_mark.line + 1
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            raise yaml.constructor.ConstructorError(
                None, None, "!reference needs a non-empty sequence: !reference [job, key, ...]", node.start_mark
            )
        parts = self.construct_sequence(node, deep=True)
        if not all(isinstance(part, str) and part for part in parts):
            raise yaml.constructor.ConstructorError(
                None, None, "!reference takes names only: !reference [job, key, ...]", node.start_mark
            )
        return Reference(path=tuple(parts), file=self.source_file, line=line)


_Loader.add_constructor(_MAP_TAG, _Loader.construct_yaml_map)
_Loader.add_constructor("!reference", _Loader.construct_reference)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _measure(root: yaml.Node, budget: NodeBudget, file: str | None) -> None:
    """Refuse recursive aliases, documents deeper than MAX_DEPTH, and alias bombs.

    Sizes are memoized per node object: an alias is the same node as its anchor, so this
    is linear in the *written* document while it computes the *expanded* size.
    """
    sizes: dict[int, int] = {}
    depths: dict[int, int] = {}
    on_path = {id(root)}
    stack = [(root, iter(_children(root)))]
    while stack:
        node, children = stack[-1]
        child = next(children, None)
        if child is not None:
            child_id = id(child)
            if child_id in sizes:
                continue
            if child_id in on_path:
                raise _problem("an alias refers to a mapping or list that contains it (recursive alias)", child, file)
            on_path.add(child_id)
            stack.append((child, iter(_children(child))))
            continue
        stack.pop()
        on_path.discard(id(node))
        kids = _children(node)
        sizes[id(node)] = 1 + sum(sizes[id(kid)] for kid in kids)
        depths[id(node)] = 1 + max((depths[id(kid)] for kid in kids), default=0)
        if depths[id(node)] > MAX_DEPTH:
            raise _problem(f"nested more than {MAX_DEPTH} levels deep", node, file)
        if sizes[id(node)] + budget.used > budget.limit:
            raise _problem(
                f"the config expands to more than {budget.limit} YAML nodes (anchors and aliases "
                "count once per use); is it an alias bomb?",
                node,
                file,
            )
    budget.spend(sizes[id(root)])


def _problem(message: str, node: yaml.Node, file: str | None) -> ConfigError:
    return ConfigError([ConfigProblem(message, line=node.start_mark.line + 1, file=file)])


def _yaml_problem(exc: yaml.YAMLError, text: str, file: str | None) -> ConfigProblem:
    if isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, max(exc.position, 0)) + 1
        char = f"U+{exc.character:04X}" if isinstance(exc.character, int) else repr(exc.character)
        return ConfigProblem(f"invalid YAML: {exc.reason} ({char})", line=line, file=file)
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        parts = [part for part in (exc.context, exc.problem) if part]
        message = "invalid YAML: " + (", ".join(parts) if parts else "syntax error")
        return ConfigProblem(message, line=mark.line + 1 if mark else None, file=file)
    return ConfigProblem(f"invalid YAML: {exc}", file=file)


def load_yaml(text: str, *, file: str | None = None, budget: NodeBudget | None = None) -> Any:
    """Parse one YAML document; raise ConfigError (with lines) for anything wrong with it."""
    budget = budget or NodeBudget()
    try:
        # libyaml wants UTF-8 bytes; lone surrogates cannot be encoded (and are not YAML).
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ConfigError(
            [ConfigProblem(f"not valid Unicode text (character {exc.start} cannot be encoded)", file=file)]
        ) from None
    loader = _Loader(text)
    loader.source_file = file
    loader.duplicates = []
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _measure(node, budget, file)
        data = loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise ConfigError([_yaml_problem(exc, text, file)]) from None
    except (ValueError, TypeError, OverflowError) as exc:
        # A few constructors (timestamps, !!binary) raise plain errors on odd scalars.
        raise ConfigError([ConfigProblem(f"invalid YAML value: {exc}", file=file)]) from None
    finally:
        loader.dispose()
    if loader.duplicates:
        raise ConfigError(loader.duplicates)
    return data


def to_plain(value: Any) -> Any:
    """A deep copy made of plain dicts and lists (what JobSpec hands to the engine)."""
    if isinstance(value, dict):
        return {key: to_plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [to_plain(item) for item in value]
    return value
