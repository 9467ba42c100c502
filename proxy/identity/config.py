"""The policy's ``identity`` section, compiled; token extraction from request headers;
credential brokering helpers (pure functions: the addon applies them to the flow).

```yaml
identity:
  trusted_roots:
    - {name: corp, key_file: keys/corp.pub}        # or key: "-----BEGIN PUBLIC KEY-----..."
  anonymous: deny                                  # deny (default) | policy
  token_header: X-Fiveplane-Token                  # default
  credentials:
    - id: crm-api
      upstream: {server: crm}                      # or {host: api.example.com}
      header: Authorization                        # default
      scheme: Bearer                               # optional: value becomes "Bearer <secret>"
      value_from_env: CRM_TOKEN                    # or value_from_file: secrets/crm.token
      allow_http: false                            # default: injected over https only
```
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..action import Action, Kind
from ..principal import ANONYMOUS, Principal
from .capabilities import Issue, host_pattern_test, normalize_hosts
from .errors import IdentityError
from .keys import key_id, key_id_text, load_public_key
from .verify import Verifier, rejected

DEFAULT_TOKEN_HEADER = "X-Fiveplane-Token"
ANONYMOUS_MODES = ("deny", "policy")
_HEADER = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z\-]+")
_ENV = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
# Headers a brokered credential may never be put in (framing, routing, proxy auth).
_RESERVED = frozenset({
    "host", "content-length", "transfer-encoding", "connection", "upgrade", "te",
    "trailer", "keep-alive", "proxy-authorization", "proxy-authenticate", "proxy-connection",
    "content-type", "content-encoding",
})
PROXY_AUTHORIZATION = "proxy-authorization"


@dataclass(frozen=True, slots=True, eq=False)
class TrustedRoot:
    name: str
    key: Ed25519PublicKey
    key_id: str          # base64url of the 8-byte key id tokens carry


@dataclass(frozen=True, slots=True, eq=False)
class Credential:
    """One brokered upstream secret. ``value`` is never printed (repr hides it)."""

    id: str
    hosts: tuple[str, ...]
    server: str | None
    header: str                 # as written in the policy, e.g. "Authorization"
    scheme: str | None          # e.g. "Bearer"
    value: str = field(repr=False)
    allow_http: bool = False
    resolved: bool = True       # False when compiled with resolve_secrets=False

    def for_upstream(self, action: Action) -> bool:
        """Whether ``action`` goes to this credential's upstream (scheme not checked)."""
        if self.server is not None:
            return action.server == self.server
        test = host_pattern_test(self.hosts)
        return test is None or test(action.host)

    @property
    def header_value(self) -> str:
        return f"{self.scheme} {self.value}" if self.scheme else self.value


@dataclass(frozen=True, slots=True, eq=False)
class IdentityConfig:
    roots: tuple[TrustedRoot, ...]
    anonymous: str                      # "deny" | "policy"
    token_header: str                   # as configured, e.g. "X-Fiveplane-Token"
    credentials: tuple[Credential, ...]
    verifier: Verifier
    file: str = "<policy>"
    line: int = 0

    @property
    def deny_anonymous(self) -> bool:
        return self.anonymous == "deny"

    @property
    def token_header_lower(self) -> str:
        return self.token_header.lower()

    @property
    def roots_fingerprint(self) -> frozenset[tuple[str, str]]:
        """(name, key id) of every trusted root: when a reloaded policy has the same,
        keep the old ``verifier`` (and its warm cache) with ``dataclasses.replace``."""
        return frozenset((r.name, r.key_id) for r in self.roots)


# --- compiling the section ---------------------------------------------------------------


def _read_key(spec: Mapping[str, Any], base_dir: Path, path: tuple[str | int, ...],
              issues: list[Issue]) -> Ed25519PublicKey | None:
    has_file, has_key = "key_file" in spec, "key" in spec
    if has_file == has_key:
        issues.append(("policy_schema_error", "give exactly one of `key_file` and `key`", path))
        return None
    if has_file:
        where = (*path, "key_file")
        file = base_dir / str(spec["key_file"])
        try:
            data = file.read_bytes()
        except OSError as e:
            issues.append(("policy_key_error", f"cannot read key file `{file}`: "
                           f"{e.strerror or e}", where))
            return None
    else:
        where = (*path, "key")
        data = str(spec["key"]).encode("utf-8")
    try:
        return load_public_key(data)
    except ValueError as e:
        issues.append(("policy_key_error", f"root `{spec.get('name')}`: {e}", where))
        return None


def _roots(items: Any, base_dir: Path, issues: list[Issue]) -> tuple[TrustedRoot, ...]:
    out: list[TrustedRoot] = []
    names: dict[str, int] = {}
    kids: dict[bytes, str] = {}
    for i, spec in enumerate(items or []):
        path: tuple[str | int, ...] = ("identity", "trusted_roots", i)
        name = str(spec["name"])
        if not _NAME.fullmatch(name):
            issues.append(("policy_schema_error", f"bad root name `{name}`", (*path, "name")))
            continue
        if name in names:
            issues.append(("policy_duplicate_id",
                           f"trusted root `{name}` is already defined (item {names[name]})",
                           (*path, "name")))
            continue
        names[name] = i
        key = _read_key(spec, base_dir, path, issues)
        if key is None:
            continue
        kid = key_id(key)
        if kid in kids:
            issues.append(("policy_conflict_error",
                           f"trusted root `{name}` is the same key as `{kids[kid]}`", path))
            continue
        kids[kid] = name
        out.append(TrustedRoot(name, key, key_id_text(key)))
    return tuple(out)


def _secret(spec: Mapping[str, Any], base_dir: Path, path: tuple[str | int, ...],
            env: Mapping[str, str], resolve: bool, issues: list[Issue]) -> str | None:
    has_env, has_file = "value_from_env" in spec, "value_from_file" in spec
    if has_env == has_file:
        issues.append(("policy_schema_error",
                       "give exactly one of `value_from_env` and `value_from_file`", path))
        return None
    if has_env:
        name = str(spec["value_from_env"])
        where = (*path, "value_from_env")
        if not _ENV.fullmatch(name):
            issues.append(("policy_schema_error", f"bad environment variable name `{name}`",
                           where))
            return None
        if not resolve:
            return ""
        value = env.get(name)
        if value is None:
            issues.append(("policy_credential_error",
                           f"credential `{spec.get('id')}`: environment variable `{name}` is "
                           "not set", where))
            return None
    else:
        where = (*path, "value_from_file")
        if not resolve:
            return ""
        file = base_dir / str(spec["value_from_file"])
        try:
            value = file.read_text("utf-8")
        except (OSError, UnicodeDecodeError) as e:
            issues.append(("policy_credential_error",
                           f"credential `{spec.get('id')}`: cannot read `{file}`: "
                           f"{getattr(e, 'strerror', None) or e}", where))
            return None
        value = value.removesuffix("\n").removesuffix("\r")
    if not value:
        issues.append(("policy_credential_error", f"credential `{spec.get('id')}` is empty",
                       where))
        return None
    if any(c in value for c in "\r\n\0"):
        issues.append(("policy_credential_error",
                       f"credential `{spec.get('id')}` contains a line break or NUL", where))
        return None
    return value


def _credentials(items: Any, base_dir: Path, token_header: str, servers: set[str] | None,
                 env: Mapping[str, str], resolve: bool,
                 issues: list[Issue]) -> tuple[Credential, ...]:
    out: list[Credential] = []
    ids: dict[str, int] = {}
    for i, spec in enumerate(items or []):
        path: tuple[str | int, ...] = ("identity", "credentials", i)
        before = len(issues)
        cid = str(spec["id"])
        if cid in ids:
            issues.append(("policy_duplicate_id",
                           f"credential id `{cid}` is already used (item {ids[cid]})",
                           (*path, "id")))
        ids.setdefault(cid, i)
        upstream = spec["upstream"]
        hosts: tuple[str, ...] = ()
        server = None
        if ("host" in upstream) == ("server" in upstream):
            issues.append(("policy_schema_error",
                           "`upstream` names exactly one of `host` and `server`",
                           (*path, "upstream")))
        elif "host" in upstream:
            raw = upstream["host"]
            hosts, bad = normalize_hosts(raw if isinstance(raw, list) else [raw],
                                         (*path, "upstream", "host"))
            issues.extend(bad)
            if "*" in hosts:
                issues.append(("policy_unsafe_error",
                               f"credential `{cid}` would be sent to every host; name the "
                               "upstream", (*path, "upstream", "host")))
        else:
            server = str(upstream["server"])
            if servers is not None and server not in servers:
                issues.append(("policy_reference_error",
                               f"unknown MCP server `{server}`; declare it under mcp_servers",
                               (*path, "upstream", "server")))
        header = str(spec.get("header", "Authorization"))
        if not _HEADER.fullmatch(header):
            issues.append(("policy_schema_error", f"bad header name `{header}`",
                           (*path, "header")))
        elif header.lower() in _RESERVED or header.lower() == token_header.lower():
            issues.append(("policy_conflict_error",
                           f"a credential cannot be sent in `{header}`", (*path, "header")))
        scheme = spec.get("scheme")
        if scheme is not None and not _HEADER.fullmatch(str(scheme)):
            issues.append(("policy_schema_error", f"bad auth scheme `{scheme}`",
                           (*path, "scheme")))
        value = _secret(spec, base_dir, path, env, resolve, issues)
        if len(issues) > before or value is None:
            continue
        out.append(Credential(cid, hosts, server, header,
                              None if scheme is None else str(scheme), value,
                              bool(spec.get("allow_http", False)), resolve))
    return tuple(out)


def compile_identity(section: Mapping[str, Any] | None, base_dir: str | Path = ".", *,
                     servers: set[str] | frozenset[str] | None = None,
                     resolve_secrets: bool = True, env: Mapping[str, str] | None = None,
                     file: str = "<policy>", offline: bool = False,
                     ) -> tuple[IdentityConfig | None, list[Issue]]:
    """Compile the ``identity`` section (``None``: no section, no config).

    Returns ``(config, [])`` or ``(None, issues)``; each issue is ``(code, message,
    path)`` with ``path`` from the document root (``("identity", "credentials", 0,
    "value_from_env")``), ready for ``PolicyIssue(code, message, file,
    loader.line_of(doc, path))``. Assumes the section passed the JSON Schema (shape
    errors there may raise ``TypeError``/``KeyError``, which the compiler tolerates
    after reporting them). ``servers``: declared MCP server names (checked when given).
    ``resolve_secrets=False`` (``fiveplane check`` without secrets) does not read
    environment variables or secret files."""
    if section is None:
        return None, []
    issues: list[Issue] = []
    base = Path(base_dir)
    anonymous = str(section.get("anonymous", "deny"))
    if anonymous not in ANONYMOUS_MODES:
        issues.append(("policy_schema_error", f"`anonymous` is one of {', '.join(ANONYMOUS_MODES)}",
                       ("identity", "anonymous")))
    token_header = str(section.get("token_header", DEFAULT_TOKEN_HEADER))
    if not _HEADER.fullmatch(token_header):
        issues.append(("policy_schema_error", f"bad header name `{token_header}`",
                       ("identity", "token_header")))
    elif token_header.lower() in _RESERVED | {"authorization", "cookie"}:
        issues.append(("policy_conflict_error",
                       f"`{token_header}` cannot carry delegation tokens",
                       ("identity", "token_header")))
    key_issues: list[Issue] = []
    roots = _roots(section.get("trusted_roots"), base, key_issues)
    if not offline:  # re-deciding recorded chains needs no root keys
        issues.extend(key_issues)
    creds = _credentials(section.get("credentials"), base, token_header, servers,
                         os.environ if env is None else env, resolve_secrets, issues)
    if issues:
        return None, issues
    verifier = Verifier({r.name: r.key for r in roots})
    return IdentityConfig(roots, anonymous, token_header, creds, verifier, file,
                          getattr(section, "line", 0)), []


# --- tokens in request headers --------------------------------------------------------------


def proxy_authorization_token(value: str) -> str | IdentityError:
    """The token in a ``Proxy-Authorization`` value: ``Basic base64(user:<token>)`` (what
    clients send for ``http://agent:<token>@proxy:port``) or ``Bearer <token>``."""
    scheme, _, rest = value.strip().partition(" ")
    rest = rest.strip()
    if scheme.lower() == "bearer" and rest:
        return rest
    if scheme.lower() == "basic" and rest:
        try:
            decoded = base64.b64decode(rest, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            return IdentityError("malformed", "Proxy-Authorization: Basic credentials are not "
                                 "valid base64")
        _, sep, password = decoded.partition(":")
        if sep and password:
            return password
    return IdentityError("malformed", "Proxy-Authorization does not carry a fiveplane token "
                         "(expected Basic with the token as password, or Bearer)")


def token_from_headers(headers: Iterable[tuple[str, str]],
                       config: IdentityConfig | None) -> str | IdentityError | None:
    """The token a request presents: the per-request token header wins over
    ``Proxy-Authorization``; ``None`` when there is none; an ``IdentityError`` when the
    headers are ambiguous or unreadable (deny, never downgrade to anonymous)."""
    token_header = (config.token_header if config else DEFAULT_TOKEN_HEADER).lower()
    found: list[str] = []
    proxy_auth: list[str] = []
    for name, value in headers:
        lower = name.lower()
        if lower == token_header:
            found.append(value.strip())
        elif lower == PROXY_AUTHORIZATION:
            proxy_auth.append(value)
    if len(found) > 1 or len(proxy_auth) > 1:
        return IdentityError("malformed", "more than one token header in the request")
    if found:
        return found[0]
    if proxy_auth:
        return proxy_authorization_token(proxy_auth[0])
    return None


def principal_for(token: str | IdentityError | None, config: IdentityConfig,
                  now: float) -> Principal:
    """The principal to put on the action: the verified chain's principal, a
    ``RejectedPrincipal`` (the identity plane denies it with the reason) or
    ``ANONYMOUS``."""
    if token is None:
        return ANONYMOUS
    if isinstance(token, IdentityError):
        return rejected(token)
    result = config.verifier.verify(token, now)
    if isinstance(result, IdentityError):
        return rejected(result)
    return result.principal


# --- credential brokering ---------------------------------------------------------------------


def credential_for(action: Action, config: IdentityConfig | None) -> tuple[str, str] | None:
    """``(header, value)`` to inject on the forwarded request, or ``None``. Call it only
    when the decision lets the request proceed. Over plain http only with
    ``allow_http: true``."""
    if config is None or action.kind not in (Kind.HTTP, Kind.MCP):
        return None
    for cred in config.credentials:
        if cred.for_upstream(action):
            if not cred.resolved or (action.scheme != "https" and not cred.allow_http):
                return None
            return cred.header, cred.header_value
    return None


def headers_to_strip(action: Action | None, config: IdentityConfig | None) -> frozenset[str]:
    """Lower-cased names of headers that must not reach the upstream: proxy credentials,
    the token header, and the header of any credential brokered for this upstream."""
    names = {PROXY_AUTHORIZATION, (config.token_header if config else
                                   DEFAULT_TOKEN_HEADER).lower()}
    if config is not None and action is not None:
        for cred in config.credentials:
            if cred.for_upstream(action):
                names.add(cred.header.lower())
    return frozenset(names)


def strip_headers(headers: Iterable[tuple[str, str]], config: IdentityConfig | None,
                  action: Action | None = None) -> list[tuple[str, str]]:
    """``headers`` (name, value pairs, any case, repeats kept) without the stripped ones."""
    drop = headers_to_strip(action, config)
    return [(name, value) for name, value in headers if name.lower() not in drop]
