"""The PostgreSQL store's usage counters, as in the SQLite store: totals on each session row,
one row per user and UTC day, and each route target's share of both, added to by the
statement that stores the turn (or the background call), never by a second commit.

The additions are upserts (``INSERT … ON CONFLICT DO UPDATE``) written as common table
expressions, so a turn's counts ride in the turn's one statement (turns.py) and a background
call's in one statement of its own (``ADD_CALL``).
"""

from __future__ import annotations

from typing import Any

from services.core.provider_config import Target
from services.core.records import CallUsage, DayUsage, ModelUsage, Usage, by_target, utc_day
from services.core.usage_counts import COUNTS, counts_of


def add_to_session(first: int) -> str:
    """``SET`` assignments adding the counts at ``$first`` … to a session row's totals."""
    return ", ".join(
        f"usage_{name} = usage_{name} + ${first + i}::bigint" for i, name in enumerate(COUNTS)
    )


def _upsert(
    table: str, keys: dict[str, str], first: int, *, source: str | None, where: str | None
) -> str:
    """Add the counts at ``$first`` … to the row of ``keys`` (column: value), for each row of
    ``source`` (a CTE) if given, only ``where`` the condition holds."""
    values = [*keys.values(), *(f"${first + i}::bigint" for i in range(len(COUNTS)))]
    select = f"SELECT {', '.join(values)}"
    select += f" FROM {source}" if source else ""
    select += f" WHERE {where}" if where else ""
    added = ", ".join(f"{name} = {table}.{name} + excluded.{name}" for name in COUNTS)
    return (
        f"INSERT INTO {table} ({', '.join([*keys, *COUNTS])}) {select} "
        f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {added}"
    )


def counting(*, session_rows: str, day_rows: str | None) -> str:
    """The CTEs counting on the user's day and the target's shares, with ``$1`` the session,
    ``$2`` the user, ``$3`` the day, ``$4``/``$5`` the target (NULL: none) and the counts
    from ``$6``. The session's share is added for each row of ``session_rows`` (a CTE: the
    session row updated), the day's for each of ``day_rows`` (None: always)."""
    target = "$4::text IS NOT NULL"
    day = {"user_id": "$2::text", "day": "$3::text"}
    share = {"provider": "$4::text", "model": "$5::text"}
    session_key = {"session_id": "$1::text", **share}
    return (
        f"counted_day AS ({_upsert('usage_daily', day, 6, source=day_rows, where=None)}), "
        f"counted_session_share AS ({_upsert('session_usage_by_model', session_key, 6, source=session_rows, where=target)}), "  # noqa: E501
        f"counted_day_share AS ({_upsert('usage_daily_by_model', {**day, **share}, 6, source=day_rows, where=target)})"  # noqa: E501
    )


# Counts added outside a turn's statement: the session's totals (when it still exists), the
# day, the shares.
_ADD = (
    f"WITH counted_session AS (UPDATE sessions SET {add_to_session(6)} "
    "WHERE session_id = $1 RETURNING 1), "
    f"{counting(session_rows='counted_session', day_rows=None)} "
    "SELECT count(*) FROM counted_session"
)


def counted_args(
    *, session_id: str, user_id: str, at: str, target: Target | None, counts: Any
) -> tuple[Any, ...]:
    """``$1`` … ``$12`` of a statement built on ``counting``."""
    provider, model = target if target is not None else (None, None)
    return (session_id, user_id, utc_day(at), provider, model, *counts)


async def add(
    conn: Any,
    *,
    session_id: str,
    user_id: str,
    usage: Usage | None,
    at: str,
    target: Target | None,
    turns: int = 0,
    calls: int = 0,
) -> None:
    """Add to the session's totals and the user's day, and to ``target``'s share of both,
    in one statement (inside the caller's transaction, when it has one)."""
    counts = counts_of(usage, turns=turns, calls=calls)
    await conn.execute(
        _ADD,
        *counted_args(session_id=session_id, user_id=user_id, at=at, target=target, counts=counts),
    )


async def add_call(conn: Any, session_id: str, call: CallUsage) -> None:
    """A background call's tokens and one call."""
    await add(
        conn, session_id=session_id, user_id=call.user_id, usage=call.usage, at=call.at,
        target=call.target, calls=1,
    )  # fmt: skip


async def load(
    conn: Any, user_id: str, since_day: str, until_day: str, *, by_model: bool
) -> list[DayUsage]:
    """The user's days in the range, oldest first; with ``by_model``, each target's share."""
    rows = await conn.fetch(
        f"SELECT day, {', '.join(COUNTS)} FROM usage_daily "
        "WHERE user_id = $1 AND day >= $2 AND day <= $3 ORDER BY day",
        user_id,
        since_day,
        until_day,
    )
    shares: dict[str, list[ModelUsage]] = {}
    if by_model:
        for row in await conn.fetch(
            f"SELECT day, provider, model, {', '.join(COUNTS)} FROM usage_daily_by_model "
            "WHERE user_id = $1 AND day >= $2 AND day <= $3",
            user_id,
            since_day,
            until_day,
        ):
            day, *share = tuple(row)
            shares.setdefault(day, []).append(ModelUsage(*share))
    return [DayUsage(*tuple(row), by_model=by_target(shares.get(row[0], ()))) for row in rows]


async def session_shares(conn: Any, session_id: str) -> tuple[ModelUsage, ...]:
    """Each target's share of a session's totals."""
    rows = await conn.fetch(
        f"SELECT provider, model, {', '.join(COUNTS)} FROM session_usage_by_model "
        "WHERE session_id = $1",
        session_id,
    )
    return by_target(ModelUsage(*tuple(row)) for row in rows)
