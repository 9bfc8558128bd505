"""The Firebase store's side of data rights: a user's sessions erased, nodes, index entries
and activity, in one multi-path update."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from services.store.firebase.connection import FirebaseConnection
from services.store.firebase.rtdb_keys import encode_key


class FirebaseUserData(FirebaseConnection):
    """``UserDataStore``; needs ``FirebaseTurns._slot`` and ``FirebaseMemory._remember`` (an
    erased session's cached seq slot and memory ETag are dropped)."""

    _slot: Callable[..., tuple[Any, str] | None]
    _remember: Callable[[str, tuple[int, str] | None], None]

    async def delete_sessions(self, user_id: str, session_ids: list[str] | None = None) -> int:
        """The sessions' nodes, index entries and activity in one multi-path update."""
        return await self._run(lambda: self._delete_sessions(user_id, session_ids))

    def _delete_sessions(self, user_id: str, session_ids: list[str] | None) -> int:
        index = f"userSessionIndex/{encode_key(user_id)}"
        listed = self._ref(index).get(shallow=True) or {}
        targets = list(listed) if session_ids is None else [s for s in session_ids if s in listed]
        if not targets:
            return 0
        updates: dict[str, Any] = {}
        for sid in targets:
            updates[f"userSessions/{sid}"] = None
            updates[f"{index}/{sid}"] = None
            updates[f"sessionActivity/{sid}"] = None
        self._ref("/").update(updates)
        for sid in targets:
            self._slot(sid, pop=True)
            self._remember(sid, None)
        return len(targets)
