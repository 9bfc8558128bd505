"""The messages sent to the LLM for one turn (DATA.md, "Prompt sent to the LLM")."""

from __future__ import annotations

from collections.abc import Iterable

from services.llm import ChatMessage
from services.models import SessionRecord, StoredMessage


def build_prompt(
    session: SessionRecord, history: Iterable[StoredMessage], user_text: str
) -> list[ChatMessage]:
    """System prompt (rules, then personality), optional recap, last-N history, the new message.

    The session's welcome message opens the conversation as the assistant's, while the window
    still reaches back to the first turn. User text only ever enters ``user`` messages.
    """
    messages: list[ChatMessage] = [{"role": "system", "content": session.system_prompt}]
    if session.summary:
        recap = f"Summary of the earlier conversation: {session.summary}"
        messages.append({"role": "system", "content": recap})
    window = list(history)
    from_the_start = window[0].seq == 0 if window else session.message_count == 0
    if session.welcome_message and from_the_start:
        messages.append({"role": "assistant", "content": session.welcome_message})
    messages.extend({"role": m.role, "content": m.content} for m in window)
    messages.append({"role": "user", "content": user_text})
    return messages
