"""A user's push devices and opt-outs, as the routes change them (``/users/{id}/devices``,
``/users/{id}/push``, ``/session/{id}/push``)."""

from __future__ import annotations

import logging

from services.core.push_records import Device, Platform, PushPreferences
from services.core.records import Clock, isoformat
from services.store.base import Store

logger = logging.getLogger(__name__)


class PushDevices:
    """Registration and opt-outs; stored whether or not pushes are on, so an app registers
    once and pushes start when the service turns them on."""

    def __init__(self, *, store: Store, clock: Clock, limit: int) -> None:
        self._store = store
        self._clock = clock
        self._limit = limit

    async def register(
        self, user_id: str, *, token: str, platform: Platform, app_version: str | None
    ) -> list[Device]:
        """Add or refresh a device (the oldest beyond PUSH_MAX_DEVICES_PER_USER go); the
        user's devices after, most recent first."""
        device = Device(token, platform, app_version, isoformat(self._clock()))
        devices = await self._store.add_device(user_id, device, limit=self._limit)
        logger.info("device registered (%s), %d for the user", platform, len(devices))
        return devices

    async def remove(self, user_id: str, token: str) -> bool:
        """Forget a device; whether the user had it."""
        return await self._store.remove_device(user_id, token)

    async def list(self, user_id: str) -> list[Device]:
        """The user's devices, most recent first."""
        return await self._store.list_devices(user_id)

    async def preferences(self, user_id: str) -> PushPreferences:
        """The user's opt-outs."""
        return await self._store.load_push_preferences(user_id)

    async def set_enabled(self, user_id: str, enabled: bool) -> PushPreferences:
        """Turn every push of the user on or off."""
        return await self._store.set_push_preferences(user_id, enabled=enabled)

    async def set_session_enabled(
        self, user_id: str, session_id: str, enabled: bool
    ) -> PushPreferences:
        """Turn one session's pushes on or off."""
        return await self._store.set_push_preferences(
            user_id, session_id=session_id, session_enabled=enabled
        )
