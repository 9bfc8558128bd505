"""A turn's event log and who hears it: the ``Turn`` in flight with its ``TurnEvent``s and
followers, deltas held back until a claim says the turn is new, and the broadcast of a new
turn's events to every socket on its session.

The turn pipeline (``turns``) writes the log; transports, the broadcast and the relay between
replicas (``TurnRelay``, ``services/redis/turns.py``) only read or fill it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from services.conversation.bus import EventKind as SessionEventKind
from services.conversation.bus import SessionBus, SessionEvent
from services.core.attachment_records import Attachment
from services.core.errors import ChatifyError
from services.core.records import ToolCall, ToolUse, TurnResult

EventKind = Literal["start", "delta", "tool_call", "tool_result", "done", "error"]
# Deltas waiting for one reader, beyond which they are passed on as one (see Turn.follow).
COALESCE_BACKLOG = 8


@dataclass(frozen=True, slots=True)
class TurnEvent:
    """One entry of a turn's event log; ``id`` is its position, from 0."""

    id: int
    kind: EventKind
    turn: int = 0
    content: str = ""
    result: TurnResult | None = None
    error: ChatifyError | None = None
    tool: ToolCall | ToolUse | None = None  # tool_call: the call; tool_result: its result


@dataclass(frozen=True, slots=True)
class Rewrite:
    """A turn that answers again rather than appends: the last user message (``seq`` None,
    a regenerate) or the user message at ``seq`` with the turn's text (an edit)."""

    seq: int | None = None
    asked_id: str | None = None  # the AI SDK's id of the user message it answers


class Turn:
    """A turn in flight: its event log, and a way to follow it."""

    def __init__(
        self,
        session_id: str,
        text: str,
        client_message_id: str | None,
        origin: str | None = None,
        rewrite: Rewrite | None = None,
        images: tuple[Attachment, ...] = (),
    ) -> None:
        self.images = images  # the message's images, checked and stored (``attachments``)
        self.rewrite = rewrite  # a regenerate or an edit (``services.conversation.branches``)
        self.origin = origin  # the connection that sent it, if it follows the turn itself
        self.session_id = session_id
        self.text = text
        self.client_message_id = client_message_id
        self.events: list[TurnEvent] = []
        self.joiners = 0  # requests that joined it by client_message_id
        self.first_delta_at: float | None = None  # perf_counter() of its first delta event
        self._grown = asyncio.Event()
        self.task: asyncio.Task[TurnResult] | None = None
        self.relayed = False  # its events are those of the same turn running on another replica
        self.replayed = False  # its events replay a stored turn: no news for other sockets
        self.taps: list[Callable[[TurnEvent], None]] = []  # told of each event (a TurnRelay)
        self.stopped = False  # a stop was asked: the reply is what came before it
        self.asking: asyncio.Task[Any] | None = None  # its model call, while it runs
        self.heard = False  # its end reached a client here (no push needed: services/push)

    def stop(self) -> None:
        """Stop the reply being written: its model call is cancelled (which closes the
        upstream request); a turn that has not asked the model yet stops as soon as it does."""
        self.stopped = True
        if self.asking is not None:
            self.asking.cancel()

    def emit(self, kind: EventKind, **fields: object) -> None:
        """Append an event and wake every follower."""
        if kind == "delta" and self.first_delta_at is None:
            self.first_delta_at = time.perf_counter()
        event = TurnEvent(len(self.events), kind, **fields)  # type: ignore[arg-type]
        self.events.append(event)
        for tap in self.taps:
            tap(event)
        self._grown.set()
        self._grown = asyncio.Event()

    async def follow(
        self, after: int = -1, *, coalesce: bool = False, floor: int = -1
    ) -> AsyncIterator[TurnEvent]:
        """The events after ``after``, then the live ones, until ``done`` or ``error``.

        With ``coalesce``, a run of more than ``COALESCE_BACKLOG`` deltas that waits for this
        reader when it gets to run (the model wrote faster than it reads) comes as one delta:
        the text joined, the id of the run's last event, so a resume after it is exact. A
        run never spans ``floor`` (events up to it may be skipped by ``resume``)."""
        index = after + 1
        events = self.events
        while True:
            grown = self._grown
            while index < len(events):
                event = events[index]
                index += 1
                if coalesce and event.kind == "delta":
                    end = index
                    below = event.id <= floor
                    while (
                        end < len(events)
                        and events[end].kind == "delta"
                        and (end <= floor) == below  # ids are positions
                    ):
                        end += 1
                    if end - index >= COALESCE_BACKLOG:
                        run = events[index - 1 : end]
                        text = "".join(e.content for e in run)
                        event = TurnEvent(run[-1].id, "delta", event.turn, text)
                        index = end
                if event.kind in ("done", "error"):
                    self.heard = True
                yield event
                if event.kind in ("done", "error"):
                    return
            await grown.wait()

    async def resume(self, after: int, *, coalesce: bool = False) -> AsyncIterator[TurnEvent]:
        """For a resend that was not joined here: the events after ``after`` when they are
        relayed from the replica running the turn (a client saw the first ones there); every
        event when the turn is new or a stored one replayed."""
        async for event in self.follow(coalesce=coalesce, floor=after):
            if not (self.relayed and event.id <= after):
                yield event

    async def result(self) -> TurnResult:
        """Wait for the stored result (or the turn's error)."""
        assert self.task is not None
        self.heard = True  # a request waits for it (not cancelled if its client goes)
        return await asyncio.shield(self.task)


class TurnRelay(Protocol):
    """Shares turns with other replicas (``services/redis/turns.py``)."""

    async def adopt(self, turn: Turn) -> TurnResult | None:
        """Before a turn with a ``client_message_id`` runs: when the same turn runs (or just
        ran) on another replica, relay its events into ``turn`` and return its result (or
        raise its error); else None, and this process runs it, its events shared."""


class HeldDeltas:
    """Deltas and tool events passed on at once, or held until ``release`` (then passed on at
    once, in order)."""

    def __init__(self, turn: Turn, *, holding: bool) -> None:
        self._turn = turn
        self._held: list[str | ToolCall | ToolUse] | None = [] if holding else None

    def add(self, piece: str) -> None:
        """A delta of the reply."""
        self._pass(piece)

    def tool(self, item: ToolCall | ToolUse) -> None:
        """A tool call, or its result."""
        self._pass(item)

    def _pass(self, item: str | ToolCall | ToolUse) -> None:
        if self._held is None:
            _emit(self._turn, item)
        else:
            self._held.append(item)

    def release(self) -> None:
        """Pass on what was held, and from now on everything at once."""
        held, self._held = self._held, None
        for item in held or ():
            _emit(self._turn, item)


class Broadcast:
    """A new turn's events for every socket on the session, told by the turn as it emits
    them (no task per turn, no wake-up per delta). The ``start`` is held until the next event
    shows whether the turn is news: a replay of a stored turn, or a turn announced where it
    runs (relayed from another replica), is not."""

    __slots__ = ("_turn", "_bus", "_held", "_announced", "_over")

    def __init__(self, turn: Turn, bus: SessionBus) -> None:
        self._turn = turn
        self._bus = bus
        self._held: TurnEvent | None = None
        self._announced = False
        self._over = False

    def __call__(self, event: TurnEvent) -> None:
        if self._over:
            return
        turn = self._turn
        if event.kind == "start":
            self._held = event
            return
        if event.kind in ("done", "error"):
            self._over = True
        if not self._announced:
            if self._held is None or turn.relayed or turn.replayed:
                self._over = True  # refused before it started, or no news
                return
            held = self._held
            self._publish("turn_started", text=turn.text, turn=held.turn)
            self._announced = True
        if event.kind == "delta":
            self._publish("delta", text=event.content)
        elif event.kind in ("tool_call", "tool_result"):
            self._publish(event.kind, tool=event.tool)
        elif event.kind == "done":
            self._publish("reply", result=event.result)
        elif event.kind == "error":
            self._publish("turn_error", error=event.error)

    def _publish(self, kind: SessionEventKind, **fields: Any) -> None:
        turn = self._turn
        if not self._bus.listened(turn.session_id):
            return  # no socket on the session: nothing to build
        self._bus.publish(
            SessionEvent(
                kind, turn.session_id, turn.client_message_id, origin=turn.origin, **fields
            )
        )


def _emit(turn: Turn, item: str | ToolCall | ToolUse) -> None:
    if isinstance(item, str):
        turn.emit("delta", content=item)
    else:
        turn.emit("tool_call" if isinstance(item, ToolCall) else "tool_result", tool=item)
