"""Plain HTTP(S) upstream for end-to-end tests, plus a throwaway TLS CA.

Importable::

    ca = TestCA(tmp_dir)                              # ca.ca_pem = CA certificate file
    with Upstream() as up:                            # http://127.0.0.1:PORT
        up.set_response("/v1/charge", status=402, body={"error": "nope"})
        up.set_sse("/events", n=5, delay=0.05)
        up.set_chunked("/big", [b"part1", b"part2"], delay=0.01)
        ...
        assert up.hits[0].path == "/v1/charge"
    # https://127.0.0.1:PORT, cert for 127.0.0.1 + localhost signed by ca
    with Upstream(tls=True, ca=ca) as ups:
        ...

Standalone (docker-compose)::

    python tests/e2e/servers/http_upstream.py --port P [--tls-dir DIR] [--host H]

prints ``upstream listening on http(s)://HOST:PORT`` once ready, serves the default JSON handler
for every path plus ``/sse`` (5 SSE events, 0.1 s apart) and ``/chunked`` (chunked body). With
``--tls-dir`` a CA + leaf are generated in DIR (or reused when present) and the CA certificate is
``DIR/ca.pem``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import ipaddress
import json
import signal
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CannedResponse", "Hit", "TestCA", "Upstream", "main"]


# --------------------------------------------------------------------------------------------
# Throwaway CA
# --------------------------------------------------------------------------------------------


class TestCA:
    """A throwaway CA plus a leaf certificate for ``localhost`` / ``127.0.0.1``.

    Files written to ``directory``: ``ca.pem`` (CA certificate - what clients/proxies trust),
    ``ca-key.pem``, ``leaf-cert.pem`` (leaf + CA chain), ``leaf-key.pem``. Existing files are
    reused, so a directory can be shared across runs.
    """

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        directory: str | Path,
        *,
        dns_names: Iterable[str] = ("localhost",),
        ip_addresses: Iterable[str] = ("127.0.0.1",),
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.ca_pem = self.directory / "ca.pem"
        self.ca_key_pem = self.directory / "ca-key.pem"
        self.cert_pem = self.directory / "leaf-cert.pem"
        self.key_pem = self.directory / "leaf-key.pem"
        if not (self.ca_pem.exists() and self.ca_key_pem.exists()):
            self._create_ca()
        self._ca_cert = x509.load_pem_x509_certificate(self.ca_pem.read_bytes())
        self._ca_key = serialization.load_pem_private_key(self.ca_key_pem.read_bytes(), None)
        if not (self.cert_pem.exists() and self.key_pem.exists()):
            self.issue(
                "leaf",
                dns_names=dns_names,
                ip_addresses=ip_addresses,
                cert_path=self.cert_pem,
                key_path=self.key_pem,
            )

    # -- generation ----------------------------------------------------------------------

    def _create_ca(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fiveplane e2e"),
                x509.NameAttribute(NameOID.COMMON_NAME, "fiveplane e2e test upstream CA"),
            ]
        )
        now = _dt.datetime.now(_dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _dt.timedelta(days=1))
            .not_valid_after(now + _dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        self.ca_key_pem.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        self.ca_key_pem.chmod(0o600)
        self.ca_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def issue(
        self,
        basename: str,
        *,
        dns_names: Iterable[str] = ("localhost",),
        ip_addresses: Iterable[str] = ("127.0.0.1",),
        cert_path: Path | None = None,
        key_path: Path | None = None,
    ) -> tuple[Path, Path]:
        """Issue a leaf cert signed by this CA; returns ``(cert_path, key_path)``.

        The certificate file contains the leaf followed by the CA certificate.
        """
        dns_names = list(dns_names)
        ip_addresses = list(ip_addresses)
        cert_path = cert_path or self.directory / f"{basename}-cert.pem"
        key_path = key_path or self.directory / f"{basename}-key.pem"
        key = ec.generate_private_key(ec.SECP256R1())
        cn = dns_names[0] if dns_names else (ip_addresses[0] if ip_addresses else basename)
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
        sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ip_addresses]
        now = _dt.datetime.now(_dt.UTC)
        ca_key = self._ca_key
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self._ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _dt.timedelta(days=1))
            .not_valid_after(now + _dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),  # type: ignore[union-attr]
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
        )
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        key_path.chmod(0o600)
        cert_path.write_bytes(
            cert.public_bytes(serialization.Encoding.PEM)
            + self._ca_cert.public_bytes(serialization.Encoding.PEM)
        )
        return cert_path, key_path

    # -- contexts ------------------------------------------------------------------------

    def server_context(self, alpn: Iterable[str] = ("http/1.1",)) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert_pem, self.key_pem)
        ctx.set_alpn_protocols(list(alpn))
        return ctx

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_pem))

    def __repr__(self) -> str:
        return f"TestCA({str(self.directory)!r})"


# --------------------------------------------------------------------------------------------
# Upstream
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hit:
    """One request received by the upstream."""

    method: str
    path: str  # full request target as received (path + query, or absolute-form)
    headers: dict[str, str]  # lower-cased names; repeated headers joined with ", "
    body: bytes
    raw_headers: list[tuple[str, str]] = field(default_factory=list)  # original names/order
    client: tuple[str, int] | None = None
    ts: float = 0.0

    @property
    def route(self) -> str:
        """Path without query string."""
        return urlsplit(self.path).path or "/"

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class CannedResponse:
    """A canned answer for a path.

    * plain: ``status``/``headers``/``body`` (Content-Length is added).
    * ``chunks``: sent with ``Transfer-Encoding: chunked``, ``chunk_delay`` seconds between them.
    * ``sse_events``: ``text/event-stream`` (chunked), one event per item, ``chunk_delay`` apart;
      each item is either a full pre-formatted event (``bytes``/``str`` ending in a blank line)
      or a dict/list that becomes ``data: <json>\\n\\n``.
    """

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    chunks: list[bytes] | None = None
    sse_events: list[Any] | None = None
    chunk_delay: float = 0.0
    reason: str | None = None


Handler = Callable[[Hit], CannedResponse]


def _to_body(body: bytes | str | dict | list | None, headers: dict[str, str]) -> bytes:
    if body is None:
        return b""
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        headers.setdefault("Content-Type", "text/plain; charset=utf-8")
        return body.encode()
    headers.setdefault("Content-Type", "application/json")
    return json.dumps(body).encode()


def _sse_event(item: Any) -> bytes:
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        return item.encode()
    return b"data: " + json.dumps(item).encode() + b"\n\n"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = True  # server_close() joins handler threads (after we cut their sockets)
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], upstream: Upstream) -> None:
        self.upstream = upstream
        super().__init__(addr, _RequestHandler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        up = self.upstream
        conn = request
        try:
            if up.ssl_context is not None:
                request.settimeout(10)
                conn = up.ssl_context.wrap_socket(request, server_side=True)
                conn.settimeout(None)
        except (OSError, ssl.SSLError):
            return
        up._track(conn, True)
        try:
            if up._stopping.is_set():
                return
            self.RequestHandlerClass(conn, client_address, self)
        except OSError:
            pass
        finally:
            up._track(conn, False)
            if conn is not request:
                with contextlib.suppress(OSError):
                    conn.close()

    def handle_error(self, request: Any, client_address: Any) -> None:  # quiet on teardown
        if not self.upstream._stopping.is_set():
            super().handle_error(request, client_address)


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    timeout = 60  # idle keep-alive connections die eventually
    server_version = "fiveplane-e2e-upstream/1"
    sys_version = ""
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.upstream.verbose:
            super().log_message(format, *args)

    def _read_body(self) -> bytes:
        te = self.headers.get("Transfer-Encoding", "")
        if "chunked" in te.lower():
            out = bytearray()
            while True:
                size_line = self.rfile.readline(65537)
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    # trailers until blank line
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline(65537)  # CRLF after chunk
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        up = self.server.upstream
        body = self._read_body()
        raw = [(k, v) for k, v in self.headers.items()]
        merged: dict[str, str] = {}
        for k, v in raw:
            lk = k.lower()
            merged[lk] = f"{merged[lk]}, {v}" if lk in merged else v
        hit = Hit(
            method=self.command,
            path=self.path,
            headers=merged,
            body=body,
            raw_headers=raw,
            client=self.client_address[:2] if self.client_address else None,
            ts=time.time(),
        )
        up._record(hit)
        resp = up._resolve(hit)
        self._send(resp, head=self.command == "HEAD")

    def _send(self, resp: CannedResponse, head: bool = False) -> None:
        up = self.server.upstream
        headers = dict(resp.headers)
        lower = {k.lower() for k in headers}
        streaming = resp.chunks is not None or resp.sse_events is not None
        if resp.sse_events is not None:
            if "content-type" not in lower:
                headers["Content-Type"] = "text/event-stream"
            if "cache-control" not in lower:
                headers["Cache-Control"] = "no-cache"
        self.send_response(resp.status, resp.reason)
        for k, v in headers.items():
            self.send_header(k, v)
        if streaming:
            self.send_header("Transfer-Encoding", "chunked")
        elif "content-length" not in lower:
            self.send_header("Content-Length", str(len(resp.body)))
        self.end_headers()
        if head:
            self.wfile.flush()
            return
        if not streaming:
            self.wfile.write(resp.body)
            self.wfile.flush()
            return
        parts = (
            [_sse_event(e) for e in resp.sse_events]
            if resp.sse_events is not None
            else list(resp.chunks or [])
        )
        for i, part in enumerate(parts):
            if i and resp.chunk_delay and up._stopping.wait(resp.chunk_delay):
                self.close_connection = True
                return
            if part:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle


class Upstream:
    """Threaded HTTP/1.1 (keep-alive) upstream on 127.0.0.1 recording every request.

    * ``.url`` = ``http(s)://127.0.0.1:PORT``; ``.port``; ``.hits`` = snapshot list of
      :class:`Hit`.
    * default answer for any method/path: ``200 {"ok": true, "path": <path>, "method": <m>}``.
    * ``set_response(path, ...)``, ``set_sse(path, ...)``, ``set_chunked(path, ...)``,
      ``set_handler(path, fn)``: per-path canned answers (path without query; a path with a
      query string matches that exact target first).
    """

    def __init__(
        self,
        *,
        tls: bool = False,
        ca: TestCA | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        verbose: bool = False,
    ) -> None:
        if tls and ca is None:
            raise ValueError("Upstream(tls=True) needs ca=TestCA(...)")
        self.tls = tls
        self.ca = ca
        self.host = host
        self._requested_port = port
        self.verbose = verbose
        self.ssl_context: ssl.SSLContext | None = ca.server_context() if tls and ca else None
        self._lock = threading.Lock()
        self._hits: list[Hit] = []
        self._routes: dict[str, Handler] = {}
        self._conns: set[Any] = set()
        self._stopping = threading.Event()
        self._hit_event = threading.Condition(self._lock)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> Upstream:
        if self._server is not None:
            return self
        self._stopping.clear()
        self._server = _Server((self.host, self._requested_port), self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"upstream-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            # base-class shutdown: cuts the TCP connection without touching the SSL object
            # another thread may be blocked in
            with contextlib.suppress(OSError):
                socket.socket.shutdown(c, socket.SHUT_RDWR)
        server.server_close()  # joins handler threads
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Upstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- addressing ----------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("upstream not started")
        return self._server.server_address[1]

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def url_for(self, path: str) -> str:
        return self.url + (path if path.startswith("/") else "/" + path)

    # -- recording -----------------------------------------------------------------------

    def _track(self, conn: Any, add: bool) -> None:
        with self._lock:
            (self._conns.add if add else self._conns.discard)(conn)

    def _record(self, hit: Hit) -> None:
        with self._hit_event:
            self._hits.append(hit)
            self._hit_event.notify_all()

    @property
    def hits(self) -> list[Hit]:
        with self._lock:
            return list(self._hits)

    def hits_for(self, path: str) -> list[Hit]:
        return [h for h in self.hits if h.route == path or h.path == path]

    def clear_hits(self) -> None:
        with self._lock:
            self._hits.clear()

    def wait_for_hits(self, n: int, timeout: float = 5.0) -> list[Hit]:
        deadline = time.monotonic() + timeout
        with self._hit_event:
            while len(self._hits) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"expected {n} hits, got {len(self._hits)}")
                self._hit_event.wait(left)
            return list(self._hits)

    # -- routes --------------------------------------------------------------------------

    def set_handler(self, path: str, handler: Handler) -> None:
        with self._lock:
            self._routes[path] = handler

    def set_response(
        self,
        path: str,
        status: int = 200,
        headers: dict[str, str] | None = None,
        body: bytes | str | dict | list | None = b"",
    ) -> None:
        hdrs = dict(headers or {})
        data = _to_body(body, hdrs)
        self.set_handler(path, lambda _hit: CannedResponse(status, dict(hdrs), data))

    def set_chunked(
        self,
        path: str,
        chunks: Iterable[bytes | str],
        delay: float = 0.0,
        status: int = 200,
        headers: dict[str, str] | None = None,
    ) -> None:
        parts = [c.encode() if isinstance(c, str) else c for c in chunks]
        hdrs = {"Content-Type": "application/octet-stream", **(headers or {})}
        self.set_handler(
            path,
            lambda _hit: CannedResponse(status, dict(hdrs), chunks=list(parts), chunk_delay=delay),
        )

    def set_sse(
        self,
        path: str,
        n: int = 3,
        delay: float = 0.05,
        events: Iterable[Any] | None = None,
        status: int = 200,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Stream SSE events: ``events`` if given, else ``n`` events ``data: {"seq": i, ...}``."""
        evs = (
            list(events)
            if events is not None
            else [{"seq": i, "text": f"event {i}"} for i in range(n)]
        )
        hdrs = dict(headers or {})
        self.set_handler(
            path,
            lambda _hit: CannedResponse(
                status, dict(hdrs), sse_events=list(evs), chunk_delay=delay
            ),
        )

    def _resolve(self, hit: Hit) -> CannedResponse:
        with self._lock:
            handler = self._routes.get(hit.path) or self._routes.get(hit.route)
        if handler is not None:
            return handler(hit)
        return CannedResponse(
            200,
            {"Content-Type": "application/json"},
            json.dumps({"ok": True, "path": hit.path, "method": hit.method}).encode(),
        )


# --------------------------------------------------------------------------------------------
# standalone
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="fiveplane e2e HTTP(S) upstream")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--tls-dir", default=None, help="serve HTTPS with a CA/leaf in this dir")
    p.add_argument("--san", action="append", default=[], help="extra DNS SAN for the leaf")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)

    ca = None
    if args.tls_dir:
        ca = TestCA(args.tls_dir, dns_names=["localhost", *args.san])
    up = Upstream(tls=ca is not None, ca=ca, host=args.host, port=args.port, verbose=args.verbose)
    up.set_sse("/sse", n=5, delay=0.1)
    up.set_chunked("/chunked", [b"chunk-0\n", b"chunk-1\n", b"chunk-2\n"], delay=0.05)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    with up:
        print(f"upstream listening on {up.url}", flush=True)
        if ca is not None:
            print(f"upstream CA: {ca.ca_pem}", flush=True)
        done.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
