"""Tests for proxy.netaddr: every spelling of an internal address must be caught."""

from __future__ import annotations

import ipaddress
import itertools
import socket
from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.netaddr import (
    METADATA_NETWORKS,
    AddressClass,
    HostError,
    classify,
    is_internal,
    normalize_host,
    parse_ip,
    unwrap_embedded_ipv4,
)

A = AddressClass

# --------------------------------------------------------------------------- #
# Spelling table: (host as written, expected address, expected class)
# --------------------------------------------------------------------------- #

LOOP = IPv4Address("127.0.0.1")
META = IPv4Address("169.254.169.254")
TEN = IPv4Address("10.0.0.1")
ZERO = IPv4Address("0.0.0.0")

SPELLINGS: list[tuple[str, str, AddressClass]] = [
    # 127.0.0.1
    ("127.0.0.1", "127.0.0.1", A.LOOPBACK),
    ("127.1", "127.0.0.1", A.LOOPBACK),
    ("127.0.1", "127.0.0.1", A.LOOPBACK),
    ("2130706433", "127.0.0.1", A.LOOPBACK),
    ("0x7f000001", "127.0.0.1", A.LOOPBACK),
    ("0X7F000001", "127.0.0.1", A.LOOPBACK),
    ("0x7f.1", "127.0.0.1", A.LOOPBACK),
    ("0177.0.0.1", "127.0.0.1", A.LOOPBACK),
    ("017700000001", "127.0.0.1", A.LOOPBACK),
    ("0x7f.0x0.0x0.0x1", "127.0.0.1", A.LOOPBACK),
    ("0177.0x0.00.01", "127.0.0.1", A.LOOPBACK),
    ("127.0.0.1.", "127.0.0.1", A.LOOPBACK),
    ("127.0.0.1..", "127.0.0.1", A.LOOPBACK),
    ("127.255.255.254", "127.255.255.254", A.LOOPBACK),
    ("\uff11\uff12\uff17.\uff10.\uff10.\uff11", "127.0.0.1", A.LOOPBACK),  # full-width
    ("127\u30020\u30020\u30021", "127.0.0.1", A.LOOPBACK),  # ideographic full stop
    ("::ffff:127.0.0.1", "::ffff:7f00:1", A.LOOPBACK),
    ("[::ffff:7f00:1]", "::ffff:7f00:1", A.LOOPBACK),
    ("0:0:0:0:0:ffff:7f00:1", "::ffff:7f00:1", A.LOOPBACK),
    ("::127.0.0.1", "::7f00:1", A.LOOPBACK),  # IPv4-compatible
    ("64:ff9b::127.0.0.1", "64:ff9b::7f00:1", A.LOOPBACK),
    ("2002:7f00:1::", "2002:7f00:1::", A.LOOPBACK),
    # 169.254.169.254 and other metadata endpoints
    ("169.254.169.254", "169.254.169.254", A.METADATA),
    ("2852039166", "169.254.169.254", A.METADATA),
    ("0xA9FEA9FE", "169.254.169.254", A.METADATA),
    ("0xa9fea9fe", "169.254.169.254", A.METADATA),
    ("0251.0376.0251.0376", "169.254.169.254", A.METADATA),
    ("00000251.0376.0251.0376", "169.254.169.254", A.METADATA),
    ("169.254.43518", "169.254.169.254", A.METADATA),
    ("169.16689662", "169.254.169.254", A.METADATA),
    ("0xa9.0xfe.0xa9.0xfe", "169.254.169.254", A.METADATA),
    ("0251.254.0xa9.254", "169.254.169.254", A.METADATA),
    ("169.254.169.254.", "169.254.169.254", A.METADATA),
    ("::ffff:169.254.169.254", "::ffff:a9fe:a9fe", A.METADATA),
    ("::ffff:a9fe:a9fe", "::ffff:a9fe:a9fe", A.METADATA),
    ("[::FFFF:A9FE:A9FE]", "::ffff:a9fe:a9fe", A.METADATA),
    ("64:ff9b::169.254.169.254", "64:ff9b::a9fe:a9fe", A.METADATA),
    ("64:ff9b::a9fe:a9fe", "64:ff9b::a9fe:a9fe", A.METADATA),
    ("64:ff9b:1::a9fe:a9fe", "64:ff9b:1::a9fe:a9fe", A.METADATA),  # local NAT64, /96
    ("64:ff9b:1:a9fe:a9:fe00::", "64:ff9b:1:a9fe:a9:fe00::", A.METADATA),  # /48 layout
    ("2002:a9fe:a9fe::1", "2002:a9fe:a9fe::1", A.METADATA),  # 6to4
    (
        "2001:0:4136:e378:8000:63bf:5601:5601",
        "2001:0:4136:e378:8000:63bf:5601:5601",
        A.METADATA,
    ),  # Teredo, client = ~5601:5601
    ("169.254.169.253", "169.254.169.253", A.METADATA),
    ("169.254.169.1", "169.254.169.1", A.METADATA),
    ("169.254.170.2", "169.254.170.2", A.METADATA),
    ("100.100.100.200", "100.100.100.200", A.METADATA),
    ("192.0.0.192", "192.0.0.192", A.METADATA),
    ("fd00:ec2::254", "fd00:ec2::254", A.METADATA),
    ("[FD00:EC2:0:0:0:0:0:254]", "fd00:ec2::254", A.METADATA),
    ("::ffff:100.100.100.200", "::ffff:6464:64c8", A.METADATA),
    # 10.0.0.1 and other private ranges
    ("10.0.0.1", "10.0.0.1", A.PRIVATE),
    ("10.1", "10.0.0.1", A.PRIVATE),
    ("012.1", "10.0.0.1", A.PRIVATE),
    ("0xa.1", "10.0.0.1", A.PRIVATE),
    ("167772161", "10.0.0.1", A.PRIVATE),
    ("0xA000001", "10.0.0.1", A.PRIVATE),
    ("012.0.0.01", "10.0.0.1", A.PRIVATE),
    ("10.0.1", "10.0.0.1", A.PRIVATE),
    ("::ffff:10.0.0.1", "::ffff:a00:1", A.PRIVATE),
    ("64:ff9b::a00:1", "64:ff9b::a00:1", A.PRIVATE),
    ("2002:a00:1::", "2002:a00:1::", A.PRIVATE),
    ("192.168.1.1", "192.168.1.1", A.PRIVATE),
    ("172.16.0.1", "172.16.0.1", A.PRIVATE),
    ("172.31.255.255", "172.31.255.255", A.PRIVATE),
    ("100.64.0.1", "100.64.0.1", A.PRIVATE),
    ("fc00::1", "fc00::1", A.PRIVATE),
    ("fd12:3456::1", "fd12:3456::1", A.PRIVATE),
    # 0.0.0.0 / ::
    ("0.0.0.0", "0.0.0.0", A.UNSPECIFIED),
    ("0", "0.0.0.0", A.UNSPECIFIED),
    ("00", "0.0.0.0", A.UNSPECIFIED),
    ("0x0", "0.0.0.0", A.UNSPECIFIED),
    ("0.0", "0.0.0.0", A.UNSPECIFIED),
    ("0x0.0x0.0x0.0x0", "0.0.0.0", A.UNSPECIFIED),
    ("0.1.2.3", "0.1.2.3", A.UNSPECIFIED),
    ("::", "::", A.UNSPECIFIED),
    ("[::]", "::", A.UNSPECIFIED),
    ("0:0:0:0:0:0:0:0", "::", A.UNSPECIFIED),
    ("::ffff:0.0.0.0", "::ffff:0:0", A.UNSPECIFIED),
    # ::1
    ("::1", "::1", A.LOOPBACK),
    ("[::1]", "::1", A.LOOPBACK),
    ("0:0:0:0:0:0:0:1", "::1", A.LOOPBACK),
    ("0000:0000:0000:0000:0000:0000:0000:0001", "::1", A.LOOPBACK),
    # link-local, multicast, reserved
    ("169.254.1.1", "169.254.1.1", A.LINK_LOCAL),
    ("fe80::1", "fe80::1", A.LINK_LOCAL),
    ("[FE80::ABCD]", "fe80::abcd", A.LINK_LOCAL),
    ("224.0.0.1", "224.0.0.1", A.MULTICAST),
    ("ff02::1", "ff02::1", A.MULTICAST),
    ("255.255.255.255", "255.255.255.255", A.RESERVED),
    ("4294967295", "255.255.255.255", A.RESERVED),
    ("240.0.0.1", "240.0.0.1", A.RESERVED),
    ("198.18.0.1", "198.18.0.1", A.RESERVED),
    ("192.0.2.1", "192.0.2.1", A.RESERVED),
    ("203.0.113.7", "203.0.113.7", A.RESERVED),
    ("2001:db8::1", "2001:db8::1", A.RESERVED),
    ("100::1", "100::1", A.RESERVED),
    ("4000::1", "4000::1", A.RESERVED),
    # public
    ("8.8.8.8", "8.8.8.8", A.PUBLIC),
    ("134744072", "8.8.8.8", A.PUBLIC),
    ("0x8.0x8.0x8.0x8", "8.8.8.8", A.PUBLIC),
    ("::ffff:8.8.8.8", "::ffff:808:808", A.PUBLIC),
    ("64:ff9b::8.8.8.8", "64:ff9b::808:808", A.PUBLIC),
    ("2002:808:808::", "2002:808:808::", A.PUBLIC),
    ("2606:4700:4700::1111", "2606:4700:4700::1111", A.PUBLIC),
]


def test_spelling_table_is_big_enough() -> None:
    assert len(SPELLINGS) >= 40


@pytest.mark.parametrize(("host", "canonical", "expected"), SPELLINGS)
def test_spellings(host: str, canonical: str, expected: AddressClass) -> None:
    ip = parse_ip(host)
    assert ip is not None
    assert ip == ipaddress.ip_address(canonical)
    assert classify(ip) is expected
    assert is_internal(ip) is (expected is not A.PUBLIC)
    assert normalize_host(host) == canonical


def test_ipv4_spellings_agree_with_inet_aton() -> None:
    for host, canonical, _ in SPELLINGS:
        if ":" in host or not host.isascii() or host.endswith("."):
            continue
        assert socket.inet_aton(host) == IPv4Address(canonical).packed, host


# --------------------------------------------------------------------------- #
# Normalization
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("api.example.com", "api.example.com"),
        ("CRM.Example.COM.", "crm.example.com"),
        ("crm.example.com...", "crm.example.com"),
        ("_dmarc.Example.com", "_dmarc.example.com"),
        ("localhost", "localhost"),
        ("1e100.net", "1e100.net"),
        ("0xdeadbeef.com", "0xdeadbeef.com"),
        ("example.123abc", "example.123abc"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("BÜCHER.Example.", "xn--bcher-kva.example"),
        ("exam\u00adple.com", "example.com"),  # soft hyphen is mapped away by nameprep
        ("example\u3002com", "example.com"),  # ideographic full stop
        ("[::1]", "::1"),
        ("[FD00:EC2::254]", "fd00:ec2::254"),
        ("0x7f.1", "127.0.0.1"),
        ("127.0.0.1.", "127.0.0.1"),
        ("::ffff:169.254.169.254", "::ffff:a9fe:a9fe"),
        ("a" * 63 + ".com", "a" * 63 + ".com"),
        (".".join(["a" * 63] * 3) + "." + "b" * 61, ".".join(["a" * 63] * 3) + "." + "b" * 61),
    ],
)
def test_normalize_host(host: str, expected: str) -> None:
    assert normalize_host(host) == expected
    assert normalize_host(expected) == expected  # idempotent


def test_cyrillic_lookalike_does_not_equal_ascii() -> None:
    spoof = "p\u0430ypal.com"  # Cyrillic small a
    normalized = normalize_host(spoof)
    assert normalized.startswith("xn--")
    assert normalized == "xn--pypal-4ve.com"
    assert normalized != "paypal.com"
    assert normalize_host("PayPal.com.") == "paypal.com"


def test_normalize_host_is_cached() -> None:
    normalize_host.cache_clear()
    normalize_host("Cache.Example.com")
    normalize_host("Cache.Example.com")
    assert normalize_host.cache_info().hits >= 1
    assert normalize_host.cache_info().maxsize == 4096


@pytest.mark.parametrize(
    "host", ["example.com", "api.example.com", "1e100.net", "xn--bcher-kva.example", "a1", "0x1g"]
)
def test_parse_ip_returns_none_for_names(host: str) -> None:
    assert parse_ip(host) is None


# --------------------------------------------------------------------------- #
# HostError
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    "host",
    [
        "",
        ".",
        "...",
        "a..b",
        ".example.com",
        "a" * 64 + ".com",
        "a." * 126 + "com",  # 255 characters
        "1.2.3.4.5",
        "0x",
        "0x.1",
        "08",
        "09.1.1.1",
        "256.1.1.1",
        "1.2.3.256",
        "1.2.65536",
        "1.16777216",
        "4294967296",
        "0x100000000",
        "0" + "7" * 30,
        "a.b.c.1",
        "1..1",
        "127.0.0.1 evil.com",
        " 127.0.0.1",
        "127.0.0.1\x00.evil.com",
        "exa mple.com",
        "ex%61mple.com",
        "example.com/path",
        "user@example.com",
        "example.com:443",
        "fe80::1%eth0",
        "[fe80::1%25eth0]",
        "[::1",
        "[]",
        "[example.com]",
        "[127.0.0.1]",
        "::ffff:0x7f.1",
        "1:2:3:4:5:6:7:8:9",
        "\ue000.com",  # prohibited code point in IDNA
        "\u00fc" * 64 + ".com",  # label too long after punycode
        "\u05d0a.com",  # IDNA bidi violation
        "a.\u2488.b",  # U+2488 maps to "1." -> empty label
    ],
)
def test_host_errors(host: str) -> None:
    with pytest.raises(HostError):
        normalize_host(host)


@pytest.mark.parametrize(
    "host",
    ["1.2.3.4.5", "0x", "08", "256.1.1.1", "4294967296", "fe80::1%eth0", "[x]", "1 .2", ""],
)
def test_parse_ip_raises_not_none(host: str) -> None:
    with pytest.raises(HostError):
        parse_ip(host)


def test_host_error_is_value_error_with_reason() -> None:
    with pytest.raises(ValueError, match="zone"):
        parse_ip("fe80::1%eth0")


# --------------------------------------------------------------------------- #
# classify / unwrap / metadata list
# --------------------------------------------------------------------------- #


def test_metadata_networks_cover_spec() -> None:
    for text in [
        "169.254.169.254",
        "169.254.170.2",
        "169.254.169.253",
        "100.100.100.200",
        "192.0.0.192",
        "fd00:ec2::254",
        "169.254.169.0",
        "169.254.169.255",
    ]:
        ip = ipaddress.ip_address(text)
        assert any(ip in net for net in METADATA_NETWORKS), text
        assert classify(ip) is A.METADATA


@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        ("::ffff:169.254.169.254", "169.254.169.254"),
        ("::a9fe:a9fe", "169.254.169.254"),
        ("64:ff9b::a9fe:a9fe", "169.254.169.254"),
        ("64:ff9b:1::a9fe:a9fe", "169.254.169.254"),
        ("2002:a9fe:a9fe::", "169.254.169.254"),
        ("2001:0:4136:e378:8000:63bf:5601:5601", "169.254.169.254"),
        ("::", "::"),
        ("::1", "::1"),
        ("2606:4700::1", "2606:4700::1"),
        ("10.0.0.1", "10.0.0.1"),
    ],
)
def test_unwrap_embedded_ipv4(ip: str, expected: str) -> None:
    assert unwrap_embedded_ipv4(ipaddress.ip_address(ip)) == ipaddress.ip_address(expected)


# --------------------------------------------------------------------------- #
# Property-based tests
# --------------------------------------------------------------------------- #


@st.composite
def spelled_number(draw: st.DrawFn, value: int) -> str:
    style = draw(st.sampled_from(["dec", "oct", "hex"]))
    if style == "dec":
        return str(value)
    zeros = "0" * draw(st.integers(0, 3))
    if style == "oct":
        return "0" + zeros + format(value, "o")
    digits = format(value, "x")
    if draw(st.booleans()):
        digits = digits.upper()
    return "0" + draw(st.sampled_from("xX")) + zeros + digits


@st.composite
def inet_aton_spelling(draw: st.DrawFn) -> tuple[IPv4Address, str]:
    addr = draw(st.ip_addresses(v=4))
    nparts = draw(st.integers(1, 4))
    raw = addr.packed
    values = [*raw[: nparts - 1], int.from_bytes(raw[nparts - 1 :], "big")]
    text = ".".join(draw(spelled_number(v)) for v in values)
    return addr, text


@given(inet_aton_spelling(), st.sampled_from(["", ".", ".."]))
@settings(max_examples=500)
def test_every_inet_aton_spelling_round_trips(case: tuple[IPv4Address, str], trailing: str) -> None:
    addr, text = case
    assert socket.inet_aton(text) == addr.packed  # generator sanity: really inet_aton syntax
    host = text + trailing
    parsed = parse_ip(host)
    assert parsed == addr
    assert classify(parsed) is classify(IPv4Address(str(addr)))
    assert normalize_host(host) == str(addr)


@given(st.ip_addresses(v=4))
def test_ipv4_mapped_classifies_like_ipv4(addr: IPv4Address) -> None:
    for host in (f"::ffff:{addr}", f"[::ffff:{addr}]"):
        mapped = parse_ip(host)
        assert isinstance(mapped, IPv6Address)
        assert unwrap_embedded_ipv4(mapped) == addr
        assert classify(mapped) is classify(addr)
    nat64 = IPv6Address(f"64:ff9b::{addr}")
    assert classify(nat64) is classify(addr)


@given(st.ip_addresses())
def test_classify_total(ip: IPv4Address | IPv6Address) -> None:
    cls = classify(ip)
    assert isinstance(cls, AddressClass)
    assert normalize_host(str(ip)) == ip.compressed
    assert parse_ip(f"[{ip}]" if ip.version == 6 else str(ip)) == ip


_ATON_ALPHABET = "0123456789.xabcdef"
_random_numericish = st.one_of(
    st.text(alphabet=_ATON_ALPHABET, min_size=1, max_size=24),
    st.lists(
        st.text(alphabet="0123456789xabcdef", min_size=0, max_size=11), min_size=1, max_size=6
    ).map(".".join),
    st.lists(
        st.sampled_from(["0", "0x", "1", "7", "8", "9", "f", "ff", "255", "256", "00"]),
        min_size=1,
        max_size=5,
    ).map(".".join),
)


def _check_against_inet_aton(host: str) -> None:
    try:
        packed = socket.inet_aton(host)
    except OSError:
        packed = None
    try:
        result = parse_ip(host)
    except HostError:
        return  # refusing is always safe
    if packed is not None:
        assert result is not None, f"bypass: inet_aton accepts {host!r}, parse_ip says DNS name"
        assert result.packed == packed, host


@given(_random_numericish)
@settings(max_examples=2000)
def test_parse_ip_never_misses_what_inet_aton_accepts(host: str) -> None:
    _check_against_inet_aton(host)


def test_parse_ip_exhaustive_short_strings_vs_inet_aton() -> None:
    for length in range(1, 7):
        for chars in itertools.product("019xa.", repeat=length):
            _check_against_inet_aton("".join(chars))
