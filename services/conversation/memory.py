"""A session's rolling memory: messages leaving the prompt's window folded into a few lines.

After a stored turn, when the messages not yet in the memory no longer fit the window with room
for one more turn (``context_messages``, or three quarters of a ``context_tokens`` budget), a
background task folds the older ones, keeping the newer half of the window as it is, into
the memory with one LLM call (``SUMMARY_MODEL``, default the session's own): the old memory
plus the messages that left, answered as an updated memory of at most ``MEMORY_MAX_TOKENS``.

It never delays or fails a turn. The memory is stored with the seq it covers, written only
where the stored one still covers what this fold started from (``Store.set_memory``), so a
reload or another instance never folds the same messages again. A failed or empty answer keeps
the previous memory (the error's text never becomes memory) and is retried a few times, then
again after the next turn. Each answered call counts as a background call of the session's user
(``services.limits.usage.BackgroundCalls``), added by the memory's own write (one per fold). A fold
reads at most ``FOLD_MAX_MESSAGES`` messages of at most ``FOLD_MESSAGE_CHARS`` each, so the
summarizer's own prompt stays bounded however far behind it is; a longer backlog is folded in
several calls.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from services.conversation.prompt import MessageCounter
from services.conversation.registry import ActiveSession
from services.core.background import Tasks
from services.core.errors import ChatifyError
from services.core.records import (
    CallUsage,
    Clock,
    SessionRecord,
    StoredMessage,
    background_sampling,
    isoformat,
)
from services.limits.usage import BackgroundCalls
from services.llm.client import ChatMessage, LLMClient
from services.store.base import Store

logger = logging.getLogger(__name__)
FOLD_MAX_MESSAGES = 40
FOLD_MESSAGE_CHARS = 2000
_FOLDS_PER_JOB = 10  # a backlog beyond this many folds waits for the next turn
RETRY_DELAYS = (1.0, 5.0)  # seconds before the second and third attempt
INSTRUCTIONS = (
    "You keep the memory of a long chat between a user and an assistant. Update the memory "
    "below with the new messages. Keep what matters later: facts about the user (name, "
    "people, places, preferences, plans), decisions and promises made, open questions and "
    "threads to come back to, and the tone between them. Drop small talk and anything the "
    "new messages make outdated. Write short plain lines, most important first, in the "
    "conversation's language, at most {words} words. Answer with the updated memory only."
)
MEMORY_SO_FAR, NEW_MESSAGES = "Memory so far:", "New messages:"
_REWRITTEN = "\x00rewritten"  # _store_fold: the history changed under the fold


class Memory:
    """Folds sessions' old messages into their memory in the background, one task each."""

    def __init__(
        self,
        *,
        store: Store,
        llm: LLMClient,
        counter: MessageCounter,
        clock: Clock,
        model: str | None,
        max_tokens: int,
        calls: BackgroundCalls | None = None,
    ) -> None:
        self._store = store
        self._llm = llm
        self._counter = counter
        self._clock = clock
        self._model = model
        self._max_tokens = max_tokens
        self._calls = calls
        self._tasks = Tasks()  # one per session being folded
        self.calls = 0  # summaries asked for (the benchmark reports them per 100 turns)

    @property
    def pending(self) -> int:
        """Sessions being folded now."""
        return len(self._tasks)

    def after_turn(self, active: ActiveSession) -> None:
        """Start a fold if this session's window is full (and none is running for it)."""
        sid = active.record.session_id
        if self._tasks.running(sid) or fold_point(active, self._counter) is None:
            return
        self._tasks.start(self._fold(active), key=sid)

    async def idle(self) -> None:
        """Wait until no fold is running (tests and the benchmark)."""
        await self._tasks.idle()

    async def close(self) -> None:
        """Stop folding (at shutdown): what was not folded is folded after a later turn."""
        await self._tasks.close()

    async def _fold(self, active: ActiveSession) -> None:
        record = active.record
        for _ in range(_FOLDS_PER_JOB):
            upto = fold_point(active, self._counter)
            if upto is None or not await self._fold_once(active, upto):
                return
        logger.info(
            "session %s: memory still behind after %d folds", record.session_id, _FOLDS_PER_JOB
        )

    async def _fold_once(self, active: ActiveSession, upto: int) -> bool:
        """One fold with its retries; whether the memory moved on."""
        record = active.record
        sid, since, epoch = record.session_id, record.summary_seq, active.memory_epoch
        for attempt, delay in enumerate((0.0, *RETRY_DELAYS), start=1):
            await asyncio.sleep(delay)
            try:
                messages = await self._messages(active, since, upto)
                if not messages:
                    return False
                upto = min(upto, messages[-1].seq + 1)
                text = await self._store_fold(active, messages, since=since, upto=upto, epoch=epoch)
            except (ChatifyError, EmptyMemory) as error:
                logger.warning(
                    "memory of session %s failed (attempt %d): %s", sid, attempt, error.code
                )
                continue
            if text is _REWRITTEN:
                logger.info("session %s: history rewritten during a fold: not stored", sid)
                return False
            if text is not None:
                record.summary, record.summary_seq = text, upto
                logger.info("session %s: memory now covers seq < %d", sid, upto)
                return True
            return await self._adopt(record)
        logger.warning("session %s: memory not updated, %d attempts failed", sid, attempt)
        return False

    async def _store_fold(
        self,
        active: ActiveSession,
        messages: Sequence[StoredMessage],
        *,
        since: int,
        upto: int,
        epoch: int,
    ) -> str | None:
        """Summarize, then store the memory and the call's counts in one write: the memory,
        or None when another fold got there first, or ``_REWRITTEN`` when the history was
        rewritten meanwhile (the summary is of messages no longer active: not stored). A call
        whose counts that write cannot carry (an empty answer, a failed write, a rewrite) is
        counted on its own."""
        record = active.record
        text, spent = await self._summarize(record, messages)
        if active.memory_epoch != epoch:
            if spent is not None and self._calls is not None:
                self._calls.add(record.session_id, spent, "memory")
            return _REWRITTEN
        try:
            if not text:
                raise EmptyMemory("The model answered an empty memory")
            written = await self._store.set_memory(
                record.session_id, text, seq=upto, expected_seq=since,
                at=isoformat(self._clock()), usage=spent,
            )  # fmt: skip
        except (ChatifyError, EmptyMemory):
            if spent is not None and self._calls is not None:
                self._calls.add(record.session_id, spent, "memory")
            raise
        return text if written else None

    async def _adopt(self, record: SessionRecord) -> bool:
        """Another instance folded first: take its memory."""
        stored = await self._store.get_session(record.session_id)
        if stored is None or stored.summary_seq <= record.summary_seq:
            return False
        record.summary, record.summary_seq = stored.summary, stored.summary_seq
        return True

    async def _messages(self, active: ActiveSession, since: int, upto: int) -> list[StoredMessage]:
        """The messages to fold, from memory when the context still holds them."""
        context = list(active.context)
        if context and context[0].seq <= since:
            chosen = [m for m in context if since <= m.seq < upto]
        else:
            loaded = await self._store.load_messages_after(
                active.record.session_id, after=since - 1, limit=FOLD_MAX_MESSAGES
            )
            chosen = [m for m in loaded if m.seq < upto]
        chosen = chosen[:FOLD_MAX_MESSAGES]
        while len(chosen) > 1 and chosen[-1].role == "user":
            chosen.pop()  # a fold ends after a reply: a turn is never split across it
        return chosen

    async def _summarize(
        self, record: SessionRecord, messages: Sequence[StoredMessage]
    ) -> tuple[str, CallUsage | None]:
        """The updated memory (empty: nothing usable), and the call's counts to store."""
        lines = [f"{m.role.capitalize()}: {_clip(m.content, FOLD_MESSAGE_CHARS)}" for m in messages]
        self.calls += 1
        if getattr(self._llm, "provider", "") == "offline":  # no model: plain notes instead
            return plain_memory(record.summary, lines), None
        return await self._ask(record, lines)

    async def _ask(self, record: SessionRecord, lines: list[str]) -> tuple[str, CallUsage | None]:
        joined = "\n".join(lines)
        prompt: list[ChatMessage] = [
            {"role": "system", "content": INSTRUCTIONS.format(words=self._max_tokens * 3 // 4)},
            {
                "role": "user",
                "content": f"{MEMORY_SO_FAR}\n{record.summary or '(empty)'}\n\n"
                f"{NEW_MESSAGES}\n{joined}",
            },
        ]
        sampling = background_sampling(record.sampling, self._model, 0.2, self._max_tokens)
        completion = await self._llm.complete(prompt, sampling)
        # Spent, whatever the answer is worth: the meter is told now, the store by the write.
        spent = self._calls.spent(record, completion) if self._calls is not None else None
        return completion.content.strip(), spent


class EmptyMemory(Exception):
    """A summary call that answered nothing usable (never stored; retried)."""

    code = "empty_memory"


def fold_point(active: ActiveSession, counter: MessageCounter) -> int | None:
    """The seq below which messages should be folded now, or None while the window has room
    for another turn. Keeps the newer half of the window; starts the kept part at a user
    message, so a turn is never split between the memory and the window."""
    record = active.record
    if record.memory_mode != "summary" or record.context_messages < 2:
        return None
    since, limit = record.summary_seq, record.context_messages
    recent = [m for m in active.context if m.seq >= since]
    if not recent:
        return None
    model, budget = record.sampling.model, record.context_tokens
    costs = (  # tokens matter only under a budget; without one, every message costs 0
        [counter.count_message(model, {"role": m.role, "content": m.content}) for m in recent]
        if budget is not None
        else [0] * len(recent)
    )
    # Turns not yet in the memory, counting those the context no longer holds.
    unfolded = active.next_seq - since
    full = unfolded + 2 > limit or (budget is not None and sum(costs) > budget * 3 // 4)
    if not full:
        return None
    keep_count, keep_tokens = limit // 2, (budget // 2 if budget is not None else None)
    kept = 0
    for cost in reversed(costs):
        if kept == keep_count or (keep_tokens is not None and cost > keep_tokens):
            break
        if keep_tokens is not None:
            keep_tokens -= cost
        kept += 1
    first_kept = len(recent) - kept
    while first_kept < len(recent) and recent[first_kept].role != "user":
        first_kept += 1
    upto = recent[first_kept].seq if first_kept < len(recent) else active.next_seq
    return upto if upto > since else None


PLAIN_LINES = (4, 8)  # a plain memory keeps its first and its last lines
PLAIN_LINE_CHARS = 100


def plain_memory(old: str | None, new_lines: Sequence[str]) -> str:
    """A memory without a model (the offline responder; the test LLM answers the same): the
    first words of each user message, the oldest and the newest kept, bounded in length."""
    lines = (old or "").splitlines()
    lines += [
        "- " + _clip(" ".join(line.split(": ", 1)[1].split()), PLAIN_LINE_CHARS)
        for line in new_lines
        if line.lower().startswith("user: ")
    ]
    first, last = PLAIN_LINES
    if len(lines) > first + last:
        lines = lines[:first] + lines[-last:]
    return "\n".join(lines)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
