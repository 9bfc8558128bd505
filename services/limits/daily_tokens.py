"""The daily token quota and the daily cost limit: what each user spent today, known in this
process without waiting on the store. Both count the same way; a ``DailyMeasure`` says what
(tokens, or micro-USD of cost).

A user's count for a UTC day is read from the store on the first check of that user in this
process that day, then advanced by every spend this process makes (``spent``), and re-read in
the background when it is older than ``REFRESH_SECONDS``, so spending on other replicas is
seen within about a minute. Each count is a lower bound of the truth (a past read, plus spends
counted since), so a refresh keeps the larger of the two. A turn is admitted while the count is
below the quota: one turn can go past it, and with k replicas a user may spend up to what the
others spent since their last refresh (at most a minute of spending) past it too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from cachetools import TTLCache

from services.core.errors import ChatifyError, CostLimitExceeded, QuotaExceeded
from services.core.records import Clock, DayUsage, Usage, utc_day
from services.limits.usage import day_of, seconds_to_reset
from services.store.base import Store

logger = logging.getLogger(__name__)
REFRESH_SECONDS = 60.0
IDLE_SECONDS = 3600.0  # a user unchecked this long is forgotten (read again on return)
MAX_TRACKED = 200_000


@dataclass(frozen=True, slots=True)
class DailyMeasure:
    """What a daily limit counts, and how it refuses a turn."""

    name: str  # its Redis key's part
    of_usage: Callable[[Usage], int]  # what one spend adds
    of_day: Callable[[DayUsage], int]  # what a stored day holds
    refusal: Callable[[int, int], ChatifyError]  # (the limit, seconds to midnight)


TOKENS = DailyMeasure(
    "tokens",
    lambda usage: usage.total_tokens,
    lambda day: day.total_tokens,
    lambda quota, wait: QuotaExceeded(
        f"Daily token quota of {quota} tokens used up; it resets at 00:00 UTC", retry_after=wait
    ),
)
COST = DailyMeasure(
    "cost",
    lambda usage: usage.cost_micros or 0,  # an unknown cost adds nothing: never a guess
    lambda day: day.cost_micros,
    lambda limit, wait: CostLimitExceeded(
        f"Daily cost limit of {limit} micro-USD used up; it resets at 00:00 UTC",
        retry_after=wait,
    ),
)


@dataclass(slots=True)
class _Count:
    tokens: int  # what the measure counts, spent on the day, as far as this process knows
    read_at: float  # when the store was last read for it (the clock's seconds)
    refreshing: bool = False


class DailyTokens:
    """Refuses turns of users whose tokens (or cost, with ``measure=COST``) today reached
    ``quota``."""

    def __init__(
        self, quota: int, *, store: Store, now: Clock, measure: DailyMeasure = TOKENS
    ) -> None:
        self._quota = quota
        self._measure = measure
        self._store = store
        self._now = now
        self._counts: TTLCache[tuple[str, str], _Count] = TTLCache(
            MAX_TRACKED, IDLE_SECONDS, timer=lambda: now().timestamp()
        )
        self._refreshes: set[asyncio.Task[None]] = set()

    async def check(self, user_id: str) -> None:
        """``QuotaExceeded`` (until the next UTC midnight) when the user's day is spent."""
        now = self._now()
        key = (user_id, day_of(now))
        count = self._counts.get(key)
        if count is None:
            tokens = await self._read(key)
            count = self._counts.get(key)  # another check may have read it meanwhile
            if count is None:
                count = _Count(tokens, now.timestamp())
            else:
                count.tokens = max(count.tokens, tokens)
        elif now.timestamp() - count.read_at >= REFRESH_SECONDS and not count.refreshing:
            self._refresh(key, count)
        self._counts[key] = count  # restarts its idle time
        if count.tokens >= self._quota:
            raise self._measure.refusal(self._quota, seconds_to_reset(now))

    def spent(self, user_id: str, usage: Usage | None, *, at: str) -> None:
        """Add a spend to the user's count of its day, if this process holds one (else the
        first check reads it from the store, where it is counted already)."""
        count = self._counts.get((user_id, utc_day(at)))
        if count is not None and usage is not None:
            count.tokens += self._measure.of_usage(usage)

    async def settle(self) -> None:
        """Wait for the background reads in flight."""
        await asyncio.gather(*self._refreshes, return_exceptions=True)

    async def close(self) -> None:
        """Stop the background reads."""
        for task in self._refreshes:
            task.cancel()
        await self.settle()

    async def _read(self, key: tuple[str, str]) -> int:
        user_id, day = key
        days = await self._store.load_usage(user_id, since_day=day, until_day=day)
        return sum(self._measure.of_day(entry) for entry in days)

    def _refresh(self, key: tuple[str, str], count: _Count) -> None:
        count.refreshing = True
        task = asyncio.create_task(self._reread(key, count))
        self._refreshes.add(task)
        task.add_done_callback(self._refreshes.discard)

    async def _reread(self, key: tuple[str, str], count: _Count) -> None:
        try:
            count.tokens = max(count.tokens, await self._read(key))
        except ChatifyError as error:
            logger.warning("could not re-read a user's daily token count: %s", error.code)
        finally:
            count.refreshing = False
            count.read_at = self._now().timestamp()
