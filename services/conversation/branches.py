"""Regenerate and edit: a turn that answers a stored user message again, and the variants it
leaves behind (docs/api.md, "Regenerate, edit and variants").

A regenerate or an edit is a ``Turn`` with a ``Rewrite``: it is admitted, queued behind the
session's other turns (``gate``), streamed, stopped and counted like any turn, and only its
last step differs: the prompt holds the history *before* the answered message, and the store's
``write_branch`` replaces the active messages from the reply (a regenerate) or from the edited
message (an edit) on, keeping them as a variant of that seq, in one atomic write. The memory is
cleared when it covered what is replaced, so it is folded again over what remains.

Nothing here runs for an ordinary turn: it costs no read or write more than before.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol

from services.attachments.service import Attachments
from services.conversation.counting import StoredCounts
from services.conversation.gate import TurnGate
from services.conversation.memory import Memory
from services.conversation.prompt import PromptCounter, build_prompt, history_window, smaller_window
from services.conversation.registry import ActiveSession, ActiveSessions
from services.conversation.replay import conflict, replay_reply, turn_result
from services.conversation.stopping import STOPPED
from services.conversation.turn_events import Rewrite, Turn
from services.core.branch_records import NewBranch, Variant
from services.core.errors import (
    ChatifyError,
    MessageNotFound,
    NotAUserMessage,
    NothingToRegenerate,
    SessionEnded,
)
from services.core.records import (
    Clock,
    NewTurn,
    SessionRecord,
    StoredMessage,
    StoredTurn,
    TurnClaim,
    TurnResult,
    isoformat,
)
from services.limits.cost import PriceTable
from services.llm.client import ChatMessage, Completion
from services.store.base import Store
from services.templates.stats import TemplateStats

logger = logging.getLogger(__name__)

Ask = Callable[..., Awaitable[tuple[Completion, TurnClaim] | StoredTurn]]


class BranchRelay(Protocol):
    """Tells the other replicas that a session's history was rewritten, so that none of them
    sends the model the branch it holds in memory."""

    async def rewritten(self, session_id: str) -> None:
        """Have every other replica drop the session from memory (it reads it again)."""


class Branches:
    """Runs the last step of regenerates and edits, and lists and selects variants."""

    def __init__(
        self,
        *,
        store: Store,
        sessions: ActiveSessions,
        gate: TurnGate,
        clock: Clock,
        stats: TemplateStats,
        tokens: PromptCounter,
        memory: Memory | None,
        counts: StoredCounts,
        relay: BranchRelay | None = None,
        prices: PriceTable | None = None,
        attachments: Attachments | None = None,
    ) -> None:
        self._attachments = attachments  # a regenerated message's images go to the model again
        self._relay = relay
        self._prices = prices
        self._store = store
        self._sessions = sessions
        self._gate = gate
        self._clock = clock
        self._stats = stats
        self._tokens = tokens
        self._memory = memory
        self._counts = counts

    async def run(self, turn: Turn, active: ActiveSession, *, stream: bool, ask: Ask) -> TurnResult:
        """Answer the turn's message again and store it as the active branch (the turn's
        queue place is held by the caller)."""
        assert turn.rewrite is not None
        record, started = active.record, time.perf_counter()
        seq = _answered_seq(record.session_id, turn.rewrite, end=active.next_seq)
        # The window before the answered message, and that message with its reply.
        loaded = await self._store.load_messages(
            record.session_id, limit=max(1, record.context_messages) + 2, before=seq + 2
        )
        earlier, answered = _split(loaded, seq)
        regenerate = turn.rewrite.seq is None
        replayed = _replayable(turn, answered, last=seq + 2 == active.next_seq)
        if replayed is not None:
            return _replay(turn, record, replayed)
        if not regenerate:
            await self._check_id(turn, active, seq)
        active.memory_epoch += 1  # a fold under way summarizes what may be replaced: dropped
        text = answered[0].content if regenerate else turn.text
        reset = record.summary_seq > seq  # the memory covers what is replaced
        asked = dataclasses.replace(record, summary=None, summary_seq=0) if reset else record
        turn.emit("start", turn=seq // 2 + 1)
        if record.context_tokens is not None:
            await self._tokens.prepare(record.sampling.model)
        window = history_window(asked, earlier, self._tokens)
        images = answered[0].attachments if regenerate else ()
        urls = None
        if self._attachments and (images or any(m.attachments for m in window)):
            urls = await self._attachments.prompt_urls(record.user_id, window, images)
        prompts: list[Callable[[], list[ChatMessage]]] = [
            functools.partial(build_prompt, asked, window, text, images, urls)
        ]
        if (smaller := smaller_window(window)) is not None:
            prompts.append(functools.partial(build_prompt, asked, smaller, text, images, urls))
        completion = await self._ask(turn, record, prompts, ask, stream=stream)
        usage = completion.usage
        if self._prices is not None:  # priced as a turn is: once, stored by the branch write
            usage = self._prices.priced(usage, completion.served_by)
        new = NewTurn(
            user_text=text,
            reply=completion.content,
            client_message_id=turn.client_message_id,
            user_at=answered[0].timestamp if regenerate else isoformat(self._clock()),
            reply_at=isoformat(self._clock()),
            finish_reason=STOPPED if completion.stopped else None,
            usage=usage,
            provider=completion.provider,
            model=completion.model,
            tools=completion.tool_uses,
            asked_model=completion.asked_model,
        )
        branch = NewBranch(
            seq=seq + 1 if regenerate else seq,
            turn=new,
            next_seq=active.next_seq,
            reset_memory=reset,
        )
        stored = await self._write(record, branch)
        await self._rewritten(record.session_id)
        # A fold that was storing as this began may have moved the memory over what is
        # replaced meanwhile: the store's write cleared it too.
        reset = reset or record.summary_seq > seq
        self._remember(active, earlier, stored, reset=reset)
        seconds = time.perf_counter() - started
        self._counts.count(record, stored, new, completion, seconds=seconds)
        logger.info(
            "session %s: %s of seq %d stored as the active branch",
            record.session_id, "regenerate" if regenerate else "edit", seq,
        )  # fmt: skip
        result = turn_result(record, stored, replayed=False, completion=completion, seconds=seconds)
        turn.emit("done", result=result)
        return result

    async def _check_id(self, turn: Turn, active: ActiveSession, seq: int) -> None:
        """An edit's ``client_message_id`` may name the edited message only (a resend, or the
        AI SDK's id of the message), never another stored turn."""
        cid = turn.client_message_id
        if cid is None or not active.seen.may_hold(cid):
            return
        other = await self._store.find_turn(active.record.session_id, cid)
        if other is not None and other.user.seq != seq:
            raise conflict(cid)

    async def variants(self, session_id: str, seq: int) -> list[Variant]:
        """The variants kept at ``seq``."""
        return await self._store.load_variants(session_id, seq)

    async def select(self, record: SessionRecord, seq: int, number: int) -> list[StoredMessage]:
        """Make variant ``number`` of ``seq`` the active branch, in the session's queue
        (``MessageNotFound`` when there is no such variant)."""
        ticket = self._gate.reserve(record.session_id)
        try:
            async with ticket:
                self._sessions.forget(record.session_id)  # and a fold under way on it
                chosen = await self._store.select_variant(
                    record, seq, number, at=isoformat(self._clock())
                )
        finally:
            ticket.discard()
        # The held context and counters are stale: the next turn reads them again.
        self._sessions.forget(record.session_id)
        if chosen is None:
            raise MessageNotFound(f"Message {seq} has no variant {number}")
        await self._rewritten(record.session_id)
        return chosen

    async def _rewritten(self, session_id: str) -> None:
        """Other replicas holding the session drop it before the answer goes out: a turn the
        client sends next, wherever it lands, is sent the new branch."""
        if self._relay is not None:
            await self._relay.rewritten(session_id)

    async def _ask(
        self,
        turn: Turn,
        record: SessionRecord,
        prompts: list[Callable[[], list[ChatMessage]]],
        ask: Ask,
        *,
        stream: bool,
    ) -> Completion:
        """The model's reply through the pipeline's ask (streaming, tools, stop); nothing is
        claimed before it: the write checks where the branch ends."""
        claimed = asyncio.get_running_loop().create_future()
        claimed.set_result(TurnClaim())
        try:
            answered = await ask(turn, prompts, record.sampling, claimed, stream=stream)
        except ChatifyError as error:
            if isinstance(error, SessionEnded):
                self._sessions.forget(record.session_id)
            else:
                self._stats.turn_failed(record.template_id)
            raise
        assert not isinstance(answered, StoredTurn)
        return answered[0]

    async def _write(self, record: SessionRecord, branch: NewBranch) -> StoredTurn:
        try:
            return await self._store.write_branch(record, branch)
        except ChatifyError:
            self._sessions.forget(record.session_id)
            self._stats.turn_failed(record.template_id)
            raise

    def _remember(
        self,
        active: ActiveSession,
        earlier: list[StoredMessage],
        stored: StoredTurn,
        *,
        reset: bool,
    ) -> None:
        """The held session follows the new branch (no read for the next turn)."""
        record = active.record
        active.context = deque([*earlier, stored.user, stored.assistant], record.context_messages)
        active.next_seq = stored.assistant.seq + 1
        record.message_count = stored.message_count
        record.last_activity = stored.assistant.timestamp
        if reset:
            record.summary, record.summary_seq = None, 0
        if stored.user.client_message_id is not None:
            active.seen.add(stored.user.client_message_id)
        if self._memory is not None:
            self._memory.after_turn(active)


def _answered_seq(session_id: str, rewrite: Rewrite, *, end: int) -> int:
    """The seq of the user message answered again, checked against the active branch."""
    if rewrite.seq is None:
        if end < 2:
            raise NothingToRegenerate(session_id)
        return end - 2
    if not 0 <= rewrite.seq < end:
        raise MessageNotFound(f"Session {session_id} has no message {rewrite.seq}")
    if rewrite.seq % 2:
        raise NotAUserMessage(rewrite.seq)
    return rewrite.seq


def _split(
    loaded: list[StoredMessage], seq: int
) -> tuple[list[StoredMessage], list[StoredMessage]]:
    """The messages before ``seq``, and the user message at ``seq`` with its reply."""
    earlier = [m for m in loaded if m.seq < seq]
    answered = [m for m in loaded if m.seq >= seq]
    if not answered or answered[0].seq != seq:
        raise MessageNotFound(f"No message {seq}")
    if answered[0].role != "user":
        raise NotAUserMessage(seq)
    return earlier, answered


def _replayable(turn: Turn, answered: list[StoredMessage], *, last: bool) -> StoredTurn | None:
    """The turn this request already stored (a resend of its ``client_message_id`` while that
    turn is still the session's last), to replay rather than answer again."""
    cid = turn.client_message_id
    if cid is None or not last or len(answered) != 2:
        return None
    user, reply = answered
    if turn.rewrite is not None and turn.rewrite.seq is None:
        return StoredTurn(user, reply, created=False) if reply.client_message_id == cid else None
    if user.client_message_id == cid and user.content == turn.text:
        return StoredTurn(user, reply, created=False)
    return None


def _replay(turn: Turn, record: SessionRecord, stored: StoredTurn) -> TurnResult:
    result = turn_result(record, stored, replayed=True)
    turn.replayed = True
    turn.emit("start", turn=result.message_count)
    replay_reply(turn, stored.assistant.tools, result.reply)
    turn.emit("done", result=result)
    return result
