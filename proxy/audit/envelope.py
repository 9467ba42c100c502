"""The line format of an audit log: header, records (and notes), checkpoints.

Every line is one JSON object in canonical form (keys sorted, no whitespace, ASCII-only
with ``\\uXXXX`` escapes, no NaN), terminated by ``\\n``. Three line types:

``header`` (line 1)::

    {"chain","created","instance","key","key_id","type":"header","v":1}

``record`` / ``note`` — the writer-owned envelope around the caller-owned ``body``::

    {"body":{...},"chain","instance","prev","seq","type":"record","v":1,"hash"}

``checkpoint`` — a signed tree head::

    {"chain","final"?,"instance","key_id","prev_checkpoint","root","size","time",
     "type":"checkpoint","v":1,"sig"}

Why this shape: the writer never re-serializes the body (the caller serializes it once),
and because every member after ``body`` is written by the writer in a fixed format, a
verifier can take ``prev``, ``seq`` and ``hash`` from the end of the line by position
instead of parsing JSON, which is what makes ≥ 100,000 records/s verification possible.

Hashing: the *unhashed line* is the canonical JSON of the object without its last member
(``hash`` or ``sig``); a line is that text with the member spliced in before the final
``}``, so the hashed bytes are recovered by cutting, never by re-serializing.
``hash`` = hex(SHA-256(0x00 || unhashed record line)) — the RFC 9162 leaf hash, so one
hash serves both the chain (``prev`` of the next record) and the Merkle tree.
``prev`` of record 0 and ``prev_checkpoint`` of the first checkpoint are the header hash
(hex(SHA-256(header line))); later ``prev_checkpoint`` values are hex(SHA-256(previous
checkpoint line)), signature included. ``sig`` = base64(Ed25519(SIGN_PREFIX || unsigned
checkpoint line)).
"""

from __future__ import annotations

import base64
import hashlib
import json
import json.encoder
from collections.abc import Callable
from typing import Any

VERSION = 1
SIGN_PREFIX = b"fiveplane-audit-v1 checkpoint\n"
HASH_MEMBER = b',"hash":"'
SIG_MEMBER = b',"sig":"'
HASH_SUFFIX_LEN = len(HASH_MEMBER) + 64 + 2     # ,"hash":"<64 hex>"}
SEQ_MEMBER = b',"seq":'
PREV_MEMBER = b',"prev":"'
RECORD_TAIL = b',"type":"record","v":1}'
NOTE_TAIL = b',"type":"note","v":1}'
TAILS = {"record": RECORD_TAIL, "note": NOTE_TAIL}



def compact_encoder(*, sort_keys: bool, ensure_ascii: bool, allow_nan: bool,
                    default: Callable[[Any], Any] | None = None) -> Callable[[Any], str]:
    """A reusable compact JSON encoder. ``JSONEncoder.encode`` builds a new C encoder on
    every call; on the evidence hot path that setup costs as much as encoding a small
    value, so the C encoder is built once (no circular-reference check: records are trees;
    a cycle raises ``RecursionError``). Falls back to ``JSONEncoder`` without the C module."""
    base = json.JSONEncoder(sort_keys=sort_keys, separators=(",", ":"), ensure_ascii=ensure_ascii,
                            allow_nan=allow_nan, default=default, check_circular=False)
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover - CPython always has it
        return base.encode
    strings = json.encoder.encode_basestring_ascii if ensure_ascii else \
        json.encoder.encode_basestring
    try:
        encoder = make(None, base.default, strings, None, ":", ",", sort_keys, False, allow_nan)
    except TypeError:  # pragma: no cover - a different C signature
        return base.encode
    join = "".join

    def encode(obj: Any) -> str:
        return join(encoder(obj, 0))

    return encode


_canonical = compact_encoder(sort_keys=True, ensure_ascii=True, allow_nan=False)


def canonical(obj: Any) -> bytes:
    """Canonical JSON bytes (raises ``ValueError``/``TypeError``/``RecursionError`` for what
    JSON cannot hold)."""
    return _canonical(obj).encode("ascii")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def chain_middle(chain: str, instance: str) -> bytes:
    """The fixed bytes between ``body`` and ``prev``'s value for one chain."""
    return b',"chain":' + canonical(chain) + b',"instance":' + canonical(instance) + b',"prev":"'


def unhashed_record(body: bytes, middle: bytes, prev: str, seq: int, kind: str = "record") -> bytes:
    return b"".join((b'{"body":', body, middle, prev.encode("ascii"), b'","seq":',
                     str(seq).encode("ascii"), TAILS[kind]))


def seal_line(unhashed: bytes, member: bytes, value: str) -> bytes:
    """Splice the last member (``hash`` or ``sig``) into an unhashed line; adds ``\\n``."""
    return unhashed[:-1] + member + value.encode("ascii") + b'"}\n'


def split_last(line: bytes, member: bytes) -> tuple[bytes, str] | None:
    """Inverse of ``seal_line`` (``line`` without ``\\n``): (unhashed line, value)."""
    i = line.rfind(member)
    if i < 0 or not line.endswith(b'"}'):
        return None
    value = line[i + len(member):-2]
    if b'"' in value or b"\\" in value:
        return None
    return line[:i] + b"}", value.decode("ascii", "replace")


def header_line(chain: str, instance: str, public_raw: bytes, key_id: str,
                created: float) -> bytes:
    return canonical({
        "chain": chain, "created": created, "instance": instance,
        "key": base64.b64encode(public_raw).decode("ascii"), "key_id": key_id,
        "type": "header", "v": VERSION,
    }) + b"\n"


def checkpoint_unsigned(*, chain: str, instance: str, key_id: str, prev_checkpoint: str,
                        root: bytes, size: int, time: float, final: bool) -> bytes:
    doc: dict[str, Any] = {
        "chain": chain, "instance": instance, "key_id": key_id,
        "prev_checkpoint": prev_checkpoint, "root": root.hex(), "size": size,
        "time": time, "type": "checkpoint", "v": VERSION,
    }
    if final:
        doc["final"] = True
    return canonical(doc)


def signature_message(unsigned: bytes) -> bytes:
    return SIGN_PREFIX + unsigned


def record_position(line: bytes) -> tuple[int, bytes, bytes, int] | None:
    """(seq, prev, hash, start of ``,"prev":"``) of a record or note line, read by position."""
    n = len(line)
    end = n - HASH_SUFFIX_LEN
    if end < 20 or line[end:end + 9] != HASH_MEMBER or line[-2:] != b'"}':
        return None
    if line.endswith(RECORD_TAIL[:-1], 0, end):
        tail = end - len(RECORD_TAIL[:-1])
    elif line.endswith(NOTE_TAIL[:-1], 0, end):
        tail = end - len(NOTE_TAIL[:-1])
    else:
        return None
    i = line.rfind(SEQ_MEMBER, 0, tail)
    seq = line[i + 7:tail]
    if i < 74 or not seq.isdigit() or line[i - 1:i] != b'"' or line[i - 74:i - 65] != PREV_MEMBER:
        return None
    return int(seq), line[i - 65:i - 1], line[end + 9:n - 2], i - 74
