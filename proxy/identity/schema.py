"""JSON Schema fragments for the policy schema (``proxy/data/policy.schema.json``).

``IDENTITY_SECTION`` goes under ``properties.identity``; ``PRINCIPAL_MATCH`` under
``$defs.match.properties.principal``. ``schema_fragment.json`` next to this file holds
the same data (a test keeps them equal); ``merged(schema)`` returns a copy of a policy
schema with both added.
"""

from __future__ import annotations

import copy
from typing import Any

from .token import KINDS

_KIND = {"enum": list(KINDS)}
_HEADER = {"type": "string", "pattern": "^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"}

PRINCIPAL_MATCH: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "minProperties": 1,
    "description": "Tests on the delegation chain of the acting principal (all must hold).",
    "properties": {
        "root": {"$ref": "#/$defs/strings",
                 "description": "Id (glob) of the root principal (block 0 of the token)."},
        "id": {"$ref": "#/$defs/strings",
               "description": "Some principal of the chain has this id (glob)."},
        "acting": {"$ref": "#/$defs/strings",
                   "description": "Id (glob) of the acting principal (the last block)."},
        "kind": {"oneOf": [_KIND, {"type": "array", "minItems": 1, "items": _KIND}],
                 "description": "Some principal of the chain has this kind."},
        "depth": {
            "type": "object", "additionalProperties": False, "minProperties": 1,
            "description": "Number of principals in the chain (0 without a verified token).",
            "properties": {
                "eq": {"type": "integer"}, "ne": {"type": "integer"},
                "in": {"type": "array", "items": {"type": "integer"}},
                "not_in": {"type": "array", "items": {"type": "integer"}},
                "gt": {"type": "number"}, "ge": {"type": "number"},
                "lt": {"type": "number"}, "le": {"type": "number"},
            },
        },
        "anonymous": {"type": "boolean",
                      "description": "true: no verified token; false: a verified token."},
    },
}

IDENTITY_SECTION: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "description": "Who is acting: delegation tokens signed by trusted roots, what happens "
                   "without one, and upstream credentials the proxy injects for agents.",
    "properties": {
        "trusted_roots": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name"],
                "oneOf": [{"required": ["key_file"]}, {"required": ["key"]}],
                "properties": {
                    "name": {"$ref": "#/$defs/id"},
                    "key_file": {"type": "string", "minLength": 1,
                                 "description": "Ed25519 public key (PEM), relative to the "
                                                "policy file."},
                    "key": {"type": "string", "pattern": "BEGIN PUBLIC KEY",
                            "description": "Ed25519 public key (PEM) inline."},
                },
            },
        },
        "anonymous": {"enum": ["deny", "policy"],
                      "description": "Requests without a token: deny (default) or let the "
                                     "policy rules decide."},
        "token_header": {**_HEADER, "description": "Per-request token header (default "
                                                   "X-Fiveplane-Token)."},
        "credentials": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["id", "upstream"],
                "oneOf": [{"required": ["value_from_env"]}, {"required": ["value_from_file"]}],
                "properties": {
                    "id": {"$ref": "#/$defs/id"},
                    "upstream": {
                        "type": "object",
                        "additionalProperties": False,
                        "minProperties": 1,
                        "maxProperties": 1,
                        "properties": {
                            "host": {"$ref": "#/$defs/strings"},
                            "server": {"type": "string", "minLength": 1},
                        },
                    },
                    "header": {**_HEADER, "description": "Default Authorization."},
                    "scheme": {**_HEADER, "description": "e.g. Bearer: the header value "
                                                         "becomes `Bearer <secret>`."},
                    "value_from_env": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
                    "value_from_file": {"type": "string", "minLength": 1},
                    "allow_http": {"type": "boolean",
                                   "description": "Also inject over plain http (default "
                                                  "false: https only)."},
                },
            },
        },
    },
}


def fragment() -> dict[str, Any]:
    return {"properties": {"identity": IDENTITY_SECTION},
            "$defs": {"match": {"properties": {"principal": PRINCIPAL_MATCH}}}}


def merged(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of the policy schema with the identity fragments added."""
    out = copy.deepcopy(schema)
    out["properties"]["identity"] = copy.deepcopy(IDENTITY_SECTION)
    out["$defs"]["match"]["properties"]["principal"] = copy.deepcopy(PRINCIPAL_MATCH)
    return out
