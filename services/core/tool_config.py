"""How MCP servers are configured (``MCP_SERVERS``) and how templates name their tools."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

SERVER_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,31}$"
# The built-in image tool: "images/generate" (services/llm/tools/images.py).
IMAGES_SERVER = "images"
# What a template lists: one tool of a server, or all of them ("demo/*").
TOOL_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,31}/(\*|[A-Za-z0-9_.-]{1,64})$"
TOOLS_MAX = 20  # patterns per template
_FUNCTION_NAME = re.compile(r"[^A-Za-z0-9_-]")


class McpServerConfig(BaseModel):
    """One MCP server: a command run over stdio, or a streamable-HTTP URL."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    command: str | None = Field(None, min_length=1, description="Run over stdio")
    args: list[str] = []
    env: dict[str, str] = Field(
        {}, description="Its environment besides the SDK's safe defaults (PATH, HOME…)"
    )
    env_from: dict[str, str] = Field(
        {}, description="Variables it gets from ours, by name (secrets stay out of the JSON)"
    )
    cwd: str | None = None
    url: str | None = Field(None, pattern=r"^https?://", description="Streamable HTTP endpoint")
    headers: dict[str, str] = {}
    headers_from: dict[str, str] = Field(
        {}, description="Headers whose values come from our environment variables, by name"
    )

    @model_validator(mode="after")
    def _one_transport(self) -> McpServerConfig:
        if (self.command is None) == (self.url is None):
            raise ValueError("an MCP server has either a command (stdio) or a url (HTTP)")
        return self

    def environment(self, name: str) -> dict[str, str]:
        """``env`` and ``env_from`` resolved; a variable named but not set is an error."""
        return {**self.env, **_resolved(name, "env_from", self.env_from)}

    def all_headers(self, name: str) -> dict[str, str]:
        """``headers`` and ``headers_from`` resolved."""
        return {**self.headers, **_resolved(name, "headers_from", self.headers_from)}


def _resolved(server: str, field: str, names: dict[str, str]) -> dict[str, str]:
    values = {}
    for key, variable in names.items():
        value = os.environ.get(variable, "")
        if not value:
            raise ValueError(
                f"MCP_SERVERS: server {server!r} takes {key} from {variable}, which is not set"
            )
        values[key] = value
    return values


def demo_servers(repo_root: Path) -> dict[str, McpServerConfig]:
    """The default ``MCP_SERVERS``: the example server of this repository, over stdio."""
    return {
        "demo": McpServerConfig(
            command=sys.executable, args=["-m", "mcp_servers.demo"], cwd=str(repo_root)
        )
    }


def function_name(server: str, tool: str) -> str:
    """The name the model calls a tool by: ``server__tool``, in the characters (and the 64
    of them) that OpenAI-compatible APIs accept."""
    return _FUNCTION_NAME.sub("_", f"{server}__{tool}")[:64]


def allowed(patterns: tuple[str, ...], server: str, tool: str) -> bool:
    """Whether a template's patterns let it call this tool."""
    return f"{server}/{tool}" in patterns or f"{server}/*" in patterns


def servers_of(patterns: tuple[str, ...] | list[str]) -> list[str]:
    """The servers some patterns name, in order, each once."""
    return list(dict.fromkeys(pattern.split("/", 1)[0] for pattern in patterns))
