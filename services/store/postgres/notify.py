"""Live template and rules edits: one connection outside the pool ``LISTEN``s on
``chatify_documents``, which every document write ``NOTIFY``s inside its transaction (so the
notice goes out on commit, to every instance, this one included).

When the listening connection is lost (the server restarted, the connection was cut), it is
opened again with a growing pause, and the subscribers are called once it is back, since
edits made meanwhile sent their notice to nobody. The scheduled refresh
(``TEMPLATE_REFRESH_SECONDS``) still runs as the last resort.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

logger = logging.getLogger(__name__)

CHANNEL = "chatify_documents"
_RETRY_SECONDS = (0.2, 0.5, 1.0, 2.0, 5.0)


class DocumentListener:
    """The listening connection, kept open, and who to call on a notice."""

    def __init__(self, connect: Callable[[], Awaitable[Any]]) -> None:
        self._connect = connect
        self._subscribers: list[_Subscriber] = []
        self._task: asyncio.Task[None] | None = None
        self._conn: Any = None  # the listening connection, while there is one

    def subscribe(self, changed: Callable[[], Awaitable[None]]) -> None:
        """Call ``changed`` on every notice."""
        self._subscribers.append(_Subscriber(changed))

    async def start(self) -> None:
        """Listen from now on (the first connection is opened before this returns)."""
        self._conn = await self._open()
        self._task = asyncio.create_task(self._keep(), name="postgres-listener")

    async def stop(self) -> None:
        """Stop listening and wait for the calls under way."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(Exception):
                await conn.close(timeout=1)
        for subscriber in self._subscribers:
            await subscriber.stop()

    async def _open(self) -> Any:
        conn = await self._connect()
        try:
            await conn.add_listener(CHANNEL, self._notified)
        except BaseException:  # e.g. the server is shutting down: leave no connection open
            conn.terminate()
            raise
        return conn

    async def _keep(self) -> None:
        """Hold the connection; open it again when it is lost."""
        attempt = 0
        while True:
            lost = asyncio.Event()
            self._conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
            await lost.wait()
            logger.warning("postgres listener lost its connection; reopening it")
            self._conn.terminate()  # already gone: release what is left of it at once
            self._conn = None
            while self._conn is None:
                await asyncio.sleep(_RETRY_SECONDS[min(attempt, len(_RETRY_SECONDS) - 1)])
                try:
                    self._conn = await self._open()
                except Exception as exc:  # the server is still away: try again
                    attempt += 1
                    logger.info("postgres listener reconnect failed: %s", type(exc).__name__)
            attempt = 0
            self._notified()  # edits made while away notified nobody

    def _notified(self, *_: Any) -> None:
        for subscriber in self._subscribers:
            subscriber.call()


class _Subscriber:
    """One callback, never run twice at once: notices arriving while it runs make one more
    run after it (that run reads what their commits wrote)."""

    def __init__(self, changed: Callable[[], Awaitable[None]]) -> None:
        self._changed = changed
        self._task: asyncio.Task[None] | None = None
        self._again = False

    def call(self) -> None:
        if self._task is not None:
            self._again = True
            return
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            while True:
                self._again = False
                try:
                    await self._changed()
                except Exception:
                    logger.exception("reloading documents after a notice failed")
                if not self._again:
                    return
        finally:
            self._task = None

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
