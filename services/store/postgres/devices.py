"""The PostgreSQL store's push devices and opt-outs: ``push_devices`` and ``push_preferences``
(migration 003)."""

from __future__ import annotations

import json
from typing import Any, cast

from services.core.push_records import Device, Platform, PushPreferences
from services.store.postgres.connection import PostgresConnection
from services.store.postgres.sessions import USER_LOCK_CLASS

_LIST = (
    "SELECT token, platform, app_version, registered_at FROM push_devices WHERE user_id = $1 "
    "ORDER BY registered_at DESC, token DESC"
)
_UPSERT = (
    "INSERT INTO push_devices VALUES ($1, $2, $3, $4, $5) ON CONFLICT (token) DO UPDATE SET "
    "user_id = excluded.user_id, platform = excluded.platform, "
    "app_version = excluded.app_version, registered_at = excluded.registered_at"
)
_SET_PREFERENCES = (
    "INSERT INTO push_preferences VALUES ($1, $2, $3::jsonb) ON CONFLICT (user_id) DO UPDATE "
    "SET enabled = excluded.enabled, muted_sessions = excluded.muted_sessions"
)
_LOCK_USER = f"SELECT pg_advisory_xact_lock({USER_LOCK_CLASS}, hashtext($1))"


class PostgresDevices(PostgresConnection):
    """``DeviceStore``: a device row per token, a preferences row per user."""

    async def add_device(self, user_id: str, device: Device, *, limit: int) -> list[Device]:
        """Upsert by token, then drop the user's oldest beyond ``limit``, in one transaction
        under a lock on the user (two registrations at once keep the cap)."""
        async with self._transaction() as conn:
            await conn.execute(_LOCK_USER, user_id)
            await conn.execute(
                _UPSERT, device.token, user_id, device.platform, device.app_version,
                device.registered_at,
            )  # fmt: skip
            devices = _devices(await conn.fetch(_LIST, user_id))
            extra = [d.token for d in devices[limit:]]
            if extra:
                await conn.execute("DELETE FROM push_devices WHERE token = ANY($1::text[])", extra)
        return devices[:limit]

    async def remove_device(self, user_id: str, token: str) -> bool:
        """Delete the row when this user holds the token."""
        status = await self._execute(
            "DELETE FROM push_devices WHERE token = $1 AND user_id = $2", token, user_id
        )
        return status != "DELETE 0"

    async def list_devices(self, user_id: str) -> list[Device]:
        """One indexed read."""
        return _devices(await self._fetch(_LIST, user_id))

    async def load_push_preferences(self, user_id: str) -> PushPreferences:
        """The user's row, or the defaults."""
        return _preferences(
            await self._fetchrow(
                "SELECT enabled, muted_sessions FROM push_preferences WHERE user_id = $1", user_id
            )
        )

    async def set_push_preferences(
        self,
        user_id: str,
        *,
        enabled: bool | None = None,
        session_id: str | None = None,
        session_enabled: bool = True,
    ) -> PushPreferences:
        """Read (locked), change and write the row in one transaction."""
        async with self._transaction() as conn:
            await conn.execute(_LOCK_USER, user_id)
            now = _preferences(
                await conn.fetchrow(
                    "SELECT enabled, muted_sessions FROM push_preferences WHERE user_id = $1",
                    user_id,
                )
            )
            muted = set(now.muted_sessions)
            if session_id is not None:
                (muted.discard if session_enabled else muted.add)(session_id)
            after = PushPreferences(now.enabled if enabled is None else enabled, frozenset(muted))
            await conn.execute(_SET_PREFERENCES, user_id, after.enabled, json.dumps(sorted(muted)))
        return after

    async def delete_push_data(self, user_id: str) -> int:
        """Both tables' rows of the user, in one transaction."""
        async with self._transaction() as conn:
            status: str = await conn.execute("DELETE FROM push_devices WHERE user_id = $1", user_id)
            await conn.execute("DELETE FROM push_preferences WHERE user_id = $1", user_id)
        return int(status.rsplit(" ", 1)[-1])


def _devices(rows: list[Any]) -> list[Device]:
    return [Device(r[0], cast(Platform, r[1]), r[2], r[3]) for r in rows]


def _preferences(row: Any) -> PushPreferences:
    if row is None:
        return PushPreferences()
    muted = row[1] if isinstance(row[1], list) else json.loads(row[1])
    return PushPreferences(bool(row[0]), frozenset(muted))
