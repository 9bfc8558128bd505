"""Per-personality usage counters for authors (with each route target's share of the turns),
counted in memory and flushed in the background.

A turn never waits on them: counting is a few additions, and a scheduled job adds what was
counted to the stored totals in one write (server-side increments on Firebase, so several
instances add up). A failed flush keeps the counts and tries again on the next run. What a
process counted since its last flush is lost if it is killed, at most STATS_FLUSH_SECONDS' worth.
"""

from __future__ import annotations

import logging
from collections import defaultdict

from services.core.provider_config import Target
from services.core.records import Clock, TemplateCounts, isoformat
from services.store.base import Store

logger = logging.getLogger(__name__)


class TemplateStats:
    """Counts sessions, turns, reply tokens and failures by personality."""

    def __init__(self, store: Store, *, clock: Clock) -> None:
        self._store = store
        self._clock = clock
        self._pending: defaultdict[str, TemplateCounts] = defaultdict(TemplateCounts)

    def session_started(self, template_id: str) -> None:
        """A session was created with this personality."""
        counts = self._pending[template_id]
        counts.sessions += 1
        counts.last_used = isoformat(self._clock())

    def turn_done(
        self,
        template_id: str,
        *,
        reply_tokens: int,
        served_by: Target | None = None,
        cost_micros: int | None = None,
    ) -> None:
        """A turn was stored; ``served_by`` (the provider and the model it was asked for)
        answered it, for ``cost_micros`` (None: unknown, not added)."""
        counts = self._pending[template_id]
        counts.turns += 1
        counts.reply_tokens += reply_tokens
        counts.cost_micros += cost_micros or 0
        counts.last_used = isoformat(self._clock())
        if served_by is not None:
            counts.served(served_by, turns=1, reply_tokens=reply_tokens)

    def turn_failed(self, template_id: str) -> None:
        """A turn failed (the model or the store), so nothing was stored."""
        self._pending[template_id].failed_turns += 1

    async def flush(self) -> None:
        """Add what was counted to the stored totals; on failure keep it for the next run."""
        if not self._pending:
            return
        pending, self._pending = self._pending, defaultdict(TemplateCounts)
        try:
            await self._store.add_template_stats(pending)
        except BaseException:
            for template_id, counts in pending.items():
                self._pending[template_id].add(counts)
            raise

    async def totals(self) -> dict[str, TemplateCounts]:
        """Stored totals plus what this process has not flushed yet."""
        totals = await self._store.load_template_stats()
        for template_id, counts in self._pending.items():
            totals.setdefault(template_id, TemplateCounts()).add(counts)
        return totals
