"""Crash drill for regenerate and edit: SIGKILL the service while clients regenerate and edit
replies, restart it on the same store, and check that every acknowledged reply is kept once
(in the active branch or as a variant), that the active branch holds whole turns only, that
a resent regenerate or edit is replayed or run once, and that the sessions carry on.

Real processes (``bench.harness``): the service as the Procfile starts it, the mock LLM (its
replies echo the message), and for Firebase the Realtime Database test server.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench.harness import running, start_mock_llm, start_service
from tests.support.stored import DrillStore, history_problems

API = "/api/v1/chatbot"
SESSIONS = 4
ACKED_BEFORE_KILL = 40
MAX_OPS_PER_CLIENT = 400  # far more than a client can send before the kill
TIMEOUT = httpx.Timeout(20.0)


@dataclass(frozen=True)
class Op:
    """A regenerate (``text`` None) or an edit of the last user message, by one client."""

    session_id: str
    client_message_id: str
    text: str | None = None


@dataclass
class Load:
    """What the clients sent and which operations the service acknowledged."""

    sent: list[Op] = field(default_factory=list)
    acked: list[Op] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    enough: asyncio.Event = field(default_factory=asyncio.Event)

    def ack(self, op: Op, body: dict[str, Any], user_text: str) -> None:
        reply = body["assistant_message"]
        if body.get("response") != f"Echo: {user_text}" or body.get("replayed") is not False:
            self.failures.append(f"{op.client_message_id}: unexpected body {body}")
            return
        if op.text is None and reply["client_message_id"] != op.client_message_id:
            self.failures.append(f"{op.client_message_id}: the reply carries another id")
            return
        self.acked.append(op)
        if len(self.acked) >= ACKED_BEFORE_KILL:
            self.enough.set()


async def client_loop(client: httpx.AsyncClient, session_id: str, name: str, load: Load) -> None:
    """Regenerate and edit the session's last turn, by turns, until the service dies."""
    user_seq, user_text = 0, f"first of {name}"
    for number in range(MAX_OPS_PER_CLIENT):
        cid = f"{name}-{number}"
        op = (
            Op(session_id, cid)
            if number % 2 == 0
            else Op(session_id, cid, f"edit {name} #{number}")
        )
        load.sent.append(op)
        try:
            if op.text is None:
                response = await client.post(
                    f"{API}/session/{session_id}/regenerate", json={"client_message_id": cid}
                )
            else:
                response = await client.patch(
                    f"{API}/session/{session_id}/messages/{user_seq}",
                    json={"message": op.text, "client_message_id": cid},
                )
        except httpx.TransportError:
            return  # the service was killed: this operation is unacknowledged
        if response.status_code != 200:
            load.failures.append(f"{cid}: HTTP {response.status_code} {response.text}")
            return
        body = response.json()
        user_text = op.text if op.text is not None else user_text
        load.ack(op, body, user_text)
        user_seq = body["user_message"]["seq"]
    load.failures.append(f"{name}: ran out of operations before the kill")


async def every_message(client: httpx.AsyncClient, session_id: str) -> list[dict[str, Any]]:
    """The active branch and every variant of every seq, through the API."""
    history = await client.get(f"{API}/session/{session_id}/messages", params={"limit": 200})
    assert history.status_code == 200, history.text
    active: list[dict[str, Any]] = history.json()["messages"]
    found = list(active)
    for seq in range(0, max((m["seq"] for m in active), default=-1) + 1):
        variants = await client.get(f"{API}/session/{session_id}/messages/{seq}/variants")
        assert variants.status_code == 200, variants.text
        for variant in variants.json()["variants"]:
            found += variant["messages"]
    return found


def kept(messages: list[dict[str, Any]], op: Op) -> int:
    """How many times the operation's reply is kept (active or a variant)."""
    if op.text is None:
        return sum(
            1
            for m in messages
            if m["role"] == "assistant" and m["client_message_id"] == op.client_message_id
        )
    return sum(
        1
        for m in messages
        if m["role"] == "user"
        and m["client_message_id"] == op.client_message_id
        and m["content"] == op.text
    )


async def test_kill_9_mid_regenerate_and_edit_loses_no_acknowledged_reply(
    store: DrillStore,
) -> None:
    with running(start_mock_llm("--latency-ms", "30", "--chunk-delay-ms", "5")) as llm:
        settings = store.settings(llm.url)
        service = start_service(**settings)
        try:
            async with httpx.AsyncClient(base_url=service.url, timeout=TIMEOUT) as client:
                session_ids = []
                for number in range(SESSIONS):
                    created = await client.post(
                        f"{API}/session", json={"user_id": f"branch-user-{number}"}
                    )
                    assert created.status_code == 201, created.text
                    sid = created.json()["session_id"]
                    first = await client.post(
                        f"{API}/session/{sid}/message", json={"message": f"first of c{number}"}
                    )
                    assert first.status_code == 200, first.text
                    session_ids.append(sid)
                load = Load()
                tasks = [
                    asyncio.create_task(client_loop(client, sid, f"c{n}", load))
                    for n, sid in enumerate(session_ids)
                ]
                await asyncio.wait_for(load.enough.wait(), timeout=30)
                await asyncio.to_thread(service.kill)  # SIGKILL while some are in flight
                await asyncio.wait_for(asyncio.gather(*tasks), timeout=20)
        finally:
            if service.popen.poll() is None:
                service.kill()

        assert not load.failures, load.failures[:5]
        assert 1 <= len(load.sent) - len(load.acked) <= SESSIONS
        # With the service dead: the active branch holds whole turns only.
        after_crash = store.read()
        assert not history_problems(after_crash, contiguous=store.kind != "firebase"), (
            history_problems(after_crash, contiguous=store.kind != "firebase")
        )

        with running(start_service(**settings)) as restarted:
            async with httpx.AsyncClient(base_url=restarted.url, timeout=TIMEOUT) as client:
                for sid in session_ids:
                    messages = await every_message(client, sid)
                    for op in load.acked:
                        if op.session_id == sid:
                            assert kept(messages, op) == 1, (op, messages)
                # The sessions carry on: a new turn, then a regenerate of it.
                for sid in session_ids:
                    turn = await client.post(
                        f"{API}/session/{sid}/message", json={"message": "after restart"}
                    )
                    assert turn.status_code == 200, turn.text
                    again = await client.post(f"{API}/session/{sid}/regenerate", json={})
                    assert again.status_code == 200, again.text
                    assert again.json()["response"] == "Echo: after restart"
                    assert again.json()["message_count"] == turn.json()["message_count"]

        final = store.read()
        assert not history_problems(final, contiguous=store.kind != "firebase"), history_problems(
            final, contiguous=store.kind != "firebase"
        )
