"""Two replicas on one store: two service processes on one SQLite file, one Realtime
Database test server, or one PostgreSQL database. Clients spray turns for shared sessions at
both at once; afterwards nothing acknowledged is lost, nothing is stored twice, and every
history is whole and exact.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from bench.harness import running, start_mock_llm, start_service
from tests.support.stored import DrillStore, Snapshot, history_problems

API = "/api/v1/chatbot"
SESSIONS = 3
CLIENTS_PER_SESSION = 3
TURNS_PER_CLIENT = 12
TIMEOUT = httpx.Timeout(30.0)


@dataclass(frozen=True)
class Ack:
    """A turn answered 200, and the body that said so."""

    session_id: str
    client_message_id: str
    text: str
    body: dict[str, Any]


def ack_problems(snapshot: Snapshot, acks: list[Ack]) -> list[str]:
    """Every acknowledged turn stored exactly once, whole; nothing else stored."""
    problems = []
    for ack in acks:
        msgs = snapshot.histories.get(ack.session_id, [])
        found = [i for i, m in enumerate(msgs) if m.client_message_id == ack.client_message_id]
        if len(found) != 1:
            problems.append(f"{ack.client_message_id}: stored {len(found)} times")
        elif msgs[found[0]].content != ack.text or found[0] + 1 >= len(msgs):
            problems.append(f"{ack.client_message_id}: stored without its reply")
    stored = {m.client_message_id for msgs in snapshot.histories.values() for m in msgs}
    extra = {cmid for cmid in stored if cmid is not None} - {a.client_message_id for a in acks}
    return problems + [f"{cmid}: stored but never acknowledged" for cmid in sorted(extra)]


async def create_sessions(client: httpx.AsyncClient) -> list[str]:
    """SESSIONS new sessions, one user each."""
    session_ids = []
    for number in range(SESSIONS):
        created = await client.post(f"{API}/session", json={"user_id": f"replica-user-{number}"})
        assert created.status_code == 201, created.text
        session_ids.append(created.json()["session_id"])
    return session_ids


async def test_two_replicas_lose_and_duplicate_nothing(store: DrillStore) -> None:
    with running(start_mock_llm("--latency-ms", "15")) as llm:
        settings = store.settings(llm.url)
        with running(start_service(**settings)) as one, running(start_service(**settings)) as two:
            async with (
                httpx.AsyncClient(base_url=one.url, timeout=TIMEOUT) as a,
                httpx.AsyncClient(base_url=two.url, timeout=TIMEOUT) as b,
            ):
                session_ids = await create_sessions(a)
                acks: list[Ack] = []
                failures: list[str] = []

                async def spray(session_id: str, name: str, first: int) -> None:
                    """Turns one after another, each to the other replica than the last."""
                    for number in range(TURNS_PER_CLIENT):
                        cmid, text = f"{name}-{number}", f"{name} says {number}"
                        replica = (a, b)[(first + number) % 2]
                        response = await replica.post(
                            f"{API}/session/{session_id}/message",
                            json={"message": text, "client_message_id": cmid},
                        )
                        if response.status_code != 200:
                            failures.append(f"{cmid}: {response.status_code} {response.text}")
                        else:
                            acks.append(Ack(session_id, cmid, text, response.json()))

                await asyncio.gather(
                    *(
                        spray(sid, f"s{s}c{c}", c)
                        for s, sid in enumerate(session_ids)
                        for c in range(CLIENTS_PER_SESSION)
                    )
                )

        assert not failures, failures[:5]
        assert len(acks) == SESSIONS * CLIENTS_PER_SESSION * TURNS_PER_CLIENT
        for ack in acks:
            assert ack.body["response"] == f"Echo: {ack.text}", ack
            assert ack.body["replayed"] is False, ack
        for sid in session_ids:  # each 200 counted its own turn: 1..n, no count twice
            counts = sorted(ack.body["message_count"] for ack in acks if ack.session_id == sid)
            assert counts == list(range(1, CLIENTS_PER_SESSION * TURNS_PER_CLIENT + 1)), counts
        snapshot = store.read()
        assert set(snapshot.histories) == set(session_ids)
        assert not history_problems(snapshot), history_problems(snapshot)[:10]
        assert not ack_problems(snapshot, acks), ack_problems(snapshot, acks)[:10]


# A phone that times out on one replica and resends to the other while the first still works:
# one stored turn, and the stored reply back.
@pytest.mark.parametrize("store", ["sqlite", "firebase", "postgres"], indirect=True)
async def test_same_client_message_id_at_both_replicas_is_stored_once(store: DrillStore) -> None:
    pairs = 8
    with running(start_mock_llm("--latency-ms", "15")) as llm:
        settings = store.settings(llm.url)
        with running(start_service(**settings)) as one, running(start_service(**settings)) as two:
            async with (
                httpx.AsyncClient(base_url=one.url, timeout=TIMEOUT) as a,
                httpx.AsyncClient(base_url=two.url, timeout=TIMEOUT) as b,
            ):
                session_ids = await create_sessions(a)
                acks: list[Ack] = []

                async def both(session_id: str, cmid: str) -> None:
                    body = {"message": f"twice {cmid}", "client_message_id": cmid}
                    url = f"{API}/session/{session_id}/message"
                    answers = await asyncio.gather(a.post(url, json=body), b.post(url, json=body))
                    assert [r.status_code for r in answers] == [200, 200], answers[0].text
                    bodies = [r.json() for r in answers]
                    assert {body["response"] for body in bodies} == {f"Echo: twice {cmid}"}
                    assert sorted(body["replayed"] for body in bodies) == [False, True], bodies
                    acks.append(Ack(session_id, cmid, body["message"], bodies[0]))

                for number in range(pairs):
                    await asyncio.gather(*(both(sid, f"{sid[:8]}-{number}") for sid in session_ids))

        snapshot = store.read()
        assert not history_problems(snapshot), history_problems(snapshot)[:10]
        assert not ack_problems(snapshot, acks), ack_problems(snapshot, acks)[:10]
        assert sum(snapshot.counts.values()) == SESSIONS * pairs
