"""What a capture holds, as plain data: one ``CapturedFlow`` per exchange, whatever
file it came from (a mitmproxy flow file or a HAR 1.2 file).

``read_capture(path)`` streams: it yields one flow (or one ``CaptureNote`` for an
entry that could not be read) at a time, and never holds the whole file. A file it
cannot read at all raises ``CaptureError``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "CaptureError",
    "CaptureNote",
    "CapturedFlow",
    "Message",
    "capture_format",
    "read_capture",
]

FlowKind = Literal["http", "connect", "tcp", "udp"]


class CaptureError(Exception):
    """The capture cannot be read at all (missing file, unknown format)."""


@dataclass(frozen=True, slots=True)
class CaptureNote:
    """An entry that could not be replayed (``error``) or was skipped on purpose."""

    index: int          # 1-based position of the entry in the capture (0: the file itself)
    where: str          # "flow 12 at byte 4567", "entry 3 (line 40)"
    message: str
    error: bool = True

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass(frozen=True, slots=True)
class Message:
    """A response as bytes on the wire (``body`` still carries its content encoding,
    unless the source only had the decoded text: then the encoding header is gone)."""

    status: int
    headers: tuple[tuple[str, str], ...]     # lowercased names, in order, repeats kept
    body: bytes
    truncated: bool = False                  # the recording kept only a prefix

    def header(self, name: str, default: str = "") -> str:
        for key, value in self.headers:
            if key == name:
                return value
        return default


@dataclass(slots=True)
class CapturedFlow:
    index: int                      # 1-based position in the capture
    kind: FlowKind
    time: float                     # request start, epoch seconds (0.0: unknown)
    end: float                      # response end, epoch seconds (>= time)
    method: str = ""
    scheme: str = "http"
    host: str = ""
    port: int = 0
    path: str = "/"
    headers: tuple[tuple[str, str], ...] = ()   # lowercased names, in order
    body: bytes = b""
    addresses: tuple[str, ...] = ()             # what the host resolved to when recorded
    principal: Any = None                       # the recorded principal chain, if any
    conn: str = ""                              # client connection (tunnels share a token)
    response: Message | None = None             # what the client received
    upstream: Message | None = None             # what the upstream sent, when it differs
    answered_by_proxy: bool | None = None       # None: not recorded, guess from the response
    recorded: dict[str, Any] | None = None      # the live decision metadata, if any
    notes: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        if self.kind == "connect":
            return f"{self.host}:{self.port}"
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        hostport = host if self.port == default else f"{host}:{self.port}"
        return f"{self.scheme}://{hostport}{self.path}"

    def header(self, name: str, default: str = "") -> str:
        for key, value in self.headers:
            if key == name:
                return value
        return default

    def upstream_response(self) -> Message | None:
        """The response the upstream sent for this request, if the capture has it."""
        if self.upstream is not None:
            return self.upstream
        if self.response is None:
            return None
        proxy_made = self.answered_by_proxy
        if proxy_made is None:
            # Not recorded by fiveplane's recorder: the gate marks every reply it makes.
            proxy_made = bool(self.response.header("x-fiveplane-decision"))
        return None if proxy_made else self.response


def capture_format(path: str | Path) -> Literal["flows", "har", "empty"]:
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as e:
        raise CaptureError(f"cannot read capture {path}: {e.strerror or e}") from e
    text = head.removeprefix(b"\xef\xbb\xbf").lstrip()
    if not text:
        return "empty"
    if text[:1] == b"{":
        return "har"
    if text[:1].isdigit():
        return "flows"
    raise CaptureError(
        f"{path}: not a mitmproxy flow file or a HAR file (starts with {head[:16]!r})")


def read_capture(path: str | Path) -> Iterator[CapturedFlow | CaptureNote]:
    """Stream the flows of a capture (format detected from the first bytes)."""
    fmt = capture_format(path)
    if fmt == "empty":
        return iter(())
    if fmt == "har":
        from .har import read_har

        return read_har(path)
    from .flowfile import read_flow_file

    return read_flow_file(path)
