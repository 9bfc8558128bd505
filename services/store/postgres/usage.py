"""The PostgreSQL store's usage: a background call counted, a user's days read (the counters'
statements are in ``usage_rows``)."""

from __future__ import annotations

from services.core.provider_config import Target
from services.core.records import CallUsage, DayUsage, Usage
from services.store.postgres import usage_rows
from services.store.postgres.connection import PostgresConnection


class PostgresUsage(PostgresConnection):
    """``UsageStore`` on the usage tables."""

    async def add_usage(
        self,
        user_id: str,
        session_id: str,
        usage: Usage,
        *,
        at: str,
        target: Target | None = None,
    ) -> None:
        """A background call's tokens and one call, on the user's day and the session (and
        ``target``'s share of both), in one statement."""
        async with self._connection() as conn:
            await usage_rows.add_call(conn, session_id, CallUsage(user_id, usage, at, target))

    async def load_usage(
        self, user_id: str, *, since_day: str, until_day: str, by_model: bool = False
    ) -> list[DayUsage]:
        """The user's rows of ``usage_daily`` in the range, oldest first (and, with
        ``by_model``, those of ``usage_daily_by_model``)."""
        async with self._connection() as conn:
            return await usage_rows.load(conn, user_id, since_day, until_day, by_model=by_model)
