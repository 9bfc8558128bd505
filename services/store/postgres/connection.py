"""The PostgreSQL store's connection: a bounded ``asyncpg`` pool (no thread, no blocking call
on the event loop), the schema migrated at open, and one listening connection for live
document edits (``notify.py``).

Every role of the store (sessions.py, turns.py, ...) is a mixin on ``PostgresConnection`` and
reaches the database through ``_fetch``/``_fetchrow``/``_fetchval``/``_execute`` or, for
several statements in one transaction, ``_transaction``. A failure to reach the database (it
restarted, the connection was cut, the pool stayed empty past the store timeout) becomes
``StoreUnavailable``, a 503 the client may retry: a statement or transaction that failed
left nothing behind. The password of ``DATABASE_URL`` is never logged or raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import asyncpg

from services.core.errors import StoreUnavailable
from services.core.settings import Settings
from services.store.postgres.notify import DocumentListener
from services.store.postgres.schema import migrate

logger = logging.getLogger(__name__)

# What a lost or refused database looks like from the driver: server errors (a restart's
# "terminating connection", a cut backend), a closed connection or one left mid-protocol by
# the cut (InternalClientError), a socket error, a timeout.
DRIVER_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)


class PostgresConnection:
    """The pool, the listener, and how every role's statements reach the database."""

    name = "postgres"

    def __init__(self, settings: Settings) -> None:
        secret = settings.database_url
        self._url = secret.get_secret_value() if secret is not None else ""
        self._pool_size = settings.database_pool_size
        self._timeout = settings.store_timeout_seconds
        self._pool: asyncpg.Pool | None = None
        self._listener = DocumentListener(self._connect_one)

    @property
    def where(self) -> str:
        """The database as logs name it: ``user@host:port/db``, never the password."""
        return describe_url(self._url)

    async def open(self) -> None:
        """Create the pool, migrate the schema, start listening for document edits. A bad
        URL, password or database fails here with one line saying which."""
        if not self._url.startswith(("postgresql://", "postgres://")):
            raise StoreUnavailable("DATABASE_URL must start with postgresql:// or postgres://")
        try:
            self._pool = await asyncpg.create_pool(
                self._url,
                min_size=1,
                max_size=self._pool_size,
                timeout=self._timeout,
                command_timeout=self._timeout,
            )
        except (*DRIVER_ERRORS, ValueError) as exc:
            message = f"Cannot open the PostgreSQL store at {self.where}: {self._reason(exc)}"
            logger.error("%s", message)
            raise StoreUnavailable(message) from None
        try:
            async with self._pool.acquire() as conn:
                await migrate(conn)
            await self._listener.start()
        except BaseException as exc:
            await self.close()
            if not isinstance(exc, DRIVER_ERRORS):
                raise
            # e.g. a role that may not create tables
            message = f"Cannot prepare the PostgreSQL store at {self.where}: {self._reason(exc)}"
            logger.error("%s", message)
            raise StoreUnavailable(message) from None

    async def close(self) -> None:
        """Stop listening and close every connection."""
        await self._listener.stop()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def ping(self) -> None:
        """``SELECT 1`` through the pool."""
        await self._fetchval("SELECT 1")

    def watch_documents(self, changed: Callable[[], Awaitable[None]]) -> None:
        """Call ``changed`` whenever any instance writes a template or the rules (``NOTIFY``
        on commit; after the listening connection is back from a cut, once more)."""
        self._listener.subscribe(changed)

    async def _connect_one(self) -> Any:
        """A connection outside the pool (the listener's)."""
        return await asyncpg.connect(self._url, timeout=self._timeout)

    def _reason(self, exc: BaseException) -> str:
        return failure_reason(exc, url=self._url, timeout=self._timeout)

    def _connection(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """A pooled connection, its failures as ``StoreUnavailable``."""
        return pooled(self._pool, seconds=self._timeout, store="session store", log_as="store")

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Any]:
        """A pooled connection inside one transaction, committed unless the block raises."""
        async with self._connection() as conn, conn.transaction():
            yield conn

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        async with self._connection() as conn:
            rows: list[Any] = await conn.fetch(sql, *args)
            return rows

    async def _fetchrow(self, sql: str, *args: Any) -> Any:
        async with self._connection() as conn:
            return await conn.fetchrow(sql, *args)

    async def _fetchval(self, sql: str, *args: Any) -> Any:
        async with self._connection() as conn:
            return await conn.fetchval(sql, *args)

    async def _execute(self, sql: str, *args: Any) -> str:
        async with self._connection() as conn:
            status: str = await conn.execute(sql, *args)
            return status


def failure_reason(exc: BaseException, *, url: str, timeout: float) -> str:
    """What went wrong, in words, without the password whatever the driver put in it."""
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g} s (STORE_TIMEOUT_SECONDS)"
    if isinstance(exc, OSError) and exc.strerror:
        return f"the server cannot be reached ({exc.strerror})"
    text = (str(exc).splitlines() or [type(exc).__name__])[0][:300] or type(exc).__name__
    password = urlsplit(url).password
    return text.replace(unquote(password), "***").replace(password, "***") if password else text


def describe_url(url: str) -> str:
    """``user@host:port/db`` of a libpq URL (a socket folder given as ``?host=`` too)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or parse_qs(parts.query).get("host", ["localhost"])[0]
        port = parts.port or parse_qs(parts.query).get("port", ["5432"])[0]
    except ValueError:
        return "(a DATABASE_URL that does not parse)"
    user = f"{unquote(parts.username)}@" if parts.username else ""
    return f"{user}{host}:{port}{parts.path or '/'}"


@asynccontextmanager
async def pooled(pool: Any, *, seconds: float, store: str, log_as: str) -> AsyncIterator[Any]:
    """A connection of ``pool`` (None: the ``store`` is not open), its driver's failures
    logged as ``postgres <log_as> error`` (never the query's values) and raised as
    ``StoreUnavailable``."""
    if pool is None:
        raise StoreUnavailable(f"The {store} is not open")
    try:
        async with asyncio.timeout(seconds), pool.acquire() as conn:
            yield conn
    except DRIVER_ERRORS as exc:
        state = getattr(exc, "sqlstate", None) or "-"
        logger.error("postgres %s error: %s (sqlstate %s)", log_as, type(exc).__name__, state)
        raise StoreUnavailable(f"The {store} is unavailable; try again shortly") from exc
