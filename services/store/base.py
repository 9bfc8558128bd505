"""The storage contract every backend implements (SQLite, Firebase Realtime Database,
PostgreSQL), one small protocol per role, and ``Store``, all of them together.

All methods are async; a backend whose client blocks runs it on its own bounded thread pool.
Failures to reach the store raise ``StoreUnavailable``; ``None`` means "not found".

Roles (each backend has one file per role, named as here without the ``Store``):
``StoreConnection`` (connection.py), ``SessionStore`` (sessions.py), ``TurnStore``
(turns.py), ``BranchStore`` (branches.py), ``MemoryStore`` (memory.py), ``DocumentStore``
(documents.py), ``UsageStore`` (usage.py), ``UserDataStore`` (user_data.py), ``DeviceStore``
(devices.py).

Beside ``Store``, not part of it: ``AttachmentStore`` (attachments.py), the image bytes that
messages only reference. SQLite keeps them in a local folder (which any backend without a
bucket of its own may use too), Firebase in a Cloud Storage bucket, PostgreSQL in a table.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from services.core.attachment_records import Attachment
from services.core.branch_records import NewBranch, Variant
from services.core.provider_config import Target
from services.core.push_records import Device, PushPreferences
from services.core.records import (
    CallUsage,
    DayUsage,
    NewTurn,
    SeedReport,
    SessionCursor,
    SessionRecord,
    SessionStatus,
    StoredMessage,
    StoredTurn,
    TemplateCounts,
    TurnClaim,
    Usage,
)
from services.store.versions import Change, DocRef, DocVersion, DocWrite, Source


class StoreConnection(Protocol):
    """The backend's lifecycle: opened and closed by the lifespan, pinged by readiness."""

    name: str

    async def open(self) -> None:
        """Connect and prepare (schema, pools). Raises on bad configuration."""

    async def close(self) -> None:
        """Release connections and threads."""

    async def ping(self) -> None:
        """Cheap round trip; raises ``StoreUnavailable`` when the store does not answer."""


class SessionStore(Protocol):
    """A session's metadata: created, read, listed, renamed, ended, expired."""

    async def create_session(
        self, session: SessionRecord, *, max_active: int | None = None
    ) -> None:
        """Store a new session (no messages yet); ``ActiveSessionLimit`` when its user has
        ``max_active`` active sessions already (counted with the write where the store can;
        None: no cap)."""

    async def get_session(self, session_id: str) -> SessionRecord | None:
        """A session's metadata, without history."""

    async def end_session(self, session_id: str, *, at: str) -> SessionRecord | None:
        """Mark the session ended (kept as is when already ended)."""

    async def list_user_sessions(
        self,
        user_id: str,
        *,
        status: SessionStatus | None,
        limit: int,
        before: SessionCursor | None = None,
    ) -> list[SessionRecord]:
        """A user's sessions, most recent activity first (ties: session id, descending),
        only those below ``before``; each with its ``title`` and last message's ``preview``."""

    async def set_title(
        self,
        session_id: str,
        title: str | None,
        *,
        only_if_unset: bool = False,
        usage: CallUsage | None = None,
    ) -> SessionRecord | None:
        """Rename a session (None clears the title); with ``only_if_unset``, only when it has
        none (a generated title never overwrites a user's). The session after, or None when
        there is no such session.

        ``usage``, a title call's counts, is added by the same write, as ``set_memory`` adds
        a summary's (whatever became of the title), and raises as it does."""

    async def expire_idle_sessions(self, *, idle_before: str, at: str) -> list[str]:
        """Mark active sessions idle since before ``idle_before`` as expired; their ids."""


class TurnStore(Protocol):
    """A session's messages: read back, and written a turn (two messages) at a time."""

    async def load_messages(
        self, session_id: str, *, limit: int, before: int | None = None
    ) -> list[StoredMessage]:
        """The last ``limit`` messages with ``seq < before`` (all when None), oldest first."""

    async def load_messages_after(
        self, session_id: str, *, after: int, limit: int
    ) -> list[StoredMessage]:
        """The first ``limit`` messages with ``seq > after``, oldest first (forward sync)."""

    async def find_turn(self, session_id: str, client_message_id: str) -> StoredTurn | None:
        """The completed turn whose user message carries this ``client_message_id``."""

    async def load_client_ids(self, session_id: str) -> list[str]:
        """The ``client_message_id`` of every stored turn (a session loaded into memory)."""

    async def claim_turn(
        self,
        session: SessionRecord,
        client_message_id: str | None,
        *,
        known_below: int | None = None,
    ) -> TurnClaim | StoredTurn:
        """Reserve what the turn's write needs, while the model generates: the stored turn
        instead when ``client_message_id`` already has one (then nothing is reserved).

        ``known_below``: the caller knows every id stored at a seq below it, and this one is
        not among them, so a backend may skip reading for those. Raises ``SessionEnded`` when
        the session is over."""

    async def write_turn(
        self, session: SessionRecord, claim: TurnClaim, turn: NewTurn
    ) -> StoredTurn:
        """Store a claimed turn: both messages on the claimed seqs, ``message_count`` and
        ``last_activity``, atomically, in as few requests as the backend can: one, on both
        backends. Raises ``SessionEnded`` when the session is no longer active.

        ``claim_turn`` then ``write_turn`` stores a turn once: a ``client_message_id`` that
        already has a stored turn gets that turn back (``created=False``) and nothing more."""

    async def release_turn(
        self, session: SessionRecord, claim: TurnClaim, client_message_id: str | None
    ) -> None:
        """Give back a claim whose turn will not be written, leaving no gap in the seqs."""


class BranchStore(Protocol):
    """Regenerated and edited turns: the active branch replaced from a seq on, the messages
    it held kept as a variant of that seq, and a variant made the active one again."""

    async def write_branch(self, session: SessionRecord, branch: NewBranch) -> StoredTurn:
        """Move the active messages from ``branch.seq`` on to a new variant of that seq and
        store the turn's messages in their place, with ``message_count``, ``last_activity``,
        the preview, the call's usage (as ``write_turn`` counts a turn) and, with
        ``reset_memory``, the memory cleared: atomically, in one write (a crash leaves the
        old branch or the new one). ``HistoryChanged`` when the branch no longer ends at
        ``branch.next_seq``; ``SessionEnded`` when the session is over."""

    async def load_variants(self, session_id: str, seq: int) -> list[Variant]:
        """The variants kept at ``seq``, by number (none: an empty list)."""

    async def select_variant(
        self, session: SessionRecord, seq: int, number: int, *, at: str
    ) -> list[StoredMessage] | None:
        """Swap variant ``number`` of ``seq`` with the active messages from ``seq`` on (those
        become variant ``number``), atomically; the memory is cleared when it covered ``seq``.
        The active messages from ``seq`` on after it, or None when there is no such
        variant."""


class MemoryStore(Protocol):
    """A session's rolling memory (the summary of the messages older than its context)."""

    async def set_memory(
        self,
        session_id: str,
        text: str,
        *,
        seq: int,
        expected_seq: int,
        at: str,
        usage: CallUsage | None = None,
    ) -> bool:
        """Store a session's memory covering every message below ``seq``, only where the
        stored memory still covers up to ``expected_seq`` (another instance may have folded
        meanwhile) and the session still exists. Whether it was written.

        ``usage``, the summary call's counts, is added with it (as ``add_usage`` would)
        whether or not the memory is written, as its tokens were spent either way; when the
        session is gone, on the user's day only. SQLite adds both in one transaction;
        Firebase, which has no conditional multi-path write, sends the counts' update right
        after the conditional write. Raises ``StoreUnavailable`` only when the counts were
        not added, so the caller may count the call another way without counting it twice
        (the memory may have been written: a retry then finds it)."""


class DocumentStore(Protocol):
    """Templates and the universal rules: seeded, read, written with history; and
    each personality's stats."""

    async def load_templates(self) -> dict[str, Any]:
        """Raw template documents by id (validated by the template service)."""

    async def load_universal_rules(self) -> dict[str, Any] | None:
        """The raw universal rules document."""

    async def seed(
        self, templates: dict[str, Any], rules: dict[str, Any] | None, *, overwrite: bool
    ) -> SeedReport:
        """Write templates and rules that are missing (all of them with ``overwrite``)."""

    async def read_document(self, ref: DocRef) -> dict[str, Any] | None:
        """A template or the universal rules as stored (no cached copy), or None."""

    async def write_document(
        self, ref: DocRef, change: Change, *, if_match: str | None, source: Source, at: str
    ) -> DocWrite:
        """Replace a versioned document atomically with ``change(current)`` (None deletes it).

        Checks ``if_match`` against the current document (``PreconditionFailed``), appends the
        history entries ``plan_write`` asks for, and retries ``change`` on a concurrent write.
        Errors ``change`` raises propagate and nothing is written.
        """

    async def list_versions(self, ref: DocRef) -> list[DocVersion]:
        """A document's history, oldest first (kept after the document is deleted)."""

    async def add_template_stats(self, deltas: Mapping[str, TemplateCounts]) -> None:
        """Add counters to each personality's stored totals, their shares by target
        included (one write for all)."""

    async def load_template_stats(self) -> dict[str, TemplateCounts]:
        """Every personality's stored totals, with their shares by target."""

    def watch_documents(self, changed: Callable[[], Awaitable[None]]) -> None:
        """Call ``changed`` after any instance writes a template or the rules, where the
        backend hears of writes (PostgreSQL's ``LISTEN``/``NOTIFY``); elsewhere never, and
        the scheduled refresh (``TEMPLATE_REFRESH_SECONDS``) reads them."""


class UsageStore(Protocol):
    """Counted tokens and calls: a background call's, and a user's days read back."""

    async def add_usage(
        self,
        user_id: str,
        session_id: str,
        usage: Usage,
        *,
        at: str,
        target: Target | None = None,
    ) -> None:
        """Count a background call (a title, a memory summary) in one write: its tokens and
        one call, on the user's day of ``at`` (UTC) and on the session's totals, and on
        ``target``'s share of both (the provider and the model it was asked for). A turn's
        usage is counted by the turn's own write (``write_turn``), under its
        ``NewTurn.served_by``.

        Raises ``StoreUnavailable`` only when nothing was counted, so a retry cannot count
        twice; a write whose outcome the backend cannot know is logged and not raised."""

    async def load_usage(
        self, user_id: str, *, since_day: str, until_day: str, by_model: bool = False
    ) -> list[DayUsage]:
        """The user's usage on each day from ``since_day`` to ``until_day`` (both included,
        ``YYYY-MM-DD`` in UTC), oldest first; days without usage are left out. With
        ``by_model``, each day has its shares by target (a read more on some backends, so the
        quota's reads go without)."""


class UserDataStore(Protocol):
    """Data rights: a user's sessions erased with every message."""

    async def delete_sessions(self, user_id: str, session_ids: list[str] | None = None) -> int:
        """Erase sessions of a user with every message (all of them when ``session_ids`` is
        None): gone from the store, not marked. How many sessions were erased."""


class DeviceStore(Protocol):
    """Push notifications: a user's devices (FCM registration tokens) and opt-outs."""

    async def add_device(self, user_id: str, device: Device, *, limit: int) -> list[Device]:
        """Register a device for the user (a token is held by one user at most: registering
        it moves it here; registering it again refreshes it), keeping the ``limit`` most
        recently registered. The user's devices after, most recent first."""

    async def remove_device(self, user_id: str, token: str) -> bool:
        """Forget one of the user's devices; whether the user had it."""

    async def list_devices(self, user_id: str) -> list[Device]:
        """The user's devices, most recently registered first."""

    async def load_push_preferences(self, user_id: str) -> PushPreferences:
        """The user's opt-outs (the defaults when none were set)."""

    async def set_push_preferences(
        self,
        user_id: str,
        *,
        enabled: bool | None = None,
        session_id: str | None = None,
        session_enabled: bool = True,
    ) -> PushPreferences:
        """Turn the user's pushes on or off (``enabled``), and/or one session's
        (``session_id`` with ``session_enabled``); the preferences after."""

    async def delete_push_data(self, user_id: str) -> int:
        """Erase the user's devices and preferences (data rights); how many devices."""


class Store(
    StoreConnection,
    SessionStore,
    TurnStore,
    BranchStore,
    MemoryStore,
    DocumentStore,
    UsageStore,
    UserDataStore,
    DeviceStore,
    Protocol,
):
    """Durable sessions, messages, templates and universal rules: every role of one backend."""


class AttachmentStore(Protocol):
    """Image bytes by user and attachment id; a message row or node holds only the
    ``Attachment`` reference. A user's attachments are reached only under that user's id, so
    another user's id never finds them."""

    name: str

    async def open(self) -> None:
        """Prepare (the folder, the bucket's client)."""

    async def close(self) -> None:
        """Release threads and clients."""

    async def put(self, user_id: str, attachment: Attachment, data: bytes) -> None:
        """Store an image's bytes with its reference (written whole, or not at all)."""

    async def get(self, user_id: str, attachment_id: str) -> tuple[Attachment, bytes] | None:
        """The user's image and its reference, or None."""

    async def delete_user(self, user_id: str) -> int:
        """Erase every image of the user; how many there were."""
