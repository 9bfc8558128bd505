"""ToolLoop: rounds of model calls and tool calls, the round limit, the turn's deadline, tool
errors as results, each round's text kept apart; the service's model client talks to the mock
LLM (which scripts the calls), the tools are a small in-process stand-in for the MCP servers."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from services.core.errors import ContextTooLong, ToolResultsTooLong
from services.core.records import Sampling, ToolCall, ToolUse, Usage
from services.core.tool_config import allowed
from services.llm.client import (
    ChatMessage,
    Completion,
    DeltaSink,
    GeneratedImage,
    LLMClient,
    LLMToolCall,
    ToolDefinitions,
)
from services.llm.tools.images import ImageTool
from services.llm.tools.loop import ToolLimits, ToolLoop
from services.llm.tools.mcp import McpServers, ToolOutcome, ToolSpec
from services.llm.tools.messages import ROUND_SEPARATOR
from testkit.mock_llm import MockLLM, Reply
from tests.conftest import FakeClock

TEXT_SCHEMA = {
    "type": "object",
    "properties": {"text": {"type": "string"}},
    "required": ["text"],
}
ECHO: dict[str, Any] = {"name": "demo__echo", "arguments": {"text": "hi"}}


class Tools(McpServers):
    """Tools in this process: ``demo/echo``, ``demo/fail``, ``demo/huge``, ``demo/slow``
    (which takes the turn's clock past any deadline) and ``other/secret``."""

    def __init__(self, clock: FakeClock, log: list[str]) -> None:
        super().__init__({})
        self._clock, self.log = clock, log
        self._specs = [
            ToolSpec("demo", tool, f"The {tool} tool", TEXT_SCHEMA if tool == "echo" else {})
            for tool in ("echo", "fail", "huge", "slow")
        ] + [ToolSpec("other", "secret", "Not for every personality", {})]

    async def specs(self, patterns: tuple[str, ...]) -> list[ToolSpec]:
        return [spec for spec in self._specs if allowed(patterns, spec.server, spec.tool)]

    async def call(
        self, spec: ToolSpec, arguments: dict[str, Any], *, within: float
    ) -> ToolOutcome:
        self.log.append(f"ran {spec.name}")
        if spec.tool == "fail":
            return ToolOutcome("Error executing tool fail", True)
        if spec.tool == "huge":
            return ToolOutcome("x" * 500)
        if spec.tool == "slow":
            self._clock.advance(1000)
            return ToolOutcome("late")
        return ToolOutcome(f"echo: {arguments['text']}")


class Turn:
    """One run of the loop, and what it handed on."""

    def __init__(self, llm: LLMClient, clock: FakeClock, limits: ToolLimits) -> None:
        self.log: list[str] = []
        self.deltas: list[str] = []
        self.tools = Tools(clock, self.log)
        self.loop = ToolLoop(
            llm,
            self.tools,
            limits,
            image_tool=ImageTool(llm, model="image-model", size="256x256", max_bytes=10**6),
            clock=lambda: clock.now.timestamp(),
        )
        self.before_tools_hook: Callable[[], None] | None = None

    async def run(
        self, message: str, *, tools: tuple[str, ...] = ("demo/*",), stream: bool = False
    ) -> Completion:
        sampling = Sampling("tool-model", 0.7, 100, 0.0, 0.0, tools=tools)
        prompt: list[ChatMessage] = [
            {"role": "system", "content": "You use tools."},
            {"role": "user", "content": message},
        ]
        return await self.loop.run(
            prompt,
            sampling,
            stream=stream,
            on_delta=self.deltas.append,
            on_tool=self.on_tool,
            before_tools=self.before_tools,
        )

    def on_tool(self, event: ToolCall | ToolUse) -> None:
        if isinstance(event, ToolCall):
            self.log.append(f"call {event.name}")
        else:
            self.log.append(f"result {event.call.name}")

    async def before_tools(self) -> None:
        self.log.append("before tools")
        if self.before_tools_hook is not None:
            self.before_tools_hook()


def offered(request: dict[str, Any]) -> list[str]:
    return [tool["function"]["name"] for tool in request.get("tools", [])]


def tool_messages(request: dict[str, Any]) -> list[str]:
    return [m["content"] for m in request["messages"] if m["role"] == "tool"]


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_a_round_runs_the_called_tool_and_gives_the_model_its_result(
    model: LLMClient, llm: MockLLM, clock: FakeClock, stream: bool
) -> None:
    llm.script(Reply(tool_calls=[ECHO]))
    turn = Turn(model, clock, ToolLimits())
    reply = await turn.run("Say hi through the tool", stream=stream)

    assert turn.log == ["before tools", "call demo/echo", "ran demo/echo", "result demo/echo"]
    (use,) = reply.tool_uses
    assert (use.call.server, use.call.tool, use.call.arguments, use.call.round) == (
        "demo",
        "echo",
        {"text": "hi"},
        1,
    )
    assert (use.result, use.is_error, use.round_text) == ("echo: hi", False, "")
    assert reply.content == "Tool said: echo: hi" == "".join(turn.deltas)
    first, second = llm.chat_requests()
    assert offered(first) == offered(second) == ["demo__echo", "demo__fail", "demo__huge",
                                                 "demo__slow"]  # fmt: skip
    calling = second["messages"][-2]
    assert calling["role"] == "assistant" and calling["tool_calls"][0]["id"] == use.call.id
    assert second["messages"][-1] == {
        "role": "tool",
        "tool_call_id": use.call.id,
        "content": "echo: hi",
    }


async def test_a_personality_is_offered_only_the_tools_it_lists(
    model: LLMClient, llm: MockLLM, clock: FakeClock
) -> None:
    turn = Turn(model, clock, ToolLimits())
    await turn.run("hello", tools=("demo/echo",))
    assert offered(llm.chat_requests()[0]) == ["demo__echo"]
    await turn.run("hello", tools=())
    assert "tools" not in llm.chat_requests()[1]
    assert turn.log == []


async def test_calls_stop_after_the_round_limit_and_the_model_answers_without_tools(
    model: LLMClient, llm: MockLLM, clock: FakeClock
) -> None:
    turn = Turn(model, clock, ToolLimits(max_rounds=2))
    reply = await turn.run('Again [[loop demo__echo {"text": "more"}]]')
    assert [bool(offered(r)) for r in llm.chat_requests()] == [True, True, False]
    assert [use.call.round for use in reply.tool_uses] == [1, 2]
    assert reply.content == "Tool said: echo: more"


async def test_no_tools_are_offered_once_the_turn_s_deadline_has_passed(
    model: LLMClient, llm: MockLLM, clock: FakeClock
) -> None:
    turn = Turn(model, clock, ToolLimits(turn_deadline=60))
    reply = await turn.run("Slowly [[loop demo__slow {}]]")
    assert [bool(offered(r)) for r in llm.chat_requests()] == [True, False]
    assert [use.result for use in reply.tool_uses] == ["late"]
    assert reply.content == "Tool said: late"


async def test_a_tool_the_turn_has_no_time_left_for_is_not_run(
    model: LLMClient, llm: MockLLM, clock: FakeClock
) -> None:
    llm.script(Reply(tool_calls=[ECHO]))
    turn = Turn(model, clock, ToolLimits(turn_deadline=60))
    turn.before_tools_hook = lambda: clock.advance(61)  # the model call took the time
    reply = await turn.run("hi")
    (use,) = reply.tool_uses
    assert (use.result, use.is_error) == ("The turn ran out of time for tools", True)
    assert "ran demo/echo" not in turn.log


async def test_failing_unknown_and_wrongly_called_tools_give_the_model_errors(
    model: LLMClient, llm: MockLLM, clock: FakeClock
) -> None:
    calls: list[dict[str, Any]] = [
        {"name": "demo__fail", "arguments": {}},
        {"name": "demo__echo", "arguments": {"text": 5}},
        {"name": "demo__echo", "arguments": "[1]"},
        {"name": "demo__huge", "arguments": {}},
        {"name": "demo__missing", "arguments": {}},
        {"name": "other__secret", "arguments": {}},  # a tool this personality does not list
        ECHO,
    ]
    llm.script(Reply(tool_calls=calls))
    turn = Turn(model, clock, ToolLimits(result_max_chars=100))
    reply = await turn.run("Use them all")

    results = [(u.call.tool, u.result, u.is_error) for u in reply.tool_uses]
    assert results == [
        ("fail", "Error executing tool fail", True),
        ("echo", "Invalid arguments: text: 5 is not of type 'string'", True),
        ("echo", "The arguments were not a JSON object", True),
        ("huge", "x" * 100 + "… [truncated]", False),
        ("missing", "There is no tool named 'demo__missing'", True),
        ("secret", "There is no tool named 'other__secret'", True),
        ("echo", "echo: hi", False),
    ]
    assert [line for line in turn.log if line.startswith("ran ")] == [
        "ran demo/fail",
        "ran demo/huge",
        "ran demo/echo",
    ]
    assert tool_messages(llm.chat_requests()[-1]) == [result for _, result, _ in results]
    assert reply.content.startswith("Tool said: Error executing tool fail | ")


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_text_written_with_calls_is_kept_with_its_round_and_apart_from_the_reply(
    model: LLMClient, llm: MockLLM, clock: FakeClock, stream: bool
) -> None:
    llm.script(Reply(content="Let me check.", tool_calls=[ECHO]))
    turn = Turn(model, clock, ToolLimits())
    reply = await turn.run("hi", stream=stream)
    assert reply.content == f"Let me check.{ROUND_SEPARATOR}Tool said: echo: hi"
    assert "".join(turn.deltas) == reply.content
    assert ROUND_SEPARATOR in turn.deltas
    assert [use.round_text for use in reply.tool_uses] == ["Let me check."]
    assert llm.chat_requests()[1]["messages"][-2]["content"] == "Let me check."


async def test_a_prompt_too_long_before_any_tool_ran_may_be_retried_by_the_turn(
    model: LLMClient, llm: MockLLM, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(llm.config, "context_chars", 300)
    turn = Turn(model, clock, ToolLimits())
    with pytest.raises(ContextTooLong) as raised:
        await turn.run("y" * 400)
    assert type(raised.value) is ContextTooLong
    assert turn.log == []


async def test_tool_results_too_long_for_the_model_fail_the_turn_after_one_run(
    model: LLMClient, llm: MockLLM, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(llm.config, "context_chars", 300)
    turn = Turn(model, clock, ToolLimits())
    with pytest.raises(ToolResultsTooLong):
        await turn.run("[[call demo__huge {}]]")
    assert turn.log.count("ran demo/huge") == 1
    assert len(llm.chat_requests()) == 2


class Scripted:
    """A model that answers these completions in turn (the loop's sums are its own)."""

    provider = "openai-compatible"

    def __init__(self, *answers: Completion) -> None:
        self.answers = list(answers)

    async def complete(
        self, messages: list[ChatMessage], sampling: Sampling, *, tools: ToolDefinitions = ()
    ) -> Completion:
        return self.answers.pop(0)

    async def stream(
        self,
        messages: list[ChatMessage],
        sampling: Sampling,
        *,
        on_delta: DeltaSink,
        tools: ToolDefinitions = (),
    ) -> Completion:
        answer = self.answers.pop(0)
        on_delta(answer.content)
        return answer

    async def generate_image(
        self, prompt: str, sampling: Sampling, *, model: str, size: str
    ) -> GeneratedImage:
        raise AssertionError("not used")

    async def close(self) -> None:
        pass


async def test_the_turn_s_usage_is_every_model_call_s_and_its_reply_the_last_call_s(
    clock: FakeClock,
) -> None:
    calling = LLMToolCall("call_1", "demo__echo", json.dumps({"text": "hi"}))
    scripted = Scripted(
        Completion("", Usage(10, 1, 11), "m-1", tool_calls=(calling,), asked_model="tool-model"),
        Completion("Done", Usage(20, 2, 22), "m-2", provider="backup", asked_model="fallback"),
    )
    reply = await Turn(scripted, clock, ToolLimits()).run("hi")
    assert reply.usage == Usage(30, 3, 33)
    assert (reply.content, reply.model, reply.provider, reply.asked_model) == (
        "Done",
        "m-2",
        "backup",
        "fallback",
    )
    assert [use.call.id for use in reply.tool_uses] == ["call_1"]
