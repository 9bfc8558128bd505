"""What a store holds, read straight from it (bypassing the service), and the checks the
fault drills make on it: whole turns only, exact counts, no client_message_id twice."""

from __future__ import annotations

import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.harness import Proc
from bench.load import bench_settings
from testkit.postgres_server import PostgresServer


@dataclass(frozen=True)
class Msg:
    """A stored message."""

    seq: int
    role: str
    content: str
    client_message_id: str | None


@dataclass
class Snapshot:
    """Every session's stored history (by seq), message_count and next free seq."""

    histories: dict[str, list[Msg]]
    counts: dict[str, int]
    next_seq: dict[str, int] = field(default_factory=dict)


def sqlite_snapshot(conn: sqlite3.Connection) -> Snapshot:
    """Through an open connection (one that may hold a lock)."""
    counts = dict(conn.execute("SELECT session_id, message_count FROM sessions").fetchall())
    histories: dict[str, list[Msg]] = {sid: [] for sid in counts}
    for sid, seq, role, content, cmid in conn.execute(
        "SELECT session_id, seq, role, content, client_message_id FROM messages "
        "ORDER BY session_id, seq"
    ).fetchall():
        histories.setdefault(sid, []).append(Msg(seq, role, content, cmid))
    return Snapshot(histories, counts, {sid: 2 * count for sid, count in counts.items()})


def read_sqlite(path: Path) -> Snapshot:
    """From a fresh connection."""
    conn = sqlite3.connect(path, timeout=10)
    try:
        return sqlite_snapshot(conn)
    finally:
        conn.close()


def firebase_snapshot(data: Any) -> Snapshot:
    """From the ``/userSessions`` node."""
    data = data or {}
    histories = {
        sid: sorted(
            (
                Msg(m["seq"], m["role"], m["content"], m.get("client_message_id"))
                for m in (node.get("conversation_history") or {}).values()
            ),
            key=lambda m: m.seq,
        )
        for sid, node in data.items()
    }
    counts = {sid: int(node.get("message_count", 0)) for sid, node in data.items()}
    next_seq = {
        sid: int(node["next_seq"].get("next", -1))
        for sid, node in data.items()
        if isinstance(node.get("next_seq"), dict)
    }
    return Snapshot(histories, counts, next_seq)


def read_postgres(server: PostgresServer, url: str) -> Snapshot:
    """With ``psql``, as any client of the database would."""
    database = url.rsplit("/", 1)[1]
    sep = "\x1f"  # unit separator: in no message
    sessions = server.psql("SELECT session_id, message_count FROM sessions", database, sep=sep)
    counts = {sid: int(n) for sid, n in (line.split(sep) for line in sessions.splitlines())}
    histories: dict[str, list[Msg]] = {sid: [] for sid in counts}
    rows = server.psql(
        "SELECT session_id, seq, role, content, coalesce(client_message_id, '') FROM messages "
        "ORDER BY session_id, seq",
        database,
        sep=sep,
    )
    for line in rows.splitlines():
        sid, seq, role, content, cmid = line.split(sep)
        histories.setdefault(sid, []).append(Msg(int(seq), role, content, cmid or None))
    return Snapshot(histories, counts, {sid: 2 * count for sid, count in counts.items()})


def history_problems(snapshot: Snapshot, *, contiguous: bool = True) -> list[str]:
    """Whole turns only (a user message and its reply on adjacent seqs), exact counts, seqs
    0..n-1 (unless ``contiguous`` is off), no client_message_id stored twice."""
    problems = []
    for sid, msgs in snapshot.histories.items():
        seqs = [m.seq for m in msgs]
        if contiguous and seqs != list(range(len(msgs))):
            problems.append(f"{sid}: seqs are not 0..n-1: {seqs}")
        if len(msgs) % 2 or snapshot.counts.get(sid) != len(msgs) // 2:
            problems.append(f"{sid}: message_count {snapshot.counts.get(sid)}, {len(msgs)} stored")
        for user, reply in zip(msgs[::2], msgs[1::2], strict=False):
            if (user.role, reply.role) != ("user", "assistant") or reply.seq != user.seq + 1:
                problems.append(f"{sid}: seqs {user.seq},{reply.seq} are not a whole turn")
            elif reply.content != f"Echo: {user.content}":
                problems.append(f"{sid}: seq {reply.seq} is not the reply to seq {user.seq}")
        ids = Counter(m.client_message_id for m in msgs if m.client_message_id)
        problems += [f"{sid}: {cmid} stored {n} times" for cmid, n in ids.items() if n > 1]
    return problems


class DrillStore:
    """The store under test: settings for service processes, and a way to read it directly."""

    def __init__(
        self,
        kind: str,
        tmp_path: Path,
        rtdb: Proc | None,
        postgres: PostgresServer | None = None,
    ) -> None:
        self.kind = kind
        self.rtdb = rtdb
        self.sqlite_path = tmp_path / "chatify.db"
        self.namespace = ""
        self.postgres = postgres
        self.database_url = postgres.create_database() if postgres is not None else ""

    def settings(self, llm_url: str) -> dict[str, Any]:
        """Service settings on this store (abuse limits raised for load)."""
        if self.postgres is not None:
            return bench_settings(llm_url, None, database_url=self.database_url)
        settings = bench_settings(llm_url, self.rtdb.url if self.rtdb else None)
        if self.rtdb is None:
            settings["sqlite_path"] = str(self.sqlite_path)
        else:
            self.namespace = str(settings["firebase_database_url"]).split("?ns=", 1)[1]
        return settings

    def read(self) -> Snapshot:
        """Everything stored now."""
        if self.postgres is not None:
            return read_postgres(self.postgres, self.database_url)
        if self.rtdb is None:
            return read_sqlite(self.sqlite_path)
        url = f"{self.rtdb.url}/userSessions.json?ns={self.namespace}"
        return firebase_snapshot(httpx.get(url, timeout=10).json())
