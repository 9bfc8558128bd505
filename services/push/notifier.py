"""When and what to push: a finished turn that no client heard, after a grace period, to
each of the user's devices, once (docs/push.md).

Nothing here runs on the turn path: the pipeline hands each new turn to ``watch`` (a done
callback on its task, nothing per event); a turn nobody heard waits for the grace period in
a task of its own, and a client coming back to the session meanwhile (a socket, a new turn,
a resumed stream; on any replica with Redis) cancels it. Then one replica claims the push
(``claims``), reads the user's opt-outs and devices, and sends, retrying FCM's retryable
answers with backoff and dropping the tokens FCM calls dead. A failing FCM costs pushes,
never turns. No message text is ever logged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from services.conversation.turn_events import Turn
from services.core.background import Tasks
from services.core.errors import ChatifyError
from services.core.push_records import Device
from services.core.records import TurnResult
from services.core.settings import Settings
from services.push.claims import PushClaims
from services.push.fcm import SendOutcome
from services.store.base import Store
from services.templates.service import TemplateService

logger = logging.getLogger(__name__)
BACKOFF_SECONDS = 0.5  # the first retry's wait without a Retry-After; doubles each time
SENDS_AT_ONCE = 16  # FCM requests in flight per process
Skip = Literal["connected", "reconnected", "opted_out", "no_devices", "claimed"]


class FcmSender(Protocol):
    """Sends one FCM message (``services.push.fcm.FcmClient``)."""

    async def send(self, message: dict[str, Any]) -> SendOutcome:
        """FCM's answer, as a verdict."""

    async def close(self) -> None:
        """Release connections."""


class PushObserver(Protocol):
    """Counts what became of pushes (``services.core.metrics.Metrics``)."""

    def push_sent(self) -> None:
        """FCM accepted a message."""

    def push_failed(self, reason: str) -> None:
        """A message was not delivered: ``dead_token``, ``refused`` or ``retries_exhausted``."""

    def push_dropped(self, reason: str) -> None:
        """A push was not attempted: ``queue_full``."""

    def push_skipped(self, reason: str) -> None:
        """A push was not needed: a ``Skip``."""


@dataclass(frozen=True, slots=True)
class Finished:
    """A turn nobody heard: what its push needs."""

    turn: Turn
    seq: int  # the reply's; a failed turn: minus its number (no reply was stored)
    reply: str | None  # None: the turn failed


class PushNotifier:
    """Watches turns, waits out the grace period, sends."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: Store,
        templates: TemplateService,
        fcm: FcmSender,
        claims: PushClaims,
        subscribers: Callable[[str], int],
        observer: PushObserver,
    ) -> None:
        self._settings = settings
        self._store = store
        self._templates = templates
        self._fcm = fcm
        self._claims = claims
        self._subscribers = subscribers
        self._observer = observer
        self._waiting: dict[str, asyncio.Task[None]] = {}  # by session: in the grace period
        self._armed: set[str] = set()  # of those, the sessions whose finish is noted (mark)
        self._sending = Tasks()
        self._slots = asyncio.Semaphore(SENDS_AT_ONCE)
        self.failing = False  # the last message that ended did so without FCM accepting it

    @property
    def backlog(self) -> int:
        """Pushes waiting for their grace period or being sent."""
        return len(self._waiting) + len(self._sending)

    def waiting(self, session_id: str) -> bool:
        """Whether a push of the session waits out its grace period, its finish noted (from
        then on a client coming back on any replica cancels it)."""
        return session_id in self._armed

    def watch(self, turn: Turn) -> None:
        """A new turn was submitted: its client is back; its end decides a push."""
        self.attached(turn.session_id)
        assert turn.task is not None
        turn.task.add_done_callback(lambda task: self._finished(turn, task))

    def attached(self, session_id: str) -> None:
        """A client came back to the session: a push waiting for it is cancelled."""
        waiting = self._waiting.pop(session_id, None)
        if waiting is not None:
            self._armed.discard(session_id)
            waiting.cancel()
            self._observer.push_skipped("reconnected")
        self._claims.attached(session_id)

    async def idle(self) -> None:
        """Wait until no push waits or is being sent (tests and the bench)."""
        while self._waiting or len(self._sending):
            await asyncio.gather(*self._waiting.values(), return_exceptions=True)
            await self._sending.idle()

    async def close(self) -> None:
        """Drop what waits, stop what is sent (at shutdown), close the FCM client."""
        for task in list(self._waiting.values()):
            task.cancel()
        await asyncio.gather(*self._waiting.values(), return_exceptions=True)
        await self._sending.close()
        await self._claims.close()
        await self._fcm.close()

    def _finished(self, turn: Turn, task: asyncio.Task[TurnResult]) -> None:
        finished = _what_finished(turn, task)
        if finished is None:
            return
        if turn.relayed:  # it ran on another replica, which decides; tell it who heard
            if turn.heard and finished.seq >= 0:
                self._claims.heard(turn.session_id, finished.seq)
            return
        if turn.heard or self._subscribers(turn.session_id):
            self._observer.push_skipped("connected")
            return
        if self.backlog >= self._settings.push_queue_limit:
            self._observer.push_dropped("queue_full")
            return
        if (older := self._waiting.pop(turn.session_id, None)) is not None:
            older.cancel()  # a newer turn's push replaces it
        waiting = asyncio.create_task(self._after_grace(finished))
        self._waiting[turn.session_id] = waiting

    async def _after_grace(self, finished: Finished) -> None:
        session_id = finished.turn.session_id
        try:
            mark = await self._claims.mark(session_id)
            self._armed.add(session_id)
            await asyncio.sleep(self._settings.push_grace_seconds)
            if finished.turn.heard or self._subscribers(session_id):
                self._observer.push_skipped("connected")
                return
            if await self._claims.connected_elsewhere(session_id):
                self._observer.push_skipped("connected")
                return
            if not await self._claims.claim(session_id, finished.seq, mark):
                self._observer.push_skipped("claimed")
                return
        finally:
            if self._waiting.get(session_id) is asyncio.current_task():
                del self._waiting[session_id]
                self._armed.discard(session_id)
        self._sending.start(self._send(finished))

    async def _send(self, finished: Finished) -> None:
        session_id = finished.turn.session_id
        try:
            record = await self._store.get_session(session_id)
            if record is None:
                return
            preferences = await self._store.load_push_preferences(record.user_id)
            if not preferences.allows(session_id):
                self._observer.push_skipped("opted_out")
                return
            devices = await self._store.list_devices(record.user_id)
            if not devices:
                self._observer.push_skipped("no_devices")
                return
            template = self._templates.served(record.template_id)
            title = (template.title or template.name) if template else None
            content = self._content(finished, title or record.template_id)
            await asyncio.gather(
                *(self._deliver(record.user_id, device, content) for device in devices)
            )
        except ChatifyError as error:  # the store: this push is lost, not the turn
            logger.warning("push for session %s not sent: %s", session_id, error.code)

    def _content(self, finished: Finished, title: str) -> dict[str, Any]:
        """The message without its token: notification and data (docs/push.md)."""
        session_id = finished.turn.session_id
        notification = {"title": title}
        data = {
            "session_id": session_id,
            "kind": "reply" if finished.reply is not None else "failed",
        }
        if finished.reply is not None:
            data["seq"] = str(finished.seq)
            if self._settings.push_include_text:
                notification["body"] = _excerpt(finished.reply, self._settings.push_body_chars)
        return {
            "notification": notification,
            "data": data,
            "android": {"priority": "high", "notification": {"tag": session_id}},
            "apns": {"payload": {"aps": {"thread-id": session_id}}},
        }

    async def _deliver(self, user_id: str, device: Device, content: dict[str, Any]) -> None:
        """One device's message, retried on FCM's retryable answers."""
        message = {"token": device.token, **content}
        session_id = content["data"]["session_id"]
        attempts = self._settings.push_max_attempts
        for attempt in range(attempts):
            async with self._slots:
                outcome = await self._fcm.send(message)
            if outcome.verdict != "retry":
                break
            if attempt + 1 < attempts:
                wait = outcome.retry_after
                wait = BACKOFF_SECONDS * 2**attempt if wait is None else wait
                await asyncio.sleep(min(wait, self._settings.push_retry_max_seconds))
        self.failing = outcome.verdict in ("retry", "failed")
        if outcome.verdict == "sent":
            self._observer.push_sent()
        elif outcome.verdict == "dead_token":
            self._observer.push_failed("dead_token")
            await self._store.remove_device(user_id, device.token)
            logger.info("dropped a device FCM calls %s (session %s)", outcome.code, session_id)
        else:
            reason = "refused" if outcome.verdict == "failed" else "retries_exhausted"
            self._observer.push_failed(reason)
            logger.warning(
                "push for session %s %s: status %d %s",
                session_id, reason, outcome.status, outcome.code,
            )  # fmt: skip


def _what_finished(turn: Turn, task: asyncio.Task[TurnResult]) -> Finished | None:
    """The turn's push subject, or None: cancelled, refused before it started, a replay."""
    if task.cancelled() or turn.replayed or not turn.events or turn.events[0].kind != "start":
        return None
    error = task.exception()
    if error is None:
        result = task.result()
        stored = result.assistant_message
        # A relayed turn's result reads as a replay here; it is news where it ran.
        if stored is None or (result.replayed and not turn.relayed):
            return None
        return Finished(turn, stored.seq, result.reply)
    if not isinstance(error, ChatifyError):
        return None
    return Finished(turn, -max(1, turn.events[0].turn), None)


def _excerpt(reply: str, limit: int) -> str:
    text = " ".join(reply.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"
