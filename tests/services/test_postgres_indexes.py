"""Every query the API makes of the PostgreSQL store is answered from an index, checked with
``EXPLAIN`` on a database of a few hundred thousand rows (made with ``generate_series``): no
route scans a table that grows with use (sessions, messages, variants, usage).

The plans are those of the store's own statements, with its own arguments: a store whose
connections ``EXPLAIN`` each statement before running it records them.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from services.core.records import NewTurn, SessionCursor, TurnClaim, Usage
from services.core.settings import Settings
from services.store.postgres import PostgresStore
from services.store.versions import RULES
from testkit.postgres_server import PostgresServer

GROWING = {
    "sessions", "messages", "message_variants", "usage_daily", "usage_daily_by_model",
    "session_usage_by_model",
}  # fmt: skip
USERS, SESSIONS, WITH_MESSAGES, MESSAGES_EACH = 4_000, 40_000, 3_000, 100  # 300,000 messages
ROWS = f"""
INSERT INTO sessions (session_id, user_id, template_id, status, created_at, last_activity,
    message_count, system_prompt, model, temperature, max_tokens, presence_penalty,
    frequency_penalty, context_messages)
SELECT 's' || g, 'u' || (g % {USERS}), 'pirate', CASE WHEN g % 3 = 0 THEN 'ended' ELSE 'active' END,
    to_char(timestamp '2026-01-01' + g * interval '1 minute', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
    to_char(timestamp '2026-01-01' + g * interval '1 minute', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
    CASE WHEN g < {WITH_MESSAGES} THEN {MESSAGES_EACH // 2} ELSE 0 END,
    'You are a pirate.', 'gpt-test', 0.5, 50, 0, 0, 10
FROM generate_series(0, {SESSIONS - 1}) g;
INSERT INTO messages (session_id, seq, role, content, timestamp, client_message_id)
SELECT 's' || (g / {MESSAGES_EACH}), g % {MESSAGES_EACH},
    CASE WHEN g % 2 = 0 THEN 'user' ELSE 'assistant' END, 'message ' || g,
    '2026-01-01T12:00:00.000Z', CASE WHEN g % 2 = 0 THEN 'c' || g END
FROM generate_series(0, {WITH_MESSAGES * MESSAGES_EACH - 1}) g;
INSERT INTO usage_daily (user_id, day, prompt_tokens, completion_tokens, turns)
SELECT 'u' || (g % {USERS}), to_char(date '2025-01-01' + g / {USERS}, 'YYYY-MM-DD'), 10, 5, 1
FROM generate_series(0, {USERS * 50 - 1}) g;
INSERT INTO usage_daily_by_model (user_id, day, provider, model, prompt_tokens, turns)
SELECT 'u' || (g % {USERS}), to_char(date '2025-01-01' + g / {USERS}, 'YYYY-MM-DD'), 'default',
    'gpt-test', 10, 1
FROM generate_series(0, {USERS * 50 - 1}) g;
INSERT INTO session_usage_by_model (session_id, provider, model, prompt_tokens, turns)
SELECT 's' || g, 'default', 'gpt-test', 10, 1 FROM generate_series(0, {SESSIONS - 1}) g;
INSERT INTO message_variants (session_id, seq, variant, created_at, messages)
SELECT 's' || (g % {WITH_MESSAGES}), 1 + 2 * (g / {WITH_MESSAGES}), 1, '2026-01-01', '[]'
FROM generate_series(0, {WITH_MESSAGES * 20 - 1}) g;
ANALYZE;
"""


class Explained:
    """A pooled connection that ``EXPLAIN``s each statement, then runs it."""

    def __init__(self, conn: Any, plans: list[tuple[str, Any]]) -> None:
        self._conn, self._plans = conn, plans

    async def _explain(self, sql: str, args: tuple[Any, ...]) -> None:
        if sql.lstrip().upper().startswith(("SELECT", "WITH", "UPDATE", "INSERT", "DELETE")):
            plan = await self._conn.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *args)
            self._plans.append((sql, json.loads(plan)[0]["Plan"]))

    async def fetch(self, sql: str, *args: Any) -> Any:
        await self._explain(sql, args)
        return await self._conn.fetch(sql, *args)

    async def fetchrow(self, sql: str, *args: Any) -> Any:
        await self._explain(sql, args)
        return await self._conn.fetchrow(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        await self._explain(sql, args)
        return await self._conn.fetchval(sql, *args)

    async def execute(self, sql: str, *args: Any) -> Any:
        await self._explain(sql, args)
        return await self._conn.execute(sql, *args)

    def transaction(self) -> Any:
        return self._conn.transaction()


class ExplainingStore(PostgresStore):
    """The PostgreSQL store, recording the plan of every statement it runs."""

    plans: list[tuple[str, Any]]

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        async with super()._connection() as conn:
            yield Explained(conn, self.plans)


def scans(plan: dict[str, Any]) -> list[tuple[str, str]]:
    """Every (node type, relation) of a plan tree."""
    found = [(plan["Node Type"], plan.get("Relation Name", ""))]
    for child in plan.get("Plans", []):
        found += scans(child)
    return found


@pytest.fixture(scope="module")
def big_database(postgres_server: PostgresServer) -> str:
    """A migrated database holding the generated rows (made once for the module)."""
    return postgres_server.create_database("chatify_big")


@pytest.fixture
async def explaining(big_database: str, postgres_server: PostgresServer) -> AsyncIterator[Any]:
    """The recording store on the big database, open."""
    store = ExplainingStore(Settings(_env_file=None, store="postgres", database_url=big_database))
    store.plans = []
    await store.open()  # migrates an empty database the first time
    database = big_database.rsplit("/", 1)[1]
    if postgres_server.psql("SELECT count(*) FROM sessions", database).strip() == "0":
        postgres_server.psql(ROWS, database)
    try:
        yield store
    finally:
        await store.close()


async def test_every_api_query_uses_an_index_on_a_few_hundred_thousand_rows(
    explaining: ExplainingStore,
) -> None:
    store = explaining
    session = await store.get_session("s43")
    assert session is not None and session.message_count == MESSAGES_EACH // 2
    # History by seq: the newest page, an older page, forward sync, a turn by its id.
    assert len(await store.load_messages("s43", limit=20)) == 20
    assert len(await store.load_messages("s43", limit=20, before=40)) == 20
    assert len(await store.load_messages_after("s43", after=10, limit=20)) == 20
    assert await store.find_turn("s43", f"c{43 * MESSAGES_EACH + 10}") is not None
    assert len(await store.load_client_ids("s43")) == MESSAGES_EACH // 2
    # Sessions by user and activity, every status or one, and the cursor below a page.
    page = await store.list_user_sessions("u7", status=None, limit=5)
    assert len(page) == 5
    cursor = SessionCursor(page[-1].last_activity, page[-1].session_id)
    assert len(await store.list_user_sessions("u7", status=None, limit=5, before=cursor)) == 5
    assert await store.list_user_sessions("u7", status="active", limit=5, before=cursor)
    # A turn's claim and write, a branch's variants, a day's usage, the rules.
    claim = await store.claim_turn(session, "new-id")
    assert isinstance(claim, TurnClaim)
    turn = NewTurn("hi", "hello", "new-id", "2026-02-01T00:00:00.000Z",
                   "2026-02-01T00:00:01.000Z", Usage(1, 1, 2))  # fmt: skip
    assert (await store.write_turn(session, claim, turn)).created
    assert await store.load_variants("s43", 1)
    days = await store.load_usage(
        "u7", since_day="2025-01-01", until_day="2025-01-31", by_model=True
    )
    assert len(days) == 31 and days[0].by_model
    assert await store.expire_idle_sessions(idle_before="2026-01-01T00:05:00.000Z", at="x")
    await store.read_document(RULES)

    assert len(store.plans) >= 15
    for sql, plan in store.plans:
        seq_scans = [rel for node, rel in scans(plan) if node == "Seq Scan" and rel in GROWING]
        assert not seq_scans, (sql, scans(plan))
