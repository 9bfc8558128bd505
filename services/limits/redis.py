"""Per-user limits shared by every replica and worker: each check is one Lua script, so it is
atomic and one round trip. Their in-process counterparts, in ``services/limits/quotas.py``, stand in
while Redis is down.

The ``limits`` library was considered and left out: its Redis strategies are fixed and moving
windows, not the token buckets these limits document (a burst of N, then one every 60/N s);
it opens a connection pool of its own beside the lifespan's client, outside the health
tracking that makes Redis optional; and it has nothing for open-stream caps or token counts.

Each raises ``RedisDown`` when Redis does not answer; ``services/limits/quotas.py`` then asks its
in-process limiter instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis

from services.core.errors import ChatifyError
from services.core.records import Clock, Usage, utc_day
from services.core.redis_link import RedisDown, RedisLink
from services.limits.daily_tokens import TOKENS, DailyMeasure
from services.limits.usage import day_of, seconds_to_reset
from services.store.base import Store

logger = logging.getLogger(__name__)

# A token bucket: HASH {tokens, ts}, timed by the Redis server's clock (one clock for every
# replica). Returns the wait in seconds as text, "0" when a token was taken.
_TAKE = """
local now = redis.call('TIME')
now = tonumber(now[1]) + tonumber(now[2]) / 1000000
local capacity, rate = tonumber(ARGV[1]), tonumber(ARGV[2])
local held = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens, ts = tonumber(held[1]), tonumber(held[2])
if tokens == nil then tokens, ts = capacity, now end
tokens = math.min(capacity, tokens + math.max(0, now - ts) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return tostring(wait)
"""
IDLE_MS = 120_000  # a bucket is full again after 60 s; an idle one is dropped after two minutes


class RedisTokenBuckets:
    """``TokenBuckets`` (burst N, then one every 60/N s) shared through Redis."""

    def __init__(self, link: RedisLink, name: str, per_minute: int) -> None:
        self._link, self._name = link, name
        self._args: list[Any] = [per_minute, per_minute / 60.0, IDLE_MS]
        self._script = link.client.register_script(_TAKE)

    async def take(self, key: str) -> float | None:
        """One unit for ``key`` from the shared bucket, or the seconds to wait."""
        bucket = self._link.key("rate", self._name, key)
        raw = await self._link.script(self._script, [bucket], self._args)
        wait = float(raw)
        return wait if wait > 0 else None


# Open streams of one user: a ZSET of slot ids scored by when their lease ends. A replica that
# dies without closing its streams frees their slots when the leases run out.
_OPEN = """
local now = redis.call('TIME')
now = tonumber(now[1]) + tonumber(now[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[3])))
return 1
"""
# Extends the leases of the slots this process holds: KEYS[i] holds ARGV[i + 1].
_RENEW = """
local now = redis.call('TIME')
now = tonumber(now[1]) + tonumber(now[2]) / 1000000
local lease = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  if redis.call('ZSCORE', key, ARGV[i + 1]) then
    redis.call('ZADD', key, now + lease, ARGV[i + 1])
    redis.call('EXPIRE', key, math.ceil(lease))
  end
end
return #KEYS
"""
LEASE_SECONDS = 60.0
RENEW_SECONDS = 20.0


class RedisStreams:
    """Open-stream caps shared through Redis, as leased slots."""

    def __init__(self, link: RedisLink, limit: int) -> None:
        self._link, self._limit = link, limit
        self._open = link.client.register_script(_OPEN)
        self._renew = link.client.register_script(_RENEW)
        self._held: dict[str, str] = {}  # slot id -> its user's key
        self._ids = itertools.count()
        self._prefix = uuid.uuid4().hex[:12]
        self._tasks: set[asyncio.Task[Any]] = set()
        self._renewing: asyncio.Task[None] | None = None

    async def open(self, user_id: str) -> Callable[[], None] | None:
        """A slot (the function that gives it back), or None when the user holds ``limit``
        streams on all replicas together."""
        key = self._link.key("streams", user_id)
        slot_id = f"{self._prefix}-{next(self._ids)}"
        args = [slot_id, self._limit, LEASE_SECONDS]
        taken = await self._link.script(self._open, [key], args)
        if not taken:
            return None
        self._held[slot_id] = key
        if self._renewing is None:
            self._renewing = asyncio.create_task(self._renew_leases())
        return lambda: self._release(slot_id)

    def _release(self, slot_id: str) -> None:
        key = self._held.pop(slot_id, None)
        if key is not None:
            self._background(self._link.call(lambda client: client.zrem(key, slot_id)))

    async def _renew_leases(self) -> None:
        while True:
            await asyncio.sleep(RENEW_SECONDS)
            held = list(self._held.items())
            if not held:
                continue
            keys = [key for _, key in held]
            args = [LEASE_SECONDS, *(slot_id for slot_id, _ in held)]
            try:
                await self._link.script(self._renew, keys, args)
            except RedisDown:
                continue  # the leases run out; open streams stay open

    def _background(self, work: Awaitable[object]) -> None:
        async def run() -> None:
            try:
                await work
            except RedisDown:
                pass  # the lease runs out on its own

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Stop renewing; give back what is held (at shutdown)."""
        if self._renewing is not None:
            self._renewing.cancel()
        for slot_id in list(self._held):
            self._release(slot_id)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=1.0)


# A user's tokens on a UTC day: HASH {t: tokens, r: when the store was last read}.
_SPEND = """
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('HINCRBY', KEYS[1], 't', ARGV[1]) end
return -1
"""
_SETTLE = """
local held = tonumber(redis.call('HGET', KEYS[1], 't') or '-1')
if tonumber(ARGV[1]) > held then redis.call('HSET', KEYS[1], 't', ARGV[1]) end
redis.call('HSET', KEYS[1], 'r', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""
DAY_KEY_SECONDS = 2 * 86400
REFRESH_SECONDS = 60.0


class RedisDailyTokens:
    """The daily token quota with one count per user and day for all replicas: every spend is
    added to it at once, so no replica waits a minute to see another's. The count starts
    from the store, and is re-read from it (keeping the larger) at most every minute, which
    heals what was spent while Redis was down."""

    def __init__(
        self,
        link: RedisLink,
        quota: int,
        *,
        store: Store,
        now: Clock,
        measure: DailyMeasure = TOKENS,
    ) -> None:
        self._link, self._quota, self._store, self._now = link, quota, store, now
        self._measure = measure
        self._spend = link.client.register_script(_SPEND)
        self._settle = link.client.register_script(_SETTLE)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._refreshing: set[str] = set()

    async def check(self, user_id: str) -> None:
        """``QuotaExceeded`` (until the next UTC midnight) when the user's day is spent."""
        now = self._now()
        key = self._link.key(self._measure.name, day_of(now), user_id)
        tokens, read_at = await self._link.call(_hmget, key)
        if tokens is None:
            tokens = await self._reread(key, user_id, day_of(now))
        elif (read_at is None or now.timestamp() - read_at >= REFRESH_SECONDS) and (
            key not in self._refreshing
        ):
            self._refreshing.add(key)
            self._background(self._reread(key, user_id, day_of(now)), done=key)
        if tokens >= self._quota:
            raise self._measure.refusal(self._quota, seconds_to_reset(now))

    def spent(self, user_id: str, usage: Usage | None, *, at: str) -> None:
        """Add a spend to the shared count of its day, if Redis holds one (else the first
        check reads it from the store, where it is counted already)."""
        if usage is None or not self._link.healthy:
            return
        key = self._link.key(self._measure.name, utc_day(at), user_id)
        amount = self._measure.of_usage(usage)
        self._background(self._link.script(self._spend, [key], [amount]))

    async def _reread(self, key: str, user_id: str, day: str) -> int:
        """The store's count, kept in Redis when larger than what it holds."""
        days = await self._store.load_usage(user_id, since_day=day, until_day=day)
        tokens = sum(self._measure.of_day(entry) for entry in days)
        args = [tokens, self._now().timestamp(), DAY_KEY_SECONDS]
        with contextlib.suppress(RedisDown):  # the count read is right for this check anyway
            await self._link.script(self._settle, [key], args)
        return tokens

    def _background(self, work: Awaitable[object], *, done: str | None = None) -> None:
        async def run() -> None:
            try:
                await work
            except RedisDown:
                pass  # counted again from the store once Redis is back
            except ChatifyError as error:
                logger.warning("could not re-read a user's daily token count: %s", error.code)
            finally:
                if done is not None:
                    self._refreshing.discard(done)

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def settle(self) -> None:
        """Wait for the background work in flight."""
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def close(self) -> None:
        """Stop the background work (at shutdown)."""
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=1.0)


async def _hmget(client: Redis, key: str) -> tuple[int | None, float | None]:
    tokens, read_at = await client.hmget(key, ["t", "r"])
    return (
        int(tokens) if tokens is not None else None,
        float(read_at) if read_at is not None else None,
    )
