"""The identity plane: delegation tokens (format v1), their verification, attenuation by
intersection, chain predicates for policy rules, and upstream credential brokering.

See ``FORMAT.md`` for the token format and ``README.md`` for the policy section and the
integration points.
"""

from ..policy.match import CompiledMatch, compile_match
from .capabilities import CapabilitySet, compile_capabilities
from .config import (
    DEFAULT_TOKEN_HEADER,
    Credential,
    IdentityConfig,
    TrustedRoot,
    compile_identity,
    credential_for,
    headers_to_strip,
    principal_for,
    proxy_authorization_token,
    strip_headers,
    token_from_headers,
)
from .errors import IdentityError
from .keys import key_id_text, keygen, load_private_key, load_public_key
from .mint import attenuate, inspect, mint, seal_token
from .plane import RULE_IDS, IdentityPlane, compile_principal_match
from .token import Token
from .verify import ChainPrincipal, RejectedPrincipal, VerifiedChain, Verifier

__all__ = [
    "DEFAULT_TOKEN_HEADER",
    "RULE_IDS",
    "CapabilitySet",
    "ChainPrincipal",
    "CompiledMatch",
    "Credential",
    "IdentityConfig",
    "IdentityError",
    "IdentityPlane",
    "RejectedPrincipal",
    "Token",
    "TrustedRoot",
    "VerifiedChain",
    "Verifier",
    "attenuate",
    "compile_capabilities",
    "compile_identity",
    "compile_match",
    "compile_principal_match",
    "credential_for",
    "headers_to_strip",
    "inspect",
    "key_id_text",
    "keygen",
    "load_private_key",
    "load_public_key",
    "mint",
    "principal_for",
    "proxy_authorization_token",
    "seal_token",
    "strip_headers",
    "token_from_headers",
]
