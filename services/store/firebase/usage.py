"""The Firebase store's usage side: a background call's counts in one update, a user's days
in one read (the layout is in ``usage_nodes``).

Server-side increments apply once per accepted update, so an update whose outcome is unknown
(a timeout: it may still land; a dropped connection: it may have landed) is never repeated, as
a second one could count the call twice. It is logged and given up: the call is counted once or
not at all. One the database refused raises ``StoreUnavailable`` for the caller to retry.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from services.core.errors import StoreUnavailable
from services.core.provider_config import Target
from services.core.records import CallUsage, DayUsage, Usage
from services.store.firebase.connection import FirebaseConnection, refused
from services.store.firebase.rtdb_keys import encode_key
from services.store.firebase.usage_nodes import DAY_SHARES, day_of_node, usage_updates

logger = logging.getLogger(__name__)


class FirebaseUsage(FirebaseConnection):
    """``UsageStore``: server-side increments on the user's days and the session's totals."""

    async def add_usage(
        self,
        user_id: str,
        session_id: str,
        usage: Usage,
        *,
        at: str,
        target: Target | None = None,
    ) -> None:
        """One multi-path update of increments: the tokens and one call (and ``target``'s
        share of them)."""
        await self._count_call(session_id, CallUsage(user_id, usage, at, target))

    async def _count_call(
        self, session_id: str, call: CallUsage, *, on_session: bool = True
    ) -> None:
        """``add_usage``'s update; with ``on_session`` False (the session is gone), on the
        user's day only, so no count recreates an erased session's node."""
        updates = usage_updates(
            call.user_id, session_id, call.usage, at=call.at, calls=1, target=call.target
        )
        if not on_session:
            updates = {k: v for k, v in updates.items() if not k.startswith("userSessions/")}
        try:
            await self._run(lambda: self._ref("/").update(updates), background=True)
        except StoreUnavailable as error:
            cause = error.__cause__
            if isinstance(cause, Exception) and refused(cause):  # nothing was applied
                raise
            logger.warning(
                "a usage write of session %s may not have landed; not repeated", session_id
            )

    async def load_usage(
        self, user_id: str, *, since_day: str, until_day: str, by_model: bool = False
    ) -> list[DayUsage]:
        """One key-range read of the user's days, oldest first; with ``by_model``, one more of
        their shares, side by side."""
        reads = [self._days(f"userUsage/{encode_key(user_id)}", since_day, until_day)]
        if by_model:
            reads.append(self._days(f"{DAY_SHARES}/{encode_key(user_id)}", since_day, until_day))
        days, *shares = await asyncio.gather(*reads)
        by_day = shares[0] if shares else {}
        return [
            day_of_node(day, node, by_day.get(day))
            for day, node in sorted(days.items())
            if isinstance(node, dict)
        ]

    async def _days(self, path: str, since_day: str, until_day: str) -> dict[str, Any]:
        def load() -> Any:
            return self._ref(path).order_by_key().start_at(since_day).end_at(until_day).get()

        data = await self._run(load)
        return data if isinstance(data, dict) else {}
