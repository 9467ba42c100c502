"""Rendering replay results: a readable table or JSON, both streamed row by row (a
capture of any size prints in bounded memory), then a summary by verdict and rule."""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from typing import IO, Any

from .capture import CaptureNote
from .engine import Change, Row
from .expect import Expectation

__all__ = ["JsonReport", "Summary", "TableReport", "format_time", "write_changes"]

MAX_NOTES = 10_000
_COLUMNS = (("#", 7), ("TIME (UTC)", 19), ("PRINCIPAL", 12), ("TARGET", 28),
            ("ACTION", 34), ("VERDICT", 9), ("RULE", 26))


def format_time(ts: float) -> str:
    if ts <= 0:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _num(row: Row) -> str:
    return str(row.flow) if row.ordinal == 0 else f"{row.flow}.{row.ordinal}"


def _verdict(row: Row) -> str:
    return row.verdict if row.enforced == row.verdict else f"{row.verdict}*"


class Summary:
    def __init__(self) -> None:
        self.actions = 0
        self.flows = 0
        self.by_verdict: Counter[str] = Counter()
        self.by_rule: Counter[str] = Counter()
        self.errors = 0
        self.skipped = 0

    def add(self, row: Row) -> None:
        self.actions += 1
        if row.ordinal == 0:
            self.flows += 1
        self.by_verdict[row.verdict] += 1
        for rule in row.rule_ids:
            self.by_rule[rule] += 1

    def note(self, note: CaptureNote) -> None:
        if note.error:
            self.errors += 1
        else:
            self.skipped += 1

    def to_dict(self) -> dict[str, Any]:
        return {"actions": self.actions, "flows": self.flows,
                "by_verdict": dict(self.by_verdict.most_common()),
                "by_rule": dict(sorted(self.by_rule.items(), key=lambda kv: (-kv[1], kv[0]))),
                "unreadable_entries": self.errors, "skipped_entries": self.skipped}

    def lines(self) -> list[str]:
        head = f"{self.actions} actions in {self.flows} flows"
        if self.errors:
            head += f"; {self.errors} unreadable entr{'y' if self.errors == 1 else 'ies'}"
        if self.skipped:
            head += f"; {self.skipped} skipped"
        out = [f"summary: {head}"]
        if self.by_verdict:
            out.append("  by verdict: " + ", ".join(
                f"{v} {n}" for v, n in self.by_verdict.most_common()))
        if self.by_rule:
            out.append("  by rule:")
            width = max(len(r) for r in self.by_rule)
            for rule, n in sorted(self.by_rule.items(), key=lambda kv: (-kv[1], kv[0])):
                out.append(f"    {rule:<{width}}  {n}")
        return out


def _expect_lines(expectations: list[Expectation]) -> list[str]:
    if not expectations:
        return []
    bad = [e for e in expectations if not e.ok]
    out = [f"expectations: {len(expectations) - len(bad)} passed, {len(bad)} failed"]
    for e in expectations:
        out.append(f"  {'PASS' if e.ok else 'FAIL'} {e.where} {e.name}: {e.summary()}")
    return out


class TableReport:
    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.summary = Summary()
        self._header = False

    def _head(self) -> None:
        if not self._header:
            self._header = True
            cells = [f"{name:<{w}}" for name, w in _COLUMNS]
            self.out.write("  ".join(cells) + "  REASON\n")

    def row(self, row: Row) -> None:
        self._head()
        self.summary.add(row)
        values = (_num(row), format_time(row.time), row.principal, row.target, row.what,
                  _verdict(row), ", ".join(row.rule_ids))
        cells = [f"{_cut(v, w):<{w}}" for v, (_, w) in zip(values, _COLUMNS, strict=True)]
        self.out.write("  ".join(cells) + "  " + row.reason + "\n")
        for note in row.notes:
            self.out.write(f"{'':7}  ↳ {note}\n")

    def note(self, note: CaptureNote) -> None:
        self._head()
        self.summary.note(note)
        mark = "!" if note.error else "-"
        self.out.write(f"{mark:>7}  {note}\n")

    def finish(self, expectations: list[Expectation], *, enforced_note: bool = True) -> None:
        lines = []
        if self.summary.actions and enforced_note and any(
                v not in ("allow", "deny") for v in self.summary.by_verdict):
            lines.append("(* enforced as deny: this proxy cannot realize that verdict yet)")
        lines += self.summary.lines() + _expect_lines(expectations)
        self.out.write("\n" + "\n".join(lines) + "\n")


class JsonReport:
    """One JSON document, written incrementally: ``rows`` first, then the rest."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.summary = Summary()
        self.notes: list[dict[str, Any]] = []
        self._n = 0
        out.write('{"rows": [')

    def row(self, row: Row) -> None:
        self.summary.add(row)
        self.out.write(("," if self._n else "") + "\n  " + json.dumps(row.to_dict()))
        self._n += 1

    def note(self, note: CaptureNote) -> None:
        self.summary.note(note)
        if len(self.notes) < MAX_NOTES:
            self.notes.append({"index": note.index, "where": note.where,
                               "message": note.message, "error": note.error})

    def finish(self, expectations: list[Expectation], **_: Any) -> None:
        tail: dict[str, Any] = {"notes": self.notes, "summary": self.summary.to_dict()}
        if expectations:
            tail["expectations"] = [e.to_dict() for e in expectations]
        self.out.write("\n], " + json.dumps(tail)[1:] + "\n")


def _change_line(c: Change) -> str:
    row = c.row
    old = f"{c.old.verdict} ({', '.join(c.old.rule_ids)})" if c.old else "not reached"
    new = f"{c.new.verdict} ({', '.join(c.new.rule_ids)})" if c.new else "not reached"
    line = (f"  {_num(row):>7}  {format_time(row.time)}  {_cut(row.target, 28):<28}  "
            f"{_cut(row.what, 34):<34}  {old} → {new}\n")
    if c.new is not None:
        line += f"  {'':7}  ↳ {c.new.reason}\n"
    return line


def write_changes(out: IO[str], changes: Iterable[Change], notes: Iterable[CaptureNote],
                  fmt: str, header: dict[str, str]) -> int:
    """The what-if report: changed actions grouped by ``old rules → new rules``. Each
    group is spooled (to disk past 1 MiB), so any number of changes prints in bounded
    memory."""
    with contextlib.ExitStack() as stack:
        return _write_changes(out, changes, notes, fmt, header, stack)


def _write_changes(out: IO[str], changes: Iterable[Change], notes: Iterable[CaptureNote],
                   fmt: str, header: dict[str, str], stack: contextlib.ExitStack) -> int:
    groups: dict[str, tuple[IO[str], list[int]]] = {}
    for change in changes:
        if change.group not in groups:
            spool = stack.enter_context(
                tempfile.SpooledTemporaryFile(1 << 20, "w+", encoding="utf-8"))  # noqa: SIM115
            groups[change.group] = (spool, [0])
        spool, count = groups[change.group]
        if fmt == "json":
            item = {"old": change.old.to_dict() if change.old else None,
                    "new": change.new.to_dict() if change.new else None}
            spool.write(("," if count[0] else "") + "\n      " + json.dumps(item))
        else:
            spool.write(_change_line(change))
        count[0] += 1
    total = sum(count[0] for _, count in groups.values())
    note_list = list(notes)
    if fmt == "json":
        out.write("{" + json.dumps(header)[1:-1] + f', "changed": {total}, "groups": [')
        for i, (group, (spool, count)) in enumerate(sorted(groups.items())):
            spool.seek(0)
            out.write(("," if i else "") + "\n  {\"change\": " + json.dumps(group)
                      + f', "count": {count[0]}, "actions": [')
            shutil.copyfileobj(spool, out)
            out.write("\n  ]}")
        notes_json = [{"where": n.where, "message": n.message, "error": n.error}
                      for n in note_list[:MAX_NOTES]]
        out.write("\n], \"notes\": " + json.dumps(notes_json) + "}\n")
        return total
    out.write(f"what-if: {header['new']} against {header['old']}: "
              f"{total} action{'s' if total != 1 else ''} change\n")
    for group, (spool, count) in sorted(groups.items()):
        out.write(f"\n{group}  ({count[0]})\n")
        spool.seek(0)
        shutil.copyfileobj(spool, out)
    for n in note_list:
        out.write(f"{'!' if n.error else '-'} {n}\n")
    return total
