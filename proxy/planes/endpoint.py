"""Endpoint plane: which HTTP operation or MCP method, tool, resource or prompt, with
which arguments.

Rules are filed in dictionaries by their exact keys (server, MCP method, name; host,
HTTP method); a rule with a glob in a dimension is filed under that dimension's
any-key and tests the glob itself. Candidate lists are memoized per lookup key, so a
decision touches only the rules that can apply to it, whatever the policy's size.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..action import Action, Kind
from ..decision import Plane, Verdict
from ..policy.matchers import host_index_keys
from ..policy.rules import NO, YES, Rule, make_decision

ANY = "\0any"
CACHE_LIMIT = 65536

# Protocol plumbing every declared MCP server needs; deny rules still override it.
LIFECYCLE = frozenset({
    "initialize",
    "notifications/initialized",
    "notifications/cancelled",
    "notifications/progress",
    "notifications/roots/list_changed",
    # server → client notifications: logs and change signals carry no request
    "notifications/message",
    "notifications/tools/list_changed",
    "notifications/resources/list_changed",
    "notifications/prompts/list_changed",
    "notifications/resources/updated",
    "ping",
    "server/discover",
    "tools/list",
    "resources/list",
    "resources/templates/list",
    "prompts/list",
    "transport/stream",       # GET: the server → client SSE stream
    "transport/terminate",    # DELETE: end of session
    "client/response",        # the client answering a server → client request
})

Key3 = tuple[str, str, str]
Key2 = tuple[str, str]


class EndpointPlane:
    plane = Plane.ENDPOINT

    def __init__(
        self,
        version: str,
        mcp_rules: Iterable[tuple[Rule, tuple[str, ...], tuple[str, ...], tuple[str, ...]]],
        http_rules: Iterable[tuple[Rule, tuple[str, ...], tuple[str, ...]]],
        declared_servers: frozenset[str],
    ) -> None:
        """``mcp_rules``: (rule, server keys, method keys, name keys);
        ``http_rules``: (rule, host keys, method keys); ANY marks a wildcard dimension."""
        self._declared = declared_servers
        mcp: dict[Key3, list[Rule]] = {}
        for rule, servers, methods, names in mcp_rules:
            for s in servers:
                for m in methods:
                    for n in names:
                        mcp.setdefault((s, m, n), []).append(rule)
        http: dict[Key2, list[Rule]] = {}
        for rule, hosts, methods in http_rules:
            for h in hosts:
                for m in methods:
                    http.setdefault((h, m), []).append(rule)
        self._mcp = {k: tuple(v) for k, v in mcp.items()}
        self._http = {k: tuple(v) for k, v in http.items()}
        self._mcp_cache: dict[Key3, tuple[Rule, ...]] = {}
        self._http_cache: dict[Key2, tuple[Rule, ...]] = {}
        reason = "MCP protocol plumbing for a declared server"
        self.lifecycle = Rule(
            id="mcp.lifecycle", verdict=Verdict.ALLOW, plane=Plane.ENDPOINT, reason=reason,
            decision=make_decision(
                Verdict.ALLOW, ("mcp.lifecycle",), reason, version, Plane.ENDPOINT
            ),
            tests=(), arg_tests=(), file="<builtin>", line=0,
        )

    def mcp_candidates(self, server: str, method: str, name: str) -> tuple[Rule, ...]:
        key = (server, method, name)
        found = self._mcp_cache.get(key)
        if found is None:
            get = self._mcp.get
            merged: dict[Rule, None] = {}
            for s in (server, ANY):
                for m in (method, ANY):
                    for n in (name, ANY):
                        merged.update(dict.fromkeys(get((s, m, n), ())))
            found = tuple(merged)
            if len(self._mcp_cache) >= CACHE_LIMIT:
                self._mcp_cache.clear()
            self._mcp_cache[key] = found
        return found

    def http_candidates(self, host: str, method: str) -> tuple[Rule, ...]:
        key = (host, method)
        found = self._http_cache.get(key)
        if found is None:
            get = self._http.get
            merged: dict[Rule, None] = {}
            for h in (*host_index_keys(host), ANY):
                for m in (method, ANY):
                    merged.update(dict.fromkeys(get((h, m), ())))
            found = tuple(merged)
            if len(self._http_cache) >= CACHE_LIMIT:
                self._http_cache.clear()
            self._http_cache[key] = found
        return found

    def hits(self, action: Action, out: list[Rule], errors: list[str]) -> None:
        kind = action.kind
        if kind is Kind.MCP or kind is Kind.MCP_SERVER:
            if action.mcp_method in LIFECYCLE and action.server in self._declared:
                out.append(self.lifecycle)
            candidates = self.mcp_candidates(action.server, action.mcp_method, action.name)
        elif kind is Kind.HTTP:
            candidates = self.http_candidates(action.host, action.method)
        else:
            return
        for rule in candidates:
            result = rule.evaluate(action)
            if result is NO:
                continue
            if result is YES:
                out.append(rule)
                continue
            # The argument could not be tested: a refusing rule counts as matched,
            # a permitting rule does not (fail closed either way).
            errors.append(f"rule `{rule.id}`: {result}")
            if rule.refusing:
                out.append(rule)

    def may_call(self, action: Action) -> bool | None:
        """For tools/list filtering: True if some call of this tool could be allowed,
        False if a refusing rule blocks it whatever the arguments, None if no rule
        speaks (the policy default decides)."""
        verdict: bool | None = None
        for rule in self.mcp_candidates(action.server, action.mcp_method, action.name):
            if not all(test(action) for test in rule.tests):
                continue
            if rule.refusing:
                if not rule.arg_tests:
                    return False
            else:
                verdict = True
        return verdict
