"""The documented JavaScript (docs/streaming.md), run unchanged in Node against the service:
the SSE reader (with a replay that must not double the text) and the WebSocket client. Only
``BASE`` is pointed at the test server; everything else is the code a team would paste."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bench.mock_llm import MockLLM, Reply
from services.settings import REPO_ROOT
from tests.api.conftest import Live
from tests.support.tools import unavailable

PLACEHOLDER = '"https://your-host"'


def doc_snippet(marker: str) -> str:
    """The ```js block of docs/streaming.md that contains ``marker``."""
    text = (REPO_ROOT / "docs" / "streaming.md").read_text()
    blocks = re.findall(r"```js\n(.*?)```", text, re.S)
    found = [block for block in blocks if marker in block]
    assert len(found) == 1, f"one snippet with {marker!r}"
    return found[0]


@pytest.fixture
def node() -> list[str]:
    """The node command (WebSocket needs a flag before Node 22)."""
    path = shutil.which("node")
    if path is None:
        unavailable("Node.js is missing; `apt-get install nodejs` (.ci/run does)")
    major = int(subprocess.run([path, "--version"], capture_output=True, text=True).stdout[1:3])
    return [path, "--experimental-websocket"] if major < 22 else [path]


async def run(node: list[str], script: str, tmp_path: Path) -> list[dict[str, Any]]:
    """Run an ES module; its JSON lines."""
    file = tmp_path / "snippet.mjs"
    file.write_text(script)
    process = await asyncio.create_subprocess_exec(
        *node, str(file), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err.decode()
    return [json.loads(line) for line in out.decode().splitlines()]


async def test_the_sse_snippet_streams_and_replays_without_doubling(
    live: Live, llm: MockLLM, node: list[str], tmp_path: Path
) -> None:
    session_id = await live.create_session()
    llm.script(Reply(content="Arr, fine weather.", chunks=3))
    snippet = doc_snippet("async function streamTurn")
    assert PLACEHOLDER in snippet
    driver = f"""
{snippet.replace(PLACEHOLDER, json.dumps(live.url))}
const sessionId = {json.dumps(session_id)};
for (const attempt of [1, 2]) {{  // the second is a resend: a replay
  const shown = [];
  const done = await streamTurn(sessionId, "Weather?", "snip-1", (t) => shown.push(t));
  console.log(JSON.stringify({{ shown, response: done.response, replayed: done.replayed }}));
}}
"""
    first, again = await run(node, driver, tmp_path)
    assert first["response"] == again["response"] == "Arr, fine weather."
    assert (first["replayed"], again["replayed"]) == (False, True)
    assert len(first["shown"]) == 3 and first["shown"][-1] == "Arr, fine weather."
    assert again["shown"] == ["Arr, fine weather."]  # whole, once: not appended to the first
    assert len(llm.chat_requests()) == 1


async def test_the_websocket_snippet_chats(
    live: Live, llm: MockLLM, node: list[str], tmp_path: Path
) -> None:
    session_id = await live.create_session("pirate")
    llm.script(Reply(content="Ahoy, matey!", chunks=2))
    driver = f"""
const BASE = {json.dumps(live.url)};
const sessionId = {json.dumps(session_id)};
const say = (what, value) => console.log(JSON.stringify({{ what, value }}));
const render = (messages, welcome) => say("history", {{ messages, welcome }});
const showTyping = (text) => say("typing", text);
const showError = (code) => {{ say("error", code); process.exit(1); }};
const startNewSession = () => say("ended", true);
const showFinal = (text) => {{ say("final", text); ws.close(); }};
{doc_snippet("const ws = new WebSocket(")}
"""
    lines = await run(node, driver, tmp_path)
    assert lines[0] == {"what": "history", "value": {"messages": [], "welcome": "Ahoy!"}}
    typed = [line["value"] for line in lines if line["what"] == "typing"]
    assert len(typed) == 2 and typed[-1] == "Ahoy, matey!" and "Ahoy, matey!".startswith(typed[0])
    assert lines[-1] == {"what": "final", "value": "Ahoy, matey!"}
    assert (await live.history(session_id))[0]["content"] == "Hi!"
