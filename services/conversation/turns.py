"""The turn pipeline: the one place that builds the prompt, calls the LLM and stores the turn.

A submitted turn runs in its own task and writes an event log (``start``, ``delta``…, then
``done`` or ``error``). Transports only read that log: the JSON endpoint waits for the result,
SSE and WebSocket forward the events. A client that goes away does not cancel the turn; a
client that comes back with the same ``client_message_id`` joins the turn while it is in flight
(from any event on) and gets it replayed from the store once it is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from services.conversation.bus import EventKind as SessionEventKind
from services.conversation.bus import SessionBus, SessionEvent
from services.conversation.gate import Ticket, TurnGate
from services.conversation.memory import Memory
from services.conversation.prompt import PromptCounter, build_prompt, history_window, smaller_window
from services.conversation.registry import ActiveSession, ActiveSessions
from services.conversation.titles import Titles
from services.core.errors import (
    ChatifyError,
    ContextTooLong,
    IdempotencyConflict,
    SessionEnded,
    ToolResultsTooLong,
)
from services.core.metrics import TurnObserver
from services.core.records import (
    Clock,
    NewTurn,
    Sampling,
    SessionRecord,
    StoredTurn,
    ToolCall,
    ToolUse,
    TurnClaim,
    TurnResult,
    isoformat,
)
from services.limits.usage import UsageMeter
from services.llm.client import ChatMessage, Completion, LLMClient
from services.llm.tools.loop import ToolLoop
from services.llm.tools.messages import ROUND_SEPARATOR
from services.store.base import Store
from services.templates.stats import TemplateStats

logger = logging.getLogger(__name__)
EventKind = Literal["start", "delta", "tool_call", "tool_result", "done", "error"]
_STEPS_BEFORE_CLAIM = 3  # loop steps the model call gets before the claim starts
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


class Turn:
    """A turn in flight: its event log, and a way to follow it."""

    def __init__(
        self,
        session_id: str,
        text: str,
        client_message_id: str | None,
        origin: str | None = None,
    ) -> None:
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
        return await asyncio.shield(self.task)


class TurnRelay(Protocol):
    """Shares turns with other replicas (``services/redis/turns.py``)."""

    async def adopt(self, turn: Turn) -> TurnResult | None:
        """Before a turn with a ``client_message_id`` runs: when the same turn runs (or just
        ran) on another replica, relay its events into ``turn`` and return its result (or
        raise its error); else None, and this process runs it, its events shared."""


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
        tokens: PromptCounter,
        titles: Titles | None = None,
        memory: Memory | None = None,
        bus: SessionBus | None = None,
        log_content: bool = False,
        usage: UsageMeter | None = None,
        tools: ToolLoop | None = None,
        observer: TurnObserver | None = None,
        relay: TurnRelay | None = None,
    ) -> None:
        self._relay = relay
        self._usage = usage
        self._tools = tools
        self._observer = observer
        self._stats = stats
        self._titles = titles
        self._tokens = tokens
        self._memory = memory
        self._bus = bus
        self._log_content = log_content
        self._store = store
        self._sessions = sessions
        self._gate = gate
        self._llm = llm
        self._clock = clock
        self._in_flight: dict[tuple[str, str], Turn] = {}  # by (session_id, client_message_id)
        self._tasks: dict[asyncio.Task[TurnResult], str] = {}  # running turns: their session
        self._latest: dict[str, Turn] = {}  # the last turn submitted per session, while it runs

    @property
    def in_flight_count(self) -> int:
        """Turns running or queued in this process."""
        return len(self._tasks)

    def latest(self, session_id: str) -> Turn | None:
        """The session's most recently submitted turn, while it runs (a stream to resume)."""
        return self._latest.get(session_id)

    def in_flight(self, session_id: str, client_message_id: str) -> Turn | None:
        """The running turn started with this ``client_message_id``, if any."""
        return self._in_flight.get((session_id, client_message_id))

    async def check_session(self, session_id: str) -> SessionRecord:
        """The active session (``SessionNotFound``/``SessionEnded`` now, before a stream)."""
        return (await self._sessions.get(session_id)).record

    def submit(
        self,
        session_id: str,
        *,
        text: str,
        client_message_id: str | None,
        stream: bool,
        origin: str | None = None,
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
        turn = Turn(session_id, text, client_message_id, origin)
        turn.task = asyncio.create_task(self._run(turn, ticket, stream))
        self._tasks[turn.task] = session_id
        self._latest[session_id] = turn
        if self._bus is not None:
            turn.taps.append(_Broadcast(turn, self._bus))
        if key is not None:
            self._in_flight[key] = turn
        turn.task.add_done_callback(lambda task: self._finished(task, key))
        turn.task.add_done_callback(lambda _: self._forget_latest(turn))
        return turn, False

    async def run(self, session_id: str, *, text: str, client_message_id: str | None) -> TurnResult:
        """One turn, non-streamed: returns once it is stored (or replayed)."""
        turn, joined = self.submit(
            session_id, text=text, client_message_id=client_message_id, stream=False
        )
        result = await turn.result()
        return dataclasses.replace(result, replayed=True) if joined else result

    def _forget_latest(self, turn: Turn) -> None:
        if self._latest.get(turn.session_id) is turn:
            del self._latest[turn.session_id]

    def _finished(self, task: asyncio.Task[TurnResult], key: tuple[str, str] | None) -> None:
        self._tasks.pop(task, None)
        if key is not None:
            self._in_flight.pop(key, None)
        error = None if task.cancelled() else task.exception()
        # Domain errors reach the clients as events; anything else is a bug worth a traceback,
        # even when every client has gone away and nobody awaits the task any more.
        if error is not None and not isinstance(error, ChatifyError):
            logger.error("turn failed unexpectedly", exc_info=error)

    async def settle(self, session_ids: set[str]) -> None:
        """Wait for this process's turns of these sessions to finish (before erasing them)."""
        running = [task for task, sid in self._tasks.items() if sid in session_ids]
        if running:
            await asyncio.gather(*running, return_exceptions=True)

    async def drain(self) -> None:
        """Wait for turns in flight (at shutdown), so none is cut off half-way."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _run(self, turn: Turn, ticket: Ticket, stream: bool) -> TurnResult:
        try:
            async with ticket:
                cid = turn.client_message_id
                if cid is not None and self._relay is not None:
                    relayed = await self._relay.adopt(turn)
                    if relayed is not None:
                        return relayed
                try:
                    active = await self._sessions.get(turn.session_id)
                except SessionEnded:
                    if cid is None:
                        raise
                    return await self._replay_ended(turn, cid)
                if cid is not None:
                    # Memory answers "is this id new?"; only a "maybe" (an id stored beyond the
                    # context, or the filter's rare mistake) reads before the model is asked.
                    # Ids stored elsewhere meanwhile come back with the claim.
                    stored = active.find(cid)
                    if stored is None and active.seen.may_hold(cid):
                        stored = await self._store.find_turn(turn.session_id, cid)
                    if stored is not None:
                        return _replay(turn, active.record, stored)
                return await self._complete(turn, active, stream)
        except ChatifyError as error:
            turn.emit("error", error=error)
            if self._observer is not None:
                self._observer.turn_failed(error.code)
            raise
        except Exception:
            # A bug: its followers (a stream, a socket) still get an end, not silence.
            turn.emit("error", error=ChatifyError("The turn failed unexpectedly"))
            if self._observer is not None:
                self._observer.turn_failed(ChatifyError.code)
            raise
        finally:
            ticket.discard()

    async def _replay_ended(self, turn: Turn, client_message_id: str) -> TurnResult:
        """A resend to a session that has ended since: its stored reply, or ``SessionEnded``."""
        record = await self._store.get_session(turn.session_id)
        stored = await self._store.find_turn(turn.session_id, client_message_id)
        if record is None or stored is None:
            raise SessionEnded(turn.session_id, record.status if record else "ended")
        return _replay(turn, record, stored)

    async def _complete(self, turn: Turn, active: ActiveSession, stream: bool) -> TurnResult:
        record = active.record
        started = time.perf_counter()
        user_at = isoformat(self._clock())
        turn.emit("start", turn=record.message_count + 1)
        if record.context_tokens is not None:
            await self._tokens.prepare(record.sampling.model)
        window = history_window(record, active.context, self._tokens)
        # The prompt with less history is built only if the provider refuses the full one.
        prompts: list[Callable[[], list[ChatMessage]]] = [
            functools.partial(build_prompt, record, window, turn.text)
        ]
        if (smaller := smaller_window(window)) is not None:
            prompts.append(functools.partial(build_prompt, record, smaller, turn.text))
        claiming = asyncio.create_task(
            self._claim(record, turn.client_message_id, known_below=active.next_seq)
        )
        try:
            answered = await self._ask_while_claiming(
                turn, prompts, record.sampling, claiming, stream=stream
            )
        except BaseException as error:
            await self._abandon(record, turn, claiming)
            if isinstance(error, SessionEnded):
                self._sessions.forget(record.session_id)
            elif isinstance(error, ChatifyError):
                self._stats.turn_failed(record.template_id)
            raise
        if isinstance(answered, StoredTurn):  # the id was stored already (elsewhere, earlier)
            self._sessions.forget(record.session_id)
            return _replay(turn, active.record, answered, started=True)
        completion, claim = answered
        new = NewTurn(
            user_text=turn.text,
            reply=completion.content,
            client_message_id=turn.client_message_id,
            user_at=user_at,
            reply_at=isoformat(self._clock()),
            usage=completion.usage,
            provider=completion.provider,
            model=completion.model,
            tools=completion.tool_uses,
            asked_model=completion.asked_model,
        )
        try:
            stored = await self._store.write_turn(record, claim, new)
        except SessionEnded:
            self._sessions.forget(record.session_id)
            raise
        except ChatifyError:
            self._stats.turn_failed(record.template_id)
            raise
        if stored.created:
            self._stats.turn_done(
                record.template_id, reply_tokens=_reply_tokens(stored), served_by=new.served_by
            )
            if self._usage is not None:
                self._usage.spent(record.user_id, stored.assistant.usage, at=new.reply_at)
            if self._titles is not None:
                self._titles.after_turn(record, stored)
        seconds = time.perf_counter() - started
        if not stored.created:  # another instance stored this client_message_id first
            self._sessions.forget(record.session_id)
            result = _result(record, stored, replayed=True, seconds=seconds)
        else:
            if stored.user.seq == active.next_seq:
                active.remember(stored)
                if self._memory is not None:
                    self._memory.after_turn(active)
            else:
                # Stored elsewhere than expected (another instance appended): stale context.
                self._sessions.forget(record.session_id)
            result = _result(record, stored, replayed=False, completion=completion, seconds=seconds)
        if stored.created and self._observer is not None:
            first_delta = turn.first_delta_at
            self._observer.turn_stored(
                template=record.template_id,
                provider=completion.provider,
                model=completion.served_by[1],  # as in usage's by_model: the model asked for
                usage=stored.assistant.usage,
                seconds=seconds,
                first_delta_seconds=(
                    first_delta - started if stream and first_delta is not None else None
                ),
            )
        self._log_turn(turn, record, result, completion)
        turn.emit("done", result=result)
        return result

    def _log_turn(
        self, turn: Turn, record: SessionRecord, result: TurnResult, completion: Completion
    ) -> None:
        """One line per stored turn, its fields also as the record's attributes (JSON logs);
        the text of the messages only with LOG_MESSAGE_CONTENT=true (they are private)."""
        if not logger.isEnabledFor(logging.INFO):
            return
        usage = result.usage
        fields: dict[str, object] = {
            "session_id": turn.session_id,
            "turn": result.message_count,
            "template": record.template_id,
            "provider": completion.provider,
            "model": completion.model,
            "prompt_tokens": usage.prompt_tokens if usage else None,
            "completion_tokens": usage.completion_tokens if usage else None,
            "latency_ms": round(result.latency_ms, 1),
        }
        line = (
            "turn %(session_id)s #%(turn)d stored: template=%(template)s provider=%(provider)s "
            "model=%(model)s tokens=%(prompt_tokens)s+%(completion_tokens)s "
            "latency=%(latency_ms).1fms"
        )
        if self._log_content:
            texts = {"message": turn.text, "reply": result.reply}
            logger.info(line + ": %(message)r -> %(reply)r", {**fields, **texts}, extra=fields)
        else:
            logger.info(line, fields, extra=fields)

    async def _ask_while_claiming(
        self,
        turn: Turn,
        prompts: list[Callable[[], list[ChatMessage]]],
        sampling: Sampling,
        claiming: asyncio.Task[TurnClaim | StoredTurn],
        *,
        stream: bool,
    ) -> tuple[Completion, TurnClaim] | StoredTurn:
        """The model's reply and the store's claim, side by side. Until the claim says the
        ``client_message_id`` is new, deltas are held back, so a client never sees text of a
        reply that turns out to be a replay; the model is stopped as soon as it is one."""
        held = _HeldDeltas(turn, holding=turn.client_message_id is not None)

        async def before_tools() -> None:
            """Tools run only for a turn the claim found new: a replay never reruns them."""
            if isinstance(await asyncio.shield(claiming), StoredTurn):
                await asyncio.Future()  # the turn is a replay; this task is cancelled

        asking = asyncio.create_task(self._ask(prompts, sampling, stream, held, before_tools))
        try:
            done, _ = await asyncio.wait({asking, claiming}, return_when=asyncio.FIRST_COMPLETED)
            if claiming in done:
                early = claiming.result()
                if isinstance(early, StoredTurn):
                    return early
                held.release()
            completion = await asking
            claim = await claiming
            if isinstance(claim, StoredTurn):
                return claim
            held.release()
            return completion, claim
        finally:
            if not asking.done():
                asking.cancel()
                with contextlib.suppress(BaseException):
                    await asking

    async def _claim(
        self, record: SessionRecord, client_message_id: str | None, *, known_below: int
    ) -> TurnClaim | StoredTurn:
        """The store's claim, started once the model's request is on its way: the SDK builds
        and sends it in its first few steps on the loop, and the claim's HTTP work in a pool
        thread would compete with that for the GIL (measured: the reply came 1.5 ms later)."""
        for _ in range(_STEPS_BEFORE_CLAIM):
            await asyncio.sleep(0)
        return await self._store.claim_turn(record, client_message_id, known_below=known_below)

    async def _abandon(
        self, record: SessionRecord, turn: Turn, claiming: asyncio.Task[TurnClaim | StoredTurn]
    ) -> None:
        """Give back what the claim reserved for a turn that will not be written."""
        try:
            claim = await claiming
        except ChatifyError:
            return  # the claim failed itself and reserved nothing it kept
        if isinstance(claim, TurnClaim):
            try:
                await self._store.release_turn(record, claim, turn.client_message_id)
            except ChatifyError as error:
                logger.warning("could not release the claim of a failed turn: %s", error.code)

    async def _ask(
        self,
        prompts: list[Callable[[], list[ChatMessage]]],
        sampling: Sampling,
        stream: bool,
        held: _HeldDeltas,
        before_tools: Callable[[], Awaitable[None]],
    ) -> Completion:
        """The reply to the first prompt the provider accepts: one with less history (the
        memory kept) when it refuses the full one as too long. Such a refusal comes before
        any delta, so nothing of the first attempt reached a client."""
        for attempt, prompt in enumerate(prompts, start=1):
            messages = prompt()
            try:
                if sampling.tools and self._tools is not None:
                    completion = await self._tools.run(
                        messages,
                        sampling,
                        stream=stream,
                        on_delta=held.add,
                        on_tool=held.tool,
                        before_tools=before_tools,
                    )
                elif stream:
                    completion = await self._llm.stream(messages, sampling, on_delta=held.add)
                else:
                    completion = await self._llm.complete(messages, sampling)
                    held.add(completion.content)
            except ContextTooLong as error:
                if attempt == len(prompts) or isinstance(error, ToolResultsTooLong):
                    raise
                logger.info("prompt too long for %s; retrying with less history", sampling.model)
                continue
            if completion.usage_reported and not completion.tool_uses:
                self._tokens.observe(sampling.model, messages, completion.usage.prompt_tokens)
            return completion
        raise AssertionError("no prompt to send")  # prompts is never empty


class _HeldDeltas:
    """Deltas and tool events passed on at once, or held until ``release`` (then passed on at
    once, in order)."""

    def __init__(self, turn: Turn, *, holding: bool) -> None:
        self._turn = turn
        self._held: list[str | ToolCall | ToolUse] | None = [] if holding else None

    def add(self, piece: str) -> None:
        self._pass(piece)

    def tool(self, item: ToolCall | ToolUse) -> None:
        self._pass(item)

    def _pass(self, item: str | ToolCall | ToolUse) -> None:
        if self._held is None:
            _emit(self._turn, item)
        else:
            self._held.append(item)

    def release(self) -> None:
        held, self._held = self._held, None
        for item in held or ():
            _emit(self._turn, item)


class _Broadcast:
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


def _replay(
    turn: Turn, record: SessionRecord, stored: StoredTurn, *, started: bool = False
) -> TurnResult:
    if stored.user.content != turn.text:
        raise _conflict(stored.user.client_message_id)
    result = _result(record, stored, replayed=True)
    turn.replayed = True
    if not started:
        turn.emit("start", turn=result.message_count)
    _replay_reply(turn, stored.assistant.tools, result.reply)
    turn.emit("done", result=result)
    return result


def _replay_reply(turn: Turn, uses: tuple[ToolUse, ...], reply: str) -> None:
    """A stored reply's deltas and tool events in the order they first came: the text written
    with a round's calls before them (``ToolUse.round_text``), the rest after the last."""
    texts = [use.round_text for use in uses if use.round_text]
    placed = bool(texts) and reply.startswith(ROUND_SEPARATOR.join(texts))
    sent = 0
    for use in uses:
        if placed and use.round_text:
            piece = (ROUND_SEPARATOR if sent else "") + use.round_text
            turn.emit("delta", content=piece)
            sent += len(piece)
        turn.emit("tool_call", tool=use.call)
        turn.emit("tool_result", tool=use)
    if reply[sent:] or not sent:
        turn.emit("delta", content=reply[sent:])


def _result(
    record: SessionRecord,
    stored: StoredTurn,
    *,
    replayed: bool,
    completion: Completion | None = None,
    seconds: float = 0.0,
) -> TurnResult:
    return TurnResult(
        session_id=record.session_id,
        reply=stored.assistant.content,
        # The turn's own number, from its position (exact: seqs have no gaps but on Firebase
        # after a crash between a seq claim and the turn's write).
        message_count=stored.message_count,
        replayed=replayed,
        usage=stored.assistant.usage,
        model=completion.model if completion else record.sampling.model,
        user_message=stored.user,
        assistant_message=stored.assistant,
        latency_ms=seconds * 1000,
    )


def _reply_tokens(stored: StoredTurn) -> int:
    usage = stored.assistant.usage
    return usage.completion_tokens if usage else 0


def _conflict(client_message_id: str | None) -> IdempotencyConflict:
    return IdempotencyConflict(
        f"client_message_id {client_message_id!r} was already used with a different message"
    )
