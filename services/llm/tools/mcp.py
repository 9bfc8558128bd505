"""The MCP servers of ``MCP_SERVERS``: one long-lived connection each, their tools, calls.

Each connection is owned by a task of its own, because the SDK (anyio) must leave a
connection's scopes in the task that entered them; turns share it (JSON-RPC multiplexes
calls). A server that cannot be reached, or whose connection breaks, costs the turns that
wanted it their tools from that server, never the turn: they go on without them, and the next
turn that wants it connects again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx2
import jsonschema
import mcp_types
from mcp import Client, MCPError, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from services.core.tool_config import McpServerConfig, allowed, function_name, servers_of

logger = logging.getLogger(__name__)
CONNECT_TIMEOUT_SECONDS = 15.0  # starting a stdio server includes its interpreter's imports
CLOSE_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """One tool of one server, as offered to the model."""

    server: str
    tool: str
    description: str
    input_schema: dict[str, Any]

    @property
    def name(self) -> str:
        """``server/tool``, as templates name tools."""
        return f"{self.server}/{self.tool}"

    @property
    def function(self) -> str:
        """The name the model calls it by."""
        return function_name(self.server, self.tool)

    def definition(self) -> dict[str, Any]:
        """The chat-completions ``tools`` entry."""
        return {
            "type": "function",
            "function": {
                "name": self.function,
                "description": self.description[:1024],
                "parameters": self.input_schema or {"type": "object", "properties": {}},
            },
        }

    def argument_problem(self, arguments: dict[str, Any]) -> str | None:
        """Why these arguments do not fit the tool's input schema, or None."""
        try:
            jsonschema.validate(arguments, self.input_schema or {"type": "object"})
        except jsonschema.ValidationError as exc:
            where = "/".join(str(part) for part in exc.absolute_path) or "arguments"
            return f"{where}: {exc.message}"
        except jsonschema.SchemaError:
            return None  # the server's schema is broken: let the server judge
        return None


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    """What a call returned: text for the model, whether it is an error, and any images."""

    text: str
    is_error: bool = False
    images: tuple[str, ...] = ()


class McpServers:
    """Connections to the configured MCP servers (see the module docstring)."""

    def __init__(self, configs: dict[str, McpServerConfig]) -> None:
        self._configs = configs
        self._links: dict[str, _Link] = {}

    @property
    def names(self) -> frozenset[str]:
        """The configured servers."""
        return frozenset(self._configs)

    async def warm(self) -> None:
        """Connect to every server now (at start, in the background), so the first turn
        that calls a tool does not wait for a server process to start."""
        await asyncio.gather(*(self._tools(name) for name in self._configs))

    async def specs(self, patterns: tuple[str, ...]) -> list[ToolSpec]:
        """The tools these patterns allow, from the servers that answer."""
        names = [name for name in servers_of(patterns) if name in self._configs]
        listed = await asyncio.gather(*(self._tools(name) for name in names))
        return [
            spec for specs in listed for spec in specs if allowed(patterns, spec.server, spec.tool)
        ]

    async def call(
        self, spec: ToolSpec, arguments: dict[str, Any], *, within: float
    ) -> ToolOutcome:
        """Call a tool, ``within`` seconds; failures are outcomes for the model, not errors."""
        timeout = within
        link = self._links.get(spec.server)
        if link is None or link.client is None:
            return ToolOutcome(f"The tool server {spec.server!r} is not connected", True)
        try:
            async with asyncio.timeout(timeout):
                result = await link.client.call_tool(
                    spec.tool, arguments, read_timeout_seconds=timeout
                )
        except TimeoutError:
            logger.warning("MCP tool %s/%s timed out after %g s", spec.server, spec.tool, timeout)
            return ToolOutcome(f"The tool did not answer within {timeout:g} s", True)
        except Exception as exc:  # the SDK's errors: protocol, transport, a dead process
            logger.warning("MCP tool %s/%s failed: %s", spec.server, spec.tool, type(exc).__name__)
            if not isinstance(exc, MCPError):  # a server's answer leaves it connected
                await self._drop(spec.server)  # the connection broke: reconnect next time
            return ToolOutcome(f"The tool failed ({type(exc).__name__})", True)
        return ToolOutcome(result_text(result), result.is_error)

    async def close(self) -> None:
        """Close every connection (stdio servers are stopped)."""
        links, self._links = list(self._links.values()), {}
        await asyncio.gather(*(link.close() for link in links))

    async def _tools(self, name: str) -> list[ToolSpec]:
        link = self._links.get(name)
        if link is None or link.broken:
            link = self._links[name] = _Link(name, self._configs[name])
        try:
            return await link.tools()
        except Exception as exc:
            logger.warning("MCP server %s is unavailable: %s", name, _reason(exc))
            await self._drop(name)
            return []

    async def _drop(self, name: str) -> None:
        link = self._links.pop(name, None)
        if link is not None:
            await link.close()


class _Link:
    """One server's connection, owned by its own task."""

    def __init__(self, name: str, config: McpServerConfig) -> None:
        self._name = name
        self._config = config
        self.client: Client | None = None
        self.broken = False
        self._listed: list[ToolSpec] | None = None
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._owner: asyncio.Task[None] | None = None

    async def tools(self) -> list[ToolSpec]:
        """The server's tools, listed once per connection."""
        async with self._lock:
            if self._listed is None:
                client = await self._connect()
                async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):
                    listing = await client.list_tools()
                self._listed = [_spec(self._name, tool) for tool in listing.tools]
                logger.info("MCP server %s: %d tools", self._name, len(self._listed))
            return self._listed

    async def _connect(self) -> Client:
        ready: asyncio.Future[Client] = asyncio.get_running_loop().create_future()
        self._owner = asyncio.create_task(self._own(ready), name=f"mcp-{self._name}")
        async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):
            self.client = await asyncio.shield(ready)
        return self.client

    async def _own(self, ready: asyncio.Future[Client]) -> None:
        try:
            async with self._transport() as transport, Client(transport) as client:
                ready.set_result(client)
                await self._stop.wait()
        except Exception as exc:
            if not ready.done():
                ready.set_exception(exc)
            elif not self._stop.is_set():
                logger.warning("MCP server %s disconnected: %s", self._name, _reason(exc))
        finally:
            self.broken = True
            self.client = None

    @contextlib.asynccontextmanager
    async def _transport(self) -> AsyncIterator[Any]:
        config = self._config
        if config.url is None:
            assert config.command is not None
            yield StdioServerParameters(
                command=config.command,
                args=config.args,
                env=config.environment(self._name) or None,
                cwd=config.cwd,
            )
            return
        headers = config.all_headers(self._name)
        async with httpx2.AsyncClient(headers=headers, timeout=CONNECT_TIMEOUT_SECONDS) as http:
            yield streamable_http_client(config.url, http_client=http)

    async def close(self) -> None:
        """End the connection and wait for its task (cut off if it does not end soon)."""
        self._stop.set()
        if self._owner is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._owner, CLOSE_TIMEOUT_SECONDS)


def _spec(server: str, tool: mcp_types.Tool) -> ToolSpec:
    return ToolSpec(server, tool.name, tool.description or tool.title or "", tool.input_schema)


def result_text(result: mcp_types.CallToolResult) -> str:
    """A result as text for the model: its text blocks; other blocks by kind; else the
    structured content as JSON."""
    parts = []
    for block in result.content:
        text = getattr(block, "text", None)
        parts.append(text if isinstance(text, str) else f"[{block.type}]")
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False))
    return "\n".join(parts)


def _reason(exc: BaseException) -> str:
    """A short cause for the log (no arguments or results: they may be private)."""
    if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        return _reason(exc.exceptions[0])
    return type(exc).__name__
