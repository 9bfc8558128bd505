"""The tool loop: ask the model, run the tools it calls, give it their results, ask again.

A personality with ``tools`` is offered its MCP tools on every model call of a turn, up to
``TOOL_MAX_ROUNDS`` rounds of calls; the call after the last round (or after the turn's
``TOOL_TURN_DEADLINE_SECONDS``) offers none, so the model answers in words. A tool that
fails, times out (``TOOL_TIMEOUT_SECONDS``) or is called with arguments that do not fit its
input schema gives the model an error result; the turn goes on. The returned ``Completion``
is the whole turn: every round's text (as streamed, apart: ``ROUND_SEPARATOR`` before a round's
text when an earlier round wrote some), every call and result in order (a round's first result
keeps the text written with its calls), and the tokens of every model call.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from services.core.errors import ContextTooLong, ToolResultsTooLong
from services.core.records import Sampling, ToolCall, ToolUse, Usage
from services.core.tool_config import allowed
from services.llm.client import (
    ChatMessage,
    Completion,
    DeltaSink,
    LLMClient,
    LLMToolCall,
    ToolDefinitions,
)
from services.llm.tools import images
from services.llm.tools.images import ImageTool
from services.llm.tools.mcp import McpServers, ToolOutcome, ToolSpec
from services.llm.tools.messages import ROUND_SEPARATOR, exchange

logger = logging.getLogger(__name__)
ToolSink = Callable[[ToolCall | ToolUse], None]  # a call as it starts, then its result


@dataclass(frozen=True, slots=True)
class ToolLimits:
    """``TOOL_MAX_ROUNDS``, ``TOOL_TIMEOUT_SECONDS``, ``TOOL_TURN_DEADLINE_SECONDS``,
    ``TOOL_RESULT_MAX_CHARS``."""

    max_rounds: int = 4
    call_timeout: float = 10.0
    turn_deadline: float = 60.0
    result_max_chars: int = 8000


class ToolLoop:
    """Runs a turn's model calls and tool calls (see the module docstring)."""

    def __init__(
        self,
        llm: LLMClient,
        servers: McpServers,
        limits: ToolLimits,
        *,
        image_tool: ImageTool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._llm = llm
        self._servers = servers
        self._images = image_tool
        self._limits = limits
        self._clock = clock

    async def run(
        self,
        messages: list[ChatMessage],
        sampling: Sampling,
        *,
        stream: bool,
        on_delta: DeltaSink,
        on_tool: ToolSink,
        before_tools: Callable[[], Awaitable[None]],
    ) -> Completion:
        """The turn's reply; ``before_tools`` is awaited before the first tool runs (the
        turn's claim: a replayed turn never runs its tools again)."""
        listed = await self._servers.specs(sampling.tools)
        if allowed(sampling.tools, images.SPEC.server, images.SPEC.tool):
            listed.append(images.SPEC)
        specs = {spec.function: spec for spec in listed}
        definitions = [spec.definition() for spec in specs.values()]
        ends = self._clock() + self._limits.turn_deadline
        prompt, done, apart = list(messages), _Turn(), _Apart(on_delta)
        for round_number in range(1, self._limits.max_rounds + 2):
            offered = definitions if self._offers(round_number, ends) else []
            apart.next_round()
            try:
                completion = await self._ask(prompt, sampling, stream, apart, offered)
            except ContextTooLong as error:
                if round_number == 1:
                    raise  # the turn may retry with less history: nothing has run yet
                raise ToolResultsTooLong(
                    "The tool results made the conversation too long for the model; lower "
                    "TOOL_RESULT_MAX_CHARS or start a new session"
                ) from error
            done.add(completion)
            if not completion.tool_calls or not offered:
                break
            await before_tools()
            calls = [_call(raw, specs, round_number) for raw in completion.tool_calls]
            for call, _ in calls:
                on_tool(call)
            uses = await asyncio.gather(
                *(self._use(call, spec, ends, sampling) for call, spec in calls)
            )
            if completion.content:  # kept with the round, to replay it in its place later
                uses[0] = dataclasses.replace(uses[0], round_text=completion.content)
            for use in uses:
                on_tool(use)
            done.uses += uses
            prompt += exchange(uses, completion.content)
        return done.completion()

    def _offers(self, round_number: int, ends: float) -> bool:
        return round_number <= self._limits.max_rounds and self._clock() < ends

    async def _ask(
        self,
        prompt: list[ChatMessage],
        sampling: Sampling,
        stream: bool,
        on_delta: DeltaSink,
        tools: ToolDefinitions,
    ) -> Completion:
        if stream:
            return await self._llm.stream(prompt, sampling, on_delta=on_delta, tools=tools)
        completion = await self._llm.complete(prompt, sampling, tools=tools)
        if completion.content:
            on_delta(completion.content)
        return completion

    async def _use(
        self, call: ToolCall, spec: ToolSpec | str, ends: float, sampling: Sampling
    ) -> ToolUse:
        if isinstance(spec, str):  # why the call cannot run
            return ToolUse(call, spec, is_error=True)
        timeout = min(self._limits.call_timeout, ends - self._clock())
        if timeout <= 0:
            outcome = ToolOutcome("The turn ran out of time for tools", True)
        else:
            started = self._clock()
            outcome = await self._run(spec, call.arguments, timeout, sampling)
            logger.info(
                "tool %s: %s in %.0f ms",
                call.name,
                "error" if outcome.is_error else "ok",
                (self._clock() - started) * 1000,
            )
        text = outcome.text
        if len(text) > self._limits.result_max_chars:
            text = text[: self._limits.result_max_chars] + "… [truncated]"
        return ToolUse(call, text, outcome.is_error, outcome.images)

    async def _run(
        self, spec: ToolSpec, arguments: dict[str, Any], within: float, sampling: Sampling
    ) -> ToolOutcome:
        if spec is not images.SPEC:
            return await self._servers.call(spec, arguments, within=within)
        try:
            async with asyncio.timeout(within):
                return await self._images.call(arguments, sampling)
        except TimeoutError:
            return ToolOutcome(f"The tool did not answer within {within:g} s", True)


class _Apart:
    """Passes each round's text on, ``ROUND_SEPARATOR`` first when an earlier round wrote
    some, so the deltas add up to the reply (``_Turn.completion``)."""

    def __init__(self, on_delta: DeltaSink) -> None:
        self._on_delta = on_delta
        self._said = False  # an earlier piece of the turn
        self._round_said = False  # an earlier piece of this round

    def next_round(self) -> None:
        self._round_said = False

    def __call__(self, piece: str) -> None:
        if not piece:
            return
        if self._said and not self._round_said:
            self._on_delta(ROUND_SEPARATOR)
        self._said = self._round_said = True
        self._on_delta(piece)


class _Turn:
    """What the rounds add up to."""

    def __init__(self) -> None:
        self.parts: list[Completion] = []
        self.uses: list[ToolUse] = []

    def add(self, completion: Completion) -> None:
        self.parts.append(completion)

    def completion(self) -> Completion:
        last = self.parts[-1]
        if not self.uses:
            return last
        usage = Usage(
            sum(p.usage.prompt_tokens for p in self.parts),
            sum(p.usage.completion_tokens for p in self.parts),
            sum(p.usage.total_tokens for p in self.parts),
            sum(p.usage.cached_tokens for p in self.parts),
        )
        return Completion(
            content=ROUND_SEPARATOR.join(p.content for p in self.parts if p.content),
            usage=usage,
            model=last.model,
            usage_reported=all(p.usage_reported for p in self.parts),
            provider=last.provider,
            tool_uses=tuple(self.uses),
            # The turn counts under the target of the call that wrote its reply (usage by
            # model), as the reply names that call's provider and model.
            asked_model=last.asked_model,
        )


def _call(
    raw: LLMToolCall, specs: dict[str, ToolSpec], round_number: int
) -> tuple[ToolCall, ToolSpec | str]:
    """The call as stored, and its tool, or why it cannot run (unknown tool, bad arguments)."""
    spec = specs.get(raw.name)
    server, _, tool = raw.name.partition("__")
    if spec is not None:
        server, tool = spec.server, spec.tool
    arguments: Any
    try:
        arguments = json.loads(raw.arguments or "{}")
    except ValueError:
        arguments = None
    if not isinstance(arguments, dict):
        call = ToolCall(raw.id, server, tool, {}, round_number)
        return call, "The arguments were not a JSON object"
    call = ToolCall(raw.id, server, tool, arguments, round_number)
    if spec is None:
        return call, f"There is no tool named {raw.name!r}"
    problem = spec.argument_problem(arguments)
    return call, spec if problem is None else f"Invalid arguments: {problem}"
