"""The separate listener: inside a running event loop (as in mitmproxy), no second process,
the host's signal handlers untouched."""

from __future__ import annotations

import asyncio
import signal
import socket

import httpx
import pytest

from proxy.approvals import MemoryApprovalStore, Status
from proxy.control import ControlAuth, ThreadedControlServer, create_app, serve, start_control
from proxy.principal import ANONYMOUS
from proxy.state import MemoryStore

TOKEN = "test-control-token-0123456789abcdef"


def test_serve_runs_on_the_current_loop_next_to_other_work(tmp_path):
    approvals = MemoryApprovalStore()
    app = create_app(approvals, ControlAuth.single(TOKEN, "bob"), MemoryStore())
    async def main() -> None:
        before = signal.getsignal(signal.SIGINT)       # asyncio.run's own handler
        server = serve(app, "127.0.0.1", 0)
        assert server.port > 0 and server.url == f"http://127.0.0.1:{server.port}"
        await server.ready()
        assert signal.getsignal(signal.SIGINT) is before
        r = approvals.request("sha256:x", rule_ids=["r"], reason="why",
                              principal=ANONYMOUS)
        async with httpx.AsyncClient(base_url=server.url, trust_env=False,
                                     headers={"authorization": f"Bearer {TOKEN}"}) as c:
            # a held call on the same loop wakes when the API approves it
            waiter = asyncio.create_task(approvals.wait(r.id, 5))
            resp = await c.post(f"/api/approvals/{r.id}/approve", json={"note": "ok"})
            assert resp.status_code == 200
            assert await asyncio.wait_for(waiter, 1) is Status.APPROVED
        await asyncio.wait_for(server.stop(), 5)
        with pytest.raises(httpx.ConnectError):
            async with httpx.AsyncClient(trust_env=False) as c:
                await c.get(f"{server.url}/api/whoami")

        assert signal.getsignal(signal.SIGINT) is before

    asyncio.run(main())


def test_a_port_in_use_fails_at_once():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        async def main() -> None:
            with pytest.raises(OSError):
                serve(create_app(MemoryApprovalStore(), ControlAuth.single(TOKEN)),
                      "127.0.0.1", port)

        asyncio.run(main())


def test_start_control_creates_the_token_file(tmp_path):
    async def main() -> None:
        server = start_control(MemoryApprovalStore(), None, state_dir=tmp_path, port=0)
        await server.ready()
        token = (tmp_path / "control.token").read_text().split()[1]
        async with httpx.AsyncClient(base_url=server.url, trust_env=False) as c:
            assert (await c.get("/api/whoami")).status_code == 401
            r = await c.get("/api/whoami", headers={"authorization": f"Bearer {token}"})
            assert r.json()["approver"] == "operator"
        await server.stop()

    asyncio.run(main())


def test_threaded_server():
    app = create_app(MemoryApprovalStore(), ControlAuth.single(TOKEN))
    with ThreadedControlServer(app) as server:
        r = httpx.get(f"{server.url}/api/whoami", headers={"authorization": f"Bearer {TOKEN}"},
                      trust_env=False)
        assert r.status_code == 200
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/api/whoami", trust_env=False)
