"""Where the Firebase store keeps usage counts, and the increments that add to them:

    /userSessions/{sid}/usage_totals       {prompt_tokens, completion_tokens, turns, calls}
    /userUsage/{user}/{YYYY-MM-DD}         the same, per user and UTC day

A turn's increments ride in the turn's own multi-path update (``turn_updates``), so counting
costs a turn no request; a background call's are one update of their own (``FirebaseUsage``).
"""

from __future__ import annotations

from typing import Any

from services.models import DayUsage, Usage, UsageTotals, utc_day
from services.store.rtdb_keys import encode_key

FIELDS = ("prompt_tokens", "completion_tokens", "turns", "calls")


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
    return UsageTotals(*(_count(node, name) for name in FIELDS))


def day_of_node(day: str, node: dict[str, Any]) -> DayUsage:
    """One ``userUsage/{user}/{day}`` node."""
    return DayUsage(day, *(_count(node, name) for name in FIELDS))


def _count(node: dict[str, Any], name: str) -> int:
    value = node.get(name)
    return int(value) if isinstance(value, int | float) else 0
