"""The SQLite store's usage counters: totals on each session row and one row per user and UTC
day, both added to inside the transaction that stores the turn (or the background call), so a
total never disagrees with the messages it counts and never costs a turn a second commit.

The share each route target (a provider and the model it was asked for) served is kept beside
them, in ``session_usage_by_model`` and ``usage_daily_by_model``, by the same transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from typing import Any

from services.core.provider_config import Target
from services.core.records import (
    CallUsage,
    DayUsage,
    ModelUsage,
    Usage,
    UsageTotals,
    by_target,
    utc_day,
)
from services.core.usage_counts import COUNTS, counts_of

# Added to ``sessions`` (for new and older files alike, by the store's add-column migration).
USAGE_COLUMNS = {
    "usage_prompt_tokens": "INTEGER NOT NULL DEFAULT 0",
    "usage_completion_tokens": "INTEGER NOT NULL DEFAULT 0",
    "usage_turns": "INTEGER NOT NULL DEFAULT 0",
    "usage_calls": "INTEGER NOT NULL DEFAULT 0",
    "usage_cost_micros": "INTEGER NOT NULL DEFAULT 0",
    "usage_calls_cost_micros": "INTEGER NOT NULL DEFAULT 0",
    "usage_priced": "INTEGER NOT NULL DEFAULT 0",
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
CREATE TABLE IF NOT EXISTS session_usage_by_model (
    session_id TEXT NOT NULL,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    turns INTEGER NOT NULL DEFAULT 0,
    calls INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (session_id, provider, model)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS usage_daily_by_model (
    user_id TEXT NOT NULL,
    day TEXT NOT NULL,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    turns INTEGER NOT NULL DEFAULT 0,
    calls INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, day, provider, model)
) WITHOUT ROWID;
"""
# The cost counters, added to the tables above (for new and older files alike); rows counted
# before them read 0, as the sessions' columns do: none of their turns and calls ``priced``.
_COST_COLUMNS = dict.fromkeys(COUNTS[4:], "INTEGER NOT NULL DEFAULT 0")
ADDED_COLUMNS = dict.fromkeys(
    ("usage_daily", "session_usage_by_model", "usage_daily_by_model"), _COST_COLUMNS
)
_COUNTS = COUNTS


def _add_to(table: str, keys: tuple[str, ...]) -> str:
    """An upsert adding the counts to the row of ``keys``."""
    names = (*keys, *_COUNTS)
    added = ", ".join(f"{name} = {name} + excluded.{name}" for name in _COUNTS)
    return (
        f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))}) "
        f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {added}"
    )


_ADD_SESSION = (
    "UPDATE sessions SET "
    + ", ".join(f"{column} = {column} + ?" for column in USAGE_COLUMNS)
    + " WHERE session_id = ?"
)
_ADD_DAY = _add_to("usage_daily", ("user_id", "day"))
_ADD_SESSION_SHARE = _add_to("session_usage_by_model", ("session_id", "provider", "model"))
_ADD_DAY_SHARE = _add_to("usage_daily_by_model", ("user_id", "day", "provider", "model"))


def add(
    conn: sqlite3.Connection,
    *,
    user_id: str,
    session_id: str,
    usage: Usage | None,
    at: str,
    turns: int = 0,
    calls: int = 0,
    target: Target | None = None,
) -> None:
    """Add to the session's totals and the user's day, and to ``target``'s share of both,
    inside the caller's transaction."""
    counts = counts_of(usage, turns=turns, calls=calls)
    updated = conn.execute(_ADD_SESSION, (*counts, session_id))
    day = utc_day(at)
    conn.execute(_ADD_DAY, (user_id, day, *counts))
    if target is None:
        return
    if updated.rowcount:  # never a share row for an erased session (a late background call)
        conn.execute(_ADD_SESSION_SHARE, (session_id, *target, *counts))
    conn.execute(_ADD_DAY_SHARE, (user_id, day, *target, *counts))


def add_call(conn: sqlite3.Connection, session_id: str, call: CallUsage) -> None:
    """A background call's tokens and one call, inside the caller's transaction."""
    add(
        conn, user_id=call.user_id, session_id=session_id, usage=call.usage, at=call.at,
        calls=1, target=call.target,
    )  # fmt: skip


def load(
    conn: sqlite3.Connection, user_id: str, since_day: str, until_day: str, *, by_model: bool
) -> list[DayUsage]:
    """The user's days in the range, oldest first; with ``by_model``, each target's share."""
    rows = conn.execute(
        f"SELECT day, {', '.join(_COUNTS)} FROM usage_daily "
        "WHERE user_id = ? AND day >= ? AND day <= ? ORDER BY day",
        (user_id, since_day, until_day),
    ).fetchall()
    shares = _day_shares(conn, user_id, since_day, until_day) if by_model else {}
    return [DayUsage(*row, by_model=by_target(shares.get(row[0], ()))) for row in rows]


def _day_shares(
    conn: sqlite3.Connection, user_id: str, since_day: str, until_day: str
) -> dict[str, list[ModelUsage]]:
    rows = conn.execute(
        f"SELECT day, provider, model, {', '.join(_COUNTS)} FROM usage_daily_by_model "
        "WHERE user_id = ? AND day >= ? AND day <= ?",
        (user_id, since_day, until_day),
    ).fetchall()
    shares: dict[str, list[ModelUsage]] = {}
    for day, *share in rows:
        shares.setdefault(day, []).append(ModelUsage(*share))
    return shares


def session_shares(conn: sqlite3.Connection, session_id: str) -> tuple[ModelUsage, ...]:
    """Each target's share of a session's totals."""
    rows = conn.execute(
        f"SELECT provider, model, {', '.join(_COUNTS)} FROM session_usage_by_model "
        "WHERE session_id = ?",
        (session_id,),
    ).fetchall()
    return by_target(ModelUsage(*row) for row in rows)


def erase_session(conn: sqlite3.Connection, session_id: str) -> None:
    """Erase a session's shares with it (a user's days are kept, as ``usage_daily`` is)."""
    conn.execute("DELETE FROM session_usage_by_model WHERE session_id = ?", (session_id,))


def totals_of(fields: Mapping[str, Any], shares: tuple[ModelUsage, ...] = ()) -> UsageTotals | None:
    """A session row's totals, when the query read them and anything was counted."""
    if "usage_turns" not in fields:
        return None
    counts = (int(fields[name] or 0) for name in USAGE_COLUMNS)
    totals = UsageTotals(*counts, by_model=shares)
    return totals if totals != UsageTotals() else None
