"""The turn pipeline: the one place that builds the prompt, calls the LLM and stores the turn.

Every transport (plain JSON, SSE, WebSocket) runs turns through ``TurnPipeline.run``. A turn
runs in its own task, so a client that goes away mid-turn does not cancel it: the reply is
stored and can be replayed by ``client_message_id``.
"""

from __future__ import annotations

import asyncio
import logging
import time

from services.cache import ActiveSession, ActiveSessions
from services.errors import ChatifyError, IdempotencyConflict, SessionEnded
from services.gate import TurnGate
from services.llm import LLMClient
from services.models import Clock, NewTurn, StoredTurn, TurnResult, isoformat
from services.prompt import build_prompt
from services.store.base import Store

logger = logging.getLogger(__name__)


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
    ) -> None:
        self._store = store
        self._sessions = sessions
        self._gate = gate
        self._llm = llm
        self._clock = clock
        self._tasks: set[asyncio.Task[TurnResult]] = set()

    async def run(self, session_id: str, *, text: str, client_message_id: str | None) -> TurnResult:
        """One turn; returns once it is stored (or replayed)."""
        task = asyncio.create_task(self._run(session_id, text, client_message_id))
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return await asyncio.shield(task)

    def _finished(self, task: asyncio.Task[TurnResult]) -> None:
        self._tasks.discard(task)
        error = None if task.cancelled() else task.exception()
        # Domain errors reach the awaiting client; anything else is a bug worth a traceback,
        # even when the client has gone away and nobody awaits the task any more.
        if error is not None and not isinstance(error, ChatifyError):
            logger.error("turn failed unexpectedly", exc_info=error)

    async def drain(self) -> None:
        """Wait for turns in flight (at shutdown), so none is cut off half-way."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _run(self, session_id: str, text: str, client_message_id: str | None) -> TurnResult:
        async with self._gate.hold(session_id):
            active = await self._sessions.get(session_id)
            if client_message_id is not None:
                stored = active.find(client_message_id) or await self._store.find_turn(
                    session_id, client_message_id
                )
                if stored is not None:
                    return _replay(active, stored, text)
            return await self._complete(active, text, client_message_id)

    async def _complete(
        self, active: ActiveSession, text: str, client_message_id: str | None
    ) -> TurnResult:
        record = active.record
        started = time.perf_counter()
        user_at = isoformat(self._clock())
        messages = build_prompt(record, active.context, text)
        completion = await self._llm.complete(messages, record.sampling)
        turn = NewTurn(
            user_text=text,
            reply=completion.content,
            client_message_id=client_message_id,
            user_at=user_at,
            reply_at=isoformat(self._clock()),
            usage=completion.usage,
        )
        try:
            stored = await self._store.append_turn(record, turn)
        except SessionEnded:
            self._sessions.forget(record.session_id)
            raise
        if not stored.created:  # another instance stored this client_message_id first
            self._sessions.forget(record.session_id)
            return _replay(active, stored, text)
        if stored.user.seq != record.message_count * 2:
            # Another instance appended to this session: our context is stale, reload it.
            self._sessions.forget(record.session_id)
        else:
            active.remember(stored)
        latency_ms = (time.perf_counter() - started) * 1000
        return TurnResult(
            session_id=record.session_id,
            reply=completion.content,
            message_count=stored.message_count,
            replayed=False,
            usage=completion.usage,
            model=completion.model,
            latency_ms=latency_ms,
        )


def _replay(active: ActiveSession, stored: StoredTurn, text: str) -> TurnResult:
    if stored.user.content != text:
        raise IdempotencyConflict(
            f"client_message_id {stored.user.client_message_id!r} was already used "
            "with a different message"
        )
    return TurnResult(
        session_id=active.record.session_id,
        reply=stored.assistant.content,
        message_count=stored.message_count,
        replayed=True,
        usage=stored.assistant.usage,
        model=active.record.sampling.model,
    )
