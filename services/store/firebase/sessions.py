"""The Firebase store's sessions: a session node's metadata, its entry in the user's index,
and its activity entry while active (the layout is in the package's docstring).

Metadata is read with two key-range queries that skip the two growing children (the keys
sort: context_tokens < conversation_client_ids < conversation_history < created_at < ...);
``shallow=true`` would not do, it turns every child, primitives too, into ``true``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from services.core.errors import active_limit
from services.core.records import (
    CallUsage,
    Sampling,
    SessionCursor,
    SessionRecord,
    SessionStatus,
)
from services.store.firebase.connection import FIREBASE_ERRORS, FirebaseConnection, refused
from services.store.firebase.rtdb_keys import encode_key
from services.store.firebase.seq_node import created_node
from services.store.firebase.usage_nodes import SESSION_SHARES, totals_of, usage_updates

logger = logging.getLogger(__name__)

_SUMMARY_FIELDS = (
    "template_id", "status", "created_at", "last_activity", "ended_at", "title", "preview"
)  # fmt: skip
# Key ranges of a session node that hold its metadata and none of its growing children.
_META_RANGES = ((None, "context_tokens"), ("conversation_history0", None))


class FirebaseSessions(FirebaseConnection):
    """``SessionStore`` on ``userSessions``, ``userSessionIndex`` and ``sessionActivity``;
    needs ``FirebaseTurns._slot`` (a closed session's seq slot is dropped) and
    ``FirebaseUsage._count_call``."""

    _slot: Callable[..., tuple[Any, str] | None]
    _count_call: Callable[..., Coroutine[Any, Any, None]]

    async def create_session(
        self, session: SessionRecord, *, max_active: int | None = None
    ) -> None:
        """The session node, its seq slot, its index entry and its activity, in one update,
        after a read of the user's active sessions (not atomic with it: the database has no
        transactions over a query)."""
        if max_active is not None:
            active = await self.list_user_sessions(
                session.user_id, status="active", limit=max_active
            )
            if len(active) >= max_active:
                raise active_limit(session.user_id, max_active)
        sid = session.session_id
        node = _session_doc(session)
        node["next_seq"] = created_node()
        updates = {
            f"userSessions/{sid}": node,
            f"userSessionIndex/{encode_key(session.user_id)}/{sid}": _summary_doc(session),
            f"sessionActivity/{sid}": session.last_activity,
        }
        await self._run(lambda: self._ref("/").update(updates))

    async def get_session(self, session_id: str) -> SessionRecord | None:
        """Metadata only, with both range reads in parallel; the history stays on the server."""
        parts = await asyncio.gather(
            *(self._run(functools.partial(self._meta_range, session_id, r)) for r in _META_RANGES)
        )
        return _session({key: value for part in parts for key, value in part.items()})

    def _meta_range(self, session_id: str, bounds: tuple[str | None, str | None]) -> dict[str, Any]:
        query = self._ref(f"userSessions/{session_id}").order_by_key()
        if bounds[0] is not None:
            query = query.start_at(bounds[0])
        if bounds[1] is not None:
            query = query.end_at(bounds[1])
        data = query.get()
        return dict(data) if isinstance(data, dict) else {}

    def _read_session(self, session_id: str) -> SessionRecord | None:
        merged: dict[str, Any] = {}
        for bounds in _META_RANGES:
            merged.update(self._meta_range(session_id, bounds))
        return _session(merged)

    async def end_session(self, session_id: str, *, at: str) -> SessionRecord | None:
        """Close the session (and its seq slot) unless it is already ended."""
        return await self._run(lambda: self._close(session_id, "ended", at))

    def _close(self, session_id: str, status: str, at: str) -> SessionRecord | None:
        record = self._read_session(session_id)
        if record is None or record.status == "ended" or record.status == status:
            return record
        base, index = (
            f"userSessions/{session_id}",
            (f"userSessionIndex/{encode_key(record.user_id)}/{session_id}"),
        )
        self._ref("/").update(
            {
                f"{base}/status": status,
                f"{base}/ended_at": at,
                f"{base}/next_seq": {"closed": status},
                f"{index}/status": status,
                f"{index}/ended_at": at,
                f"sessionActivity/{session_id}": None,
            }
        )
        self._slot(session_id, pop=True)
        record.status, record.ended_at = status, at  # type: ignore[assignment]
        return record

    async def list_user_sessions(
        self,
        user_id: str,
        *,
        status: SessionStatus | None,
        limit: int,
        before: SessionCursor | None = None,
    ) -> list[SessionRecord]:
        """From the user's index, ordered by ``last_activity`` on the server: the last entries
        up to the cursor's time, widened while ties at that time or other states crowd the
        page out."""
        want = limit + 1 if status is None else limit * 4 + 8
        while True:
            page = functools.partial(self._index_page, user_id, before, want)
            entries, complete = await self._run(page)
            records = [
                _summary(user_id, sid, doc)
                for sid, doc in entries.items()
                if isinstance(doc, dict) and (status is None or doc.get("status") == status)
            ]
            if before is not None:
                edge = (before.last_activity, before.session_id)
                records = [r for r in records if (r.last_activity, r.session_id) < edge]
            if len(records) >= limit or complete:
                records.sort(key=lambda r: (r.last_activity, r.session_id), reverse=True)
                return records[:limit]
            want *= 4

    def _index_page(
        self, user_id: str, before: SessionCursor | None, want: int
    ) -> tuple[dict[str, Any], bool]:
        query = self._ref(f"userSessionIndex/{encode_key(user_id)}").order_by_child("last_activity")
        if before is not None:
            query = query.end_at(before.last_activity)
        entries = query.limit_to_last(want).get() or {}
        return dict(entries), len(entries) < want

    async def set_title(
        self,
        session_id: str,
        title: str | None,
        *,
        only_if_unset: bool = False,
        usage: CallUsage | None = None,
    ) -> SessionRecord | None:
        """The session's title and its index entry's, the call's counts in the same update.
        A generated title (``only_if_unset``) is a conditional create of the title node, so
        it never overwrites a rename."""
        record = await self._run(
            lambda: self._set_title(session_id, title, only_if_unset, usage),
            background=only_if_unset,
        )
        if record is None and usage is not None:  # no session: the user's day only
            await self._count_call(session_id, usage, on_session=False)
        return record

    def _set_title(
        self, session_id: str, title: str | None, only_if_unset: bool, usage: CallUsage | None
    ) -> SessionRecord | None:
        record = self._read_session(session_id)
        if record is None:
            return None
        base = f"userSessions/{session_id}"
        index = f"userSessionIndex/{encode_key(record.user_id)}/{session_id}"
        if only_if_unset:
            if record.title is None:
                ref = self._ref(f"{base}/title")
                current, etag = ref.get(etag=True)
                ok, current, _ = ref.set_if_unchanged(etag, title) if current is None else (
                    False, current, etag)  # fmt: skip
                record.title = title if ok else current
            # Also heals an index entry a failed earlier attempt left without the title.
            updates = {f"{index}/title": record.title}
        else:
            updates = {f"{base}/title": title, f"{index}/title": title}
            record.title = title
        if usage is not None:
            updates.update(
                usage_updates(
                    usage.user_id, session_id, usage.usage, at=usage.at, calls=1,
                    target=usage.target,
                )
            )  # fmt: skip
        self._update_counted(updates, session_id, counted=usage is not None)
        return record

    def _update_counted(self, updates: dict[str, Any], session_id: str, *, counted: bool) -> None:
        """One multi-path update. One that carries counts is never repeated: when its outcome
        is unknown (it may have landed), it is logged and not raised."""
        try:
            self._ref("/").update(updates)
        except FIREBASE_ERRORS as exc:
            if not counted or refused(exc):
                raise
            logger.warning("an update of session %s may not have landed; not repeated", session_id)

    async def expire_idle_sessions(self, *, idle_before: str, at: str) -> list[str]:
        """Sessions whose activity entry is older than ``idle_before`` become expired."""

        def expire() -> list[str]:
            idle = self._ref("sessionActivity").order_by_value().end_at(idle_before).get() or {}
            expired = []
            for session_id, last in idle.items():
                if isinstance(last, str) and last < idle_before:
                    record = self._close(session_id, "expired", at)
                    if record is not None and record.status == "expired":
                        expired.append(session_id)
            return expired

        return await self._run(expire)


def _session_doc(s: SessionRecord) -> dict[str, Any]:
    p = s.sampling
    doc = {
        "session_id": s.session_id,
        "user_id": s.user_id,
        "template_id": s.template_id,
        "status": s.status,
        "created_at": s.created_at,
        "last_activity": s.last_activity,
        "ended_at": s.ended_at,
        "message_count": s.message_count,
        "system_prompt": s.system_prompt,
        "model": p.model,
        "temperature": p.temperature,
        "max_tokens": p.max_tokens,
        "presence_penalty": p.presence_penalty,
        "frequency_penalty": p.frequency_penalty,
        "context_messages": s.context_messages,
        "title": s.title,
        "summary": s.summary,
        "template_version": s.template_version,
        "welcome_message": s.welcome_message,
        "context_tokens": s.context_tokens,
        "memory_mode": s.memory_mode,
        "provider": p.provider,
        "fallbacks": [{"provider": t[0], "model": t[1]} for t in p.fallbacks] or None,
        "tools": list(p.tools) or None,
    }
    return {key: value for key, value in doc.items() if value is not None}


def _summary_doc(s: SessionRecord) -> dict[str, Any]:
    doc = {name: getattr(s, name) for name in _SUMMARY_FIELDS}
    doc["message_count"] = s.message_count
    return {key: value for key, value in doc.items() if value is not None}


def _session(data: Any) -> SessionRecord | None:
    if not isinstance(data, dict) or "user_id" not in data:
        return None
    record = SessionRecord.from_fields(data)
    record.usage_totals = totals_of(data.get("usage_totals"), data.get(SESSION_SHARES))
    return record


def _summary(user_id: str, session_id: str, doc: dict[str, Any]) -> SessionRecord:
    return SessionRecord(
        session_id=session_id,
        user_id=user_id,
        template_id=doc.get("template_id", ""),
        status=doc.get("status", "active"),
        created_at=doc.get("created_at", ""),
        last_activity=doc.get("last_activity", ""),
        ended_at=doc.get("ended_at"),
        message_count=int(doc.get("message_count", 0)),
        system_prompt="",
        sampling=Sampling("", 0.0, 1, 0.0, 0.0),
        context_messages=0,
        title=doc.get("title"),
        preview=doc.get("preview"),
    )
