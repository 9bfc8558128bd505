"""Data rights: a user's sessions and messages exported whole, or erased from the store.

Erasing first ends the user's active sessions, so no new turn can claim a seq, then waits for
this process's turns of them in flight, then deletes the rows or nodes. A turn that another
instance had already claimed on Firebase when the end landed can still write its two messages
afterwards; erasing again removes them (the call is idempotent).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from services.attachments.service import Attachments
from services.conversation.bus import SessionBus, SessionEvent
from services.conversation.registry import ActiveSessions
from services.conversation.turns import TurnPipeline
from services.core.errors import SessionNotFound
from services.core.push_records import Device
from services.core.records import Clock, SessionCursor, SessionRecord, StoredMessage, isoformat
from services.store.base import Store

logger = logging.getLogger(__name__)
_PAGE = 100
_MESSAGES_PAGE = 1000


@dataclass(frozen=True, slots=True)
class SessionExport:
    """One session of an export, with every message."""

    record: SessionRecord
    messages: list[StoredMessage]


class UserData:
    """Export and erasure of everything stored for a user."""

    def __init__(
        self,
        *,
        store: Store,
        sessions: ActiveSessions,
        turns: TurnPipeline,
        clock: Clock,
        bus: SessionBus | None = None,
        images: Attachments | None = None,
    ) -> None:
        self._images = images
        self._bus = bus
        self._store = store
        self._sessions = sessions
        self._turns = turns
        self._clock = clock

    async def export(self, user_id: str) -> list[SessionExport]:
        """Every session of the user (most recent activity first) with all its messages."""
        return [
            SessionExport(record, await self._all_messages(record.session_id))
            for record in await self._all_sessions(user_id)
        ]

    async def export_devices(self, user_id: str) -> list[Device]:
        """The user's push devices (tokens, platforms, app versions)."""
        return await self._store.list_devices(user_id)

    async def erase_user(self, user_id: str) -> int:
        """Erase every session and message of the user, and their push devices and opt-outs;
        how many sessions there were."""
        records = await self._all_sessions(user_id)
        await self._quiesce(records)
        await self._store.delete_push_data(user_id)
        erased = await self._store.delete_sessions(user_id)
        if self._images is not None:  # after the messages that referenced them
            images = await self._images.erase_user(user_id)
            logger.info("erased %d image attachments of a user on request", images)
        logger.info("erased %d sessions of a user on request", erased)
        return erased

    async def erase_session(self, record: SessionRecord) -> None:
        """Erase one session and its messages."""
        await self._quiesce([record])
        if not await self._store.delete_sessions(record.user_id, [record.session_id]):
            raise SessionNotFound(record.session_id)
        logger.info("erased session %s on request", record.session_id)

    async def _quiesce(self, records: list[SessionRecord]) -> None:
        now = isoformat(self._clock())
        for record in records:
            if record.status == "active":
                await self._store.end_session(record.session_id, at=now)
            self._sessions.forget(record.session_id)
            if self._bus is not None:
                self._bus.publish(SessionEvent("ended", record.session_id, status="deleted"))
        await self._turns.settle({record.session_id for record in records})

    async def _all_sessions(self, user_id: str) -> list[SessionRecord]:
        found: list[SessionRecord] = []
        before: SessionCursor | None = None
        while True:
            page = await self._store.list_user_sessions(
                user_id, status=None, limit=_PAGE, before=before
            )
            found += page
            if len(page) < _PAGE:
                return found
            before = SessionCursor(page[-1].last_activity, page[-1].session_id)

    async def _all_messages(self, session_id: str) -> list[StoredMessage]:
        found: list[StoredMessage] = []
        after = -1
        while True:
            page = await self._store.load_messages_after(
                session_id, after=after, limit=_MESSAGES_PAGE
            )
            found += page
            if len(page) < _MESSAGES_PAGE:
                return found
            after = page[-1].seq
