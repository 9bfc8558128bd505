"""``PostgresAttachments``: image bytes in the PostgreSQL database, beside the sessions.

Replicas that share one database share its images too (a local folder would be one
machine's). One row per image in ``attachments`` (migration 002): its user, its id, its
reference (JSONB) and its bytes (``BYTEA``), written in one statement, so a reference always
names whole bytes. Every read and the erasure name the user in the primary key, so one user's
id never finds another's image.

It has a small ``asyncpg`` pool of its own on ``DATABASE_URL`` (at most
``ATTACHMENT_POOL_SIZE`` connections, fewer when ``DATABASE_POOL_SIZE`` is smaller), so image
reads and writes never wait behind the turns' connections, nor they behind images. Failures
are ``StoreUnavailable`` as on the message store; the password is never logged.
"""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Any

import asyncpg

from services.core.attachment_records import Attachment
from services.core.errors import StoreUnavailable
from services.core.settings import Settings
from services.store.postgres.connection import DRIVER_ERRORS, describe_url, failure_reason, pooled
from services.store.postgres.schema import migrate

logger = logging.getLogger(__name__)

ATTACHMENT_POOL_SIZE = 4


class PostgresAttachments:
    """``AttachmentStore`` on the ``attachments`` table."""

    name = "postgres"

    def __init__(self, settings: Settings) -> None:
        secret = settings.database_url
        self._url = secret.get_secret_value() if secret is not None else ""
        self._pool_size = min(ATTACHMENT_POOL_SIZE, settings.database_pool_size)
        self._timeout = settings.store_timeout_seconds
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        """Create the pool and bring the schema up to date (the message store does too; the
        migrations run once under their lock, whichever opens first)."""
        try:
            self._pool = await asyncpg.create_pool(
                self._url,
                min_size=1,
                max_size=self._pool_size,
                timeout=self._timeout,
                command_timeout=self._timeout,
            )
            async with self._pool.acquire() as conn:
                await migrate(conn)
        except BaseException as exc:
            await self.close()
            if not isinstance(exc, (*DRIVER_ERRORS, ValueError)):
                raise
            where, reason = describe_url(self._url), self._reason(exc)
            message = f"Cannot open the PostgreSQL attachments at {where}: {reason}"
            logger.error("%s", message)
            raise StoreUnavailable(message) from None

    def _reason(self, exc: BaseException) -> str:
        return failure_reason(exc, url=self._url, timeout=self._timeout)

    async def close(self) -> None:
        """Close every connection."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def put(self, user_id: str, attachment: Attachment, data: bytes) -> None:
        """One row: the reference and the bytes together (the same id again replaces it)."""
        async with self._connection() as conn:
            await conn.execute(
                "INSERT INTO attachments (user_id, attachment_id, reference, data) "
                "VALUES ($1, $2, $3::jsonb, $4) ON CONFLICT (user_id, attachment_id) "
                "DO UPDATE SET reference = excluded.reference, data = excluded.data",
                user_id,
                attachment.id,
                json.dumps(attachment.as_dict()),
                data,
            )

    async def get(self, user_id: str, attachment_id: str) -> tuple[Attachment, bytes] | None:
        """The user's row, or None."""
        async with self._connection() as conn:
            row = await conn.fetchrow(
                "SELECT reference, data FROM attachments WHERE user_id = $1 AND attachment_id = $2",
                user_id,
                attachment_id,
            )
        if row is None:
            return None
        return Attachment.from_dict(json.loads(row["reference"])), bytes(row["data"])

    async def delete_user(self, user_id: str) -> int:
        """Every row of the user, in one statement."""
        async with self._connection() as conn:
            status: str = await conn.execute("DELETE FROM attachments WHERE user_id = $1", user_id)
        return int(status.rsplit(" ", 1)[-1])

    def _connection(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """A pooled connection, its failures as ``StoreUnavailable``."""
        return pooled(
            self._pool, seconds=self._timeout, store="attachment store", log_as="attachments"
        )
