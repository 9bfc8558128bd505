"""Active sessions in memory, read through from the store.

cachetools' ``TTLCache`` does the idle eviction: every use re-inserts a session, which restarts
its time to live, so "expired" means "idle longer than SESSION_IDLE_TIMEOUT_SECONDS". The
scheduler calls ``evict_idle`` so memory is freed even when no request arrives.

A cached session holds its metadata and only the last messages a turn needs as context, so its
size does not grow with the conversation. Anything cached is also stored.
"""

from __future__ import annotations

import sys
from collections import deque
from dataclasses import dataclass

from cachetools import TTLCache

from services.errors import SessionEnded, SessionNotFound
from services.models import Clock, SessionRecord, StoredMessage, StoredTurn, is_session_id
from services.store.base import Store


@dataclass(slots=True)
class ActiveSession:
    """A session's metadata and its recent context."""

    record: SessionRecord
    context: deque[StoredMessage]
    next_seq: int  # where this process expects the session's next turn to be stored
    # Read from the store and no turn served here since: its ids beyond the context are
    # unknown, so a client_message_id not in memory is looked up before the model is asked.
    cold: bool = False

    def find(self, client_message_id: str) -> StoredTurn | None:
        """A turn still in the context window, by the id of its user message."""
        messages = list(self.context)
        for user, reply in zip(messages, messages[1:], strict=False):
            if user.role == "user" and user.client_message_id == client_message_id:
                return StoredTurn(user, reply, created=False)
        return None

    def remember(self, turn: StoredTurn) -> None:
        """Add a turn stored where expected to the context and the counters."""
        self.context.append(turn.user)
        self.context.append(turn.assistant)
        self.record.message_count = turn.message_count
        self.record.last_activity = turn.assistant.timestamp
        self.next_seq = turn.assistant.seq + 1
        self.cold = False


class ActiveSessions:
    """A bounded cache of active sessions in front of the store."""

    def __init__(self, store: Store, *, maxsize: int, idle_seconds: float, clock: Clock) -> None:
        self._store = store
        self._cache: TTLCache[str, ActiveSession] = TTLCache(
            maxsize, idle_seconds, timer=lambda: clock().timestamp()
        )

    def __len__(self) -> int:
        return len(self._cache)

    def __contains__(self, session_id: str) -> bool:
        return session_id in self._cache

    async def get(self, session_id: str) -> ActiveSession:
        """The active session, loaded from the store when not cached."""
        active = self._cache.get(session_id)
        if active is None:
            if not is_session_id(session_id):
                raise SessionNotFound(session_id)
            record = await self._store.get_session(session_id)
            if record is None:
                raise SessionNotFound(session_id)
            if record.status != "active":
                raise SessionEnded(session_id, record.status)
            # At least one message, to learn where the next turn goes even without context.
            limit = max(1, record.context_messages)
            history = await self._store.load_messages(session_id, limit=limit)
            loaded = self.put(record, history)
            loaded.cold = True
            return loaded
        self._cache[session_id] = active  # restarts its idle time
        return active

    def put(
        self, record: SessionRecord, history: list[StoredMessage] | None = None
    ) -> ActiveSession:
        """Cache a session with its recent history.

        Sessions of one personality share their system prompt text (about 1 kB each).
        """
        record.system_prompt = sys.intern(record.system_prompt)
        history = history or []
        context = deque(history, maxlen=record.context_messages)
        active = ActiveSession(record, context, history[-1].seq + 1 if history else 0)
        self._cache[record.session_id] = active
        return active

    def forget(self, session_id: str) -> None:
        """Drop a session from memory (it stays in the store)."""
        self._cache.pop(session_id, None)

    def evict_idle(self) -> list[str]:
        """Drop sessions idle longer than the time to live; their ids."""
        return [key for key, _ in self._cache.expire()]
