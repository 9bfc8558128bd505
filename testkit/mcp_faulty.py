"""An MCP server (stdio) whose tools misbehave on purpose: slow, crashing, or answering huge."""

from __future__ import annotations

import asyncio

from mcp.server.mcpserver import MCPServer

server: MCPServer = MCPServer("faulty", log_level="CRITICAL")  # no traceback banners


@server.tool(description="Answers after the given number of seconds.")
async def slow(seconds: float) -> str:
    """Sleep, then answer."""
    await asyncio.sleep(seconds)
    return f"slept {seconds:g} s"


@server.tool(description="Always fails.")
def crash() -> str:
    """An unexpected exception inside the tool."""
    raise RuntimeError("boom")


@server.tool(description="Answers with a long text.")
def huge(chars: int) -> str:
    """``chars`` characters."""
    return "x" * chars


if __name__ == "__main__":
    server.run()
