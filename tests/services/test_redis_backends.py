"""The Redis backends against a real Redis server: two links stand for two replicas."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from services.conversation.bus import SessionEvent
from services.conversation.turn_events import Turn, TurnEvent
from services.core.errors import LLMTimeout, QuotaExceeded, RateLimited
from services.core.records import StoredMessage, ToolCall, ToolUse, TurnResult, Usage
from services.core.redis_link import PROBE_SECONDS, RedisDown, RedisLink
from services.core.settings import Settings
from services.limits.quotas import Quotas
from services.limits.redis import RedisStreams, RedisTokenBuckets
from services.redis import codec
from services.redis.bus import RedisBus
from services.redis.turns import RedisTurns
from testkit.redis_server import RedisServer, require_redis_server


@pytest.fixture
async def links(redis_url: str) -> AsyncIterator[list[RedisLink]]:
    """Two started links to the test server (two replicas)."""
    made = [RedisLink(redis_url, prefix="t:", timeout=3.0) for _ in range(2)]
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


def result(reply: str = "Hello there") -> TurnResult:
    usage = Usage(3, 4, 7)
    return TurnResult(
        session_id="s1",
        reply=reply,
        message_count=1,
        replayed=False,
        usage=usage,
        model="m",
        latency_ms=12.5,
        user_message=StoredMessage(0, "user", "hi", "2026-01-01T00:00:00Z", "c1"),
        assistant_message=StoredMessage(
            1, "assistant", reply, "2026-01-01T00:00:01Z", None, usage, "default", "m"
        ),
    )


def test_events_cross_as_json_field_by_field() -> None:
    done = TurnEvent(4, "done", result=result())
    assert codec.loads(TurnEvent, codec.dumps(done)) == done
    failed = codec.loads(TurnEvent, codec.dumps(TurnEvent(2, "error", error=QuotaExceeded("x"))))
    assert isinstance(failed.error, QuotaExceeded) and failed.error.status == 429
    event = SessionEvent("reply", "s1", "c1", result=result(), origin="o")
    assert codec.loads(SessionEvent, codec.dumps(event)) == event
    call = ToolCall("call_1", "demo", "convert_units", {"value": 5, "units": ["km", "mi"]}, 2)
    use = ToolUse(call, "5 km = 3.10686 mi", images=("data:image/png;base64,AAAA",))
    for turn_event in (TurnEvent(1, "tool_call", tool=call), TurnEvent(2, "tool_result", tool=use)):
        assert codec.loads(TurnEvent, codec.dumps(turn_event)) == turn_event  # each arm by its keys
    relayed = SessionEvent("tool_result", "s1", "c1", tool=use, origin="o")
    assert codec.loads(SessionEvent, codec.dumps(relayed)) == relayed
    stored = dataclasses.replace(result(), assistant_message=StoredMessage(
        1, "assistant", "It is 5 km.", "2026-01-01T00:00:01Z", tools=(use,)
    ))  # fmt: skip
    done = TurnEvent(3, "done", result=stored)
    assert codec.loads(TurnEvent, codec.dumps(done)) == done


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


async def test_a_session_event_reaches_every_replica_once(links: list[RedisLink]) -> None:
    buses = [RedisBus(link) for link in links]
    for bus in buses:
        bus.start()
    try:
        with buses[0].subscribe("s1") as here, buses[1].subscribe("s1") as there:
            await asyncio.sleep(0.1)  # the SUBSCRIBE reaches the server
            buses[0].publish(SessionEvent("title", "s1", text="A title"))
            buses[0].publish(SessionEvent("reply", "s1", "c1", result=result()))
            assert (await asyncio.wait_for(there.next(), 5)).text == "A title"
            assert (await asyncio.wait_for(there.next(), 5)).result == result()
            assert (await here.next()).kind == "title"
            assert (await here.next()).kind == "reply"
            await asyncio.sleep(0.1)
            assert here._queue.empty()  # not delivered a second time through Redis
    finally:
        for bus in buses:
            await bus.close()


async def test_a_turn_running_on_one_replica_is_relayed_on_another(
    links: list[RedisLink],
) -> None:
    runner, follower = RedisTurns(links[0]), RedisTurns(links[1])
    original = Turn("s1", "hi", "c1")
    assert await runner.adopt(original) is None  # this replica runs it
    original.emit("start", turn=1)
    original.emit("delta", content="Hello ")
    resend = Turn("s1", "hi", "c1")
    following = asyncio.create_task(follower.adopt(resend))
    await until(lambda: len(resend.events) == 2)
    assert resend.relayed
    original.emit("delta", content="there")
    original.emit("done", result=result())
    relayed = await asyncio.wait_for(following, 5)
    assert relayed is not None and relayed.replayed and relayed.reply == "Hello there"
    assert [(e.id, e.kind, e.content) for e in resend.events] == [
        (e.id, e.kind, e.content) for e in original.events
    ]
    # A resend once it is done: replayed from its last event, as a stored turn is.
    late = Turn("s1", "hi", "c1")
    assert (await follower.adopt(late)) == relayed
    assert [e.kind for e in late.events] == ["start", "delta", "done"] and not late.relayed
    for relay in (runner, follower):
        await relay.close()


async def test_an_event_that_cannot_cross_stops_the_recording_not_the_turn(
    links: list[RedisLink], caplog: pytest.LogCaptureFixture
) -> None:
    runner = RedisTurns(links[0])
    turn = Turn("s1", "hi", "c1")
    assert await runner.adopt(turn) is None
    turn.emit("start", turn=1)
    turn.emit("delta", content=object())
    turn.emit("done", result=result())
    await until(lambda: not runner._tasks)
    assert not turn.taps and "cannot be shared" in caplog.text
    await runner.close()


async def test_a_failed_turn_is_run_again_by_the_next_resend(links: list[RedisLink]) -> None:
    runner, other = RedisTurns(links[0]), RedisTurns(links[1])
    first = Turn("s1", "hi", "c1")
    assert await runner.adopt(first) is None
    first.emit("start", turn=1)
    first.emit("error", error=LLMTimeout("slow"))
    await until(lambda: not runner._tasks)
    assert await other.adopt(Turn("s1", "hi", "c1")) is None  # it runs it anew
    await other.close()
    await runner.close()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A Redis server of its own, to kill."""
    with RedisServer(require_redis_server()) as server:
        yield server


async def test_redis_down_falls_back_logs_once_and_recovers(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="services.core.redis_link")
    link = RedisLink(own_redis.url, prefix="t:", timeout=3.0)
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
