"""The turn pipeline: the one place that builds the prompt, calls the LLM and stores the turn.

A submitted turn runs in its own task and writes an event log (``start``, ``delta``…, then
``done`` or ``error``). Transports only read that log: the JSON endpoint waits for the result,
SSE and WebSocket forward the events. A client that goes away does not cancel the turn; a
client that comes back with the same ``client_message_id`` joins the turn while it is in flight
(from any event on) and gets it replayed from the store once it is done.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

from services.cache import ActiveSession, ActiveSessions
from services.errors import ChatifyError, IdempotencyConflict, SessionEnded
from services.gate import Ticket, TurnGate
from services.llm import ChatMessage, Completion, LLMClient
from services.models import (
    Clock,
    NewTurn,
    Sampling,
    SessionRecord,
    StoredTurn,
    TurnResult,
    isoformat,
)
from services.prompt import build_prompt
from services.store.base import Store
from services.templates.stats import TemplateStats

logger = logging.getLogger(__name__)
EventKind = Literal["start", "delta", "done", "error"]


@dataclass(frozen=True, slots=True)
class TurnEvent:
    """One entry of a turn's event log; ``id`` is its position, from 0."""

    id: int
    kind: EventKind
    turn: int = 0
    content: str = ""
    result: TurnResult | None = None
    error: ChatifyError | None = None


class Turn:
    """A turn in flight: its event log, and a way to follow it."""

    def __init__(self, session_id: str, text: str, client_message_id: str | None) -> None:
        self.session_id = session_id
        self.text = text
        self.client_message_id = client_message_id
        self.events: list[TurnEvent] = []
        self.joiners = 0  # requests that joined it by client_message_id
        self._grown = asyncio.Event()
        self.task: asyncio.Task[TurnResult] | None = None

    def emit(self, kind: EventKind, **fields: object) -> None:
        """Append an event and wake every follower."""
        self.events.append(TurnEvent(len(self.events), kind, **fields))  # type: ignore[arg-type]
        self._grown.set()
        self._grown = asyncio.Event()

    async def follow(self, after: int = -1) -> AsyncIterator[TurnEvent]:
        """The events after ``after``, then the live ones, until ``done`` or ``error``."""
        index = after + 1
        while True:
            grown = self._grown
            while index < len(self.events):
                event = self.events[index]
                index += 1
                yield event
                if event.kind in ("done", "error"):
                    return
            await grown.wait()

    async def result(self) -> TurnResult:
        """Wait for the stored result (or the turn's error)."""
        assert self.task is not None
        return await asyncio.shield(self.task)


class TurnPipeline:
    """Runs turns one at a time per session, write-through to the store."""

    def __init__(
        self,
        *,
        store: Store,
        sessions: ActiveSessions,
        gate: TurnGate,
        llm: LLMClient,
        clock: Clock,
        stats: TemplateStats,
        log_content: bool = False,
    ) -> None:
        self._stats = stats
        self._log_content = log_content
        self._store = store
        self._sessions = sessions
        self._gate = gate
        self._llm = llm
        self._clock = clock
        self._in_flight: dict[tuple[str, str], Turn] = {}  # by (session_id, client_message_id)
        self._tasks: set[asyncio.Task[TurnResult]] = set()

    @property
    def in_flight_count(self) -> int:
        """Turns running or queued in this process."""
        return len(self._tasks)

    def in_flight(self, session_id: str, client_message_id: str) -> Turn | None:
        """The running turn started with this ``client_message_id``, if any."""
        return self._in_flight.get((session_id, client_message_id))

    async def check_session(self, session_id: str) -> SessionRecord:
        """The active session (``SessionNotFound``/``SessionEnded`` now, before a stream)."""
        return (await self._sessions.get(session_id)).record

    def submit(
        self, session_id: str, *, text: str, client_message_id: str | None, stream: bool
    ) -> tuple[Turn, bool]:
        """Queue a turn, or join the one in flight with this ``client_message_id``.

        Returns the turn and whether it was joined. Raises ``SessionBusy`` when the session's
        queue is full and ``IdempotencyConflict`` when the id is in flight with other text.
        """
        key = (session_id, client_message_id) if client_message_id else None
        if key is not None and (running := self._in_flight.get(key)) is not None:
            if running.text != text:
                raise _conflict(client_message_id)
            running.joiners += 1
            return running, True
        ticket = self._gate.reserve(session_id)
        turn = Turn(session_id, text, client_message_id)
        turn.task = asyncio.create_task(self._run(turn, ticket, stream))
        self._tasks.add(turn.task)
        if key is not None:
            self._in_flight[key] = turn
        turn.task.add_done_callback(lambda task: self._finished(task, key))
        return turn, False

    async def run(self, session_id: str, *, text: str, client_message_id: str | None) -> TurnResult:
        """One turn, non-streamed: returns once it is stored (or replayed)."""
        turn, joined = self.submit(
            session_id, text=text, client_message_id=client_message_id, stream=False
        )
        result = await turn.result()
        return dataclasses.replace(result, replayed=True) if joined else result

    def _finished(self, task: asyncio.Task[TurnResult], key: tuple[str, str] | None) -> None:
        self._tasks.discard(task)
        if key is not None:
            self._in_flight.pop(key, None)
        error = None if task.cancelled() else task.exception()
        # Domain errors reach the clients as events; anything else is a bug worth a traceback,
        # even when every client has gone away and nobody awaits the task any more.
        if error is not None and not isinstance(error, ChatifyError):
            logger.error("turn failed unexpectedly", exc_info=error)

    async def drain(self) -> None:
        """Wait for turns in flight (at shutdown), so none is cut off half-way."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _run(self, turn: Turn, ticket: Ticket, stream: bool) -> TurnResult:
        try:
            async with ticket:
                active = await self._sessions.get(turn.session_id)
                if turn.client_message_id is not None:
                    stored = active.find(turn.client_message_id) or await self._store.find_turn(
                        turn.session_id, turn.client_message_id
                    )
                    if stored is not None:
                        return _replay(turn, active, stored)
                return await self._complete(turn, active, stream)
        except ChatifyError as error:
            turn.emit("error", error=error)
            raise
        finally:
            ticket.discard()

    async def _complete(self, turn: Turn, active: ActiveSession, stream: bool) -> TurnResult:
        record = active.record
        started = time.perf_counter()
        user_at = isoformat(self._clock())
        turn.emit("start", turn=record.message_count + 1)
        messages = build_prompt(record, active.context, turn.text)
        try:
            completion = await self._ask(turn, messages, record.sampling, stream)
        except ChatifyError:
            self._stats.turn_failed(record.template_id)
            raise
        new = NewTurn(
            user_text=turn.text,
            reply=completion.content,
            client_message_id=turn.client_message_id,
            user_at=user_at,
            reply_at=isoformat(self._clock()),
            usage=completion.usage,
        )
        try:
            stored = await self._store.append_turn(record, new)
        except SessionEnded:
            self._sessions.forget(record.session_id)
            raise
        except ChatifyError:
            self._stats.turn_failed(record.template_id)
            raise
        if stored.created:
            self._stats.turn_done(record.template_id, reply_tokens=_reply_tokens(stored))
        if not stored.created:  # another instance stored this client_message_id first
            self._sessions.forget(record.session_id)
            result = _result(active, stored, replayed=True)
        elif stored.user.seq == active.next_seq:
            active.remember(stored)
            result = _result(active, stored, replayed=False, completion=completion)
        else:
            # Stored elsewhere than expected (another instance appended): the context is stale.
            self._sessions.forget(record.session_id)
            result = _result(active, stored, replayed=False, completion=completion)
        result = dataclasses.replace(result, latency_ms=(time.perf_counter() - started) * 1000)
        if self._log_content:  # LOG_MESSAGE_CONTENT=true only: message bodies are private
            logger.info(
                "turn %s #%d: %r -> %r",
                turn.session_id,
                result.message_count,
                turn.text,
                result.reply,
            )
        turn.emit("done", result=result)
        return result

    async def _ask(
        self, turn: Turn, messages: list[ChatMessage], sampling: Sampling, stream: bool
    ) -> Completion:
        if stream:
            return await self._llm.stream(
                messages, sampling, on_delta=lambda piece: turn.emit("delta", content=piece)
            )
        completion = await self._llm.complete(messages, sampling)
        turn.emit("delta", content=completion.content)
        return completion


def _replay(turn: Turn, active: ActiveSession, stored: StoredTurn) -> TurnResult:
    if stored.user.content != turn.text:
        raise _conflict(stored.user.client_message_id)
    result = _result(active, stored, replayed=True)
    turn.emit("start", turn=result.message_count)
    turn.emit("delta", content=result.reply)
    turn.emit("done", result=result)
    return result


def _result(
    active: ActiveSession,
    stored: StoredTurn,
    *,
    replayed: bool,
    completion: Completion | None = None,
) -> TurnResult:
    return TurnResult(
        session_id=active.record.session_id,
        reply=stored.assistant.content,
        # The turn's own number, from its position (exact: seqs have no gaps but on Firebase
        # after a crash between a seq claim and the turn's write).
        message_count=stored.message_count,
        replayed=replayed,
        usage=stored.assistant.usage,
        model=completion.model if completion else active.record.sampling.model,
    )


def _reply_tokens(stored: StoredTurn) -> int:
    usage = stored.assistant.usage
    return usage.completion_tokens if usage else 0


def _conflict(client_message_id: str | None) -> IdempotencyConflict:
    return IdempotencyConflict(
        f"client_message_id {client_message_id!r} was already used with a different message"
    )
