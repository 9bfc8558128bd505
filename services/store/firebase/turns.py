"""The Firebase store's turns: a session's messages read back by key; a turn's seqs and id
claimed while the model generates, then the turn stored with one multi-path update.

In the steady state (the session held by this instance) a turn with a ``client_message_id``
costs two requests: the compare-and-set of ``next_seq`` (its ETag cached from the turn
before), which claims the seqs and the id together (see ``seq_node``), and the update after
the reply. The durable pointer ``conversation_client_ids/{id}: seq`` is written by that update;
it is read only when the caller cannot vouch for the ids stored before the ring (a session
not held here, or one that others wrote to at length).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
from typing import Any

from cachetools import LRUCache

from services.core.attachment_records import attachments_of
from services.core.errors import StoreUnavailable
from services.core.provider_config import Target
from services.core.records import (
    NewTurn,
    SessionRecord,
    StoredMessage,
    StoredTurn,
    TurnClaim,
    Usage,
    preview_of,
    tool_uses,
)
from services.store.firebase.connection import (
    FIREBASE_ERRORS,
    FirebaseConnection,
    may_land_later,
    refused,
    short,
)
from services.store.firebase.rtdb_keys import decode_key, encode_key, message_key
from services.store.firebase.seq_node import SeqNode
from services.store.firebase.usage_nodes import usage_updates

logger = logging.getLogger(__name__)

IDS = "conversation_client_ids"
_CAS_ATTEMPTS = 25
_WAIT_ATTEMPTS = 5
_WAIT_SECONDS = 0.1  # in a pool thread, never on the event loop


class FirebaseTurns(FirebaseConnection):
    """``TurnStore``: a session's ``conversation_history``, written a claimed turn at a time."""

    def _init_turns(self, cached_sessions: int) -> None:
        # Last known (value, ETag) of each session's next_seq; pool threads share it.
        self._slots: LRUCache[str, tuple[Any, str]] = LRUCache(cached_sessions)
        self._slots_lock = threading.Lock()
        # Tokens of seq claims whose answer was lost, by session (their turns were not written).
        self._unused_claims: LRUCache[str, tuple[str, ...]] = LRUCache(1000)

    async def load_messages(
        self, session_id: str, *, limit: int, before: int | None = None
    ) -> list[StoredMessage]:
        """The newest ``limit`` below ``before``, by key, oldest first."""
        if limit <= 0 or (before is not None and before <= 0):
            return []

        def load() -> Any:
            query = self._ref(f"userSessions/{session_id}/conversation_history").order_by_key()
            if before is not None:
                query = query.end_at(message_key(before - 1))
            return query.limit_to_last(limit).get()

        return messages_of(await self._run(load))

    async def load_messages_after(
        self, session_id: str, *, after: int, limit: int
    ) -> list[StoredMessage]:
        """The first ``limit`` above ``after``, by key."""

        def load() -> Any:
            query = self._ref(f"userSessions/{session_id}/conversation_history").order_by_key()
            return query.start_at(message_key(after + 1)).limit_to_first(limit).get()

        return messages_of(await self._run(load))

    async def load_client_ids(self, session_id: str) -> list[str]:
        """Every stored turn's ``client_message_id``: the pointer node's keys only."""
        path = f"userSessions/{session_id}/{IDS}"
        keys = await self._run(lambda: self._ref(path).get(shallow=True))
        return [decode_key(key) for key in keys or {}]

    async def find_turn(self, session_id: str, client_message_id: str) -> StoredTurn | None:
        """Follow the ``client_ids`` pointer to the turn's two messages."""
        found: StoredTurn | None = await self._run(
            lambda: self._find_turn(session_id, client_message_id)
        )
        return found

    def _find_turn(self, session_id: str, client_message_id: str) -> StoredTurn | None:
        base = f"userSessions/{session_id}"
        seq = self._ref(f"{base}/{IDS}/{encode_key(client_message_id)}").get()
        return self._pair(session_id, seq, client_message_id) if isinstance(seq, int) else None

    async def claim_turn(
        self,
        session: SessionRecord,
        client_message_id: str | None,
        *,
        known_below: int | None = None,
    ) -> TurnClaim | StoredTurn:
        """The seqs and the ``client_message_id`` in one compare-and-set (run while the model
        is generating); the stored turn instead when the id already has one."""
        sid = session.session_id
        claim: TurnClaim | StoredTurn = await self._run(
            lambda: self._claim(sid, client_message_id, known_below)
        )
        return claim

    def _claim(self, sid: str, cid: str | None, known_below: int | None) -> TurnClaim | StoredTurn:
        """Claim with a conditional write on ``next_seq``, retried on the fresh value it returns
        when another writer got there first.

        A claim whose answer never came (timeout, dropped connection) may still have landed; its
        turn was never written, so when this process later finds its own unused claim on the
        node, it takes those seqs rather than leaving a gap.
        """
        ref = self._ref(f"userSessions/{sid}/next_seq")
        cached = self._slot(sid)
        value, etag = cached if cached else ref.get(etag=True)
        token = uuid.uuid4().hex
        with self._slots_lock:
            ours = {token, *self._unused_claims.pop(sid, ())}
        looked_up = cid is None
        try:
            for _ in range(_CAS_ATTEMPTS):
                try:
                    node = SeqNode.parse(sid, value)
                except Exception:
                    self._slot(sid, pop=True)
                    raise
                seq = node.next
                if node.by in ours:  # a claim of ours landed unanswered: use its seqs
                    seq -= 2
                    if node.ids.get(seq) == cid:
                        self._slot(sid, (value, etag))
                        return TurnClaim(seq, node.by)
                    node = node.without(seq)  # it was for another id: list this one instead
                if cid is not None:
                    held = node.holder(cid)
                    if held is not None:
                        stored = self._wait_for_turn(sid, held, cid)
                        if stored is not None:
                            return stored
                        node = node.without(held)  # its writer is gone: take the id over
                    elif not looked_up and not node.covers(known_below):
                        looked_up = True  # ids stored before the ring: ask the pointer
                        if (stored := self._find_turn(sid, cid)) is not None:
                            return stored
                claimed = node.claimed(seq, cid, token).to_value()
                ok, value, etag = ref.set_if_unchanged(etag, claimed)
                if ok:
                    self._slot(sid, (claimed, etag))
                    return TurnClaim(seq, token)
        except FIREBASE_ERRORS as exc:
            if not refused(exc):
                with self._slots_lock:
                    self._unused_claims[sid] = tuple(ours)[-8:]
            self._slot(sid, pop=True)
            raise
        raise StoreUnavailable("Too many concurrent writers on one session; try again")

    def _wait_for_turn(self, sid: str, seq: int, cid: str) -> StoredTurn | None:
        """The turn another claim of this id stores at ``seq``, waited for (bounded) while
        its writer may still be at work; None when it never appears (the writer died)."""
        for attempt in range(_WAIT_ATTEMPTS + 1):
            stored = self._pair(sid, seq, cid)
            if stored is not None or attempt == _WAIT_ATTEMPTS:
                return stored
            time.sleep(_WAIT_SECONDS * (attempt + 1))  # a pool thread, not the loop
        return None

    async def write_turn(
        self, session: SessionRecord, claim: TurnClaim, turn: NewTurn
    ) -> StoredTurn:
        """The turn as one multi-path update on the claimed seqs: the one request after the
        reply."""
        stored: StoredTurn = await self._run(lambda: self._write_turn(session, claim, turn))
        return stored

    def _write_turn(self, session: SessionRecord, claim: TurnClaim, turn: NewTurn) -> StoredTurn:
        sid, cid, seq = session.session_id, turn.client_message_id, claim.seq
        user = StoredMessage(
            seq, "user", turn.user_text, turn.user_at, cid, attachments=turn.attachments
        )
        reply = StoredMessage(
            seq + 1, "assistant", turn.reply, turn.reply_at, None, turn.usage, turn.provider,
            turn.model, turn.tools, turn.finish_reason,
        )  # fmt: skip
        try:
            self._ref("/").update(turn_updates(session, user, reply, served_by=turn.served_by))
        except FIREBASE_ERRORS as exc:
            if self._landed(sid, user):  # the answer was lost, not the write
                return StoredTurn(user, reply)
            if not may_land_later(exc):  # refused, or the connection died: never applied
                self._release(sid, claim)
            # Else (a timeout) the write may still land: its seqs and claim stay taken.
            raise
        return StoredTurn(user, reply)

    async def release_turn(
        self, session: SessionRecord, claim: TurnClaim, client_message_id: str | None
    ) -> None:
        """Give back a claim whose turn will not be written (the model failed)."""
        await self._run(lambda: self._release(session.session_id, claim))

    def _release(self, session_id: str, claim: TurnClaim) -> None:
        """Give back claimed seqs (and their id) whose turn was not written, so no gap is left
        behind; only while nobody claimed after them."""
        cached = self._slot(session_id, pop=True)
        if cached is None or cached[0].get("by") != claim.token:
            return
        node = SeqNode.parse(session_id, cached[0])
        given_back = node.given_back(claim.seq, f"released-{claim.token}").to_value()
        ref = self._ref(f"userSessions/{session_id}/next_seq")
        try:
            ref.set_if_unchanged(cached[1], given_back)
        except FIREBASE_ERRORS as exc:
            logger.warning("could not release seq %d of %s: %s", claim.seq, session_id, short(exc))

    def _slot(
        self, session_id: str, new: tuple[Any, str] | None = None, *, pop: bool = False
    ) -> tuple[Any, str] | None:
        """Read, replace or drop a cached next_seq (value, ETag), under the lock."""
        with self._slots_lock:
            if pop:
                return self._slots.pop(session_id, None)
            if new is not None:
                self._slots[session_id] = new
            return self._slots.get(session_id)

    def _pair(self, session_id: str, seq: int, cid: str) -> StoredTurn | None:
        query = self._ref(f"userSessions/{session_id}/conversation_history").order_by_key()
        pair = messages_of(query.start_at(message_key(seq)).limit_to_first(2).get())
        if len(pair) != 2 or pair[0].seq != seq or pair[1].seq != seq + 1:
            return None
        if pair[0].client_message_id != cid:
            return None
        return StoredTurn(pair[0], pair[1], created=False)

    def _landed(self, session_id: str, user: StoredMessage) -> bool:
        path = f"userSessions/{session_id}/conversation_history/{message_key(user.seq)}"
        with contextlib.suppress(*FIREBASE_ERRORS):
            return bool(self._ref(path).get() == message_doc(user))
        return False


def turn_updates(
    session: SessionRecord,
    user: StoredMessage,
    reply: StoredMessage,
    *,
    served_by: Target | None = None,
) -> dict[str, Any]:
    """One turn as one multi-path update; its size does not depend on the history's length.
    Its usage is counted under ``served_by`` too (the route target that answered)."""
    sid = session.session_id
    base, index = f"userSessions/{sid}", f"userSessionIndex/{encode_key(session.user_id)}/{sid}"
    increment = {".sv": {"increment": 1}}
    updates: dict[str, Any] = {
        f"{base}/conversation_history/{message_key(user.seq)}": message_doc(user),
        f"{base}/conversation_history/{message_key(reply.seq)}": message_doc(reply),
        f"{base}/message_count": increment,
        f"{base}/last_activity": reply.timestamp,
        f"{index}/message_count": increment,
        f"{index}/last_activity": reply.timestamp,
        f"{index}/preview": preview_of(reply.content),
        f"sessionActivity/{sid}": reply.timestamp,
    }
    if user.client_message_id is not None:
        updates[f"{base}/{IDS}/{encode_key(user.client_message_id)}"] = user.seq
    counted = usage_updates(
        session.user_id, sid, reply.usage, at=reply.timestamp, turns=1, target=served_by
    )
    updates.update(counted)
    return updates


def message_doc(m: StoredMessage) -> dict[str, Any]:
    """A message as stored under ``conversation_history``."""
    doc: dict[str, Any] = {
        "seq": m.seq,
        "role": m.role,
        "content": m.content,
        "timestamp": m.timestamp,
    }
    if m.client_message_id is not None:
        doc["client_message_id"] = m.client_message_id
    if m.usage is not None:
        doc["usage"] = m.usage.as_dict()
    if m.provider is not None:
        doc["provider"], doc["model"] = m.provider, m.model
    if m.tools:
        # Arguments as JSON text: their keys are the model's, and may be no valid RTDB key.
        doc["tools"] = [
            {**use.as_dict(), "arguments": json.dumps(use.call.arguments)} for use in m.tools
        ]
    if m.finish_reason is not None:
        doc["finish_reason"] = m.finish_reason
    if m.attachments:  # references only: the bytes are in the bucket
        doc["attachments"] = [a.as_dict() for a in m.attachments]
    return doc


def messages_of(data: Any) -> list[StoredMessage]:
    """Stored message documents (a dict by key, or a list), in seq order."""
    if not data:
        return []
    items = data.values() if isinstance(data, dict) else data
    messages = [
        StoredMessage(
            seq=int(doc["seq"]),
            role=doc["role"],
            content=doc["content"],
            timestamp=doc["timestamp"],
            client_message_id=doc.get("client_message_id"),
            usage=Usage.from_dict(doc.get("usage")),
            provider=doc.get("provider"),
            model=doc.get("model"),
            tools=tool_uses(doc.get("tools")),
            finish_reason=doc.get("finish_reason"),
            attachments=attachments_of(doc.get("attachments")),
        )
        for doc in items
        if isinstance(doc, dict)
    ]
    messages.sort(key=lambda m: m.seq)
    return messages
