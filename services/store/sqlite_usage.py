"""The SQLite store's usage counters: totals on each session row and one row per user and UTC
day, both added to inside the transaction that stores the turn (or the background call), so a
total never disagrees with the messages it counts and never costs a turn a second commit.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from typing import Any

from services.models import DayUsage, Usage, UsageTotals, utc_day

# Added to ``sessions`` (for new and older files alike, by the store's add-column migration).
USAGE_COLUMNS = {
    "usage_prompt_tokens": "INTEGER NOT NULL DEFAULT 0",
    "usage_completion_tokens": "INTEGER NOT NULL DEFAULT 0",
    "usage_turns": "INTEGER NOT NULL DEFAULT 0",
    "usage_calls": "INTEGER NOT NULL DEFAULT 0",
}
SELECT_TOTALS = ", ".join(USAGE_COLUMNS)
USAGE_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage_daily (
    user_id TEXT NOT NULL,
    day TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    turns INTEGER NOT NULL DEFAULT 0,
    calls INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, day)
) WITHOUT ROWID;
"""


def add(
    conn: sqlite3.Connection,
    *,
    user_id: str,
    session_id: str,
    usage: Usage | None,
    at: str,
    turns: int = 0,
    calls: int = 0,
) -> None:
    """Add to the session's totals and the user's day, inside the caller's transaction."""
    prompt = usage.prompt_tokens if usage else 0
    completion = usage.completion_tokens if usage else 0
    conn.execute(
        "UPDATE sessions SET usage_prompt_tokens = usage_prompt_tokens + ?, "
        "usage_completion_tokens = usage_completion_tokens + ?, "
        "usage_turns = usage_turns + ?, usage_calls = usage_calls + ? WHERE session_id = ?",
        (prompt, completion, turns, calls, session_id),
    )
    conn.execute(
        "INSERT INTO usage_daily VALUES (?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (user_id, day) DO UPDATE SET "
        "prompt_tokens = prompt_tokens + excluded.prompt_tokens, "
        "completion_tokens = completion_tokens + excluded.completion_tokens, "
        "turns = turns + excluded.turns, calls = calls + excluded.calls",
        (user_id, utc_day(at), prompt, completion, turns, calls),
    )


def load(conn: sqlite3.Connection, user_id: str, since_day: str, until_day: str) -> list[DayUsage]:
    """The user's days in the range, oldest first."""
    rows = conn.execute(
        "SELECT day, prompt_tokens, completion_tokens, turns, calls FROM usage_daily "
        "WHERE user_id = ? AND day >= ? AND day <= ? ORDER BY day",
        (user_id, since_day, until_day),
    ).fetchall()
    return [DayUsage(*row) for row in rows]


def totals_of(fields: Mapping[str, Any]) -> UsageTotals | None:
    """A session row's totals, when the query read them and anything was counted."""
    if "usage_turns" not in fields:
        return None
    totals = UsageTotals(*(int(fields[name] or 0) for name in USAGE_COLUMNS))
    return totals if totals != UsageTotals() else None
