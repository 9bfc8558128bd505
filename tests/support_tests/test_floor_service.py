"""The floor service (``bench.floor``'s minimal service on the same stack) as the bench runs
it: a real process against the mock LLM, its turns answered and stored before the answer."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx

from bench.harness import running, start_mock_llm, start_service

BASE = "/api/v1/chatbot/session"


def test_the_floor_answers_turns_and_stores_each_before_its_answer(tmp_path: Path) -> None:
    database = tmp_path / "floor.db"
    with (
        running(start_mock_llm()) as llm,
        running(
            start_service(
                module="bench.floor_service",
                openai_base_url=f"{llm.url}/v1",
                openai_api_key="bench",
                sqlite_path=database,
            )
        ) as floor,
        httpx.Client(base_url=floor.url, timeout=10) as client,
    ):
        started = client.post(BASE, json={"user_id": "u1"})
        assert started.status_code == 201
        session = f"{BASE}/{started.json()['session_id']}"
        for text in ("first", "second"):
            answer = client.post(f"{session}/message", json={"message": text})
            assert answer.status_code == 200
            assert answer.json()["response"] == f"Echo: {text}"
        with sqlite3.connect(database) as conn:  # the service is still running: its WAL
            rows = conn.execute("SELECT seq, role, content FROM messages ORDER BY seq").fetchall()
            count = conn.execute("SELECT message_count FROM sessions").fetchone()[0]
        assert rows == [
            (0, "user", "first"),
            (1, "assistant", "Echo: first"),
            (2, "user", "second"),
            (3, "assistant", "Echo: second"),
        ]
        assert count == 2
        assert client.delete(session).status_code == 200
        assert client.post(f"{session}/message", json={"message": "x"}).status_code == 404
