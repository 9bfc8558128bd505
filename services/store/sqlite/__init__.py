"""The embedded store: one SQLite file in WAL mode, driven from a bounded thread pool.

One file per role of ``services.store.base``, each a mixin on ``SQLiteConnection``
(connection.py): sessions.py, turns.py, memory.py, documents.py, usage.py, user_data.py;
``SQLiteStore`` (store.py) combines them. The tables, their migration and the row conversions
are in schema.py; the usage counters' tables and queries in usage_rows.py.
"""

from services.store.sqlite.store import SQLiteStore

__all__ = ["SQLiteStore"]
