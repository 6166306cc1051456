"""Config file errors a person can act on: file, line, key path, value, suggestion.

:func:`parse_yaml` reads YAML keeping where every key and value was written
(yaml node marks). :func:`describe_validation_error` turns a pydantic
``ValidationError`` into :class:`ConfigIssue` lines such as::

    clinic.yaml:14:7: rules[0].match.body_prt: unknown key 'body_prt'; did you
    mean 'body_part'? (keys allowed here: modality, body_part, ...)

Nothing here knows the config's sections; the model class is passed in.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from routing.suggest import did_you_mean

Path_ = tuple[str | int, ...]

# pydantic error types that only say "this union member has the wrong type"
_TYPE_ERROR_RE = re.compile(r"(_type|_parsing|model_attributes_type|is_instance_of)$")


@dataclass(frozen=True)
class Mark:
    """A 1-based line and column in the config file."""

    line: int
    column: int


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a config file."""

    source: str
    mark: Mark | None
    path: Path_
    message: str

    def __str__(self) -> str:
        where = (
            self.source
            if self.mark is None
            else f"{self.source}:{self.mark.line}:{self.mark.column}"
        )
        key = format_path(self.path)
        return f"{where}: {key}: {self.message}" if key else f"{where}: {self.message}"


def format_path(path: Sequence[str | int]) -> str:
    """``('rules', 0, 'match')`` -> ``rules[0].match``."""
    text = ""
    for element in path:
        if isinstance(element, int):
            text += f"[{element}]"
        else:
            text += f".{element}" if text else str(element)
    return text


@dataclass
class MarkedYaml:
    """Parsed YAML data plus where each key and value starts."""

    data: Any
    key_marks: dict[Path_, Mark]
    value_marks: dict[Path_, Mark]
    duplicate_keys: list[ConfigIssue]

    def mark_for(self, path: Path_, *, key: bool) -> Mark | None:
        """Mark of the deepest existing prefix of ``path`` (key mark when asked and known)."""
        for end in range(len(path), -1, -1):
            prefix = path[:end]
            if key and end == len(path) and prefix in self.key_marks:
                return self.key_marks[prefix]
            if prefix in self.value_marks:
                return self.value_marks[prefix]
        return None


def _mark(node: yaml.Node) -> Mark:
    return Mark(node.start_mark.line + 1, node.start_mark.column + 1)


def parse_yaml(text: str, source: str) -> MarkedYaml:
    """Parse YAML text, recording the mark of every key and value.

    Raises
    ------
    yaml.YAMLError
        On a syntax error (its ``problem_mark`` says where).
    """
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    finally:
        loader.dispose()
    key_marks: dict[Path_, Mark] = {}
    value_marks: dict[Path_, Mark] = {}
    duplicates: list[ConfigIssue] = []

    def walk(node: yaml.Node, path: Path_) -> None:
        value_marks[path] = _mark(node)
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, value_node in node.value:
                key = str(key_node.value)
                if key == "<<":
                    continue
                if key in seen:
                    duplicates.append(
                        ConfigIssue(
                            source,
                            _mark(key_node),
                            (*path, key),
                            f"key {key!r} appears twice in the same block; YAML keeps only "
                            f"the last one, so delete or merge the other",
                        )
                    )
                seen.add(key)
                key_marks[(*path, key)] = _mark(key_node)
                walk(value_node, (*path, key))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                walk(item, (*path, index))

    if root is not None:
        walk(root, ())
    return MarkedYaml(data, key_marks, value_marks, duplicates)


def yaml_error_issue(err: yaml.YAMLError, source: str) -> ConfigIssue:
    """A YAML syntax error as a :class:`ConfigIssue`."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err)
    context = getattr(err, "context", None)
    text = f"YAML syntax error: {problem}" + (f" ({context})" if context else "")
    text += "; check indentation (spaces, not tabs) and quote values containing ':' or '#'"
    where = None if mark is None else Mark(mark.line + 1, mark.column + 1)
    return ConfigIssue(source, where, (), text)


def _data_path(loc: Sequence[str | int], data: Any, kind: str) -> tuple[Path_, bool]:
    """The part of a pydantic ``loc`` that exists in ``data`` (drops union tags).

    For ``missing`` and ``extra_forbidden`` errors the last element is the key
    itself and is kept. Returns the path and whether a union tag was dropped.
    """
    path: list[str | int] = []
    current = data
    dropped = False
    last = len(loc) - 1
    for position, element in enumerate(loc):
        in_dict = isinstance(current, dict) and element in current
        in_list = isinstance(current, list) and isinstance(element, int) and element < len(current)
        if in_dict or in_list:
            current = current[element]
            path.append(element)
        elif position == last and kind in ("missing", "extra_forbidden"):
            path.append(element)
        else:
            dropped = True
    return tuple(path), dropped


def _members(annotation: Any) -> list[Any]:
    """Flatten Optional/Union/Annotated into their member types."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _members(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        found: list[Any] = []
        for arg in typing.get_args(annotation):
            found.extend(_members(arg))
        return found
    return [annotation]


def _field_annotation(model: type[BaseModel], key: str) -> Any | None:
    for name, info in model.model_fields.items():
        if key in (name, info.alias):
            return info.annotation
    return None


def allowed_keys(root: type[BaseModel], path: Sequence[str | int]) -> list[str]:
    """Keys the model(s) at ``path`` accept, for "did you mean" suggestions."""
    current: list[Any] = [root]
    for element in path:
        following: list[Any] = []
        for annotation in current:
            for member in _members(annotation):
                origin = typing.get_origin(member)
                if isinstance(member, type) and issubclass(member, BaseModel):
                    if isinstance(element, str):
                        found = _field_annotation(member, element)
                        if found is not None:
                            following.append(found)
                elif origin is list and isinstance(element, int):
                    following.append(typing.get_args(member)[0])
                elif origin is dict and isinstance(element, str):
                    following.append(typing.get_args(member)[1])
        current = following
    keys: list[str] = []
    for annotation in current:
        for member in _members(annotation):
            if isinstance(member, type) and issubclass(member, BaseModel):
                keys.extend(info.alias or name for name, info in member.model_fields.items())
    return list(dict.fromkeys(keys))


def _type_name(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing (null)"
    return f"{type(value).__name__} {value!r}"


def _message(err: Any, root: type[BaseModel], path: Path_) -> str:
    kind = err["type"]
    value = err.get("input")
    if kind == "extra_forbidden":
        key = str(path[-1])
        choices = allowed_keys(root, path[:-1])
        hint = did_you_mean(key, choices)
        allowed = f" (keys allowed here: {', '.join(choices)})" if choices else ""
        return f"unknown key {key!r}{hint}{allowed}"
    if kind == "missing":
        return f"required key {str(path[-1])!r} is missing; add it"
    if kind == "value_error":
        return str(err["msg"]).removeprefix("Value error, ")
    if kind == "literal_error":
        expected = str(err.get("ctx", {}).get("expected", ""))
        choices = re.findall(r"'([^']*)'", expected)
        return f"{value!r} is not allowed; use {expected}{did_you_mean(str(value), choices)}"
    return f"{err['msg']} (got {_type_name(value)})"


def describe_validation_error(
    error: ValidationError, root: type[BaseModel], marked: MarkedYaml, source: str
) -> list[ConfigIssue]:
    """Turn a pydantic error into one issue per problem, with file marks.

    Errors from union members that only say "wrong type" are dropped when
    another member gave a more specific error for the same value, and merged
    into one "expected ..." line otherwise.
    """
    entries: list[tuple[Path_, bool, Any]] = []
    for err in error.errors():
        path, dropped = _data_path(err["loc"], marked.data, err["type"])
        entries.append((path, dropped, err))

    def is_branch_type_error(dropped: bool, err: Any) -> bool:
        return dropped and bool(_TYPE_ERROR_RE.search(err["type"]))

    specific = [p for p, d, e in entries if not is_branch_type_error(d, e)]
    issues: list[ConfigIssue] = []
    merged: dict[Path_, list[str]] = {}
    for path, dropped, err in entries:
        if is_branch_type_error(dropped, err):
            if any(s[: len(path)] == path for s in specific):
                continue
            merged.setdefault(path, []).append(str(err["msg"]))
            continue
        key_error = err["type"] in ("extra_forbidden",)
        mark = marked.mark_for(path, key=key_error)
        issues.append(ConfigIssue(source, mark, path, _message(err, root, path)))
    for path, messages in merged.items():
        value: Any = marked.data
        for element in path:
            value = value[element]  # type: ignore[index]
        alternatives = "; or ".join(m.removeprefix("Input should be ") for m in messages)
        issues.append(
            ConfigIssue(
                source,
                marked.mark_for(path, key=False),
                path,
                f"got {_type_name(value)}; expected {alternatives}",
            )
        )
    return sorted(
        issues, key=lambda i: (i.mark.line if i.mark else 0, i.mark.column if i.mark else 0)
    )


def issues_text(issues: Iterable[ConfigIssue], source: str) -> str:
    """A ConfigError message listing every issue, one per line."""
    lines = [str(i) for i in issues]
    count = f"{len(lines)} problem{'s' if len(lines) != 1 else ''}"
    return f"config file {source} has {count}:\n  " + "\n  ".join(lines)
