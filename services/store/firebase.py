"""The production store: Firebase Realtime Database through firebase-admin.

Layout (docs/data.md), with the small helper nodes the service owns:

    /templates/{id}, /settings/universalRules          edited by authors in the console
    /userSessions/{sid}                                metadata fields, then
        conversation_history/m{seq:010d}               one message per key, ordered as strings
        next_seq: {"next": n, "by": token, "ids", "since"}   compare-and-set node for seqs and
                  {"closed": "ended" | "expired"}      recent ids (seq_node.py); once over
        conversation_client_ids/{client_message_id}: seq   idempotency pointer
        memory: {"text", "seq", "at"}                  the rolling memory (firebase_memory.py)
    /userSessionIndex/{user}/{sid}                     summary, for a user's session list
    /sessionActivity/{sid}: last_activity              active sessions only, for expiry

Metadata is read with two key-range queries that skip the two growing children (the keys
sort: context_tokens < conversation_client_ids < conversation_history < created_at < ...);
``shallow=true`` would not do, it turns every child, primitives too, into ``true``.

A turn is one multi-path update of constant size. Sequence numbers and the turn's
``client_message_id`` are claimed by one conditional write on ``next_seq`` (whose ETag is
cached, so one request in the steady state), never by a transaction on the session node, which
would read and rewrite the whole history. The turn side lives in ``firebase_turns.py``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import firebase_admin
import requests
from cachetools import LRUCache
from firebase_admin import credentials, db
from firebase_admin import exceptions as firebase_errors
from urllib3.util import retry

from services.core.errors import StoreUnavailable
from services.core.firebase_credentials import firebase_credential
from services.core.records import (
    CallUsage,
    Sampling,
    SeedReport,
    SessionCursor,
    SessionRecord,
    SessionStatus,
    StoredMessage,
)
from services.core.settings import Settings
from services.store.firebase_documents import FirebaseDocuments
from services.store.firebase_memory import FirebaseMemory
from services.store.firebase_turns import FirebaseTurns, messages_of, refused, short
from services.store.firebase_usage import FirebaseUsage
from services.store.firebase_usage_nodes import SESSION_SHARES, totals_of, usage_updates
from services.store.rtdb_keys import encode_key, message_key
from services.store.seq_node import created_node

logger = logging.getLogger(__name__)
T = TypeVar("T")

_SUMMARY_FIELDS = (
    "template_id", "status", "created_at", "last_activity", "ended_at", "title", "preview"
)  # fmt: skip
# Key ranges of a session node that hold its metadata and none of its growing children.
_META_RANGES = ((None, "context_tokens"), ("conversation_history0", None))


class FirebaseStore(FirebaseTurns, FirebaseMemory, FirebaseDocuments, FirebaseUsage):
    """``Store`` on a Firebase Realtime Database."""

    name = "firebase"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._threads = settings.store_threads
        self._background_threads = max(1, settings.store_threads // 2)
        self._timeout = settings.store_timeout_seconds
        self._app: firebase_admin.App | None = None
        self._executor: ThreadPoolExecutor | None = None
        # Titles, memories and their counts: several requests each, never ahead of a turn's.
        self._background: ThreadPoolExecutor | None = None
        self._init_turns(settings.session_cache_max)
        self._init_memory(settings.session_cache_max)
        self._refs: LRUCache[str, db.Reference] = LRUCache(1024)
        self._refs_lock = threading.Lock()
        self._templates: tuple[Any, str] | None = None
        self._rules: tuple[Any, str] | None = None

    # -- plumbing ----------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the firebase-admin app and its HTTP pool; check the database answers."""
        self._app = firebase_admin.initialize_app(
            _credential(self._settings),
            options={
                "databaseURL": _database_url(self._settings),
                # Each attempt gets a third of the budget, so a retry still fits in it.
                "httpTimeout": max(1.0, self._timeout / 3),
            },
            name=f"chatify-{uuid.uuid4()}",
        )
        self._executor = ThreadPoolExecutor(self._threads, thread_name_prefix="firebase-store")
        self._background = ThreadPoolExecutor(
            self._background_threads, thread_name_prefix="firebase-background"
        )
        await self._run(self._configure_http)

    def _configure_http(self) -> None:
        # firebase-admin retries 500/503 four times with 0+1+2+4 s waits (~7 s), which with our
        # own deadline would leave nothing for the request itself. Two quick retries of
        # idempotent methods instead; a multi-path PATCH is never retried, because its
        # server-side increment must apply exactly once.
        policy = retry.Retry(
            connect=1,
            read=1,
            status=2,
            status_forcelist=[500, 502, 503, 504],
            allowed_methods=frozenset({"GET", "PUT", "DELETE"}),
            backoff_factor=0.25,
            raise_on_status=False,
        )
        adapter = requests.adapters.HTTPAdapter(
            max_retries=policy,
            pool_connections=1,
            pool_maxsize=self._threads + self._background_threads,  # one per thread
        )
        client = self._ref("/")._client
        session = client.session
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        # requests reads the proxy and CA variables from the whole environment on every
        # request (1.5 ms a request with 200 variables, on every turn's path). Read once.
        session.proxies.update(requests.utils.get_environ_proxies(client.base_url))
        bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        if bundle:
            session.verify = bundle
        session.trust_env = False

    async def close(self) -> None:
        """Stop the pool and delete the firebase-admin app."""
        for pool in (self._executor, self._background):
            if pool is not None:
                pool.shutdown(wait=True)
        self._executor = self._background = None
        if self._app is not None:
            firebase_admin.delete_app(self._app)
            self._app = None
            self._refs.clear()

    def _ref(self, path: str) -> db.Reference:
        """A reference, built once per path (building one looks the app's client up again)."""
        with self._refs_lock:
            ref = self._refs.get(path)
        if ref is None:
            # firebase-admin puts the path into the URL as it is, and the server
            # percent-decodes it: an escaped key (``encode_key``) needs its ``%`` escaped once
            # more to arrive as the key that JSON bodies (multi-path updates) write.
            ref = db.reference(path.replace("%", "%25"), app=self._app)
            with self._refs_lock:
                self._refs[path] = ref
        return ref

    async def _run(self, work: Callable[[], T], *, background: bool = False) -> T:
        """``work`` on a pool thread, bounded by the store timeout. Background work (titles,
        memories, their counts) has a pool of its own, so a turn's claim and write never wait
        behind a title's several requests."""
        pool = self._background if background else self._executor
        if pool is None:
            raise StoreUnavailable("The session store is not open")
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._timeout):
                return await loop.run_in_executor(pool, work)
        except TimeoutError as exc:
            logger.error("firebase store call exceeded %.1f s", self._timeout)
            raise StoreUnavailable("The session store is not answering; try again shortly") from exc
        except (firebase_errors.FirebaseError, requests.RequestException) as exc:
            logger.error("firebase store error: %s: %s", type(exc).__name__, short(exc))
            raise StoreUnavailable("The session store is unavailable; try again shortly") from exc

    # -- sessions ----------------------------------------------------------------------------

    async def ping(self) -> None:
        """A tiny shallow read."""
        await self._run(lambda: self._ref("/settings").get(shallow=True))

    async def create_session(self, session: SessionRecord) -> None:
        """The session node, its seq slot, its index entry and its activity, in one update."""
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

    async def load_messages(
        self, session_id: str, *, limit: int, before: int | None = None
    ) -> list[StoredMessage]:
        """The newest ``limit`` below ``before``, by key, oldest first."""
        if limit <= 0 or (before is not None and before <= 0):
            return []

        def load() -> Any:
            query = self._ref(f"userSessions/{session_id}/conversation_history").order_by_key()
            if before is not None:
                query = query.end_at(message_key(before - 1))
            return query.limit_to_last(limit).get()

        return messages_of(await self._run(load))

    async def load_messages_after(
        self, session_id: str, *, after: int, limit: int
    ) -> list[StoredMessage]:
        """The first ``limit`` above ``after``, by key."""

        def load() -> Any:
            query = self._ref(f"userSessions/{session_id}/conversation_history").order_by_key()
            return query.start_at(message_key(after + 1)).limit_to_first(limit).get()

        return messages_of(await self._run(load))

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
        except (firebase_errors.FirebaseError, requests.RequestException) as exc:
            if not counted or refused(exc):
                raise
            logger.warning("an update of session %s may not have landed; not repeated", session_id)

    async def delete_sessions(self, user_id: str, session_ids: list[str] | None = None) -> int:
        """The sessions' nodes, index entries and activity in one multi-path update."""
        return await self._run(lambda: self._delete_sessions(user_id, session_ids))

    def _delete_sessions(self, user_id: str, session_ids: list[str] | None) -> int:
        index = f"userSessionIndex/{encode_key(user_id)}"
        listed = self._ref(index).get(shallow=True) or {}
        targets = list(listed) if session_ids is None else [s for s in session_ids if s in listed]
        if not targets:
            return 0
        updates: dict[str, Any] = {}
        for sid in targets:
            updates[f"userSessions/{sid}"] = None
            updates[f"{index}/{sid}"] = None
            updates[f"sessionActivity/{sid}"] = None
        self._ref("/").update(updates)
        for sid in targets:
            self._slot(sid, pop=True)
            self._remember(sid, None)
        return len(targets)

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

    # -- templates ---------------------------------------------------------------------------

    async def load_templates(self) -> dict[str, Any]:
        """All templates; the same dict object again when nothing changed (no transfer)."""
        ref, last = self._ref("templates"), self._templates
        self._templates = await self._run(lambda: _read_if_changed(ref, last))
        data = self._templates[0]
        return data if isinstance(data, dict) else {}

    async def load_universal_rules(self) -> dict[str, Any] | None:
        """The universal rules, read the same cheap way."""
        ref, last = self._ref("settings/universalRules"), self._rules
        self._rules = await self._run(lambda: _read_if_changed(ref, last))
        data = self._rules[0]
        return data if isinstance(data, dict) else None

    async def seed(
        self, templates: dict[str, Any], rules: dict[str, Any] | None, *, overwrite: bool
    ) -> SeedReport:
        """Write what is missing (everything with ``overwrite``) in one update."""

        def seed() -> SeedReport:
            report = SeedReport()
            existing = self._ref("templates").get(shallow=True) or {}
            has_rules = self._ref("settings/universalRules").get(shallow=True) is not None
            updates: dict[str, Any] = {}
            docs = [
                (f"templates/{encode_key(k)}", k, k in existing, v) for k, v in templates.items()
            ]
            if rules is not None:
                docs.append(
                    ("settings/universalRules", "settings/universalRules", has_rules, rules)
                )
            for path, label, exists, doc in docs:
                if exists and not overwrite:
                    report.kept.append(label)
                    continue
                updates[path] = doc
                (report.overwritten if exists else report.created).append(label)
            if updates:
                self._ref("/").update(updates)
            return report

        return await self._run(seed)


def _read_if_changed(ref: db.Reference, last: tuple[Any, str] | None) -> tuple[Any, str]:
    if last is None:
        data, etag = ref.get(etag=True)
        return data, etag
    changed, data, etag = ref.get_if_changed(last[1])
    return (data, etag) if changed else last


def _credential(settings: Settings) -> credentials.Base | None:
    if settings.firebase_uses_emulator:
        return None  # firebase-admin sends the emulator's owner token itself
    return firebase_credential(settings)


def _database_url(settings: Settings) -> str:
    url = settings.firebase_database_url or ""
    host = settings.firebase_database_emulator_host
    if host and url.startswith("https://"):
        # What firebase-admin does with FIREBASE_DATABASE_EMULATOR_HOST, from settings instead
        # of the process environment (so a .env file works too).
        namespace = url.removeprefix("https://").split(".")[0]
        return f"http://{host}?ns={namespace}"
    return url


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
