"""The PostgreSQL store's rows as records and back (shared by every role's file): the
columns read, a session row as a ``SessionRecord``, a message row (or a variant's message)
as a ``StoredMessage`` and a message as the values of its row."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from services.core.attachment_records import attachments_json, attachments_of
from services.core.records import (
    ModelUsage,
    SessionRecord,
    StoredMessage,
    ToolUse,
    Usage,
    UsageTotals,
    tool_uses,
)
from services.core.usage_counts import COUNTS

SESSION_COLUMNS = (
    "session_id, user_id, template_id, status, created_at, last_activity, ended_at, "
    "message_count, system_prompt, model, temperature, max_tokens, presence_penalty, "
    "frequency_penalty, context_messages, title, summary, template_version, preview, "
    "welcome_message, context_tokens, memory_mode, summary_seq, provider, fallbacks, tools"
)
USAGE_COLUMNS = tuple(f"usage_{name}" for name in COUNTS)
SELECT_TOTALS = ", ".join(USAGE_COLUMNS)
MESSAGE_COLUMNS = (
    "seq, role, content, timestamp, client_message_id, usage, provider, model, tools, "
    "finish_reason, attachments"
)
# $1 the session, then MESSAGE_COLUMNS in order (JSONB ones cast from their text).
MESSAGE_VALUES = "$1, $2, $3, $4, $5, $6, $7::jsonb, $8, $9, $10::jsonb, $11, $12::jsonb"


def session_of(row: Mapping[str, Any], shares: tuple[ModelUsage, ...] = ()) -> SessionRecord:
    """A session row as a record (with its usage totals when the query read them)."""
    fields = dict(row.items())
    record = SessionRecord.from_fields(fields)
    if "usage_turns" in fields:
        totals = UsageTotals(*(int(fields[name]) for name in USAGE_COLUMNS), by_model=shares)
        record.usage_totals = totals if totals != UsageTotals() else None
    return record


def fallbacks_json(fallbacks: tuple[tuple[str, str], ...]) -> str | None:
    """The ``fallbacks`` column of a session's route targets."""
    return json.dumps([{"provider": p, "model": m} for p, m in fallbacks]) if fallbacks else None


def message_of(row: Mapping[str, Any]) -> StoredMessage:
    """A message row, or a variant's message (the same fields by name), as a message."""
    usage = row["usage"]
    if isinstance(usage, str):
        usage = json.loads(usage)
    return StoredMessage(
        row["seq"], row["role"], row["content"], row["timestamp"], row["client_message_id"],
        Usage.from_dict(usage) if usage else None, row["provider"], row["model"],
        tool_uses(row["tools"]), row["finish_reason"],
        # A variant kept before migration 002 has no such field.
        attachments_of(row.get("attachments")),
    )  # fmt: skip


def usage_json(usage: Usage | None) -> str | None:
    """The ``usage`` column of a message."""
    return json.dumps(usage.as_dict()) if usage else None


def tools_json(tools: tuple[ToolUse, ...]) -> str | None:
    """The ``tools`` column of a message."""
    return json.dumps([use.as_dict() for use in tools]) if tools else None


def message_values(session_id: str, message: StoredMessage) -> tuple[Any, ...]:
    """A message as the values of its row: ``session_id``, then ``MESSAGE_COLUMNS``."""
    return (
        session_id, message.seq, message.role, message.content, message.timestamp,
        message.client_message_id, usage_json(message.usage), message.provider, message.model,
        tools_json(message.tools), message.finish_reason, attachments_json(message.attachments),
    )  # fmt: skip
