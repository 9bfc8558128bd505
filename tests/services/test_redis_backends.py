"""The Redis backends against a real Redis server: two links stand for two replicas."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from services.errors import RateLimited
from services.quotas import Quotas
from services.redis.limits import RedisStreams, RedisTokenBuckets
from services.redis.link import PROBE_SECONDS, RedisDown, RedisLink
from services.settings import Settings
from tests.support.redis_server import RedisServer, require_redis_server


@pytest.fixture
async def links(redis_url: str) -> AsyncIterator[list[RedisLink]]:
    """Two started links to the test server (two replicas)."""
    made = [RedisLink(redis_url, prefix="t:", timeout=0.5) for _ in range(2)]
    for link in made:
        await link.start()
    yield made
    for link in made:
        await link.close()


async def until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    """Poll (bounded) for something another task does."""
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


async def test_a_rate_is_shared_by_replicas(links: list[RedisLink]) -> None:
    buckets = [RedisTokenBuckets(link, "turns", 5) for link in links]
    waits = [await buckets[n % 2].take("alice") for n in range(8)]
    assert waits[:5] == [None] * 5
    assert all(wait is not None and 10 < wait <= 12 for wait in waits[5:]), waits
    assert await buckets[1].take("bob") is None  # users are independent


async def test_open_streams_are_capped_across_replicas(links: list[RedisLink]) -> None:
    streams = [RedisStreams(link, 2) for link in links]
    first = await streams[0].open("alice")
    second = await streams[1].open("alice")
    assert first is not None and second is not None
    assert await streams[0].open("alice") is None
    first()
    await until(lambda: not streams[0]._tasks)
    assert await streams[1].open("alice") is not None
    for stream in streams:
        await stream.close()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A Redis server of its own, to kill."""
    with RedisServer(require_redis_server()) as server:
        yield server


async def test_redis_down_falls_back_logs_once_and_recovers(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="services.redis.link")
    link = RedisLink(own_redis.url, prefix="t:", timeout=0.3)
    await link.start()
    settings = Settings(_env_file=None, rate_limit_turns_per_minute=2)
    quotas = Quotas(settings, redis=link)
    try:
        await quotas.take_turn("alice")
        own_redis.kill()
        for _ in range(5):  # per process meanwhile: a fresh bucket of two, then limited
            with pytest.raises(RedisDown):
                await link.call(lambda client: client.ping())
        await quotas.take_turn("alice")
        await quotas.take_turn("alice")
        with pytest.raises(RateLimited):
            await quotas.take_turn("alice")
        assert not link.healthy and not await link.check()
        slot = await quotas.open_stream("alice")  # counted here while Redis is down
        slot.release()
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "redis unavailable" in warnings[0].getMessage()
        own_redis.start()
        await until(lambda: link.healthy, seconds=PROBE_SECONDS * 5)
        assert await link.check()
        back = [r for r in caplog.records if "available again" in r.getMessage()]
        assert len(back) == 1
    finally:
        await quotas.close()
        await link.close()
