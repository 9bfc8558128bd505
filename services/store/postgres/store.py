"""``PostgresStore``: every role of the PostgreSQL store on one connection pool."""

from __future__ import annotations

from services.store.postgres.branches import PostgresBranches
from services.store.postgres.devices import PostgresDevices
from services.store.postgres.documents import PostgresDocuments
from services.store.postgres.memory import PostgresMemory
from services.store.postgres.sessions import PostgresSessions
from services.store.postgres.turns import PostgresTurns
from services.store.postgres.usage import PostgresUsage
from services.store.postgres.user_data import PostgresUserData


class PostgresStore(
    PostgresSessions,
    PostgresTurns,
    PostgresBranches,
    PostgresMemory,
    PostgresDocuments,
    PostgresUsage,
    PostgresUserData,
    PostgresDevices,
):
    """``Store`` on a PostgreSQL database."""
