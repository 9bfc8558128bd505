"""The AI SDK's own client (the real ``ai`` npm package, run by Node): the script that drives
Chatify's UI message stream as ``useChat`` does, and how to run it."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from testkit.tools import unavailable

NODE_DIR = Path(__file__).parent / "node"
# The state the AI SDK's AbstractChat keeps (what @ai-sdk/react's useChat keeps in React), for
# scripts that drive the package's own chat.
CHAT_STATE = """class State {
  constructor(messages) { this.messages = messages; this.status = "ready"; this.error = undefined; }
  pushMessage(message) { this.messages = [...this.messages, message]; }
  popMessage() { this.messages = this.messages.slice(0, -1); }
  replaceMessage(index, message) { this.messages = this.messages.with(index, message); }
  snapshot(thing) { return structuredClone(thing); }
}"""


def node_script() -> Path:
    """The Node script, with the packages of ``package.json`` installed beside it (``npm ci``
    once, and again when one is missing)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not (node and npm):
        unavailable("Node.js 18+ and npm are missing; `apt-get install nodejs npm` (.ci/run does)")
    wanted = json.loads((NODE_DIR / "package.json").read_text())["dependencies"]
    if not all((NODE_DIR / "node_modules" / name).exists() for name in wanted):
        subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--silent"], cwd=NODE_DIR, check=True)
    return NODE_DIR / "ui_chat.mjs"


async def run_node(script: Path, *args: str) -> asyncio.subprocess.Process:
    """The script running, its stdout piped."""
    return await asyncio.create_subprocess_exec(
        "node", str(script), *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


async def lines_of(process: asyncio.subprocess.Process) -> list[dict[str, Any]]:
    """Every JSON line the script printed, once it exits (which it must, successfully)."""
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err.decode()
    return [json.loads(line) for line in out.decode().splitlines()]
