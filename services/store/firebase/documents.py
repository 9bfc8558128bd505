"""The Firebase store's authoring side: versioned templates and rules, and personality stats.

    /templates/{id}, /settings/universalRules        the current documents (console-editable)
    /templateVersions/{id}/v{n:06d}                  {number, document, saved_at, source}
    /settingsVersions/universalRules/v{n:06d}        the same, for the universal rules
    /templateStats/{id}                              {sessions, turns, reply_tokens, ...}
    /templateStatsByModel/{id}/{provider%2Fmodel}    {turns, reply_tokens}: a route target's share

A write is a conditional PUT on the document (its ETag, so two authors or instances never
overwrite each other unseen), then one update appending its history entries. If that second
request fails, the next write records the document as it then finds it, so history heals.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from firebase_admin import db

from services.core.errors import StoreUnavailable
from services.core.provider_config import target_key, target_of_key
from services.core.records import SeedReport, TemplateCounts
from services.store.firebase.connection import FirebaseConnection
from services.store.firebase.rtdb_keys import decode_key, encode_key
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

_CAS_ATTEMPTS = 25
_SHARES = "templateStatsByModel"


class FirebaseDocuments(FirebaseConnection):
    """``DocumentStore``: templates and rules (read only when changed), their history, stats."""

    def _init_documents(self) -> None:
        # The last (value, ETag) read of the templates and of the rules.
        self._templates: tuple[Any, str] | None = None
        self._rules: tuple[Any, str] | None = None

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

    @staticmethod
    def _paths(ref: DocRef) -> tuple[str, str]:
        if ref.kind == "template":
            key = encode_key(ref.key)
            return f"templates/{key}", f"templateVersions/{key}"
        return f"settings/{ref.key}", f"settingsVersions/{ref.key}"

    async def read_document(self, ref: DocRef) -> dict[str, Any] | None:
        """The stored template or rules document, read now."""
        path, _ = self._paths(ref)
        data = await self._run(lambda: self._ref(path).get())
        return data if isinstance(data, dict) else None

    async def write_document(
        self, ref: DocRef, change: Change, *, if_match: str | None, source: Source, at: str
    ) -> DocWrite:
        """Compare-and-set the document on its ETag, then append the history."""
        path, versions_path = self._paths(ref)

        def write() -> DocWrite:
            document, versions = self._ref(path), self._ref(versions_path)
            for _ in range(_CAS_ATTEMPTS):
                raw, etag = document.get(etag=True)
                current = raw if isinstance(raw, dict) else None
                check_if_match(current, if_match)
                new = change(current)
                last = versions.order_by_key().limit_to_last(1).get() or {}
                latest = next((DocVersion.from_dict(v) for v in last.values()), None)
                entries, stored = plan_write(
                    ref, current=current, latest=latest, new=new, source=source, at=at
                )
                if stored is None:
                    _append(versions, entries)
                    document.delete()
                    return DocWrite(None, None)
                written, _, _ = document.set_if_unchanged(etag, stored)
                if written:
                    _append(versions, entries)
                    return DocWrite(stored, etag_of(stored))
            raise StoreUnavailable("Too many concurrent writes to one document; try again")

        result: DocWrite = await self._run(write)
        return result

    async def list_versions(self, ref: DocRef) -> list[DocVersion]:
        """The history, oldest first."""
        _, versions_path = self._paths(ref)
        data = await self._run(lambda: self._ref(versions_path).get()) or {}
        entries = [DocVersion.from_dict(v) for v in data.values() if isinstance(v, dict)]
        return sorted(entries, key=lambda entry: entry.number)

    async def add_template_stats(self, deltas: Mapping[str, TemplateCounts]) -> None:
        """Server-side increments for every personality and its shares by target, in one
        multi-path update."""
        updates: dict[str, Any] = {}
        for template_id, delta in deltas.items():
            base = f"templateStats/{encode_key(template_id)}"
            for name, value in delta.as_dict().items():
                if name == "last_used":
                    if value:
                        updates[f"{base}/last_used"] = value
                elif value:
                    updates[f"{base}/{name}"] = _increment(value)
            updates.update(_share_updates(template_id, delta))
        if updates:
            await self._run(lambda: self._ref("/").update(updates))

    def watch_documents(self, changed: Callable[[], Awaitable[None]]) -> None:
        """Nothing to hear: the scheduled refresh reads other instances' edits."""

    async def load_template_stats(self) -> dict[str, TemplateCounts]:
        """Every personality's totals, and their shares by target (two reads side by side)."""
        data, shares = await asyncio.gather(
            self._run(lambda: self._ref("templateStats").get()),
            self._run(lambda: self._ref(_SHARES).get()),
        )
        totals = {
            decode_key(key): TemplateCounts.from_dict(value)
            for key, value in (data or {}).items()
            if isinstance(value, dict)
        }
        for key, node in (shares or {}).items():
            if isinstance(node, dict):
                _add_shares(totals.setdefault(decode_key(key), TemplateCounts()), node)
        return totals


def _increment(value: int) -> dict[str, Any]:
    return {".sv": {"increment": value}}


def _share_updates(template_id: str, delta: TemplateCounts) -> dict[str, Any]:
    """Increments of a personality's shares by target (zeros left out)."""
    updates: dict[str, Any] = {}
    for target, share in delta.by_model.items():
        base = f"{_SHARES}/{encode_key(template_id)}/{encode_key(target_key(target))}"
        for name, value in (("turns", share.turns), ("reply_tokens", share.reply_tokens)):
            if value:
                updates[f"{base}/{name}"] = _increment(value)
    return updates


def _add_shares(counts: TemplateCounts, node: dict[str, Any]) -> None:
    """A ``templateStatsByModel/{id}`` node's shares, added to ``counts``."""
    for key, share in node.items():
        if isinstance(share, dict):
            turns, tokens = (int(share.get(name) or 0) for name in ("turns", "reply_tokens"))
            counts.served(target_of_key(decode_key(key)), turns=turns, reply_tokens=tokens)


def _append(versions: db.Reference, entries: list[DocVersion]) -> None:
    if entries:
        versions.update({f"v{entry.number:06d}": entry.as_dict() for entry in entries})


def _read_if_changed(ref: db.Reference, last: tuple[Any, str] | None) -> tuple[Any, str]:
    if last is None:
        data, etag = ref.get(etag=True)
        return data, etag
    changed, data, etag = ref.get_if_changed(last[1])
    return (data, etag) if changed else last
