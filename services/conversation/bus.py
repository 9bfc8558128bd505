"""Live session events, for every socket open on a session, whichever transport or device
started the turn (the broadcaster pattern: a ``SessionBus`` Protocol, one backend per way of
delivering). ``LocalBus`` delivers within this process; a shared backend (Redis, for several
instances) plugs in behind the same Protocol, which is why events are plain data.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal, Protocol

from services.core.errors import ChatifyError
from services.core.records import ToolCall, ToolUse, TurnResult

logger = logging.getLogger(__name__)
EventKind = Literal[
    "turn_started", "delta", "tool_call", "tool_result", "reply", "turn_error", "title", "ended"
]
QUEUE_LIMIT = 1000  # events a subscriber may fall behind before it is cut off


@dataclass(frozen=True, slots=True)
class SessionEvent:
    """One thing that happened on a session."""

    kind: EventKind
    session_id: str
    client_message_id: str | None = None
    text: str = ""  # the user's message (turn_started), a delta, or a title
    turn: int = 0
    result: TurnResult | None = None
    error: ChatifyError | None = None
    status: str = ""  # ended: "ended", "expired" or "deleted"
    origin: str | None = None  # the connection that sent the turn (it follows it itself)
    tool: ToolCall | ToolUse | None = None  # tool_call: the call; tool_result: its result


class Overflowed(Exception):
    """A subscriber fell more than QUEUE_LIMIT events behind."""


class SessionBus(Protocol):
    """Publish a session's events; subscribe to one session's."""

    def publish(self, event: SessionEvent) -> None:
        """Deliver to every subscriber of the event's session (never blocks)."""

    def subscribe(self, session_id: str) -> contextlib.AbstractContextManager[Subscription]:
        """Receive the session's events from now on, until the context exits."""

    def listened(self, session_id: str) -> bool:
        """Whether a published event of the session may reach anyone now (a turn skips
        building events nobody would receive: one per delta)."""

    def subscribers(self, session_id: str) -> int:
        """How many listen to a session in this process."""

    def on_subscribe(self, hook: Callable[[str], None]) -> None:
        """Call ``hook(session_id)`` whenever a subscriber joins here (a client is back:
        push notifications cancel a push waiting for it)."""


class Subscription:
    """One subscriber's queue of events."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[SessionEvent | None] = asyncio.Queue(QUEUE_LIMIT)
        self.overflowed = False

    def put(self, event: SessionEvent) -> None:
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed = True

    async def next(self) -> SessionEvent:
        """The next event; ``Overflowed`` when this subscriber was too slow to keep up."""
        if self.overflowed:
            raise Overflowed
        event = await self._queue.get()
        assert event is not None
        return event


class LocalBus:
    """``SessionBus`` within one process."""

    def __init__(self) -> None:
        self._subscribers: dict[str, set[Subscription]] = {}
        self._on_subscribe: Callable[[str], None] | None = None

    def publish(self, event: SessionEvent) -> None:
        """Deliver to this process's subscribers of the session."""
        for subscription in self._subscribers.get(event.session_id, ()):
            subscription.put(event)

    @contextlib.contextmanager
    def subscribe(self, session_id: str) -> Iterator[Subscription]:
        """Receive the session's events while the context is open."""
        subscription = Subscription()
        self._subscribers.setdefault(session_id, set()).add(subscription)
        if self._on_subscribe is not None:
            self._on_subscribe(session_id)
        try:
            yield subscription
        finally:
            subscribers = self._subscribers.get(session_id, set())
            subscribers.discard(subscription)
            if not subscribers:
                self._subscribers.pop(session_id, None)

    def listened(self, session_id: str) -> bool:
        """Whether the session has a subscriber in this process."""
        return session_id in self._subscribers

    def subscribers(self, session_id: str) -> int:
        """How many are listening to a session (push notifications, tests and stats)."""
        return len(self._subscribers.get(session_id, ()))

    def on_subscribe(self, hook: Callable[[str], None]) -> None:
        """Call ``hook(session_id)`` whenever a subscriber joins."""
        self._on_subscribe = hook
