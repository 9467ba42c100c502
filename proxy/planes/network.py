"""Network plane: where traffic may go.

Destinations are matched on the normalized host; internal addresses (private,
loopback, link-local, metadata, ...) are refused in every spelling, on the literal
host and on every address the host resolved to. The resolver guard in the addon
applies the same ``address_verdict`` to the address actually connected to.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from ..action import Action, Kind
from ..decision import Plane, Verdict
from ..netaddr import AddressClass, HostError, classify, parse_ip, unwrap_embedded_ipv4
from ..policy.matchers import host_index_keys
from ..policy.rules import Rule, make_decision

ANY = "\0any"
CACHE_LIMIT = 65536
_MISS: Any = object()
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class Destination:
    id: str
    ports: frozenset[int] | None
    schemes: frozenset[str] | None

    def admits(self, port: int, scheme: str) -> bool:
        return (self.ports is None or port in self.ports) and (
            self.schemes is None or scheme in self.schemes
        )


class DestinationIndex:
    """Destinations filed by host key (exact, ``*.parent``, any)."""

    def __init__(self, entries: Iterable[tuple[tuple[str, ...], Destination]]) -> None:
        index: dict[str, list[Destination]] = {}
        for hosts, dest in entries:
            for host in hosts:
                key = ANY if host == "*" else host
                index.setdefault(key, []).append(dest)
        self._index = {k: tuple(v) for k, v in index.items()}

    def find(self, host: str, port: int, scheme: str) -> Destination | None:
        get = self._index.get
        for key in (*host_index_keys(host), ANY):
            for dest in get(key, ()):
                if dest.admits(port, scheme):
                    return dest
        return None


@dataclass(frozen=True, slots=True)
class InternalException:
    id: str
    network: IPNetwork
    ports: frozenset[int] | None


@lru_cache(maxsize=8192)
def _address(text: str) -> tuple[IPAddress, AddressClass] | None:
    try:
        ip = parse_ip(text)
    except HostError:
        return None
    if ip is None:
        return None
    return unwrap_embedded_ipv4(ip), classify(ip)


class NetworkPlane:
    plane = Plane.NETWORK

    def __init__(
        self,
        version: str,
        allow: DestinationIndex | None,
        deny: DestinationIndex,
        internal: tuple[InternalException, ...],
    ) -> None:
        self.version = version
        self._allow = allow
        self._deny = deny
        self._internal = internal
        self._not_listed = self._rule(
            "network.default", Verdict.DENY,
            "destination not in network.allow",
        )
        self._connect = self._rule(
            "network.connect", Verdict.ALLOW,
            "tunnel opened; every request inside it is adjudicated",
        )
        self._internal_rule = self._rule("network.internal", Verdict.DENY, "internal address")
        self._cache: dict[tuple[str, int, str, tuple[str, ...], bool], Rule | None] = {}

    def _rule(self, rule_id: str, verdict: Verdict, reason: str) -> Rule:
        return Rule(
            id=rule_id, verdict=verdict, plane=Plane.NETWORK, reason=reason,
            decision=make_decision(verdict, (rule_id,), reason, self.version, Plane.NETWORK),
            tests=(), arg_tests=(), file="<builtin>", line=0,
        )

    def _with_reason(self, rule: Rule, rule_id: str, reason: str) -> Rule:
        decision = make_decision(rule.verdict, (rule_id,), reason, self.version, Plane.NETWORK)
        return dataclasses.replace(rule, id=rule_id, reason=reason, decision=decision)

    def hits(self, action: Action, out: list[Rule], errors: list[str]) -> None:
        if action.scheme == "stdio":
            return  # a wrapped stdio server: no network destination
        # The verdict depends only on these fields and the policy is immutable: memoize it.
        key = (action.host, action.port, action.scheme, action.addresses,
               action.kind is Kind.CONNECT)
        found = self._cache.get(key, _MISS)
        if found is _MISS:
            found = self._judge(*key)
            if len(self._cache) >= CACHE_LIMIT:
                self._cache.clear()
            self._cache[key] = found
        if found is not None:
            out.append(found)

    def _judge(self, host: str, port: int, scheme: str, addresses: tuple[str, ...],
               connect: bool) -> Rule | None:
        blocked = self.address_verdict(host, port)
        if blocked is not None:
            return blocked
        for address in addresses:
            blocked = self.address_verdict(address, port, via=host)
            if blocked is not None:
                return blocked
        denied = self._deny.find(host, port, scheme)
        if denied is not None:
            reason = f"destination {host}:{port} is denied by network.deny `{denied.id}`"
            return self._with_reason(self._not_listed, denied.id, reason)
        if self._allow is not None and self._allow.find(host, port, scheme) is None:
            reason = f"destination {scheme}://{host}:{port} is not in network.allow"
            return self._with_reason(self._not_listed, "network.default", reason)
        return self._connect if connect else None

    def address_verdict(self, address: str, port: int, via: str | None = None) -> Rule | None:
        """A deny rule when ``address`` (an IP literal in any spelling) is internal and
        not excepted for ``port``; None for public addresses and DNS names."""
        parsed = _address(address)
        if parsed is None:
            return None
        ip, cls = parsed
        if cls is AddressClass.PUBLIC:
            return None
        shown = f"{via} ({ip})" if via and via != str(ip) else str(ip)
        if cls is AddressClass.METADATA:
            return self._with_reason(
                self._internal_rule, "network.metadata",
                f"destination {shown} is a cloud metadata address (always blocked)",
            )
        for exc in self._internal:
            if ip in exc.network and (exc.ports is None or port in exc.ports):
                return None
        return self._with_reason(
            self._internal_rule, "network.internal",
            f"destination {shown}:{port} is a {cls.value.replace('_', '-')} address "
            "(blocked unless listed in network.allow_internal)",
        )
