"""Workflow files: YAML or JSON on disk, loaded into :class:`shared.workflow.Workflow`.

Stricter than the wire, because a file is written by hand: an unknown field is an error
(almost always a typo), and so is a duplicate key, a duplicate step name or a model version
specifier that is not PEP 440. Every error is a :class:`WorkflowFileError` whose message
names the file, the field path and what was expected::

    flow.yaml: steps[1].timeout: expected a number, got "soon"
    flow.yaml: steps[0].tiemout: unknown field (did you mean "timeout"?)
    flow.yaml: line 3, column 9: mapping values are not allowed here

A workflow ``version`` that is not a PEP 440 version is allowed (people use dates and
commit ids; nothing compares workflow versions) but reported as a warning in
:attr:`WorkflowFile.warnings`, for the command to print.

The format follows the suffix (``.yaml``/``.yml``, ``.json``); any other name is read as
JSON when it looks like JSON, else as YAML.
"""

from __future__ import annotations

import difflib
import functools
import json
import re
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final, Union, get_args, get_origin, get_type_hints

import msgspec
import yaml

from edgeplane.shared.errors import InvalidVersionSpec, WorkflowFileError
from edgeplane.shared.versions import check_specifier, is_version
from edgeplane.shared.workflow import Workflow

__all__ = [
    "MAX_FILE_SIZE",
    "WorkflowFile",
    "load_workflow",
    "read_for_command",
    "read_workflow_file",
]

MAX_FILE_SIZE: Final = 256 * 1024

PathPart = str | int  # a field name or key, or a list index


@dataclass(frozen=True, slots=True)
class WorkflowFile:
    path: Path
    workflow: Workflow
    warnings: tuple[str, ...] = ()  # each names the file, like the errors


def load_workflow(path: str | Path) -> Workflow:
    """The workflow in ``path``, or :class:`WorkflowFileError` saying what is wrong."""
    return read_workflow_file(path).workflow


def read_workflow_file(path: str | Path) -> WorkflowFile:
    """Like :func:`load_workflow`, with the warnings a command should show."""
    path = Path(path)
    name = str(path)
    text = _read_text(path, name)
    data = _parse(text, path.suffix.lower(), name)
    if not isinstance(data, dict):
        got = "nothing (the file is empty)" if data is None else _describe(data)
        raise WorkflowFileError(name, f"expected a mapping (name, version, steps...), got {got}")
    for where, problem in _unknown_fields(data, Workflow, []):
        raise WorkflowFileError(name, problem, _render(where))
    try:
        workflow = msgspec.convert(data, Workflow)
    except msgspec.ValidationError as exc:
        where, problem = _explain(str(exc), data)
        raise WorkflowFileError(name, problem, _render(where)) from None
    _check_semantics(workflow, name)
    return WorkflowFile(path, workflow, tuple(_warnings(workflow, name)))


def read_for_command(path: str | Path) -> Workflow | None:
    """What ``deploy`` and ``rollout start`` read: the workflow, its warnings printed on
    stderr; None when the file is wrong, said in one line (the command exits 2)."""
    try:
        loaded = read_workflow_file(path)
    except WorkflowFileError as exc:
        print(f"edgeplane: {exc}", file=sys.stderr)
        return None
    for warning in loaded.warnings:
        print(f"edgeplane: warning: {warning}", file=sys.stderr)
    return loaded.workflow


# --- reading and parsing ------------------------------------------------------------------
def _read_text(path: Path, name: str) -> str:
    try:
        if path.is_dir():
            raise WorkflowFileError(name, "is a directory, expected a workflow file")
        with path.open("rb") as fh:
            raw = fh.read(MAX_FILE_SIZE + 1)
    except FileNotFoundError:
        raise WorkflowFileError(name, "no such file") from None
    except OSError as exc:
        raise WorkflowFileError(name, f"cannot read it: {exc.strerror or exc}") from None
    if len(raw) > MAX_FILE_SIZE:
        raise WorkflowFileError(name, f"too large: over {MAX_FILE_SIZE // 1024} KiB")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise WorkflowFileError(name, f"not UTF-8 text (bad byte at offset {exc.start})") from None


def _parse(text: str, suffix: str, name: str) -> Any:
    if suffix == ".json" or (suffix not in (".yaml", ".yml") and text.lstrip()[:1] in "{["):
        if suffix != ".json" and not text.strip():
            return None
        return _parse_json(text, name)
    return _parse_yaml(text, name)


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def _no_constants(token: str) -> Any:
    raise ValueError(f"{token} is not valid JSON")


def _parse_json(text: str, name: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except _DuplicateKey as exc:
        raise WorkflowFileError(name, f"duplicate key {json.dumps(str(exc))}") from None
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        raise WorkflowFileError(name, f"{where}: not valid JSON: {exc.msg}") from None
    except ValueError as exc:
        raise WorkflowFileError(name, f"not valid JSON: {exc}") from None
    except RecursionError:
        raise WorkflowFileError(name, "not valid JSON: nested too deeply") from None


class _StrictLoader(yaml.SafeLoader):
    """The safe loader, refusing duplicate keys (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[tuple[str, str]] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue
            key = (key_node.tag, key_node.value)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {json.dumps(key_node.value)}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def _parse_yaml(text: str, name: str) -> Any:
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = exc.problem or exc.context or "invalid YAML"
        raise WorkflowFileError(name, f"{where}{problem}") from None
    except yaml.reader.ReaderError as exc:
        char = exc.character if isinstance(exc.character, int) else ord(exc.character)
        problem = f"character U+{char:04X} at offset {exc.position} is not allowed"
        raise WorkflowFileError(name, f"not valid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise WorkflowFileError(name, f"not valid YAML: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise WorkflowFileError(name, "not valid YAML: nested too deeply") from None
    except (ValueError, OverflowError) as exc:
        # PyYAML's scalar constructors raise these for impossible values: 2024-13-01.
        raise WorkflowFileError(name, f"not valid YAML: a bad value ({exc})") from None
    except (TypeError, AttributeError, LookupError):
        # ... and these for an explicit tag its value does not fit: !!timestamp soon, !!int ''.
        raise WorkflowFileError(name, "not valid YAML: a value that does not fit its tag") from None


# --- schema walking -----------------------------------------------------------------------
def _bare(annotation: Any) -> Any:
    """The type under ``Annotated[...]`` and ``X | None``."""
    while True:
        if get_origin(annotation) is Annotated:
            annotation = get_args(annotation)[0]
        elif get_origin(annotation) in (Union, types.UnionType):
            options = [arg for arg in get_args(annotation) if arg is not type(None)]
            annotation = options[0]
        else:
            return annotation


def _is_struct(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, msgspec.Struct)


@functools.cache
def _hints(struct: type[msgspec.Struct]) -> dict[str, Any]:
    return get_type_hints(struct, include_extras=True)


def _unknown_fields(
    data: Any, annotation: Any, where: list[PathPart]
) -> Iterator[tuple[list[PathPart], str]]:
    """Every key of ``data`` that its Struct does not have, walking along the schema (so
    YAML aliases and cycles cannot make it run away)."""
    annotation = _bare(annotation)
    if _is_struct(annotation) and isinstance(data, dict):
        fields = _hints(annotation)
        for key, value in data.items():
            if key in fields:
                yield from _unknown_fields(value, fields[key], [*where, key])
            elif isinstance(key, str):
                yield [*where, key], "unknown field" + _suggestion(key, list(fields))
            else:
                known = ", ".join(fields)
                yield where, f"unexpected key {_describe(key)}: fields are names ({known})"
    elif get_origin(annotation) is list and isinstance(data, list):
        (item,) = get_args(annotation)
        for index, value in enumerate(data):
            yield from _unknown_fields(value, item, [*where, index])


def _suggestion(key: str, fields: list[str]) -> str:
    close = difflib.get_close_matches(key, fields, n=1, cutoff=0.6)
    return f" (did you mean {json.dumps(close[0])}?)" if close else f" (known: {', '.join(fields)})"


def _annotation_at(where: list[PathPart]) -> Any:
    """The declared type of the field at ``where``, or None if the path leaves the schema."""
    annotation: Any = Workflow
    for part in where:
        annotation = _bare(annotation)
        if _is_struct(annotation) and isinstance(part, str):
            annotation = _hints(annotation).get(part)
        elif get_origin(annotation) in (list, dict):
            annotation = get_args(annotation)[-1]
        else:
            return None
    return annotation


def _value_at(data: Any, where: list[PathPart]) -> tuple[bool, Any]:
    for part in where:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return False, None
    return True, data


def _render(where: list[PathPart]) -> str:
    text = ""
    for part in where:
        if isinstance(part, int):
            text += f"[{part}]"
        elif isinstance(part, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", part):
            text += f".{part}" if text else part
        else:
            text += f"[{_short(part)}]"
    return text


# --- translating msgspec's errors ---------------------------------------------------------
_ERROR = re.compile(r"^(?P<problem>.*?)(?: - at `(?P<key>key` in `)?(?P<path>\$[^`]*)`)?$", re.S)
_PATH_PART = re.compile(r"\.([^.\[]+)|\[(\d+)\]|\[\.\.\.\]")
_TYPE_NAMES: Final = {
    "float": "a number",
    "int": "a whole number",
    "str": "a string",
    "bool": "true or false",
    "array": "a list",
    "object": "a mapping",
    "null": "nothing",
}
_PATTERNS: Final = {
    "^[A-Za-z0-9][A-Za-z0-9._-]*$": "a name of letters, digits, '.', '_' and '-', "
    "starting with a letter or digit",
    "^[A-Za-z_][A-Za-z0-9_]*$": "a variable name of letters, digits and '_', "
    "not starting with a digit",
}


def _explain(message: str, data: Any) -> tuple[list[PathPart], str]:
    """msgspec's ``Expected `float`, got `str` - at `$.steps[1].timeout``` as a path and a
    sentence about the value the file holds there."""
    match = _ERROR.match(message)
    assert match is not None  # the pattern matches any string
    where = _parse_path(match["path"] or "$")
    problem = match["problem"]
    found, value = _value_at(data, where)
    if "[...]" in (match["path"] or "") or match["key"]:
        return _explain_dict(where, data, is_key=bool(match["key"]))
    if missing := re.fullmatch(r"Object missing required field `(.+)`", problem):
        return where, f"missing required field {json.dumps(missing[1])}"
    if problem.startswith("Invalid enum value"):
        options = get_args(_bare(_annotation_at(where)))
        listed = ", ".join(json.dumps(option) for option in options)
        return where, f"expected one of {listed}, got {_describe(value)}"
    return where, _expected(problem, found, value)


def _expected(problem: str, found: bool, value: Any) -> str:
    got = f", got {_describe(value)}" if found else ""
    if typed := re.fullmatch(r"Expected `(\w+)`, got `(\w+)`", problem):
        expected = _TYPE_NAMES.get(typed[1], typed[1])
        hint = " (put it in quotes)" if typed[1] == "str" and _is_number(value) else ""
        return f"expected {expected}{got}{hint}"
    if pattern := re.fullmatch(r"Expected `str` matching regex '(.*)'", problem):
        wanted = _PATTERNS.get(pattern[1], f"a string matching {pattern[1]}")
        return f"expected {wanted}{got}"
    if length := re.fullmatch(r"Expected `(\w+)` of length ([<>]=) (\d+)", problem):
        return _expected_length(length[1], length[2], int(length[3]), found, value)
    if limit := re.fullmatch(r"Expected `(\w+)` ([<>]=?) (.+)", problem):
        number = limit[3].removesuffix(".0")
        return f"expected {_TYPE_NAMES.get(limit[1], limit[1])} {limit[2]} {number}{got}"
    return problem[:1].lower() + problem[1:] + got


def _expected_length(kind: str, op: str, size: int, found: bool, value: Any) -> str:
    unit = "characters" if kind == "str" else "items"
    if op == ">=" and size == 1:
        return "expected a non-empty string" if kind == "str" else "expected at least one item"
    got = f", got {len(value)}" if found and isinstance(value, str | list | dict) else ""
    return f"expected {'at least' if op == '>=' else 'at most'} {size} {unit}{got}"


def _explain_dict(where: list[PathPart], data: Any, *, is_key: bool) -> tuple[list[PathPart], str]:
    """msgspec says only ``env[...]`` or ``key in env``: find the entry that is wrong."""
    container = where[:-1] if where and where[-1] == "..." else where
    annotation = _bare(_annotation_at(container))
    _, mapping = _value_at(data, container)
    key_type, value_type = get_args(annotation) if get_origin(annotation) is dict else (Any, Any)
    for key, value in (mapping or {}).items():
        try:
            msgspec.convert(key, key_type)
        except msgspec.ValidationError as exc:
            return container, f"key {_short(key)}: {_expected(_problem(exc), True, key)}"
        try:
            msgspec.convert(value, value_type)
        except msgspec.ValidationError as exc:
            return [*container, key], _expected(_problem(exc), True, value)
    return container, "invalid entry" if not is_key else "invalid key"


def _problem(exc: msgspec.ValidationError) -> str:
    return str(exc).split(" - at `", 1)[0]


def _parse_path(text: str) -> list[PathPart]:
    parts: list[PathPart] = []
    for match in _PATH_PART.finditer(text.removeprefix("$")):
        if match[1] is not None:
            parts.append(match[1])
        elif match[2] is not None:
            parts.append(int(match[2]))
        else:
            parts.append("...")
    return parts


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _short(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _describe(value: Any) -> str:
    """The offending value when it is short, else what it is."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value) if len(value) <= 40 else f"a string of {len(value)} characters"
    if _is_number(value):
        return _short(value)
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    text = str(value)
    return f"{text if len(text) <= 40 else text[:37] + '...'} (a {type(value).__name__})"


# --- what the types cannot say ------------------------------------------------------------
def _check_semantics(workflow: Workflow, name: str) -> None:
    first_index: dict[str, int] = {}
    for index, step in enumerate(workflow.steps):
        if step.name in first_index:
            raise WorkflowFileError(
                name,
                f"duplicate step name {json.dumps(step.name)} "
                f"(also steps[{first_index[step.name]}])",
                f"steps[{index}].name",
            )
        first_index[step.name] = index
    for index, model in enumerate(workflow.requires.models):
        _check_specifier(model.version, name, f"requires.models[{index}].version")


def _check_specifier(text: str, name: str, where: str) -> None:
    try:
        check_specifier(text)
    except InvalidVersionSpec:
        hint = f' (for exactly this version write "=={text}")' if is_version(text) else ""
        raise WorkflowFileError(
            name,
            f'{json.dumps(text)} is not a PEP 440 version specifier such as ">=2.1,<3"{hint}',
            where,
        ) from None


def _warnings(workflow: Workflow, name: str) -> Iterator[str]:
    if not is_version(workflow.version):
        yield (
            f"{name}: version: {json.dumps(workflow.version)} is not a PEP 440 version "
            "(such as 1.4.0); it is kept as a label"
        )
