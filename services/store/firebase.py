"""The production store: Firebase Realtime Database through firebase-admin.

Layout (DATA.md), plus three small helper nodes the service owns:

    /templates/{id}, /settings/universalRules          edited by authors in the console
    /userSessions/{sid}                                metadata fields, then
        conversation_history/m{seq:010d}               one message per key, ordered as strings
        next_seq: {"next": n, "by": token}             tiny compare-and-set node for seq
                  {"closed": "ended" | "expired"}      once the session is over
        conversation_client_ids/{client_message_id}: seq   idempotency pointer
    /userSessionIndex/{user}/{sid}                     summary, for a user's session list
    /sessionActivity/{sid}: last_activity              active sessions only, for expiry

Metadata is read with two key-range queries that skip the two growing children (the keys
sort: context_messages < conversation_client_ids < conversation_history < created_at < ...);
``shallow=true`` would not do, it turns every child, primitives too, into ``true``.

A turn is one multi-path update of constant size. Sequence numbers come from a conditional
write on ``next_seq`` (whose ETag is cached, so one request in the steady state), never from a
transaction on the session node, which would read and rewrite the whole history.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import socket
import threading
import time
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

from services.errors import SessionEnded, SessionNotFound, StoreUnavailable
from services.models import (
    NewTurn,
    Sampling,
    SeedReport,
    SessionRecord,
    SessionStatus,
    StoredMessage,
    StoredTurn,
    TurnClaim,
    Usage,
)
from services.settings import Settings
from services.store.firebase_documents import FirebaseDocuments
from services.store.rtdb_keys import encode_key, message_key

logger = logging.getLogger(__name__)
T = TypeVar("T")

_SUMMARY_FIELDS = ("template_id", "status", "created_at", "last_activity", "ended_at", "title")
_CAS_ATTEMPTS = 25
_CLAIM_ATTEMPTS = 5
_CLAIM_WAIT_SECONDS = 0.1  # in a pool thread, never on the event loop
_IDS = "conversation_client_ids"
# Key ranges of a session node that hold its metadata and none of its growing children.
_META_RANGES = ((None, "context_messages"), ("conversation_history0", None))


class FirebaseStore(FirebaseDocuments):
    """``Store`` on a Firebase Realtime Database."""

    name = "firebase"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._threads = settings.store_threads
        self._timeout = settings.store_timeout_seconds
        self._app: firebase_admin.App | None = None
        self._executor: ThreadPoolExecutor | None = None
        # Last known (value, ETag) of each session's next_seq; pool threads share it.
        self._slots: LRUCache[str, tuple[Any, str]] = LRUCache(settings.session_cache_max)
        self._slots_lock = threading.Lock()
        # Tokens of seq claims whose answer was lost, by session (their turns were not written).
        self._unused_claims: LRUCache[str, tuple[str, ...]] = LRUCache(1000)
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
            max_retries=policy, pool_connections=1, pool_maxsize=self._threads
        )
        session = self._ref("/")._client.session
        session.mount("http://", adapter)
        session.mount("https://", adapter)

    async def close(self) -> None:
        """Stop the pool and delete the firebase-admin app."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._app is not None:
            firebase_admin.delete_app(self._app)
            self._app = None

    def _ref(self, path: str) -> db.Reference:
        return db.reference(path, app=self._app)

    async def _run(self, work: Callable[[], T]) -> T:
        if self._executor is None:
            raise StoreUnavailable("The session store is not open")
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._timeout):
                return await loop.run_in_executor(self._executor, work)
        except TimeoutError as exc:
            logger.error("firebase store call exceeded %.1f s", self._timeout)
            raise StoreUnavailable("The session store is not answering; try again shortly") from exc
        except (firebase_errors.FirebaseError, requests.RequestException) as exc:
            logger.error("firebase store error: %s: %s", type(exc).__name__, _short(exc))
            raise StoreUnavailable("The session store is unavailable; try again shortly") from exc

    # -- sessions ----------------------------------------------------------------------------

    async def ping(self) -> None:
        """A tiny shallow read."""
        await self._run(lambda: self._ref("/settings").get(shallow=True))

    async def create_session(self, session: SessionRecord) -> None:
        """The session node, its seq slot, its index entry and its activity, in one update."""
        sid = session.session_id
        node = _session_doc(session)
        node["next_seq"] = {"next": 0, "by": "created"}
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

        return _messages(await self._run(load))

    async def load_messages_after(
        self, session_id: str, *, after: int, limit: int
    ) -> list[StoredMessage]:
        """The first ``limit`` above ``after``, by key."""

        def load() -> Any:
            query = self._ref(f"userSessions/{session_id}/conversation_history").order_by_key()
            return query.start_at(message_key(after + 1)).limit_to_first(limit).get()

        return _messages(await self._run(load))

    async def find_turn(self, session_id: str, client_message_id: str) -> StoredTurn | None:
        """Follow the ``client_ids`` pointer to the turn's two messages."""
        return await self._run(lambda: self._find_turn(session_id, client_message_id))

    def _find_turn(self, session_id: str, client_message_id: str) -> StoredTurn | None:
        base = f"userSessions/{session_id}"
        seq = self._ref(f"{base}/{_IDS}/{encode_key(client_message_id)}").get()
        return self._pair(session_id, seq) if isinstance(seq, int) else None

    async def append_turn(self, session: SessionRecord, turn: NewTurn) -> StoredTurn:
        """Claim the id and two seqs, then write the turn in one update."""
        claim = await self.claim_turn(session, turn.client_message_id)
        if isinstance(claim, StoredTurn):
            return claim
        return await self.write_turn(session, claim, turn)

    async def claim_turn(
        self, session: SessionRecord, client_message_id: str | None
    ) -> TurnClaim | StoredTurn:
        """Everything a turn's write needs before it (run while the model is generating): the
        ``client_message_id`` by conditional create, then two seqs by compare-and-set. The
        stored turn instead, when the id already has one."""
        return await self._run(lambda: self._claim_turn(session.session_id, client_message_id))

    def _claim_turn(self, sid: str, cid: str | None) -> TurnClaim | StoredTurn:
        pointer = None
        if cid is not None:
            # Claim the id before taking seqs, so an instance that loses takes none.
            pointer = self._ref(f"userSessions/{sid}/{_IDS}/{encode_key(cid)}")
            winner = self._claim_id(sid, pointer)
            if winner is not None:
                return winner
        try:
            seq, token = self._allocate(sid)
        except BaseException:
            self._drop_pointer(pointer)
            raise
        return TurnClaim(seq, token)

    async def write_turn(
        self, session: SessionRecord, claim: TurnClaim, turn: NewTurn
    ) -> StoredTurn:
        """The turn as one multi-path update on the claimed seqs: the one request after the
        reply."""
        return await self._run(lambda: self._write_turn(session, claim, turn))

    def _write_turn(self, session: SessionRecord, claim: TurnClaim, turn: NewTurn) -> StoredTurn:
        sid, cid, seq = session.session_id, turn.client_message_id, claim.seq
        user = StoredMessage(seq, "user", turn.user_text, turn.user_at, cid)
        reply = StoredMessage(seq + 1, "assistant", turn.reply, turn.reply_at, None, turn.usage)
        try:
            self._ref("/").update(_turn_updates(session, user, reply))
        except (firebase_errors.FirebaseError, requests.RequestException) as exc:
            if self._landed(sid, user):  # the answer was lost, not the write
                return StoredTurn(user, reply)
            if not _may_land_later(exc):  # refused, or the connection died: never applied
                self._release_claim(sid, claim, cid)
            # Else (a timeout) the write may still land: its seqs and claim stay taken.
            raise
        return StoredTurn(user, reply)

    async def release_turn(
        self, session: SessionRecord, claim: TurnClaim, client_message_id: str | None
    ) -> None:
        """Give back a claim whose turn will not be written (the model failed)."""
        sid = session.session_id
        await self._run(lambda: self._release_claim(sid, claim, client_message_id))

    def _release_claim(self, sid: str, claim: TurnClaim, cid: str | None) -> None:
        self._release(sid, claim.seq, claim.token)
        if cid is not None:
            self._drop_pointer(self._ref(f"userSessions/{sid}/{_IDS}/{encode_key(cid)}"))

    @staticmethod
    def _drop_pointer(pointer: db.Reference | None) -> None:
        if pointer is not None:
            with contextlib.suppress(firebase_errors.FirebaseError, requests.RequestException):
                pointer.delete()

    def _claim_id(self, session_id: str, pointer: db.Reference) -> StoredTurn | None:
        """Claim a client_message_id with a conditional create; None when the claim is ours,
        else the turn stored under it.

        A claim of another instance is waited for (bounded) while its turn may still be
        written, and taken over only if that turn never appears (its writer died).
        """
        token = f"pending:{uuid.uuid4().hex}"
        value, etag = pointer.get(etag=True)
        for attempt in range(_CLAIM_ATTEMPTS + 1):
            winner = self._pair(session_id, value) if isinstance(value, int) else None
            if winner is not None:
                return winner
            if value is None or attempt == _CLAIM_ATTEMPTS:
                ok, value, etag = pointer.set_if_unchanged(etag, token)
                if ok:
                    return None
                continue
            time.sleep(_CLAIM_WAIT_SECONDS * (attempt + 1))  # a pool thread, not the loop
            value, etag = pointer.get(etag=True)
        raise StoreUnavailable("Another instance is storing this client_message_id; retry it")

    def _pair(self, session_id: str, seq: int) -> StoredTurn | None:
        query = self._ref(f"userSessions/{session_id}/conversation_history").order_by_key()
        pair = _messages(query.start_at(message_key(seq)).limit_to_first(2).get())
        if len(pair) != 2 or pair[0].seq != seq or pair[1].seq != seq + 1:
            return None
        return StoredTurn(pair[0], pair[1], created=False)

    def _landed(self, session_id: str, user: StoredMessage) -> bool:
        path = f"userSessions/{session_id}/conversation_history/{message_key(user.seq)}"
        try:
            return bool(self._ref(path).get() == _message_doc(user))
        except (firebase_errors.FirebaseError, requests.RequestException):
            return False

    def _release(self, session_id: str, seq: int, claim: str) -> None:
        """Give back a claimed seq whose turn was not written, so no gap is left behind."""
        cached = self._slot(session_id, pop=True)
        if cached is None or cached[0].get("by") != claim:
            return
        ref = self._ref(f"userSessions/{session_id}/next_seq")
        try:
            ref.set_if_unchanged(cached[1], {"next": seq, "by": f"released-{claim}"})
        except (firebase_errors.FirebaseError, requests.RequestException) as exc:
            logger.warning("could not release seq %d of %s: %s", seq, session_id, _short(exc))

    def _slot(
        self, session_id: str, new: tuple[Any, str] | None = None, *, pop: bool = False
    ) -> tuple[Any, str] | None:
        """Read, replace or drop a cached next_seq (value, ETag), under the lock."""
        with self._slots_lock:
            if pop:
                return self._slots.pop(session_id, None)
            if new is not None:
                self._slots[session_id] = new
            return self._slots.get(session_id)

    def _allocate(self, session_id: str) -> tuple[int, str]:
        """The next two seqs, claimed with a conditional write on the tiny ``next_seq`` node.

        A claim whose answer never came (timeout, dropped connection) may still land; its
        turn was never written, so when this process later finds its own unused claim on the
        node, it takes those seqs rather than leaving a gap.
        """
        ref = self._ref(f"userSessions/{session_id}/next_seq")
        cached = self._slot(session_id)
        value, etag = cached if cached else ref.get(etag=True)
        token = uuid.uuid4().hex
        with self._slots_lock:
            ours = {token, *self._unused_claims.pop(session_id, ())}
        try:
            for _ in range(_CAS_ATTEMPTS):
                if not isinstance(value, dict):
                    raise SessionNotFound(session_id)
                if "closed" in value:
                    self._slot(session_id, pop=True)
                    raise SessionEnded(session_id, str(value["closed"]))
                if value.get("by") in ours:  # a claim of ours landed unanswered: use its seqs
                    self._slot(session_id, (value, etag))
                    return int(value["next"]) - 2, str(value["by"])
                seq = int(value["next"])
                claimed = {"next": seq + 2, "by": token}
                ok, value, etag = ref.set_if_unchanged(etag, claimed)
                if ok:
                    self._slot(session_id, (claimed, etag))
                    return seq, token
        except (firebase_errors.FirebaseError, requests.RequestException) as exc:
            if not _refused(exc):
                with self._slots_lock:
                    self._unused_claims[session_id] = tuple(ours)[-8:]
            self._slot(session_id, pop=True)
            raise
        raise StoreUnavailable("Too many concurrent writers on one session; try again")

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
        self, user_id: str, *, status: SessionStatus | None, limit: int
    ) -> list[SessionRecord]:
        """From the user's index: newest first."""

        def load() -> Any:
            query = self._ref(f"userSessionIndex/{encode_key(user_id)}").order_by_child(
                "created_at"
            )
            return (query.limit_to_last(limit) if status is None else query).get()

        entries = await self._run(load) or {}
        records = [
            _summary(user_id, sid, doc)
            for sid, doc in entries.items()
            if isinstance(doc, dict) and (status is None or doc.get("status") == status)
        ]
        records.sort(key=lambda r: (r.created_at, r.session_id), reverse=True)
        return records[:limit]

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


def _turn_updates(
    session: SessionRecord, user: StoredMessage, reply: StoredMessage
) -> dict[str, Any]:
    """One turn as one multi-path update; its size does not depend on the history's length."""
    sid = session.session_id
    base, index = f"userSessions/{sid}", f"userSessionIndex/{encode_key(session.user_id)}/{sid}"
    increment = {".sv": {"increment": 1}}
    updates: dict[str, Any] = {
        f"{base}/conversation_history/{message_key(user.seq)}": _message_doc(user),
        f"{base}/conversation_history/{message_key(reply.seq)}": _message_doc(reply),
        f"{base}/message_count": increment,
        f"{base}/last_activity": reply.timestamp,
        f"{index}/message_count": increment,
        f"{index}/last_activity": reply.timestamp,
        f"sessionActivity/{sid}": reply.timestamp,
    }
    if user.client_message_id is not None:
        updates[f"{base}/{_IDS}/{encode_key(user.client_message_id)}"] = user.seq
    return updates


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


def firebase_credential(settings: Settings) -> credentials.Base:
    """The service-account credential from the settings; ``ValueError`` naming the variable."""
    try:
        if settings.firebase_credentials_json is not None:
            info = json.loads(settings.firebase_credentials_json.get_secret_value())
            return credentials.Certificate(info)
        return credentials.Certificate(str(settings.google_application_credentials))
    except (ValueError, OSError) as exc:
        which = (
            "FIREBASE_CREDENTIALS_JSON"
            if settings.firebase_credentials_json is not None
            else "GOOGLE_APPLICATION_CREDENTIALS"
        )
        raise ValueError(
            f"{which} is not a valid service-account key: {type(exc).__name__}"
        ) from None


def _database_url(settings: Settings) -> str:
    url = settings.firebase_database_url or ""
    host = settings.firebase_database_emulator_host
    if host and url.startswith("https://"):
        # What firebase-admin does with FIREBASE_DATABASE_EMULATOR_HOST, from settings instead
        # of the process environment (so a .env file works too).
        namespace = url.removeprefix("https://").split(".")[0]
        return f"http://{host}?ns={namespace}"
    return url


def _refused(exc: Exception) -> bool:
    """Whether the database answered with an error (so the request was not applied)."""
    response = getattr(exc, "http_response", None)
    return response is not None and response.status_code >= 400


def _may_land_later(exc: BaseException) -> bool:
    """A timeout: the request may still be applied. (A refusal or a dropped connection is not.)"""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, requests.exceptions.Timeout | TimeoutError | socket.timeout):
            return True
        if "timed out" in str(seen).lower():
            return True
        seen = getattr(seen, "cause", None) or seen.__cause__ or seen.__context__
    return False


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else ""


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
    }
    return {key: value for key, value in doc.items() if value is not None}


def _summary_doc(s: SessionRecord) -> dict[str, Any]:
    doc = {name: getattr(s, name) for name in _SUMMARY_FIELDS}
    doc["message_count"] = s.message_count
    return {key: value for key, value in doc.items() if value is not None}


def _session(data: Any) -> SessionRecord | None:
    if not isinstance(data, dict) or "user_id" not in data:
        return None
    return SessionRecord.from_fields(data)


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
    )


def _message_doc(m: StoredMessage) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "seq": m.seq,
        "role": m.role,
        "content": m.content,
        "timestamp": m.timestamp,
    }
    if m.client_message_id is not None:
        doc["client_message_id"] = m.client_message_id
    if m.usage is not None:
        doc["usage"] = m.usage.as_dict()
    return doc


def _messages(data: Any) -> list[StoredMessage]:
    if not data:
        return []
    items = data.values() if isinstance(data, dict) else data
    messages = [
        StoredMessage(
            seq=int(doc["seq"]),
            role=doc["role"],
            content=doc["content"],
            timestamp=doc["timestamp"],
            client_message_id=doc.get("client_message_id"),
            usage=Usage.from_dict(doc.get("usage")),
        )
        for doc in items
        if isinstance(doc, dict)
    ]
    messages.sort(key=lambda m: m.seq)
    return messages
