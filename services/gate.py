"""One turn at a time per session, in arrival order, with a bounded queue."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from services.errors import SessionBusy


@dataclass(slots=True)
class _Lane:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    holders: int = 0  # the running turn plus the waiting ones


class TurnGate:
    """Per-session FIFO locks, kept apart from the session cache so eviction can't split them.

    ``asyncio.Lock`` wakes waiters first-come first-served, which gives arrival order.
    """

    def __init__(self, queue_limit: int) -> None:
        self._queue_limit = queue_limit
        self._lanes: dict[str, _Lane] = {}

    def busy(self, session_id: str) -> bool:
        """Whether a turn of this session is running or waiting."""
        return session_id in self._lanes

    def waiting(self, session_id: str) -> int:
        """How many turns of this session wait behind the running one."""
        lane = self._lanes.get(session_id)
        return max(0, lane.holders - 1) if lane else 0

    @asynccontextmanager
    async def hold(self, session_id: str) -> AsyncIterator[None]:
        """Wait for the session's turn; ``SessionBusy`` when too many already wait."""
        lane = self._lanes.get(session_id)
        if lane is None:
            lane = self._lanes[session_id] = _Lane()
        elif lane.holders - 1 >= self._queue_limit:
            raise SessionBusy(
                f"Session {session_id} already has {lane.holders} messages in progress; "
                "wait for the replies"
            )
        lane.holders += 1
        try:
            async with lane.lock:
                yield
        finally:
            lane.holders -= 1
            if lane.holders == 0:
                del self._lanes[session_id]
