"""The control API and console: one Starlette app over an ``ApprovalStore`` and (optionally)
a ``StateStore`` for sessions and the kill switch.

Authentication: every ``/api`` route needs ``Authorization: Bearer <token>`` or the
console's login cookie; none → 401, a wrong token or stale login → 403. The console
(``/``) shows the login form until the token is given; the cookie then holds an opaque
login id (HttpOnly, SameSite=Strict), never the token itself: browsers send cookies to
every port of a host, so a token in a cookie would reach any other local web server.

CSRF: a state-changing request authenticated by the cookie must carry the login's CSRF
token (``X-CSRF-Token`` header or ``csrf`` form field) AND come from this origin (``Origin``,
else ``Referer``; a ``Sec-Fetch-Site`` other than same-origin is refused). Bearer requests
need neither (a browser cannot add the header cross-origin without CORS, and there is no
CORS). Requests whose ``Host`` is not an allowed name (loopback by default) are refused,
which stops DNS rebinding.

Routes::

    GET  /                              console (or the login form)
    POST /login, /logout                form posts (token / csrf)
    GET  /fragment                      the console's live part (for its refresh)
    GET  /console.css, /console.js      static, no secrets
    GET  /api/whoami                    {"approver": name}
    GET  /api/approvals?status=         {"approvals": [...], "now": t}
    GET  /api/approvals/{id}            {"approval": {...}}
    POST /api/approvals/{id}/approve    body {"note": "..."} → {"approval": {...}}
    POST /api/approvals/{id}/deny       body {"note": "..."} → {"approval": {...}}
    GET  /api/sessions?active_within=   {"sessions": [...], "now": t}
    POST /api/sessions/{id}/kill        body {"reason": "..."} → {"session", "killed",
                                        "cancelled": [ids]}
    GET  /activity, /activity.js        the live activity page (or the login form)
    GET  /api/activity?since=&verdict=&rule=&principal=&session=
                                        {"entries": [...], "last", "counters",
                                        "sessions", "now"} (entries newest first)
    GET  /api/evidence/{decision_id}    {"seq", "chain", "hash", "body"} (no sealed values)
    GET  /metrics                       Prometheus text format; no login: open on the
                                        (loopback) listener, or ``Authorization: Bearer
                                        <metrics token>`` when one is configured

Errors: ``{"error": {"code": ..., "message": ...}}`` with 400 bad_request, 401
unauthenticated, 403 forbidden / csrf / self_approval, 404 not_found, 409 conflict,
413 too_large, 503 unavailable. Form posts from the console get a 303 back to ``/``.
"""

from __future__ import annotations

import hmac
import json
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, urlsplit

from starlette.applications import Starlette
from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..approvals import (
    ApprovalConflict,
    ApprovalNotFound,
    ApprovalStore,
    SelfApproval,
    Status,
)
from ..errors import GovernanceError
from ..state import StateError, StateStore
from . import activity_page, console
from .auth import ControlAuth

if TYPE_CHECKING:
    from ..observe import Telemetry

COOKIE = "fiveplane_console"
MAX_BODY = 64 * 1024
LOGIN_TTL = 12 * 3600.0
MAX_LOGINS = 1024
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
ACTIVE_WITHIN = 3600.0           # the activity page lists sessions seen this recently
MAX_SESSIONS = 200
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "connect-src 'self'; img-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
}


class Fail(Exception):
    def __init__(self, status: int, code: str, message: str, subject: str = "") -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.subject = status, code, message, subject


@dataclass
class Login:
    name: str
    csrf: str
    expires: float


@dataclass(frozen=True)
class Caller:
    name: str
    login: Login | None = None        # None: authenticated by the bearer header


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, separators=(",", ":"),
                          default=str).encode()


def create_app(approvals: ApprovalStore, auth: ControlAuth, sessions: StateStore | None = None,
               *, allowed_hosts: Iterable[str] | None = None,
               clock: Callable[[], float] = time.time, login_ttl: float = LOGIN_TTL,
               telemetry: Telemetry | None = None, metrics_token: str | None = None,
               evidence: Callable[[str], dict[str, Any] | None] | None = None) -> Starlette:
    """The control app. ``allowed_hosts``: host names the ``Host`` header may carry
    (default: loopback names; ``"*"``: any). ``telemetry``: the activity feed and metrics
    (``/activity``, ``/metrics``); ``metrics_token``: the bearer ``/metrics`` requires
    (None: none); ``evidence``: finds a decision's record by id."""
    return Control(approvals, auth, sessions, allowed_hosts=allowed_hosts, clock=clock,
                   login_ttl=login_ttl, telemetry=telemetry, metrics_token=metrics_token,
                   evidence=evidence).app


class Control:
    def __init__(self, approvals: ApprovalStore, auth: ControlAuth,
                 sessions: StateStore | None, *, allowed_hosts: Iterable[str] | None,
                 clock: Callable[[], float], login_ttl: float,
                 telemetry: Telemetry | None = None, metrics_token: str | None = None,
                 evidence: Callable[[str], dict[str, Any] | None] | None = None) -> None:
        self.approvals = approvals
        self.telemetry = telemetry
        self.metrics_token = metrics_token
        self.evidence = evidence
        self.auth = auth
        self.sessions = sessions
        self.clock = clock
        self.login_ttl = login_ttl
        self._logins: dict[str, Login] = {}
        hosts = LOOPBACK_HOSTS if allowed_hosts is None else frozenset(allowed_hosts)
        self.allowed_hosts = frozenset(h.lower().strip("[]") for h in hosts)
        api = self._api
        routes = [
            Route("/", self.index, methods=["GET"]),
            Route("/login", self.login, methods=["POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Route("/fragment", self.fragment, methods=["GET"]),
            Route("/console.css", self.css, methods=["GET"]),
            Route("/console.js", self.js, methods=["GET"]),
            Route("/api/whoami", api(self.whoami), methods=["GET"]),
            Route("/api/approvals", api(self.list_approvals), methods=["GET"]),
            Route("/api/approvals/{id}", api(self.get_approval), methods=["GET"]),
            Route("/api/approvals/{id}/approve", api(self.approve), methods=["POST"]),
            Route("/api/approvals/{id}/deny", api(self.deny), methods=["POST"]),
            Route("/api/sessions", api(self.list_sessions), methods=["GET"]),
            Route("/api/sessions/{id}/kill", api(self.kill), methods=["POST"]),
            Route("/activity", self.activity, methods=["GET"]),
            Route("/activity.js", self.activity_js, methods=["GET"]),
            Route("/api/activity", api(self.list_activity), methods=["GET"]),
            Route("/api/evidence/{id}", api(self.get_evidence), methods=["GET"]),
            Route("/metrics", self.metrics, methods=["GET"]),
        ]
        self.app = Starlette(routes=routes, middleware=[
            Middleware(Guard, allowed_hosts=self.allowed_hosts)])

    # --- authentication -------------------------------------------------------------------

    def _login_of(self, request: Request) -> Login | None:
        sid = request.cookies.get(COOKIE)
        if not sid:
            return None
        login = self._logins.get(sid)
        if login is None or login.expires <= self.clock():
            self._logins.pop(sid, None)
            return None
        return login

    def _caller(self, request: Request) -> Caller:
        header = request.headers.get("authorization")
        if header is not None:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Fail(401, "unauthenticated", "use `Authorization: Bearer <token>`")
            name = self.auth.identify(token.strip())
            if name is None:
                raise Fail(403, "forbidden", "the control token is not valid")
            return Caller(name)
        if request.cookies.get(COOKIE):
            login = self._login_of(request)
            if login is None:
                raise Fail(403, "forbidden", "the console login has expired: sign in again")
            return Caller(login.name, login)
        raise Fail(401, "unauthenticated", "a control token is required")

    def _check_origin(self, request: Request) -> None:
        own = f"{request.url.scheme}://{request.headers.get('host', '')}".lower()
        site = request.headers.get("sec-fetch-site")
        if site is not None and site not in ("same-origin", "none"):
            raise Fail(403, "csrf", f"cross-site request refused ({site})")
        origin = request.headers.get("origin")
        if origin is not None:
            if origin.lower() != own:
                raise Fail(403, "csrf", "cross-origin request refused")
            return
        referer = request.headers.get("referer")
        if referer:
            parts = urlsplit(referer)
            if f"{parts.scheme}://{parts.netloc}".lower() == own:
                return
            raise Fail(403, "csrf", "cross-origin request refused")
        raise Fail(403, "csrf", "a state-changing console request needs an Origin or Referer")

    def _check_write(self, request: Request, caller: Caller, fields: dict[str, str]) -> None:
        if caller.login is None:
            return
        sent = request.headers.get("x-csrf-token") or fields.get("csrf", "")
        if not sent or not hmac.compare_digest(sent.encode(), caller.login.csrf.encode()):
            raise Fail(403, "csrf", "missing or wrong CSRF token")
        self._check_origin(request)

    # --- plumbing ---------------------------------------------------------------------------

    def _api(self, handler: Callable[[Request, Caller, dict[str, str]], Awaitable[Any]]
             ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            form = _is_form(request)
            try:
                caller = self._caller(request)
                fields: dict[str, str] = {}
                if request.method == "POST":
                    fields = await _fields(request)
                    self._check_write(request, caller, fields)
                result = await handler(request, caller, fields)
            except Fail as f:
                if form:
                    where = "/" if f.status in (401,) or f.code == "forbidden" else \
                        f"/?error={quote(f.code)}&id={quote(f.subject)}"
                    return RedirectResponse(where, status_code=303)
                headers = {"www-authenticate": 'Bearer realm="fiveplane"'} \
                    if f.status == 401 else None
                return JSON({"error": {"code": f.code, "message": f.message}}, f.status,
                            headers=headers)
            done, subject = result.pop("_done", ""), result.pop("_subject", "")
            if form:
                return RedirectResponse(f"/?done={quote(done)}&id={quote(subject)}",
                                        status_code=303)
            return JSON(result)

        return endpoint

    # --- API ---------------------------------------------------------------------------

    async def whoami(self, request: Request, caller: Caller, _: dict[str, str]) -> Any:
        return {"approver": caller.name, "via": "cookie" if caller.login else "bearer"}

    async def list_approvals(self, request: Request, caller: Caller, _: dict[str, str]) -> Any:
        status = request.query_params.get("status") or None
        if status == "all":
            status = None
        if status is not None and status not in {s.value for s in Status}:
            raise Fail(400, "bad_request", f"unknown status `{status}`; one of "
                       f"{', '.join(s.value for s in Status)}, all")
        now = self.clock()
        with _store_errors():
            self.approvals.expire(now)
            found = self.approvals.list(status)
        return {"approvals": [r.to_dict(now) for r in found], "now": now}

    async def get_approval(self, request: Request, caller: Caller, _: dict[str, str]) -> Any:
        rid = request.path_params["id"]
        now = self.clock()
        with _store_errors(rid):
            self.approvals.expire(now)
            found = self.approvals.get(rid)
        if found is None:
            raise Fail(404, "not_found", f"no approval request `{rid}`", rid)
        return {"approval": found.to_dict(now)}

    async def approve(self, request: Request, caller: Caller, fields: dict[str, str]) -> Any:
        return self._decide(request, caller, fields, True)

    async def deny(self, request: Request, caller: Caller, fields: dict[str, str]) -> Any:
        return self._decide(request, caller, fields, False)

    def _decide(self, request: Request, caller: Caller, fields: dict[str, str],
                approve: bool) -> Any:
        rid = request.path_params["id"]
        note = fields.get("note") or fields.get("reason") or ""
        now = self.clock()
        with _store_errors(rid):
            decided = self.approvals.decide(rid, approve, caller.name, note, now)
        return {"approval": decided.to_dict(now),
                "_done": "approved" if approve else "denied", "_subject": rid}

    async def list_sessions(self, request: Request, caller: Caller, _: dict[str, str]) -> Any:
        store = self._session_store()
        now = self.clock()
        since = -math.inf
        within = request.query_params.get("active_within")
        if within:
            try:
                since = now - float(within)
            except ValueError:
                raise Fail(400, "bad_request", "active_within must be seconds") from None
        with _store_errors():
            found = store.list_sessions(since)
            held = self._held_by_session(now)
        return {"sessions": [_session_dict(s, held.get(s.session, 0)) for s in found],
                "now": now}

    async def kill(self, request: Request, caller: Caller, fields: dict[str, str]) -> Any:
        store = self._session_store()
        sid = request.path_params["id"]
        given = (fields.get("reason") or fields.get("note") or "").strip()
        reason = f"{given} (killed by {caller.name})" if given else f"killed by {caller.name}"
        now = self.clock()
        with _store_errors(sid):
            if not any(s.session == sid for s in store.list_sessions()):
                raise Fail(404, "not_found", f"no session `{sid}`", sid)
            store.kill(sid, reason, now)
            cancelled = self.approvals.cancel_session(sid, f"session killed: {reason}", now)
            killed = store.killed(sid)
        return {"session": sid, "killed": killed, "cancelled": [r.id for r in cancelled],
                "_done": "killed", "_subject": sid}

    async def list_activity(self, request: Request, caller: Caller, _: dict[str, str]) -> Any:
        if self.telemetry is None:
            raise Fail(503, "unavailable", "no activity feed in this process")
        q = request.query_params
        try:
            since = int(q.get("since") or 0)
            limit = min(500, max(1, int(q.get("limit") or 200)))
        except ValueError:
            raise Fail(400, "bad_request", "since and limit must be integers") from None
        feed = self.telemetry.activity
        filters = {k: q.get(k, "")[:300] for k in ("verdict", "rule", "principal", "session",
                                                   "outcome")}
        now = self.clock()
        sessions: list[dict[str, Any]] = []
        if self.sessions is not None:
            with _store_errors():
                found = self.sessions.list_sessions(now - ACTIVE_WITHIN)[:MAX_SESSIONS]
            sessions = [_session_dict(s, 0) for s in found]
        last = feed.last
        return {"entries": feed.since(since, filters, limit), "last": last,
                "counters": feed.counters(), "sessions": sessions, "now": now}

    async def get_evidence(self, request: Request, caller: Caller, _: dict[str, str]) -> Any:
        did = request.path_params["id"]
        if self.evidence is None:
            raise Fail(503, "unavailable", "no evidence log in this process")
        try:
            found = self.evidence(did)
        except ValueError as err:
            raise Fail(400, "bad_request", str(err), did) from err
        except OSError as err:
            raise Fail(503, "unavailable", f"the evidence log cannot be read: {err}") from err
        if found is None:
            raise Fail(404, "not_found", f"no evidence record for decision `{did}` in this "
                       "process's log (see `fiveplane audit show`)", did)
        return found

    async def metrics(self, request: Request) -> Response:
        if self.telemetry is None or self.telemetry.metrics is None:
            return JSON({"error": {"code": "not_found", "message": "metrics are off"}}, 404)
        if self.metrics_token:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                    token.strip().encode(), self.metrics_token.encode()):
                return JSON({"error": {"code": "unauthenticated",
                                       "message": "`/metrics` needs the metrics token"}}, 401,
                            headers={"www-authenticate": 'Bearer realm="fiveplane-metrics"'})
        from ..observe.metrics import CONTENT_TYPE

        return Response(self.telemetry.metrics.render(), headers={"content-type": CONTENT_TYPE})

    async def activity(self, request: Request) -> Response:
        login = self._login_of(request)
        if login is None:
            return HTMLResponse(console.login_page(next_path="/activity"))
        return HTMLResponse(activity_page.activity_page(login.name, login.csrf, self.clock()))

    async def activity_js(self, request: Request) -> Response:
        return Response(activity_page.JS, media_type="text/javascript")

    def _session_store(self) -> StateStore:
        if self.sessions is None:
            raise Fail(503, "unavailable", "no session store is configured")
        return self.sessions

    def _held_by_session(self, now: float) -> dict[str, int]:
        held: dict[str, int] = {}
        for r in self.approvals.list(Status.PENDING):
            if r.session and r.live(now):
                held[r.session] = held.get(r.session, 0) + 1
        return held

    # --- console ----------------------------------------------------------------------------

    def _view(self, login: Login, request: Request) -> console.View:
        now = self.clock()
        self.approvals.expire(now)
        pending = [r for r in self.approvals.list(Status.PENDING) if r.live(now)]
        pending.sort(key=lambda r: r.expires_at)
        recent = [r for r in self.approvals.list(limit=50) if r.status is not Status.PENDING]
        sessions = None
        if self.sessions is not None:
            sessions = self.sessions.list_sessions()[:200]     # most recent first
        q = request.query_params
        return console.View(
            approver=login.name, csrf=login.csrf, now=now, pending=pending,
            recent=recent[-20:], sessions=sessions,
            pending_by_session=self._held_by_session(now),
            done=q.get("done"), error=q.get("error"), subject=q.get("id", "")[:200])

    async def index(self, request: Request) -> Response:
        login = self._login_of(request)
        if login is None:
            response = HTMLResponse(console.login_page())
            if request.cookies.get(COOKIE):
                response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
            return response
        try:
            page = console.console_page(self._view(login, request))
        except (StateError, GovernanceError) as err:
            return HTMLResponse(console.login_page(f"store unavailable: {err}"), 503)
        return HTMLResponse(page)

    async def fragment(self, request: Request) -> Response:
        login = self._login_of(request)
        if login is None:
            return Response("sign in", 401, media_type="text/plain")
        try:
            return HTMLResponse(console.live_fragment(self._view(login, request)))
        except (StateError, GovernanceError):
            return Response("store unavailable", 503, media_type="text/plain")

    async def login(self, request: Request) -> Response:
        try:
            fields = await _fields(request)
            self._check_origin(request)
        except Fail as f:
            return HTMLResponse(console.login_page(f.message), f.status)
        token = fields.get("token", "").strip()
        if not token:
            return HTMLResponse(console.login_page("enter the control token"), 401)
        name = self.auth.identify(token)
        if name is None:
            return HTMLResponse(console.login_page("that token is not valid"), 403)
        self._prune()
        sid = secrets.token_urlsafe(32)
        self._logins[sid] = Login(name, secrets.token_urlsafe(32),
                                  self.clock() + self.login_ttl)
        where = "/activity" if fields.get("next") == "/activity" else "/"
        response = RedirectResponse(where, status_code=303)
        response.set_cookie(COOKIE, sid, path="/", httponly=True, samesite="strict",
                            max_age=int(self.login_ttl))
        return response

    async def logout(self, request: Request) -> Response:
        login = self._login_of(request)
        if login is not None:
            try:
                fields = await _fields(request)
                self._check_write(request, Caller(login.name, login), fields)
            except Fail:
                return RedirectResponse("/?error=csrf", status_code=303)
            self._logins.pop(request.cookies.get(COOKIE, ""), None)
        response = RedirectResponse("/", status_code=303)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return response

    def _prune(self) -> None:
        now = self.clock()
        for sid in [s for s, v in self._logins.items() if v.expires <= now]:
            del self._logins[sid]
        while len(self._logins) >= MAX_LOGINS:
            del self._logins[next(iter(self._logins))]

    async def css(self, request: Request) -> Response:
        return Response(console.CSS + activity_page.CSS, media_type="text/css")

    async def js(self, request: Request) -> Response:
        return Response(console.JS, media_type="text/javascript")


@contextmanager
def _store_errors(subject: str = "") -> Iterator[None]:
    """Map store exceptions to API errors."""
    try:
        yield
    except Fail:
        raise
    except ApprovalNotFound as err:
        raise Fail(404, "not_found", str(err), subject) from err
    except SelfApproval as err:
        raise Fail(403, "self_approval", str(err), subject) from err
    except ApprovalConflict as err:
        raise Fail(409, "conflict", str(err), subject) from err
    except ValueError as err:
        raise Fail(400, "bad_request", str(err), subject) from err
    except GovernanceError as err:       # StateError, ApprovalError (too many pending)
        raise Fail(503, "unavailable", str(err), subject) from err


def _session_dict(s: Any, held: int) -> dict[str, Any]:
    return {"session": s.session, "principal": s.principal, "first_seen": s.first_seen,
            "last_seen": s.last_seen, "killed": s.killed, "killed_at": s.killed_at,
            "held": held}


def _is_form(request: Request) -> bool:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    return request.method == "POST" and ctype == "application/x-www-form-urlencoded"


async def _fields(request: Request) -> dict[str, str]:
    """The POST body as string fields: a JSON object or a urlencoded form (at most
    ``MAX_BODY`` bytes); an empty body is no fields."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise Fail(413, "too_large", f"request body over {MAX_BODY} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise Fail(413, "too_large", f"request body over {MAX_BODY} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    if not body.strip():
        return {}
    if _is_form(request):
        try:
            parsed = parse_qs(body.decode(), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            raise Fail(400, "bad_request", "form body is not UTF-8") from None
        return {k: v[0] for k, v in parsed.items()}
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise Fail(400, "bad_request", "body must be a JSON object") from None
    if not isinstance(data, dict):
        raise Fail(400, "bad_request", "body must be a JSON object")
    out = {}
    for key in ("note", "reason", "csrf"):
        value = data.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise Fail(400, "bad_request", f"`{key}` must be a string")
        out[key] = value
    return out


class Guard:
    """Refuse foreign ``Host`` headers; add the security headers to every response."""

    def __init__(self, app: ASGIApp, allowed_hosts: frozenset[str]) -> None:
        self.app = app
        self.allowed_hosts = allowed_hosts

    def _allowed(self, host: str) -> bool:
        if "*" in self.allowed_hosts:
            return True
        name = host.strip().lower()
        if name.startswith("["):
            name = name[1:].split("]", 1)[0]
        elif name.count(":") == 1:
            name = name.split(":", 1)[0]
        return name in self.allowed_hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not self._allowed(Headers(scope=scope).get("host", "")):
            response = JSON({"error": {"code": "bad_host",
                                       "message": "this Host is not served here"}}, 421)
            await response(scope, receive, self._secure(send))
            return
        await self.app(scope, receive, self._secure(send))

    @staticmethod
    def _secure(send: Send) -> Send:
        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for key, value in SECURITY_HEADERS.items():
                    headers.setdefault(key, value)
            await send(message)

        return wrapped
