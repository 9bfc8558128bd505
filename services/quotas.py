"""Abuse limits per end user: turns and session creations per minute, open streams.

Rates use the ``limits`` library (moving window: at most N in any 60 seconds, bursts allowed).
Its storage comes from RATE_LIMIT_STORAGE_URI: ``memory://`` keeps the counts per process;
``redis://…`` or ``memcached://…`` share them between instances. Open streams are counted per
process.
"""

from __future__ import annotations

import time

from limits import RateLimitItem, RateLimitItemPerMinute
from limits.aio.storage import Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

from services.errors import RateLimited
from services.settings import Settings


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

    def __init__(self, settings: Settings) -> None:
        uri = settings.rate_limit_storage_uri
        storage = storage_from_string(uri if uri.startswith("async+") else f"async+{uri}")
        if not isinstance(storage, Storage):
            raise ValueError("RATE_LIMIT_STORAGE_URI must name a storage limits supports")
        self._limiter = MovingWindowRateLimiter(storage)
        self._turns = RateLimitItemPerMinute(settings.rate_limit_turns_per_minute)
        self._sessions = RateLimitItemPerMinute(settings.rate_limit_sessions_per_minute)
        self._max_streams = settings.max_streams_per_user
        self._streams: dict[str, int] = {}

    async def take_turn(self, user_id: str) -> None:
        """Count a turn; ``RateLimited`` past RATE_LIMIT_TURNS_PER_MINUTE."""
        await self._take(self._turns, "turns", user_id)

    async def take_session(self, user_id: str) -> None:
        """Count a session creation; ``RateLimited`` past RATE_LIMIT_SESSIONS_PER_MINUTE."""
        await self._take(self._sessions, "sessions", user_id)

    async def _take(self, item: RateLimitItem, what: str, user_id: str) -> None:
        if await self._limiter.hit(item, what, user_id):
            return
        stats = await self._limiter.get_window_stats(item, what, user_id)
        raise RateLimited(
            f"Too many new {what}: at most {item.amount} a minute per user",
            retry_after=max(1.0, stats.reset_time - time.time()),
        )

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
