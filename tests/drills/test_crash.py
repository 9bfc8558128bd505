"""Crash drill: SIGKILL the service under load, restart it on the same store, and check that
every acknowledged turn survived exactly once, that no half-turn exists, and that the
sessions carry on (new turns work, unacknowledged turns replay or run once).

Real processes (``bench.harness``): the service exactly as the Procfile starts it, the mock
LLM, and for Firebase the Realtime Database test server.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.harness import Proc, running, start_mock_llm, start_rtdb, start_service
from bench.load import bench_settings
from tests.support.live import read_events

API = "/api/v1/chatbot"
SESSIONS = 4
# (session index, transport) per client: two clients per session, two of them over SSE.
CLIENTS = [(0, "json"), (1, "json"), (2, "json"), (3, "json"),
           (0, "json"), (1, "sse"), (2, "json"), (3, "sse")]  # fmt: skip
ACKED_BEFORE_KILL = 60  # turns acknowledged before the kill, of which some over SSE
SSE_ACKED_BEFORE_KILL = 4
MAX_TURNS_PER_CLIENT = 400  # far more than a client can send before the kill
TIMEOUT = httpx.Timeout(20.0)


@dataclass(frozen=True)
class Msg:
    """A stored message, as read straight from the store."""

    seq: int
    role: str
    content: str
    client_message_id: str | None


@dataclass
class Snapshot:
    """Every session's stored history (by seq), message_count and next free seq."""

    histories: dict[str, list[Msg]]
    counts: dict[str, int]
    next_seq: dict[str, int]


@dataclass(frozen=True)
class Sent:
    """A turn a client sent."""

    session_id: str
    client_message_id: str
    text: str


@dataclass
class Load:
    """What the clients sent and which turns the service acknowledged."""

    sent: list[Sent] = field(default_factory=list)
    acked: list[Sent] = field(default_factory=list)
    sse_acked: int = 0
    failures: list[str] = field(default_factory=list)  # anything but a 200 or a dead service
    enough: asyncio.Event = field(default_factory=asyncio.Event)

    def ack(self, turn: Sent, body: dict[str, Any], *, sse: bool) -> None:
        if body.get("response") != f"Echo: {turn.text}" or body.get("replayed") is not False:
            self.failures.append(f"{turn.client_message_id}: unexpected body {body}")
            return
        self.acked.append(turn)
        self.sse_acked += sse
        if len(self.acked) >= ACKED_BEFORE_KILL and self.sse_acked >= SSE_ACKED_BEFORE_KILL:
            self.enough.set()


class Store:
    """The store under test: settings for the service, and a way to read it directly."""

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
            return _read_sqlite(self.sqlite_path)
        url = f"{self.rtdb.url}/userSessions.json?ns={self.namespace}"
        data = httpx.get(url, timeout=10).json() or {}
        histories = {
            sid: sorted(
                (
                    Msg(m["seq"], m["role"], m["content"], m.get("client_message_id"))
                    for m in (node.get("conversation_history") or {}).values()
                ),
                key=lambda m: m.seq,
            )
            for sid, node in data.items()
        }
        counts = {sid: int(node.get("message_count", 0)) for sid, node in data.items()}
        next_seq = {sid: int(node["next_seq"]["next"]) for sid, node in data.items()}
        return Snapshot(histories, counts, next_seq)


def _read_sqlite(path: Path) -> Snapshot:
    conn = sqlite3.connect(path, timeout=10)
    try:
        counts = dict(conn.execute("SELECT session_id, message_count FROM sessions").fetchall())
        histories: dict[str, list[Msg]] = {sid: [] for sid in counts}
        rows = conn.execute(
            "SELECT session_id, seq, role, content, client_message_id FROM messages "
            "ORDER BY session_id, seq"
        ).fetchall()
    finally:
        conn.close()
    for sid, seq, role, content, cmid in rows:
        histories.setdefault(sid, []).append(Msg(seq, role, content, cmid))
    return Snapshot(histories, counts, {sid: 2 * count for sid, count in counts.items()})


@pytest.fixture(params=["sqlite", "firebase"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """An empty store of each kind (Firebase: the RTDB test server as its own process)."""
    if request.param == "sqlite":
        yield Store("sqlite", tmp_path, None)
        return
    with running(start_rtdb()) as rtdb:
        yield Store("firebase", tmp_path, rtdb)


def history_problems(snapshot: Snapshot, *, contiguous: bool) -> list[str]:
    """Whole turns only: user at an even seq, its reply right after, counts exact."""
    problems = []
    for sid, msgs in snapshot.histories.items():
        seqs = [m.seq for m in msgs]
        if len(msgs) % 2:
            problems.append(f"{sid}: odd number of messages ({len(msgs)})")
        if snapshot.counts.get(sid) != len(msgs) // 2:
            problems.append(f"{sid}: message_count {snapshot.counts.get(sid)}, {len(msgs)} stored")
        if contiguous and seqs != list(range(len(msgs))):
            problems.append(f"{sid}: seqs are not 0..n-1: {seqs}")
        for user, reply in zip(msgs[::2], msgs[1::2], strict=False):
            if user.role != "user" or user.seq % 2 or reply.role != "assistant":
                problems.append(f"{sid}: not a user/assistant pair at seq {user.seq}")
            elif reply.seq != user.seq + 1 or reply.content != f"Echo: {user.content}":
                problems.append(f"{sid}: seq {user.seq} has no reply right after it")
        ids = Counter(m.client_message_id for m in msgs if m.client_message_id)
        problems += [f"{sid}: {cmid} stored {n} times" for cmid, n in ids.items() if n > 1]
    return problems


def stored_turn(snapshot: Snapshot, turn: Sent) -> list[Msg]:
    """The user messages stored for this turn's client_message_id."""
    return [
        m
        for m in snapshot.histories.get(turn.session_id, [])
        if m.role == "user" and m.client_message_id == turn.client_message_id
    ]


async def client_loop(
    client: httpx.AsyncClient, session_id: str, name: str, transport: str, load: Load
) -> None:
    """Send turns one after another until the service dies."""
    for number in range(MAX_TURNS_PER_CLIENT):
        turn = Sent(session_id, f"{name}-{number}", f"hello from {name} #{number}")
        load.sent.append(turn)
        body = {"message": turn.text, "client_message_id": turn.client_message_id}
        try:
            if transport == "json":
                response = await client.post(f"{API}/session/{session_id}/message", json=body)
                if response.status_code == 200:
                    load.ack(turn, response.json(), sse=False)
                else:
                    load.failures.append(f"{name}: HTTP {response.status_code} {response.text}")
                continue
            url = f"{API}/session/{session_id}/message/stream"
            async with client.stream("POST", url, json=body) as response:
                if response.status_code != 200:
                    load.failures.append(f"{name}: HTTP {response.status_code}")
                    continue
                async for event in read_events(response):
                    if event.event == "done":
                        load.ack(turn, event.json(), sse=True)
                    elif event.event == "error":
                        load.failures.append(f"{name}: error event {event.data}")
        except httpx.TransportError:
            return  # the service was killed: this turn is unacknowledged
    load.failures.append(f"{name}: ran out of turns before the kill")


async def test_kill_9_under_load_loses_no_acknowledged_turn(store: Store) -> None:
    with running(start_mock_llm("--latency-ms", "30", "--chunk-delay-ms", "5")) as llm:
        settings = store.settings(llm.url)
        service = start_service(**settings)
        try:
            async with httpx.AsyncClient(base_url=service.url, timeout=TIMEOUT) as client:
                session_ids = []
                for number in range(SESSIONS):
                    created = await client.post(
                        f"{API}/session", json={"user_id": f"crash-user-{number}"}
                    )
                    assert created.status_code == 201, created.text
                    session_ids.append(created.json()["session_id"])
                load = Load()
                tasks = [
                    asyncio.create_task(
                        client_loop(client, session_ids[index], f"c{n}", transport, load)
                    )
                    for n, (index, transport) in enumerate(CLIENTS)
                ]
                await asyncio.wait_for(load.enough.wait(), timeout=20)
                await asyncio.to_thread(service.kill)  # SIGKILL while turns are in flight
                await asyncio.wait_for(asyncio.gather(*tasks), timeout=20)
        finally:
            if service.popen.poll() is None:
                service.kill()

        assert not load.failures, load.failures[:5]
        # Each client stops at its first failed request: at most one unacknowledged turn each
        # (none for an SSE client cut after its `done`).
        unacked = len(load.sent) - len(load.acked)
        assert 1 <= unacked <= len(CLIENTS), (len(load.sent), len(load.acked))

        # With the service dead: every acknowledged turn is stored once, whole.
        after_crash = store.read()
        assert set(after_crash.histories) == set(session_ids)
        assert not history_problems(after_crash, contiguous=store.kind == "sqlite"), (
            history_problems(after_crash, contiguous=store.kind == "sqlite")
        )
        for turn in load.acked:
            assert [m.content for m in stored_turn(after_crash, turn)] == [turn.text], turn

        with running(start_service(**settings)) as restarted:
            async with httpx.AsyncClient(base_url=restarted.url, timeout=TIMEOUT) as client:
                # Resend every unacknowledged turn: replayed if it was stored, else run once.
                acked_ids = {t.client_message_id for t in load.acked}
                for turn in load.sent:
                    if turn.client_message_id in acked_ids:
                        continue
                    was_stored = bool(stored_turn(after_crash, turn))
                    response = await client.post(
                        f"{API}/session/{turn.session_id}/message",
                        json={"message": turn.text, "client_message_id": turn.client_message_id},
                    )
                    assert response.status_code == 200, response.text
                    body = response.json()
                    assert body["response"] == f"Echo: {turn.text}"
                    assert body["replayed"] is was_stored, (turn, was_stored, body)
                # Every session takes a new turn, counted after everything stored so far.
                now = store.read()
                for sid in session_ids:
                    response = await client.post(
                        f"{API}/session/{sid}/message",
                        json={"message": f"after restart {sid}", "client_message_id": "post"},
                    )
                    assert response.status_code == 200, response.text
                    # Unless the kill fell between a Firebase seq claim and its turn write: that
                    # leaves a gap, and replies then count one too many (the known bug drilled
                    # by test_faults.py::test_firebase_seq_claim_landing_after_its_timeout...).
                    if now.next_seq[sid] == 2 * now.counts[sid]:
                        assert response.json()["message_count"] == now.counts[sid] + 1

        final = store.read()
        assert not history_problems(final, contiguous=store.kind == "sqlite"), history_problems(
            final, contiguous=store.kind == "sqlite"
        )
        for turn in load.sent:  # acknowledged or resent: now each is stored exactly once
            assert [m.content for m in stored_turn(final, turn)] == [turn.text], turn
        assert sum(final.counts.values()) == len(load.sent) + SESSIONS
