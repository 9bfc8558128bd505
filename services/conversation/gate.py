"""One turn at a time per session, in arrival order, with a bounded queue."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import TracebackType

from services.core.errors import SessionBusy


@dataclass(slots=True)
class _Lane:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    holders: int = 0  # the running turn plus the waiting ones


class TurnGate:
    """Per-session FIFO locks, kept apart from the session cache so eviction can't split them.

    A place in the queue is reserved synchronously (so a full queue is a plain 429 before any
    stream starts); ``asyncio.Lock`` then wakes waiters first come, first served.
    """

    def __init__(self, queue_limit: int) -> None:
        self._queue_limit = queue_limit
        self._lanes: dict[str, _Lane] = {}

    def waiting(self, session_id: str) -> int:
        """How many turns of this session wait behind the running one."""
        lane = self._lanes.get(session_id)
        return max(0, lane.holders - 1) if lane else 0

    @property
    def queued_count(self) -> int:
        """Turns of every session waiting behind a running one (for metrics)."""
        return sum(lane.holders - 1 for lane in self._lanes.values())

    def reserve(self, session_id: str) -> Ticket:
        """A place in the session's queue; ``SessionBusy`` when too many already wait."""
        lane = self._lanes.get(session_id)
        if lane is None:
            lane = self._lanes[session_id] = _Lane()
        elif lane.holders - 1 >= self._queue_limit:
            raise SessionBusy(
                f"Session {session_id} already has {lane.holders} messages in progress; "
                "wait for the replies"
            )
        lane.holders += 1
        return Ticket(self, session_id, lane)

    def _leave(self, session_id: str, lane: _Lane) -> None:
        lane.holders -= 1
        if lane.holders == 0:
            del self._lanes[session_id]


class Ticket:
    """``async with ticket:`` waits for the session's turn and holds it."""

    def __init__(self, gate: TurnGate, session_id: str, lane: _Lane) -> None:
        self._gate, self._session_id, self._lane = gate, session_id, lane
        self._done = False

    async def __aenter__(self) -> None:
        try:
            await self._lane.lock.acquire()
        except BaseException:
            self.discard()
            raise

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._lane.lock.release()
        self.discard()

    def discard(self) -> None:
        """Give the place up (idempotent); for a ticket that never entered."""
        if not self._done:
            self._done = True
            self._gate._leave(self._session_id, self._lane)
