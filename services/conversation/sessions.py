"""Session lifecycle: create, read, end, list, and the idle/expiry housekeeping."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

from services.conversation.bus import SessionBus, SessionEvent
from services.conversation.registry import ActiveSessions
from services.core.errors import SessionNotFound
from services.core.records import (
    Clock,
    SessionCursor,
    SessionRecord,
    SessionStatus,
    StoredMessage,
    is_session_id,
    isoformat,
)
from services.core.settings import Settings
from services.store.base import Store
from services.templates.service import TemplateService
from services.templates.stats import TemplateStats

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class NewSession:
    """A created session and its template's greeting."""

    record: SessionRecord
    welcome_message: str | None


class SessionService:
    """Everything about sessions except running turns (see ``TurnPipeline``)."""

    def __init__(
        self,
        *,
        store: Store,
        templates: TemplateService,
        sessions: ActiveSessions,
        settings: Settings,
        clock: Clock,
        stats: TemplateStats,
        bus: SessionBus | None = None,
    ) -> None:
        self._bus = bus
        self._stats = stats
        self._store = store
        self._templates = templates
        self._sessions = sessions
        self._settings = settings
        self._clock = clock

    @property
    def cached_count(self) -> int:
        """Sessions held in memory."""
        return len(self._sessions)

    async def create_session(
        self,
        *,
        user_id: str,
        template_id: str | None,
        variables: Mapping[str, str] | None = None,
        timezone: str | None = None,
        public_only: bool = False,
    ) -> NewSession:
        """Snapshot the template's prompt (placeholders filled) and sampling into a new stored
        session."""
        snapshot = self._templates.resolve(
            template_id, variables=variables, timezone=timezone, public_only=public_only
        )
        now = isoformat(self._clock())
        record = SessionRecord(
            session_id=str(uuid.uuid4()),
            user_id=user_id,
            template_id=snapshot.template_id,
            status="active",
            created_at=now,
            last_activity=now,
            ended_at=None,
            message_count=0,
            system_prompt=snapshot.system_prompt,
            sampling=snapshot.sampling,
            context_messages=snapshot.context_messages,
            template_version=snapshot.version,
            welcome_message=snapshot.welcome_message,
            context_tokens=snapshot.context_tokens,
            memory_mode=snapshot.memory_mode,
        )
        # The user's active sessions are counted by the store's write (one round trip).
        cap = self._settings.max_active_sessions_per_user
        await self._store.create_session(record, max_active=cap)
        self._sessions.put(record)
        self._stats.session_started(record.template_id)
        logger.info("session %s created with template %s", record.session_id, record.template_id)
        return NewSession(record, snapshot.welcome_message)

    async def get_session(self, session_id: str) -> SessionRecord:
        """The stored session; ``SessionNotFound`` when there is none."""
        record = await self._store.get_session(session_id) if is_session_id(session_id) else None
        if record is None:
            raise SessionNotFound(session_id)
        return record

    async def owned_by(self, session_id: str) -> SessionRecord:
        """The session, for a check of whose it is before a write that reads it again (an
        end): the record held here when there is one (a session's user never changes; one
        erased meanwhile is not found by that write), else the stored one."""
        held = self._sessions.held(session_id)
        return held if held is not None else await self.get_session(session_id)

    async def messages(
        self, session_id: str, *, limit: int, before: int | None = None
    ) -> list[StoredMessage]:
        """A page of history, oldest first, ending just before ``before``."""
        return await self._store.load_messages(session_id, limit=limit, before=before)

    async def messages_after(
        self, session_id: str, *, after: int, limit: int
    ) -> list[StoredMessage]:
        """The messages stored after seq ``after``, oldest first (a client catching up)."""
        return await self._store.load_messages_after(session_id, after=after, limit=limit)

    async def end_session(self, session_id: str) -> SessionRecord:
        """Mark ended and drop from memory; ending twice changes nothing."""
        record = None
        if is_session_id(session_id):
            record = await self._store.end_session(session_id, at=isoformat(self._clock()))
        if record is None:
            raise SessionNotFound(session_id)
        self._sessions.forget(session_id)
        self._announce(SessionEvent("ended", session_id, status=record.status))
        return record

    def _announce(self, event: SessionEvent) -> None:
        if self._bus is not None:
            self._bus.publish(event)

    async def list_user_sessions(
        self,
        user_id: str,
        *,
        status: SessionStatus | None,
        limit: int,
        before: SessionCursor | None = None,
    ) -> list[SessionRecord]:
        """A user's sessions, most recent activity first, below a cursor."""
        return await self._store.list_user_sessions(
            user_id, status=status, limit=limit, before=before
        )

    async def rename(self, session_id: str, title: str | None) -> SessionRecord:
        """Set or clear a session's title, in the store and in memory."""
        record = await self._store.set_title(session_id, title)
        if record is None:
            raise SessionNotFound(session_id)
        self._sessions.retitle(session_id, title)
        self._announce(SessionEvent("title", session_id, text=title or ""))
        return record

    def evict_idle_sessions(self) -> list[str]:
        """Free memory of sessions idle past SESSION_IDLE_TIMEOUT_SECONDS (they stay active)."""
        evicted = self._sessions.evict_idle()
        if evicted:
            logger.info("evicted %d idle sessions from memory", len(evicted))
        return evicted

    async def expire_idle_sessions(self) -> list[str]:
        """Mark sessions idle past SESSION_EXPIRE_AFTER_SECONDS as expired in the store."""
        if not self._settings.session_expire_after_seconds:
            return []
        now = self._clock()
        idle_before = now - timedelta(seconds=self._settings.session_expire_after_seconds)
        expired = await self._store.expire_idle_sessions(
            idle_before=isoformat(idle_before), at=isoformat(now)
        )
        for session_id in expired:
            self._sessions.forget(session_id)
            self._announce(SessionEvent("ended", session_id, status="expired"))
        if expired:
            logger.info("expired %d idle sessions", len(expired))
        return expired
