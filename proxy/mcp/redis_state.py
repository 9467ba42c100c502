"""The MCP guard's state on Redis: tool pins, session bindings and tool offers (shadowing),
beside a ``RedisStore`` (same pool, same prefix), so every proxy process and replica sees
one pin per server, one owner per ``Mcp-Session-Id`` and every server's offers.

Each mutating method is one Lua script (atomic; nothing read in Python and written back),
each read one command or one read-only script. Failures raise ``StateError`` through
``RedisStore.run`` (the guard then denies). Keys (``P`` = the store's prefix)::

    P pin:<server>     hash  digest, tools, complete, pinned_at, approved_by,
                             pending_digest, pending_tools, pending_since, relist, relist_since
    P pins             set   servers with a pin (``pin_list``)
    P mb:<key>         string  the principal a session binding belongs to
    P mbat             zset  binding key -> bound at (``binding_purge``)
    P so:{scope}:<name> hash server -> last offered
    P sn:{scope}       set   names offered in the scope
    P soat             zset  JSON [scope, name, server] -> last offered (``shadow_purge``)
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from ..state.errors import StateError
from ..state.redis_store import RedisStore
from ..state.store import check_principal, check_session, check_time
from .base import check_server
from .pins import PinRecord, _check_digest, _check_json, _stale
from .shadow import MAX_NAMES_PER_SCOPE, _check_names

_LIGHT = ("digest", "pinned_at", "approved_by", "complete", "pending_digest",
          "pending_since", "relist", "relist_since")
_FULL = (*_LIGHT, "tools", "pending_tools")

# KEYS: pin, pins. ARGV: server, digest, tools, complete, now, by ('' none), replace ('' none)
_PIN_PUT = """
if ARGV[7] == '' then
  if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
  redis.call('HSET', KEYS[1], 'digest', ARGV[2], 'tools', ARGV[3], 'complete', ARGV[4],
             'pinned_at', ARGV[5])
  if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'approved_by', ARGV[6]) end
  redis.call('SADD', KEYS[2], ARGV[1])
  return 1
end
if redis.call('HGET', KEYS[1], 'digest') ~= ARGV[7] then return 0 end
redis.call('HSET', KEYS[1], 'digest', ARGV[2], 'tools', ARGV[3], 'complete', ARGV[4],
           'pinned_at', ARGV[5])
if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'approved_by', ARGV[6]) end
return 1
"""

# KEYS: pin. ARGV: digest, tools, now
_PIN_PENDING = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HGET', KEYS[1], 'pending_digest') ~= ARGV[1] then
  redis.call('HSET', KEYS[1], 'pending_since', ARGV[3])
end
redis.call('HSET', KEYS[1], 'pending_digest', ARGV[1], 'pending_tools', ARGV[2])
return 1
"""

# KEYS: pin. ARGV: digest, now, by. Returns 'missing', 'stale' or 'ok'.
_PIN_APPROVE = """
local h = redis.call('HMGET', KEYS[1], 'digest', 'pending_digest', 'pending_tools')
if not h[1] then return 'missing' end
if ARGV[1] == h[2] then
  redis.call('HSET', KEYS[1], 'digest', h[2], 'tools', h[3], 'complete', '1',
             'pinned_at', ARGV[2], 'approved_by', ARGV[3])
elseif ARGV[1] ~= h[1] then
  return 'stale'
end
redis.call('HDEL', KEYS[1], 'pending_digest', 'pending_tools', 'pending_since')
return 'ok'
"""

# KEYS: pin. ARGV: required ('1'/'0'), now
_PIN_RELIST = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[1] == '1' then
  redis.call('HSET', KEYS[1], 'relist', '1')
  redis.call('HSETNX', KEYS[1], 'relist_since', ARGV[2])
else
  redis.call('HSET', KEYS[1], 'relist', '0')
  redis.call('HDEL', KEYS[1], 'relist_since')
end
return 1
"""

# KEYS: binding, index. ARGV: key, principal, now. Returns the bound principal.
_BIND = """
if redis.call('SET', KEYS[1], ARGV[2], 'NX') then
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
  return ARGV[2]
end
return redis.call('GET', KEYS[1])
"""

# KEYS: index. ARGV: before (exclusive), prefix. Returns how many went.
_UNBIND = """
local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1], 'LIMIT', 0, 1000)
for _, k in ipairs(old) do
  redis.call('DEL', ARGV[2] .. 'mb:' .. k)
  redis.call('ZREM', KEYS[1], k)
end
return #old
"""

# KEYS: names set, offer index. ARGV: scope, server, now, max names, name prefix, names...
# Returns -1 (too many names, nothing written) or a flat list name, other servers (JSON).
_OFFER = """
local fresh = 0
for i = 6, #ARGV do
  if redis.call('SISMEMBER', KEYS[1], ARGV[i]) == 0 then fresh = fresh + 1 end
end
if redis.call('SCARD', KEYS[1]) + fresh > tonumber(ARGV[4]) then return -1 end
local out = {}
for i = 6, #ARGV do
  local h = ARGV[5] .. ARGV[i]
  local last = redis.call('HGET', h, ARGV[2])
  if not last or tonumber(ARGV[3]) > tonumber(last) then
    redis.call('HSET', h, ARGV[2], ARGV[3])
    redis.call('ZADD', KEYS[2], ARGV[3], cjson.encode({ARGV[1], ARGV[i], ARGV[2]}))
  end
  redis.call('SADD', KEYS[1], ARGV[i])
  local others = {}
  for _, s in ipairs(redis.call('HKEYS', h)) do
    if s ~= ARGV[2] then others[#others + 1] = s end
  end
  if #others > 0 then
    out[#out + 1] = ARGV[i]
    out[#out + 1] = cjson.encode(others)
  end
end
return out
"""

# KEYS: names set. ARGV: exclude server, name prefix. Read only.
_FOREIGN = """
local out = {}
for _, n in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  for _, s in ipairs(redis.call('HKEYS', ARGV[2] .. n)) do
    if s ~= ARGV[1] then out[#out + 1] = n; break end
  end
end
return out
"""

# KEYS: offer index. ARGV: before (exclusive), prefix. Returns how many went.
_UNOFFER = """
local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1], 'LIMIT', 0, 1000)
for _, m in ipairs(old) do
  local o = cjson.decode(m)
  local h = ARGV[2] .. 'so:{' .. o[1] .. '}:' .. o[2]
  redis.call('HDEL', h, o[3])
  if redis.call('EXISTS', h) == 0 then
    redis.call('SREM', ARGV[2] .. 'sn:{' .. o[1] .. '}', o[2])
  end
  redis.call('ZREM', KEYS[1], m)
end
return #old
"""


def _text(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode()


def _time(raw: bytes | None) -> float | None:
    return None if raw is None else float(raw)


class RedisMcpState:
    """``PinStore``, ``BindingStore`` and ``ShadowStore`` over a ``RedisStore``."""

    def __init__(self, store: RedisStore) -> None:
        self._store = store
        self._r = store.client
        self._p = store.prefix
        reg = self._r.register_script
        self._s_put, self._s_pending = reg(_PIN_PUT), reg(_PIN_PENDING)
        self._s_approve, self._s_relist = reg(_PIN_APPROVE), reg(_PIN_RELIST)
        self._s_bind, self._s_unbind = reg(_BIND), reg(_UNBIND)
        self._s_offer, self._s_foreign = reg(_OFFER), reg(_FOREIGN)
        self._s_unoffer = reg(_UNOFFER)

    def _run(self, op: str, fn: Any, *args: Any, **kw: Any) -> Any:
        return self._store.run(op, fn, *args, **kw)

    # --- pins ------------------------------------------------------------------------

    def _pin(self, server: str) -> str:
        return f"{self._p}pin:{server}"

    def pin_get(self, server: str, *, tools: bool = True) -> PinRecord | None:
        check_server(server)
        fields = _FULL if tools else _LIGHT
        row = dict(zip(fields, self._run("pin get", self._r.hmget, self._pin(server), fields),
                       strict=True))
        if row["digest"] is None:
            return None
        return PinRecord(
            server, row["digest"].decode(), float(row["pinned_at"]),
            _text(row["approved_by"]), row["complete"] == b"1", _text(row.get("tools")),
            _text(row["pending_digest"]), _text(row.get("pending_tools")),
            _time(row["pending_since"]), row["relist"] == b"1", _time(row["relist_since"]))

    def pin_put(self, server: str, digest: str, tools_json: str, now: float, *,
                complete: bool = True, replace: str | None = None,
                by: str | None = None) -> bool:
        check_server(server)
        _check_digest(digest)
        _check_json(tools_json)
        return bool(self._run("pin put", self._s_put,
                              keys=[self._pin(server), self._p + "pins"],
                              args=[server, digest, tools_json, "1" if complete else "0",
                                    repr(float(now)), by or "", replace or ""]))

    def pin_pending(self, server: str, digest: str, tools_json: str, now: float) -> bool:
        check_server(server)
        _check_digest(digest)
        _check_json(tools_json)
        return bool(self._run("pin pending", self._s_pending, keys=[self._pin(server)],
                              args=[digest, tools_json, repr(float(now))]))

    def pin_approve(self, server: str, digest: str, now: float, by: str) -> PinRecord:
        check_server(server)
        _check_digest(digest)
        result = self._run("pin approve", self._s_approve, keys=[self._pin(server)],
                           args=[digest, repr(float(now)), by])
        if result == b"missing":
            raise KeyError(server)
        if result == b"stale":
            rec = self.pin_get(server, tools=False)
            if rec is None:
                raise KeyError(server)
            raise ValueError(_stale(server, digest, rec))
        rec = self.pin_get(server, tools=False)
        if rec is None:                 # deleted right after: report what was approved
            raise KeyError(server)
        return rec

    def pin_relist(self, server: str, required: bool, now: float) -> bool:
        check_server(server)
        return bool(self._run("pin relist", self._s_relist, keys=[self._pin(server)],
                              args=["1" if required else "0", repr(float(now))]))

    def pin_list(self) -> list[PinRecord]:
        servers = sorted(x.decode() for x in self._run("pin list", self._r.smembers,
                                                       self._p + "pins"))
        out = []
        for server in servers:
            rec = self.pin_get(server, tools=False)
            if rec is not None:
                out.append(rec)
        return out

    def pin_delete(self, server: str) -> bool:
        check_server(server)
        pipe = self._r.pipeline(transaction=True)
        pipe.delete(self._pin(server))
        pipe.srem(self._p + "pins", server)
        deleted, _ = self._run("pin delete", pipe.execute)
        return bool(deleted)

    # --- session bindings ---------------------------------------------------------------

    def binding_get(self, key: str) -> str | None:
        return _text(self._run("binding get", self._r.get, f"{self._p}mb:{key}"))

    def binding_put(self, key: str, principal: str, now: float) -> str:
        check_principal(principal)
        now = check_time(now)
        bound = self._run("binding put", self._s_bind,
                          keys=[f"{self._p}mb:{key}", self._p + "mbat"],
                          args=[key, principal, repr(now)])
        return bound.decode() if isinstance(bound, bytes) else str(bound)

    def binding_purge(self, before: float) -> int:
        gone = 0
        while True:
            n = int(self._run("binding purge", self._s_unbind, keys=[self._p + "mbat"],
                              args=[repr(float(before)), self._p]))
            gone += n
            if n < 1000:
                return gone

    # --- tool offers (shadowing) -------------------------------------------------------

    def _names(self, scope: str) -> tuple[str, str]:
        return f"{self._p}sn:{{{scope}}}", f"{self._p}so:{{{scope}}}:"

    def shadow_offer(self, scope: str, server: str, names: Iterable[str],
                     now: float) -> dict[str, tuple[str, ...]]:
        check_session(scope)
        check_server(server)
        now = check_time(now)
        listed = _check_names(names)
        if not listed:
            return {}
        names_key, prefix = self._names(scope)
        reply = self._run("shadow offer", self._s_offer,
                          keys=[names_key, self._p + "soat"],
                          args=[scope, server, repr(now), MAX_NAMES_PER_SCOPE, prefix,
                                *listed])
        if reply == -1:
            raise StateError(f"more than {MAX_NAMES_PER_SCOPE} tool names offered in "
                             f"session {scope}")
        return {reply[i].decode(): tuple(sorted(json.loads(reply[i + 1])))
                for i in range(0, len(reply), 2)}

    def shadow_servers(self, scope: str, name: str) -> tuple[str, ...]:
        _, prefix = self._names(scope)
        return tuple(sorted(x.decode() for x in self._run("shadow servers", self._r.hkeys,
                                                          prefix + name)))

    def shadow_names(self, scope: str, exclude_server: str) -> frozenset[str]:
        names_key, prefix = self._names(scope)
        return frozenset(x.decode() for x in self._run(
            "shadow names", self._s_foreign, keys=[names_key], args=[exclude_server, prefix]))

    def shadow_purge(self, before: float) -> int:
        gone = 0
        while True:
            n = int(self._run("shadow purge", self._s_unoffer, keys=[self._p + "soat"],
                              args=[repr(float(before)), self._p]))
            gone += n
            if n < 1000:
                return gone
