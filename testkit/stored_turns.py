"""A whole turn stored straight into a store, as the turn pipeline stores one (claim, then
write), for tests and the bench that fill a store without a model call."""

from __future__ import annotations

from services.core.records import NewTurn, SessionRecord, StoredTurn
from services.store.base import TurnStore


async def append_turn(store: TurnStore, session: SessionRecord, turn: NewTurn) -> StoredTurn:
    """Claim the turn's seqs (and its ``client_message_id``), then write it: the turn already
    stored under that id instead, if there is one (``created=False``)."""
    claim = await store.claim_turn(session, turn.client_message_id)
    if isinstance(claim, StoredTurn):
        return claim
    return await store.write_turn(session, claim, turn)
