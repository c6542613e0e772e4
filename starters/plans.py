"""Read a plan file (YAML or JSON) into a validated MigrationPlan, or a PlanError naming the field.

A plan file is operator input and may be anything: a FIFO that never ends, a device, 50 MB of
generated text, UTF-16 from an editor, 10,000 nested brackets, the same key twice. Each is refused
with a line naming the file or the field, before anything is connected or started. In order: a
regular file (checked before it is opened), at most MAX_PLAN_BYTES, UTF-8, YAML or JSON within
workflows.plan's MAX_DEPTH and MAX_NODES, each key once at every level; then parse_plan's checks.
"""

from __future__ import annotations

import codecs
import json
import os
import stat
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from workflows.plan import MAX_DEPTH, MAX_NODES, MigrationPlan, PlanError, field_path, parse_plan

#: A real plan is a few KiB; anything near this is generated or a mistake, and reading stops here.
MAX_PLAN_BYTES = 1 << 20
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Refused(Exception):
    """A plan file refused while reading or parsing; `problems` become the PlanError's lines."""

    def __init__(self, *problems: str) -> None:
        super().__init__(*problems)
        self.problems = list(problems)


def _read(path: Path) -> bytes:
    """The file's bytes, refusing anything but a regular file of at most MAX_PLAN_BYTES.

    The type is checked before opening (opening a FIFO blocks until a writer appears), and again on
    the opened descriptor, non-blocking, in case the path was swapped in between."""
    try:
        before = os.stat(path)
        _check_type(before)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except (OSError, ValueError) as error:  # ValueError: a NUL in the path
        raise _Refused(f"cannot read the plan file: {getattr(error, 'strerror', None) or error}") from None
    with os.fdopen(fd, "rb") as file:
        opened = os.fstat(file.fileno())
        _check_type(opened)
        if (opened.st_dev, opened.st_ino) != (before.st_dev, before.st_ino):
            raise _Refused("the plan file changed while it was being opened; try again")
        if opened.st_size > MAX_PLAN_BYTES:
            raise _Refused(f"the plan file is {opened.st_size:,} bytes; a plan may be at most {MAX_PLAN_BYTES:,}")
        data = file.read(MAX_PLAN_BYTES + 1)  # st_size can lie (/proc files, a file still growing)
    if len(data) > MAX_PLAN_BYTES:
        raise _Refused(f"the plan file is over {MAX_PLAN_BYTES:,} bytes; a plan may be at most that")
    return data


def _check_type(info: os.stat_result) -> None:
    if not stat.S_ISREG(info.st_mode):
        kinds = {stat.S_ISDIR: "a directory", stat.S_ISFIFO: "a FIFO", stat.S_ISCHR: "a character device",
                 stat.S_ISBLK: "a block device", stat.S_ISSOCK: "a socket"}  # fmt: skip
        kind = next((name for test, name in kinds.items() if test(info.st_mode)), "not a regular file")
        raise _Refused(f"cannot read the plan file: it is {kind}; a plan must be a regular file")


def _decode(data: bytes) -> str:
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE, codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        raise _Refused("the plan file is UTF-16 or UTF-32 text; save it as UTF-8")
    try:
        return data.decode("utf-8-sig")  # a UTF-8 byte-order mark is harmless: accept and drop it
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise _Refused(
            f"the plan file is not UTF-8 text: byte 0x{data[error.start]:02x} at line {line} "
            f"(offset {error.start:,}); save it as UTF-8"
        ) from None


class _PlanLoader(yaml.SafeLoader):
    """PyYAML's safe loader within a plan's limits. Composing is recursive in PyYAML, so depth and the
    number of nodes are counted while composing, before deep input can exhaust the stack."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.depth = 0
        self.nodes = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        self.depth += 1
        self.nodes += 1
        try:
            if self.depth > MAX_DEPTH or self.nodes > MAX_NODES:
                line = self.peek_event().start_mark.line + 1
                if self.depth > MAX_DEPTH:
                    raise _Refused(f"line {line}: nested deeper than {MAX_DEPTH} levels")
                raise _Refused(f"line {line}: the plan has more than {MAX_NODES:,} values")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _repeated_yaml_keys(
    loader: _PlanLoader, node: yaml.Node, path: tuple[Any, ...], seen: set[int], inside: set[int]
) -> list[str]:
    """Every key given twice in one mapping, by its path and lines; PyYAML would keep the last one
    silently (`delete_source: false` then `true` would become the irreversible `true`). Also an alias
    to a node that contains it, which would make the plan infinitely deep.

    Recursion is bounded by the composed depth; an alias is followed once."""
    if id(node) in inside:
        return [f"{field_path(path) or 'plan'}: an alias refers to a node that contains it"]
    if id(node) in seen:
        return []
    seen.add(id(node))
    inside.add(id(node))
    problems: list[str] = []
    if isinstance(node, yaml.MappingNode):
        first_line: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key: Any = "<<"
            if key_node.tag != _MERGE_TAG and isinstance(key_node, yaml.ScalarNode):
                key = loader.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if key in first_line:
                    problems.append(
                        f"{field_path((*path, key))}: key repeated at line {line} (first at line "
                        f"{first_line[key]}); give each key once"
                    )
                first_line.setdefault(key, line)
            problems += _repeated_yaml_keys(loader, key_node, (*path, key), seen, inside)
            problems += _repeated_yaml_keys(loader, value_node, (*path, key), seen, inside)
    elif isinstance(node, yaml.SequenceNode):
        for index, child in enumerate(node.value):
            problems += _repeated_yaml_keys(loader, child, (*path, index), seen, inside)
    inside.discard(id(node))
    return problems


def _load_yaml(text: str) -> Any:
    loader = _PlanLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if problems := _repeated_yaml_keys(loader, node, (), set(), set()):
            raise _Refused(*problems)
        return loader.construct_document(node)
    finally:
        loader.dispose()


class _JsonObject(dict):
    """A JSON object that remembers the keys it was given more than once."""

    repeated: list[str]


def _json_object(pairs: list[tuple[str, Any]]) -> _JsonObject:
    result = _JsonObject(pairs)
    result.repeated = []
    if len(result) < len(pairs):
        result.repeated = sorted(key for key, count in Counter(key for key, _ in pairs).items() if count > 1)
    return result


def _load_json(text: str) -> Any:
    # The C decoder guards its own recursion: 10,000 nested brackets raise RecursionError, not a crash;
    # anything deeper than MAX_DEPTH that parses is refused by parse_plan with its path.
    try:
        data = json.loads(text, object_pairs_hook=_json_object)
    except RecursionError:
        raise _Refused(f"not valid JSON: nested deeper than {MAX_DEPTH} levels") from None
    problems = []
    stack: list[tuple[tuple[Any, ...], Any]] = [((), data)]
    for _ in range(MAX_NODES):  # parse_plan refuses larger or deeper data by itself
        if not stack:
            break
        path, value = stack.pop()
        children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        if isinstance(value, _JsonObject):
            problems += [f"{field_path((*path, key))}: key repeated; give each key once" for key in value.repeated]
        if len(path) < MAX_DEPTH:
            stack.extend(((*path, key), child) for key, child in children)
    if problems:
        raise _Refused(*sorted(problems))
    return data


def load_plan(path: str | Path) -> MigrationPlan:
    """The validated plan in `path`; a PlanError naming the file or the field otherwise (exit 2)."""
    path = Path(path)
    is_json = path.suffix == ".json"
    try:
        text = _decode(_read(path))
        try:
            data = _load_json(text) if is_json else _load_yaml(text)
        except (yaml.YAMLError, ValueError) as error:  # ValueError: e.g. an integer of 5,000 digits
            raise _Refused(f"not valid {'JSON' if is_json else 'YAML'}: {_parser_message(error)}") from None
    except _Refused as refused:
        raise PlanError(str(path), refused.problems) from None
    return parse_plan(data, source=str(path))


def _parser_message(error: Exception) -> str:
    """A parser's complaint on one line, without its snippet of the input (which could be 1 MB wide)."""
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        what = "; ".join(part for part in (error.context, error.problem) if part)
        return f"{what} (line {mark.line + 1}, column {mark.column + 1})"
    # A ReaderError spans two lines; int() suggests sys.set_int_max_str_digits(), no help to an operator.
    text = " ".join(str(error).split()).split("; use sys.")[0]
    return text if len(text) <= 300 else f"{text[:297]}..."


def plan_schema() -> dict:
    return MigrationPlan.model_json_schema()
