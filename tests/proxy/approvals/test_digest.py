"""The call digest binds an approval to one exact call; the display summary is redacted."""

from __future__ import annotations

from dataclasses import replace

from proxy.action import Action, Kind, StopPoint
from proxy.approvals import call_digest, canonical_json, describe_action
from proxy.principal import Link, Principal, PrincipalKind

V1 = "sha256:policy-v1"


class _Verified:
    def __init__(self, digest: str) -> None:
        self.digest = digest


def test_same_call_same_digest_whatever_the_argument_order(call):
    a = call(900)
    b = replace(a, arguments={"customer": "c-17", "amount": 900})
    assert call_digest(a, V1) == call_digest(b, V1)
    assert call_digest(a, V1).startswith("sha256:") and len(call_digest(a, V1)) == 71


def test_every_bound_part_changes_the_digest(call):
    base = call(900)
    d = call_digest(base, V1)
    variants = [
        replace(base, arguments={"amount": 901, "customer": "c-17"}),
        replace(base, arguments={"amount": 900, "customer": "c-17", "extra": None}),
        replace(base, arguments={"amount": "900", "customer": "c-17"}),
        replace(base, name="refund_all"),
        replace(base, mcp_method="prompts/get"),
        replace(base, server="bank-2"),
        replace(base, host="127.0.0.2"),
        replace(base, port=9001),
        replace(base, path="/mcp2"),
        replace(base, scheme="https"),
        replace(base, principal=Principal((Link("mallory", PrincipalKind.AGENT),))),
        replace(base, principal=Principal(tuple(
            Link(link.id, PrincipalKind.TOOL) for link in base.principal.chain))),
    ]
    digests = {call_digest(v, V1) for v in variants}
    assert d not in digests and len(digests) == len(variants)
    assert call_digest(base, "sha256:policy-v2") != d


def test_token_digest_is_bound(call):
    from proxy.identity.verify import ChainPrincipal

    chain = call(900).principal.chain
    one = ChainPrincipal(chain, _Verified("aa" * 32))       # type: ignore[arg-type]
    two = ChainPrincipal(chain, _Verified("bb" * 32))       # type: ignore[arg-type]
    d1 = call_digest(replace(call(900), principal=one), V1)
    d2 = call_digest(replace(call(900), principal=two), V1)
    assert d1 != d2
    assert d1 != call_digest(call(900), V1)


def test_session_and_rpc_id_are_not_bound(call):
    """A retry after a restart comes in a new MCP session with a new JSON-RPC id."""
    a = call(900)
    assert call_digest(a, V1) == call_digest(replace(a, session="other", rpc_id=99), V1)
    assert call_digest(a, V1, body=b'{"id":1}') == call_digest(a, V1, body=b'{"id":2}')


def http_post(body_args: dict | None = None) -> Action:
    return Action(kind=Kind.HTTP, stop=StopPoint.REQUEST_BODY, scheme="https",
                  host="api.example.com", port=443, method="POST", path="/v1/refunds",
                  principal=Principal((Link("bot", PrincipalKind.AGENT),)))


def test_plain_http_binds_body_and_query():
    a = http_post()
    d = call_digest(a, V1, body=b'{"amount":900}', query="x=1")
    assert d != call_digest(a, V1, body=b'{"amount":901}', query="x=1")
    assert d != call_digest(a, V1, body=b'{"amount":900}', query="x=2")
    assert d != call_digest(a, V1, query="x=1")
    assert d == call_digest(a, V1, body=b'{"amount":900}', query="x=1")
    assert d != call_digest(replace(a, method="PUT"), V1, body=b'{"amount":900}', query="x=1")


def test_canonical_json_is_stable_and_rejects_non_json():
    assert canonical_json({"b": [1, {"d": 2, "c": 1}], "a": "é"}) == \
        '{"a":"é","b":[1,{"c":1,"d":2}]}'
    import pytest
    with pytest.raises(ValueError):
        canonical_json({"x": object()})


def test_describe_action_redacts_arguments(call):
    d = describe_action(call(900, password="hunter2", note="key sk-live-ABCDEF0123456789xyz"))
    assert d["name"] == "refund" and d["server"] == "bank" and d["mcp_method"] == "tools/call"
    assert d["summary"] == "MCP tools/call refund on bank"
    assert d["arguments"]["amount"] == 900
    assert d["arguments"]["password"] == "***"
    assert d["arguments"]["note"] == "key ***"
    body = describe_action(http_post(), body=b'{"card":{"cvv":"123"},"amount":5}')
    assert body["body"] == {"card": {"cvv": "***"}, "amount": 5}
    assert describe_action(http_post(), body=b"\x00\x01")["body"] == "<2 bytes>"
