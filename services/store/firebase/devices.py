"""The Firebase store's push devices and opt-outs.

``pushDevices/{user}/{token hash}`` holds a device, ``pushTokens/{token hash}`` the user who
holds the token (so registering it for another user moves it), ``pushPreferences/{user}`` the
opt-outs (``enabled``, ``muted/{session}: true``). A token is keyed by its SHA-256: tokens are
long, and a key has a length limit.
"""

from __future__ import annotations

import hashlib
from typing import Any, cast

from services.core.push_records import Device, Platform, PushPreferences
from services.store.firebase.connection import FirebaseConnection
from services.store.firebase.rtdb_keys import decode_key, encode_key


class FirebaseDevices(FirebaseConnection):
    """``DeviceStore``: each change is one multi-path update."""

    async def add_device(self, user_id: str, device: Device, *, limit: int) -> list[Device]:
        """Read the token's holder and the user's devices, then write all in one update."""
        return await self._run(lambda: self._add_device(user_id, device, limit))

    def _add_device(self, user_id: str, device: Device, limit: int) -> list[Device]:
        user, key = encode_key(user_id), token_key(device.token)
        holder = self._ref(f"pushTokens/{key}").get()
        others = [d for d in self._devices(user_id) if d.token != device.token]
        devices = [device, *others]
        updates: dict[str, Any] = {
            f"pushDevices/{user}/{key}": device.as_dict(),
            f"pushTokens/{key}": user,
        }
        if isinstance(holder, str) and holder != user:
            updates[f"pushDevices/{holder}/{key}"] = None
        for extra in devices[limit:]:
            updates[f"pushDevices/{user}/{token_key(extra.token)}"] = None
            updates[f"pushTokens/{token_key(extra.token)}"] = None
        self._ref("/").update(updates)
        return devices[:limit]

    async def remove_device(self, user_id: str, token: str) -> bool:
        """Both nodes, when this user holds the token."""
        return await self._run(lambda: self._remove_device(user_id, token))

    def _remove_device(self, user_id: str, token: str) -> bool:
        user, key = encode_key(user_id), token_key(token)
        if self._ref(f"pushDevices/{user}/{key}").get() is None:
            return False
        updates: dict[str, Any] = {f"pushDevices/{user}/{key}": None}
        if self._ref(f"pushTokens/{key}").get() == user:
            updates[f"pushTokens/{key}"] = None
        self._ref("/").update(updates)
        return True

    async def list_devices(self, user_id: str) -> list[Device]:
        """One read of the user's node."""
        return await self._run(lambda: self._devices(user_id))

    def _devices(self, user_id: str) -> list[Device]:
        raw = self._ref(f"pushDevices/{encode_key(user_id)}").get() or {}
        devices = [_device(value) for value in raw.values() if isinstance(value, dict)]
        return sorted(devices, key=lambda d: (d.registered_at, d.token), reverse=True)

    async def load_push_preferences(self, user_id: str) -> PushPreferences:
        """One read of the user's preferences node."""
        return await self._run(lambda: self._preferences(user_id))

    def _preferences(self, user_id: str) -> PushPreferences:
        raw = self._ref(f"pushPreferences/{encode_key(user_id)}").get()
        if not isinstance(raw, dict):
            return PushPreferences()
        muted = raw.get("muted") or {}
        return PushPreferences(
            bool(raw.get("enabled", True)), frozenset(decode_key(key) for key in muted)
        )

    async def set_push_preferences(
        self,
        user_id: str,
        *,
        enabled: bool | None = None,
        session_id: str | None = None,
        session_enabled: bool = True,
    ) -> PushPreferences:
        """One update of the fields that change, then the node read back."""

        def update() -> PushPreferences:
            node = f"pushPreferences/{encode_key(user_id)}"
            updates: dict[str, Any] = {}
            if enabled is not None:
                updates[f"{node}/enabled"] = enabled
            if session_id is not None:
                updates[f"{node}/muted/{encode_key(session_id)}"] = (
                    None if session_enabled else True
                )
            if updates:
                self._ref("/").update(updates)
            return self._preferences(user_id)

        return await self._run(update)

    async def delete_push_data(self, user_id: str) -> int:
        """The user's devices, their token holders and preferences in one update."""

        def delete() -> int:
            user = encode_key(user_id)
            keys = list(self._ref(f"pushDevices/{user}").get(shallow=True) or {})
            updates: dict[str, Any] = {f"pushDevices/{user}": None, f"pushPreferences/{user}": None}
            for key in keys:
                if self._ref(f"pushTokens/{key}").get() == user:
                    updates[f"pushTokens/{key}"] = None
            self._ref("/").update(updates)
            return len(keys)

        return await self._run(delete)


def token_key(token: str) -> str:
    """A token's key: its SHA-256 in hex."""
    return hashlib.sha256(token.encode()).hexdigest()


def _device(value: dict[str, Any]) -> Device:
    return Device(
        str(value["token"]),
        cast(Platform, value.get("platform", "android")),
        value.get("app_version"),
        str(value.get("registered_at", "")),
    )
