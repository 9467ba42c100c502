"""Read policy YAML into plain data that remembers where every key and item came from.

PyYAML silently keeps the last of two equal keys; a security policy must not, so a
duplicate key is reported like any other mistake.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..errors import PolicyIssue


class LocDict(dict[str, Any]):
    """A mapping from YAML with the 1-based line of itself and of each key."""

    line: int = 0
    key_lines: dict[str, int]


class LocList(list[Any]):
    line: int = 0
    item_lines: list[int]


class _Loader(yaml.SafeLoader):
    issues: list[PolicyIssue]
    filename: str


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LocDict:
    loader.flatten_mapping(node)
    out = LocDict()
    out.line = node.start_mark.line + 1
    out.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if not isinstance(key, str):
            loader.issues.append(
                PolicyIssue("policy_schema_error", f"key {key!r} must be a string",
                            loader.filename, line)
            )
            key = str(key)
        if key in out:
            loader.issues.append(
                PolicyIssue(
                    "policy_duplicate_key",
                    f"duplicate key `{key}` (first at line {out.key_lines[key]})",
                    loader.filename,
                    line,
                )
            )
            continue
        out[key] = loader.construct_object(value_node, deep=True)
        out.key_lines[key] = line
    return out


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> LocList:
    out = LocList(loader.construct_object(child, deep=True) for child in node.value)
    out.line = node.start_mark.line + 1
    out.item_lines = [child.start_mark.line + 1 for child in node.value]
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def parse_text(text: str, filename: str = "<policy>") -> tuple[Any, list[PolicyIssue]]:
    """Parse one YAML document; returns (data or None, issues)."""
    loader = _Loader(text)
    loader.issues = []
    loader.filename = filename
    try:
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else 0
        msg = " ".join(str(p) for p in (e.context, e.problem) if p) or str(e)
        return None, [PolicyIssue("policy_parse_error", f"invalid YAML: {msg}", filename, line)]
    except yaml.YAMLError as e:
        return None, [PolicyIssue("policy_parse_error", f"invalid YAML: {e}", filename)]
    finally:
        loader.dispose()
    return data, loader.issues


def read_file(path: str | Path) -> tuple[str | None, list[PolicyIssue]]:
    try:
        return Path(path).read_text(encoding="utf-8"), []
    except (OSError, UnicodeDecodeError) as e:
        return None, [PolicyIssue("policy_io_error", f"cannot read policy: {e}", str(path))]


def line_of(doc: Any, path: tuple[str | int, ...]) -> int:
    """Best line for a JSON path into a loaded document (deepest node that knows one)."""
    line = getattr(doc, "line", 0)
    node = doc
    for part in path:
        if isinstance(node, LocDict) and isinstance(part, str) and part in node:
            line = node.key_lines.get(part, line)
            node = node[part]
        elif isinstance(node, LocList) and isinstance(part, int) and 0 <= part < len(node):
            line = node.item_lines[part]
            node = node[part]
        else:
            break
    return line
