"""The SQLite store's push devices and opt-outs: two tables of their own, created here."""

from __future__ import annotations

import json
import sqlite3
from typing import cast

from services.core.push_records import Device, Platform, PushPreferences
from services.store.sqlite.connection import SQLiteConnection, transaction

# Created when the store opens. A token is the primary key: one user holds it at a time.
DEVICES_SCHEMA = """
CREATE TABLE IF NOT EXISTS push_devices (
    token TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    platform TEXT NOT NULL,
    app_version TEXT,
    registered_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS push_devices_by_user ON push_devices (user_id, registered_at);
CREATE TABLE IF NOT EXISTS push_preferences (
    user_id TEXT PRIMARY KEY,
    enabled INTEGER NOT NULL DEFAULT 1,
    muted_sessions TEXT NOT NULL DEFAULT '[]'
);
"""
_LIST = (
    "SELECT token, platform, app_version, registered_at FROM push_devices WHERE user_id = ? "
    "ORDER BY registered_at DESC, token DESC"
)


class SQLiteDevices(SQLiteConnection):
    """``DeviceStore``: a device row per token, a preferences row per user."""

    async def open(self) -> None:
        """The other roles' schema, then these tables."""
        await super().open()
        await self._run(lambda conn: conn.executescript(DEVICES_SCHEMA))

    async def add_device(self, user_id: str, device: Device, *, limit: int) -> list[Device]:
        """Upsert by token, then drop the user's oldest beyond ``limit``, in one transaction."""

        def add(conn: sqlite3.Connection) -> list[Device]:
            with transaction(conn):
                conn.execute(
                    "INSERT INTO push_devices VALUES (?, ?, ?, ?, ?) ON CONFLICT (token) DO "
                    "UPDATE SET user_id = excluded.user_id, platform = excluded.platform, "
                    "app_version = excluded.app_version, registered_at = excluded.registered_at",
                    (device.token, user_id, device.platform, device.app_version,
                     device.registered_at),
                )  # fmt: skip
                devices = _devices(conn, user_id)
                for extra in devices[limit:]:
                    conn.execute("DELETE FROM push_devices WHERE token = ?", (extra.token,))
            return devices[:limit]

        return await self._write(add)

    async def remove_device(self, user_id: str, token: str) -> bool:
        """Delete the row when this user holds the token."""

        def remove(conn: sqlite3.Connection) -> bool:
            with transaction(conn):
                return bool(
                    conn.execute(
                        "DELETE FROM push_devices WHERE token = ? AND user_id = ?",
                        (token, user_id),
                    ).rowcount
                )

        return await self._write(remove)

    async def list_devices(self, user_id: str) -> list[Device]:
        """One indexed read."""
        return await self._run(lambda conn: _devices(conn, user_id))

    async def load_push_preferences(self, user_id: str) -> PushPreferences:
        """The user's row, or the defaults."""
        return await self._run(lambda conn: _preferences(conn, user_id))

    async def set_push_preferences(
        self,
        user_id: str,
        *,
        enabled: bool | None = None,
        session_id: str | None = None,
        session_enabled: bool = True,
    ) -> PushPreferences:
        """Read, change and write the row in one transaction."""

        def update(conn: sqlite3.Connection) -> PushPreferences:
            with transaction(conn):
                now = _preferences(conn, user_id)
                muted = set(now.muted_sessions)
                if session_id is not None:
                    (muted.discard if session_enabled else muted.add)(session_id)
                after = PushPreferences(
                    now.enabled if enabled is None else enabled, frozenset(muted)
                )
                conn.execute(
                    "INSERT OR REPLACE INTO push_preferences VALUES (?, ?, ?)",
                    (user_id, int(after.enabled), json.dumps(sorted(muted))),
                )
            return after

        return await self._write(update)

    async def delete_push_data(self, user_id: str) -> int:
        """Both tables' rows of the user, in one transaction."""

        def delete(conn: sqlite3.Connection) -> int:
            with transaction(conn):
                erased = conn.execute(
                    "DELETE FROM push_devices WHERE user_id = ?", (user_id,)
                ).rowcount
                conn.execute("DELETE FROM push_preferences WHERE user_id = ?", (user_id,))
            return erased

        return await self._write(delete)


def _devices(conn: sqlite3.Connection, user_id: str) -> list[Device]:
    return [
        Device(row[0], cast(Platform, row[1]), row[2], row[3])
        for row in conn.execute(_LIST, (user_id,))
    ]


def _preferences(conn: sqlite3.Connection, user_id: str) -> PushPreferences:
    row = conn.execute(
        "SELECT enabled, muted_sessions FROM push_preferences WHERE user_id = ?", (user_id,)
    ).fetchone()
    if row is None:
        return PushPreferences()
    return PushPreferences(bool(row[0]), frozenset(json.loads(row[1])))
