"""The SQLite store's tables, the migration that brings an older file up to them, and the
conversion of session and message rows to records and back (shared by every role's file).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Mapping
from typing import Any

from services.core.attachment_records import attachments_json, attachments_of
from services.core.records import ModelUsage, SessionRecord, StoredMessage, Usage, tool_uses
from services.store.sqlite import usage_rows

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    template_id TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    last_activity TEXT NOT NULL,
    ended_at TEXT,
    message_count INTEGER NOT NULL DEFAULT 0,
    system_prompt TEXT NOT NULL,
    model TEXT NOT NULL,
    temperature REAL NOT NULL,
    max_tokens INTEGER NOT NULL,
    presence_penalty REAL NOT NULL,
    frequency_penalty REAL NOT NULL,
    context_messages INTEGER NOT NULL,
    title TEXT,
    summary TEXT,
    template_version INTEGER,
    preview TEXT,
    welcome_message TEXT,
    context_tokens INTEGER,
    memory_mode TEXT,
    summary_seq INTEGER NOT NULL DEFAULT 0,
    provider TEXT,
    fallbacks TEXT,
    tools TEXT
);
CREATE INDEX IF NOT EXISTS sessions_by_user ON sessions (user_id, created_at);
CREATE INDEX IF NOT EXISTS sessions_by_activity ON sessions (status, last_activity);
CREATE TABLE IF NOT EXISTS messages (
    session_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    timestamp TEXT NOT NULL,
    client_message_id TEXT,
    usage TEXT,
    provider TEXT,
    model TEXT,
    tools TEXT,
    finish_reason TEXT,
    attachments TEXT,
    PRIMARY KEY (session_id, seq)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS messages_by_client_id
    ON messages (session_id, client_message_id)
    WHERE client_message_id IS NOT NULL AND role = 'user';
CREATE TABLE IF NOT EXISTS message_variants (
    session_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    variant INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    messages TEXT NOT NULL,
    PRIMARY KEY (session_id, seq, variant)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS templates (template_id TEXT PRIMARY KEY, document TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, document TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS document_versions (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    number INTEGER NOT NULL,
    entry TEXT NOT NULL,
    PRIMARY KEY (kind, key, number)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS template_stats (
    template_id TEXT PRIMARY KEY,
    sessions INTEGER NOT NULL DEFAULT 0,
    turns INTEGER NOT NULL DEFAULT 0,
    reply_tokens INTEGER NOT NULL DEFAULT 0,
    failed_turns INTEGER NOT NULL DEFAULT 0,
    last_used TEXT
);
CREATE TABLE IF NOT EXISTS template_stats_by_model (
    template_id TEXT NOT NULL,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    turns INTEGER NOT NULL DEFAULT 0,
    reply_tokens INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (template_id, provider, model)
) WITHOUT ROWID;
"""

SESSION_COLUMNS = (
    "session_id, user_id, template_id, status, created_at, last_activity, ended_at, "
    "message_count, system_prompt, model, temperature, max_tokens, presence_penalty, "
    "frequency_penalty, context_messages, title, summary, template_version, preview, "
    "welcome_message, context_tokens, memory_mode, summary_seq, provider, fallbacks, tools"
)
# Columns added after the first release, for files created before them.
_ADDED_COLUMNS = {
    "sessions": {
        "template_version": "INTEGER",
        "preview": "TEXT",
        "welcome_message": "TEXT",
        "context_tokens": "INTEGER",
        "memory_mode": "TEXT",
        "summary_seq": "INTEGER NOT NULL DEFAULT 0",
        **usage_rows.USAGE_COLUMNS,
        "provider": "TEXT",
        "fallbacks": "TEXT",
        "tools": "TEXT",
    },
    "messages": {
        "provider": "TEXT",
        "model": "TEXT",
        "tools": "TEXT",
        "finish_reason": "TEXT",
        "attachments": "TEXT",
    },
    "template_stats": {"cost_micros": "INTEGER NOT NULL DEFAULT 0"},  # older rows: 0
    **usage_rows.ADDED_COLUMNS,
}
# Created after the added columns exist (an older file gains them first).
_ADDED_INDEXES = (
    "CREATE INDEX IF NOT EXISTS sessions_by_user_activity "
    "ON sessions (user_id, last_activity, session_id)",
)
MESSAGE_COLUMNS = (
    "seq, role, content, timestamp, client_message_id, usage, provider, model, tools, "
    "finish_reason, attachments"
)
MESSAGE_MARKS = ", ".join("?" * (MESSAGE_COLUMNS.count(",") + 2))  # and session_id


def migrate(conn: sqlite3.Connection) -> None:
    """Create what is missing: tables, then columns and indexes added since the first release.

    All in one write transaction: worker processes (``WEB_CONCURRENCY`` > 1) that start
    together on a new file take turns through SQLite's lock, so each finds the columns the one
    before it added (two that both found a column missing both added it, and the second failed
    its start with "duplicate column name", stopping the service)."""
    try:
        # executescript commits a transaction left open before it, never one it begins.
        conn.executescript(f"BEGIN IMMEDIATE;\n{_SCHEMA}\n{usage_rows.USAGE_SCHEMA}")
        for table, columns in _ADDED_COLUMNS.items():
            have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
            for name, kind in columns.items():
                if name not in have:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
        for statement in _ADDED_INDEXES:
            conn.execute(statement)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def json_or_none(text: str, what: str) -> Any:
    """A stored JSON document, or None (logged) when it does not parse."""
    try:
        return json.loads(text)
    except ValueError:
        logger.error("stored %s is not valid JSON; ignoring it", what)
        return None


def session_of(row: sqlite3.Row, *, shares: tuple[ModelUsage, ...] = ()) -> SessionRecord:
    """A session row as a record (with its usage totals when the query read them)."""
    fields = dict(zip(row.keys(), row, strict=True))
    record = SessionRecord.from_fields(fields)
    record.usage_totals = usage_rows.totals_of(fields, shares)
    return record


def fallbacks_json(fallbacks: tuple[tuple[str, str], ...]) -> str | None:
    """The ``fallbacks`` column of a session's route targets."""
    return json.dumps([{"provider": p, "model": m} for p, m in fallbacks]) if fallbacks else None


def message_of(row: sqlite3.Row | Mapping[str, Any]) -> StoredMessage:
    """A message row (or a variant's message, the same fields by name) as a stored message."""
    usage = Usage.from_dict(json.loads(row["usage"])) if row["usage"] else None
    return StoredMessage(
        row["seq"], row["role"], row["content"], row["timestamp"], row["client_message_id"], usage,
        row["provider"], row["model"], tool_uses(row["tools"]), row["finish_reason"],
        # A variant kept before attachments existed has no such field.
        attachments_of(row["attachments"] if "attachments" in row.keys() else None),
    )  # fmt: skip


def message_row(session_id: str, message: StoredMessage) -> tuple[Any, ...]:
    """A stored message as the values of a row (``session_id``, then ``MESSAGE_COLUMNS``)."""
    usage = json.dumps(message.usage.as_dict()) if message.usage else None
    tools = json.dumps([use.as_dict() for use in message.tools]) if message.tools else None
    return (
        session_id, message.seq, message.role, message.content, message.timestamp,
        message.client_message_id, usage, message.provider, message.model, tools,
        message.finish_reason, attachments_json(message.attachments),
    )  # fmt: skip
