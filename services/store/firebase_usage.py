"""The Firebase store's usage side: a background call's counts in one update, a user's days
in one read (the layout is in ``firebase_usage_nodes``).

Server-side increments apply once per accepted update, so an update whose outcome is unknown
(a timeout: it may still land; a dropped connection: it may have landed) is never repeated, as
a second one could count the call twice. It is logged and given up: the call is counted once or
not at all. One the database refused raises ``StoreUnavailable`` for the caller to retry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from firebase_admin import db

from services.errors import StoreUnavailable
from services.models import DayUsage, Usage
from services.store.firebase_turns import refused
from services.store.firebase_usage_nodes import day_of_node, usage_updates
from services.store.rtdb_keys import encode_key

logger = logging.getLogger(__name__)


class FirebaseUsage:
    """Mixed into ``FirebaseStore``: needs its ``_ref`` and ``_run``."""

    _ref: Callable[[str], db.Reference]
    _run: Callable[[Callable[[], Any]], Coroutine[Any, Any, Any]]

    async def add_usage(self, user_id: str, session_id: str, usage: Usage, *, at: str) -> None:
        """One multi-path update of increments: the tokens and one call."""
        updates = usage_updates(user_id, session_id, usage, at=at, calls=1)
        try:
            await self._run(lambda: self._ref("/").update(updates))
        except StoreUnavailable as error:
            cause = error.__cause__
            if isinstance(cause, Exception) and refused(cause):  # nothing was applied
                raise
            logger.warning(
                "a usage write of session %s may not have landed; not repeated", session_id
            )

    async def load_usage(self, user_id: str, *, since_day: str, until_day: str) -> list[DayUsage]:
        """One key-range read of the user's days, oldest first."""

        def load() -> Any:
            query = self._ref(f"userUsage/{encode_key(user_id)}").order_by_key()
            return query.start_at(since_day).end_at(until_day).get()

        data = await self._run(load) or {}
        return [
            day_of_node(day, node) for day, node in sorted(data.items()) if isinstance(node, dict)
        ]
