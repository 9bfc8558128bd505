"""The PostgreSQL store (``STORE=postgres``, ``DATABASE_URL``): one database that any number
of replicas share, reached through a bounded ``asyncpg`` pool.

One file per role of ``services.store.base``, each a mixin on ``PostgresConnection``
(connection.py): sessions.py, turns.py, branches.py, memory.py, documents.py, usage.py,
user_data.py; ``PostgresStore`` (store.py) combines them. Beside them: schema.py (the
versioned migrations of ``migrations/NNN_name.sql``, applied at start), rows.py (rows as
records and back), usage_rows.py (the usage counters' statements) and notify.py (live
document edits through ``LISTEN``/``NOTIFY``). ``PostgresAttachments`` (attachments.py) keeps
image bytes in the same database, on a small pool of its own.

The database enforces what the other stores get from their own writes: a turn is one
statement (one transaction), ``(session_id, seq)`` is a primary key, ``(session_id,
client_message_id)`` a unique index, and the session row's lock orders concurrent writers.
"""

from services.store.postgres.store import PostgresStore

__all__ = ["PostgresStore"]
