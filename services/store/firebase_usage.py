"""The Firebase store's usage counters, kept by server-side increments:

    /userSessions/{sid}/usage_totals       {prompt_tokens, completion_tokens, turns, calls}
    /userUsage/{user}/{YYYY-MM-DD}         the same, per user and UTC day

A turn's increments ride in the turn's own multi-path update (``usage_updates`` in
``turn_updates``), so counting costs a turn no request; a background call's are one update of
their own. An increment applies exactly once per accepted update, so totals never drift from
the messages they count (the turn update is never retried, see ``FirebaseStore``).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from firebase_admin import db

from services.models import DayUsage, Usage, UsageTotals, utc_day
from services.store.rtdb_keys import encode_key

_FIELDS = ("prompt_tokens", "completion_tokens", "turns", "calls")


def usage_updates(
    user_id: str,
    session_id: str,
    usage: Usage | None,
    *,
    at: str,
    turns: int = 0,
    calls: int = 0,
) -> dict[str, Any]:
    """Increments of the session's totals and the user's day (zeros left out)."""
    counts = {
        "prompt_tokens": usage.prompt_tokens if usage else 0,
        "completion_tokens": usage.completion_tokens if usage else 0,
        "turns": turns,
        "calls": calls,
    }
    day = f"userUsage/{encode_key(user_id)}/{utc_day(at)}"
    updates: dict[str, Any] = {}
    for name, value in counts.items():
        if value:
            increment = {".sv": {"increment": value}}
            updates[f"userSessions/{session_id}/usage_totals/{name}"] = increment
            updates[f"{day}/{name}"] = increment
    return updates


def totals_of(node: Any) -> UsageTotals | None:
    """A session node's ``usage_totals``, or None when nothing was counted."""
    if not isinstance(node, dict):
        return None
    return UsageTotals(*(_count(node, name) for name in _FIELDS))


class FirebaseUsage:
    """Mixed into ``FirebaseStore``: needs its ``_ref`` and ``_run``."""

    _ref: Callable[[str], db.Reference]
    _run: Callable[[Callable[[], Any]], Coroutine[Any, Any, Any]]

    async def add_usage(self, user_id: str, session_id: str, usage: Usage, *, at: str) -> None:
        """One multi-path update of increments: the tokens and one call."""
        updates = usage_updates(user_id, session_id, usage, at=at, calls=1)
        await self._run(lambda: self._ref("/").update(updates))

    async def load_usage(self, user_id: str, *, since_day: str, until_day: str) -> list[DayUsage]:
        """One key-range read of the user's days, oldest first."""

        def load() -> Any:
            query = self._ref(f"userUsage/{encode_key(user_id)}").order_by_key()
            return query.start_at(since_day).end_at(until_day).get()

        data = await self._run(load) or {}
        return [
            DayUsage(day, *(_count(node, name) for name in _FIELDS))
            for day, node in sorted(data.items())
            if isinstance(node, dict)
        ]


def _count(node: dict[str, Any], name: str) -> int:
    value = node.get(name)
    return int(value) if isinstance(value, int | float) else 0
