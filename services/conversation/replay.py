"""A stored turn replayed: a resend of a ``client_message_id`` gets its stored reply as the
events it first came as; the ``TurnResult`` of a stored turn, and its log line.

A resend with other text than the stored turn's is an ``IdempotencyConflict``.
"""

from __future__ import annotations

import logging

from services.conversation.turn_events import Turn
from services.core.errors import IdempotencyConflict
from services.core.records import SessionRecord, StoredTurn, ToolUse, TurnResult
from services.llm.client import Completion
from services.llm.tools.messages import ROUND_SEPARATOR


def replay(
    turn: Turn, record: SessionRecord, stored: StoredTurn, *, started: bool = False
) -> TurnResult:
    """Emit a stored turn's events into ``turn`` (its ``start`` too unless ``started``) and
    return its result; a resend with other text is a conflict."""
    if stored.user.content != turn.text:
        raise conflict(stored.user.client_message_id)
    result = turn_result(record, stored, replayed=True)
    turn.replayed = True
    if not started:
        turn.emit("start", turn=result.message_count)
    replay_reply(turn, stored.assistant.tools, result.reply)
    turn.emit("done", result=result)
    return result


def replay_reply(turn: Turn, uses: tuple[ToolUse, ...], reply: str) -> None:
    """A stored reply's deltas and tool events in the order they first came: the text written
    with a round's calls before them (``ToolUse.round_text``), the rest after the last."""
    texts = [use.round_text for use in uses if use.round_text]
    placed = bool(texts) and reply.startswith(ROUND_SEPARATOR.join(texts))
    sent = 0
    for use in uses:
        if placed and use.round_text:
            piece = (ROUND_SEPARATOR if sent else "") + use.round_text
            turn.emit("delta", content=piece)
            sent += len(piece)
        turn.emit("tool_call", tool=use.call)
        turn.emit("tool_result", tool=use)
    if reply[sent:] or not sent:
        turn.emit("delta", content=reply[sent:])


def turn_result(
    record: SessionRecord,
    stored: StoredTurn,
    *,
    replayed: bool,
    completion: Completion | None = None,
    seconds: float = 0.0,
) -> TurnResult:
    """The result of a stored turn (with the completion's model when it was just written)."""
    return TurnResult(
        session_id=record.session_id,
        reply=stored.assistant.content,
        # The turn's own number, from its position (exact: seqs have no gaps but on Firebase
        # after a crash between a seq claim and the turn's write).
        message_count=stored.message_count,
        replayed=replayed,
        usage=stored.assistant.usage,
        model=completion.model if completion else record.sampling.model,
        user_message=stored.user,
        assistant_message=stored.assistant,
        latency_ms=seconds * 1000,
    )


def conflict(client_message_id: str | None) -> IdempotencyConflict:
    """The error for a ``client_message_id`` resent with another message."""
    return IdempotencyConflict(
        f"client_message_id {client_message_id!r} was already used with a different message"
    )


def log_stored(
    logger: logging.Logger,
    turn: Turn,
    record: SessionRecord,
    result: TurnResult,
    completion: Completion,
    *,
    content: bool,
) -> None:
    """One line per stored turn on ``logger``, its fields also as the record's attributes
    (JSON logs); the text of the messages only with ``content`` (LOG_MESSAGE_CONTENT=true:
    they are private)."""
    if not logger.isEnabledFor(logging.INFO):
        return
    usage = result.usage
    fields: dict[str, object] = {
        "session_id": turn.session_id,
        "turn": result.message_count,
        "template": record.template_id,
        "provider": completion.provider,
        "model": completion.model,
        "prompt_tokens": usage.prompt_tokens if usage else None,
        "completion_tokens": usage.completion_tokens if usage else None,
        "latency_ms": round(result.latency_ms, 1),
    }
    line = (
        "turn %(session_id)s #%(turn)d stored: template=%(template)s provider=%(provider)s "
        "model=%(model)s tokens=%(prompt_tokens)s+%(completion_tokens)s "
        "latency=%(latency_ms).1fms"
    )
    if content:
        texts = {"message": turn.text, "reply": result.reply}
        logger.info(line + ": %(message)r -> %(reply)r", {**fields, **texts}, extra=fields)
    else:
        logger.info(line, fields, extra=fields)
