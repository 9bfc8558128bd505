"""The PostgreSQL store's documents: templates (``templates``), the universal rules
(``settings``), each version of both (``document_versions``), and personality stats
(``template_stats``, ``template_stats_by_model``).

A write runs in one transaction under an advisory lock of its document (two authors or
instances queue, neither overwrites the other unseen) and ends with ``NOTIFY``, which
PostgreSQL delivers on commit to every listening instance (``notify.py``): a running service
serves an edit as soon as it is committed, without polling.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from services.core.records import SeedReport, TemplateCounts
from services.store.postgres.connection import PostgresConnection
from services.store.postgres.notify import CHANNEL
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
_NOTIFY = f"SELECT pg_notify('{CHANNEL}', $1)"


class PostgresDocuments(PostgresConnection):
    """``DocumentStore`` on the document tables."""

    async def load_templates(self) -> dict[str, Any]:
        """Every template document by id."""
        rows = await self._fetch("SELECT template_id, document FROM templates")
        return {row[0]: json.loads(row[1]) for row in rows}

    async def load_universal_rules(self) -> dict[str, Any] | None:
        """The universal rules document, if stored."""
        text = await self._fetchval("SELECT document FROM settings WHERE key = 'universalRules'")
        rules = json.loads(text) if text is not None else None
        return rules if isinstance(rules, dict) else None

    async def seed(
        self, templates: dict[str, Any], rules: dict[str, Any] | None, *, overwrite: bool
    ) -> SeedReport:
        """Insert missing documents; replace existing ones only with ``overwrite``."""
        report = SeedReport()
        docs = [(DocRef("template", key), key, doc) for key, doc in templates.items()]
        if rules is not None:
            docs.append((DocRef("rules", "universalRules"), "settings/universalRules", rules))
        async with self._transaction() as conn:
            for ref, label, doc in docs:
                exists = await _read(conn, ref) is not None
                if exists and not overwrite:
                    report.kept.append(label)
                    continue
                await _store(conn, ref, doc)
                (report.overwritten if exists else report.created).append(label)
            await conn.execute(_NOTIFY, "seed")
        return report

    async def read_document(self, ref: DocRef) -> dict[str, Any] | None:
        """The stored template or rules document."""
        async with self._connection() as conn:
            return await _read(conn, ref)

    async def write_document(
        self, ref: DocRef, change: Change, *, if_match: str | None, source: Source, at: str
    ) -> DocWrite:
        """Check, change, and append history in one transaction, one writer at a time."""
        async with self._transaction() as conn:
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"{ref.kind}:{ref.key}"
            )
            current = await _read(conn, ref)
            check_if_match(current, if_match)
            new = change(current)
            last = await conn.fetchval(
                "SELECT entry FROM document_versions WHERE kind = $1 AND key = $2 "
                "ORDER BY number DESC LIMIT 1",
                ref.kind,
                ref.key,
            )
            latest = DocVersion.from_dict(json.loads(last)) if last is not None else None
            entries, stored = plan_write(
                ref, current=current, latest=latest, new=new, source=source, at=at
            )
            await conn.executemany(
                "INSERT INTO document_versions (kind, key, number, entry) "
                "VALUES ($1, $2, $3, $4::json) ON CONFLICT (kind, key, number) "
                "DO UPDATE SET entry = excluded.entry",
                [(ref.kind, ref.key, e.number, json.dumps(e.as_dict())) for e in entries],
            )
            if stored is None:
                table, column = _DOC_TABLES[ref.kind]
                await conn.execute(f"DELETE FROM {table} WHERE {column} = $1", ref.key)
            else:
                await _store(conn, ref, stored)
            await conn.execute(_NOTIFY, f"{ref.kind}:{ref.key}")
        return DocWrite(stored, etag_of(stored) if stored is not None else None)

    async def list_versions(self, ref: DocRef) -> list[DocVersion]:
        """The history, oldest first."""
        rows = await self._fetch(
            "SELECT entry FROM document_versions WHERE kind = $1 AND key = $2 ORDER BY number",
            ref.kind,
            ref.key,
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
        async with self._transaction() as conn:
            await conn.executemany(
                "INSERT INTO template_stats AS t (template_id, sessions, turns, reply_tokens, "
                "failed_turns, last_used, cost_micros) VALUES ($1, $2, $3, $4, $5, $6, $7) "
                "ON CONFLICT (template_id) DO UPDATE SET "
                "sessions = t.sessions + excluded.sessions, turns = t.turns + excluded.turns, "
                "reply_tokens = t.reply_tokens + excluded.reply_tokens, "
                "failed_turns = t.failed_turns + excluded.failed_turns, "
                "cost_micros = t.cost_micros + excluded.cost_micros, "
                "last_used = nullif(greatest(coalesce(t.last_used, ''), "
                "coalesce(excluded.last_used, '')), '')",
                rows,
            )
            await conn.executemany(
                "INSERT INTO template_stats_by_model AS t VALUES ($1, $2, $3, $4, $5) "
                "ON CONFLICT (template_id, provider, model) DO UPDATE SET "
                "turns = t.turns + excluded.turns, "
                "reply_tokens = t.reply_tokens + excluded.reply_tokens",
                shares,
            )

    async def load_template_stats(self) -> dict[str, TemplateCounts]:
        """Every row of the stats table, with the personality's shares by target."""
        async with self._connection() as conn:
            rows = await conn.fetch("SELECT * FROM template_stats")
            shares = await conn.fetch("SELECT * FROM template_stats_by_model")
        totals = {row["template_id"]: TemplateCounts.from_dict(dict(row.items())) for row in rows}
        for row in shares:
            counts = totals.setdefault(row["template_id"], TemplateCounts())
            target = (row["provider"], row["model"])
            counts.served(target, turns=row["turns"], reply_tokens=row["reply_tokens"])
        return totals


async def _read(conn: Any, ref: DocRef) -> dict[str, Any] | None:
    table, column = _DOC_TABLES[ref.kind]
    text = await conn.fetchval(f"SELECT document FROM {table} WHERE {column} = $1", ref.key)
    document = json.loads(text) if text is not None else None
    return document if isinstance(document, dict) else None


async def _store(conn: Any, ref: DocRef, document: dict[str, Any]) -> None:
    table, column = _DOC_TABLES[ref.kind]
    await conn.execute(
        f"INSERT INTO {table} ({column}, document) VALUES ($1, $2::json) "
        f"ON CONFLICT ({column}) DO UPDATE SET document = excluded.document",
        ref.key,
        json.dumps(document),
    )
