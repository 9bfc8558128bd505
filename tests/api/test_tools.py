"""Tool calling through MCP: the example server run for real (a stdio process, an HTTP server),
the mock LLM asking for calls at the HTTP level, the turn storing calls and results in order.

The mock LLM calls a tool when the user's message says ``[[call <function> <JSON>]]`` and
tools are offered, and answers ``Tool said: <results>`` once they ran (testkit/mock_llm.py).
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from bench.harness import clean_env, free_port, running, start
from services.core.settings import REPO_ROOT
from testkit.mock_llm import MockLLM, Reply
from testkit.node_ai import lines_of, run_node
from tests.api.conftest import Live, LiveFactory, collect
from tests.api.test_providers import snapshot_reply
from tests.conftest import FakeClock, RunningApp, SettingsFactory, running_app

API = "/api/v1/chatbot"
TIME = '[[call demo__current_time {"zone": "Europe/Lisbon"}]]'
CONVERT = '[[call demo__convert_units {"value": 5, "from_unit": "km", "to_unit": "mi"}]]'
TEMPLATES: dict[str, dict[str, Any]] = {
    "clock": {
        "name": "clock",
        "description": "Knows the time",
        "personalityPrompt": "You tell the time.",
        "model": "tool-model",
        "tools": ["demo/*"],
    },
    "converter": {
        "name": "converter",
        "description": "Converts units only",
        "personalityPrompt": "You convert units.",
        "tools": ["demo/convert_units"],
    },
    "faulty": {
        "name": "faulty",
        "description": "Tools that misbehave",
        "personalityPrompt": "You use odd tools.",
        "tools": ["faulty/*"],
    },
}


def stdio(module: str) -> dict[str, Any]:
    """An MCP_SERVERS entry that runs a module of this repository over stdio."""
    return {"command": sys.executable, "args": ["-m", module], "cwd": str(REPO_ROOT)}


@pytest.fixture(scope="module")
def demo_http() -> Iterator[str]:
    """The example server as a real streamable-HTTP server: its endpoint's URL."""
    port = free_port()
    args = [sys.executable, "-m", "mcp_servers.demo", "--http", "--port", str(port)]
    url = f"http://127.0.0.1:{port}/mcp"
    with running(start(args, env=clean_env(), ready_url=url, name="mcp-demo")):
        yield url


@pytest.fixture(autouse=True)
def tool_templates(seed_dir: Path) -> None:
    for key, doc in TEMPLATES.items():
        (seed_dir / "templates" / f"{key}.json").write_text(json.dumps(doc))


@pytest.fixture
def over_http(make_settings: SettingsFactory, demo_http: str) -> SettingsFactory:
    """Settings whose ``demo`` server is the HTTP one."""
    return lambda **extra: make_settings(mcp_servers={"demo": {"url": demo_http}}, **extra)


@pytest.fixture
async def chat(over_http: SettingsFactory, clock: FakeClock) -> AsyncIterator[RunningApp]:
    async with running_app(over_http(), clock) as running:
        yield running


async def history(chat: RunningApp | Live, session_id: str) -> list[dict[str, Any]]:
    page = await chat.client.get(f"{API}/session/{session_id}/messages")
    messages: list[dict[str, Any]] = page.json()["messages"]
    return messages


def offered(request: dict[str, Any]) -> list[str]:
    return [tool["function"]["name"] for tool in request.get("tools", [])]


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_a_tool_round_trip_through_the_example_server(
    make_settings: SettingsFactory,
    clock: FakeClock,
    llm: MockLLM,
    demo_http: str,
    transport: str,
) -> None:
    server = stdio("mcp_servers.demo") if transport == "stdio" else {"url": demo_http}
    async with running_app(make_settings(mcp_servers={"demo": server}), clock) as chat:
        session_id = await chat.create_session("clock")
        reply = await chat.send(session_id, f"What time is it in Lisbon? {TIME}")

    assert reply.status_code == 200, reply.text
    answer = reply.json()["response"]
    assert answer.startswith("Tool said: 20") and answer.endswith("(WET, Europe/Lisbon)")
    first, second = llm.chat_requests()
    assert offered(first) == ["demo__current_time", "demo__convert_units"]
    schema = first["tools"][0]["function"]["parameters"]
    assert schema["required"] == ["zone"]
    call_message, result_message = second["messages"][-2:]
    assert call_message["role"] == "assistant"
    assert call_message["tool_calls"][0]["function"] == {
        "name": "demo__current_time",
        "arguments": '{"zone": "Europe/Lisbon"}',
    }
    assert result_message == {
        "role": "tool",
        "tool_call_id": call_message["tool_calls"][0]["id"],
        "content": answer.removeprefix("Tool said: "),
    }
    [use] = reply.json()["assistant_message"]["tools"]
    assert use["name"] == "demo/current_time" and use["arguments"] == {"zone": "Europe/Lisbon"}
    assert use["is_error"] is False and use["round"] == 1 and use["id"]


async def test_a_tool_turn_counts_all_its_model_calls_under_the_model_asked_for(
    chat: RunningApp, llm: MockLLM
) -> None:
    # The call after the tool's result answers under a dated name of its model.
    llm.script(Reply(), snapshot_reply("It is noon.", "tool-model-2026-01-01"))
    session_id = await chat.create_session("clock")
    reply = (await chat.send(session_id, f"What time is it? {TIME}")).json()
    assert reply["assistant_message"]["model"] == "tool-model-2026-01-01"
    assert len(reply["assistant_message"]["tools"]) == 1 and len(llm.chat_requests()) == 2

    usage = (await chat.client.get(f"{API}/session/{session_id}")).json()["usage"]
    spent = {name: reply["usage"][name] for name in ("prompt_tokens", "completion_tokens")}
    assert usage["by_model"] == {
        "default/tool-model": {
            "provider": "default",
            "model": "tool-model",
            **spent,
            "total_tokens": reply["usage"]["total_tokens"],
            "turns": 1,
            "calls": 0,
            "cost_micros": None,  # tool-model has no price
            "calls_cost_micros": 0,
            "unpriced": 1,
        }
    }
    assert {name: usage[name] for name in spent} == spent  # both calls, once


async def test_stored_calls_and_results_are_replayed_in_order_into_the_next_prompt(
    chat: RunningApp, llm: MockLLM
) -> None:
    session_id = await chat.create_session("clock")
    await chat.send(session_id, f"Convert, then tell the time. {CONVERT} {TIME}")
    await chat.send(session_id, "Thanks!")

    stored = (await history(chat, session_id))[1]
    assert [use["name"] for use in stored["tools"]] == ["demo/convert_units", "demo/current_time"]
    assert stored["tools"][0]["result"] == "5 km = 3.10686 mi"
    last_prompt = llm.chat_requests()[-1]["messages"]
    roles = [m["role"] for m in last_prompt]
    assert roles == ["system", "user", "assistant", "tool", "tool", "assistant", "user"]
    calls = last_prompt[2]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["demo__convert_units", "demo__current_time"]
    assert [m["tool_call_id"] for m in last_prompt[3:5]] == [c["id"] for c in calls]
    assert last_prompt[3]["content"] == "5 km = 3.10686 mi"
    assert last_prompt[5] == {"role": "assistant", "content": stored["content"]}


FIVE_KM = {
    "name": "demo__convert_units",
    "arguments": {"value": 5, "from_unit": "km", "to_unit": "mi"},
}
SAID = "Let me convert that."
ANSWER = "Tool said: 5 km = 3.10686 mi"


async def test_text_sent_with_calls_is_stored_and_replayed_with_its_round(
    chat: RunningApp, llm: MockLLM
) -> None:
    llm.script(Reply(content=SAID, tool_calls=[FIVE_KM]))
    session_id = await chat.create_session("clock")
    reply = (await chat.send(session_id, "5 km in miles?")).json()
    await chat.send(session_id, "Thanks!")

    # The user saw both texts (streamed as they came), so the reply keeps both, apart.
    assert reply["response"] == f"{SAID}\n\n{ANSWER}"
    stored = (await history(chat, session_id))[1]
    assert stored["content"] == reply["response"]
    assert [use.get("round_text") for use in stored["tools"]] == [SAID]
    last_prompt = llm.chat_requests()[-1]["messages"]
    assert [m["role"] for m in last_prompt] == [
        "system", "user", "assistant", "tool", "assistant", "user"
    ]  # fmt: skip
    calling, result, final = last_prompt[2:5]
    assert calling["content"] == SAID and len(calling["tool_calls"]) == 1
    assert result["tool_call_id"] == calling["tool_calls"][0]["id"]
    assert final == {"role": "assistant", "content": ANSWER}


async def test_streamed_text_before_a_call_is_apart_from_the_reply_and_adds_up_to_it(
    live_app: LiveFactory, demo_http: str, llm: MockLLM
) -> None:
    llm.script(Reply(content=SAID, tool_calls=[FIVE_KM]))
    async with live_app(mcp_servers={"demo": {"url": demo_http}}) as live:
        session_id = await live.create_session("clock")
        async with live.stream(session_id, "5 km in miles?", body={"client_message_id": "k"}) as r:
            events = await collect(r)
        async with live.stream(session_id, "5 km in miles?", body={"client_message_id": "k"}) as r:
            replayed = await collect(r)

    for turn in (events, replayed):
        kinds = [e.event for e in turn]
        call = kinds.index("tool_call")
        assert set(kinds[1:call]) == {"delta"} and kinds[call + 1] == "tool_result"
        deltas = [e.json()["content"] for e in turn if e.event == "delta"]
        before = "".join(deltas[: call - 1])
        assert before == SAID
        done = turn[-1].json()
        assert done["response"] == "".join(deltas) == f"{SAID}\n\n{ANSWER}"
    assert replayed[-1].json()["replayed"] is True


async def test_a_streamed_turn_shows_each_call_and_result_before_the_reply(
    live_app: LiveFactory, demo_http: str
) -> None:
    async with live_app(mcp_servers={"demo": {"url": demo_http}}) as live:
        session_id = await live.create_session("clock")
        async with live.stream(session_id, f"Time? {TIME}") as response:
            events = await collect(response)

    kinds = [e.event for e in events]
    assert kinds[:3] == ["start", "tool_call", "tool_result"] and kinds[-1] == "done"
    assert set(kinds[3:-1]) == {"delta"}
    call, result = events[1].json(), events[2].json()
    assert call == {
        "id": call["id"],
        "name": "demo/current_time",
        "server": "demo",
        "tool": "current_time",
        "arguments": {"zone": "Europe/Lisbon"},
        "round": 1,
    }
    assert result["id"] == call["id"] and result["is_error"] is False
    assert "".join(e.json()["content"] for e in events[3:-1]) == "Tool said: " + result["result"]
    assert events[-1].json()["assistant_message"]["tools"][0]["result"] == result["result"]
    assert [int(e.id or -1) for e in events] == list(range(len(events)))


async def test_a_websocket_gets_tool_frames_and_other_sockets_see_them_too(
    live_app: LiveFactory, demo_http: str
) -> None:
    async with live_app(mcp_servers={"demo": {"url": demo_http}}) as live:
        session_id = await live.create_session("clock")
        url = live.url.replace("http://", "ws://") + f"{API}/session/{session_id}/ws"
        async with websockets.connect(url) as sender, websockets.connect(url) as watcher:
            for socket in (sender, watcher):
                assert json.loads(await socket.recv())["type"] == "chat_history"
            frame = {
                "type": "user_message",
                "message": f"Time? {CONVERT}",
                "client_message_id": "m1",
            }
            await sender.send(json.dumps(frame))
            sent = await _frames_until(sender, "backend_status")
            seen = await _frames_until(watcher, "backend_status")

    for frames in (sent, seen):
        types = [f["type"] for f in frames if f["type"] != "turn_started"]
        assert types[:2] == ["tool_call", "tool_result"], types
        assert types[-2:] == ["ai_response", "backend_status"]
        result = next(f for f in frames if f["type"] == "tool_result")
        assert result["result"] == "5 km = 3.10686 mi" and result["client_message_id"] == "m1"


async def _frames_until(socket: Any, last: str) -> list[dict[str, Any]]:
    frames = []
    while True:
        frame = json.loads(await socket.recv())
        frames.append(frame)
        if frame["type"] == last:
            return frames


async def test_a_failing_a_slow_and_a_wrongly_called_tool_give_the_model_errors(
    make_settings: SettingsFactory, clock: FakeClock, llm: MockLLM
) -> None:
    settings = make_settings(
        mcp_servers={"faulty": stdio("testkit.mcp_faulty")},
        tool_timeout_seconds=1.5,
        tool_result_max_chars=100,
    )
    calls = (
        '[[call faulty__crash {}]] [[call faulty__slow {"seconds": 30}]] '
        '[[call faulty__slow {"seconds": "soon"}]] [[call faulty__huge {"chars": 500}]] '
        "[[call faulty__missing {}]]"
    )
    async with running_app(settings, clock) as chat:
        session_id = await chat.create_session("faulty")
        reply = await chat.send(session_id, calls)

    assert reply.status_code == 200, reply.text
    uses = reply.json()["assistant_message"]["tools"]
    assert [(u["tool"], u["is_error"]) for u in uses] == [
        ("crash", True),
        ("slow", True),
        ("slow", True),
        ("huge", False),
        ("missing", True),
    ]
    assert uses[0]["result"].startswith("Error executing tool crash")
    assert uses[1]["result"] == "The tool did not answer within 1.5 s"
    assert uses[2]["result"].startswith("Invalid arguments: seconds:")
    assert uses[3]["result"] == "x" * 100 + "… [truncated]"
    assert uses[4]["result"] == "There is no tool named 'faulty__missing'"
    tool_messages = [m for m in llm.chat_requests()[-1]["messages"] if m["role"] == "tool"]
    assert [m["content"] for m in tool_messages] == [u["result"] for u in uses]


async def test_calls_stop_after_the_round_limit_and_the_model_answers_without_tools(
    over_http: SettingsFactory, clock: FakeClock, llm: MockLLM
) -> None:
    loop = '[[loop demo__convert_units {"value": 1, "from_unit": "kg", "to_unit": "lb"}]]'
    async with running_app(over_http(tool_max_rounds=2), clock) as chat:
        session_id = await chat.create_session("clock")
        reply = await chat.send(session_id, f"Again and again {loop}")

    assert reply.status_code == 200
    requests = llm.chat_requests()
    assert [bool(r.get("tools")) for r in requests] == [True, True, False]
    assert [u["round"] for u in reply.json()["assistant_message"]["tools"]] == [1, 2]
    assert reply.json()["response"] == "Tool said: 1 kg = 2.20462 lb"
    usage = reply.json()["usage"]
    assert usage["prompt_tokens"] > sum(len(json.dumps(r["messages"])) // 8 for r in requests[:1])


async def test_a_personality_is_offered_only_the_tools_it_lists(
    chat: RunningApp, llm: MockLLM
) -> None:
    converter = await chat.create_session("converter")
    await chat.send(converter, f"Time? {TIME}")
    plain = await chat.create_session("plain")
    await chat.send(plain, f"Time? {TIME}")

    with_tools, without = llm.chat_requests()[0], llm.chat_requests()[-1]
    assert offered(with_tools) == ["demo__convert_units"]
    assert "tools" not in without
    stored = (await history(chat, converter))[1]
    assert stored["tools"][0]["result"] == "There is no tool named 'demo__current_time'"


async def test_a_resent_turn_is_replayed_with_its_tools_and_never_reruns_them(
    live_app: LiveFactory, demo_http: str, llm: MockLLM
) -> None:
    async with live_app(mcp_servers={"demo": {"url": demo_http}}) as live:
        session_id = await live.create_session("clock")
        body = {"client_message_id": "once"}
        first = await live.client.post(
            f"{API}/session/{session_id}/message", json={"message": CONVERT, **body}
        )
        async with live.stream(session_id, CONVERT, body=body) as response:
            events = await collect(response)

    assert len(llm.chat_requests()) == 2  # the first turn's two calls; the resend made none
    assert [e.event for e in events] == ["start", "tool_call", "tool_result", "delta", "done"]
    assert events[-1].json()["replayed"] is True
    assert events[2].json()["result"] == first.json()["assistant_message"]["tools"][0]["result"]


async def test_an_unreachable_server_leaves_the_turn_without_its_tools(
    make_settings: SettingsFactory, clock: FakeClock, llm: MockLLM
) -> None:
    gone = {"demo": {"url": f"http://127.0.0.1:{free_port()}/mcp"}}
    async with running_app(make_settings(mcp_servers=gone), clock) as chat:
        session_id = await chat.create_session("clock")
        reply = await chat.send(session_id, f"Time? {TIME}")

    assert reply.status_code == 200 and reply.json()["response"].startswith("Echo: Time?")
    assert "tools" not in llm.chat_requests()[0]


async def test_authoring_refuses_a_tool_of_an_unknown_server(chat: RunningApp) -> None:
    draft = {
        "name": "Gadget",
        "personalityPrompt": "You use gadgets.",
        "tools": ["demo/current_time", "nowhere/*", "bad pattern"],
    }
    response = await chat.client.post("/api/v1/personalities", json=draft)

    assert response.status_code == 422, response.text
    problems = {(tuple(p["loc"]), p["type"]) for p in response.json()["detail"]}
    assert (("body", "tools", 1), "unknown_tool_server") in problems
    assert (("body", "tools", 2), "string_pattern_mismatch") in problems
    assert not any(loc == ("body", "tools", 0) for loc, _ in problems)


async def test_the_ai_sdk_reader_shows_the_tool_parts(
    live_app: LiveFactory, demo_http: str, node_ai: Path
) -> None:
    async with live_app(mcp_servers={"demo": {"url": demo_http}}) as live:
        session_id = await live.create_session("clock")
        script = await run_node(node_ai, "send", live.url, session_id, "m1", f"Convert {CONVERT}")
        done = (await lines_of(script))[-1]["done"]

    assert done["tools"] == [
        {
            "name": "demo/convert_units",
            "state": "output-available",
            "input": {"value": 5, "from_unit": "km", "to_unit": "mi"},
            "output": "5 km = 3.10686 mi",
            "errorText": None,
        }
    ]
    assert done["reply"] == "Tool said: 5 km = 3.10686 mi"


async def test_tool_results_too_long_for_the_model_fail_the_turn_without_rerunning_tools(
    make_settings: SettingsFactory, clock: FakeClock, llm: MockLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The question fits; with the tool's 5,000 characters, not. (Undone after the test: the
    # mock serves the whole run.)
    monkeypatch.setattr(llm.config, "context_chars", 3000)
    settings = make_settings(mcp_servers={"faulty": stdio("testkit.mcp_faulty")})
    async with running_app(settings, clock) as chat:
        session_id = await chat.create_session("faulty")
        await chat.send(session_id, "An earlier turn, so there is history to drop.")
        llm.reset()
        reply = await chat.send(session_id, '[[call faulty__huge {"chars": 5000}]]')
        stored = await history(chat, session_id)

    assert reply.status_code == 422 and reply.json()["error"]["code"] == "context_too_long"
    assert "tool results" in reply.json()["error"]["message"]
    assert len(llm.chat_requests()) == 2  # no second attempt with less history: tools ran once
    assert len(stored) == 2  # nothing of the failed turn is stored
