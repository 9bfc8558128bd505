"""Storage backends behind one contract (``base.Store``), and the version history every
document write keeps (``versions``).

May import: ``core``.
"""

from __future__ import annotations

from services.core.settings import Settings
from services.store.base import Store


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
    from services.store.firebase import FirebaseStore

    return FirebaseStore(settings)
