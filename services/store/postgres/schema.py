"""The PostgreSQL store's migrations: the numbered SQL files of ``migrations/``
(``NNN_name.sql``), applied in order at start, each once, under an advisory lock.

``schema_version`` holds one row per applied file. Replicas starting together take turns on
``pg_advisory_xact_lock``, so each file runs once; a database already at a version this code
does not know (a newer release ran against it) is refused rather than written to.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.core.errors import StoreUnavailable

logger = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")
# Any constant both replicas agree on: the key of the advisory lock migrations run under.
MIGRATION_LOCK = 0x63686174  # "chat"
_NAME = re.compile(r"(\d{3})_[a-z0-9_]+\.sql")


@dataclass(frozen=True, slots=True)
class Migration:
    """One file of ``migrations/``."""

    version: int
    name: str
    sql: str


def migrations(folder: Path = MIGRATIONS) -> list[Migration]:
    """The migration files in order; their numbers run 1, 2, 3 … without a gap."""
    found = []
    for path in sorted(folder.glob("*.sql")):
        match = _NAME.fullmatch(path.name)
        if match is None:
            raise ValueError(f"{path.name}: migration files are named NNN_name.sql")
        found.append(Migration(int(match.group(1)), path.stem, path.read_text(encoding="utf-8")))
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise ValueError("migration numbers must run 1, 2, 3 … without a gap")
    return found


async def migrate(conn: Any, folder: Path = MIGRATIONS) -> int:
    """Bring the database up to the newest migration in one transaction; its version after.

    ``StoreUnavailable`` (nothing changed) when the database is at a newer version than
    these files."""
    known = migrations(folder)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            "version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
            "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        current = int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version"))
        newest = known[-1].version if known else 0
        if current > newest:
            raise StoreUnavailable(
                f"The PostgreSQL database is at schema version {current}, newer than this "
                f"release knows ({newest}); run a release that knows it, or restore a backup"
            )
        for migration in known[current:]:
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_version (version, name) VALUES ($1, $2)",
                migration.version,
                migration.name,
            )
            logger.info("postgres schema migrated to %s", migration.name)
    return newest
