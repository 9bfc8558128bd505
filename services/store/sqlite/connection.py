"""The SQLite store's connection: one file in WAL mode, read from a bounded thread pool and
written by one writer thread that commits what is waiting together.

Each thread owns one connection. Writes run in ``BEGIN IMMEDIATE`` transactions, so a turn
(both messages, ``message_count``, ``last_activity``) is stored whole or not at all, also when
several processes share the file. A role's write (``_write``) goes to the writer thread, which
runs every write waiting for it in one transaction, each in a savepoint of its own (a write
that fails is undone alone and its caller gets the error), and commits once: one fsync for the
whole group, and nobody is told "stored" before that commit. When a thousand sessions start at
once, their writes no longer queue for a thousand fsyncs, and a read (a turn's claim, before its
first delta) never waits for a pool thread held by a writer. Reads (``_run``) use the pool;
the threads of one process that still write through ``transaction`` on it take turns through
a lock of their own, which the writer holds too: left to SQLite's busy handler, a writer that
finds the file locked sleeps 1, 2, 5, 10 … 100 ms between tries, so under load a turn waited
tens of milliseconds (seen up to 2.5 s at 64 users) for a lock that was free again within a
millisecond. The busy handler still arbitrates between processes. Every role of the store
(sessions.py, turns.py, ...) is a mixin on ``SQLiteConnection``.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext, suppress
from pathlib import Path
from typing import Any, TypeVar

from services.core.errors import StoreUnavailable
from services.store.sqlite.schema import migrate

logger = logging.getLogger(__name__)
T = TypeVar("T")
GROUP_LIMIT = 64  # writes one commit takes at most
_WAL_RETRY_SECONDS = 0.01  # between two asks for WAL mode on a file another process sets up


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
        self._writer: GroupCommit | None = None

    @property
    def commits(self) -> int:
        """Write transactions the writer thread has committed (tests; each holds a group)."""
        return self._writer.commits if self._writer is not None else 0

    async def open(self) -> None:
        """Create the file's folder and schema."""
        Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        self._executor = ThreadPoolExecutor(self._threads, thread_name_prefix="sqlite-store")
        await self._run(migrate)
        self._writer = GroupCommit(self._connection, self._writes)

    async def close(self) -> None:
        """Stop the writer and the pool, and close every connection."""
        if self._writer is not None:
            writer, self._writer = self._writer, None
            await asyncio.get_running_loop().run_in_executor(None, writer.stop)
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
            try:
                conn.writes = self._writes
                conn.row_factory = sqlite3.Row
                _use_wal(conn, self._busy_timeout)
                conn.execute(f"PRAGMA synchronous={self._synchronous}")
                # Deleted rows are overwritten, not just unlinked (data-rights deletions).
                conn.execute("PRAGMA secure_delete=ON")
            except BaseException:
                conn.close()
                raise
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

    async def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """``work`` (a write: its ``transaction`` blocks) on the writer thread, committed with
        whatever other writes are waiting; returns once its commit is on disk."""
        if self._writer is None:
            raise StoreUnavailable("The session store is not open")
        try:
            return await self._writer.submit(work)
        except sqlite3.Error as exc:
            logger.error("sqlite store error: %s: %s", type(exc).__name__, exc)
            raise StoreUnavailable("The session store is unavailable; try again shortly") from exc


def _use_wal(conn: sqlite3.Connection, timeout: float) -> None:
    """Put the file in WAL mode (it stays so). A new file's switch needs it to itself, and
    SQLite answers "database is locked" at once, without its busy handler, to a connection
    that asks while another process switches or sets the file up (workers starting together
    on a new file): asked again until ``timeout``. Runs in a store thread, never on the loop."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(_WAL_RETRY_SECONDS)


Job = tuple[Callable[[sqlite3.Connection], Any], asyncio.AbstractEventLoop, "asyncio.Future[Any]"]


class GroupCommit:
    """The writer thread: takes every write waiting (up to ``GROUP_LIMIT``), runs each in a
    savepoint of one transaction, commits once, then answers each caller."""

    def __init__(self, connect: Callable[[], sqlite3.Connection], lock: threading.Lock) -> None:
        self._connect = connect
        self._lock = lock
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self.commits = 0
        self._thread = threading.Thread(target=self._serve, name="sqlite-writer", daemon=True)
        self._thread.start()

    def submit(self, work: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((work, loop, future))
        return future

    def stop(self) -> None:
        """Commit what is waiting, then end the thread (blocking: call it off the loop)."""
        self._jobs.put(None)
        self._thread.join()

    def _serve(self) -> None:
        conn: sqlite3.Connection | None = None
        while (job := self._jobs.get()) is not None:
            group, last = [job], False
            while len(group) < GROUP_LIMIT:
                try:
                    waiting = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if waiting is None:
                    last = True
                    break
                group.append(waiting)
            try:  # opened here, with the group's first write: a failure fails that group
                conn = conn or self._connect()
                outcomes = self._commit(conn, group)
            except Exception as exc:
                outcomes = [(False, exc)] * len(group)
            for (_, loop, future), outcome in zip(group, outcomes, strict=True):
                with suppress(RuntimeError):  # its loop has closed: nobody waits
                    loop.call_soon_threadsafe(_settle, future, outcome)
            if last:
                return

    def _commit(self, conn: sqlite3.Connection, group: list[Job]) -> list[tuple[bool, Any]]:
        """Each write's (ok, value or exception), all failed when the commit fails."""
        outcomes: list[tuple[bool, Any]] = []
        single = len(group) == 1  # no savepoint needed: its failure rolls back all there is
        try:
            with self._lock:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.grouped = True  # type: ignore[attr-defined]
                    for work, _, _ in group:
                        if not single:
                            conn.execute("SAVEPOINT write")
                        try:
                            value = work(conn)
                        except Exception as exc:  # this write's own failure: undone alone
                            if single:
                                raise
                            conn.execute("ROLLBACK TO write")
                            conn.execute("RELEASE write")
                            outcomes.append((False, exc))
                        else:
                            if not single:
                                conn.execute("RELEASE write")
                            outcomes.append((True, value))
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                finally:
                    conn.grouped = False  # type: ignore[attr-defined]
        except Exception as exc:
            return [(False, exc)] * len(group)
        self.commits += 1
        return outcomes


def _settle(future: asyncio.Future[Any], outcome: tuple[bool, Any]) -> None:
    if future.done():  # its caller was cancelled: the write is stored all the same
        return
    ok, value = outcome
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


class PoolConnection(sqlite3.Connection):
    """A pool thread's connection, with the lock its process's writers share."""

    writes: threading.Lock | None = None
    grouped = False  # inside the writer thread's transaction: ``transaction`` adds nothing


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A write transaction: ``BEGIN IMMEDIATE``, committed unless the block raises; on a
    pool connection, one at a time in this process (see the module docstring). On the writer
    thread the write is already inside the group's transaction and savepoint."""
    if getattr(conn, "grouped", False):
        yield conn
        return
    writes = getattr(conn, "writes", None)
    with writes if writes is not None else nullcontext():
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
