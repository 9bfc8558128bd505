"""The Redis client and its health.

Every command goes through ``RedisLink.call``. While Redis answers, that is one round trip.
When a call fails (refused, reset, timed out, or an error reply), the link is marked down,
logged once, and every caller falls back to per-process behaviour at once, without waiting on
Redis again; a probe pings it every ``PROBE_SECONDS`` and marks it up (logged once) when it
answers. Nothing here raises anything but ``RedisDown`` to its callers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Concatenate, ParamSpec, TypeVar

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)
PROBE_SECONDS = 1.0
T = TypeVar("T")
P = ParamSpec("P")


class RedisDown(Exception):
    """Redis did not answer (or is known to be down): use the per-process fallback."""


class RedisLink:
    """One client for the process (a pool of connections), with a health flag."""

    def __init__(self, url: str, *, prefix: str, timeout: float) -> None:
        self.prefix = prefix
        self.timeout = timeout
        # No retries inside the client: a failed command falls back at once, and the probe
        # decides when Redis is back.
        self.client: Redis = Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
        self._healthy = False
        self._started = False
        self._probe: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[], None]] = []

    @property
    def healthy(self) -> bool:
        """Whether Redis answered the last call (what ``/ready`` and metrics report)."""
        return self._healthy

    def key(self, *parts: str) -> str:
        """A key under REDIS_KEY_PREFIX."""
        return self.prefix + ":".join(parts)

    def on_recovery(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` each time Redis is back after being down."""
        self._listeners.append(listener)

    async def start(self) -> None:
        """Ping once; a Redis that is down at start is only logged (the probe keeps trying)."""
        self._started = True
        try:
            async with asyncio.timeout(self.timeout):
                await self.client.ping()
        except (RedisError, OSError, TimeoutError) as error:
            reraise_cancellation(error)
            self._down(error)
        else:
            self._healthy = True
            logger.info("redis connected: limits, stream resume and live events are shared")

    async def close(self) -> None:
        """Stop probing and close the connections (at shutdown)."""
        self._started = False
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.wait({self._probe}, timeout=1.0)
        await self.client.aclose()

    async def call(
        self,
        command: Callable[Concatenate[Redis, P], Awaitable[T]],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """``command(client, *args, **kwargs)`` within REDIS_TIMEOUT_SECONDS; ``RedisDown``
        when Redis is known to be down or this call fails (which marks it down)."""
        if not self._healthy:
            raise RedisDown
        try:
            async with asyncio.timeout(self.timeout):
                result = await command(self.client, *args, **kwargs)
        except (RedisError, OSError, TimeoutError) as error:
            reraise_cancellation(error)
            self._down(error)
            raise RedisDown from error
        reraise_cancellation(None)  # a pipeline may swallow a cancel whole (redis-py 8.1)
        return result

    async def script(self, script: AsyncScript, keys: list[str], args: list[Any]) -> Any:
        """Run a Lua script (registered on ``client``): one round trip, atomic."""
        return await self.call(_run_script, script, keys, args)

    async def check(self) -> bool:
        """Ping now (``/ready``): True when Redis answers; a change is logged once."""
        if not self._healthy:
            return False
        try:
            await self.call(lambda client: client.ping())
        except RedisDown:
            return False
        return True

    def failed(self, error: BaseException) -> None:
        """A command issued outside ``call`` (a pub/sub connection) failed."""
        reraise_cancellation(error)
        self._down(error)

    def _down(self, error: BaseException) -> None:
        if self._healthy or self._probe is None:
            logger.warning(
                "redis unavailable (%s): limits, stream resume and live events fall back to "
                "this process until it answers again",
                type(error).__name__,
            )
        self._healthy = False
        if self._started and (self._probe is None or self._probe.done()):
            self._probe = asyncio.create_task(self._wait_for_redis())

    async def _wait_for_redis(self) -> None:
        # Connections opened before the failure are dead or suspect: start afresh.
        with contextlib.suppress(RedisError, OSError):
            await self.client.connection_pool.disconnect()
        while True:
            await asyncio.sleep(PROBE_SECONDS)
            try:
                async with asyncio.timeout(self.timeout):
                    await self.client.ping()
            except (RedisError, OSError, TimeoutError) as error:
                reraise_cancellation(error)
                continue
            self._healthy = True
            logger.info("redis available again: limits, stream resume and live events are shared")
            for listener in self._listeners:
                listener()
            return


def reraise_cancellation(error: BaseException | None) -> None:
    """Raise ``CancelledError`` if the task was cancelled while it waited on Redis: the client
    may turn a cancelled read into a connection error, or swallow the cancel of a pipeline and
    return (and ``asyncio.timeout`` turns a cancel that meets its deadline into
    ``TimeoutError``); the task must stop, not mark Redis down or go on."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from error


async def _run_script(client: Redis, script: AsyncScript, keys: list[str], args: list[Any]) -> Any:
    return await script(keys=keys, args=args, client=client)
