"""The embedded store: one SQLite file in WAL mode, driven from a bounded thread pool.

Each pool thread owns one connection. Writes run in ``BEGIN IMMEDIATE`` transactions, so a
turn (both messages, ``message_count``, ``last_activity``) is stored whole or not at all, also
when several processes share the file.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from services.core.errors import SessionEnded, SessionNotFound, StoreUnavailable
from services.core.provider_config import Target
from services.core.records import (
    CallUsage,
    DayUsage,
    ModelUsage,
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
    preview_of,
    tool_uses,
)
from services.store import sqlite_usage
from services.store.versions import (
    Change,
    DocRef,
    DocVersion,
    DocWrite,
    Source,
    check_if_match,
    etag_of,
    plan_write,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    template_id TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    last_activity TEXT NOT NULL,
    ended_at TEXT,
    message_count INTEGER NOT NULL DEFAULT 0,
    system_prompt TEXT NOT NULL,
    model TEXT NOT NULL,
    temperature REAL NOT NULL,
    max_tokens INTEGER NOT NULL,
    presence_penalty REAL NOT NULL,
    frequency_penalty REAL NOT NULL,
    context_messages INTEGER NOT NULL,
    title TEXT,
    summary TEXT,
    template_version INTEGER,
    preview TEXT,
    welcome_message TEXT,
    context_tokens INTEGER,
    memory_mode TEXT,
    summary_seq INTEGER NOT NULL DEFAULT 0,
    provider TEXT,
    fallbacks TEXT,
    tools TEXT
);
CREATE INDEX IF NOT EXISTS sessions_by_user ON sessions (user_id, created_at);
CREATE INDEX IF NOT EXISTS sessions_by_activity ON sessions (status, last_activity);
CREATE TABLE IF NOT EXISTS messages (
    session_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    timestamp TEXT NOT NULL,
    client_message_id TEXT,
    usage TEXT,
    provider TEXT,
    model TEXT,
    tools TEXT,
    PRIMARY KEY (session_id, seq)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS messages_by_client_id
    ON messages (session_id, client_message_id)
    WHERE client_message_id IS NOT NULL AND role = 'user';
CREATE TABLE IF NOT EXISTS templates (template_id TEXT PRIMARY KEY, document TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, document TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS document_versions (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    number INTEGER NOT NULL,
    entry TEXT NOT NULL,
    PRIMARY KEY (kind, key, number)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS template_stats (
    template_id TEXT PRIMARY KEY,
    sessions INTEGER NOT NULL DEFAULT 0,
    turns INTEGER NOT NULL DEFAULT 0,
    reply_tokens INTEGER NOT NULL DEFAULT 0,
    failed_turns INTEGER NOT NULL DEFAULT 0,
    last_used TEXT
);
CREATE TABLE IF NOT EXISTS template_stats_by_model (
    template_id TEXT NOT NULL,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    turns INTEGER NOT NULL DEFAULT 0,
    reply_tokens INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (template_id, provider, model)
) WITHOUT ROWID;
"""

_SESSION_COLUMNS = (
    "session_id, user_id, template_id, status, created_at, last_activity, ended_at, "
    "message_count, system_prompt, model, temperature, max_tokens, presence_penalty, "
    "frequency_penalty, context_messages, title, summary, template_version, preview, "
    "welcome_message, context_tokens, memory_mode, summary_seq, provider, fallbacks, tools"
)
# Columns added after the first release, for files created before them.
_ADDED_COLUMNS = {
    "sessions": {
        "template_version": "INTEGER",
        "preview": "TEXT",
        "welcome_message": "TEXT",
        "context_tokens": "INTEGER",
        "memory_mode": "TEXT",
        "summary_seq": "INTEGER NOT NULL DEFAULT 0",
        **sqlite_usage.USAGE_COLUMNS,
        "provider": "TEXT",
        "fallbacks": "TEXT",
        "tools": "TEXT",
    },
    "messages": {"provider": "TEXT", "model": "TEXT", "tools": "TEXT"},
}
# Created after the added columns exist (an older file gains them first).
_ADDED_INDEXES = (
    "CREATE INDEX IF NOT EXISTS sessions_by_user_activity "
    "ON sessions (user_id, last_activity, session_id)",
)
# Where each kind of versioned document lives: table and key column.
_DOC_TABLES = {"template": ("templates", "template_id"), "rules": ("settings", "key")}
_MESSAGE_COLUMNS = "seq, role, content, timestamp, client_message_id, usage, provider, model, tools"
_MESSAGE_MARKS = ", ".join("?" * (_MESSAGE_COLUMNS.count(",") + 2))  # and session_id


class SQLiteStore:
    """``Store`` on a SQLite file."""

    name = "sqlite"

    def __init__(
        self,
        path: Path | str,
        *,
        threads: int = 4,
        synchronous: str = "FULL",
        busy_timeout: float = 10.0,
    ) -> None:
        self._path = str(path)
        self._busy_timeout = busy_timeout
        self._threads = threads
        self._synchronous = synchronous
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None

    # -- plumbing ----------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the file's folder and schema."""
        Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        self._executor = ThreadPoolExecutor(self._threads, thread_name_prefix="sqlite-store")
        await self._run(_migrate)

    async def close(self) -> None:
        """Stop the pool and close every connection."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        with self._connections_lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self._path,
                timeout=self._busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            # Deleted rows are overwritten, not just unlinked (data-rights deletions).
            conn.execute("PRAGMA secure_delete=ON")
            self._local.conn = conn
            with self._connections_lock:
                self._connections.append(conn)
        return conn

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        if self._executor is None:
            raise StoreUnavailable("The session store is not open")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, lambda: work(self._connection()))
        except sqlite3.Error as exc:
            logger.error("sqlite store error: %s: %s", type(exc).__name__, exc)
            raise StoreUnavailable("The session store is unavailable; try again shortly") from exc

    @staticmethod
    @contextmanager
    def _write(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # -- sessions ----------------------------------------------------------------------------

    async def ping(self) -> None:
        """A trivial query through the pool."""
        await self._run(lambda conn: conn.execute("SELECT 1").fetchone())

    async def create_session(self, session: SessionRecord) -> None:
        """Insert the session row."""
        s, p = session, session.sampling
        row = (
            s.session_id, s.user_id, s.template_id, s.status, s.created_at, s.last_activity,
            s.ended_at, s.message_count, s.system_prompt, p.model, p.temperature, p.max_tokens,
            p.presence_penalty, p.frequency_penalty, s.context_messages, s.title, s.summary,
            s.template_version, s.preview, s.welcome_message, s.context_tokens, s.memory_mode,
            s.summary_seq, p.provider, _fallbacks_json(p.fallbacks),
            json.dumps(list(p.tools)) if p.tools else None,
        )  # fmt: skip
        sql = f"INSERT INTO sessions ({_SESSION_COLUMNS}) VALUES ({', '.join('?' * len(row))})"

        def insert(conn: sqlite3.Connection) -> None:
            with self._write(conn):
                conn.execute(sql, row)

        await self._run(insert)

    async def get_session(self, session_id: str) -> SessionRecord | None:
        """The session row (with its usage totals and their shares by target), or None."""
        sql = f"SELECT {_SESSION_COLUMNS}, {sqlite_usage.SELECT_TOTALS} FROM sessions "
        sql += "WHERE session_id = ?"

        def read(conn: sqlite3.Connection) -> SessionRecord | None:
            row = conn.execute(sql, (session_id,)).fetchone()
            if row is None:
                return None
            return _session(row, shares=sqlite_usage.session_shares(conn, session_id))

        return await self._run(read)

    async def load_messages(
        self, session_id: str, *, limit: int, before: int | None = None
    ) -> list[StoredMessage]:
        """Newest ``limit`` messages below ``before``, returned oldest first."""
        if limit <= 0:
            return []
        sql = (
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE session_id = ? AND seq < ? "
            "ORDER BY seq DESC LIMIT ?"
        )
        upper = before if before is not None else 2**62
        rows = await self._run(
            lambda conn: conn.execute(sql, (session_id, upper, limit)).fetchall()
        )
        return [_message(row) for row in reversed(rows)]

    async def load_messages_after(
        self, session_id: str, *, after: int, limit: int
    ) -> list[StoredMessage]:
        """Oldest ``limit`` messages above ``after``."""
        sql = (
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE session_id = ? AND seq > ? "
            "ORDER BY seq LIMIT ?"
        )
        rows = await self._run(
            lambda conn: conn.execute(sql, (session_id, after, limit)).fetchall()
        )
        return [_message(row) for row in rows]

    async def find_turn(self, session_id: str, client_message_id: str) -> StoredTurn | None:
        """The stored turn started by this client message id."""
        return await self._run(lambda conn: _find_turn(conn, session_id, client_message_id))

    async def append_turn(self, session: SessionRecord, turn: NewTurn) -> StoredTurn:
        """Both messages and the counters in one transaction."""
        session_id = session.session_id

        def append(conn: sqlite3.Connection) -> StoredTurn:
            with self._write(conn):
                if turn.client_message_id is not None:
                    existing = _find_turn(conn, session_id, turn.client_message_id)
                    if existing is not None:
                        return existing
                row = conn.execute(
                    "SELECT status, message_count FROM sessions WHERE session_id = ?", (session_id,)
                ).fetchone()
                if row is None:
                    raise SessionNotFound(session_id)
                if row["status"] != "active":
                    raise SessionEnded(session_id, row["status"])
                user = StoredMessage(
                    row["message_count"] * 2, "user", turn.user_text, turn.user_at,
                    turn.client_message_id,
                )  # fmt: skip
                reply = StoredMessage(
                    user.seq + 1, "assistant", turn.reply, turn.reply_at, None, turn.usage,
                    turn.provider, turn.model, turn.tools,
                )  # fmt: skip
                conn.executemany(
                    f"INSERT INTO messages (session_id, {_MESSAGE_COLUMNS}) "
                    f"VALUES ({_MESSAGE_MARKS})",
                    [_message_row(session_id, user), _message_row(session_id, reply)],
                )
                conn.execute(
                    "UPDATE sessions SET message_count = message_count + 1, last_activity = ?, "
                    "preview = ? WHERE session_id = ?",
                    (turn.reply_at, preview_of(turn.reply), session_id),
                )
                sqlite_usage.add(
                    conn, user_id=session.user_id, session_id=session_id, usage=turn.usage,
                    at=turn.reply_at, turns=1, target=turn.served_by,
                )  # fmt: skip
                return StoredTurn(user, reply)

        return await self._run(append)

    async def load_client_ids(self, session_id: str) -> list[str]:
        """From the messages' unique (session, client_message_id) index."""

        def load(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                "SELECT client_message_id FROM messages "
                "WHERE session_id = ? AND client_message_id IS NOT NULL AND role = 'user'",
                (session_id,),
            ).fetchall()
            return [row[0] for row in rows]

        return await self._run(load)

    async def claim_turn(
        self,
        session: SessionRecord,
        client_message_id: str | None,
        *,
        known_below: int | None = None,
    ) -> TurnClaim | StoredTurn:
        """Seqs are taken inside the write's transaction. The id is read (a local index
        lookup, beside the model call) whatever the caller knows: other processes may share
        the file, and only the write's transaction is exact."""
        if client_message_id is None:
            return TurnClaim()
        stored = await self.find_turn(session.session_id, client_message_id)
        return stored if stored is not None else TurnClaim()

    async def write_turn(
        self, session: SessionRecord, claim: TurnClaim, turn: NewTurn
    ) -> StoredTurn:
        """One transaction, as ``append_turn``."""
        return await self.append_turn(session, turn)

    async def release_turn(
        self, session: SessionRecord, claim: TurnClaim, client_message_id: str | None
    ) -> None:
        """Nothing was reserved."""

    async def end_session(self, session_id: str, *, at: str) -> SessionRecord | None:
        """Set status ended once; later calls leave it as it is."""

        def end(conn: sqlite3.Connection) -> sqlite3.Row | None:
            with self._write(conn):
                conn.execute(
                    "UPDATE sessions SET status = 'ended', ended_at = ? "
                    "WHERE session_id = ? AND status != 'ended'",
                    (at, session_id),
                )
                sql = f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE session_id = ?"
                row: sqlite3.Row | None = conn.execute(sql, (session_id,)).fetchone()
                return row

        row = await self._run(end)
        return _session(row) if row else None

    async def list_user_sessions(
        self,
        user_id: str,
        *,
        status: SessionStatus | None,
        limit: int,
        before: SessionCursor | None = None,
    ) -> list[SessionRecord]:
        """Most recent activity first, optionally only one status, below a cursor."""
        sql = f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE user_id = ?"
        params: tuple[Any, ...] = (user_id,)
        if status is not None:
            sql += " AND status = ?"
            params += (status,)
        if before is not None:
            sql += " AND (last_activity, session_id) < (?, ?)"
            params += (before.last_activity, before.session_id)
        sql += " ORDER BY last_activity DESC, session_id DESC LIMIT ?"
        rows = await self._run(lambda conn: conn.execute(sql, (*params, limit)).fetchall())
        return [_session(row) for row in rows]

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
        """One conditional update of the session row, and the call's counts, in one
        transaction (one commit, so one fsync, per fold)."""

        def update(conn: sqlite3.Connection) -> bool:
            with self._write(conn):
                cursor = conn.execute(
                    "UPDATE sessions SET summary = ?, summary_seq = ? "
                    "WHERE session_id = ? AND summary_seq = ?",
                    (text, seq, session_id, expected_seq),
                )
                if usage is not None:
                    _add_call(conn, session_id, usage)
            return cursor.rowcount == 1

        return await self._run(update)

    async def set_title(
        self,
        session_id: str,
        title: str | None,
        *,
        only_if_unset: bool = False,
        usage: CallUsage | None = None,
    ) -> SessionRecord | None:
        """One conditional update, and the call's counts, in one transaction."""

        def rename(conn: sqlite3.Connection) -> sqlite3.Row | None:
            with self._write(conn):
                sql = "UPDATE sessions SET title = ? WHERE session_id = ?"
                conn.execute(sql + (" AND title IS NULL" if only_if_unset else ""),
                             (title, session_id))  # fmt: skip
                if usage is not None:
                    _add_call(conn, session_id, usage)
                found: sqlite3.Row | None = conn.execute(
                    f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE session_id = ?", (session_id,)
                ).fetchone()
                return found

        row = await self._run(rename)
        return _session(row) if row else None

    async def delete_sessions(self, user_id: str, session_ids: list[str] | None = None) -> int:
        """One transaction, then a truncating checkpoint, so the old pages leave the WAL too."""

        def delete(conn: sqlite3.Connection) -> int:
            with self._write(conn):
                if session_ids is None:
                    rows = conn.execute(
                        "SELECT session_id FROM sessions WHERE user_id = ?", (user_id,)
                    ).fetchall()
                    targets = [row[0] for row in rows]
                else:
                    targets = session_ids
                for sid in targets:
                    conn.execute("DELETE FROM messages WHERE session_id = ?", (sid,))
                    sqlite_usage.erase_session(conn, sid)
                erased = sum(
                    conn.execute(
                        "DELETE FROM sessions WHERE session_id = ? AND user_id = ?", (sid, user_id)
                    ).rowcount
                    for sid in targets
                )
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return erased

        return await self._run(delete)

    async def expire_idle_sessions(self, *, idle_before: str, at: str) -> list[str]:
        """Active sessions idle since before ``idle_before`` become expired."""

        def expire(conn: sqlite3.Connection) -> list[str]:
            with self._write(conn):
                rows = conn.execute(
                    "UPDATE sessions SET status = 'expired', ended_at = ? "
                    "WHERE status = 'active' AND last_activity < ? RETURNING session_id",
                    (at, idle_before),
                ).fetchall()
            return [row[0] for row in rows]

        return await self._run(expire)

    # -- templates ---------------------------------------------------------------------------

    async def load_templates(self) -> dict[str, Any]:
        """Every template document by id."""
        rows = await self._run(
            lambda conn: conn.execute("SELECT template_id, document FROM templates").fetchall()
        )
        return {row[0]: _json_or_none(row[1], f"template {row[0]}") for row in rows}

    async def load_universal_rules(self) -> dict[str, Any] | None:
        """The universal rules document, if stored."""
        row = await self._run(
            lambda conn: conn.execute(
                "SELECT document FROM settings WHERE key = 'universalRules'"
            ).fetchone()
        )
        return _json_or_none(row[0], "universal rules") if row else None

    async def seed(
        self, templates: dict[str, Any], rules: dict[str, Any] | None, *, overwrite: bool
    ) -> SeedReport:
        """Insert missing documents; replace existing ones only with ``overwrite``."""

        def seed(conn: sqlite3.Connection) -> SeedReport:
            report = SeedReport()
            docs = [("templates", "template_id", key, doc) for key, doc in templates.items()]
            if rules is not None:
                docs.append(("settings", "key", "universalRules", rules))
            with self._write(conn):
                for table, column, key, doc in docs:
                    label = key if table == "templates" else "settings/universalRules"
                    exists = conn.execute(
                        f"SELECT 1 FROM {table} WHERE {column} = ?", (key,)
                    ).fetchone()
                    if exists and not overwrite:
                        report.kept.append(label)
                        continue
                    conn.execute(
                        f"INSERT OR REPLACE INTO {table} ({column}, document) VALUES (?, ?)",
                        (key, json.dumps(doc)),
                    )
                    (report.overwritten if exists else report.created).append(label)
            return report

        return await self._run(seed)

    # -- versioned documents and stats -------------------------------------------------------

    async def read_document(self, ref: DocRef) -> dict[str, Any] | None:
        """The stored template or rules document."""
        return await self._run(lambda conn: _read_document(conn, ref))

    async def write_document(
        self, ref: DocRef, change: Change, *, if_match: str | None, source: Source, at: str
    ) -> DocWrite:
        """Check, change, and append history in one transaction."""
        table, column = _DOC_TABLES[ref.kind]

        def write(conn: sqlite3.Connection) -> DocWrite:
            with self._write(conn):
                current = _read_document(conn, ref)
                check_if_match(current, if_match)
                new = change(current)
                row = conn.execute(
                    "SELECT entry FROM document_versions WHERE kind = ? AND key = ? "
                    "ORDER BY number DESC LIMIT 1",
                    (ref.kind, ref.key),
                ).fetchone()
                latest = DocVersion.from_dict(json.loads(row[0])) if row else None
                entries, stored = plan_write(
                    ref, current=current, latest=latest, new=new, source=source, at=at
                )
                conn.executemany(
                    "INSERT OR REPLACE INTO document_versions (kind, key, number, entry) "
                    "VALUES (?, ?, ?, ?)",
                    [(ref.kind, ref.key, e.number, json.dumps(e.as_dict())) for e in entries],
                )
                if stored is None:
                    conn.execute(f"DELETE FROM {table} WHERE {column} = ?", (ref.key,))
                    return DocWrite(None, None)
                conn.execute(
                    f"INSERT OR REPLACE INTO {table} ({column}, document) VALUES (?, ?)",
                    (ref.key, json.dumps(stored)),
                )
                return DocWrite(stored, etag_of(stored))

        return await self._run(write)

    async def list_versions(self, ref: DocRef) -> list[DocVersion]:
        """The history, oldest first."""
        rows = await self._run(
            lambda conn: conn.execute(
                "SELECT entry FROM document_versions WHERE kind = ? AND key = ? ORDER BY number",
                (ref.kind, ref.key),
            ).fetchall()
        )
        return [DocVersion.from_dict(json.loads(row[0])) for row in rows]

    async def add_template_stats(self, deltas: Mapping[str, TemplateCounts]) -> None:
        """Upsert-add every personality's counters, and their shares by target, in one
        transaction."""
        rows = [
            (key, d.sessions, d.turns, d.reply_tokens, d.failed_turns, d.last_used)
            for key, d in deltas.items()
        ]
        shares = [
            (key, *target, share.turns, share.reply_tokens)
            for key, d in deltas.items()
            for target, share in d.by_model.items()
        ]

        def add(conn: sqlite3.Connection) -> None:
            with self._write(conn):
                conn.executemany(
                    "INSERT INTO template_stats VALUES (?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (template_id) DO UPDATE SET "
                    "sessions = sessions + excluded.sessions, turns = turns + excluded.turns, "
                    "reply_tokens = reply_tokens + excluded.reply_tokens, "
                    "failed_turns = failed_turns + excluded.failed_turns, "
                    "last_used = nullif(max(coalesce(last_used, ''), "
                    "coalesce(excluded.last_used, '')), '')",
                    rows,
                )
                conn.executemany(
                    "INSERT INTO template_stats_by_model VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (template_id, provider, model) DO UPDATE SET "
                    "turns = turns + excluded.turns, "
                    "reply_tokens = reply_tokens + excluded.reply_tokens",
                    shares,
                )

        await self._run(add)

    async def load_template_stats(self) -> dict[str, TemplateCounts]:
        """Every row of the stats table, with the personality's shares by target."""
        return await self._run(_load_template_stats)

    # -- usage -------------------------------------------------------------------------------

    async def add_usage(
        self,
        user_id: str,
        session_id: str,
        usage: Usage,
        *,
        at: str,
        target: Target | None = None,
    ) -> None:
        """A background call's tokens and one call, on the user's day and the session (and
        ``target``'s share of both), in one transaction."""

        def add(conn: sqlite3.Connection) -> None:
            with self._write(conn):
                _add_call(conn, session_id, CallUsage(user_id, usage, at, target))

        await self._run(add)

    async def load_usage(
        self, user_id: str, *, since_day: str, until_day: str, by_model: bool = False
    ) -> list[DayUsage]:
        """The user's rows of ``usage_daily`` in the range, oldest first (and, with
        ``by_model``, those of ``usage_daily_by_model``)."""
        return await self._run(
            lambda conn: sqlite_usage.load(conn, user_id, since_day, until_day, by_model=by_model)
        )


def _add_call(conn: sqlite3.Connection, session_id: str, call: CallUsage) -> None:
    """A background call's tokens and one call, inside the caller's transaction."""
    sqlite_usage.add(
        conn, user_id=call.user_id, session_id=session_id, usage=call.usage, at=call.at,
        calls=1, target=call.target,
    )  # fmt: skip


def _migrate(conn: sqlite3.Connection) -> None:
    conn.executescript(_SCHEMA)
    conn.executescript(sqlite_usage.USAGE_SCHEMA)
    for table, columns in _ADDED_COLUMNS.items():
        have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        for name, kind in columns.items():
            if name not in have:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
    for statement in _ADDED_INDEXES:
        conn.execute(statement)


def _read_document(conn: sqlite3.Connection, ref: DocRef) -> dict[str, Any] | None:
    table, column = _DOC_TABLES[ref.kind]
    row = conn.execute(f"SELECT document FROM {table} WHERE {column} = ?", (ref.key,)).fetchone()
    document = _json_or_none(row[0], f"{ref.kind} {ref.key}") if row else None
    return document if isinstance(document, dict) else None


def _json_or_none(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        logger.error("stored %s is not valid JSON; ignoring it", what)
        return None


def _find_turn(
    conn: sqlite3.Connection, session_id: str, client_message_id: str
) -> StoredTurn | None:
    rows = conn.execute(
        f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE session_id = ? AND seq IN ("
        "SELECT seq FROM messages WHERE session_id = ? AND client_message_id = ? AND role = 'user'"
        " UNION SELECT seq + 1 FROM messages"
        " WHERE session_id = ? AND client_message_id = ? AND role = 'user') ORDER BY seq",
        (session_id, session_id, client_message_id, session_id, client_message_id),
    ).fetchall()
    if len(rows) != 2:
        return None
    return StoredTurn(_message(rows[0]), _message(rows[1]), created=False)


def _session(row: sqlite3.Row, *, shares: tuple[ModelUsage, ...] = ()) -> SessionRecord:
    fields = dict(zip(row.keys(), row, strict=True))
    record = SessionRecord.from_fields(fields)
    record.usage_totals = sqlite_usage.totals_of(fields, shares)
    return record


def _load_template_stats(conn: sqlite3.Connection) -> dict[str, TemplateCounts]:
    rows = conn.execute("SELECT * FROM template_stats").fetchall()
    totals = {row["template_id"]: TemplateCounts.from_dict(dict(row)) for row in rows}
    for row in conn.execute("SELECT * FROM template_stats_by_model").fetchall():
        counts = totals.setdefault(row["template_id"], TemplateCounts())
        target = (row["provider"], row["model"])
        counts.served(target, turns=row["turns"], reply_tokens=row["reply_tokens"])
    return totals


def _fallbacks_json(fallbacks: tuple[tuple[str, str], ...]) -> str | None:
    return json.dumps([{"provider": p, "model": m} for p, m in fallbacks]) if fallbacks else None


def _message(row: sqlite3.Row) -> StoredMessage:
    usage = Usage.from_dict(json.loads(row["usage"])) if row["usage"] else None
    return StoredMessage(
        row["seq"], row["role"], row["content"], row["timestamp"], row["client_message_id"], usage,
        row["provider"], row["model"], tool_uses(row["tools"]),
    )  # fmt: skip


def _message_row(session_id: str, message: StoredMessage) -> tuple[Any, ...]:
    usage = json.dumps(message.usage.as_dict()) if message.usage else None
    tools = json.dumps([use.as_dict() for use in message.tools]) if message.tools else None
    return (
        session_id, message.seq, message.role, message.content, message.timestamp,
        message.client_message_id, usage, message.provider, message.model, tools,
    )  # fmt: skip
