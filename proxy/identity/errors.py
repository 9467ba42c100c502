"""The one error type of the identity plane: a token that does not verify.

``IdentityError`` is *returned* by ``Verifier.verify`` (never raised on the hot path) and
raised by the offline tools (``mint``, ``attenuate``, the CLI) when their input is bad.
Its ``code`` is stable and becomes part of the deny reason and the evidence record.
"""

from __future__ import annotations

CODES = frozenset({
    "malformed",            # not a token: bad text, bad envelope, bad block payload
    "unsupported_version",  # a token of another format version
    "unknown_root",         # block 0 names a root key the verifier does not trust
    "bad_signature",        # a block's signature does not verify (tampered, reordered, spliced)
    "bad_proof",            # the proof does not match the last block (truncated, stolen)
    "expired",              # some block's not_after has passed
    "not_yet_valid",        # some block's not_before is still in the future
})

# Codes that depend on the clock (everything else is a property of the text alone).
TEMPORAL = frozenset({"expired", "not_yet_valid"})


class IdentityError(Exception):
    """A delegation token was refused. ``code`` is one of ``CODES``; ``block`` is the
    index of the offending block when one is to blame."""

    __slots__ = ("block", "code", "message")

    def __init__(self, code: str, message: str, block: int | None = None) -> None:
        if code not in CODES:
            raise ValueError(f"unknown identity error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message
        self.block = block

    def __str__(self) -> str:
        return f"{self.message} [{self.code}]"

    def __repr__(self) -> str:
        return f"IdentityError({self.code!r}, {self.message!r}, block={self.block!r})"

    def to_dict(self) -> dict[str, object]:
        d: dict[str, object] = {"code": self.code, "message": self.message}
        if self.block is not None:
            d["block"] = self.block
        return d
