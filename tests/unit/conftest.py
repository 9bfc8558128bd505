"""Fixtures for the unit tests: settings on a temporary SQLite file and the mock LLM, an open
store, the model client pointed at the mock, a session stored with some turns."""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from services.conversation.registry import ActiveSession, SeenIds
from services.core.records import NewTurn, Sampling, SessionRecord, StoredTurn, Usage
from services.core.settings import Settings
from services.llm.client import LLMClient
from services.llm.providers import default_client
from services.store import build_store
from services.store.base import Store
from testkit.mock_llm import MockLLM
from testkit.stored_turns import append_turn

T0 = "2026-01-01T12:00:00.000Z"
UnitSettings = Callable[..., Settings]


@pytest.fixture
def unit_settings(tmp_path: Path, llm: MockLLM) -> UnitSettings:
    """Settings on a SQLite file of the test's own and the mock LLM; keyword overrides win."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "store": "sqlite",
            "sqlite_path": tmp_path / "unit.db",
            "openai_base_url": llm.url,
            "openai_api_key": "sk-test",
            "llm_max_retries": 0,
            "llm_timeout_seconds": 5,
            **overrides,
        }
        return Settings(_env_file=None, **values)

    return make


@pytest.fixture
async def store(unit_settings: UnitSettings) -> AsyncIterator[Store]:
    """An open, empty SQLite store."""
    backend = build_store(unit_settings())
    await backend.open()
    try:
        yield backend
    finally:
        await backend.close()


@pytest.fixture
async def model(unit_settings: UnitSettings) -> AsyncIterator[LLMClient]:
    """The service's own model client, talking to the mock LLM over HTTP."""
    client = default_client(unit_settings())
    try:
        yield client
    finally:
        await client.close()


def session_record(*, context_messages: int = 6, **fields: Any) -> SessionRecord:
    """A new active session of ``user_1`` (keyword fields override)."""
    values: dict[str, Any] = {
        "session_id": str(uuid.uuid4()),
        "user_id": "user_1",
        "template_id": "plain",
        "status": "active",
        "created_at": T0,
        "last_activity": T0,
        "ended_at": None,
        "message_count": 0,
        "system_prompt": "You are plain.",
        "sampling": Sampling("gpt-test", 0.7, 100, 0.0, 0.0),
        "context_messages": context_messages,
        **fields,
    }
    return SessionRecord(**values)


def new_turn(number: int, *, user_text: str | None = None) -> NewTurn:
    """Turn ``number`` with recognisable text."""
    return NewTurn(
        user_text=user_text or f"Turn {number}.",
        reply=f"Reply {number}.",
        client_message_id=None,
        user_at=f"2026-01-01T12:{number:02d}:00.000Z",
        reply_at=f"2026-01-01T12:{number:02d}:01.000Z",
        usage=Usage(10, 2, 12),
    )


async def stored_session(
    store: Store, record: SessionRecord, turns: int, *, first: str | None = None
) -> tuple[ActiveSession, list[StoredTurn]]:
    """The session stored with ``turns`` turns, held as the turn pipeline holds it (its
    context the last ``context_messages`` messages)."""
    await store.create_session(record)
    stored = [
        await append_turn(store, record, new_turn(n, user_text=first if n == 1 else None))
        for n in range(1, turns + 1)
    ]
    messages = [m for turn in stored for m in (turn.user, turn.assistant)]
    context = deque(messages, maxlen=record.context_messages)
    next_seq = messages[-1].seq + 1 if messages else 0
    if stored:
        record.message_count = stored[-1].message_count
    return ActiveSession(record, context, next_seq, SeenIds()), stored


async def background_done() -> None:
    """Wait until every other task on the loop has finished: the background work the test
    set off (bounded, so a task that never ends fails the test instead of hanging it)."""
    async with asyncio.timeout(10):
        while others := asyncio.all_tasks() - {asyncio.current_task()}:
            await asyncio.gather(*others, return_exceptions=True)
    await asyncio.sleep(0)  # a finished task's done callbacks run on the next loop pass
