"""Tool calls and results as chat messages: what the model is sent after it called tools,
in a turn and again when the turn is history (docs/tools.md, "What the model receives")."""

from __future__ import annotations

import json
from collections.abc import Sequence
from itertools import groupby

from services.core.records import ToolUse
from services.core.tool_config import function_name
from services.llm.client import ChatMessage

# Between the texts of a turn's rounds: in the reply's content and in its deltas, so text the
# model wrote with its calls never runs into the next round's ("…for you.Tool said").
ROUND_SEPARATOR = "\n\n"


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
    """A stored reply that called tools: each round's exchange, carrying the text the model
    wrote with those calls, then the rest of the reply: the text of the round that answered."""
    messages: list[ChatMessage] = []
    said: list[str] = []
    for _, grouped in groupby(uses, key=lambda use: use.call.round):
        round_uses = list(grouped)
        text = round_uses[0].round_text
        messages += exchange(round_uses, text)
        if text:
            said.append(text)
    messages.append({"role": "assistant", "content": _last_round_text(reply, said)})
    return messages


def _last_round_text(reply: str, said: list[str]) -> str:
    """The reply without the rounds' texts it starts with (a reply stored before round texts
    were kept has none: it is sent whole, as it was)."""
    if not said:
        return reply
    head = ROUND_SEPARATOR.join(said)
    if reply == head:
        return ""
    return reply.removeprefix(head + ROUND_SEPARATOR)
