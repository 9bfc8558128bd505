"""TurnGate: one turn at a time per session, in arrival order, with a bounded queue."""

from __future__ import annotations

import asyncio

import pytest

from services.conversation.gate import Ticket, TurnGate
from services.core.errors import SessionBusy


async def settle() -> None:
    """Let every task that is ready run until it blocks (a yield to the loop, not a wait)."""
    for _ in range(10):
        await asyncio.sleep(0)


async def hold(ticket: Ticket, entered: list[str], name: str, leave: asyncio.Event) -> None:
    """Enter, note it, stay until told to leave."""
    async with ticket:
        entered.append(name)
        await leave.wait()


async def test_a_second_turn_waits_until_the_first_leaves() -> None:
    gate = TurnGate(queue_limit=5)
    entered: list[str] = []
    first_leaves, second_leaves = asyncio.Event(), asyncio.Event()
    first = asyncio.create_task(hold(gate.reserve("s1"), entered, "first", first_leaves))
    second = asyncio.create_task(hold(gate.reserve("s1"), entered, "second", second_leaves))
    await settle()
    assert entered == ["first"]
    assert gate.waiting("s1") == 1 and gate.queued_count == 1

    first_leaves.set()
    await first
    await settle()
    assert entered == ["first", "second"]
    assert gate.waiting("s1") == 0
    second_leaves.set()
    await second
    assert gate.queued_count == 0


async def test_turns_of_one_session_enter_in_arrival_order() -> None:
    gate = TurnGate(queue_limit=10)
    entered: list[str] = []
    leave = asyncio.Event()
    names = [f"turn {n}" for n in range(6)]
    tickets = [gate.reserve("s1") for _ in names]  # arrival order: the reservations'
    tasks = [
        asyncio.create_task(hold(ticket, entered, name, leave))
        for ticket, name in zip(tickets, names, strict=True)
    ]
    leave.set()
    await asyncio.gather(*tasks)
    assert entered == names


async def test_other_sessions_do_not_wait() -> None:
    gate = TurnGate(queue_limit=0)
    entered: list[str] = []
    leave = asyncio.Event()
    tasks = [
        asyncio.create_task(hold(gate.reserve(sid), entered, sid, leave)) for sid in ("a", "b")
    ]
    await settle()
    assert sorted(entered) == ["a", "b"]
    assert gate.queued_count == 0
    leave.set()
    await asyncio.gather(*tasks)


async def test_a_full_queue_refuses_at_once_and_frees_a_place_when_a_turn_leaves() -> None:
    gate = TurnGate(queue_limit=2)
    running = gate.reserve("s1")
    waiting = [gate.reserve("s1"), gate.reserve("s1")]
    with pytest.raises(SessionBusy) as refused:
        gate.reserve("s1")
    assert "3 messages in progress" in refused.value.message
    assert gate.waiting("s1") == 2
    gate.reserve("s2").discard()  # another session has a queue of its own

    async with running:
        pass
    again = gate.reserve("s1")  # the running turn left: a place is free
    assert gate.waiting("s1") == 2
    for ticket in (*waiting, again):
        ticket.discard()
    assert gate.waiting("s1") == 0 and gate.queued_count == 0


async def test_discard_gives_the_place_up_once() -> None:
    gate = TurnGate(queue_limit=1)
    running, queued = gate.reserve("s1"), gate.reserve("s1")
    queued.discard()
    queued.discard()  # idempotent: the running turn's place is not given up with it
    assert gate.waiting("s1") == 0
    blocked = gate.reserve("s1")
    with pytest.raises(SessionBusy):
        gate.reserve("s1")
    running.discard()
    blocked.discard()
    assert gate.queued_count == 0


async def test_a_turn_cancelled_while_waiting_leaves_the_queue() -> None:
    gate = TurnGate(queue_limit=1)
    entered: list[str] = []
    leave = asyncio.Event()
    first = asyncio.create_task(hold(gate.reserve("s1"), entered, "first", leave))
    cancelled = asyncio.create_task(hold(gate.reserve("s1"), entered, "cancelled", leave))
    await settle()
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert gate.waiting("s1") == 0
    third = asyncio.create_task(hold(gate.reserve("s1"), entered, "third", leave))  # room again
    leave.set()
    await asyncio.gather(first, third)
    assert entered == ["first", "third"]
    assert gate.queued_count == 0


async def test_a_turn_that_fails_still_lets_the_next_one_in() -> None:
    gate = TurnGate(queue_limit=1)
    failing, next_one = gate.reserve("s1"), gate.reserve("s1")
    with pytest.raises(RuntimeError):
        async with failing:
            raise RuntimeError("the turn failed")
    async with asyncio.timeout(5), next_one:
        assert gate.waiting("s1") == 0
    assert gate.queued_count == 0
