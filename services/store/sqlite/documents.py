"""The SQLite store's documents: templates (``templates``), the universal rules
(``settings``), each version of both (``document_versions``), and personality stats
(``template_stats``, ``template_stats_by_model``)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from services.core.records import SeedReport, TemplateCounts
from services.store.sqlite.connection import SQLiteConnection, transaction
from services.store.sqlite.schema import json_or_none
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

# Where each kind of versioned document lives: table and key column.
_DOC_TABLES = {"template": ("templates", "template_id"), "rules": ("settings", "key")}


class SQLiteDocuments(SQLiteConnection):
    """``DocumentStore`` on the document tables."""

    async def load_templates(self) -> dict[str, Any]:
        """Every template document by id."""
        rows = await self._run(
            lambda conn: conn.execute("SELECT template_id, document FROM templates").fetchall()
        )
        return {row[0]: json_or_none(row[1], f"template {row[0]}") for row in rows}

    async def load_universal_rules(self) -> dict[str, Any] | None:
        """The universal rules document, if stored."""
        row = await self._run(
            lambda conn: conn.execute(
                "SELECT document FROM settings WHERE key = 'universalRules'"
            ).fetchone()
        )
        return json_or_none(row[0], "universal rules") if row else None

    async def seed(
        self, templates: dict[str, Any], rules: dict[str, Any] | None, *, overwrite: bool
    ) -> SeedReport:
        """Insert missing documents; replace existing ones only with ``overwrite``."""

        def seed(conn: sqlite3.Connection) -> SeedReport:
            report = SeedReport()
            docs = [("templates", "template_id", key, doc) for key, doc in templates.items()]
            if rules is not None:
                docs.append(("settings", "key", "universalRules", rules))
            with transaction(conn):
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

        return await self._write(seed)

    async def read_document(self, ref: DocRef) -> dict[str, Any] | None:
        """The stored template or rules document."""
        return await self._run(lambda conn: _read_document(conn, ref))

    async def write_document(
        self, ref: DocRef, change: Change, *, if_match: str | None, source: Source, at: str
    ) -> DocWrite:
        """Check, change, and append history in one transaction."""
        table, column = _DOC_TABLES[ref.kind]

        def write(conn: sqlite3.Connection) -> DocWrite:
            with transaction(conn):
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

        return await self._write(write)

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
            (key, d.sessions, d.turns, d.reply_tokens, d.failed_turns, d.last_used, d.cost_micros)
            for key, d in deltas.items()
        ]
        shares = [
            (key, *target, share.turns, share.reply_tokens)
            for key, d in deltas.items()
            for target, share in d.by_model.items()
        ]

        def add(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                conn.executemany(
                    "INSERT INTO template_stats (template_id, sessions, turns, reply_tokens, "
                    "failed_turns, last_used, cost_micros) VALUES (?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (template_id) DO UPDATE SET "
                    "sessions = sessions + excluded.sessions, turns = turns + excluded.turns, "
                    "reply_tokens = reply_tokens + excluded.reply_tokens, "
                    "failed_turns = failed_turns + excluded.failed_turns, "
                    "cost_micros = cost_micros + excluded.cost_micros, "
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

        await self._write(add)

    def watch_documents(self, changed: Callable[[], Awaitable[None]]) -> None:
        """Nothing to hear: the scheduled refresh reads other instances' edits."""

    async def load_template_stats(self) -> dict[str, TemplateCounts]:
        """Every row of the stats table, with the personality's shares by target."""
        return await self._run(_load_template_stats)


def _read_document(conn: sqlite3.Connection, ref: DocRef) -> dict[str, Any] | None:
    table, column = _DOC_TABLES[ref.kind]
    row = conn.execute(f"SELECT document FROM {table} WHERE {column} = ?", (ref.key,)).fetchone()
    document = json_or_none(row[0], f"{ref.kind} {ref.key}") if row else None
    return document if isinstance(document, dict) else None


def _load_template_stats(conn: sqlite3.Connection) -> dict[str, TemplateCounts]:
    rows = conn.execute("SELECT * FROM template_stats").fetchall()
    totals = {row["template_id"]: TemplateCounts.from_dict(dict(row)) for row in rows}
    for row in conn.execute("SELECT * FROM template_stats_by_model").fetchall():
        counts = totals.setdefault(row["template_id"], TemplateCounts())
        target = (row["provider"], row["model"])
        counts.served(target, turns=row["turns"], reply_tokens=row["reply_tokens"])
    return totals
