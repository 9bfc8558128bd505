"""Active sessions in memory, read through from the store.

cachetools' ``TTLCache`` does the idle eviction: every use re-inserts a session, which restarts
its time to live, so "expired" means "idle longer than SESSION_IDLE_TIMEOUT_SECONDS". The
scheduler calls ``evict_idle`` so memory is freed even when no request arrives.

A cached session holds its metadata, only the last messages a turn needs as context, and a
fixed-size filter of its stored ``client_message_id``s, so its size does not grow with the
conversation. Anything cached is also stored.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
from collections import deque
from dataclasses import dataclass

from cachetools import TTLCache

from services.core.errors import SessionEnded, SessionNotFound
from services.core.records import Clock, SessionRecord, StoredMessage, StoredTurn, is_session_id
from services.store.base import Store

_FILTER_BYTES = 1024
_FILTER_HASHES = 4


class SeenIds:
    """A Bloom filter of a session's stored ``client_message_id``s: "no" is certain, "maybe"
    needs the store. 1 KiB whatever the conversation's length; with 4 hashes a new id is
    mistaken for a stored one about 0.2 % of the time after 500 turns with ids, 2 % after
    1,000 and 14 % after 2,000 (each mistake costs one read before the model is asked)."""

    __slots__ = ("_bits",)

    def __init__(self, ids: list[str] | None = None) -> None:
        self._bits = bytearray(_FILTER_BYTES)
        for client_message_id in ids or ():
            self.add(client_message_id)

    @staticmethod
    def _positions(client_message_id: str) -> list[int]:
        digest = hashlib.blake2b(client_message_id.encode(), digest_size=4 * _FILTER_HASHES)
        size = _FILTER_BYTES * 8
        raw = digest.digest()
        return [int.from_bytes(raw[i : i + 4], "little") % size for i in range(0, len(raw), 4)]

    def add(self, client_message_id: str) -> None:
        """Remember an id as stored."""
        for bit in self._positions(client_message_id):
            self._bits[bit >> 3] |= 1 << (bit & 7)

    def may_hold(self, client_message_id: str) -> bool:
        """False only when the id was certainly never added."""
        return all(self._bits[b >> 3] & (1 << (b & 7)) for b in self._positions(client_message_id))


@dataclass(slots=True)
class ActiveSession:
    """A session's metadata, its recent context and the ids of its stored turns."""

    record: SessionRecord
    context: deque[StoredMessage]
    next_seq: int  # where this process expects the session's next turn to be stored
    # Every client_message_id stored below next_seq: a new id needs no read before the model
    # is asked, and the store needs none beside it (see ``Store.claim_turn``'s known_below).
    seen: SeenIds
    # Moves on when the history is rewritten (a regenerate, an edit, a variant chosen): a
    # memory fold that began before drops its summary of what was replaced.
    memory_epoch: int = 0

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
        if turn.user.client_message_id is not None:
            self.seen.add(turn.user.client_message_id)


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
            history, ids = await asyncio.gather(
                self._store.load_messages(session_id, limit=limit),
                self._store.load_client_ids(session_id),
            )
            return self.put(record, history, ids)
        self._cache[session_id] = active  # restarts its idle time
        return active

    def put(
        self,
        record: SessionRecord,
        history: list[StoredMessage] | None = None,
        ids: list[str] | None = None,
    ) -> ActiveSession:
        """Cache a session with its recent history and stored ids (none: a new session).

        Sessions of one personality share their system prompt text (about 1 kB each).
        """
        record.system_prompt = sys.intern(record.system_prompt)
        history = history or []
        context = deque(history, maxlen=record.context_messages)
        next_seq = history[-1].seq + 1 if history else 0
        active = ActiveSession(record, context, next_seq, SeenIds(ids))
        self._cache[record.session_id] = active
        return active

    def held(self, session_id: str) -> SessionRecord | None:
        """The record of a session held here, if it is (its idle time is not restarted)."""
        active = self._cache.get(session_id)
        return active.record if active is not None else None

    def retitle(self, session_id: str, title: str | None) -> None:
        """Keep a held session's title in step with the store."""
        active = self._cache.get(session_id)
        if active is not None:
            active.record.title = title

    def forget(self, session_id: str) -> None:
        """Drop a session from memory (it stays in the store). What was held may be stale (a
        rewrite here or on another replica): a memory fold under way on it is not stored."""
        active = self._cache.pop(session_id, None)
        if active is not None:
            active.memory_epoch += 1

    def evict_idle(self) -> list[str]:
        """Drop sessions idle longer than the time to live; their ids."""
        return [key for key, _ in self._cache.expire()]
