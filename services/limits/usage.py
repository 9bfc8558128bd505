"""Usage: what a user spends per UTC day, and what the usage endpoint reports.

The store keeps the counts. A turn's usage is added by the turn's own atomic write; a
background call's (a session title, a memory summary) by the write that stores its result
(``Store.set_title``, ``Store.set_memory``), or by ``Store.add_usage`` when there is none.
Those that need to know at once in this process (the daily token quota,
``services/limits/quotas.py``) are told through a ``UsageMeter``.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Protocol

from services.core.background import Tasks
from services.core.errors import ChatifyError
from services.core.records import CallUsage, Clock, DayUsage, SessionRecord, Usage, isoformat
from services.limits.cost import PriceTable
from services.llm.client import Completion
from services.store.base import Store

logger = logging.getLogger(__name__)
RETRY_DELAYS = (1.0, 5.0)  # seconds before the second and third attempt to count a call

MAX_DAYS = 90


class UsageMeter(Protocol):
    """Told of every token spend this process makes: a stored turn, an answered background call."""

    def spent(self, user_id: str, usage: Usage | None, *, at: str) -> None:
        """``usage`` was spent for ``user_id`` at ``at`` (its UTC day counts it)."""


def day_of(moment: datetime) -> str:
    """The UTC day of a moment, ``YYYY-MM-DD``."""
    return isoformat(moment)[:10]


def next_reset(moment: datetime) -> datetime:
    """The UTC midnight after ``moment``: when its day's counts stop applying."""
    return datetime.combine(moment.astimezone(UTC).date() + timedelta(days=1), time(), UTC)


def seconds_to_reset(moment: datetime) -> int:
    """Whole seconds from ``moment`` to the next UTC midnight (at least 1)."""
    return max(1, math.ceil((next_reset(moment) - moment).total_seconds()))


@dataclass(frozen=True, slots=True)
class UsageReport:
    """A user's recent days and today's quota."""

    user_id: str
    days: list[DayUsage]  # newest first: today, then each day before it, zeros included
    quota: int | None  # USER_DAILY_TOKEN_QUOTA, None when there is none
    resets_at: str  # the next UTC midnight
    cost_limit: int | None = None  # USER_DAILY_COST_LIMIT_MICROS, None when there is none

    @property
    def today(self) -> DayUsage:
        """Today's usage."""
        return self.days[0]

    @property
    def remaining(self) -> int | None:
        """Tokens left today under the quota (None: no quota)."""
        return None if self.quota is None else max(0, self.quota - self.today.total_tokens)

    @property
    def cost_remaining(self) -> int | None:
        """Micro-USD left today under the cost limit (None: no limit)."""
        if self.cost_limit is None:
            return None
        return max(0, self.cost_limit - self.today.cost_micros)


class UsageService:
    """Reads usage for the API."""

    def __init__(
        self,
        *,
        store: Store,
        clock: Clock,
        quota: int | None = None,
        cost_limit: int | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._quota = quota  # USER_DAILY_TOKEN_QUOTA, None when there is none
        self._cost_limit = cost_limit  # USER_DAILY_COST_LIMIT_MICROS, None when there is none

    async def report(self, user_id: str, *, days: int) -> UsageReport:
        """The last ``days`` UTC days (today included) of a user, newest first."""
        now = self._clock()
        window = [day_of(now - timedelta(days=back)) for back in range(days)]
        stored = await self._store.load_usage(
            user_id, since_day=window[-1], until_day=window[0], by_model=True
        )
        by_day = {entry.day: entry for entry in stored}
        return UsageReport(
            user_id=user_id,
            days=[by_day.get(day, DayUsage(day)) for day in window],
            quota=self._quota,
            resets_at=isoformat(next_reset(now)),
            cost_limit=self._cost_limit,
        )


class BackgroundCalls:
    """Counts the answered background calls of sessions (titles, memories) as their user's:
    at once against this process's quota (``UsageMeter``), and in the store by the write that
    stores the call's result (``spent``), or by ``Store.add_usage`` in a task of its own,
    retried, never holding up or failing the caller (``add``). A count that keeps failing is
    logged and dropped."""

    def __init__(
        self,
        *,
        store: Store,
        clock: Clock,
        meter: UsageMeter | None = None,
        prices: PriceTable | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._meter = meter
        self._prices = prices
        self._tasks = Tasks()

    @property
    def pending(self) -> int:
        """Counts not yet written."""
        return len(self._tasks)

    def spent(self, record: SessionRecord, completion: Completion) -> CallUsage:
        """Tell the meter of one answered call at once (its tokens are spent, whatever its
        answer was worth), and return its counts, priced, under the provider and model that
        answered it, for the write that stores the call's result to add (``usage``); a caller
        whose write does not add them hands them to ``add``."""
        at = isoformat(self._clock())
        usage, target = completion.usage, completion.served_by
        if self._prices is not None:
            usage = self._prices.priced(usage, target)
        if self._meter is not None:
            self._meter.spent(record.user_id, usage, at=at)
        return CallUsage(record.user_id, usage, at, target)

    def add(self, session_id: str, call: CallUsage, what: str) -> None:
        """Write a call's counts with ``Store.add_usage``, in a task of its own, retried."""
        self._tasks.start(self._add(session_id, call, what))

    async def close(self) -> None:
        """Stop (at shutdown): counts still being written are dropped."""
        await self._tasks.close()

    async def _add(self, sid: str, call: CallUsage, what: str) -> None:
        for attempt, delay in enumerate((0.0, *RETRY_DELAYS), start=1):
            await asyncio.sleep(delay)
            try:
                await self._store.add_usage(
                    call.user_id, sid, call.usage, at=call.at, target=call.target
                )
            except ChatifyError as error:
                logger.warning(
                    "counting the %s call of session %s failed (attempt %d): %s",
                    what,
                    sid,
                    attempt,
                    error.code,
                )
                continue
            return
        logger.warning("the %s call of session %s stays uncounted", what, sid)
