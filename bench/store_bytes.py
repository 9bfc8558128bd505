"""Bytes the store writes per turn, at turn 1 and at turn N, on both backends.

Firebase: the request bodies the service sends for the turn (seq claim + multi-path update),
from the Realtime Database test server's request log. SQLite: the WAL bytes the turn's commit
appends (the WAL is checkpointed and truncated before each measured turn).

    python -m bench.store_bytes --turns 200
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sqlite3
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from api.app import create_app
from services.core.settings import REPO_ROOT, Settings
from testkit.mock_llm import MockLLM, MockLLMConfig
from testkit.rtdb_server import RTDBServer

logger = logging.getLogger("bench.store_bytes")


async def measure(settings: Settings, turns: int, turn_bytes: Callable[[], int]) -> dict[int, int]:
    """Run ``turns`` turns in one session; bytes of the first and the last."""
    app = create_app(settings)
    results: dict[int, int] = {}
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://b") as client,
    ):
        created = await client.post("/api/v1/chatbot/session", json={"user_id": "bench"})
        sid = created.json()["session_id"]
        for n in range(1, turns + 1):
            measured = n in (1, turns)
            if measured:
                turn_bytes()  # reset the counter
            body = {"message": f"message {n:05d} " + "x" * 80, "client_message_id": f"c-{n:05d}"}
            response = await client.post(f"/api/v1/chatbot/session/{sid}/message", json=body)
            response.raise_for_status()
            if measured:
                results[n] = turn_bytes()
    return results


def firebase_counter(server: RTDBServer, ns: str) -> Callable[[], int]:
    """Bytes of write requests since the last call."""

    def count() -> int:
        written = sum(
            r.body_size
            for r in server.requests
            if r.namespace == ns and r.method in ("PUT", "PATCH", "POST")
        )
        server.clear_requests()
        return written

    return count


def sqlite_counter(path: Path) -> Callable[[], int]:
    """WAL bytes appended since the last call (which truncates the WAL)."""
    wal = Path(f"{path}-wal")

    def count() -> int:
        size = wal.stat().st_size if wal.exists() else 0
        with sqlite3.connect(path) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return size

    return count


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=200)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logger.setLevel(logging.INFO)
    main_with(turns=args.turns)


def main_with(*, turns: int) -> None:
    """Measure and log the table."""
    with (
        MockLLM(config=MockLLMConfig(record=False)) as llm,
        RTDBServer() as rtdb,
        tempfile.TemporaryDirectory() as folder,
    ):
        common: dict[str, Any] = {
            "openai_base_url": llm.url,
            "openai_api_key": "bench",
            "templates_seed_dir": REPO_ROOT / "templates_seed",
            "rate_limit_turns_per_minute": 1_000_000,
        }
        db = Path(folder) / "bench.db"
        runs = {
            "sqlite (WAL bytes)": (
                Settings(_env_file=None, store="sqlite", sqlite_path=db, **common),
                sqlite_counter(db),
            ),
            "firebase (request bytes)": (
                Settings(_env_file=None, firebase_database_url=rtdb.database_url("b"), **common),
                firebase_counter(rtdb, "b"),
            ),
        }
        lines = [f"| backend | turn 1 | turn {turns} |", "|---|---|---|"]
        for name, (settings, counter) in runs.items():
            result = asyncio.run(measure(settings, turns, counter))
            lines.append(f"| {name} | {result[1]} | {result[turns]} |")
    logger.info("store bytes written per turn\n%s", "\n".join(lines))


if __name__ == "__main__":
    main()
