"""What a held session and the seq node know about stored client_message_ids."""

from __future__ import annotations

import pytest

from services.conversation.registry import SeenIds
from services.core.errors import SessionEnded, SessionNotFound
from services.store.firebase.seq_node import RING, SeqNode, created_node


def test_the_filter_never_forgets_an_id_and_rarely_imagines_one() -> None:
    stored = [f"stored-{n}" for n in range(500)]
    seen = SeenIds(stored)
    assert all(seen.may_hold(cid) for cid in stored)
    mistaken = sum(seen.may_hold(f"new-{n}") for n in range(10_000))
    assert mistaken < 100  # about 0.2 % expected at 500 ids


def test_the_ring_keeps_the_last_claims_and_says_from_where_it_is_complete() -> None:
    node = SeqNode.parse("s", created_node())
    assert node.covers(0) and not node.covers(None)
    for n in range(RING + 3):
        node = node.claimed(node.next, f"c{n}", f"t{n}")
    assert len(node.ids) == RING and node.next == 2 * (RING + 3)
    assert node.holder("c2") is None and node.holder("c3") == 6 and node.holder(f"c{RING + 2}")
    assert node.since == 6  # claims from seq 6 on are all listed
    assert node.covers(6) and not node.covers(4)
    again = SeqNode.parse("s", node.to_value())
    assert again == node


def test_a_turn_without_an_id_takes_seqs_and_lists_nothing() -> None:
    node = SeqNode.parse("s", created_node()).claimed(0, None, "t")
    assert (node.next, node.ids, node.since) == (2, {}, 0)


def test_giving_back_the_last_claim_leaves_no_gap_and_forgets_its_id() -> None:
    node = SeqNode.parse("s", created_node()).claimed(0, "a", "t1").claimed(2, "b", "t2")
    back = node.given_back(2, "released")
    assert (back.next, back.ids) == (2, {0: "a"})


def test_a_node_from_before_the_ring_lists_nothing_below_its_next() -> None:
    node = SeqNode.parse("s", {"next": 8, "by": "old"})
    assert node.since == 8 and node.ids == {}
    assert node.covers(8) and not node.covers(6)


def test_a_missing_or_closed_node_has_nothing_to_claim() -> None:
    with pytest.raises(SessionNotFound):
        SeqNode.parse("s", None)
    with pytest.raises(SessionEnded):
        SeqNode.parse("s", {"closed": "expired"})
