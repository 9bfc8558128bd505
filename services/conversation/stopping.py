"""Stopping a turn in flight (``POST .../stop``, a ``stop`` frame): its model call is cancelled,
which closes the upstream request, and the text that came before is stored as the reply with
``finish_reason: "stopped"``. A stop asked of a replica that does not run the turn reaches
the one that does through a ``StopRelay`` (``services/redis/bus.py``).
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from services.conversation.turn_events import Turn
from services.core.records import Sampling, ToolUse
from services.llm.client import ChatMessage, Completion, estimate_usage

STOPPED = "stopped"  # the finish_reason of a reply cut short by a stop


class StopRelay(Protocol):
    """Carries a stop to the replica running the session's turn."""

    async def request_stop(self, session_id: str) -> bool:
        """Ask the other replicas to stop the session's turn; whether one runs it (and stops
        it)."""


def partial_completion(turn: Turn, messages: list[ChatMessage], sampling: Sampling) -> Completion:
    """The reply of a stopped turn: the text and tool results its clients were sent (read once,
    at the stop: nothing is gathered per delta), its usage estimated (the provider reports
    none for a request closed part-way)."""
    text = "".join(event.content for event in turn.events if event.kind == "delta")
    uses = tuple(
        event.tool
        for event in turn.events
        if event.kind == "tool_result" and isinstance(event.tool, ToolUse)
    )
    return Completion(
        content=text,
        usage=estimate_usage(messages, text),
        model=sampling.model,
        usage_reported=False,
        provider=sampling.provider,
        tool_uses=uses,
        asked_model=sampling.model,
        stopped=True,
    )


async def unless_stopped(turn: Turn, asking: asyncio.Task[Completion]) -> Completion | None:
    """The model's reply, or None when a stop cancelled the call (not when the awaiting task
    is being cancelled itself: that goes on up)."""
    try:
        return await asking
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if not turn.stopped or (current is not None and current.cancelling()):
            raise
        return None
