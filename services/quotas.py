"""Abuse limits per end user: turns and session creations per minute, open streams.

Rates are token buckets: a user may burst up to N, then gets one more every 60/N seconds. They
live in this process (``TokenBuckets``), bounded and forgotten after two idle minutes. A shared
store for several instances implements ``RateLimiter`` and slots in here; the ``limits``
library was measured for this and left out: its in-process storages walk every key on each
check (with a thread hop per key in the async one), which costs milliseconds per turn.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from cachetools import TTLCache

from services.errors import RateLimited
from services.settings import Settings

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

    def __init__(self, quotas: Quotas, user_id: str) -> None:
        self._quotas, self._user_id, self._held = quotas, user_id, True

    def release(self) -> None:
        """Give the slot back."""
        if self._held:
            self._held = False
            self._quotas._release_stream(self._user_id)


class Quotas:
    """The limits, checked by the transports before a turn, a session or a stream starts."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self._turns: RateLimiter = TokenBuckets(settings.rate_limit_turns_per_minute, clock)
        self._sessions: RateLimiter = TokenBuckets(settings.rate_limit_sessions_per_minute, clock)
        self._turn_rate = settings.rate_limit_turns_per_minute
        self._session_rate = settings.rate_limit_sessions_per_minute
        self._max_streams = settings.max_streams_per_user
        self._streams: dict[str, int] = {}

    async def take_turn(self, user_id: str) -> None:
        """Count a turn; ``RateLimited`` past RATE_LIMIT_TURNS_PER_MINUTE."""
        _check(self._turns.take(user_id), f"at most {self._turn_rate} turns a minute per user")

    async def take_session(self, user_id: str) -> None:
        """Count a session creation; ``RateLimited`` past RATE_LIMIT_SESSIONS_PER_MINUTE."""
        wait = self._sessions.take(user_id)
        _check(wait, f"at most {self._session_rate} new sessions a minute per user")

    def open_stream(self, user_id: str) -> StreamSlot:
        """A slot for one more stream; ``RateLimited`` past MAX_STREAMS_PER_USER."""
        count = self._streams.get(user_id, 0)
        if count >= self._max_streams:
            raise RateLimited(
                f"At most {self._max_streams} open streams per user; close one first",
                retry_after=1.0,
            )
        self._streams[user_id] = count + 1
        return StreamSlot(self, user_id)

    def _release_stream(self, user_id: str) -> None:
        count = self._streams.get(user_id, 1) - 1
        if count:
            self._streams[user_id] = count
        else:
            self._streams.pop(user_id, None)


def _check(wait: float | None, limit: str) -> None:
    if wait is not None:
        raise RateLimited(f"Rate limit reached: {limit}", retry_after=max(1.0, wait))
