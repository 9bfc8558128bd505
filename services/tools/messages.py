"""Tool calls and results as chat messages: what the model is sent after it called tools,
in a turn and again when the turn is history (docs/tools.md, "What the model receives")."""

from __future__ import annotations

import json
from collections.abc import Sequence
from itertools import groupby

from services.llm import ChatMessage
from services.models import ToolUse
from services.tools.config import function_name


def exchange(uses: Sequence[ToolUse], content: str = "") -> list[ChatMessage]:
    """One round: the assistant's message calling the tools, then each result, in order.
    A call and its result always travel together: never a result without its call."""
    calls = [
        {
            "id": use.call.id,
            "type": "function",
            "function": {
                "name": function_name(use.call.server, use.call.tool),
                "arguments": json.dumps(use.call.arguments, ensure_ascii=False),
            },
        }
        for use in uses
    ]
    messages: list[ChatMessage] = [
        {"role": "assistant", "content": content or None, "tool_calls": calls}
    ]
    messages += [
        {"role": "tool", "tool_call_id": use.call.id, "content": use.result} for use in uses
    ]
    return messages


def replayed_reply(uses: Sequence[ToolUse], reply: str) -> list[ChatMessage]:
    """A stored reply that called tools: each round's exchange, then the reply's text."""
    messages: list[ChatMessage] = []
    for _, round_uses in groupby(uses, key=lambda use: use.call.round):
        messages += exchange(list(round_uses))
    messages.append({"role": "assistant", "content": reply})
    return messages
