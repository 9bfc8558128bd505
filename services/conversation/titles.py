"""Session titles: named in the background after a session's first exchange.

One short, non-streamed call (``TITLE_MODEL``, default the session's own model) reads the first
user message and reply and answers a few words. It never delays or fails a turn: it runs after
the turn is stored, in its own task; a failed or empty answer is logged and retried a few
times, then the title stays null (never an error text). A title is only written where the
session has none, so a user's rename always wins. The offline responder has no model to ask:
its title is the first words of the user's message.

A title is one line of plain text (``services.core.plain_text``): a generated one has its control
and bidirectional characters taken out; one a client sets with them is refused.

Each answered call's tokens count as one background call of the session's user
(``services.limits.usage.BackgroundCalls``), added by the title's own write, never holding up or
failing the title.
"""

from __future__ import annotations

import asyncio
import logging

from services.conversation.bus import SessionBus, SessionEvent
from services.core.background import Tasks
from services.core.errors import ChatifyError, InvalidInput
from services.core.plain_text import is_plain, one_line
from services.core.records import CallUsage, SessionRecord, StoredTurn, background_sampling
from services.limits.usage import BackgroundCalls
from services.llm.client import ChatMessage, LLMClient
from services.store.base import Store

logger = logging.getLogger(__name__)
TITLE_MAX_CHARS = 80
_TITLE_WORDS = 6
_EXCERPT_CHARS = 1000
RETRY_DELAYS = (1.0, 5.0)  # seconds before the second and third attempt
_INSTRUCTIONS = (
    "You name chat conversations. Answer with a title of at most six words for the "
    "conversation below, in its language: no quotes, no final punctuation, nothing else."
)


class Titles:
    """Names sessions in the background; one task per session being named."""

    def __init__(
        self,
        *,
        store: Store,
        llm: LLMClient,
        model: str | None,
        bus: SessionBus | None = None,
        calls: BackgroundCalls | None = None,
    ) -> None:
        self._calls = calls
        self._bus = bus
        self._store = store
        self._llm = llm
        self._model = model
        self._tasks = Tasks()

    @property
    def pending(self) -> int:
        """Sessions being named now."""
        return len(self._tasks)

    def after_turn(self, record: SessionRecord, stored: StoredTurn) -> None:
        """Start naming the session if this was its first exchange and it has no title."""
        if stored.message_count != 1 or record.title is not None:
            return
        self._tasks.start(self._name(record, stored))

    async def close(self) -> None:
        """Stop naming (at shutdown): an unnamed session keeps a null title."""
        await self._tasks.close()

    async def _name(self, record: SessionRecord, stored: StoredTurn) -> None:
        sid = record.session_id
        for attempt, delay in enumerate((0.0, *RETRY_DELAYS), start=1):
            await asyncio.sleep(delay)
            try:
                named = await self._name_once(record, stored)
            except (ChatifyError, EmptyTitle) as error:
                logger.warning(
                    "naming session %s failed (attempt %d): %s", sid, attempt, error.code
                )
                continue
            if named is not None and named.title is not None:
                record.title = named.title
                if self._bus is not None:
                    self._bus.publish(SessionEvent("title", sid, text=named.title))
            logger.info("session %s named", sid)
            return
        logger.warning("session %s keeps no title: naming failed %d times", sid, attempt)

    async def _name_once(self, record: SessionRecord, stored: StoredTurn) -> SessionRecord | None:
        """Ask for a title and store it with the call's counts in one write; a call whose
        counts that write cannot carry (no title, a failed write) is counted on its own."""
        title, spent = await self._ask(record, stored)
        try:
            if not title:
                raise EmptyTitle("The model answered no title")
            return await self._store.set_title(
                record.session_id, title, only_if_unset=True, usage=spent
            )
        except (ChatifyError, EmptyTitle):
            if spent is not None and self._calls is not None:
                self._calls.add(record.session_id, spent, "title")
            raise

    async def _ask(self, record: SessionRecord, stored: StoredTurn) -> tuple[str, CallUsage | None]:
        """The title (empty: nothing usable), and the call's counts to store."""
        if getattr(self._llm, "provider", "") == "offline":
            return clean_title(" ".join(stored.user.content.split()[:_TITLE_WORDS])), None
        messages: list[ChatMessage] = [
            {"role": "system", "content": _INSTRUCTIONS},
            {
                "role": "user",
                "content": f"User: {stored.user.content[:_EXCERPT_CHARS]}\n"
                f"Assistant: {stored.assistant.content[:_EXCERPT_CHARS]}",
            },
        ]
        sampling = background_sampling(record.sampling, self._model, 0.3, 24)
        completion = await self._llm.complete(messages, sampling)
        # Spent, whatever the answer is worth: the meter is told now, the store by the write.
        spent = self._calls.spent(record, completion) if self._calls is not None else None
        return clean_title(completion.content), spent


class EmptyTitle(Exception):
    """A title call that answered nothing usable (never stored; retried)."""

    code = "empty_title"


_AROUND = "\"'“”‘’`*# "  # what may wrap a generated title
_FINAL = ".!?:;,"  # what may end it


def clean_title(text: str) -> str:
    """One line of plain text of at most ``TITLE_MAX_CHARS``, without quotes or final
    punctuation."""
    line = next((plain for part in text.splitlines() if (plain := one_line(part))), "")
    # Quotes and marks around it, and final punctuation inside or outside the quotes.
    line = " ".join(line.split()).strip(_AROUND).rstrip(_AROUND + _FINAL)
    if len(line) > TITLE_MAX_CHARS:
        line = line[: TITLE_MAX_CHARS - 1].rstrip() + "…"
    return line[:1].upper() + line[1:]


def client_title(text: str | None) -> str | None:
    """A title a client sets, stripped (None clears it); ``InvalidInput`` naming ``title``
    when it is blank or holds a control or bidirectional character."""
    if text is None:
        return None
    title = text.strip()
    problem = None
    if not title:
        problem = {"type": "value_error", "msg": "Title is blank"}
    elif not is_plain(title):
        msg = "Title holds a line break, a control or a bidirectional character"
        problem = {"type": "invalid_characters", "msg": msg}
    if problem is not None:
        raise InvalidInput("Invalid request", problems=[{**problem, "loc": ["body", "title"]}])
    return title
