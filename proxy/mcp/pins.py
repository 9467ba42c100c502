"""Tool pinning: rug-pull detection for MCP servers.

The first ``tools/list`` seen from a server pins its tool definitions; a later list that
differs *semantically* puts the server under review, and calls to it are held until an
operator approves the new definitions (``fiveplane pins diff|approve``).

Canonical form (what is compared)
---------------------------------
Per tool: ``name``, ``title``, ``description``, ``inputSchema``, ``outputSchema`` and
``annotations`` (``icons``, ``_meta`` and unknown members are not pinned). Inside them:

* text under ``description`` / ``title`` keys (at any depth) is whitespace-normalized
  (runs of Unicode whitespace → one space, trimmed); invisible characters are *not*
  whitespace, so inserting a zero-width space is a change;
* JSON is canonical: object members sorted, ``required`` arrays (of strings) as sorted
  sets; other arrays keep their order; numbers as the server wrote them (``1.0`` and ``1``
  differ: a change of representation is reported, never hidden);
* annotations equal to the spec defaults (``readOnlyHint: false``, ``destructiveHint: true``,
  ``idempotentHint: false``, ``openWorldHint: true``) are dropped, as are empty texts;
* the tool list is a set: order does not matter.

Digests: ``sha256:<hex>`` of the canonical JSON, per tool and per server (over the sorted
``(name, tool digest)`` pairs).

Pages (``nextCursor``): a list that is not complete (the request carried a ``cursor`` or
the result a ``nextCursor``) is checked tool by tool: a changed definition is a change;
tools not in a pin built from pages are added to it; removals are not judged. Once a
complete list has been pinned, an added tool is a change too.

Storage: in the state store, keyed by the stable server identity (``server_identity``):
``pin_get / pin_put / pin_pending / pin_approve / pin_relist / pin_list / pin_delete``
(``PinStore``; ``pin_store(store)`` adapts a ``MemoryStore``, ``SqliteStore`` or
``RedisStore`` (``redis_state.py``) until those methods are part of ``StateStore``).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, runtime_checkable

from ..decision import Verdict
from ..state.errors import StateError
from ..state.sqlite_db import SqliteDb
from .base import AdapterCache, Hold, check_open, check_server, redis_state, sqlite_db

PIN_RULE = "mcp.pin_changed"
RELIST_RULE = "mcp.pin_relist"
FIRST_SIGHT_RULE = "mcp.pin_first_sight"

PINNED_FIELDS = ("name", "title", "description", "inputSchema", "outputSchema", "annotations")
TEXT_KEYS = frozenset({"description", "title"})
ANNOTATION_DEFAULTS: Mapping[str, Any] = {
    "readOnlyHint": False, "destructiveHint": True, "idempotentHint": False,
    "openWorldHint": True,
}
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_MIN_PREFIX = 8          # hex digits an operator must give to name a digest
_MAX_FIELD_CHANGES = 200  # per tool, in a diff
_MISSING: Any = type("_Missing", (), {"__repr__": lambda self: "<absent>"})()


# --- canonical form -----------------------------------------------------------------------


def normalize_text(text: str) -> str:
    return " ".join(text.split())


_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                            allow_nan=False, check_circular=False)
# In canonical JSON text an unescaped quote always delimits a string, so a member name
# followed by ':' right after '{' or ',' is a real member, never text inside a string.
_STRING = r'"[^"\\]*(?:\\.[^"\\]*)*"'
_MEMBER = re.compile(rf'([{{,]"(?:description|title)":)({_STRING})|([{{,]"required":)'
                     r'(\[[^\[\]{}]*\])')


def _norm_member(m: re.Match[str]) -> str:
    if m.group(1) is not None:
        raw = m.group(2)
        if raw.isascii() and "  " not in raw and "\\" not in raw and raw[1:2] != " " \
                and raw[-2:-1] != " ":
            return m.group(0)
        text = json.loads(raw)
        norm = normalize_text(text)
        return m.group(0) if norm == text else m.group(1) + _ENCODER.encode(norm)
    raw = m.group(4)
    if "\\" not in raw and raw.startswith('["') and raw.endswith('"]'):
        # no escapes: no string can hold a quote, so this split is exact
        items: list[Any] = raw[2:-2].split('","')
    else:
        items = json.loads(raw)
        if not all(isinstance(i, str) for i in items):
            return m.group(0)
    ordered = sorted(set(items))
    return m.group(0) if ordered == items else m.group(3) + _ENCODER.encode(ordered)


def canonical_tool_json(tool: Any) -> str:
    """The pinned part of one tool definition as canonical JSON text (module docstring)."""
    if not isinstance(tool, dict):
        return _ENCODER.encode({"$invalid": tool})
    subset = {name: tool[name] for name in PINNED_FIELDS if name in tool}
    for name in TEXT_KEYS:
        value = subset.get(name)
        if isinstance(value, str) and not value.strip():
            del subset[name]
    notes = subset.get("annotations")
    if isinstance(notes, dict):
        kept = {k: v for k, v in notes.items()
                if not (k in ANNOTATION_DEFAULTS and v == ANNOTATION_DEFAULTS[k]
                        and type(v) is type(ANNOTATION_DEFAULTS[k]))
                and not (k == "title" and isinstance(v, str) and not v.strip())}
        if kept:
            subset["annotations"] = kept
        else:
            del subset["annotations"]
    try:
        text = _ENCODER.encode(subset)
    except RecursionError:
        raise ValueError("tool definition nested too deeply to pin") from None
    if '"description":"' in text or '"title":"' in text or '"required":[' in text:
        text = _MEMBER.sub(_norm_member, text)
    return text


def canonical_tool(tool: Any) -> dict[str, Any]:
    """The pinned part of one tool definition, canonical, as a mapping."""
    return json.loads(canonical_tool_json(tool))


def canonical_json(value: Any) -> str:
    return _ENCODER.encode(value)


def _sha(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def tool_digest(canonical: Mapping[str, Any] | str) -> str:
    return _sha(canonical if isinstance(canonical, str) else canonical_json(canonical))


class ToolSet:
    """A server's tools in canonical form: name → canonical JSON, with digests.

    Two tools under one name are kept together as ``{"$duplicates": [...]}`` (sorted by
    digest); a tool without a usable name is keyed by ``"$invalid:<digest prefix>"``."""

    __slots__ = ("_tools", "digest", "digests", "jsons")

    def __init__(self, jsons: Mapping[str, str]) -> None:
        self.jsons = jsons
        self.digests = {name: _sha(text) for name, text in jsons.items()}
        self.digest = server_digest(self.digests)
        self._tools: dict[str, Any] | None = None

    @classmethod
    def from_list(cls, tools: Iterable[Any]) -> ToolSet:
        grouped: dict[str, list[str]] = {}
        for tool in tools:
            text = canonical_tool_json(tool)
            name = tool.get("name") if isinstance(tool, dict) else None
            if not isinstance(name, str) or not name:
                name = "$invalid:" + _sha(text)[7:23]
            grouped.setdefault(name, []).append(text)
        jsons: dict[str, str] = {}
        for name, texts in grouped.items():
            if len(texts) == 1:
                jsons[name] = texts[0]
            else:
                jsons[name] = '{"$duplicates":[' + ",".join(sorted(texts, key=_sha)) + "]}"
        return cls(jsons)

    @classmethod
    def from_mapping(cls, tools: Mapping[str, Any]) -> ToolSet:
        return cls({name: canonical_json(d) for name, d in tools.items()})

    @property
    def tools(self) -> dict[str, Any]:
        if self._tools is None:
            self._tools = {name: json.loads(text) for name, text in self.jsons.items()}
        return self._tools

    def to_json(self) -> str:
        return "{" + ",".join(f"{_ENCODER.encode(name)}:{self.jsons[name]}"
                              for name in sorted(self.jsons)) + "}"


def server_digest(digests: Mapping[str, str]) -> str:
    return _sha(canonical_json(sorted(digests.items())))


def canonical_tools(tools: Iterable[Any]) -> ToolSet:
    return ToolSet.from_list(tools)


# --- diffs ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FieldChange:
    path: str                 # "description", "inputSchema.properties.sidenote", ...
    old: Any = _MISSING
    new: Any = _MISSING

    @property
    def change(self) -> str:
        if self.old is _MISSING:
            return "added"
        if self.new is _MISSING:
            return "removed"
        return "changed"

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"path": self.path, "change": self.change}
        if self.old is not _MISSING:
            d["old"] = self.old
        if self.new is not _MISSING:
            d["new"] = self.new
        return d


@dataclass(frozen=True, slots=True)
class ToolDiff:
    name: str
    change: str                         # "added" | "removed" | "changed"
    old: Mapping[str, Any] | None = None
    new: Mapping[str, Any] | None = None
    fields: tuple[FieldChange, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "change": self.change,
                "fields": [f.to_dict() for f in self.fields],
                "old": self.old, "new": self.new}

    def summary(self) -> str:
        if self.change != "changed":
            return f"{self.name} ({self.change})"
        return f"{self.name} ({', '.join(f.path for f in self.fields[:5])})"

    def render(self, width: int = 4000) -> str:
        """Readable text for an operator; invisible and bidirectional characters are shown
        as ``\\u`` escapes so the terminal cannot hide or reorder them."""
        sign = {"added": "+", "removed": "-", "changed": "~"}[self.change]
        lines = [f"{sign} tool {visible(self.name)!s} ({self.change})"]
        if self.change != "changed":
            body = self.new if self.change == "added" else self.old
            for key in ("title", "description"):
                if body and isinstance(body.get(key), str):
                    lines.append(f"    {key}: {_clip(body[key], width)}")
            if body and "inputSchema" in body:
                schema = canonical_json(body["inputSchema"])
                lines.append(f"    inputSchema: {_clip(schema, width)}")
            return "\n".join(lines)
        for f in self.fields:
            if isinstance(f.old, str) and isinstance(f.new, str):
                lines.append(f"    {f.path}:")
                lines.append(f"      - {_clip(f.old, width)}")
                lines.append(f"      + {_clip(f.new, width)}")
            elif f.change == "added":
                lines.append(f"    {f.path}: added {_show(f.new, width)}")
            elif f.change == "removed":
                lines.append(f"    {f.path}: removed (was {_show(f.old, width)})")
            else:
                lines.append(f"    {f.path}: {_show(f.old, width)} -> {_show(f.new, width)}")
        return "\n".join(lines)


def visible(text: str) -> str:
    """``text`` with control, format (zero-width, bidi, tags), private and unassigned
    characters written as escapes."""
    if text.isascii() and text.isprintable():
        return text
    out = []
    for ch in text:
        if ch in "\n\t" or not unicodedata.category(ch).startswith("C"):
            out.append(ch)
        else:
            cp = ord(ch)
            out.append(f"\\u{cp:04x}" if cp <= 0xFFFF else f"\\U{cp:08x}")
    return "".join(out)


def _clip(text: str, width: int) -> str:
    shown = visible(text)
    if len(shown) > width:
        return f"{shown[:width]}… ({len(shown) - width} more characters)"
    return shown


def _show(value: Any, width: int) -> str:
    if value is _MISSING:
        return "(absent)"
    return _clip(canonical_json(value), width)


def _walk(old: Any, new: Any, path: str, out: list[FieldChange]) -> None:
    if len(out) >= _MAX_FIELD_CHANGES:
        return
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(old.keys() | new.keys()):
            a, b = old.get(key, _MISSING), new.get(key, _MISSING)
            if a == b and type(a) is type(b):
                continue
            sub = f"{path}.{key}" if path else key
            if a is _MISSING or b is _MISSING:
                out.append(FieldChange(sub, a, b))
            else:
                _walk(a, b, sub, out)
        return
    if old != new or type(old) is not type(new):
        out.append(FieldChange(path or "(definition)", old, new))


def diff_tools(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[ToolDiff]:
    """What changed between two canonical tool sets (name → definition), by name."""
    diffs: list[ToolDiff] = []
    for name in sorted(old.keys() | new.keys()):
        a, b = old.get(name), new.get(name)
        if a is None:
            diffs.append(ToolDiff(name, "added", None, b))
        elif b is None:
            diffs.append(ToolDiff(name, "removed", a, None))
        elif canonical_json(a) != canonical_json(b):
            fields: list[FieldChange] = []
            _walk(a, b, "", fields)
            diffs.append(ToolDiff(name, "changed", a, b, tuple(fields)))
    return diffs


# --- storage ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PinRecord:
    server: str
    digest: str                        # the approved definitions
    pinned_at: float
    approved_by: str | None            # None: pinned on first sight
    complete: bool                     # pinned from a complete (unpaginated) list
    tools_json: str | None = None      # None when read with tools=False
    pending_digest: str | None = None  # definitions seen since, awaiting review
    pending_json: str | None = None
    pending_since: float | None = None
    relist: bool = False               # list_changed announced, no tools/list since
    relist_since: float | None = None

    @property
    def status(self) -> str:
        if self.pending_digest is not None:
            return "pending"
        return "relist" if self.relist else "pinned"

    def tools(self) -> dict[str, Any]:
        if self.tools_json is None:
            raise ValueError("pin record was read without its tools")
        return json.loads(self.tools_json)

    def pending_tools(self) -> dict[str, Any] | None:
        return None if self.pending_json is None else json.loads(self.pending_json)

    def to_dict(self) -> dict[str, Any]:
        return {"server": self.server, "status": self.status, "digest": self.digest,
                "pinned_at": self.pinned_at, "approved_by": self.approved_by,
                "complete": self.complete, "pending_digest": self.pending_digest,
                "pending_since": self.pending_since, "relist": self.relist}


@runtime_checkable
class PinStore(Protocol):
    """The pin operations a state store offers (proposed additions to ``StateStore``).
    Every method is atomic on its own."""

    def pin_get(self, server: str, *, tools: bool = True) -> PinRecord | None:
        """The pin of ``server`` (``tools=False``: without the two JSON texts, for hot paths)."""
        ...

    def pin_put(self, server: str, digest: str, tools_json: str, now: float, *,
                complete: bool = True, replace: str | None = None,
                by: str | None = None) -> bool:
        """``replace=None``: pin on first sight — insert only if ``server`` has no pin.
        ``replace=D``: overwrite the approved definitions only if they are still ``D``
        (compare-and-set, used to merge pages). Returns whether it wrote."""
        ...

    def pin_pending(self, server: str, digest: str, tools_json: str, now: float) -> bool:
        """Record definitions that differ from the pin (replacing an earlier pending set;
        ``pending_since`` is kept when the digest is the same). False: no pin."""
        ...

    def pin_approve(self, server: str, digest: str, now: float, by: str) -> PinRecord:
        """``digest`` = the pending digest: it becomes the pin. ``digest`` = the pinned one:
        the pending change is rejected (dropped). Anything else (e.g. the pending set
        changed since the operator looked) → ``ValueError``; no pin → ``KeyError``."""
        ...

    def pin_relist(self, server: str, required: bool, now: float) -> bool:
        """Set or clear "must list the tools again before calls proceed". False: no pin."""
        ...

    def pin_list(self) -> list[PinRecord]:
        """Every pin, without tools, ordered by server."""
        ...

    def pin_delete(self, server: str) -> bool:
        ...


def _check_digest(digest: object) -> str:
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise ValueError(f"not a tool digest: {digest!r} (expected sha256:<64 hex>)")
    return digest


def _check_json(text: object) -> str:
    if not isinstance(text, str):
        raise ValueError("tools must be given as JSON text")
    return text


class MemoryPins:
    """``PinStore`` in memory, next to a ``MemoryStore``."""

    def __init__(self, store: object = None) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._pins: dict[str, PinRecord] = {}

    def _open(self) -> None:
        check_open(self._store)

    def pin_get(self, server: str, *, tools: bool = True) -> PinRecord | None:
        check_server(server)
        self._open()
        rec = self._pins.get(server)
        if rec is None or tools:
            return rec
        return _without_tools(rec)

    def pin_put(self, server: str, digest: str, tools_json: str, now: float, *,
                complete: bool = True, replace: str | None = None,
                by: str | None = None) -> bool:
        check_server(server)
        _check_digest(digest)
        _check_json(tools_json)
        with self._lock:
            self._open()
            rec = self._pins.get(server)
            if replace is None:
                if rec is not None:
                    return False
                self._pins[server] = PinRecord(server, digest, now, by, complete, tools_json)
                return True
            if rec is None or rec.digest != replace:
                return False
            self._pins[server] = _replace(rec, digest=digest, tools_json=tools_json,
                                          complete=complete, pinned_at=now,
                                          approved_by=by or rec.approved_by)
            return True

    def pin_pending(self, server: str, digest: str, tools_json: str, now: float) -> bool:
        check_server(server)
        _check_digest(digest)
        _check_json(tools_json)
        with self._lock:
            self._open()
            rec = self._pins.get(server)
            if rec is None:
                return False
            since = rec.pending_since if rec.pending_digest == digest else now
            self._pins[server] = _replace(rec, pending_digest=digest, pending_json=tools_json,
                                          pending_since=since)
            return True

    def pin_approve(self, server: str, digest: str, now: float, by: str) -> PinRecord:
        check_server(server)
        _check_digest(digest)
        with self._lock:
            self._open()
            rec = self._pins.get(server)
            if rec is None:
                raise KeyError(server)
            if digest == rec.pending_digest:
                new = _replace(rec, digest=digest, tools_json=rec.pending_json, pinned_at=now,
                               approved_by=by, complete=True, pending_digest=None,
                               pending_json=None, pending_since=None)
            elif digest == rec.digest:
                new = _replace(rec, pending_digest=None, pending_json=None, pending_since=None)
            else:
                raise ValueError(_stale(server, digest, rec))
            self._pins[server] = new
            return _without_tools(new)

    def pin_relist(self, server: str, required: bool, now: float) -> bool:
        check_server(server)
        with self._lock:
            self._open()
            rec = self._pins.get(server)
            if rec is None:
                return False
            if rec.relist != required:
                self._pins[server] = _replace(rec, relist=required,
                                              relist_since=now if required else None)
            return True

    def pin_list(self) -> list[PinRecord]:
        self._open()
        with self._lock:
            return [_without_tools(r) for _, r in sorted(self._pins.items())]

    def pin_delete(self, server: str) -> bool:
        check_server(server)
        with self._lock:
            self._open()
            return self._pins.pop(server, None) is not None


def _replace(rec: PinRecord, **changes: Any) -> PinRecord:
    return replace(rec, **changes)


def _without_tools(rec: PinRecord) -> PinRecord:
    return _replace(rec, tools_json=None, pending_json=None)


def _stale(server: str, digest: str, rec: PinRecord) -> str:
    pending = rec.pending_digest or "none"
    return (f"{digest} is neither the pending definitions ({pending}) nor the pinned ones "
            f"({rec.digest}) of {server}: look at `fiveplane pins diff` again")


PIN_SCHEMA: list[list[str]] = [
    [  # version 1
        """CREATE TABLE mcp_pins(
             server TEXT PRIMARY KEY, digest TEXT NOT NULL, tools TEXT NOT NULL,
             complete INTEGER NOT NULL, pinned_at REAL NOT NULL, approved_by TEXT,
             pending_digest TEXT, pending_tools TEXT, pending_since REAL,
             relist INTEGER NOT NULL DEFAULT 0, relist_since REAL)""",
    ],
]
_COLS_LIGHT = ("server, digest, pinned_at, approved_by, complete, NULL, pending_digest, NULL, "
               "pending_since, relist, relist_since")
_COLS_FULL = ("server, digest, pinned_at, approved_by, complete, tools, pending_digest, "
              "pending_tools, pending_since, relist, relist_since")


def _row(row: Sequence[Any]) -> PinRecord:
    (server, digest, pinned_at, by, complete, tools, pdigest, ptools, psince, relist,
     rsince) = row
    return PinRecord(server, digest, pinned_at, by, bool(complete), tools, pdigest, ptools,
                     psince, bool(relist), rsince)


class SqlitePins:
    """``PinStore`` in the state database (table ``mcp_pins``, schema component
    ``mcp_pins``). No cache: exact across processes sharing the file."""

    def __init__(self, db: SqliteDb) -> None:
        self._db = db
        db.migrate("mcp_pins", PIN_SCHEMA)

    def pin_get(self, server: str, *, tools: bool = True) -> PinRecord | None:
        check_server(server)
        cols = _COLS_FULL if tools else _COLS_LIGHT
        with self._db.read("pin get") as c:
            row = c.execute(f"SELECT {cols} FROM mcp_pins WHERE server = ?",
                            (server,)).fetchone()
        return None if row is None else _row(row)

    def pin_put(self, server: str, digest: str, tools_json: str, now: float, *,
                complete: bool = True, replace: str | None = None,
                by: str | None = None) -> bool:
        check_server(server)
        _check_digest(digest)
        _check_json(tools_json)
        with self._db.write("pin put") as c:
            if replace is None:
                cur = c.execute(
                    "INSERT INTO mcp_pins(server, digest, tools, complete, pinned_at, "
                    "approved_by) VALUES(?, ?, ?, ?, ?, ?) ON CONFLICT(server) DO NOTHING",
                    (server, digest, tools_json, int(complete), now, by))
            else:
                cur = c.execute(
                    "UPDATE mcp_pins SET digest = ?, tools = ?, complete = ?, pinned_at = ?, "
                    "approved_by = coalesce(?, approved_by) WHERE server = ? AND digest = ?",
                    (digest, tools_json, int(complete), now, by, server, replace))
            return cur.rowcount == 1

    def pin_pending(self, server: str, digest: str, tools_json: str, now: float) -> bool:
        check_server(server)
        _check_digest(digest)
        _check_json(tools_json)
        with self._db.write("pin pending") as c:
            cur = c.execute(
                "UPDATE mcp_pins SET pending_since = CASE WHEN pending_digest = ? "
                "THEN pending_since ELSE ? END, pending_digest = ?, pending_tools = ? "
                "WHERE server = ?", (digest, now, digest, tools_json, server))
            return cur.rowcount == 1

    def pin_approve(self, server: str, digest: str, now: float, by: str) -> PinRecord:
        check_server(server)
        _check_digest(digest)
        with self._db.write("pin approve") as c:
            row = c.execute(f"SELECT {_COLS_LIGHT} FROM mcp_pins WHERE server = ?",
                            (server,)).fetchone()
            if row is None:
                raise KeyError(server)
            rec = _row(row)
            if digest == rec.pending_digest:
                c.execute("UPDATE mcp_pins SET digest = pending_digest, tools = pending_tools, "
                          "complete = 1, pinned_at = ?, approved_by = ?, pending_digest = NULL, "
                          "pending_tools = NULL, pending_since = NULL WHERE server = ?",
                          (now, by, server))
            elif digest == rec.digest:
                c.execute("UPDATE mcp_pins SET pending_digest = NULL, pending_tools = NULL, "
                          "pending_since = NULL WHERE server = ?", (server,))
            else:
                raise ValueError(_stale(server, digest, rec))
            row = c.execute(f"SELECT {_COLS_LIGHT} FROM mcp_pins WHERE server = ?",
                            (server,)).fetchone()
        return _row(row)

    def pin_relist(self, server: str, required: bool, now: float) -> bool:
        check_server(server)
        with self._db.write("pin relist") as c:
            cur = c.execute(
                "UPDATE mcp_pins SET relist = ?, relist_since = CASE WHEN ? THEN "
                "coalesce(relist_since, ?) ELSE NULL END WHERE server = ?",
                (int(required), int(required), now, server))
            return cur.rowcount == 1

    def pin_list(self) -> list[PinRecord]:
        with self._db.read("pin list") as c:
            rows = c.execute(f"SELECT {_COLS_LIGHT} FROM mcp_pins ORDER BY server").fetchall()
        return [_row(r) for r in rows]

    def pin_delete(self, server: str) -> bool:
        check_server(server)
        with self._db.write("pin delete") as c:
            return c.execute("DELETE FROM mcp_pins WHERE server = ?", (server,)).rowcount == 1


_ADAPTERS = AdapterCache()


def pin_store(store: Any) -> PinStore:
    """The pin operations of ``store``: the store itself once ``StateStore`` has them, else an
    adapter (one per store) over a ``SqliteStore``'s database or beside a ``MemoryStore``."""
    if isinstance(store, PinStore):
        return store
    shared = redis_state(store)
    if shared is not None:
        return shared  # type: ignore[no-any-return]
    db = sqlite_db(store)
    if db is not None:
        return _ADAPTERS.get(store, lambda: SqlitePins(db))
    from ..state.memory import MemoryStore

    if store is None:
        return MemoryPins()
    if isinstance(store, MemoryStore):
        return _ADAPTERS.get(store, lambda: MemoryPins(store))
    raise StateError(f"{type(store).__name__} cannot hold tool pins yet")


# --- the pin book -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PinCheck:
    """The result of checking one ``tools/list`` against the pin.

    ``status``: ``first_sight`` (now pinned), ``unchanged`` (same as the approved pin, or
    only tools added to a pin built from pages), ``changed`` (differs: see ``changed``).
    ``held``: calls to the server are held (a change awaits review — possibly from an
    earlier list). ``unapproved``: names whose listed definition is not the approved one
    (strip them from what the agent sees)."""

    server: str
    status: str
    digest: str                            # the observed definitions
    pinned: str                            # the approved definitions
    changed: tuple[ToolDiff, ...] = ()
    held: bool = False
    unapproved: frozenset[str] = frozenset()
    pending: str | None = None             # the definitions awaiting review

    @property
    def hold(self) -> Hold | None:
        if not self.held:
            return None
        return pin_hold(self.server, self.pending or self.digest, self.changed)

    def to_dict(self) -> dict[str, Any]:
        return {"server": self.server, "status": self.status, "digest": self.digest,
                "pinned": self.pinned, "held": self.held, "pending": self.pending,
                "changed": [d.summary() for d in self.changed]}


def pin_hold(server: str, pending: str, changed: Sequence[ToolDiff] = ()) -> Hold:
    what = f": {', '.join(d.summary() for d in changed[:5])}" if changed else ""
    return Hold(
        PIN_RULE,
        f"the tool definitions of MCP server {server} changed since they were pinned{what}; "
        f"calls to it are held until an operator reviews them (fiveplane pins diff {server}; "
        f"fiveplane pins approve {server} {pending[:19]})",
        Verdict.ESCALATE,
        {"server": server, "pending": pending},
    )


def relist_hold(server: str) -> Hold:
    return Hold(
        RELIST_RULE,
        f"MCP server {server} announced that its tools changed "
        "(notifications/tools/list_changed); calls to it are held until the client lists "
        "the tools again (tools/list)",
        Verdict.DENY,
        {"server": server},
    )


class PinBook:
    """Pins per server identity, over the state store (see the module docstring)."""

    def __init__(self, store: Any, *, clock: Callable[[], float] = time.time) -> None:
        self.store: PinStore = pin_store(store)
        self._clock = clock

    def check(self, server: str, tools: Iterable[Any], *, complete: bool = True,
              now: float | None = None, toolset: ToolSet | None = None) -> PinCheck:
        """Check a ``tools/list`` result against the pin (``toolset``: the list already in
        canonical form, when the caller has it)."""
        now = self._clock() if now is None else now
        observed = toolset if toolset is not None else ToolSet.from_list(tools)
        for _ in range(8):   # compare-and-set retries when another writer got there first
            rec = self.store.pin_get(server, tools=False)
            if rec is None:
                if self.store.pin_put(server, observed.digest, observed.to_json(), now,
                                      complete=complete):
                    return PinCheck(server, "first_sight", observed.digest, observed.digest)
                continue
            if rec.relist:
                self.store.pin_relist(server, False, now)
            if observed.digest == rec.digest:
                if complete and not rec.complete:   # the pages turned out to be all of it
                    self.store.pin_put(server, rec.digest, observed.to_json(), now,
                                       complete=True, replace=rec.digest)
                return PinCheck(server, "unchanged", observed.digest, rec.digest,
                                held=rec.pending_digest is not None,
                                pending=rec.pending_digest)
            full = self.store.pin_get(server)
            if full is None or full.digest != rec.digest:
                continue
            result = self._compare(server, full, observed, complete, now)
            if result is not None:
                return result
        raise StateError(f"pins of {server}: the pin kept changing under concurrent updates")

    def _compare(self, server: str, rec: PinRecord, observed: ToolSet, complete: bool,
                 now: float) -> PinCheck | None:
        pinned = rec.tools()
        diffs = diff_tools(pinned, observed.tools)
        if not complete:
            diffs = [d for d in diffs if d.change != "removed"]
        mergeable = not rec.complete
        real = [d for d in diffs if not (mergeable and d.change == "added")]
        if not real:
            # Only tools added to a pin built from pages: they join the pin.
            merged = {**pinned, **observed.tools}
            new = ToolSet.from_mapping(merged)
            now_complete = rec.complete or (complete and set(pinned) <= set(observed.tools))
            if not self.store.pin_put(server, new.digest, new.to_json(), now,
                                      complete=now_complete, replace=rec.digest):
                return None
            return PinCheck(server, "unchanged", observed.digest, new.digest,
                            held=rec.pending_digest is not None, pending=rec.pending_digest)
        candidate = observed if complete else ToolSet.from_mapping({**pinned, **observed.tools})
        if not self.store.pin_pending(server, candidate.digest, candidate.to_json(), now):
            return None
        unapproved = frozenset(d.name for d in real if d.change != "removed")
        return PinCheck(server, "changed", observed.digest, rec.digest, tuple(real), True,
                        unapproved, candidate.digest)

    def list_changed(self, server: str, now: float | None = None) -> Hold | None:
        """``notifications/tools/list_changed`` from ``server``: calls wait for a new list.
        Returns the hold now in effect (None when the server has no pin yet)."""
        now = self._clock() if now is None else now
        if self.store.pin_relist(server, True, now):
            return relist_hold(server)
        return None

    def hold(self, server: str) -> Hold | None:
        """Why calls to ``server`` are held now, or None."""
        rec = self.store.pin_get(server, tools=False)
        if rec is None:
            return None
        if rec.pending_digest is not None:
            return pin_hold(server, rec.pending_digest)
        if rec.relist:
            return relist_hold(server)
        return None

    def get(self, server: str) -> PinRecord | None:
        return self.store.pin_get(server)

    def list(self) -> list[PinRecord]:
        return self.store.pin_list()

    def diff(self, server: str) -> list[ToolDiff]:
        """Pinned → pending definitions of ``server`` (empty when nothing is pending);
        ``KeyError`` when the server has no pin."""
        rec = self.store.pin_get(server)
        if rec is None:
            raise KeyError(server)
        pending = rec.pending_tools()
        return [] if pending is None else diff_tools(rec.tools(), pending)

    def resolve(self, server: str, digest: str) -> str:
        """A full digest from what an operator typed: the full ``sha256:…`` or a prefix of
        at least 8 hex digits (with or without ``sha256:``) of the pending or pinned one."""
        rec = self.store.pin_get(server, tools=False)
        if rec is None:
            raise KeyError(server)
        text = digest.strip().lower()
        hexpart = text.removeprefix("sha256:")
        if len(hexpart) < _MIN_PREFIX or not re.fullmatch(r"[0-9a-f]+", hexpart):
            raise ValueError(f"give at least {_MIN_PREFIX} hex digits of the digest")
        found = {d for d in (rec.pending_digest, rec.digest)
                 if d is not None and d[7:].startswith(hexpart)}
        if len(found) != 1:
            raise ValueError(_stale(server, digest, rec))
        return found.pop()

    def approve(self, server: str, digest: str, *, by: str = "operator",
                now: float | None = None) -> PinRecord:
        """Approve the pending definitions (``digest`` = the pending digest, or a prefix):
        they become the pin and calls proceed. Naming the pinned digest rejects the change
        instead (calls proceed against the old definitions)."""
        now = self._clock() if now is None else now
        return self.store.pin_approve(server, self.resolve(server, digest), now, by)

    def forget(self, server: str) -> bool:
        return self.store.pin_delete(server)
