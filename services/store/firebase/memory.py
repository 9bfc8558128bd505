"""The Firebase store's rolling memory: a session's ``memory`` node ``{text, seq, at}``,
written with an ETag condition so a fold never overwrites a newer memory.

The ETag of the memory this instance last wrote is cached (as the seq claim caches
``next_seq``'s), so a fold in the steady state costs one conditional write and the update that
counts its call: two requests, where reading the session's ``user_id`` and the memory's ETag
first made four. The cached ETag also vouches for the session: erasing it changes the memory's
ETag, so the write is refused. Only a session's first memory (a null node, which an erased
session also reads as) needs the ``user_id`` read.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from cachetools import LRUCache

from services.core.records import CallUsage
from services.store.firebase.connection import FirebaseConnection

logger = logging.getLogger(__name__)
_WRITE_ATTEMPTS = 2  # a refusal that still shows the expected seq is retried once


class FirebaseMemory(FirebaseConnection):
    """``MemoryStore`` on a session's ``memory`` node; needs ``FirebaseUsage._count_call``."""

    _count_call: Callable[..., Coroutine[Any, Any, None]]

    def _init_memory(self, cached_sessions: int) -> None:
        # (seq, ETag) of the memory this instance last wrote, by session; pool threads share it.
        self._memory_tags: LRUCache[str, tuple[int, str]] = LRUCache(cached_sessions)
        self._memory_tags_lock = threading.Lock()

    async def set_memory(
        self,
        session_id: str,
        text: str,
        *,
        seq: int,
        expected_seq: int,
        at: str,
        usage: CallUsage | None = None,
    ) -> bool:
        """A conditional write of the session's ``memory`` node (its ETag cached from the last
        write here, or read), then the call's counts in one update (``add_usage``'s: an
        update the database refused raises, one whose outcome is unknown is only logged)."""
        written, exists = await self._run(
            lambda: self._write_memory(session_id, text, seq, expected_seq, at), background=True
        )
        if usage is not None:
            await self._count_call(session_id, usage, on_session=exists)
        return bool(written)

    def _write_memory(
        self, session_id: str, text: str, seq: int, expected_seq: int, at: str
    ) -> tuple[bool, bool]:
        """Whether the memory was written, and whether the session is still there."""
        ref = self._ref(f"userSessions/{session_id}/memory")
        etag = self._memory_tag(session_id, expected_seq)
        if etag is None:
            current, etag = ref.get(etag=True)
            if current is None and self._ref(f"userSessions/{session_id}/user_id").get() is None:
                return False, False  # erased: a write would recreate it
            if _seq_of(current) != expected_seq:
                return False, True
        value = {"text": text, "seq": seq, "at": at}
        for _ in range(_WRITE_ATTEMPTS):
            ok, current, etag = ref.set_if_unchanged(etag, value)
            if ok:
                self._remember(session_id, (seq, etag) if isinstance(etag, str) else None)
                return True, True
            self._remember(session_id, None)
            if current is None:  # a memory never goes back to null: the session was erased
                return False, False
            if _seq_of(current) != expected_seq:
                return False, True  # another instance folded first
        return False, True

    def _memory_tag(self, session_id: str, expected_seq: int) -> str | None:
        """The cached ETag of the session's memory, if it is the one covering ``expected_seq``."""
        with self._memory_tags_lock:
            cached = self._memory_tags.get(session_id)
        return cached[1] if cached is not None and cached[0] == expected_seq else None

    def _remember(self, session_id: str, tag: tuple[int, str] | None) -> None:
        """Cache a memory's (seq, ETag), or forget the session's (None)."""
        with self._memory_tags_lock:
            if tag is None:
                self._memory_tags.pop(session_id, None)
            else:
                self._memory_tags[session_id] = tag


def _seq_of(memory: Any) -> int:
    """The first seq a stored memory node does not cover (0: no memory)."""
    return int(memory.get("seq") or 0) if isinstance(memory, dict) else 0
