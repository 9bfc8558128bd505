"""The floor: a minimal chat service on the same stack, for ``python -m bench.floor``.

What a turn cannot do without: Starlette on uvicorn (uvloop, httptools), the model asked
through one pooled aiohttp session with an ``orjson`` body, and both messages stored in one
SQLite transaction (WAL, ``synchronous=FULL``) on one writer thread before the answer. No
auth, limits, metrics, memory, titles, usage, events or logs: the issue's measure of what
this stack allows (docs/performance.md, "The floor"). It speaks the three calls of
``bench.load``'s users (start a session, send a message, end it) and reads ``PORT``,
``HOST``, ``OPENAI_BASE_URL``, ``OPENAI_API_KEY`` and ``SQLITE_PATH`` from the environment,
as the bench starts the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

MODEL = "gpt-4o-mini"
WINDOW = 10  # messages of history in a prompt
SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (session_id TEXT PRIMARY KEY, user_id TEXT NOT NULL,
    message_count INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS messages (session_id TEXT NOT NULL, seq INTEGER NOT NULL,
    role TEXT NOT NULL, content TEXT NOT NULL, PRIMARY KEY (session_id, seq));
"""


class Floor:
    """The service's state: the model's session, the writer thread and each session's window."""

    def __init__(self, llm_url: str, api_key: str, path: str) -> None:
        self._url = f"{llm_url.rstrip('/')}/chat/completions"
        self._headers = {"authorization": f"Bearer {api_key}", "content-type": "application/json"}
        self._path = path
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="floor-writer")
        self._conn: sqlite3.Connection | None = None
        self._http: aiohttp.ClientSession | None = None
        self._windows: dict[str, list[dict[str, str]]] = {}  # the prompt's history
        self._seqs: dict[str, int] = {}  # each session's next message seq

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        await self._write(self._open)
        self._http = aiohttp.ClientSession()
        try:
            yield
        finally:
            await self._http.close()
            self._writer.shutdown()

    def _open(self) -> None:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(SCHEMA)
        self._conn = conn

    async def _write(self, work: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._writer, work, *args)

    def _transaction(self, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
        conn = self._conn
        assert conn is not None
        conn.execute("BEGIN IMMEDIATE")
        try:
            for sql, values in statements:
                conn.execute(sql, values)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    async def start(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        session_id = uuid.uuid4().hex
        insert = "INSERT INTO sessions (session_id, user_id) VALUES (?, ?)"
        await self._write(self._transaction, [(insert, (session_id, str(body["user_id"])))])
        self._windows[session_id], self._seqs[session_id] = [], 0
        return _json({"session_id": session_id}, 201)

    async def message(self, request: Request) -> Response:
        session_id = request.path_params["session_id"]
        window = self._windows.get(session_id)
        if window is None:
            return _json({"error": {"code": "session_not_found"}}, 404)
        text = orjson.loads(await request.body())["message"]
        prompt = [{"role": "system", "content": "You are helpful."}, *window]
        prompt.append({"role": "user", "content": text})
        assert self._http is not None
        async with self._http.post(
            self._url,
            data=orjson.dumps({"model": MODEL, "messages": prompt}),
            headers=self._headers,
        ) as answer:
            if answer.status != 200:
                return _json({"error": {"code": "llm_error"}}, 502)
            reply = orjson.loads(await answer.read())["choices"][0]["message"]["content"]
        seq = self._seqs[session_id]  # the bench's turns of one session are never concurrent
        self._seqs[session_id] = seq + 2
        insert = "INSERT INTO messages (session_id, seq, role, content) VALUES (?, ?, ?, ?)"
        count = "UPDATE sessions SET message_count = message_count + 1 WHERE session_id = ?"
        await self._write(
            self._transaction,
            [
                (insert, (session_id, seq, "user", text)),
                (insert, (session_id, seq + 1, "assistant", reply)),
                (count, (session_id,)),
            ],
        )
        window.extend(({"role": "user", "content": text}, {"role": "assistant", "content": reply}))
        del window[:-WINDOW]
        return _json({"session_id": session_id, "response": reply})

    async def end(self, request: Request) -> Response:
        self._windows.pop(request.path_params["session_id"], None)
        self._seqs.pop(request.path_params["session_id"], None)
        return _json({"status": "ended"})

    async def health(self, request: Request) -> Response:
        return _json({"status": "ok"})


def _json(value: object, status: int = 200) -> Response:
    return Response(orjson.dumps(value), status, media_type="application/json")


def app() -> Starlette:
    """The floor's app, configured from the environment."""
    floor = Floor(
        os.environ["OPENAI_BASE_URL"],
        os.environ.get("OPENAI_API_KEY", "bench"),
        os.environ["SQLITE_PATH"],
    )
    base = "/api/v1/chatbot/session"
    return Starlette(
        routes=[
            Route("/health", floor.health),
            Route(base, floor.start, methods=["POST"]),
            Route(f"{base}/{{session_id}}/message", floor.message, methods=["POST"]),
            Route(f"{base}/{{session_id}}", floor.end, methods=["DELETE"]),
        ],
        lifespan=floor.lifespan,
    )


def main() -> None:
    """Serve on HOST:PORT, as uvicorn serves the service (no access log)."""
    logging.basicConfig(level=logging.WARNING)
    uvicorn.run(
        app(),
        host=os.environ.get("HOST", "127.0.0.1"),
        port=int(os.environ["PORT"]),
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
