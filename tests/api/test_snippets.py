"""The documented JavaScript (docs/streaming.md), run unchanged in Node against the service:
the SSE reader (with a replay that must not double the text) and the WebSocket client. Only
``BASE`` is pointed at the test server (and ``TOKEN`` set, for a keyed deployment); everything
else is the code a team would paste. ``useChat``'s transport headers are evaluated for a key and
for none."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from services.core.settings import REPO_ROOT
from testkit.mock_llm import MockLLM, Reply
from testkit.tools import unavailable
from tests.api.conftest import API, Live, LiveFactory

PLACEHOLDER = '"https://your-host"'
NO_TOKEN = "const TOKEN = null;"
# Records the Authorization header of every fetch the snippet makes (then fetches as asked).
SPY = """
const sent = [];
const realFetch = globalThis.fetch;
globalThis.fetch = (url, init) => {
  sent.push(new Headers(init?.headers).get("authorization"));
  return realFetch(url, init);
};
"""


def doc_snippet(marker: str) -> str:
    """The ```js block of docs/streaming.md that contains ``marker``."""
    text = (REPO_ROOT / "docs" / "streaming.md").read_text()
    blocks = re.findall(r"```js\n(.*?)```", text, re.S)
    found: list[str] = [block for block in blocks if marker in block]
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
const TOKEN = null;
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


def sse_driver(snippet: str, session_id: str, message_id: str) -> str:
    """One turn through the SSE snippet; prints the reply and the Authorization headers sent."""
    return f"""{SPY}
{snippet}
const done = await streamTurn({json.dumps(session_id)}, "Weather?", "{message_id}", () => {{}});
console.log(JSON.stringify({{ response: done.response, sent }}));
"""


async def test_the_sse_snippet_sends_no_authorization_header_without_a_token(
    live: Live, llm: MockLLM, node: list[str], tmp_path: Path
) -> None:
    session_id = await live.create_session()
    llm.script(Reply(content="Fine weather.", chunks=2))
    snippet = doc_snippet("async function streamTurn")
    assert NO_TOKEN in snippet
    driver = sse_driver(snippet.replace(PLACEHOLDER, json.dumps(live.url)), session_id, "a-1")
    [line] = await run(node, driver, tmp_path)
    assert line == {"response": "Fine weather.", "sent": [None]}  # not "Bearer undefined"


async def test_the_sse_and_websocket_snippets_work_with_a_key(
    live_app: LiveFactory, llm: MockLLM, node: list[str], tmp_path: Path
) -> None:
    llm.script(Reply(content="Keyed reply.", chunks=2), Reply(content="Ahoy, keyed!"))
    async with live_app(auth_mode="api_key", api_keys="snippet-key") as live:
        auth = {"Authorization": "Bearer snippet-key"}
        created = await live.client.post(
            f"{API}/session", json={"user_id": "u1", "template_id": "plain"}, headers=auth
        )
        session_id = created.json()["session_id"]
        snippet = doc_snippet("async function streamTurn").replace(
            PLACEHOLDER, json.dumps(live.url)
        )
        assert NO_TOKEN in snippet
        keyed = snippet.replace(NO_TOKEN, 'const TOKEN = "snippet-key";')
        [line] = await run(node, sse_driver(keyed, session_id, "k-1"), tmp_path)
        assert line == {"response": "Keyed reply.", "sent": ["Bearer snippet-key"]}

        driver = f"""
{keyed}
const sessionId = {json.dumps(session_id)};
const say = (what, value) => console.log(JSON.stringify({{ what, value }}));
const render = () => {{}};
const showTyping = () => {{}};
const showError = (code) => {{ say("error", code); process.exit(1); }};
const startNewSession = () => {{ say("closed", true); process.exit(1); }};
const showFinal = (text) => {{ say("final", text); ws.close(); }};
{doc_snippet("const ws = new WebSocket(")}
"""
        lines = await run(node, driver, tmp_path)
        assert lines[-1] == {"what": "final", "value": "Ahoy, keyed!"}


async def test_the_use_chat_transport_sends_authorization_only_with_a_key(
    node: list[str], tmp_path: Path
) -> None:
    text = (REPO_ROOT / "docs" / "streaming.md").read_text()
    [jsx] = [block for block in re.findall(r"```jsx\n(.*?)```", text, re.S) if "useChat" in block]
    [headers] = re.findall(r"^\s*const headers = (.*?);(?: //.*)?$", jsx, re.M)
    driver = f"""
for (const apiKey of [undefined, null, "", "user-key"]) {{
  console.log(JSON.stringify({{ headers: {headers} }}));
}}
"""
    lines = await run(node, driver, tmp_path)
    assert lines == [{"headers": {}}] * 3 + [{"headers": {"Authorization": "Bearer user-key"}}]
