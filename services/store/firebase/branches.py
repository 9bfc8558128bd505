"""The Firebase store's branches: a regenerated or edited turn replaces the active messages
from a seq on with one multi-path update (atomic: a crash leaves the old branch or the new
one), the replaced messages moved to

    /userSessions/{sid}/conversation_branches/m{seq:010d}/v{number:04d}:
        {"created_at", "messages": {m{seq}: message}}

(a key that sorts outside the ranges ``get_session`` reads, so metadata reads stay small),
``next_seq`` set to the branch's new end, the moved turns' id pointers dropped and the new
one's written. A variant chosen again is swapped back the same way.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from services.core.branch_records import NewBranch, Variant
from services.core.errors import HistoryChanged
from services.core.records import (
    SessionRecord,
    StoredMessage,
    StoredTurn,
    preview_of,
)
from services.store.firebase.connection import FirebaseConnection
from services.store.firebase.rtdb_keys import encode_key, message_key
from services.store.firebase.seq_node import SeqNode
from services.store.firebase.turns import IDS, message_doc, messages_of
from services.store.firebase.usage_nodes import usage_updates

BRANCHES = "conversation_branches"


class FirebaseBranches(FirebaseConnection):
    """``BranchStore``; needs ``FirebaseTurns._slot`` and ``FirebaseMemory._remember`` (the
    cached ``next_seq`` and memory ETags of the session are dropped after a write)."""

    _slot: Callable[..., tuple[Any, str] | None]
    _remember: Callable[[str, tuple[int, str] | None], None]

    async def write_branch(self, session: SessionRecord, branch: NewBranch) -> StoredTurn:
        """Read the tail, then one multi-path update."""
        stored: StoredTurn = await self._run(lambda: self._write_branch(session, branch))
        return stored

    def _write_branch(self, session: SessionRecord, branch: NewBranch) -> StoredTurn:
        sid, turn, seq = session.session_id, branch.turn, branch.seq
        SeqNode.parse(sid, self._ref(f"userSessions/{sid}/next_seq").get())  # still active?
        tail = self._tail(sid, seq - 1 if seq % 2 else seq)
        if not tail or tail[-1].seq + 1 != branch.next_seq:
            raise HistoryChanged("The session's history changed meanwhile; try again")
        if seq % 2:  # a regenerate: the user message stays
            user, tail = tail[0], tail[1:]
            if user.seq != seq - 1 or user.role != "user":
                raise HistoryChanged("The message to answer again is gone")
            user, reply = branch.messages(user)
        else:
            user, reply = branch.messages(None)
        new = [reply] if seq % 2 else [user, reply]
        updates = self._swap(session, seq, self._next_number(sid, seq), tail, new, at=turn.reply_at)
        if branch.reset_memory:
            updates[f"userSessions/{sid}/memory"] = {"text": "", "seq": 0, "at": turn.reply_at}
        updates.update(
            usage_updates(
                session.user_id,
                sid,
                turn.usage,
                at=turn.reply_at,
                turns=1,
                target=turn.served_by,
            )  # fmt: skip
        )
        self._apply(sid, updates)
        return StoredTurn(user, reply)

    async def load_variants(self, session_id: str, seq: int) -> list[Variant]:
        """The seq's variant nodes."""
        path = f"userSessions/{session_id}/{BRANCHES}/{message_key(seq)}"
        data = await self._run(lambda: self._ref(path).get())
        if not isinstance(data, dict):
            return []
        return [
            Variant(seq, int(key[1:]), tuple(messages_of(node.get("messages"))), node["created_at"])
            for key, node in sorted(data.items())
            if isinstance(node, dict)
        ]

    async def select_variant(
        self, session: SessionRecord, seq: int, number: int, *, at: str
    ) -> list[StoredMessage] | None:
        """Read the variant and the tail, then one multi-path update."""
        chosen: list[StoredMessage] | None = await self._run(
            lambda: self._select(session, seq, number, at)
        )
        return chosen

    def _select(
        self, session: SessionRecord, seq: int, number: int, at: str
    ) -> list[StoredMessage] | None:
        sid = session.session_id
        base = f"userSessions/{sid}"
        node = self._ref(f"{base}/{BRANCHES}/{message_key(seq)}/v{number:04d}").get()
        if not isinstance(node, dict):
            return None
        SeqNode.parse(sid, self._ref(f"{base}/next_seq").get())  # still active?
        chosen, tail = messages_of(node.get("messages")), self._tail(sid, seq)
        if not chosen or not tail:
            raise HistoryChanged("The session's history changed meanwhile; try again")
        updates = self._swap(session, seq, number, tail, chosen, at=at)
        memory = self._ref(f"{base}/memory/seq").get()
        if isinstance(memory, int) and memory > seq:
            updates[f"{base}/memory"] = {"text": "", "seq": 0, "at": at}
        self._apply(sid, updates)
        return chosen

    def _tail(self, sid: str, seq: int) -> list[StoredMessage]:
        query = self._ref(f"userSessions/{sid}/conversation_history").order_by_key()
        return messages_of(query.start_at(message_key(seq)).get())

    def _next_number(self, sid: str, seq: int) -> int:
        path = f"userSessions/{sid}/{BRANCHES}/{message_key(seq)}"
        keys = self._ref(path).get(shallow=True) or {}
        return max((int(key[1:]) for key in keys), default=0) + 1

    def _swap(
        self,
        session: SessionRecord,
        seq: int,
        number: int,
        old: list[StoredMessage],
        new: list[StoredMessage],
        *,
        at: str,
    ) -> dict[str, Any]:
        """The update that moves ``old`` (the active messages from ``seq`` on) to variant
        ``number`` and puts ``new`` in their place, with the counters of the new end."""
        sid = session.session_id
        base, index = f"userSessions/{sid}", f"userSessionIndex/{encode_key(session.user_id)}/{sid}"
        history = f"{base}/conversation_history"
        updates: dict[str, Any] = {
            f"{base}/{BRANCHES}/{message_key(seq)}/v{number:04d}": {
                "created_at": at,
                "messages": {message_key(m.seq): message_doc(m) for m in old},
            }
        }
        for m in old:
            updates[f"{history}/{message_key(m.seq)}"] = None
            if m.role == "user" and m.client_message_id is not None:
                updates[f"{base}/{IDS}/{encode_key(m.client_message_id)}"] = None
        for m in new:
            updates[f"{history}/{message_key(m.seq)}"] = message_doc(m)
            if m.role == "user" and m.client_message_id is not None:
                updates[f"{base}/{IDS}/{encode_key(m.client_message_id)}"] = m.seq
        last = new[-1]
        end = last.seq + 1
        updates |= {
            f"{base}/next_seq": SeqNode(end, f"branch-{uuid.uuid4().hex}", since=end).to_value(),
            f"{base}/message_count": end // 2,
            f"{base}/last_activity": last.timestamp,
            f"{index}/message_count": end // 2,
            f"{index}/last_activity": last.timestamp,
            f"{index}/preview": preview_of(last.content),
            f"sessionActivity/{sid}": last.timestamp,
        }
        return updates

    def _apply(self, sid: str, updates: dict[str, Any]) -> None:
        self._slot(sid, pop=True)
        self._remember(sid, None)
        self._ref("/").update(updates)
