"""The turn pipeline: the one place that builds the prompt, calls the LLM and stores the turn.

A submitted turn runs in its own task and writes an event log (``start``, ``delta``…, then
``done`` or ``error``; ``turn_events``). Transports only read that log: the JSON endpoint waits
for the result, SSE and WebSocket forward the events. A client that goes away does not cancel
the turn; a client that comes back with the same ``client_message_id`` joins the turn while it
is in flight (from any event on) and gets it replayed from the store once it is done
(``replay``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import Awaitable, Callable

from services.attachments.service import Attachments
from services.conversation.branches import Branches, BranchRelay
from services.conversation.bus import SessionBus
from services.conversation.counting import StoredCounts
from services.conversation.gate import Ticket, TurnGate
from services.conversation.memory import Memory
from services.conversation.prompt import (
    PromptCounter,
    build_prompt,
    history_window,
    smaller_window,
)
from services.conversation.registry import ActiveSession, ActiveSessions
from services.conversation.replay import conflict, log_stored, replay, turn_result
from services.conversation.stopping import STOPPED, StopRelay, partial_completion, unless_stopped
from services.conversation.titles import Titles
from services.conversation.turn_events import Broadcast, HeldDeltas, Rewrite, Turn, TurnRelay
from services.core.attachment_records import Attachment
from services.core.errors import (
    ChatifyError,
    ContextTooLong,
    NoTurnInFlight,
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
    TurnClaim,
    TurnResult,
    isoformat,
)
from services.limits.cost import PriceTable
from services.limits.usage import UsageMeter
from services.llm.client import ChatMessage, Completion, LLMClient
from services.llm.tools.loop import ToolLoop
from services.store.base import Store
from services.templates.stats import TemplateStats

logger = logging.getLogger(__name__)
_STEPS_BEFORE_CLAIM = 3  # loop steps the model call gets before the claim starts


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
        prices: PriceTable | None = None,
        stops: StopRelay | None = None,
        rewrites: BranchRelay | None = None,
        attachments: Attachments | None = None,
        watch: Callable[[Turn], None] | None = None,
    ) -> None:
        self._attachments = attachments
        self._watch = watch  # told of each new turn: push notifications (PUSH_ENABLED)
        self._relay = relay
        self._prices = prices
        self._stops = stops
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
        self._asking: dict[str, Turn] = {}  # the turn whose reply is being written, per session
        self._counts = StoredCounts(stats, usage, observer)
        self.branches = Branches(
            store=store, sessions=sessions, gate=gate, clock=clock, stats=stats, tokens=tokens,
            memory=memory, counts=self._counts, relay=rewrites, prices=prices,
            attachments=attachments,
        )  # fmt: skip

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

    async def stop(self, session_id: str) -> None:
        """Stop the session's turn in flight, here or on the replica that runs it;
        ``NoTurnInFlight`` when none runs."""
        if self.stop_here(session_id):
            return
        if self._stops is not None and await self._stops.request_stop(session_id):
            return
        raise NoTurnInFlight(session_id)

    def stop_here(self, session_id: str) -> bool:
        """Stop the session's turn if this process runs it: the one writing its reply, else
        the one submitted last (it stops once it asks the model). A turn relayed from
        another replica is stopped there."""
        turn = self._asking.get(session_id) or self._latest.get(session_id)
        if turn is None or turn.relayed:
            return False
        turn.stop()
        return True

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
        rewrite: Rewrite | None = None,
        images: tuple[Attachment, ...] = (),
    ) -> tuple[Turn, bool]:
        """Queue a turn, or join the one in flight with this ``client_message_id``.

        Returns the turn and whether it was joined. Raises ``SessionBusy`` when the session's
        queue is full and ``IdempotencyConflict`` when the id is in flight with other text.
        """
        key = (session_id, client_message_id) if client_message_id else None
        if key is not None and (running := self._in_flight.get(key)) is not None:
            if running.text != text or running.rewrite != rewrite:
                raise conflict(client_message_id)
            running.joiners += 1
            return running, True
        ticket = self._gate.reserve(session_id)
        turn = Turn(session_id, text, client_message_id, origin, rewrite, images)
        turn.task = asyncio.create_task(self._run(turn, ticket, stream))
        self._tasks[turn.task] = session_id
        self._latest[session_id] = turn
        if self._bus is not None:
            turn.taps.append(Broadcast(turn, self._bus))
        if self._watch is not None:
            self._watch(turn)
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
                if cid is not None and self._relay is not None and turn.rewrite is None:
                    relayed = await self._relay.adopt(turn)
                    if relayed is not None:
                        return relayed
                try:
                    active = await self._sessions.get(turn.session_id)
                except SessionEnded:
                    if cid is None:
                        raise
                    return await self._replay_ended(turn, cid)
                if turn.rewrite is not None:  # a regenerate or an edit (``branches``)
                    ask = self._ask_while_claiming
                    return await self.branches.run(turn, active, stream=stream, ask=ask)
                if cid is not None:
                    # Memory answers "is this id new?"; only a "maybe" (an id stored beyond the
                    # context, or the filter's rare mistake) reads before the model is asked.
                    # Ids stored elsewhere meanwhile come back with the claim.
                    stored = active.find(cid)
                    if stored is None and active.seen.may_hold(cid):
                        stored = await self._store.find_turn(turn.session_id, cid)
                    if stored is not None:
                        return replay(turn, active.record, stored)
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
        return replay(turn, record, stored)

    async def _complete(self, turn: Turn, active: ActiveSession, stream: bool) -> TurnResult:
        record = active.record
        started = time.perf_counter()
        user_at = isoformat(self._clock())
        turn.emit("start", turn=record.message_count + 1)
        if record.context_tokens is not None:
            await self._tokens.prepare(record.sampling.model)
        window = history_window(record, active.context, self._tokens)
        urls: dict[str, str] | None = None
        if self._attachments and (turn.images or any(m.attachments for m in window)):
            urls = await self._attachments.prompt_urls(record.user_id, window, turn.images)
        # The prompt with less history is built only if the provider refuses the full one.
        prompts: list[Callable[[], list[ChatMessage]]] = [
            functools.partial(build_prompt, record, window, turn.text, turn.images, urls)
        ]
        if (smaller := smaller_window(window)) is not None:
            prompts.append(
                functools.partial(build_prompt, record, smaller, turn.text, turn.images, urls)
            )
        claiming = asyncio.create_task(
            self._claim(record, turn.client_message_id, known_below=active.next_seq)
        )
        try:
            answered = await self._ask_while_claiming(
                turn, prompts, record.sampling, claiming, stream=stream
            )
            if turn.images and self._attachments:  # written while the model answered
                await self._attachments.written(turn.images)
        except BaseException as error:
            await self._abandon(record, turn, claiming)
            if isinstance(error, SessionEnded):
                self._sessions.forget(record.session_id)
            elif isinstance(error, ChatifyError):
                self._stats.turn_failed(record.template_id)
            raise
        if isinstance(answered, StoredTurn):  # the id was stored already (elsewhere, earlier)
            self._sessions.forget(record.session_id)
            return replay(turn, active.record, answered, started=True)
        completion, claim = answered
        usage = completion.usage
        if self._prices is not None:  # priced once, stored with the turn by its one write
            usage = self._prices.priced(usage, completion.served_by)
        new = NewTurn(
            user_text=turn.text,
            reply=completion.content,
            client_message_id=turn.client_message_id,
            user_at=user_at,
            reply_at=isoformat(self._clock()),
            finish_reason=STOPPED if completion.stopped else None,
            usage=usage,
            provider=completion.provider,
            model=completion.model,
            tools=completion.tool_uses,
            asked_model=completion.asked_model,
            attachments=turn.images,
        )
        try:
            stored = await self._store.write_turn(record, claim, new)
        except SessionEnded:
            self._sessions.forget(record.session_id)
            raise
        except ChatifyError:
            self._stats.turn_failed(record.template_id)
            raise
        if stored.created and self._titles is not None:
            self._titles.after_turn(record, stored)
        seconds = time.perf_counter() - started
        if not stored.created:  # another instance stored this client_message_id first
            self._sessions.forget(record.session_id)
            result = turn_result(record, stored, replayed=True, seconds=seconds)
        else:
            if stored.user.seq == active.next_seq:
                active.remember(stored)
                if self._memory is not None:
                    self._memory.after_turn(active)
            else:
                # Stored elsewhere than expected (another instance appended): stale context.
                self._sessions.forget(record.session_id)
            result = turn_result(
                record, stored, replayed=False, completion=completion, seconds=seconds
            )
        if stored.created:
            first_delta = turn.first_delta_at
            self._counts.count(
                record, stored, new, completion, seconds=seconds,
                first_delta_seconds=(
                    first_delta - started if stream and first_delta is not None else None
                ),
            )  # fmt: skip
        log_stored(logger, turn, record, result, completion, content=self._log_content)
        turn.emit("done", result=result)
        return result

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
        held = HeldDeltas(turn, holding=turn.client_message_id is not None)

        async def before_tools() -> None:
            """Tools run only for a turn the claim found new: a replay never reruns them."""
            if isinstance(await asyncio.shield(claiming), StoredTurn):
                await asyncio.Future()  # the turn is a replay; this task is cancelled

        asking = asyncio.create_task(self._ask(prompts, sampling, stream, held, before_tools))
        turn.asking = asking
        self._asking[turn.session_id] = turn
        if turn.stopped:
            asking.cancel()
        try:
            done, _ = await asyncio.wait({asking, claiming}, return_when=asyncio.FIRST_COMPLETED)
            if claiming in done:
                early = claiming.result()
                if isinstance(early, StoredTurn):
                    return early
                held.release()
            completion = await unless_stopped(turn, asking)
            claim = await claiming
            if isinstance(claim, StoredTurn):
                return claim
            held.release()
            if completion is None:  # stopped: what its clients were sent is the reply
                completion = partial_completion(turn, prompts[0](), sampling)
            return completion, claim
        finally:
            turn.asking = None
            if self._asking.get(turn.session_id) is turn:
                del self._asking[turn.session_id]
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
        held: HeldDeltas,
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
