"""An MCP server (``mcp`` SDK) whose one tool logs progress to the client while it works:
``python tests/e2e/servers/chatty_server.py [CALLS_LOG]`` (prints the usual ready line)."""

import json
import socket
import sys

import anyio
import uvicorn
from mcp.server.mcpserver import Context, MCPServer

mcp = MCPServer("chatty")

@mcp.tool(description="Logs progress to the client, then answers.")
async def chatty(text: str, ctx: Context) -> str:
    if len(sys.argv) > 1:
        with open(sys.argv[1], "a") as log:
            log.write(json.dumps({"tool": "chatty", "arguments": {"text": text}}) + "\n")
    await ctx.info(f"working on {text}")
    return f"done {text}"

async def main():
    app = mcp.streamable_http_app(streamable_http_path="/mcp", host="127.0.0.1")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    async with anyio.create_task_group() as tg:
        async def announce():
            while not server.started:
                await anyio.sleep(0.01)
            port = sock.getsockname()[1]
            print(f"MCP server listening on http://127.0.0.1:{port}/mcp", flush=True)
        tg.start_soon(announce)
        await server.serve(sockets=[sock])

anyio.run(main)
