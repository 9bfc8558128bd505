"""Two replicas on one store: two service processes on one SQLite file, or on one Realtime
Database test server. Clients spray turns for shared sessions at both at once; afterwards
nothing acknowledged is lost, nothing is stored twice, and every history is whole and exact.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.harness import Proc, running, start_mock_llm, start_rtdb, start_service
from bench.load import bench_settings

API = "/api/v1/chatbot"
SESSIONS = 3
CLIENTS_PER_SESSION = 3
TURNS_PER_CLIENT = 12
TIMEOUT = httpx.Timeout(30.0)


@dataclass(frozen=True)
class Msg:
    """A stored message, as read straight from the store."""

    seq: int
    role: str
    content: str
    client_message_id: str | None


@dataclass
class Snapshot:
    """Every session's stored history (by seq) and stored message_count."""

    histories: dict[str, list[Msg]]
    counts: dict[str, int]


@dataclass(frozen=True)
class Ack:
    """A turn answered 200, and the body that said so."""

    session_id: str
    client_message_id: str
    text: str
    body: dict[str, Any]


class Store:
    """The shared store: settings for both replicas, and a way to read it directly."""

    def __init__(self, kind: str, tmp_path: Path, rtdb: Proc | None) -> None:
        self.kind = kind
        self.rtdb = rtdb
        self.sqlite_path = tmp_path / "chatify.db"
        self.namespace = ""

    def settings(self, llm_url: str) -> dict[str, object]:
        settings = bench_settings(llm_url, self.rtdb.url if self.rtdb else None)
        if self.rtdb is None:
            settings["sqlite_path"] = str(self.sqlite_path)
        else:
            self.namespace = str(settings["firebase_database_url"]).split("?ns=", 1)[1]
        return settings

    def read(self) -> Snapshot:
        if self.rtdb is None:
            conn = sqlite3.connect(self.sqlite_path, timeout=10)
            try:
                counts = dict(conn.execute("SELECT session_id, message_count FROM sessions"))
                rows = conn.execute(
                    "SELECT session_id, seq, role, content, client_message_id FROM messages "
                    "ORDER BY session_id, seq"
                ).fetchall()
            finally:
                conn.close()
            histories: dict[str, list[Msg]] = {sid: [] for sid in counts}
            for sid, seq, role, content, cmid in rows:
                histories.setdefault(sid, []).append(Msg(seq, role, content, cmid))
            return Snapshot(histories, counts)
        url = f"{self.rtdb.url}/userSessions.json?ns={self.namespace}"
        data = httpx.get(url, timeout=10).json() or {}
        return Snapshot(
            {
                sid: sorted(
                    (
                        Msg(m["seq"], m["role"], m["content"], m.get("client_message_id"))
                        for m in (node.get("conversation_history") or {}).values()
                    ),
                    key=lambda m: m.seq,
                )
                for sid, node in data.items()
            },
            {sid: int(node.get("message_count", 0)) for sid, node in data.items()},
        )


@pytest.fixture(params=["sqlite", "firebase"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """An empty shared store (Firebase: the RTDB test server as its own process)."""
    if request.param == "sqlite":
        yield Store("sqlite", tmp_path, None)
        return
    with running(start_rtdb()) as rtdb:
        yield Store("firebase", tmp_path, rtdb)


def history_problems(snapshot: Snapshot) -> list[str]:
    """Alternating user/assistant pairs with seqs 0..n-1, exact counts, no id stored twice."""
    problems = []
    for sid, msgs in snapshot.histories.items():
        if [m.seq for m in msgs] != list(range(len(msgs))):
            problems.append(f"{sid}: seqs are not 0..n-1: {[m.seq for m in msgs]}")
        if len(msgs) % 2 or snapshot.counts.get(sid) != len(msgs) // 2:
            problems.append(f"{sid}: message_count {snapshot.counts.get(sid)}, {len(msgs)} stored")
        for user, reply in zip(msgs[::2], msgs[1::2], strict=False):
            if (user.role, reply.role) != ("user", "assistant"):
                problems.append(f"{sid}: seqs {user.seq},{reply.seq} are not user, assistant")
            elif reply.content != f"Echo: {user.content}":
                problems.append(f"{sid}: seq {reply.seq} is not the reply to seq {user.seq}")
        ids = Counter(m.client_message_id for m in msgs if m.client_message_id)
        problems += [f"{sid}: {cmid} stored {n} times" for cmid, n in ids.items() if n > 1]
    return problems


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
    extra = stored - {None} - {ack.client_message_id for ack in acks}
    return problems + [f"{cmid}: stored but never acknowledged" for cmid in sorted(extra)]


async def create_sessions(client: httpx.AsyncClient) -> list[str]:
    """SESSIONS new sessions, one user each."""
    session_ids = []
    for number in range(SESSIONS):
        created = await client.post(f"{API}/session", json={"user_id": f"replica-user-{number}"})
        assert created.status_code == 201, created.text
        session_ids.append(created.json()["session_id"])
    return session_ids


async def test_two_replicas_lose_and_duplicate_nothing(store: Store) -> None:
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
@pytest.mark.parametrize("store", ["sqlite", "firebase"], indirect=True)
async def test_same_client_message_id_at_both_replicas_is_stored_once(store: Store) -> None:
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
