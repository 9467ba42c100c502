"""A mitmproxy addon that does nothing, through the same hooks fiveplane's addon uses
(async ``requestheaders``/``request``/``responseheaders``/``response``, sync
``http_connect``/``server_connect``/``error``). Loaded into bare ``mitmdump`` by the proxy
benchmark as a diagnostic target: what mitmproxy itself charges for dispatching one more
addon's hooks, separate from what fiveplane's code costs."""

from __future__ import annotations

from typing import Any


class NoopHooks:
    async def requestheaders(self, flow: Any) -> None:
        return None

    async def request(self, flow: Any) -> None:
        return None

    async def responseheaders(self, flow: Any) -> None:
        return None

    async def response(self, flow: Any) -> None:
        return None

    async def http_connect(self, flow: Any) -> None:
        return None

    def server_connect(self, data: Any) -> None:
        return None

    def error(self, flow: Any) -> None:
        return None


addons = [NoopHooks()]
