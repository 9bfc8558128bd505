"""``SQLiteStore``: every role of the SQLite store on one connection pool."""

from __future__ import annotations

from services.store.sqlite.branches import SQLiteBranches
from services.store.sqlite.devices import SQLiteDevices
from services.store.sqlite.documents import SQLiteDocuments
from services.store.sqlite.memory import SQLiteMemory
from services.store.sqlite.sessions import SQLiteSessions
from services.store.sqlite.turns import SQLiteTurns
from services.store.sqlite.usage import SQLiteUsage
from services.store.sqlite.user_data import SQLiteUserData


class SQLiteStore(
    SQLiteSessions,
    SQLiteTurns,
    SQLiteBranches,
    SQLiteMemory,
    SQLiteDocuments,
    SQLiteUsage,
    SQLiteUserData,
    SQLiteDevices,
):
    """``Store`` on a SQLite file."""
