"""The one way a turn gets in, whatever the transport (JSON, SSE, WebSocket, the AI SDK route,
the studio's preview): the caller's session, the user's turn rate and daily quota, a stream
slot for a stream, then the turn is started; the slot is given back if it cannot start.

Transports only parse what they receive and frame what the turn emits, so a limit or a fix
lives here, once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from services.attachments.service import Attachments, ImageInput
from services.conversation.sessions import SessionService
from services.conversation.turns import TurnPipeline
from services.core.attachment_records import Attachment
from services.core.errors import ImagesNotSupported, SessionEnded, SessionNotFound
from services.core.records import SessionRecord
from services.identity import Caller
from services.limits.quotas import Quotas, StreamSlot
from services.templates.service import TemplateService

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Admitted(Generic[T]):
    """What ``Admission.admit`` started, and the stream slot it holds (streams only)."""

    started: T
    slot: StreamSlot | None


def owned(record: SessionRecord, caller: Caller) -> SessionRecord:
    """The session if the caller may use it; another user's session does not exist (404)."""
    if not caller.may_act_for(record.user_id):
        raise SessionNotFound(record.session_id)
    return record


class Admission:
    """Admits turns for every transport (see the module docstring)."""

    def __init__(
        self,
        *,
        turns: TurnPipeline,
        sessions: SessionService,
        quotas: Quotas,
        attachments: Attachments | None = None,
        templates: TemplateService | None = None,
    ) -> None:
        self._attachments = attachments
        self._templates = templates
        self._turns = turns
        self._sessions = sessions
        self._quotas = quotas

    async def session(
        self, session_id: str, caller: Caller, *, client_message_id: str | None
    ) -> SessionRecord:
        """The caller's active session, ready for a turn (404 ``session_not_found``, 409
        ``session_ended``). An ended session is let through for a resend with a
        ``client_message_id``: the pipeline replays its stored reply, or answers 409 when
        there is none."""
        try:
            return owned(await self._turns.check_session(session_id), caller)
        except SessionEnded:
            if client_message_id is None:
                raise
            return owned(await self._sessions.get_session(session_id), caller)

    async def admit(
        self, who: SessionRecord | str, start: Callable[[], T], *, stream: bool
    ) -> Admitted[T]:
        """Count a turn of the session's user, or of ``who`` named alone (429 ``rate_limited``,
        ``quota_exceeded``), take a stream slot when ``stream`` (429 past
        MAX_STREAMS_PER_USER), then ``start()`` the turn (429 ``session_busy``, 422
        ``idempotency_conflict``). A resend to an ended session is not counted: it can only
        replay a stored reply."""
        if isinstance(who, str):
            user_id = who
            await self._quotas.take_turn(user_id)
        else:
            user_id = who.user_id
            if who.status == "active":
                await self._quotas.take_turn(user_id)
        slot = await self._quotas.open_stream(user_id) if stream else None
        try:
            return Admitted(start(), slot)
        except BaseException:
            if slot is not None:
                slot.release()
            raise

    async def images(
        self, record: SessionRecord, inputs: Sequence[ImageInput]
    ) -> tuple[Attachment, ...]:
        """A message's images, checked and stored before its turn starts: 422
        ``images_not_supported`` (the personality or its model takes none) before any model
        call, ``invalid_image``, 413 ``payload_too_large``, 404 ``attachment_not_found``."""
        if not inputs:
            return ()
        attachments = self.check_images(record)
        return await attachments.accept(record.user_id, inputs)

    def check_images(self, record: SessionRecord) -> Attachments:
        """The attachments service, if the session may take images; else 422
        ``images_not_supported``."""
        if self._attachments is None:
            raise ImagesNotSupported("This service takes no images")
        template = self._templates.served(record.template_id) if self._templates else None
        self._attachments.check_allowed(
            model=record.sampling.model, template_allows=template is None or template.images
        )
        return self._attachments

    async def slot(self, user_id: str) -> StreamSlot:
        """A stream slot alone: a WebSocket holds one while it is open, a resumed stream one
        while it follows the turn."""
        return await self._quotas.open_stream(user_id)
