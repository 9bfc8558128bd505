"""Where the Firebase store keeps usage counts, and the increments that add to them:

    /userSessions/{sid}/usage_totals         {prompt_tokens, completion_tokens, turns, calls,
                                              cost_micros, calls_cost_micros, unpriced}
    /userSessions/{sid}/usage_by_model/{t}   the same, for one route target
    /userUsage/{user}/{YYYY-MM-DD}           the same as usage_totals, per user and UTC day
    /userUsageByModel/{user}/{day}/{t}       the same, for one route target

``{t}`` is ``provider/model`` (the model the provider was asked for) as a key
(``encode_key``: the ``/`` becomes ``%2F``). The shares sit beside the totals rather than in
them, so the nodes that were there before keep their shape, and the quota's read of a user's
day does not grow. A turn's increments ride in the turn's own multi-path update
(``turn_updates``), so counting costs a turn no request; a background call's are one update of
their own (``FirebaseUsage``).
"""

from __future__ import annotations

from typing import Any

from services.core.provider_config import Target, target_key, target_of_key
from services.core.records import DayUsage, ModelUsage, Usage, UsageTotals, by_target, utc_day
from services.core.usage_counts import COUNTS, counts_of
from services.store.firebase.rtdb_keys import decode_key, encode_key

FIELDS = COUNTS  # nodes counted before the cost counters read 0 for them
SESSION_SHARES = "usage_by_model"  # under /userSessions/{sid}
DAY_SHARES = "userUsageByModel"


def usage_updates(
    user_id: str,
    session_id: str,
    usage: Usage | None,
    *,
    at: str,
    turns: int = 0,
    calls: int = 0,
    target: Target | None = None,
) -> dict[str, Any]:
    """Increments of the session's totals and the user's day, and of ``target``'s share of
    both (zeros left out)."""
    counts = dict(zip(FIELDS, counts_of(usage, turns=turns, calls=calls), strict=True))
    user, day = encode_key(user_id), utc_day(at)
    nodes = [f"userSessions/{session_id}/usage_totals", f"userUsage/{user}/{day}"]
    if target is not None:
        key = encode_key(target_key(target))
        nodes.append(f"userSessions/{session_id}/{SESSION_SHARES}/{key}")
        nodes.append(f"{DAY_SHARES}/{user}/{day}/{key}")
    return {
        f"{node}/{name}": {".sv": {"increment": value}}
        for node in nodes
        for name, value in counts.items()
        if value
    }


def totals_of(node: Any, shares: Any = None) -> UsageTotals | None:
    """A session node's ``usage_totals`` with its ``usage_by_model``, or None when nothing
    was counted."""
    if not isinstance(node, dict):
        return None
    return UsageTotals(*(_count(node, name) for name in FIELDS), by_model=shares_of(shares))


def day_of_node(day: str, node: dict[str, Any], shares: Any = None) -> DayUsage:
    """One ``userUsage/{user}/{day}`` node, with its ``userUsageByModel`` node if read."""
    return DayUsage(day, *(_count(node, name) for name in FIELDS), by_model=shares_of(shares))


def shares_of(node: Any) -> tuple[ModelUsage, ...]:
    """A node of shares by target (``usage_by_model``, a day of ``userUsageByModel``)."""
    if not isinstance(node, dict):
        return ()
    return by_target(
        ModelUsage(*target_of_key(decode_key(key)), *(_count(share, name) for name in FIELDS))
        for key, share in node.items()
        if isinstance(share, dict)
    )


def _count(node: dict[str, Any], name: str) -> int:
    value = node.get(name)
    return int(value) if isinstance(value, int | float) else 0
