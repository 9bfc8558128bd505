"""PostgreSQL going away under a running service (real processes: the service as the Procfile
starts it, the mock LLM, a PostgreSQL server): a server restart under load fails turns with
503 ``store_unavailable`` and their retries store each turn once; a connection cut in the
middle of a turn's or a regenerate's transaction leaves nothing half-written.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx

from bench.harness import running, start_mock_llm, start_service
from bench.load import bench_settings
from testkit.postgres_server import PostgresServer, require_postgres
from tests.support.stored import history_problems, read_postgres

API = "/api/v1/chatbot"
SESSIONS = 4
ACKED_BEFORE_RESTART = 24
TURNS_AFTER_RESTART = 4  # per client, each after the server is back
TIMEOUT = httpx.Timeout(30.0)


def postgres_settings(llm_url: str, database_url: str) -> dict[str, Any]:
    """Service settings on the database, background LLM calls off (one writer per turn)."""
    return bench_settings(
        llm_url, None, database_url=database_url, session_titles=False, session_memory=False
    )


@dataclass
class Outage:
    """What the clients saw."""

    acked: list[tuple[str, str, str]] = field(default_factory=list)  # (session, cmid, text)
    refused: int = 0  # 503 store_unavailable, retried
    failures: list[str] = field(default_factory=list)  # anything else
    enough: asyncio.Event = field(default_factory=asyncio.Event)
    restarted: asyncio.Event = field(default_factory=asyncio.Event)


async def send_until_stored(
    client: httpx.AsyncClient, session_id: str, cmid: str, text: str, outage: Outage
) -> bool:
    """One turn, resent on each 503 ``store_unavailable`` until it is answered 200."""
    body = {"message": text, "client_message_id": cmid}
    for _ in range(10_000):  # bounded; the outage lasts about a second
        response = await client.post(f"{API}/session/{session_id}/message", json=body)
        if response.status_code == 200:
            if response.json()["response"] != f"Echo: {text}":
                outage.failures.append(f"{cmid}: {response.text}")
                return False
            outage.acked.append((session_id, cmid, text))
            if len(outage.acked) >= ACKED_BEFORE_RESTART:
                outage.enough.set()
            return True
        if response.status_code == 503 and response.json()["error"]["code"] == "store_unavailable":
            outage.refused += 1
            continue
        outage.failures.append(f"{cmid}: HTTP {response.status_code} {response.text}")
        return False
    outage.failures.append(f"{cmid}: never stored")
    return False


async def client_loop(
    client: httpx.AsyncClient, session_id: str, name: str, outage: Outage
) -> None:
    """Turns one after another until a few were stored after the restart."""
    after = 0
    for number in range(2000):
        if outage.restarted.is_set():
            after += 1
            if after > TURNS_AFTER_RESTART:
                return
        text = f"{name} says {number}"
        if not await send_until_stored(client, session_id, f"{name}-{number}", text, outage):
            return
    outage.failures.append(f"{name}: the restart never came")


async def test_a_postgres_restart_under_load_fails_turns_with_503_and_retries_store_each_once(
    tmp_path: Any,
) -> None:
    with (
        PostgresServer(require_postgres()) as server,  # its own: this test stops it
        running(start_mock_llm("--latency-ms", "20")) as llm,
    ):
        url = server.create_database()
        with running(start_service(**postgres_settings(llm.url, url))) as service:
            async with httpx.AsyncClient(base_url=service.url, timeout=TIMEOUT) as client:
                session_ids = []
                for number in range(SESSIONS):
                    created = await client.post(f"{API}/session", json={"user_id": f"pg-{number}"})
                    assert created.status_code == 201, created.text
                    session_ids.append(created.json()["session_id"])
                outage = Outage()
                clients = [
                    asyncio.create_task(client_loop(client, sid, f"c{n}", outage))
                    for n, sid in enumerate(session_ids)
                ]
                await asyncio.wait_for(outage.enough.wait(), timeout=30)
                await asyncio.to_thread(server.restart)  # a fast shutdown, then a start
                outage.restarted.set()
                await asyncio.wait_for(asyncio.gather(*clients), timeout=120)
                health = await client.get("/ready")
            log = service.log_text()
        snapshot = read_postgres(server, url)

    assert not outage.failures, outage.failures[:5]
    assert outage.refused > 0, "no turn met the restart"
    assert "postgres store error" in log
    assert health.status_code == 200, health.text
    assert not history_problems(snapshot), history_problems(snapshot)[:10]
    for session_id, cmid, text in outage.acked:  # each acknowledged turn stored once, whole
        stored = [m for m in snapshot.histories[session_id] if m.client_message_id == cmid]
        assert [m.content for m in stored] == [text], cmid
    assert sum(snapshot.counts.values()) == len(outage.acked)


async def waiting_backend(conn: Any, database: str, statement: str) -> int:
    """The pid of the service's backend waiting on a lock in ``statement`` (bounded poll)."""
    for _ in range(1000):
        # Inside a transaction the statistics views keep their first snapshot: drop it.
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        pid = await conn.fetchval(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock' "
            "AND pid <> pg_backend_pid() AND query LIKE $2",
            database,
            f"{statement}%",
        )
        if pid is not None:
            return int(pid)
        await asyncio.sleep(0.01)
    seen = await conn.fetch(
        "SELECT pid, state, wait_event_type, left(query, 60) FROM pg_stat_activity "
        "WHERE datname = $1",
        database,
    )
    raise AssertionError(f"no backend waited in {statement!r}: {[tuple(r) for r in seen]}")


async def test_a_connection_cut_mid_transaction_leaves_nothing_half_written(
    postgres_server: PostgresServer,
) -> None:
    url = postgres_server.create_database()
    database = url.rsplit("/", 1)[1]
    with running(start_mock_llm()) as llm:
        settings = postgres_settings(llm.url, url)
        with running(start_service(**settings)) as service:
            async with httpx.AsyncClient(base_url=service.url, timeout=TIMEOUT) as client:
                created = await client.post(f"{API}/session", json={"user_id": "cut"})
                sid = created.json()["session_id"]
                turn_url = f"{API}/session/{sid}/message"
                first = await client.post(
                    turn_url, json={"message": "one", "client_message_id": "c-1"}
                )
                assert first.status_code == 200, first.text
                holder = await asyncpg.connect(url)
                try:
                    # A turn's statement, cut while it waits for the session row's lock.
                    held = holder.transaction()
                    await held.start()
                    await holder.execute(
                        "SELECT 1 FROM sessions WHERE session_id = $1 FOR UPDATE", sid
                    )
                    body = {"message": "two", "client_message_id": "c-2"}
                    sending = asyncio.create_task(client.post(turn_url, json=body))
                    pid = await waiting_backend(holder, database, "WITH turn AS")
                    assert await holder.fetchval("SELECT pg_terminate_backend($1)", pid)
                    cut = await sending
                    await held.rollback()
                    assert cut.status_code == 503, cut.text
                    assert cut.json()["error"]["code"] == "store_unavailable"
                    after_cut = read_postgres(postgres_server, url)
                    assert [m.content for m in after_cut.histories[sid]] == ["one", "Echo: one"]
                    assert after_cut.counts[sid] == 1
                    again = await client.post(turn_url, json=body)
                    assert again.status_code == 200, again.text
                    assert again.json()["replayed"] is False and again.json()["message_count"] == 2

                    # A regenerate's transaction, cut after it took the old reply out of the
                    # active branch: its variant's row waits on ours (the same key, uncommitted).
                    held = holder.transaction()
                    await held.start()
                    await holder.execute(
                        "INSERT INTO message_variants VALUES ($1, 3, 1, 'held', '[]')", sid
                    )
                    regenerate = f"{API}/session/{sid}/regenerate"
                    asked = {"client_message_id": "r-1"}
                    sending = asyncio.create_task(client.post(regenerate, json=asked))
                    pid = await waiting_backend(holder, database, "WITH tail AS")
                    assert await holder.fetchval("SELECT pg_terminate_backend($1)", pid)
                    cut = await sending
                    await held.rollback()
                    assert cut.status_code == 503, cut.text
                    variants = await holder.fetchval(
                        "SELECT count(*) FROM message_variants WHERE session_id = $1", sid
                    )
                    assert variants == 0
                    kept = read_postgres(postgres_server, url).histories[sid]
                    assert [m.content for m in kept] == ["one", "Echo: one", "two", "Echo: two"]
                    regenerated = await client.post(regenerate, json=asked)
                    assert regenerated.status_code == 200, regenerated.text
                    listed = await client.get(f"{API}/session/{sid}/messages/3/variants")
                    assert listed.status_code == 200, listed.text
                finally:
                    await holder.close()
    final = read_postgres(postgres_server, url)
    assert not history_problems(final), history_problems(final)
    assert final.counts[sid] == 2
