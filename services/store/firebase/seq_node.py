"""A Firebase session's ``next_seq`` node: the next free seq, and the ids of recent claims.

    next_seq: {"next": n, "by": token, "ids": {m{seq}: client_message_id}, "since": s}
              {"closed": "ended" | "expired"}                      once the session is over

A turn claims its two seqs *and* its ``client_message_id`` with one compare-and-set of this
node, so two instances given the same id at the same moment cannot both take it: the loser's
write is refused, and the fresh value it gets back names the id. ``ids`` keeps the last
``RING`` claims; ``since`` is the lowest seq from which every claim with an id is still listed.
A caller who knows every id stored below seq k (a session held in memory) therefore needs no
other read when ``k >= since``: any id stored since is in the ring.

Nodes written before the ring existed have neither field; they list nothing, so ``since`` is
their ``next``. Keys are message keys (``m0000000012``), so the map never reads back as an
array and needs no escaping of the ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from services.core.errors import SessionEnded, SessionNotFound
from services.store.firebase.rtdb_keys import message_key

RING = 16  # claims remembered: far more than can be in flight on one session at once


@dataclass(slots=True)
class SeqNode:
    """The parsed node (never ``closed``)."""

    next: int
    by: str
    ids: dict[int, str] = field(default_factory=dict)  # seq -> client_message_id
    since: int = 0

    @classmethod
    def parse(cls, session_id: str, value: Any) -> SeqNode:
        """The node's fields; ``SessionNotFound`` / ``SessionEnded`` when there is no turn to
        claim."""
        if not isinstance(value, dict):
            raise SessionNotFound(session_id)
        if "closed" in value:
            raise SessionEnded(session_id, str(value["closed"]))
        nxt = int(value["next"])
        raw = value.get("ids") or {}
        ids = {int(k[1:]): str(v) for k, v in raw.items() if isinstance(v, str)}
        return cls(nxt, str(value.get("by", "")), ids, int(value.get("since", nxt)))

    def holder(self, client_message_id: str) -> int | None:
        """The seq claimed for this id, if the ring lists it."""
        for seq, cid in self.ids.items():
            if cid == client_message_id:
                return seq
        return None

    def covers(self, known_below: int | None) -> bool:
        """Whether the ring lists every id a caller could have missed, given that it knows
        every id stored below ``known_below``."""
        return known_below is not None and known_below >= self.since

    def claimed(self, seq: int, client_message_id: str | None, token: str) -> SeqNode:
        """The node after claiming ``seq, seq + 1`` (and the id) under ``token``."""
        ids, since = dict(self.ids), self.since
        if client_message_id is not None:
            ids[seq] = client_message_id
        while len(ids) > RING:
            oldest = min(ids)
            del ids[oldest]
            since = max(since, oldest + 2)
        return SeqNode(seq + 2, token, ids, since)

    def without(self, seq: int) -> SeqNode:
        """The node with the claim at ``seq`` dropped from the ring (its turn was not written)."""
        ids = {s: c for s, c in self.ids.items() if s != seq}
        return SeqNode(self.next, self.by, ids, self.since)

    def given_back(self, seq: int, token: str) -> SeqNode:
        """The node after giving back the claim at ``seq`` (the last one), leaving no gap."""
        return SeqNode(seq, token, self.without(seq).ids, self.since)

    def to_value(self) -> dict[str, Any]:
        """The JSON written to the database."""
        value: dict[str, Any] = {"next": self.next, "by": self.by, "since": self.since}
        if self.ids:
            value["ids"] = {message_key(s): c for s, c in sorted(self.ids.items())}
        return value


def created_node() -> dict[str, Any]:
    """The node of a new session: nothing claimed, every id listed from seq 0."""
    return SeqNode(0, "created").to_value()
