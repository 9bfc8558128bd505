"""Abuse limits per end user: turns and session creations per minute, open streams, and
tokens per UTC day.

Rates are token buckets: a user may burst up to N, then gets one more every 60/N seconds. They
live in this process (``TokenBuckets``), bounded and forgotten after two idle minutes; the
``limits`` library was measured for this and left out: its in-process storages walk every key
on each check (with a thread hop per key in the async one), which costs milliseconds per turn.

With REDIS_URL, rates, open streams and the daily token count are shared by every replica
(``services/limits/redis.py``), and these in-process limiters answer only while Redis is down.

The daily token quota (``DailyTokens``) is counted in the store by every turn's own write;
this process keeps each user's count for today in memory, read once, advanced by what it
spends, and re-read in the background at most every ``REFRESH_SECONDS`` to see other
replicas' spending, so a warm turn's check never waits on the store.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from cachetools import TTLCache

from services.core.errors import RateLimited
from services.core.records import Clock, Usage, utc_now
from services.core.redis_link import RedisDown, RedisLink
from services.core.settings import Settings
from services.limits.daily_tokens import COST, TOKENS, DailyMeasure, DailyTokens
from services.limits.redis import RedisDailyTokens, RedisStreams, RedisTokenBuckets
from services.store.base import Store

IDLE_SECONDS = 120.0
MAX_TRACKED = 200_000


class RateLimiter(Protocol):
    """Takes one unit for a key; ``None`` when allowed, else seconds until one is free."""

    def take(self, key: str) -> float | None:
        """One unit, or the wait."""


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class TokenBuckets:
    """``per_minute`` units a minute per key, bursts up to ``per_minute``; O(1) per check."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._capacity = float(per_minute)
        self._rate = per_minute / 60.0
        self._clock = clock
        self._buckets: TTLCache[str, _Bucket] = TTLCache(MAX_TRACKED, IDLE_SECONDS, timer=clock)

    def take(self, key: str) -> float | None:
        """Refill by the time passed, then take a token if there is one."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _Bucket(self._capacity, now)
        else:
            bucket.tokens = min(self._capacity, bucket.tokens + (now - bucket.updated) * self._rate)
            bucket.updated = now
        self._buckets[key] = bucket  # restarts its idle time
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return None
        return (1.0 - bucket.tokens) / self._rate


class StreamSlot:
    """One open stream of a user; ``release()`` is idempotent."""

    def __init__(self, give_back: Callable[[], None]) -> None:
        self._give_back: Callable[[], None] | None = give_back

    def release(self) -> None:
        """Give the slot back (where it was taken: this process or Redis)."""
        give_back, self._give_back = self._give_back, None
        if give_back is not None:
            give_back()

    async def release_after(self) -> None:
        """``release``, for a response's background task: Starlette runs a plain function
        there in a worker thread, a thread hop at the end of every stream."""
        self.release()


class LocalStreams:
    """Open streams per user, counted in this process."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._streams: dict[str, int] = {}

    def __len__(self) -> int:
        """How many users hold a stream here."""
        return len(self._streams)

    def open(self, user_id: str) -> Callable[[], None] | None:
        """A slot (the function that gives it back), or None at the limit."""
        count = self._streams.get(user_id, 0)
        if count >= self._limit:
            return None
        self._streams[user_id] = count + 1
        return lambda: self._release(user_id)

    def _release(self, user_id: str) -> None:
        count = self._streams.get(user_id, 1) - 1
        if count:
            self._streams[user_id] = count
        else:
            self._streams.pop(user_id, None)


class Quotas:
    """The limits, checked by the transports before a turn, a session or a stream starts."""

    def __init__(
        self,
        settings: Settings,
        clock: Callable[[], float] = time.monotonic,
        *,
        store: Store | None = None,
        now: Clock = utc_now,
        redis: RedisLink | None = None,
    ) -> None:
        turn_rate = self._turn_rate = settings.rate_limit_turns_per_minute
        session_rate = self._session_rate = settings.rate_limit_sessions_per_minute
        self._turns: RateLimiter = TokenBuckets(turn_rate, clock)
        self._sessions: RateLimiter = TokenBuckets(session_rate, clock)
        self._max_streams = settings.max_streams_per_user
        self._streams = LocalStreams(self._max_streams)
        # The daily token quota, then the daily cost limit: each in this process, and in Redis.
        self._dailies: list[tuple[DailyTokens, RedisDailyTokens | None]] = []
        self._shared_turns: RedisTokenBuckets | None = None
        self._shared_sessions: RedisTokenBuckets | None = None
        self._shared_streams: RedisStreams | None = None
        if redis is not None:
            self._shared_turns = RedisTokenBuckets(redis, "turns", turn_rate)
            self._shared_sessions = RedisTokenBuckets(redis, "sessions", session_rate)
            self._shared_streams = RedisStreams(redis, self._max_streams)
        limits = (
            ("USER_DAILY_TOKEN_QUOTA", settings.user_daily_token_quota, TOKENS),
            ("USER_DAILY_COST_LIMIT_MICROS", settings.user_daily_cost_limit_micros, COST),
        )
        for name, limit, measure in limits:
            if limit:
                if store is None:
                    raise ValueError(f"{name} needs the store that counts usage")
                self._dailies.append(self._daily(limit, measure, store, now, redis))

    async def take_turn(self, user_id: str) -> None:
        """Count a turn; ``QuotaExceeded`` once USER_DAILY_TOKEN_QUOTA is spent today,
        ``CostLimitExceeded`` once USER_DAILY_COST_LIMIT_MICROS is, ``RateLimited`` past
        RATE_LIMIT_TURNS_PER_MINUTE."""
        for daily, shared in self._dailies:
            await _check_daily(daily, shared, user_id)
        wait = await _take(self._shared_turns, self._turns, user_id)
        _check(wait, f"at most {self._turn_rate} turns a minute per user")

    async def take_session(self, user_id: str) -> None:
        """Count a session creation; ``RateLimited`` past RATE_LIMIT_SESSIONS_PER_MINUTE."""
        wait = await _take(self._shared_sessions, self._sessions, user_id)
        _check(wait, f"at most {self._session_rate} new sessions a minute per user")

    async def open_stream(self, user_id: str) -> StreamSlot:
        """A slot for one more stream; ``RateLimited`` past MAX_STREAMS_PER_USER."""
        give_back = None
        try:
            if self._shared_streams is not None:
                give_back = await self._shared_streams.open(user_id)
            else:
                give_back = self._streams.open(user_id)
        except RedisDown:
            give_back = self._streams.open(user_id)
        if give_back is None:
            raise RateLimited(
                f"At most {self._max_streams} open streams per user; close one first",
                retry_after=1.0,
            )
        return StreamSlot(give_back)

    @staticmethod
    def _daily(
        limit: int, measure: DailyMeasure, store: Store, now: Clock, redis: RedisLink | None
    ) -> tuple[DailyTokens, RedisDailyTokens | None]:
        local = DailyTokens(limit, store=store, now=now, measure=measure)
        if redis is None:
            return local, None
        return local, RedisDailyTokens(redis, limit, store=store, now=now, measure=measure)

    def spent(self, user_id: str, usage: Usage | None, *, at: str) -> None:
        """Tokens (and their cost) this process spent for a user (a stored turn, a background
        call): counted against today's limits at once, without waiting for the next read of
        the store."""
        for daily, shared in self._dailies:
            daily.spent(user_id, usage, at=at)
            if shared is not None:
                shared.spent(user_id, usage, at=at)

    async def settle(self) -> None:
        """Wait for the background reads of the store in flight."""
        for daily, shared in self._dailies:
            await daily.settle()
            if shared is not None:
                await shared.settle()

    async def close(self) -> None:
        """Stop background reads (at shutdown)."""
        for daily, shared in self._dailies:
            await daily.close()
            if shared is not None:
                await shared.close()
        if self._shared_streams is not None:
            await self._shared_streams.close()


async def _check_daily(daily: DailyTokens, shared: RedisDailyTokens | None, user_id: str) -> None:
    if shared is not None:
        try:
            return await shared.check(user_id)
        except RedisDown:
            pass
    await daily.check(user_id)


async def _take(shared: RedisTokenBuckets | None, local: RateLimiter, key: str) -> float | None:
    if shared is not None:
        try:
            return await shared.take(key)
        except RedisDown:
            pass
    return local.take(key)


def _check(wait: float | None, limit: str) -> None:
    if wait is not None:
        raise RateLimited(f"Rate limit reached: {limit}", retry_after=max(1.0, wait))
