"""The SQLite store's connection: one file in WAL mode, driven from a bounded thread pool.

Each pool thread owns one connection. Writes run in ``BEGIN IMMEDIATE`` transactions
(``transaction``), so a turn (both messages, ``message_count``, ``last_activity``) is stored
whole or not at all, also when several processes share the file. The threads of one process
take turns at writing through a lock of their own: left to SQLite's busy handler, a writer
that finds the file locked sleeps 1, 2, 5, 10 … 100 ms between tries, so under load a turn
waited tens of milliseconds (seen up to 2.5 s at 64 users) for a lock that was free again
within a millisecond. The busy handler still arbitrates between processes. Every role of the store
(sessions.py, turns.py, ...) is a mixin on ``SQLiteConnection`` and runs its queries through
``_run``.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TypeVar

from services.core.errors import StoreUnavailable
from services.store.sqlite.schema import migrate

logger = logging.getLogger(__name__)
T = TypeVar("T")


class SQLiteConnection:
    """The file, its thread pool and one connection per pool thread."""

    name = "sqlite"

    def __init__(
        self,
        path: Path | str,
        *,
        threads: int = 4,
        synchronous: str = "FULL",
        busy_timeout: float = 10.0,
    ) -> None:
        self._path = str(path)
        self._busy_timeout = busy_timeout
        self._threads = threads
        self._synchronous = synchronous
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._writes = threading.Lock()  # one write transaction at a time in this process

    async def open(self) -> None:
        """Create the file's folder and schema."""
        Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        self._executor = ThreadPoolExecutor(self._threads, thread_name_prefix="sqlite-store")
        await self._run(migrate)

    async def close(self) -> None:
        """Stop the pool and close every connection."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        with self._connections_lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()

    async def ping(self) -> None:
        """A trivial query through the pool."""
        await self._run(lambda conn: conn.execute("SELECT 1").fetchone())

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self._path,
                timeout=self._busy_timeout,
                isolation_level=None,
                check_same_thread=False,
                factory=PoolConnection,
            )
            conn.writes = self._writes
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            # Deleted rows are overwritten, not just unlinked (data-rights deletions).
            conn.execute("PRAGMA secure_delete=ON")
            self._local.conn = conn
            with self._connections_lock:
                self._connections.append(conn)
        return conn

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        if self._executor is None:
            raise StoreUnavailable("The session store is not open")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, lambda: work(self._connection()))
        except sqlite3.Error as exc:
            logger.error("sqlite store error: %s: %s", type(exc).__name__, exc)
            raise StoreUnavailable("The session store is unavailable; try again shortly") from exc


class PoolConnection(sqlite3.Connection):
    """A pool thread's connection, with the lock its process's writers share."""

    writes: threading.Lock | None = None


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A write transaction: ``BEGIN IMMEDIATE``, committed unless the block raises; on a
    pool connection, one at a time in this process (see the module docstring)."""
    writes = getattr(conn, "writes", None)
    with writes if writes is not None else nullcontext():
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
