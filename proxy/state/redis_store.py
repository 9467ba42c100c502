"""``RedisStore``: the state interface on Redis, shared by several proxy processes and
replicas (``--state redis://HOST:PORT/DB``).

Every mutating operation is **one round trip**: one Lua script (registered once with
``register_script``; after a Redis restart the client re-loads it on ``NOSCRIPT``) or one
command. Nothing is read, computed in Python and written back. Reads are one command.
(``purge``, maintenance, runs a script per batch of 200 so Redis is never blocked long.)

Keys (``prefix`` defaults to ``fp:``; ``{sid}`` is the session key as a hash tag)::

    fp:s:{sid}        hash   principal, first, last        (touch, activity)
    fp:sessions       zset   sid -> last_seen              (list_sessions, purge)
    fp:m:{sid}        hash   label -> last time            (mark / marks)
    fp:mc:{sid}       hash   label -> count                (mark_counts)
    fp:e:{sid}        list   "seq at json", last MAX_EVENTS (append_event / events)
    fp:seq            int    the store-wide event sequence
    fp:b:<scope>:<len>:<value>:<len>:<budget>:<window>:<index>
                      int    used, in millionths (INCRBY/DECRBY); windowed counters
                             expire ``window_grace`` seconds after their window ends
    fp:bends          zset   windowed counter -> window end (purge)
    fp:sb:{sid}       set    the session-scoped counters of a session (purge)
    fp:v:{sid}        hash   16-byte BLAKE2b digest -> "expires|source"
    fp:vt:{sid}       zset   plain-text digests by time (evicted first)
    fp:vs:{sid}       zset   identifier digests by time (evicted last)
    fp:vexp           zset   digest+sid -> expires (purge of expired values)
    fp:j:{sid}        hash   seq -> "at json"               (compensation journal)
    fp:jsessions      set    sessions holding journal entries
    fp:kills          hash   "s:<sid>" / "p:<principal>" -> reason (first kept)
    fp:killat         hash   same fields -> time of the kill
    fp:inv            channel: cache invalidations (published by the mark/kill scripts)
    fp:c:<name>       channel: ``publish`` / ``subscribe`` (approvals and other features)

Times are stored as the caller's Python ``repr(float)`` strings, so they round-trip
exactly; Lua compares them with ``tonumber`` (a double, like Python's float). Budget units
are integers up to 2**53 - 1: ``INCRBY``/``DECRBY`` take the decimal string, and Lua only
compares (exact below 2**53, and monotone above it, so a sum past the limit is refused).

Consistency model
-----------------
* **Budgets, events, provenance values, counts, ``list_sessions``**: read and written in
  Redis by one script or command each — exact across threads, processes and replicas
  (a budget of 1,000 lets exactly 100 calls of 10 pass, whatever the number of replicas).
* **``marks()`` and ``killed()``** are served from a per-process cache (a dict lookup),
  kept current by a background thread subscribed to ``fp:inv``: the ``mark`` and ``kill``
  scripts ``PUBLISH`` an invalidation in the same atomic step as the write, so by the time
  a writer's call returns, the message is on its way to every replica.

  - A replica's own writes are visible to its next read at once (write-through).
  - Another replica's write is visible after the pub/sub delivery latency (well under a
    millisecond on one host or LAN, plus the wake-up of the listener thread).
  - **Hard bound: ``stale_after`` (default 0.5 s).** The listener sends a ``PING`` on the
    subscriber connection every ``stale_after / 4``. Redis answers it after every
    invalidation published before it, on the same connection and in order, so when the
    ``PONG`` of a ``PING`` sent at time *t* has been processed, the cache reflects every
    write committed before *t*. Cached reads are only served while the last such *t* is
    less than ``stale_after`` ago; otherwise (listener disconnected, Redis stopped or
    slow, network silently gone) ``marks()`` and ``killed()`` read Redis directly, and
    raise ``StateError`` when it does not answer within ``timeout``. A disconnect drops
    the cache at once; a reconnect reloads the kill list and starts with an empty marks
    cache.
  - Why that is acceptable: a kill or a taint label can only be written while Redis is
    up, so a cached answer is at worst the truth of ``stale_after`` ago, and in normal
    operation the truth of a pub/sub hop ago. The remaining window is a request that
    reaches replica B within that hop after replica A recorded the label — an agent
    would have to receive A's answer and reach B faster than Redis reaches B. Route a
    session to one replica (sticky load balancing on ``X-Fiveplane-Session``) to remove
    it, or pass ``stale_after=0``: every ``marks()``/``killed()`` is then one Redis read
    (about 0.1 ms; still no read-modify-write anywhere).
  - Keys deleted behind the store's back (``FLUSHALL``, ``DEL`` by hand) are not
    announced: the caches keep the old labels and kills until the listener reconnects.
    That errs on the restrictive side (more taint, more kills). Never let Redis evict
    keys: ``maxmemory-policy noeviction`` (an evicted budget counter would reset).
* **Failures.** Every call has a timeout (``socket_timeout`` and
  ``socket_connect_timeout`` = ``timeout``) and no client-side retry (a retried script
  could charge or release twice). Redis unreachable, restarting, loading or slow raises
  ``StateError("state store redis://HOST:PORT/DB unavailable: <operation>: ...")`` —
  never a default (``killed()`` raises rather than answer ``None``). A call that timed
  out may still have been applied: a ``consume`` then charged a call that was denied,
  a ``release`` may not have given back — both err on the closed side; no budget is
  ever exceeded. The client reconnects on the next call; the listener reconnects with a
  backoff (50 ms to 0.5 s) and resubscribes every channel.
* **Persistence is the deployment's job.** A Redis restarted without persistence comes
  back empty: budgets, labels, values and kills are gone (budgets start from zero again).
  For budgets that must survive a Redis restart, run Redis with
  ``appendonly yes`` and ``appendfsync always`` (every acknowledged write is on disk).
  With replication, a failover can lose the last acknowledged writes (asynchronous
  replication); use one primary with AOF, or accept that risk explicitly.
* **Expiry.** A windowed budget counter expires ``window_grace`` (60 s) after its window
  ends (a TTL relative to the caller's clock, so replicas whose clocks differ by less
  than the grace agree on the counter). Sessions, marks, events and values do not expire
  by themselves: call ``purge`` from a timer, as with SQLite (any replica; idempotent).
* Redis Cluster is not supported (scripts touch a session's keys and the global indexes
  together); use a single primary (optionally with Sentinel).
* One ``RedisStore`` per process, created **after** any fork: its listener and callback
  threads do not survive a fork (a forked copy falls back to uncached reads after
  ``stale_after`` and cannot subscribe).
* Costs (``tests/benchmarks/redis_bench.py``): a cached ``marks()``/``killed()`` is a dict
  lookup plus a ``time.monotonic()``; every other call is one round trip (about 0.1-0.2 ms
  on loopback). ``list_sessions`` returns every session in one reply (CLI use). redis-py
  parses replies in pure Python unless ``hiredis`` is installed (then about 10x faster
  for large replies such as ``HGETALL`` of thousands of labels).

Pub/sub for other features (approvals: "an approval granted on replica A releases the
call held on replica B within 1 s")::

    unsubscribe = store.subscribe("approvals", on_message, on_reconnect=recheck)
    store.publish("approvals", {"id": approval_id, "verdict": "granted"})
    unsubscribe()

Delivery is at most once (Redis pub/sub): a message published while a replica is
disconnected is lost for it. ``on_reconnect`` runs after every resubscription so the
feature can re-read what it waits for (the approval's stored state).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import queue
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

try:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("the Redis state backend needs the `redis` package "
                      "(pip install redis)") from e

from .errors import StateError
from .provenance import normalized_digests
from .store import (
    MAX_EVENTS,
    MAX_JOURNAL,
    MAX_KEY_CHARS,
    MAX_LABELS,
    MAX_VALUES,
    BudgetKey,
    BudgetResult,
    Event,
    Scope,
    SessionInfo,
    Window,
    check_duration,
    check_labels,
    check_limit,
    check_limit_arg,
    check_principal,
    check_reason,
    check_seq,
    check_session,
    check_source,
    check_time,
    encode_event,
    from_units,
    to_units,
    window_of,
)

log = logging.getLogger("fiveplane.state.redis")
_monotonic = time.monotonic     # the cached reads' only extra cost over a dict lookup

EMPTY: MappingProxyType[str, float] = MappingProxyType({})
NEVER = -math.inf
_RECENT = 4096          # sessions whose last invalidation is remembered (cache fill guard)
_PURGE_BATCH = 200      # sessions / values / counters per purge script call

# --- Lua ------------------------------------------------------------------------------------

# Activity: last_seen = max(last_seen, now), first_seen = min(first_seen, now).
_ACTIVE = """
local function active(skey, idx, sid, now_s)
  local now = tonumber(now_s)
  local t = redis.call('HMGET', skey, 'first', 'last')
  if not t[2] then
    redis.call('HSET', skey, 'first', now_s, 'last', now_s)
    redis.call('ZADD', idx, now_s, sid)
  else
    if now > tonumber(t[2]) then
      redis.call('HSET', skey, 'last', now_s)
      redis.call('ZADD', idx, now_s, sid)
    end
    if now < tonumber(t[1]) then redis.call('HSET', skey, 'first', now_s) end
  end
end
"""

# KEYS: session hash, session index. ARGV: sid, now, principal
_TOUCH = _ACTIVE + """
active(KEYS[1], KEYS[2], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[1], 'principal', ARGV[3])
return 1
"""

# KEYS: marks, counts, session hash, session index
# ARGV: sid, now, max labels, invalidation channel, invalidation message, labels...
# Returns -1 (refused: too many labels, nothing changed) or the number of labels held.
_MARK = _ACTIVE + """
local m, now = KEYS[1], tonumber(ARGV[2])
local held = redis.call('HLEN', m)
local new = 0
for i = 6, #ARGV do
  if redis.call('HEXISTS', m, ARGV[i]) == 0 then new = new + 1 end
end
if held + new > tonumber(ARGV[3]) then return -1 end
for i = 6, #ARGV do
  local last = redis.call('HGET', m, ARGV[i])
  if not last or now > tonumber(last) then redis.call('HSET', m, ARGV[i], ARGV[2]) end
  redis.call('HINCRBY', KEYS[2], ARGV[i], 1)
end
active(KEYS[3], KEYS[4], ARGV[1], ARGV[2])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return held + new
"""

# KEYS: kills, kill times, session hash, session index
# ARGV: target, reason, now, sid ('' for a principal), channel, origin
# Returns the kept (first) reason; publishes it.
_KILL = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
end
if ARGV[4] ~= '' and redis.call('EXISTS', KEYS[3]) == 0 then
  redis.call('HSET', KEYS[3], 'first', ARGV[3], 'last', ARGV[3])
  redis.call('ZADD', KEYS[4], ARGV[3], ARGV[4])
end
local kept = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('PUBLISH', ARGV[5], cjson.encode({t = 'k', k = ARGV[1], r = kept, o = ARGV[6]}))
return kept
"""

# KEYS: events list, sequence, session hash, session index. ARGV: sid, now, json, max
_APPEND = _ACTIVE + """
local seq = redis.call('INCR', KEYS[2])
redis.call('RPUSH', KEYS[1], string.format('%d', seq) .. ' ' .. ARGV[2] .. ' ' .. ARGV[3])
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[4]), -1)
active(KEYS[3], KEYS[4], ARGV[1], ARGV[2])
return seq
"""

# KEYS: journal, sequence, journal sessions, session hash, session index
# ARGV: sid, now, json, max. Returns the seq, or -1 (full: nothing changed).
_JOURNAL_ADD = _ACTIVE + """
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[4]) then return -1 end
local seq = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], string.format('%d', seq), ARGV[2] .. ' ' .. ARGV[3])
redis.call('SADD', KEYS[3], ARGV[1])
active(KEYS[4], KEYS[5], ARGV[1], ARGV[2])
return seq
"""

# KEYS: journal. ARGV: seq, json. Returns 1 (replaced) or 0 (not journaled).
_JOURNAL_UPDATE = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old then return 0 end
local at = string.sub(old, 1, string.find(old, ' ', 1, true) - 1)
redis.call('HSET', KEYS[1], ARGV[1], at .. ' ' .. ARGV[2])
return 1
"""

# KEYS: journal, journal sessions. ARGV: sid. Returns the hash (flat), now deleted.
_JOURNAL_TAKE = """
local all = redis.call('HGETALL', KEYS[1])
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
return all
"""

# KEYS: counter, window ends index[, session's counter set]
# ARGV: units, limit, ttl seconds ('0': no window), window end
# Returns {ok, used before}. Adds only if used + units <= limit.
_CONSUME = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local units = tonumber(ARGV[1])
if used + units > tonumber(ARGV[2]) then return {0, used} end
if units > 0 then
  local after = redis.call('INCRBY', KEYS[1], ARGV[1])
  if after == units then
    if ARGV[3] ~= '0' then
      redis.call('EXPIRE', KEYS[1], ARGV[3])
      redis.call('ZADD', KEYS[2], ARGV[4], KEYS[1])
    end
    if KEYS[3] then redis.call('SADD', KEYS[3], KEYS[1]) end
  end
end
return {1, used}
"""

# KEYS: counter. ARGV: units. Returns used after, never below zero.
_RELEASE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local after = redis.call('DECRBY', KEYS[1], ARGV[1])
if after < 0 then
  redis.call('SET', KEYS[1], '0', 'KEEPTTL')
  after = 0
end
return after
"""

# KEYS: values, text zset, identifier zset, expiring index, session hash, session index
# ARGV: sid, now, expires ('' = never), source, max values, then (digest, strong) pairs
# Returns how many values were evicted (plain text first, oldest first).
_REMEMBER = _ACTIVE + """
local v, vt, vs = KEYS[1], KEYS[2], KEYS[3]
local entry = ARGV[3] .. '|' .. ARGV[4]
for i = 6, #ARGV, 2 do
  local d = ARGV[i]
  redis.call('HSET', v, d, entry)
  if ARGV[i + 1] == '1' then
    redis.call('ZADD', vs, ARGV[2], d)
  else
    redis.call('ZADD', vt, ARGV[2], d)
  end
  if ARGV[3] ~= '' then redis.call('ZADD', KEYS[4], ARGV[3], d .. ARGV[1]) end
end
local excess = redis.call('HLEN', v) - tonumber(ARGV[5])
local evicted = 0
for _, z in ipairs({vt, vs}) do
  if excess > 0 then
    local popped = redis.call('ZPOPMIN', z, excess)
    for j = 1, #popped, 2 do
      redis.call('HDEL', v, popped[j])
      evicted = evicted + 1
    end
    excess = excess - #popped / 2
  end
end
active(KEYS[5], KEYS[6], ARGV[1], ARGV[2])
return evicted
"""

# KEYS: session index, kills, kill times. ARGV: active since, prefix. Read only.
_LIST = """
local out, seen = {}, {}
local function add(sid)
  if seen[sid] then return end
  seen[sid] = true
  local h = redis.call('HMGET', ARGV[2] .. 's:{' .. sid .. '}', 'principal', 'first', 'last')
  local k = 's:' .. sid
  out[#out + 1] = {sid, h[1], h[2], h[3], redis.call('HGET', KEYS[2], k),
                   redis.call('HGET', KEYS[3], k)}
end
for _, sid in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], '+inf')) do add(sid) end
for _, k in ipairs(redis.call('HKEYS', KEYS[2])) do
  if string.sub(k, 1, 2) == 's:' then add(string.sub(k, 3)) end
end
return out
"""

# One batch of idle sessions. KEYS: session index, kills, window ends index
# ARGV: cutoff (exclusive), offset, batch, prefix. Returns {scanned, skipped, removed}.
_PURGE_SESSIONS = """
local p = ARGV[4]
local sids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1],
                        'LIMIT', ARGV[2], ARGV[3])
local skipped, removed = 0, 0
for _, sid in ipairs(sids) do
  if redis.call('HEXISTS', KEYS[2], 's:' .. sid) == 1 then
    skipped = skipped + 1
  else
    local t = '{' .. sid .. '}'
    for _, b in ipairs(redis.call('SMEMBERS', p .. 'sb:' .. t)) do
      removed = removed + redis.call('DEL', b)
      redis.call('ZREM', KEYS[3], b)
    end
    redis.call('DEL', p .. 's:' .. t, p .. 'm:' .. t, p .. 'mc:' .. t, p .. 'e:' .. t,
               p .. 'v:' .. t, p .. 'vt:' .. t, p .. 'vs:' .. t, p .. 'sb:' .. t)
    redis.call('ZREM', KEYS[1], sid)
    removed = removed + 1
  end
end
return {#sids, skipped, removed}
"""

# One batch of expired values. KEYS: expiring index. ARGV: now, batch, prefix.
_PURGE_VALUES = """
local p, now = ARGV[3], tonumber(ARGV[1])
local members = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
local removed = 0
for _, m in ipairs(members) do
  local d, t = string.sub(m, 1, 16), '{' .. string.sub(m, 17) .. '}'
  local e = redis.call('HGET', p .. 'v:' .. t, d)
  if e then
    local x = string.sub(e, 1, string.find(e, '|', 1, true) - 1)
    if x ~= '' and tonumber(x) <= now then
      redis.call('HDEL', p .. 'v:' .. t, d)
      redis.call('ZREM', p .. 'vt:' .. t, d)
      redis.call('ZREM', p .. 'vs:' .. t, d)
      removed = removed + 1
    end
  end
  redis.call('ZREM', KEYS[1], m)
end
return {#members, removed}
"""

# One batch of ended budget windows. KEYS: window ends index. ARGV: now, batch, prefix.
# A session-scoped counter also leaves its session's set ("b:session:<bytes>:<sid>:...").
_PURGE_BUDGETS = """
local ks = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
local pre = ARGV[3] .. 'b:session:'
local removed = 0
for _, k in ipairs(ks) do
  removed = removed + redis.call('DEL', k)
  redis.call('ZREM', KEYS[1], k)
  if string.sub(k, 1, #pre) == pre then
    local rest = string.sub(k, #pre + 1)
    local colon = string.find(rest, ':', 1, true)
    local n = tonumber(string.sub(rest, 1, colon - 1))
    redis.call('SREM', ARGV[3] .. 'sb:{' .. string.sub(rest, colon + 1, colon + n) .. '}', k)
  end
end
return {#ks, removed}
"""


# --- pub/sub types ----------------------------------------------------------------------------


class Unsubscribe(Protocol):
    """What ``subscribe`` returns: call it to stop the callback (idempotent)."""

    def __call__(self) -> None: ...


class _Subscription:
    __slots__ = ("callback", "channel", "on_reconnect", "store")

    def __init__(self, store: RedisStore, channel: bytes,
                 callback: Callable[[dict[str, Any]], object],
                 on_reconnect: Callable[[], object] | None) -> None:
        self.store: RedisStore | None = store
        self.channel = channel
        self.callback = callback
        self.on_reconnect = on_reconnect

    def __call__(self) -> None:
        store, self.store = self.store, None
        if store is not None:
            store._unsubscribe(self)

    def __repr__(self) -> str:
        return f"<subscription {self.channel.decode(errors='replace')}>"


def _redact(url: str) -> str:
    """The URL without a password, for messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "redis://?"
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + host))


def _journal_events(pairs: list[tuple[bytes, bytes]]) -> list[Event]:
    out = []
    for seq, value in pairs:
        at, data = value.split(b" ", 1)
        out.append(Event(int(seq), float(at), json.loads(data)))
    out.sort(key=lambda e: e.seq)
    return out


def _num(t: float) -> str:
    """A time as Redis stores it: Python's shortest exact repr."""
    return repr(float(t))


# --- the store ---------------------------------------------------------------------------------


class RedisStore:
    """Session state in Redis (see the module docstring for keys and consistency).

    ``url``: ``redis://[user:password@]HOST:PORT/DB`` (``rediss://``, ``unix://`` too).
    ``timeout``: seconds for every connect and every reply (``StateError`` past it).
    ``prefix``: of every key and channel (several deployments can share one Redis).
    ``stale_after``: the most a cached ``marks()``/``killed()`` may lag (0: no cache).
    ``connect``: check Redis now and raise ``StateError`` if it is unreachable (else start
    anyway; calls raise until Redis answers). ``window_grace``: seconds a windowed budget
    counter outlives its window. The other arguments mirror ``SqliteStore``.
    """

    def __init__(self, url: str, *, timeout: float = 0.25, prefix: str = "fp:",
                 stale_after: float = 0.5, connect: bool = True,
                 touch_interval: float = 1.0, cache_sessions: int = 4096,
                 window_grace: float = 60.0, max_labels: int = MAX_LABELS,
                 max_events: int = MAX_EVENTS, max_values: int = MAX_VALUES,
                 max_journal: int = MAX_JOURNAL) -> None:
        if not isinstance(prefix, str) or not prefix or len(prefix) > MAX_KEY_CHARS:
            raise ValueError("prefix must be a short non-empty string")
        if not (isinstance(timeout, int | float) and math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if not (isinstance(stale_after, int | float) and 0 <= stale_after < math.inf):
            raise ValueError(f"stale_after must be >= 0 seconds, got {stale_after!r}")
        self.url = url
        self.name = _redact(url)
        self.timeout = float(timeout)
        self.prefix = prefix
        self.stale_after = float(stale_after)
        self.touch_interval = touch_interval
        self.cache_sessions = max(1, cache_sessions)
        self.window_grace = window_grace
        self.max_labels = max_labels
        self.max_events = max_events
        self.max_values = max_values
        self.max_journal = max_journal
        try:
            self._r = redis.Redis.from_url(
                url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout,
                retry=Retry(NoBackoff(), 0), retry_on_timeout=False,
                health_check_interval=0, decode_responses=False, protocol=2)
        except (ValueError, redis.exceptions.RedisError) as e:
            raise StateError(f"state store {self.name}: bad Redis URL: {e}") from None
        # URL query options (?socket_timeout=, ?protocol=) must not loosen these
        self._r.connection_pool.connection_kwargs.update(
            socket_timeout=self.timeout, socket_connect_timeout=self.timeout, protocol=2)

        p = prefix
        self._k_sessions = p + "sessions"
        self._k_seq = p + "seq"
        self._k_bends = p + "bends"
        self._k_vexp = p + "vexp"
        self._k_kills = p + "kills"
        self._k_killat = p + "killat"
        self._k_jsessions = p + "jsessions"
        self._ch_inv = (p + "inv").encode()
        self._origin = uuid.uuid4().hex

        reg = self._r.register_script
        self._s_touch = reg(_TOUCH)
        self._s_mark = reg(_MARK)
        self._s_kill = reg(_KILL)
        self._s_append = reg(_APPEND)
        self._s_consume = reg(_CONSUME)
        self._s_release = reg(_RELEASE)
        self._s_remember = reg(_REMEMBER)
        self._s_list = reg(_LIST)
        self._s_purge_sessions = reg(_PURGE_SESSIONS)
        self._s_purge_values = reg(_PURGE_VALUES)
        self._s_purge_budgets = reg(_PURGE_BUDGETS)
        self._s_journal_add = reg(_JOURNAL_ADD)
        self._s_journal_update = reg(_JOURNAL_UPDATE)
        self._s_journal_take = reg(_JOURNAL_TAKE)

        self._closed = False
        # caches: marks snapshots (LRU) and the kill list, valid until _valid_until
        self._lock = threading.Lock()
        self._marks: OrderedDict[str, MappingProxyType[str, float]] = OrderedDict()
        self._kills: dict[str, str] = {}
        self._valid_until = NEVER
        self._inv_seq = 0                            # local invalidation counter
        self._inv_recent: OrderedDict[str, int] = OrderedDict()
        self._inv_floor = 0
        self._touched: OrderedDict[str, tuple[str, float]] = OrderedDict()

        # pub/sub: one listener thread on one connection of the pool, one dispatcher
        self._cond = threading.Condition()           # guards the fields below
        self._conn: Any = None                       # the subscriber connection
        self._epoch = 0
        self._subs: dict[bytes, list[_Subscription]] = {}
        self._confirmed: set[bytes] = set()
        self._connected_once = False
        self._was_ready = False
        self._live = threading.Event()
        self._stop = threading.Event()
        self._heartbeat = (self.stale_after / 4) if self.stale_after else 0.25
        self._dead_after = max(1.0, 2 * self.stale_after, 4 * self.timeout)
        self._calls: queue.SimpleQueue[tuple[Callable[..., object], tuple[Any, ...]] | None]
        self._calls = queue.SimpleQueue()

        if connect:
            try:
                self._r.ping()
            except redis.exceptions.RedisError as e:
                self._r.close()
                raise StateError(f"state store {self.name} unavailable: cannot reach "
                                 f"Redis: {e}") from None
        self._listener = threading.Thread(target=self._listen, daemon=True,
                                          name="fiveplane-redis-listener")
        self._dispatcher = threading.Thread(target=self._dispatch, daemon=True,
                                            name="fiveplane-redis-callbacks")
        self._listener.start()
        self._dispatcher.start()
        if connect:
            self._live.wait(max(1.0, 4 * self.timeout))

    def __repr__(self) -> str:
        return f"RedisStore({self.name!r}, prefix={self.prefix!r})"

    @property
    def connected(self) -> bool:
        """Whether the listener is subscribed (cached reads also need a recent PONG)."""
        return self._live.is_set()

    # --- plumbing -------------------------------------------------------------------------

    @property
    def client(self) -> redis.Redis:
        """The connection pool, for features that keep their own keys beside the state
        (approvals, MCP pins): same URL, timeouts and no-retry policy. Wrap every use in
        ``run`` so failures become ``StateError``."""
        return self._r

    def run(self, op: str, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        """``fn(*args, **kw)`` with Redis failures turned into ``StateError`` naming ``op``."""
        return self._run(op, fn, *args, **kw)

    def _check_open(self) -> None:
        if self._closed:
            raise StateError(f"state store {self.name} is closed")

    def _run(self, op: str, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        if self._closed:
            raise StateError(f"state store {self.name} is closed")
        try:
            return fn(*args, **kw)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as e:
            raise StateError(f"state store {self.name} unavailable: {op}: {e}") from None
        except redis.exceptions.RedisError as e:
            raise StateError(f"state store {self.name} failed: {op}: {e}") from None

    def _tag(self, kind: str, session: str) -> str:
        return f"{self.prefix}{kind}:{{{session}}}"

    def _budget_key(self, key: BudgetKey, w: Window) -> str:
        # lengths in UTF-8 bytes: unambiguous, and the purge script can cut the key apart
        v, b = key.scope_value, key.budget_id
        lv = len(v) if v.isascii() else len(v.encode())
        lb = len(b) if b.isascii() else len(b.encode())
        return f"{self.prefix}b:{key.scope.value}:{lv}:{v}:{lb}:{b}:{w.length!r}:{w.index}"

    # --- cache guard ------------------------------------------------------------------------
    # A read that fills the cache records ``_inv_seq`` before it asks Redis and stores its
    # answer only if no invalidation of that session was processed meanwhile: otherwise an
    # answer read before another replica's write could be cached after its invalidation.

    def _note(self, session: str) -> None:            # under self._lock
        self._inv_seq += 1
        self._inv_recent[session] = self._inv_seq
        self._inv_recent.move_to_end(session)
        if len(self._inv_recent) > _RECENT:
            _, seq = self._inv_recent.popitem(last=False)
            self._inv_floor = max(self._inv_floor, seq)

    def _invalidate(self, session: str) -> None:      # under self._lock
        self._note(session)
        self._marks.pop(session, None)

    def _invalidate_all(self) -> None:                # under self._lock
        self._inv_seq += 1
        self._inv_floor = self._inv_seq
        self._inv_recent.clear()
        self._marks.clear()

    def _fresh(self, session: str, start: int) -> bool:   # under self._lock
        return max(self._inv_floor, self._inv_recent.get(session, 0)) <= start

    def _cache(self, session: str, snapshot: MappingProxyType[str, float]) -> None:
        self._marks[session] = snapshot                # under self._lock
        self._marks.move_to_end(session)
        while len(self._marks) > self.cache_sessions:
            self._marks.popitem(last=False)

    # --- sessions -----------------------------------------------------------------------

    def touch(self, session: str, principal_digest: str, now: float) -> None:
        check_session(session)
        check_principal(principal_digest)
        now = check_time(now)
        self._check_open()
        last = self._touched.get(session)
        if (last is not None and last[0] == principal_digest
                and 0 <= now - last[1] < self.touch_interval):
            return
        self._run("touch", self._s_touch, keys=[self._tag("s", session), self._k_sessions],
                  args=[session, _num(now), principal_digest])
        with self._lock:
            self._touched[session] = (principal_digest, now)
            self._touched.move_to_end(session)
            while len(self._touched) > self.cache_sessions:
                self._touched.popitem(last=False)

    def list_sessions(self, active_since: float = -math.inf) -> list[SessionInfo]:
        since = "-inf" if active_since == -math.inf else _num(
            check_time(active_since, "active_since"))
        rows = self._run("list sessions", self._s_list,
                         keys=[self._k_sessions, self._k_kills, self._k_killat],
                         args=[since, self.prefix])
        out = []
        for sid, principal, first, last, reason, at in rows:
            if first is None or last is None:
                continue
            out.append(SessionInfo(
                sid.decode(), principal.decode() if principal is not None else None,
                float(first), float(last), reason.decode() if reason is not None else None,
                float(at) if at is not None else None))
        out.sort(key=lambda i: (-i.last_seen, i.session))
        return out

    def kill(self, session: str, reason: str, now: float) -> None:
        check_session(session)
        self._kill("s:" + session, check_reason(reason), check_time(now), session)

    def kill_principal(self, principal_digest: str, reason: str, now: float) -> None:
        check_principal(principal_digest)
        self._kill("p:" + principal_digest, check_reason(reason), check_time(now), None)

    def _kill(self, target: str, reason: str, now: float, session: str | None) -> None:
        skey = self._tag("s", session) if session is not None else self._tag("s", "")
        kept = self._run("kill", self._s_kill,
                         keys=[self._k_kills, self._k_killat, skey, self._k_sessions],
                         args=[target, reason, _num(now), session or "",
                               self._ch_inv, self._origin])
        self._kills[target] = kept.decode()            # write-through (the message follows)

    def killed(self, session: str, principal_digest: str | None = None) -> str | None:
        if _monotonic() < self._valid_until:
            kills = self._kills                        # replaced whole on reconnect
            reason = kills.get("s:" + session)
            if reason is None and principal_digest:
                reason = kills.get("p:" + principal_digest)
            return reason
        check_session(session)
        fields = ["s:" + session]
        if principal_digest:
            fields.append("p:" + check_principal(principal_digest))
        got = self._run("killed", self._r.hmget, self._k_kills, fields)
        for reason in got:
            if reason is not None:
                return reason.decode()
        return None

    # --- marks ----------------------------------------------------------------------------

    def mark(self, session: str, labels: Iterable[str], now: float) -> None:
        check_session(session)
        names = check_labels(labels)
        now = check_time(now)
        if not names:
            return
        self._check_open()
        start = self._inv_seq
        cached = self._marks.get(session)
        message = json.dumps({"t": "m", "s": session, "o": self._origin})
        try:
            held = self._run("mark", self._s_mark,
                             keys=[self._tag("m", session), self._tag("mc", session),
                                   self._tag("s", session), self._k_sessions],
                             args=[session, _num(now), self.max_labels, self._ch_inv,
                                   message, *names])
        except StateError:
            with self._lock:                           # it may have been applied
                self._invalidate(session)
            raise
        if held < 0:
            raise StateError(f"session {session} would hold more than {self.max_labels} "
                             "mark labels; refusing rather than forgetting one")
        with self._lock:
            if cached is not None and self._fresh(session, start) \
                    and self._marks.get(session) is cached:
                new = cached.copy()                    # a dict copy, at C speed
                for label in names:
                    last = new.get(label)
                    new[label] = now if last is None or now > last else last
                self._cache(session, MappingProxyType(new))
                self._note(session)                    # fills started before: too old
            else:
                self._invalidate(session)

    def marks(self, session: str) -> Mapping[str, float]:
        if _monotonic() < self._valid_until:
            # Fast path, no lock: snapshots are immutable and replaced whole.
            snapshot = self._marks.get(session)
            if snapshot is not None:
                try:  # noqa: SIM105 -- hot path: suppress() builds an object per call
                    self._marks.move_to_end(session)
                except KeyError:
                    pass
                return snapshot
        check_session(session)
        self._check_open()
        start = self._inv_seq
        raw = self._run("marks", self._r.hgetall, self._tag("m", session))
        fresh = {k.decode(): float(v) for k, v in raw.items()}
        with self._lock:
            old = self._marks.get(session)
            if old is not None and old == fresh:
                return old                             # unchanged: the same snapshot
            snapshot = MappingProxyType(fresh) if fresh else EMPTY
            if self._fresh(session, start):
                self._cache(session, snapshot)
        return snapshot

    def mark_counts(self, session: str) -> Mapping[str, int]:
        check_session(session)
        raw = self._run("mark counts", self._r.hgetall, self._tag("mc", session))
        return {k.decode(): int(v) for k, v in raw.items()}

    # --- events ---------------------------------------------------------------------------

    def append_event(self, session: str, event: Mapping[str, Any], now: float) -> int:
        check_session(session)
        text = encode_event(event)
        now = check_time(now)
        return int(self._run("append event", self._s_append,
                             keys=[self._tag("e", session), self._k_seq,
                                   self._tag("s", session), self._k_sessions],
                             args=[session, _num(now), text, self.max_events]))

    def events(self, session: str, limit: int = 100) -> list[Event]:
        check_session(session)
        limit = min(check_limit_arg(limit), self.max_events)
        self._check_open()
        if not limit:
            return []
        rows = self._run("events", self._r.lrange, self._tag("e", session), -limit, -1)
        out = []
        for row in rows:
            seq, at, data = row.split(b" ", 2)
            out.append(Event(int(seq), float(at), json.loads(data)))
        return out

    # --- budgets --------------------------------------------------------------------------

    def consume(self, key: BudgetKey, amount: float, limit: float,
                window_seconds: float | None, now: float) -> BudgetResult:
        units = to_units(amount)
        cap = check_limit(limit)
        now = check_time(now)
        w = window_of(window_seconds, now)
        counter = self._budget_key(key, w)
        keys = [counter, self._k_bends]
        if key.scope is Scope.SESSION:
            keys.append(self._tag("sb", key.scope_value))
        if w.end is not None:
            ttl = max(1, math.ceil(w.end - now + self.window_grace))
            args = [units, cap, ttl, _num(w.end)]
        else:
            args = [units, cap, 0, ""]
        ok, used = self._run("consume budget", self._s_consume, keys=keys, args=args)
        used = int(used)
        after = used + units if ok else used
        return BudgetResult(bool(ok), from_units(used), from_units(after), from_units(cap),
                            w.start, w.end)

    def release(self, key: BudgetKey, amount: float, window_seconds: float | None,
                now: float) -> float:
        units = to_units(amount)
        now = check_time(now)
        w = window_of(window_seconds, now)
        used = self._run("release budget", self._s_release,
                         keys=[self._budget_key(key, w)], args=[units])
        return from_units(int(used))

    def budget_used(self, key: BudgetKey, window_seconds: float | None, now: float) -> float:
        now = check_time(now)
        w = window_of(window_seconds, now)
        used = self._run("budget used", self._r.get, self._budget_key(key, w))
        return from_units(int(used)) if used is not None else 0.0

    # --- provenance -----------------------------------------------------------------------

    def remember(self, session: str, values: Iterable[str], source: str, now: float,
                 ttl: float | None = None) -> int:
        check_session(session)
        check_source(source)
        now = check_time(now)
        ttl = check_duration(ttl, "ttl")
        expires = "" if ttl is None else _num(now + ttl)
        items = normalized_digests(values)
        self._check_open()
        if not items:
            return 0
        args: list[Any] = [session, _num(now), expires, source, self.max_values]
        for digest, strong in items.values():
            args.append(digest)
            args.append(b"1" if strong else b"0")
        return int(self._run("remember values", self._s_remember,
                             keys=[self._tag("v", session), self._tag("vt", session),
                                   self._tag("vs", session), self._k_vexp,
                                   self._tag("s", session), self._k_sessions],
                             args=args))

    def seen(self, session: str, values: Iterable[str],
             now: float | None = None) -> dict[str, str]:
        check_session(session)
        now = time.time() if now is None else check_time(now)
        wanted = normalized_digests(values, kinds=False)
        self._check_open()
        if not wanted:
            return {}
        names = list(wanted)
        got = self._run("seen values", self._r.hmget, self._tag("v", session),
                        [wanted[n][0] for n in names])
        out: dict[str, str] = {}
        for value, entry in zip(names, got, strict=True):
            if entry is None:
                continue
            expires, _, source = entry.partition(b"|")
            if not expires or float(expires) > now:
                out[value] = source.decode()
        return out

    # --- compensation journal ------------------------------------------------------------

    def journal_add(self, session: str, entry: Mapping[str, Any], now: float) -> int:
        check_session(session)
        text = encode_event(entry)
        now = check_time(now)
        seq = int(self._run("journal add", self._s_journal_add,
                            keys=[self._tag("j", session), self._k_seq, self._k_jsessions,
                                  self._tag("s", session), self._k_sessions],
                            args=[session, _num(now), text, self.max_journal]))
        if seq < 0:
            raise StateError(f"session {session} already journals {self.max_journal} "
                             "compensations; refusing rather than dropping one")
        return seq

    def journal_update(self, session: str, seq: int, entry: Mapping[str, Any]) -> bool:
        check_session(session)
        check_seq(seq)
        text = encode_event(entry)
        return bool(self._run("journal update", self._s_journal_update,
                              keys=[self._tag("j", session)], args=[seq, text]))

    def journal(self, session: str) -> list[Event]:
        check_session(session)
        raw = self._run("journal", self._r.hgetall, self._tag("j", session))
        return _journal_events(list(raw.items()))

    def journal_take(self, session: str) -> list[Event]:
        check_session(session)
        flat = self._run("journal take", self._s_journal_take,
                         keys=[self._tag("j", session), self._k_jsessions], args=[session])
        return _journal_events(list(zip(flat[::2], flat[1::2], strict=True)))

    def journal_sessions(self) -> list[str]:
        self._check_open()
        return sorted(m.decode() for m in self._run("journal sessions", self._r.smembers,
                                                    self._k_jsessions))

    # --- maintenance ----------------------------------------------------------------------

    def purge(self, now: float, idle_seconds: float) -> int:
        now = check_time(now)
        cutoff = now - check_time(idle_seconds, "idle_seconds")
        removed = 0
        offset = 0
        while True:                                    # idle sessions, in batches
            scanned, skipped, gone = self._run(
                "purge", self._s_purge_sessions,
                keys=[self._k_sessions, self._k_kills, self._k_bends],
                args=[_num(cutoff), offset, _PURGE_BATCH, self.prefix])
            removed += gone
            offset += skipped                          # killed sessions stay in the index
            if scanned < _PURGE_BATCH:
                break
        for script, keys, args in (
                (self._s_purge_values, [self._k_vexp], [_num(now), _PURGE_BATCH, self.prefix]),
                (self._s_purge_budgets, [self._k_bends], [_num(now), _PURGE_BATCH,
                                                          self.prefix])):
            while True:
                scanned, gone = self._run("purge", script, keys=keys, args=args)
                removed += gone
                if scanned < _PURGE_BATCH:
                    break
        with self._lock:
            self._invalidate_all()
            self._touched.clear()
        # other replicas drop their marks caches too (purged sessions lost their labels)
        self._run("purge", self._r.publish, self._ch_inv,
                  json.dumps({"t": "all", "o": self._origin}))
        return removed

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._valid_until = NEVER
            self._marks.clear()
        self._stop.set()
        with self._cond:
            conn = self._conn
        if conn is not None:
            with contextlib.suppress(Exception):       # wakes the listener
                conn.disconnect()
        self._listener.join(timeout=2.0)
        self._calls.put(None)
        if threading.current_thread() is not self._dispatcher:
            self._dispatcher.join(timeout=2.0)
        self._r.close()

    # --- pub/sub --------------------------------------------------------------------------

    def _channel(self, channel: str) -> bytes:
        if not isinstance(channel, str) or not channel or len(channel) > MAX_KEY_CHARS:
            raise ValueError("a channel must be a non-empty string of at most "
                             f"{MAX_KEY_CHARS} characters")
        return f"{self.prefix}c:{channel}".encode()

    def publish(self, channel: str, message: Mapping[str, Any]) -> int:
        """Send ``message`` (a JSON object, at most 64 KiB) to every ``subscribe``r of
        ``channel`` on every replica; returns how many subscriber connections got it.
        Raises ``StateError`` when Redis is unavailable."""
        name = self._channel(channel)
        text = encode_event(message)
        return int(self._run("publish", self._r.publish, name, text))

    def subscribe(self, channel: str, callback: Callable[[dict[str, Any]], object], *,
                  on_reconnect: Callable[[], object] | None = None) -> Unsubscribe:
        """Call ``callback(message)`` for every message published on ``channel`` (by any
        replica) from now on, on this store's callback thread. Returns once Redis has
        confirmed the subscription (``StateError`` if it does not within about a second).
        After a reconnection the channel is subscribed again and ``on_reconnect()`` runs
        (messages sent while disconnected are lost: re-read the state you wait for)."""
        name = self._channel(channel)
        self._check_open()
        sub = _Subscription(self, name, callback, on_reconnect)
        deadline = time.monotonic() + max(1.0, 4 * self.timeout)
        with self._cond:
            subs = self._subs.setdefault(name, [])
            subs.append(sub)
            if len(subs) == 1 and self._conn is not None:
                with contextlib.suppress(Exception):   # else the listener resubscribes
                    self._conn.send_command("SUBSCRIBE", name)
            while name not in self._confirmed:
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    break
                self._cond.wait(left)
            confirmed = name in self._confirmed
        if not confirmed:
            sub()
            raise StateError(f"state store {self.name} unavailable: subscribe {channel}: "
                             "Redis did not confirm the subscription")
        return sub

    def _unsubscribe(self, sub: _Subscription) -> None:
        with self._cond:
            subs = self._subs.get(sub.channel)
            if not subs or sub not in subs:
                return
            subs.remove(sub)
            if subs:
                return
            del self._subs[sub.channel]
            self._confirmed.discard(sub.channel)
            if self._conn is not None:
                with contextlib.suppress(Exception):   # else it reconnects without it
                    self._conn.send_command("UNSUBSCRIBE", sub.channel)

    def _dispatch(self) -> None:
        while True:
            item = self._calls.get()
            if item is None:
                return
            fn, args = item
            try:
                fn(*args)
            except Exception:  # one bad callback must not stop the others
                log.exception("state store %s: pub/sub callback %r failed", self.name, fn)

    # --- the listener thread ----------------------------------------------------------------

    def _listen(self) -> None:
        delay = 0.05
        failures = 0
        while not self._stop.is_set():
            self._was_ready = False
            try:
                self._listen_once()
            except Exception as e:  # any failure: drop the caches, reconnect
                if self._was_ready:                    # it had worked: retry at once
                    delay, failures = 0.05, 0
                if not self._stop.is_set():
                    failures += 1
                    (log.warning if failures == 1 else log.debug)(
                        "state store %s: pub/sub listener disconnected: %s", self.name, e)
            finally:
                self._drop()
            if self._stop.wait(delay):
                break
            delay = min(delay * 2, 0.5)

    def _drop(self) -> None:
        with self._lock:
            self._valid_until = NEVER
            self._invalidate_all()
        self._live.clear()
        with self._cond:
            conn, self._conn = self._conn, None
            self._confirmed.clear()
            self._cond.notify_all()
        if conn is not None:
            with contextlib.suppress(Exception):       # already broken
                conn.disconnect()
                self._r.connection_pool.release(conn)

    def _listen_once(self) -> None:
        """One subscriber connection, until it fails (raises) or the store closes."""
        conn = self._r.connection_pool.get_connection()
        with self._cond:
            self._epoch += 1
            epoch = self._epoch
            self._conn = conn
            conn.send_command("SUBSCRIBE", self._ch_inv, *self._subs)
        ready = False
        pinged = False                    # the first PONG after subscribing: live
        next_ping = math.inf
        heard = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_ping:
                with self._cond:
                    conn.send_command("PING", f"{epoch} {now!r}")
                next_ping = now + self._heartbeat
            if now - heard > self._dead_after:
                raise redis.exceptions.ConnectionError(
                    f"no reply on the pub/sub connection for {now - heard:.1f} s")
            if not conn.can_read(timeout=max(0.0, min(0.05, next_ping - now))):
                continue
            reply = conn.read_response()
            heard = time.monotonic()
            kind = reply[0]
            if kind == b"message":
                if reply[1] == self._ch_inv:
                    self._on_invalidation(reply[2])
                else:
                    self._on_message(reply[1], reply[2])
            elif kind == b"pong":
                sent_epoch, _, sent = reply[1].partition(b" ")
                if int(sent_epoch) != epoch or not ready:
                    continue
                if self.stale_after:
                    with self._lock:                   # close() resets it under the lock
                        if not self._closed:
                            self._valid_until = max(self._valid_until,
                                                    float(sent) + self.stale_after)
                if not pinged:
                    pinged = True
                    if self._connected_once:
                        self._on_reconnect()
                    self._connected_once = True
                    self._live.set()
            elif kind == b"subscribe":
                if reply[1] == self._ch_inv and not ready:
                    kills = self._r.hgetall(self._k_kills)   # after subscribing: complete
                    with self._lock:
                        self._kills = {k.decode(): v.decode() for k, v in kills.items()}
                        self._invalidate_all()
                    ready = self._was_ready = True
                    next_ping = 0.0
                with self._cond:
                    if reply[1] in self._subs or reply[1] == self._ch_inv:
                        self._confirmed.add(reply[1])
                    self._cond.notify_all()

    def _on_invalidation(self, data: bytes) -> None:
        try:
            msg = json.loads(data)
            kind = msg["t"]
            if kind == "m":
                if msg.get("o") != self._origin:       # own writes are written through
                    with self._lock:
                        self._invalidate(msg["s"])
            elif kind == "k":
                self._kills[msg["k"]] = msg["r"]
            elif kind == "all":
                with self._lock:
                    self._invalidate_all()
        except (ValueError, KeyError, TypeError):
            # Not from our scripts: resynchronise everything (reconnect, reload the kills).
            raise redis.exceptions.ConnectionError(
                f"malformed invalidation {data[:200]!r}; resubscribing") from None

    def _on_message(self, channel: bytes, data: bytes) -> None:
        with self._cond:
            subs = list(self._subs.get(channel, ()))
        if not subs:
            return
        for sub in subs:                               # a fresh copy for each callback
            try:
                message = json.loads(data)
            except ValueError:
                message = None
            if not isinstance(message, dict):
                log.warning("state store %s: ignoring a message that is not a JSON object "
                            "on %r", self.name, channel)
                return
            self._calls.put((sub.callback, (message,)))

    def _on_reconnect(self) -> None:
        with self._cond:
            hooks = [s.on_reconnect for subs in self._subs.values() for s in subs
                     if s.on_reconnect is not None]
        for hook in hooks:
            self._calls.put((hook, ()))
