"""Fault drills against the service as a process (``python -m api``, as the Procfile runs it).

- LLM faults: the mock LLM answers 500s, hangs and 429s at random. Clients see only documented
  errors, exactly the turns that got a 200 are stored, ``/health`` keeps answering fast (the
  event loop never blocks), and a healthy LLM on the same port is used again without restart.
- Store faults: the Realtime Database test server (in this process, so faults can be injected)
  answers 503, drops connections or stalls; SQLite is held under an exclusive lock. Turns answer
  503 ``store_unavailable``, nothing half-written remains, and the service recovers on its own.
"""

from __future__ import annotations

import asyncio
import copy
import sqlite3
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.harness import Proc, clean_env, running, start, start_mock_llm, start_service
from bench.load import bench_settings, percentile
from testkit.live import read_events
from testkit.rtdb_server import Fault, RTDBServer
from tests.support.stored import (
    Msg,
    firebase_snapshot,
    history_problems,
    read_sqlite,
    sqlite_snapshot,
)

API = "/api/v1/chatbot"
TIMEOUT = httpx.Timeout(30.0)
# status -> the error codes README documents for a turn with that status (None: success)
DOCUMENTED: dict[int, set[str | None]] = {
    200: {None},
    429: {"rate_limited", "session_busy"},
    502: {"llm_error"},
    503: {"llm_unavailable"},
    504: {"llm_timeout"},
}
STREAM_ERRORS = {"llm_error", "llm_unavailable", "llm_timeout"}
HEALTH_P99_MS = 250.0


def stored_ids(histories: dict[str, list[Msg]], session_id: str) -> list[str]:
    """The client_message_ids of a session's stored user messages, in order."""
    return [
        m.client_message_id
        for m in histories.get(session_id, [])
        if m.role == "user" and m.client_message_id
    ]


def error_code(response: httpx.Response) -> str | None:
    """The API error code of a response (None for a success)."""
    if response.status_code < 400:
        return None
    code: str = response.json()["error"]["code"]
    return code


async def create_sessions(client: httpx.AsyncClient, count: int, prefix: str) -> list[str]:
    """New sessions, one user each."""
    session_ids = []
    for number in range(count):
        created = await client.post(f"{API}/session", json={"user_id": f"{prefix}-{number}"})
        assert created.status_code == 201, created.text
        session_ids.append(created.json()["session_id"])
    return session_ids


async def send(
    client: httpx.AsyncClient, session_id: str, text: str, cmid: str | None = None
) -> httpx.Response:
    """One JSON turn."""
    body: dict[str, Any] = {"message": text}
    if cmid is not None:
        body["client_message_id"] = cmid
    return await client.post(f"{API}/session/{session_id}/message", json=body)


# --------------------------------------------------------------------------- LLM faults


@dataclass
class HealthProbe:
    """GET /health every 20 ms on its own thread and connection, recording latencies."""

    url: str
    latencies_ms: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> HealthProbe:
        self._thread = threading.Thread(target=self._run, name="health-probe", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(10)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=5) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    response = client.get("/health")
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                else:
                    self.latencies_ms.append((time.perf_counter() - started) * 1000)
                    if response.status_code != 200:
                        self.failures.append(f"HTTP {response.status_code}")
                self._stop.wait(0.02)  # pacing, not waiting for anything


@dataclass
class Outcomes:
    """Per session: the client_message_ids answered 200, and those that failed."""

    ok: dict[str, list[str]] = field(default_factory=dict)
    failed: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # (cmid, text)
    codes: Counter[str] = field(default_factory=Counter)
    undocumented: list[str] = field(default_factory=list)


async def faulty_client(
    client: httpx.AsyncClient, session_id: str, name: str, sse: bool, turns: int, out: Outcomes
) -> None:
    """Turns one after another; each outcome is recorded and checked against the README."""
    out.ok[session_id], out.failed[session_id] = [], []
    for number in range(turns):
        cmid, text = f"{name}-{number}", f"{name} asks {number}"
        body = {"message": text, "client_message_id": cmid}
        if not sse:
            response = await client.post(f"{API}/session/{session_id}/message", json=body)
            status, code = response.status_code, error_code(response)
            if code not in DOCUMENTED.get(status, set()):
                out.undocumented.append(f"{cmid}: HTTP {status} {response.text[:200]}")
            elif status == 200 and response.json()["response"] != f"Echo: {text}":
                out.undocumented.append(f"{cmid}: wrong reply {response.text[:200]}")
            outcome = "200" if status == 200 else f"{status} {code}"
        else:
            url = f"{API}/session/{session_id}/message/stream"
            outcome = "cut"
            async with client.stream("POST", url, json=body) as response:
                if response.status_code != 200:
                    await response.aread()
                    outcome = f"{response.status_code} {error_code(response)}"
                else:
                    async for event in read_events(response):
                        if event.event == "done":
                            reply = event.json()["response"]
                            outcome = "200" if reply == f"Echo: {text}" else f"wrong {reply}"
                        elif event.event == "error":
                            outcome = f"sse {event.json()['code']}"
            stream_ok = {"200", "429 rate_limited", "429 session_busy"}
            if outcome not in stream_ok and outcome.removeprefix("sse ") not in STREAM_ERRORS:
                out.undocumented.append(f"{cmid}: stream ended with {outcome}")
        out.codes[outcome] += 1
        if outcome == "200":
            out.ok[session_id].append(cmid)
        else:
            out.failed[session_id].append((cmid, text))


def start_mock_on(port: int, *flags: str) -> Proc:
    """The mock LLM on a given port (to replace one without the service noticing)."""
    return start(
        [sys.executable, "-m", "testkit.mock_llm", "--port", str(port), *flags],
        env=clean_env(),
        ready_url=f"http://127.0.0.1:{port}/health",
        name="mock-llm",
    )


async def test_llm_faults_give_documented_errors_store_nothing_and_never_block(
    tmp_path: Path,
) -> None:
    sessions, turns = 6, 12
    faults = ("--error-rate", "0.3", "--hang-rate", "0.1", "--rate-limit-rate", "0.1")
    faulty = start_mock_llm("--latency-ms", "10", *faults)
    port = int(faulty.url.rsplit(":", 1)[1])
    settings = bench_settings(faulty.url, None, llm_timeout_seconds=1, llm_max_retries=1)
    settings["sqlite_path"] = str(tmp_path / "chatify.db")
    out = Outcomes()
    try:
        with running(start_service(**settings)) as service:
            async with httpx.AsyncClient(base_url=service.url, timeout=TIMEOUT) as client:
                session_ids = await create_sessions(client, sessions, "llm-faults")
                with HealthProbe(service.url) as probe:
                    await asyncio.gather(
                        *(
                            faulty_client(client, sid, f"s{n}", n % 3 == 2, turns, out)
                            for n, sid in enumerate(session_ids)
                        )
                    )
                faulty.stop()

                assert not out.undocumented, out.undocumented[:5]
                assert out.codes["200"] and sum(out.codes.values()) > out.codes["200"], out.codes
                snapshot = read_sqlite(tmp_path / "chatify.db")
                assert not history_problems(snapshot), history_problems(snapshot)
                for sid in session_ids:  # exactly the 200s are stored, in the order sent
                    stored = stored_ids(snapshot.histories, sid)
                    assert stored == out.ok[sid], (out.ok[sid], out.codes)
                assert not probe.failures, probe.failures[:5]
                p99 = percentile(probe.latencies_ms, 99)
                assert len(probe.latencies_ms) >= 50, len(probe.latencies_ms)
                assert p99 < HEALTH_P99_MS, (
                    f"/health p99 {p99:.1f} ms over {len(probe.latencies_ms)} probes "
                    f"(max {max(probe.latencies_ms):.1f} ms): is the event loop blocked?"
                )

                # A healthy LLM on the same port: served again, no restart. Every failed turn
                # stored nothing, so resending its client_message_id runs it now, once.
                with running(start_mock_on(port)):
                    for sid in session_ids:
                        for cmid, text in out.failed[sid]:
                            response = await send(client, sid, text, cmid)
                            assert response.status_code == 200, response.text
                            assert response.json()["replayed"] is False, response.text
                            assert response.json()["response"] == f"Echo: {text}"
                        response = await send(client, sid, "healthy again", f"{sid}-healthy")
                        assert response.status_code == 200, response.text
                        assert response.json()["message_count"] == turns + 1
    finally:
        faulty.stop()

    snapshot = read_sqlite(tmp_path / "chatify.db")
    assert not history_problems(snapshot), history_problems(snapshot)
    assert sum(snapshot.counts.values()) == sessions * (turns + 1)


# --------------------------------------------------------------------------- store faults


async def settle(server: RTDBServer, fault: Fault) -> None:
    """Wait (bounded) until every request the fault held has been answered by the server."""
    deadline = time.monotonic() + 20
    while sum(r.faulted for r in server.requests) < fault.hits:
        assert time.monotonic() < deadline, "delayed store requests never finished"
        await asyncio.sleep(0.05)  # polling the condition above


async def wait_ready(client: httpx.AsyncClient) -> None:
    """Poll /ready until 200 (bounded)."""
    deadline = time.monotonic() + 20
    while (response := await client.get("/ready")).status_code != 200:
        assert time.monotonic() < deadline, response.text
        await asyncio.sleep(0.1)  # polling the condition above


@pytest.fixture
def rtdb() -> Iterator[RTDBServer]:
    """The Realtime Database test server in this process, so faults can be injected."""
    with RTDBServer() as server:
        yield server


@pytest.mark.parametrize("kind", ["status-503", "drop", "stall"])
async def test_firebase_outage_answers_503_writes_nothing_and_recovers(
    rtdb: RTDBServer, kind: str
) -> None:
    with running(start_mock_llm()) as llm:
        settings = bench_settings(llm.url, rtdb.url, store_timeout_seconds=2)
        namespace = str(settings["firebase_database_url"]).split("?ns=", 1)[1]
        with running(start_service(**settings)) as service:
            async with httpx.AsyncClient(base_url=service.url, timeout=TIMEOUT) as client:
                session_ids = await create_sessions(client, 2, "store-faults")
                for sid in session_ids:
                    assert (await send(client, sid, "before", f"{sid}-before")).status_code == 200
                before = copy.deepcopy(rtdb.get_data(namespace, "/userSessions"))
                rtdb.clear_requests()
                fault = rtdb.faults.add(
                    status=503 if kind == "status-503" else None,
                    drop=kind == "drop",
                    delay=3.0 if kind == "stall" else 0.0,  # longer than STORE_TIMEOUT_SECONDS
                    times=None,
                )
                ready, created, *turns = await asyncio.gather(
                    client.get("/ready"),
                    client.post(f"{API}/session", json={"user_id": "store-faults-new"}),
                    *(send(client, sid, "during", f"{sid}-during") for sid in session_ids),
                    *(send(client, sid, "during, no id") for sid in session_ids),
                )
                rtdb.faults.clear()
                assert ready.status_code == 503 and ready.json()["store_ok"] is False, ready.text
                for response in (created, *turns):
                    assert response.status_code == 503, response.text
                    assert error_code(response) == "store_unavailable", response.text
                    assert response.headers["retry-after"] == "2"
                await settle(rtdb, fault)
                after = rtdb.get_data(namespace, "/userSessions")
                for node in (*before.values(), *after.values()):
                    # A session's title is background work, retried until it lands: it may be
                    # written at any moment of this drill, and each title call adds its tokens
                    # to the session's usage. Turns are what must not move.
                    node.pop("title", None)
                    node["usage_totals"] = node.get("usage_totals", {}).get("turns")
                    shares = node.get("usage_by_model", {})
                    node["usage_by_model"] = {key: s.get("turns") for key, s in shares.items()}
                    if kind == "stall":  # a seq claim may land late; no message, count or id may
                        node.pop("next_seq")
                assert after == before

                await wait_ready(client)  # recovered on its own, no restart
                for sid in session_ids:
                    response = await send(client, sid, "during", f"{sid}-during")
                    assert response.status_code == 200, response.text
                    assert response.json()["replayed"] is False  # the failed turn stored nothing
                    if kind != "stall":  # see the seq-gap drill below
                        assert response.json()["message_count"] == 2
                created = await client.post(f"{API}/session", json={"user_id": "store-faults-new"})
                assert created.status_code == 201, created.text

    snapshot = firebase_snapshot(rtdb.get_data(namespace, "/userSessions"))
    # After a stall the seq claimed by the turn without an id can be left unused (a gap).
    problems = history_problems(snapshot, contiguous=kind != "stall")
    assert not problems, problems
    for sid in session_ids:
        assert stored_ids(snapshot.histories, sid) == [f"{sid}-before", f"{sid}-during"]


# A seq claim (a conditional PUT on next_seq) that times out but is applied afterwards must not
# leave a gap, and later replies must report the exact message_count.
async def test_firebase_seq_claim_landing_after_its_timeout_leaves_no_gap(
    rtdb: RTDBServer,
) -> None:
    with running(start_mock_llm()) as llm:
        settings = bench_settings(llm.url, rtdb.url, store_timeout_seconds=2)
        namespace = str(settings["firebase_database_url"]).split("?ns=", 1)[1]
        with running(start_service(**settings)) as service:
            async with httpx.AsyncClient(base_url=service.url, timeout=TIMEOUT) as client:
                (sid,) = await create_sessions(client, 1, "late-claim")
                assert (await send(client, sid, "first", "first")).status_code == 200
                # Both attempts of the claim answer after the 1 s HTTP timeout; both are applied
                # (the second one is refused by its if-match, as it should be).
                fault = rtdb.faults.add(
                    delay=1.5,
                    methods=["PUT"],
                    path_prefix=f"/userSessions/{sid}/next_seq",
                    times=2,
                )
                slow = await send(client, sid, "slow", "slow")
                assert slow.status_code in (200, 503), slow.text
                await settle(rtdb, fault)
                retried = await send(client, sid, "slow", "slow")
                assert retried.status_code == 200, retried.text
                assert retried.json()["message_count"] == 2, retried.text

    snapshot = firebase_snapshot(rtdb.get_data(namespace, "/userSessions"))
    assert not history_problems(snapshot), history_problems(snapshot)


# A turn whose multi-path update times out but lands afterwards (a slow database, not a dead
# one) must not be written over by the next turn.
async def test_firebase_turn_update_landing_after_its_timeout_is_not_overwritten(
    rtdb: RTDBServer,
) -> None:
    with running(start_mock_llm()) as llm:
        settings = bench_settings(llm.url, rtdb.url, store_timeout_seconds=2)
        namespace = str(settings["firebase_database_url"]).split("?ns=", 1)[1]
        with running(start_service(**settings)) as service:
            async with httpx.AsyncClient(base_url=service.url, timeout=TIMEOUT) as client:
                (sid,) = await create_sessions(client, 1, "late-write")
                assert (await send(client, sid, "first", "first")).status_code == 200
                # The turn update answers after the 1 s HTTP timeout, but is applied.
                fault = rtdb.faults.add(delay=1.5, methods=["PATCH"], times=1)
                late = await send(client, sid, "late", "late")
                assert late.status_code in (200, 503), late.text
                await settle(rtdb, fault)
                after = await send(client, sid, "after", "after")
                assert after.status_code == 200, after.text
                retried = await send(client, sid, "late", "late")
                assert retried.status_code == 200, retried.text
                assert retried.json()["response"] == "Echo: late"

    snapshot = firebase_snapshot(rtdb.get_data(namespace, "/userSessions"))
    assert not history_problems(snapshot), history_problems(snapshot)
    assert sorted(stored_ids(snapshot.histories, sid)) == ["after", "first", "late"]


async def test_sqlite_locked_answers_503_writes_nothing_and_recovers(tmp_path: Path) -> None:
    path = tmp_path / "chatify.db"
    with running(start_mock_llm()) as llm:
        settings = bench_settings(llm.url, None, store_timeout_seconds=1)
        settings["sqlite_path"] = str(path)
        with running(start_service(**settings)) as service:
            async with httpx.AsyncClient(base_url=service.url, timeout=TIMEOUT) as client:
                session_ids = await create_sessions(client, 2, "sqlite-lock")
                for sid in session_ids:
                    assert (await send(client, sid, "before", f"{sid}-before")).status_code == 200
                lock = sqlite3.connect(path, isolation_level=None, timeout=5)
                try:
                    lock.execute("BEGIN EXCLUSIVE")
                    before = sqlite_snapshot(lock)
                    created, *turns = await asyncio.gather(
                        client.post(f"{API}/session", json={"user_id": "sqlite-lock-new"}),
                        *(send(client, sid, "during", f"{sid}-during") for sid in session_ids),
                        *(send(client, sid, "during, no id") for sid in session_ids),
                    )
                    for response in (created, *turns):
                        assert response.status_code == 503, response.text
                        assert error_code(response) == "store_unavailable", response.text
                    assert sqlite_snapshot(lock) == before
                finally:
                    lock.execute("ROLLBACK")
                    lock.close()

                for sid in session_ids:  # released: works again, and nothing was stored
                    response = await send(client, sid, "during", f"{sid}-during")
                    assert response.status_code == 200, response.text
                    assert response.json()["replayed"] is False
                    assert response.json()["message_count"] == 2
                created = await client.post(f"{API}/session", json={"user_id": "sqlite-lock-new"})
                assert created.status_code == 201, created.text

    snapshot = read_sqlite(path)
    assert not history_problems(snapshot), history_problems(snapshot)
    for sid in session_ids:
        assert stored_ids(snapshot.histories, sid) == [f"{sid}-before", f"{sid}-during"]
