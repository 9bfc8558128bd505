"""REDIS_URL: two apps on one store and one real Redis server behave as one service; a Redis
that is down (at start or later) changes nothing a client sees but readiness."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from testkit.live import read_events
from testkit.mock_llm import MockLLM, Reply
from testkit.redis_server import RedisServer, require_redis_server
from tests.api.conftest import API, Live, LiveFactory, collect

pytestmark = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
COUNT_KEY = "chatify:tokens:2026-01-01:u1"  # the FakeClock's day


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A Redis server of its own, to stop and start."""
    with RedisServer(require_redis_server()) as server:
        yield server


async def turn_body(live: Live, session_id: str, message: str, cmid: str) -> httpx.Response:
    return await live.client.post(
        f"{API}/session/{session_id}/message",
        json={"message": message, "client_message_id": cmid},
    )


async def test_ready_names_redis(live_app: LiveFactory, redis_url: str) -> None:
    async with live_app(redis_url=redis_url) as live:
        ready = (await live.client.get("/ready")).json()
    assert ready["status"] == "ready" and ready["redis"] == "ok"
    async with live_app() as live:
        assert (await live.client.get("/ready")).json()["redis"] == "off"


async def test_a_redis_down_at_start_changes_nothing_but_readiness(
    live_app: LiveFactory, llm: MockLLM, own_redis: RedisServer
) -> None:
    own_redis.stop()
    async with live_app(redis_url=own_redis.url, redis_timeout_seconds=2.0) as live:
        ready = await live.client.get("/ready")
        assert ready.status_code == 200
        assert ready.json()["status"] == "degraded" and ready.json()["redis"] == "unavailable"
        session_id = await live.create_session()
        assert (await turn_body(live, session_id, "hi", "d-1")).status_code == 200
        async with live.stream(session_id, "streamed", body={"client_message_id": "d-2"}) as r:
            events = await collect(r)
        assert [e.event for e in events][-1] == "done"
        own_redis.start()
        for _ in range(100):
            if (await live.client.get("/ready")).json()["status"] == "ready":
                break
            await asyncio.sleep(0.05)
        assert (await live.client.get("/ready")).json()["redis"] == "ok"


async def test_the_daily_quota_is_seen_by_every_replica_at_once(
    live_app: LiveFactory, llm: MockLLM, redis_url: str, redis_server: RedisServer
) -> None:
    async with (
        live_app(redis_url=redis_url, user_daily_token_quota=10) as a,
        live_app(redis_url=redis_url, user_daily_token_quota=10) as b,
    ):
        first, second = await a.create_session(), await b.create_session()
        llm.script(Reply(status=500))  # B checks the quota (and holds the count) but spends nothing
        assert (await turn_body(b, second, "a first message", "q-0")).status_code == 502
        assert (await turn_body(a, first, "spend it all", "q-1")).status_code == 200
        for _ in range(200):  # the spend reaches Redis in the background
            if int(redis_server.command("HGET", COUNT_KEY, "t").split(b"\r\n")[1] or 0) >= 10:
                break
            await asyncio.sleep(0.01)
        refused = await turn_body(b, second, "one more", "q-2")
    # Without Redis, B would go on admitting turns on its count of the day until it re-reads
    # the store, a minute later.
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "quota_exceeded"


async def test_the_daily_cost_limit_is_seen_by_every_replica_at_once(
    live_app: LiveFactory, llm: MockLLM, redis_url: str, redis_server: RedisServer
) -> None:
    limit = {"redis_url": redis_url, "user_daily_cost_limit_micros": 5}
    async with live_app(**limit) as a, live_app(**limit) as b:
        first, second = await a.create_session(), await b.create_session()  # gpt-4o-mini
        llm.script(Reply(status=500))  # B checks the limit (and holds the count), spends nothing
        assert (await turn_body(b, second, "a first message", "c-0")).status_code == 502
        spent = await turn_body(a, first, "spend it all " * 20, "c-1")
        assert spent.status_code == 200 and spent.json()["usage"]["cost_micros"] >= 5
        key = "chatify:cost:2026-01-01:u1"
        for _ in range(200):  # the spend reaches Redis in the background
            if int(redis_server.command("HGET", key, "t").split(b"\r\n")[1] or 0) >= 5:
                break
            await asyncio.sleep(0.01)
        refused = await turn_body(b, second, "one more", "c-2")
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "cost_limit"
    assert refused.headers["retry-after"] == "43200"  # 12:00 UTC to midnight


async def test_a_resend_with_other_text_to_another_replica_conflicts(
    live_app: LiveFactory, llm: MockLLM, redis_url: str
) -> None:
    gate = threading.Event()
    llm.script(Reply(content="slow", gate=gate))
    async with live_app(redis_url=redis_url) as a, live_app(redis_url=redis_url) as b:
        session_id = await a.create_session()
        running = asyncio.create_task(turn_body(a, session_id, "first text", "same-id"))
        while not llm.chat_requests():
            await asyncio.sleep(0.01)
        conflict = await turn_body(b, session_id, "other text", "same-id")
        resend = asyncio.create_task(turn_body(b, session_id, "first text", "same-id"))
        await asyncio.sleep(0.2)
        gate.set()
        original, joined = await running, await resend
    assert conflict.status_code == 422
    assert conflict.json()["error"]["code"] == "idempotency_conflict"
    assert original.json()["replayed"] is False and joined.json()["replayed"] is True
    assert joined.json()["response"] == "slow" and len(llm.chat_requests()) == 1


async def test_use_chat_resumes_a_turn_running_on_another_replica(
    live_app: LiveFactory, llm: MockLLM, redis_url: str
) -> None:
    resume = threading.Event()
    llm.script(Reply(content="one two three four", chunks=4, pause_after_chunks=2, resume=resume))
    async with live_app(redis_url=redis_url) as a, live_app(redis_url=redis_url) as b:
        session_id = await a.create_session()
        message = {"id": "m1", "role": "user", "parts": [{"type": "text", "text": "go"}]}
        body: dict[str, Any] = {"id": session_id, "messages": [message]}
        async with a.client.stream("POST", f"{API}/chat", json=body) as response:
            async for event in read_events(response):
                if event.data and json.loads(event.data).get("type") == "text-delta":
                    break  # the first delta: a page reload cuts the stream
        async with b.client.stream("GET", f"{API}/chat/{session_id}/stream") as response:
            assert response.status_code == 200
            resume.set()  # B follows the turn: the model goes on only now, however slow B was
            parts = [e.data async for e in read_events(response) if e.event != ":"]
        nothing = await b.client.get(f"{API}/chat/{session_id}/stream")
    assert parts[-1] == "[DONE]"
    decoded = [json.loads(p) for p in parts[:-1]]
    assert "".join(p["delta"] for p in decoded if p["type"] == "text-delta") == "one two three four"
    assert decoded[-1]["type"] == "finish" and len(llm.chat_requests()) == 1
    assert nothing.status_code == 204


async def test_metrics_say_whether_redis_answers(
    live_app: LiveFactory, own_redis: RedisServer
) -> None:
    async with live_app(redis_url=own_redis.url, redis_timeout_seconds=2.0) as live:
        assert "chatify_redis_up 1.0" in (await live.client.get("/metrics")).text
        own_redis.stop()
        await live.client.get("/ready")  # a failed ping marks Redis down
        assert "chatify_redis_up 0.0" in (await live.client.get("/metrics")).text
    async with live_app() as live:
        assert "chatify_redis_up" not in (await live.client.get("/metrics")).text
