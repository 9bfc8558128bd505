"""Push notifications through FCM (issue 26), against the FCM test server: devices, the
connected / not connected decision, the grace period, dead tokens, retries, opt-outs, and two
replicas on one real Redis sending each push once."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import websockets

from services.application import Services
from services.conversation.turn_events import Turn
from services.push.notifier import PushNotifier
from testkit.fcm_server import FCMServer
from testkit.live import read_events
from testkit.mock_llm import MockLLM, Reply
from testkit.redis_server import RedisServer
from tests.api.conftest import API, Live, LiveFactory, collect, until
from tests.conftest import FakeClock, RunningApp, SettingsFactory, running_app

USER = "u1"
REPLY = "Ahoy, the treasure lies under the old oak tree, past the three stones by the river."


@pytest.fixture(scope="module")
def fcm_server() -> Iterator[FCMServer]:
    """One FCM test server for the module."""
    with FCMServer() as server:
        yield server


@pytest.fixture
def fcm(fcm_server: FCMServer) -> FCMServer:
    """The server with no messages, failures or token answers."""
    fcm_server.reset()
    return fcm_server


def push_settings(fcm: FCMServer, **overrides: Any) -> dict[str, Any]:
    """Pushes on, to the test server, with a short grace period."""
    return {
        "push_enabled": True,
        "fcm_url": fcm.url,
        "fcm_project_id": "chatify-test",
        "push_grace_seconds": 0.05,
        "push_retry_max_seconds": 0.01,
        **overrides,
    }


@asynccontextmanager
async def pushing(
    make_settings: SettingsFactory, clock: FakeClock, fcm: FCMServer, **overrides: Any
) -> AsyncIterator[RunningApp]:
    async with running_app(make_settings(**push_settings(fcm, **overrides)), clock) as chat:
        yield chat


def notifier(services: Services) -> PushNotifier:
    assert services.push is not None
    return services.push


async def register(chat: RunningApp | Live, *tokens: str, user: str = USER) -> None:
    for token in tokens:
        body = {"token": token, "platform": "android", "app_version": "2.0.1"}
        response = await chat.client.post(f"{API}/users/{user}/devices", json=body)
        assert response.status_code == 201, response.text


async def new_session(chat: RunningApp | Live, template_id: str = "pirate") -> str:
    body = {"user_id": USER, "template_id": template_id}
    response = await chat.client.post(f"{API}/session", json=body)
    assert response.status_code == 201, response.text
    session_id: str = response.json()["session_id"]
    return session_id


async def unheard_turn(services: Services, session_id: str, text: str = "where?") -> Turn:
    """A turn whose client went away: nobody follows it or waits for its result (as when
    a phone's app went to the background mid-stream)."""
    turn, _ = services.turns.submit(session_id, text=text, client_message_id=None, stream=True)
    assert turn.task is not None
    await asyncio.wait({turn.task})
    return turn


# Devices ----------------------------------------------------------------------------------


async def test_devices_are_registered_deduplicated_capped_and_removed(
    make_settings: SettingsFactory, clock: FakeClock
) -> None:
    async with running_app(make_settings(push_max_devices_per_user=2), clock) as chat:
        for token in ("token-bbbbbbbb", "token-aaaaaaaa", "token-aaaaaaaa"):
            await register(chat, token)
            clock.advance(1)
        listed = (await chat.client.get(f"{API}/users/{USER}/devices")).json()
        assert [d["token"] for d in listed["devices"]] == ["token-aaaaaaaa", "token-bbbbbbbb"]
        assert listed["push_enabled"] is False  # kept while the service sends none
        assert listed["devices"][0]["platform"] == "android"
        assert listed["devices"][0]["app_version"] == "2.0.1"
        await register(chat, "token-cccccccc")
        listed = (await chat.client.get(f"{API}/users/{USER}/devices")).json()
        assert [d["token"] for d in listed["devices"]] == ["token-cccccccc", "token-aaaaaaaa"]
        gone = await chat.client.delete(f"{API}/users/{USER}/devices/token-cccccccc")
        assert gone.status_code == 204
        listed = (await chat.client.get(f"{API}/users/{USER}/devices")).json()
        assert [d["token"] for d in listed["devices"]] == ["token-aaaaaaaa"]
        bad = {"token": "has spaces in it", "platform": "android"}
        assert (await chat.client.post(f"{API}/users/{USER}/devices", json=bad)).status_code == 422


async def test_export_lists_devices_and_erasure_removes_them(
    make_settings: SettingsFactory, clock: FakeClock
) -> None:
    async with running_app(make_settings(), clock) as chat:
        await register(chat, "token-aaaaaaaa")
        exported = (await chat.client.get(f"{API}/users/{USER}/export")).json()
        assert [d["token"] for d in exported["devices"]] == ["token-aaaaaaaa"]
        assert (await chat.client.delete(f"{API}/users/{USER}")).status_code == 200
        assert await chat.services.store.list_devices(USER) == []


async def test_pushes_are_off_by_default(chat: RunningApp) -> None:
    assert chat.services.push is None
    assert "push" not in (await chat.client.get("/ready")).json()


# When to push -----------------------------------------------------------------------------


async def test_a_turn_nobody_heard_reaches_each_device_once_within_a_second_of_the_grace(
    make_settings: SettingsFactory, clock: FakeClock, fcm: FCMServer, llm: MockLLM
) -> None:
    grace = 0.3
    async with pushing(
        make_settings, clock, fcm, push_grace_seconds=grace, push_body_chars=40
    ) as chat:
        await register(chat, "token-phone-1", "token-tablet-2")
        session_id = await new_session(chat)
        llm.script(Reply(content=REPLY))
        turn = await unheard_turn(chat.services, session_id)
        finished = time.monotonic()
        messages = await fcm.wait_for(2, within=grace + 1.0)
        assert time.monotonic() - finished < grace + 1.0
        await notifier(chat.services).idle()
        assert sorted(fcm.tokens()) == ["token-phone-1", "token-tablet-2"]
        result = turn.task.result() if turn.task else None
        assert result is not None and result.assistant_message is not None
        for message in messages:
            assert message["notification"]["title"] == "Pirate"
            assert message["notification"]["body"] == REPLY[:39].rstrip() + "…"
            assert message["data"] == {
                "session_id": session_id,
                "kind": "reply",
                "seq": str(result.assistant_message.seq),
            }
        assert chat.services.metrics.pushes("sent") == 2
        assert (await chat.client.get("/ready")).json()["push"] == "ok"


async def test_a_stream_whose_phone_went_away_is_pushed_once(
    live_app: LiveFactory, fcm: FCMServer, llm: MockLLM
) -> None:
    """The real wire: the app reads the first delta and is gone (sent to the background);
    the turn goes on and its reply is pushed."""
    async with live_app(**push_settings(fcm)) as live:
        await register(live, "token-phone-1")
        session_id = await new_session(live)
        await hang_up_as_it_starts(live, llm, session_id)
        [message] = await fcm.wait_for(1)
        assert message["data"]["session_id"] == session_id
        assert message["notification"]["body"] == REPLY
    assert fcm.attempts == 1


async def hang_up_as_it_starts(
    live: Live, llm: MockLLM, session_id: str, *, sockets: int = 0
) -> None:
    """A streamed turn whose client leaves after its first delta, then finishes (``sockets``:
    the user's WebSockets open meanwhile)."""
    resume = threading.Event()
    llm.script(Reply(content=REPLY, chunks=4, pause_after_chunks=1, resume=resume))
    # The user's open streams and sockets: the server saw the hang-up once only the sockets
    # are left.
    slots = live.services.quotas._streams._streams
    await until(lambda: slots.get(USER, 0) == sockets, "the sockets to be counted")
    async with live.stream(session_id, "where?") as response:
        async for event in read_events(response):
            if event.event == "delta":
                break
    await until(lambda: slots.get(USER, 0) == sockets, "the stream to close")
    resume.set()
    await until(lambda: not live.services.turns.in_flight_count, "the turn to end")


async def test_a_socket_open_on_the_session_hears_the_reply_so_no_push(
    live_app: LiveFactory, fcm: FCMServer, llm: MockLLM
) -> None:
    """The real wire: another device's WebSocket on the session sees the reply live."""
    async with live_app(**push_settings(fcm)) as live:
        await register(live, "token-phone-1")
        session_id = await new_session(live)
        url = live.url.replace("http://", "ws://") + f"{API}/session/{session_id}/ws"
        async with websockets.connect(url) as laptop:
            assert json.loads(await laptop.recv())["type"] == "chat_history"
            await hang_up_as_it_starts(live, llm, session_id, sockets=1)
            metrics = live.services.metrics
            await until(lambda: metrics.pushes("skipped", "connected") == 1, "the decision")
        await hang_up_as_it_starts(live, llm, session_id)  # the laptop has closed too
        [message] = await fcm.wait_for(1)
        assert message["data"]["session_id"] == session_id


async def test_a_turn_a_client_heard_is_not_pushed(
    make_settings: SettingsFactory, clock: FakeClock, fcm: FCMServer
) -> None:
    async with pushing(make_settings, clock, fcm) as chat:
        await register(chat, "token-phone-1")
        session_id = await new_session(chat)
        push = notifier(chat.services)
        assert (await chat.send(session_id, "json")).status_code == 200
        await push.idle()
        stream = f"{API}/session/{session_id}/message/stream"
        async with chat.client.stream("POST", stream, json={"message": "sse"}) as response:
            assert [e.event for e in await collect(response)][-1] == "done"
        await push.idle()
        with chat.services.bus.subscribe(session_id):  # a socket open on the session
            await unheard_turn(chat.services, session_id)
            await notifier(chat.services).idle()
        assert chat.services.metrics.pushes("skipped", "connected") == 3
        assert fcm.attempts == 0


async def test_a_client_back_within_the_grace_period_cancels_the_push(
    make_settings: SettingsFactory, clock: FakeClock, fcm: FCMServer
) -> None:
    async with pushing(make_settings, clock, fcm, push_grace_seconds=60) as chat:
        await register(chat, "token-phone-1")
        first, second = await new_session(chat), await new_session(chat)
        await unheard_turn(chat.services, first)
        await unheard_turn(chat.services, second)
        push = notifier(chat.services)
        assert push.backlog == 2
        with chat.services.bus.subscribe(first):  # the app came back: its socket reopened
            assert push.backlog == 1
        assert (await chat.send(second, "and then?")).status_code == 200  # a new turn
        await push.idle()
        assert chat.services.metrics.pushes("skipped", "reconnected") == 2
        assert chat.services.metrics.pushes("skipped", "connected") == 1  # the JSON turn
        assert fcm.attempts == 0


async def test_opt_outs_by_user_and_by_session(
    make_settings: SettingsFactory, clock: FakeClock, fcm: FCMServer
) -> None:
    async with pushing(make_settings, clock, fcm) as chat:
        await register(chat, "token-phone-1")
        muted, other = await new_session(chat), await new_session(chat)
        off = await chat.client.put(f"{API}/users/{USER}/push", json={"enabled": False})
        assert off.json() == {"success": True, "enabled": False, "muted_sessions": []}
        await unheard_turn(chat.services, other)
        await notifier(chat.services).idle()
        assert fcm.attempts == 0
        await chat.client.put(f"{API}/users/{USER}/push", json={"enabled": True})
        session_off = await chat.client.put(f"{API}/session/{muted}/push", json={"enabled": False})
        assert session_off.json()["muted_sessions"] == [muted]
        read = (await chat.client.get(f"{API}/users/{USER}/push")).json()
        assert read == {"success": True, "enabled": True, "muted_sessions": [muted]}
        await unheard_turn(chat.services, muted)
        await notifier(chat.services).idle()
        assert fcm.attempts == 0
        assert chat.services.metrics.pushes("skipped", "opted_out") == 2
        await unheard_turn(chat.services, other)
        await notifier(chat.services).idle()
        assert [m["data"]["session_id"] for m in fcm.messages] == [other]


async def test_without_reply_text_the_notification_has_none(
    make_settings: SettingsFactory, clock: FakeClock, fcm: FCMServer, llm: MockLLM, caplog: Any
) -> None:
    caplog.set_level(logging.DEBUG)
    async with pushing(make_settings, clock, fcm, push_include_text=False) as chat:
        await register(chat, "token-phone-1")
        session_id = await new_session(chat)
        llm.script(Reply(content=REPLY))
        await unheard_turn(chat.services, session_id)
        [message] = await fcm.wait_for(1)
        assert message["notification"] == {"title": "Pirate"}
        assert "treasure" not in repr(message)
    assert "treasure" not in caplog.text  # nor in any log line


async def test_a_failed_turn_nobody_heard_is_pushed_without_text_or_seq(
    make_settings: SettingsFactory, clock: FakeClock, fcm: FCMServer, llm: MockLLM
) -> None:
    async with pushing(make_settings, clock, fcm) as chat:
        await register(chat, "token-phone-1")
        session_id = await new_session(chat)
        llm.script(Reply(status=500))
        turn = await unheard_turn(chat.services, session_id)
        assert turn.task is not None and turn.task.exception() is not None
        [message] = await fcm.wait_for(1)
        assert message["notification"] == {"title": "Pirate"}
        assert message["data"] == {"session_id": session_id, "kind": "failed"}


# Reliability ------------------------------------------------------------------------------


async def test_past_the_queue_limit_pushes_are_dropped_and_counted(
    make_settings: SettingsFactory, clock: FakeClock, fcm: FCMServer
) -> None:
    async with pushing(
        make_settings, clock, fcm, push_grace_seconds=60, push_queue_limit=1
    ) as chat:
        await register(chat, "token-phone-1")
        first, second = await new_session(chat), await new_session(chat)
        await unheard_turn(chat.services, first)
        await unheard_turn(chat.services, second)
        assert notifier(chat.services).backlog == 1
        assert chat.services.metrics.pushes("dropped", "queue_full") == 1


async def test_an_fcm_that_does_not_answer_is_retried_then_counted(
    make_settings: SettingsFactory, clock: FakeClock, fcm: FCMServer
) -> None:
    with FCMServer() as gone:
        url = gone.url  # a port nothing listens on once it stopped
    async with pushing(make_settings, clock, fcm, fcm_url=url, push_max_attempts=2) as chat:
        await register(chat, "token-phone-1")
        await unheard_turn(chat.services, await new_session(chat))
        await notifier(chat.services).idle()
        assert chat.services.metrics.pushes("failed", "retries_exhausted") == 1
        assert [d.token for d in await chat.services.store.list_devices(USER)] == ["token-phone-1"]


async def test_a_token_fcm_calls_unregistered_or_invalid_is_removed(
    make_settings: SettingsFactory, clock: FakeClock, fcm: FCMServer
) -> None:
    fcm.unregistered.add("token-gone-1")
    fcm.invalid.add("token-bad-2")
    async with pushing(make_settings, clock, fcm) as chat:
        await register(chat, "token-gone-1", "token-bad-2", "token-phone-3")
        await unheard_turn(chat.services, await new_session(chat))
        await notifier(chat.services).idle()
        assert fcm.tokens() == ["token-phone-3"]
        devices = (await chat.client.get(f"{API}/users/{USER}/devices")).json()["devices"]
        assert [d["token"] for d in devices] == ["token-phone-3"]
        assert chat.services.metrics.pushes("failed", "dead_token") == 2


async def test_an_error_without_fcms_verdict_on_the_token_keeps_it(
    make_settings: SettingsFactory, clock: FakeClock, fcm: FCMServer
) -> None:
    """A wrong FCM_URL (404 without FCM's error code) must not empty the user's devices."""
    async with pushing(make_settings, clock, fcm, fcm_url=f"{fcm.url}/wrong") as chat:
        await register(chat, "token-phone-1")
        await unheard_turn(chat.services, await new_session(chat))
        await notifier(chat.services).idle()
        assert fcm.attempts == 1 and fcm.messages == []
        assert chat.services.metrics.pushes("failed", "refused") == 1
        devices = (await chat.client.get(f"{API}/users/{USER}/devices")).json()["devices"]
        assert [d["token"] for d in devices] == ["token-phone-1"]


async def test_retryable_answers_are_retried_until_fcm_takes_the_message(
    make_settings: SettingsFactory, clock: FakeClock, fcm: FCMServer
) -> None:
    fcm.fail_next(503, 1)
    fcm.fail_next(429, 1, retry_after="0")
    async with pushing(make_settings, clock, fcm) as chat:
        await register(chat, "token-phone-1")
        await unheard_turn(chat.services, await new_session(chat))
        await notifier(chat.services).idle()
        assert fcm.attempts == 3 and fcm.tokens() == ["token-phone-1"]
        assert chat.services.metrics.pushes("sent") == 1


async def test_a_dead_fcm_costs_pushes_never_turns(
    make_settings: SettingsFactory, clock: FakeClock, fcm: FCMServer
) -> None:
    fcm.fail_next(503, 1000)
    async with pushing(make_settings, clock, fcm, push_max_attempts=2) as chat:
        await register(chat, "token-phone-1")
        session_id = await new_session(chat)
        await unheard_turn(chat.services, session_id)
        await notifier(chat.services).idle()
        assert fcm.attempts == 2
        assert chat.services.metrics.pushes("failed", "retries_exhausted") == 1
        assert (await chat.send(session_id, "still there?")).status_code == 200
        ready = await chat.client.get("/ready")
        assert ready.status_code == 200 and ready.json()["push"] == "failing"
        metrics = (await chat.client.get("/metrics")).text
        assert 'chatify_push_total{outcome="failed",reason="retries_exhausted"} 1.0' in metrics


# Two replicas, one Redis ------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_two_replicas_send_each_push_once_and_see_each_others_clients(
    make_settings: SettingsFactory,
    clock: FakeClock,
    redis_url: str,
    redis_server: RedisServer,
    fcm: FCMServer,
) -> None:
    """Two apps on one store and one Redis (in one event loop, so the test can drive their
    pipelines and buses directly)."""
    settings = make_settings(**push_settings(fcm, redis_url=redis_url, push_grace_seconds=0.2))
    async with running_app(settings, clock) as a, running_app(settings, clock) as b:
        await register(a, "token-phone-1", "token-tablet-2")
        sessions = [await new_session(a) for _ in range(4)]
        turns = [
            await unheard_turn((a if n % 2 else b).services, sid) for n, sid in enumerate(sessions)
        ]
        await asyncio.gather(notifier(a.services).idle(), notifier(b.services).idle())
        sent = sorted((m["data"]["session_id"], m["token"]) for m in fcm.messages)
        assert sent == sorted(
            (t.session_id, d) for t in turns for d in ("token-phone-1", "token-tablet-2")
        )

        # A socket on B: the turn A runs is not pushed.
        watched = sessions[0]
        with b.services.bus.subscribe(watched):
            channel = f"chatify:session:{watched}"
            await until(
                lambda: b"\r\n:1\r\n" in redis_server.command("PUBSUB", "NUMSUB", channel),
                "B's subscription",
            )
            await unheard_turn(a.services, watched)
            await notifier(a.services).idle()
        assert a.services.metrics.pushes("skipped", "connected") == 1
        await until(
            lambda: b"\r\n:0\r\n" in redis_server.command("PUBSUB", "NUMSUB", channel),
            "B's socket gone",
        )

        # Back on B within A's grace period (and gone again): A sends nothing.
        before = len(fcm.messages)
        await unheard_turn(a.services, watched)
        await until(lambda: notifier(a.services).waiting(watched), "A's push waiting")
        with b.services.bus.subscribe(watched):
            pass
        await notifier(a.services).idle()
        assert len(fcm.messages) == before
        assert a.services.metrics.pushes("skipped", "claimed") == 1


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_a_reply_relayed_to_a_client_on_another_replica_is_not_pushed(
    make_settings: SettingsFactory,
    clock: FakeClock,
    redis_url: str,
    fcm: FCMServer,
    llm: MockLLM,
) -> None:
    """A runs the turn with nobody following it; the phone's resend reaches B, which relays
    A's events to it: the phone heard the reply, so A pushes nothing."""
    settings = make_settings(**push_settings(fcm, redis_url=redis_url, push_grace_seconds=0.2))
    async with running_app(settings, clock) as a, running_app(settings, clock) as b:
        await register(a, "token-phone-1")
        session_id = await new_session(a)
        resume = threading.Event()
        llm.script(Reply(content=REPLY, chunks=4, pause_after_chunks=1, resume=resume))
        ran, _ = a.services.turns.submit(
            session_id, text="where?", client_message_id="c-1", stream=True
        )
        await until(lambda: any(e.kind == "delta" for e in ran.events), "A's first delta")
        relayed, _ = b.services.turns.submit(
            session_id, text="where?", client_message_id="c-1", stream=True
        )

        async def phone() -> list[str]:
            return [event.kind async for event in relayed.follow()]

        following = asyncio.create_task(phone())
        await until(lambda: bool(relayed.events), "B relaying A's events")
        resume.set()
        assert (await following)[-1] == "done"
        assert relayed.relayed and ran.task is not None
        await asyncio.wait({ran.task})
        await asyncio.gather(notifier(a.services).idle(), notifier(b.services).idle())
        assert fcm.attempts == 0
        assert a.services.metrics.pushes("skipped", "claimed") == 1
