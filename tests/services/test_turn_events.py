"""A turn's event log as its readers see it: deltas that pile up for a slow reader come as one."""

from __future__ import annotations

import asyncio

from services.conversation.turn_events import COALESCE_BACKLOG, Turn, TurnEvent


def _turn_with(deltas: int) -> Turn:
    turn = Turn("s1", "hi", "c1")
    turn.emit("start", turn=1)
    for n in range(deltas):
        turn.emit("delta", content=f"{n},")
    return turn


async def _read(turn: Turn, **options: int | bool) -> list[TurnEvent]:
    return [event async for event in turn.follow(**options)]  # type: ignore[arg-type]


async def test_a_backlog_of_deltas_comes_as_one_with_the_text_unchanged_and_the_last_id() -> None:
    turn = _turn_with(COALESCE_BACKLOG + 5)
    turn.emit("done")

    events = await _read(turn, coalesce=True)

    assert [e.kind for e in events] == ["start", "delta", "done"]
    assert events[1].id == COALESCE_BACKLOG + 5  # the run's last delta: a resume after it is exact
    assert events[1].content == "".join(f"{n}," for n in range(COALESCE_BACKLOG + 5))
    assert [e.id for e in await _read(turn, after=events[1].id, coalesce=True)] == [
        COALESCE_BACKLOG + 6
    ]


async def test_a_short_run_and_a_reader_without_coalescing_see_every_delta() -> None:
    turn = _turn_with(COALESCE_BACKLOG)
    turn.emit("done")

    assert len(await _read(turn, coalesce=True)) == COALESCE_BACKLOG + 2
    long = _turn_with(COALESCE_BACKLOG * 3)
    long.emit("done")
    assert len(await _read(long)) == COALESCE_BACKLOG * 3 + 2


async def test_a_reader_that_keeps_up_gets_each_delta_as_it_was_emitted() -> None:
    turn = _turn_with(0)
    seen: list[TurnEvent] = []

    async def reader() -> None:
        async for event in turn.follow(coalesce=True):
            seen.append(event)

    reading = asyncio.create_task(reader())
    for n in range(COALESCE_BACKLOG * 2):
        await asyncio.sleep(0)  # the reader runs between two deltas
        turn.emit("delta", content=str(n))
    turn.emit("done")
    await reading

    assert [e.content for e in seen if e.kind == "delta"] == [
        str(n) for n in range(COALESCE_BACKLOG * 2)
    ]


async def test_a_run_never_spans_the_floor_a_resume_skips_up_to() -> None:
    turn = _turn_with(COALESCE_BACKLOG * 3)
    turn.emit("done")
    floor = COALESCE_BACKLOG + 3

    events = await _read(turn, coalesce=True, floor=floor)

    deltas = [e for e in events if e.kind == "delta"]
    assert deltas[0].id == floor  # the run below the floor ends at it
    assert "".join(e.content for e in deltas) == "".join(
        f"{n}," for n in range(COALESCE_BACKLOG * 3)
    )
