"""A small client of the control API (what the CLI uses; e2e tests may use it too).

It never goes through an HTTP proxy (``trust_env=False``): the shell that runs it often
has ``HTTP_PROXY`` pointing at fiveplane itself.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

DEFAULT_URL = "http://127.0.0.1:8081"


class ControlError(Exception):
    """The API refused (``status`` and ``code`` from its error body) or was unreachable
    (``status`` 0)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class ControlClient:
    def __init__(self, url: str = DEFAULT_URL, token: str | None = None, *,
                 timeout: float = 10.0, transport: httpx.BaseTransport | None = None) -> None:
        headers = {"accept": "application/json"}
        if token:
            headers["authorization"] = f"Bearer {token}"
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout,
                                  trust_env=False, transport=transport,
                                  follow_redirects=False)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        try:
            response = self._http.request(method, path, **kw)
        except httpx.HTTPError as e:
            raise ControlError(0, "unreachable",
                               f"cannot reach the control API at {self.url}: {e}") from e
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code >= 400:
            err = body.get("error", {}) if isinstance(body, dict) else {}
            raise ControlError(response.status_code, str(err.get("code", "error")),
                               str(err.get("message") or response.reason_phrase))
        if not isinstance(body, dict):
            raise ControlError(response.status_code, "bad_response",
                               f"the control API at {self.url} did not answer JSON")
        return body

    def whoami(self) -> str:
        return str(self._call("GET", "/api/whoami")["approver"])

    def approvals(self, status: str | None = "pending") -> list[dict[str, Any]]:
        params = {"status": status} if status else {"status": "all"}
        return list(self._call("GET", "/api/approvals", params=params)["approvals"])

    def approval(self, request_id: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/api/approvals/{_seg(request_id)}")["approval"])

    def approve(self, request_id: str, note: str = "") -> dict[str, Any]:
        return dict(self._call("POST", f"/api/approvals/{_seg(request_id)}/approve",
                               json={"note": note})["approval"])

    def deny(self, request_id: str, note: str = "") -> dict[str, Any]:
        return dict(self._call("POST", f"/api/approvals/{_seg(request_id)}/deny",
                               json={"note": note})["approval"])

    def sessions(self, active_within: float | None = None) -> list[dict[str, Any]]:
        params = {"active_within": str(active_within)} if active_within else None
        return list(self._call("GET", "/api/sessions", params=params)["sessions"])

    def kill(self, session: str, reason: str = "") -> dict[str, Any]:
        return self._call("POST", f"/api/sessions/{_seg(session)}/kill",
                          json={"reason": reason})


def _seg(value: str) -> str:
    return quote(value, safe="")
