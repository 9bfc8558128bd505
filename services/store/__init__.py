"""Storage backends behind one contract, and the version history every document write keeps
(``versions``).

The contract (``base``) is one small protocol per role, and ``Store`` is all of them:

- ``StoreConnection``: ``open``, ``close``, ``ping`` and the backend's ``name``;
- ``SessionStore``: a session's metadata (create, get, list a user's, rename, end, expire);
- ``TurnStore``: a session's messages read back, and a turn claimed then written whole;
- ``MemoryStore``: a session's rolling memory;
- ``DocumentStore``: templates and the universal rules (seeded, read, written with history)
  and each personality's stats;
- ``UsageStore``: a background call counted, a user's days read back;
- ``UserDataStore``: a user's sessions erased (data rights);
- ``DeviceStore``: a user's push devices (FCM tokens) and opt-outs.

Each backend is a package with one file per role, named alike: ``connection.py`` (the client,
its pools, ``open``/``close``/``ping``), ``sessions.py``, ``turns.py``, ``memory.py``,
``documents.py``, ``usage.py``, ``user_data.py``, ``devices.py``, each a mixin on the backend's
connection class, and ``store.py``, whose one class combines them (``sqlite.SQLiteStore``,
``firebase.FirebaseStore``, ``postgres.PostgresStore``). What a backend keeps beside them is
its own: SQLite's tables and row conversions (``schema.py``) and usage queries
(``usage_rows.py``); Firebase's key escaping (``rtdb_keys.py``), seq claim node
(``seq_node.py``) and usage layout (``usage_nodes.py``); PostgreSQL's migrations
(``schema.py``, ``migrations/``), row conversions (``rows.py``), usage statements
(``usage_rows.py``) and document notices (``notify.py``).

A further backend is written the same way: a package ``services/store/<name>/`` with the same
files, each implementing its role's protocol, a value of ``Settings.store`` and a branch in
``build_store``, and the backend added to the ``backend`` fixture's parameters
(``tests/conftest.py``); ``tests/services/test_store_contract.py``, organised by role, is the
contract every backend passes. ``metered`` times every method of
``Store`` on whichever backend.

May import: ``core``.
"""

from __future__ import annotations

from services.core.settings import Settings
from services.store.base import AttachmentStore, Store


def build_store(settings: Settings) -> Store:
    """The backend the settings select; not opened yet."""
    if settings.store == "sqlite":
        from services.store.sqlite import SQLiteStore

        return SQLiteStore(
            settings.sqlite_path,
            threads=settings.store_threads,
            synchronous=settings.sqlite_synchronous,
            busy_timeout=settings.store_timeout_seconds,
        )
    if settings.store == "postgres":
        from services.store.postgres import PostgresStore

        return PostgresStore(settings)
    from services.store.firebase import FirebaseStore

    return FirebaseStore(settings)


def build_attachment_store(settings: Settings) -> AttachmentStore:
    """Where image bytes go: the bucket with the Firebase store, the database with the
    PostgreSQL one (replicas share both), else a local folder."""
    if settings.store == "firebase":
        from services.store.firebase.attachments import BucketAttachments

        return BucketAttachments(settings)
    if settings.store == "postgres":
        from services.store.postgres.attachments import PostgresAttachments

        return PostgresAttachments(settings)
    from services.store.sqlite.attachments import DirectoryAttachments

    return DirectoryAttachments(settings.attachments_path)
