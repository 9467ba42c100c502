"""A minimal MCP upstream for throughput benchmarks: answers every stateless 2026-07-28
``tools/call echo`` POST on ``/mcp`` with one JSON-RPC result (the shape the e2e server's
``--json-response`` mode returns), in a few lines of asyncio and about 0.1 ms of CPU per
request, so the proxies, not the upstream, are what a throughput figure measures.

    python stub_mcp_upstream.py --port 0     # prints the e2e server's ready line
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            body = await reader.readexactly(length)
            try:
                rpc = json.loads(body)
                text = rpc["params"]["arguments"]["text"]
                reply = {"jsonrpc": "2.0", "id": rpc["id"], "result": {
                    "content": [{"type": "text", "text": text}],
                    "structuredContent": {"result": text}, "isError": False,
                    "resultType": "complete"}}
                status = b"200 OK"
            except (ValueError, KeyError, TypeError):
                reply = {"jsonrpc": "2.0", "id": None,
                         "error": {"code": -32600, "message": "stub: echo calls only"}}
                status = b"400 Bad Request"
            out = json.dumps(reply, separators=(",", ":")).encode()
            writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n"
                         b"Content-Length: " + str(len(out)).encode() + b"\r\n\r\n" + out)
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def main(port: int) -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    bound = server.sockets[0].getsockname()[1]
    print(f"MCP server listening on http://127.0.0.1:{bound}/mcp", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=0)
    asyncio.run(main(p.parse_args().port))
