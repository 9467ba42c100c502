"""Host normalization and internal-address classification for the network plane.

Everything here is about *not being fooled*: an address that points inside the
perimeter must be recognized in every spelling that an HTTP client, a proxy or
glibc's resolver would accept, and host names must be reduced to one canonical
form so that policy matching cannot be evaded by case, trailing dots, Unicode
look-alikes or alternative IP notations.

Design rules:

* ``parse_ip`` returns ``None`` only for hosts that are unambiguously DNS names.
  Anything that *looks* numeric (the last label is a decimal / octal / hex
  number, as in the WHATWG URL "ends in a number" rule) but is not a valid
  address raises :class:`HostError` instead, because some other parser might
  still interpret it as an address.
* ``classify`` unwraps IPv4 addresses embedded in IPv6 (mapped, compatible,
  NAT64, 6to4, Teredo) before classifying, and uses explicit tables rather than
  ``ipaddress.is_*`` so the result does not change between Python releases.

Standard library only; no mitmproxy import.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from enum import StrEnum
from typing import Final

__all__ = [
    "METADATA_NETWORKS",
    "AddressClass",
    "HostError",
    "IPAddress",
    "classify",
    "is_internal",
    "normalize_host",
    "parse_ip",
    "unwrap_embedded_ipv4",
]

type IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
type IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class HostError(ValueError):
    """A host that cannot be safely normalized or parsed; the message says why."""


class AddressClass(StrEnum):
    PUBLIC = "public"
    LOOPBACK = "loopback"
    PRIVATE = "private"  # RFC 1918, fc00::/7 ULA, 100.64.0.0/10 CGNAT
    LINK_LOCAL = "link_local"  # 169.254.0.0/16, fe80::/10
    METADATA = "metadata"  # cloud metadata endpoints; beats link_local / private
    UNSPECIFIED = "unspecified"  # 0.0.0.0/8, ::
    MULTICAST = "multicast"
    RESERVED = "reserved"  # anything else that is not globally routable


# --------------------------------------------------------------------------- #
# Precompiled patterns / constants
# --------------------------------------------------------------------------- #

_MAX_HOST_LEN: Final = 253
_MAX_LABEL_LEN: Final = 63

# A plain, already-canonical DNS name: lowercase ASCII labels of [a-z0-9_-],
# no trailing dot, and a last label that starts with a letter / '_' / '-' so it
# can never be an IPv4 number (all numeric spellings start with a digit).
_FAST_NAME: Final = re.compile(
    r"(?:[a-z0-9_-]{1,63}\.){0,126}[a-z_-][a-z0-9_-]{0,62}",
    re.ASCII,
)
# Characters allowed in a normalized DNS name (checked after IDNA conversion).
_NAME_CHARS: Final = re.compile(r"[a-z0-9_.-]+", re.ASCII)
# ASCII whitespace and control characters. glibc's inet_aton() accepts
# "127.0.0.1<space>anything" and C code truncates at NUL, so these are never OK.
_BAD_CHARS: Final = re.compile(r"[\x00-\x20\x7f]", re.ASCII)
# One inet_aton-style number: decimal, octal (leading 0) or hex (0x / 0X).
# The hex form deliberately allows zero digits ("0x") so that it is *recognized*
# as numeric-ish and rejected rather than treated as a DNS name.
_NUMERICISH: Final = re.compile(r"0[xX][0-9a-fA-F]*|[0-9]+", re.ASCII)
# Characters a numeric-ish label can end with (cheap pre-filter for DNS names).
_NUMERIC_TAIL: Final = frozenset("0123456789abcdefABCDEFxX")
# Maximum value of the last part, indexed by number of parts (inet_aton rules).
_LAST_PART_MAX: Final = (0, 0xFFFFFFFF, 0xFFFFFF, 0xFFFF, 0xFF)


def _nets(*cidrs: str) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


#: Cloud metadata endpoints. 169.254.169.0/24 covers AWS/GCP/Azure/OpenStack/
#: DigitalOcean/Oracle IMDS (169.254.169.254), AWS DNS (.253) and NTP (.123).
METADATA_NETWORKS: Final[tuple[IPNetwork, ...]] = _nets(
    "169.254.169.0/24",  # IMDS 169.254.169.254, AWS DNS .253, AWS NTP .123
    "169.254.170.2/32",  # AWS ECS task metadata / credentials
    "169.254.0.23/32",  # Tencent Cloud metadata
    "100.100.100.200/32",  # Alibaba Cloud metadata
    "192.0.0.192/32",  # Oracle Cloud metadata
    "168.63.129.16/32",  # Azure WireServer (public address, host-internal service)
    "fd00:ec2::254/128",  # AWS IMDS over IPv6
    "fd00:ec2::253/128",  # AWS DNS over IPv6
    "fd00:ec2::123/128",  # AWS NTP over IPv6
)
_METADATA_V4: Final = tuple(n for n in METADATA_NETWORKS if n.version == 4)
_METADATA_V6: Final = tuple(n for n in METADATA_NETWORKS if n.version == 6)

_V4_TABLE: Final[tuple[tuple[IPNetwork, AddressClass], ...]] = (
    *((n, AddressClass.UNSPECIFIED) for n in _nets("0.0.0.0/8")),
    *((n, AddressClass.LOOPBACK) for n in _nets("127.0.0.0/8")),
    *(
        (n, AddressClass.PRIVATE)
        for n in _nets("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10")
    ),
    *((n, AddressClass.LINK_LOCAL) for n in _nets("169.254.0.0/16")),
    *((n, AddressClass.MULTICAST) for n in _nets("224.0.0.0/4")),
    *(
        (n, AddressClass.RESERVED)
        for n in _nets(
            "192.0.0.0/24",  # IETF protocol assignments
            "192.0.2.0/24",  # TEST-NET-1
            "192.88.99.0/24",  # deprecated 6to4 relay anycast (RFC 7526)
            "198.18.0.0/15",  # benchmarking
            "198.51.100.0/24",  # TEST-NET-2
            "203.0.113.0/24",  # TEST-NET-3
            "240.0.0.0/4",  # reserved, includes 255.255.255.255 broadcast
        )
    ),
)

_V6_TABLE: Final[tuple[tuple[IPNetwork, AddressClass], ...]] = (
    *((n, AddressClass.UNSPECIFIED) for n in _nets("::/128")),
    *((n, AddressClass.LOOPBACK) for n in _nets("::1/128")),
    *((n, AddressClass.PRIVATE) for n in _nets("fc00::/7")),
    *((n, AddressClass.LINK_LOCAL) for n in _nets("fe80::/10")),
    *((n, AddressClass.MULTICAST) for n in _nets("ff00::/8")),
    *(
        (n, AddressClass.RESERVED)
        for n in _nets(
            "fec0::/10",  # deprecated site-local
            "100::/64",  # discard-only
            "2001:2::/48",  # benchmarking
            "2001:10::/28",  # deprecated ORCHID
            "2001:db8::/32",  # documentation
            "3fff::/20",  # documentation (RFC 9637)
            "5f00::/16",  # SRv6 SIDs (RFC 9602)
        )
    ),
)
# Only 2000::/3 is allocated as global unicast; everything else not matched
# above (e.g. the rest of ::/8, 4000::/2 ...) is IETF-reserved.
_V6_GLOBAL_UNICAST: Final = ipaddress.IPv6Network("2000::/3")

# Embedded-IPv4 prefixes.
_V4_MAPPED: Final = ipaddress.IPv6Network("::ffff:0:0/96")
_V4_COMPAT: Final = ipaddress.IPv6Network("::/96")
_NAT64_WKP: Final = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL: Final = ipaddress.IPv6Network("64:ff9b:1::/48")
_SIX_TO_FOUR: Final = ipaddress.IPv6Network("2002::/16")
_TEREDO: Final = ipaddress.IPv6Network("2001::/32")

# Most severe first; used to combine candidates for ambiguous NAT64 embeddings.
_SEVERITY: Final = (
    AddressClass.METADATA,
    AddressClass.LOOPBACK,
    AddressClass.LINK_LOCAL,
    AddressClass.PRIVATE,
    AddressClass.UNSPECIFIED,
    AddressClass.MULTICAST,
    AddressClass.RESERVED,
    AddressClass.PUBLIC,
)


# --------------------------------------------------------------------------- #
# Parsing
# --------------------------------------------------------------------------- #


def _to_ascii(host: str) -> str:
    """IDNA (2003, stdlib codec) conversion of a non-ASCII host."""
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise HostError(f"invalid internationalized host name {host!r}: {exc}") from None


def _prepare(host: str) -> str:
    """ASCII, lowercase, free of whitespace/control characters."""
    if not host:
        raise HostError("empty host")
    if not host.isascii():
        host = _to_ascii(host)
    if _BAD_CHARS.search(host):
        raise HostError(f"host {host!r} contains whitespace or control characters")
    return host.lower()


def _parse_ipv6(text: str, original: str) -> ipaddress.IPv6Address:
    if "%" in text:
        raise HostError(f"IPv6 zone identifiers are not allowed: {original!r}")
    try:
        return ipaddress.IPv6Address(text)
    except ValueError:
        raise HostError(f"invalid IPv6 literal {original!r}") from None


def _part_value(part: str, host: str) -> int:
    """Value of one inet_aton number (decimal, octal or hex)."""
    if not _NUMERICISH.fullmatch(part):
        raise HostError(f"invalid IPv4 part {part!r} in {host!r}")
    if part[:2] in ("0x", "0X"):
        digits, base = part[2:], 16
        if not digits:
            raise HostError(f"empty hexadecimal IPv4 part in {host!r}")
    elif len(part) > 1 and part[0] == "0":
        digits, base = part[1:], 8
        if "8" in digits or "9" in digits:
            raise HostError(f"invalid octal IPv4 part {part!r} in {host!r}")
    else:
        digits, base = part, 10
    digits = digits.lstrip("0")
    if len(digits) > 11:  # far beyond 2**32 in any base; avoids big-int work
        raise HostError(f"IPv4 part {part!r} out of range in {host!r}")
    return int(digits, base) if digits else 0


def _parse_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """inet_aton() semantics plus trailing dots; None for DNS names."""
    stripped = host.rstrip(".")
    if not stripped:
        raise HostError(f"empty host {host!r}")
    if stripped[-1] not in _NUMERIC_TAIL:
        return None  # fast path: "api.example.com" ends in a letter
    last = stripped[stripped.rfind(".") + 1 :]
    if not _NUMERICISH.fullmatch(last):
        return None  # last label is not a number -> DNS name (inet_aton agrees)
    parts = stripped.split(".")
    if len(parts) > 4:
        raise HostError(f"too many parts for an IPv4 address: {host!r}")
    values = [_part_value(p, host) for p in parts]
    *head, tail = values
    if any(v > 0xFF for v in head):
        raise HostError(f"IPv4 part out of range in {host!r}")
    if tail > _LAST_PART_MAX[len(values)]:
        raise HostError(f"IPv4 last part out of range in {host!r}")
    value = tail
    for i, v in enumerate(head):
        value |= v << (24 - 8 * i)
    return ipaddress.IPv4Address(value)


def _parse_prepared(host: str) -> IPAddress | None:
    if host[0] == "[":
        if host[-1] != "]" or len(host) < 3:
            raise HostError(f"malformed bracketed host {host!r}")
        return _parse_ipv6(host[1:-1], host)
    if ":" in host:
        return _parse_ipv6(host, host)
    return _parse_ipv4(host)


def parse_ip(host: str) -> IPAddress | None:
    """Return the IP address this host denotes, or None if it is a DNS name.

    IPv4 follows glibc ``inet_aton``: 1-4 dot-separated parts, each decimal,
    octal (leading ``0``) or hex (``0x``), the last part filling the remaining
    bytes ("2852039166", "0xA9FEA9FE", "169.254.43518", "127.1", ...); one or
    more trailing dots are ignored. Hosts whose last label is numeric but that
    are not a valid address ("1.2.3.4.5", "0x", "08", "256.1.1.1") raise
    :class:`HostError`, never return None.

    IPv6 may be bracketed or not; zone identifiers raise :class:`HostError`.
    Non-ASCII hosts are IDNA-converted first (full-width digits become ASCII).
    """
    return _parse_prepared(_prepare(host))


@functools.lru_cache(maxsize=4096)
def normalize_host(host: str) -> str:
    """Canonical form of a URL/authority host for policy matching.

    * IP literals in any spelling -> canonical text (dotted quad / compressed
      IPv6, without brackets); IPv6 zone ids -> :class:`HostError`.
    * DNS names -> lowercase, trailing dots stripped, non-ASCII labels converted
      to IDNA ``xn--`` form; empty labels, labels > 63, total > 253 or characters
      outside ``[a-z0-9_.-]`` -> :class:`HostError`.
    """
    if len(host) <= _MAX_HOST_LEN and _FAST_NAME.fullmatch(host):
        return host
    prepared = _prepare(host)
    ip = _parse_prepared(prepared)
    if ip is not None:
        return ip.compressed
    name = prepared.rstrip(".")
    if not name:
        raise HostError(f"empty host {host!r}")
    if not _NAME_CHARS.fullmatch(name):
        raise HostError(f"host {host!r} contains characters not allowed in a host name")
    if len(name) > _MAX_HOST_LEN:
        raise HostError(f"host {host!r} is longer than {_MAX_HOST_LEN} characters")
    for label in name.split("."):
        if not label:
            raise HostError(f"host {host!r} has an empty label")
        if len(label) > _MAX_LABEL_LEN:
            raise HostError(f"host {host!r} has a label longer than {_MAX_LABEL_LEN}")
    return name


# --------------------------------------------------------------------------- #
# Classification
# --------------------------------------------------------------------------- #


def _nat64_local_candidates(ip: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, ...]:
    """IPv4 candidates for 64:ff9b:1::/48 (RFC 8215).

    The operator picks the prefix length (48..96), which decides where the IPv4
    bits sit (RFC 6052 section 2.2, skipping the reserved "u" octet, bits
    64-71). We cannot know it, so every layout is returned; the /96 layout is
    first.
    """
    x = int(ip)
    cands = [ipaddress.IPv4Address(x & 0xFFFFFFFF)]  # /96: bits 96..127
    if (x >> 56) & 0xFF == 0:  # u octet must be zero for the other layouts
        b = x.to_bytes(16, "big")
        for prefix_bytes in (6, 7, 8):  # /48, /56, /64
            v4 = (b[prefix_bytes:8] + b[9:])[:4]
            cands.append(ipaddress.IPv4Address(v4))
    return tuple(cands)


def _embedded_candidates(ip: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, ...]:
    if ip in _V4_MAPPED:
        return (ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF),)
    if ip in _V4_COMPAT:
        if int(ip) <= 1:  # :: and ::1 are not IPv4-compatible addresses
            return ()
        return (ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF),)
    if ip in _NAT64_WKP:
        return (ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF),)
    if ip in _NAT64_LOCAL:
        return _nat64_local_candidates(ip)
    if ip in _SIX_TO_FOUR:
        six = ip.sixtofour
        return (six,) if six is not None else ()
    if ip in _TEREDO:
        teredo = ip.teredo
        return (teredo[1],) if teredo is not None else ()
    return ()


def unwrap_embedded_ipv4(ip: IPAddress) -> IPAddress:
    """The IPv4 address embedded in ``ip``, or ``ip`` itself.

    Handles IPv4-mapped (::ffff:0:0/96), IPv4-compatible (::/96 except :: and
    ::1), NAT64 (64:ff9b::/96; for local-use 64:ff9b:1::/48 the /96 layout),
    6to4 (2002::/16) and Teredo (2001::/32, the client address).
    """
    if isinstance(ip, ipaddress.IPv4Address):
        return ip
    cands = _embedded_candidates(ip)
    return cands[0] if cands else ip


def _classify_v4(ip: ipaddress.IPv4Address) -> AddressClass:
    for net in _METADATA_V4:
        if ip in net:
            return AddressClass.METADATA
    for net, cls in _V4_TABLE:
        if ip in net:
            return cls
    return AddressClass.PUBLIC


def _classify_v6(ip: ipaddress.IPv6Address) -> AddressClass:
    for net in _METADATA_V6:
        if ip in net:
            return AddressClass.METADATA
    for net, cls in _V6_TABLE:
        if ip in net:
            return cls
    if ip not in _V6_GLOBAL_UNICAST:
        return AddressClass.RESERVED
    return AddressClass.PUBLIC


def classify(ip: IPAddress) -> AddressClass:
    """Classify an address; embedded IPv4 inside IPv6 is unwrapped first.

    For local-use NAT64 (64:ff9b:1::/48) every possible embedding layout is
    classified and the most severe class wins.
    """
    if isinstance(ip, ipaddress.IPv4Address):
        return _classify_v4(ip)
    cands = _embedded_candidates(ip)
    if not cands:
        return _classify_v6(ip)
    if len(cands) == 1:
        return _classify_v4(cands[0])
    return min((_classify_v4(c) for c in cands), key=_SEVERITY.index)


def is_internal(ip: IPAddress) -> bool:
    """True unless the address is globally routable (``classify`` is PUBLIC)."""
    return classify(ip) is not AddressClass.PUBLIC
