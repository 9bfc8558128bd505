"""What template authors do: create, update, delete, validate, list versions and roll back
personalities and the universal rules. Every write is validated by the one schema, versioned by
the store, and takes effect for new sessions on this instance at once (others within
TEMPLATE_REFRESH_SECONDS)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from services.core.errors import DefaultTemplate, InvalidInput, TemplateExists, TemplateNotFound
from services.core.records import Clock, isoformat
from services.store.base import Store
from services.store.versions import (
    RULES,
    Change,
    DocRef,
    DocVersion,
    DocWrite,
    Source,
    etag_of,
    plan_write,
)
from services.templates.effective import INHERITED_FIELD, without_inherited
from services.templates.schema import (
    EDITABLE_RULES_FIELDS,
    READ_ONLY_FIELDS,
    READ_ONLY_RULES_FIELDS,
    TYPED_FIELDS,
    Problem,
    id_problems,
    parse_rules,
    template_id_for,
    template_problems,
    typed_document,
    with_prefix,
    with_tags_cleaned,
)
from services.templates.service import TemplateService

logger = logging.getLogger(__name__)
# Stored explicitly on creation, as Chatify did (sampling fields stay unset: defaults apply).
CREATE_DEFAULTS = {"description": "", "tags": [], "isPublic": True, "isDefault": False}


class Authoring:
    """The authoring operations over the store's versioned documents."""

    def __init__(self, store: Store, templates: TemplateService, *, clock: Clock) -> None:
        self._store = store
        self._templates = templates
        self._clock = clock

    # -- personalities -----------------------------------------------------------------------

    async def read(self, template_id: str) -> DocWrite:
        """A stored personality and its ETag; ``TemplateNotFound`` when there is none."""
        document = await self._store.read_document(DocRef("template", template_id))
        if document is None:
            raise TemplateNotFound(f"Template {template_id!r} not found")
        return DocWrite(document, etag_of(document))

    def validate(self, draft: Any) -> list[Problem]:
        """What is wrong with a draft (located under ``body``, like a 422's detail)."""
        draft = _editable(draft)
        problems = template_problems(draft, strict=True) + self._templates.reference_problems(draft)
        return with_prefix(problems, "body")

    async def create(self, draft: Mapping[str, Any]) -> tuple[str, DocWrite]:
        """A new personality whose id comes from its name; ``TemplateExists`` if taken."""
        name = draft.get("name")
        if not isinstance(name, str) or not name.strip():
            missing = {"type": "missing", "loc": ["body", "name"], "msg": "Field required"}
            raise InvalidInput("The personality needs a name", problems=[missing])
        template_id = template_id_for(name)
        problems = with_prefix(id_problems(template_id), "body") + self.validate(draft)
        if problems:
            raise InvalidInput("The personality is not valid", problems=problems)
        now = isoformat(self._clock())
        sent = _editable(draft)
        defaults = self._templates.inherited_values(template_id, {"name": name})

        def create(current: dict[str, Any] | None) -> dict[str, Any]:
            if current is not None:
                raise TemplateExists(f"A personality with the id {template_id!r} already exists")
            chosen = {k: v for k, v in sent.items() if v is not None}
            document = _checked({**CREATE_DEFAULTS, **chosen, "createdAt": now, "updatedAt": now})
            return without_inherited(
                document,
                sent=sent.keys() - CREATE_DEFAULTS.keys(),
                inherited=defaults,
                named=draft.get(INHERITED_FIELD),
            )

        written = await self._write(DocRef("template", template_id), create, None, "api")
        return template_id, written

    async def update(
        self, template_id: str, changes: Mapping[str, Any], *, if_match: str | None
    ) -> DocWrite:
        """Partial update: the fields sent replace the stored ones, the rest stay; a field sent
        back at the value it inherits stays inherited."""
        unknown = [p for p in self.validate(changes) if p["type"] == "extra_forbidden"]
        now = isoformat(self._clock())
        sent = _editable(changes)

        def update(current: dict[str, Any] | None) -> dict[str, Any]:
            if current is None:
                raise TemplateNotFound(f"Template {template_id!r} not found")
            merged = {k: v for k, v in current.items() if k not in READ_ONLY_FIELDS}
            defaults = self._templates.inherited_values(template_id, merged)  # what was read
            merged.update(sent)
            merged = {k: v for k, v in merged.items() if v is not None}
            stamped = {**merged, "createdAt": current.get("createdAt"), "updatedAt": now}
            providers = with_prefix(self._templates.reference_problems(stamped), "body")
            document = _checked(stamped, also=[*unknown, *providers])
            return without_inherited(
                document, sent=sent, inherited=defaults, named=changes.get(INHERITED_FIELD)
            )

        return await self._write(DocRef("template", template_id), update, if_match, "api")

    async def delete(self, template_id: str, *, if_match: str | None) -> None:
        """Remove a personality (its history stays, so a rollback can restore it)."""
        if self._templates.is_default(template_id):
            raise DefaultTemplate(
                f"{template_id!r} is the default personality; make another the default first"
            )

        def delete(current: dict[str, Any] | None) -> None:
            if current is None:
                raise TemplateNotFound(f"Template {template_id!r} not found")

        await self._write(DocRef("template", template_id), delete, if_match, "api")

    async def versions(self, ref: DocRef) -> list[DocVersion]:
        """A personality's or the rules' history, newest first. A current document the
        history does not hold yet (seeded, or edited in the console) is listed with the number
        and source the next write will record it under."""
        versions = await self._store.list_versions(ref)
        current = await self._store.read_document(ref)
        if not versions and current is None:
            raise TemplateNotFound(f"Template {ref.key!r} not found")
        latest = versions[-1] if versions else None
        pending, _ = plan_write(ref, current=current, latest=latest, new=None, source="api", at="")
        saved_at = (current or {}).get("updatedAt") or ""
        unrecorded = [replace(entry, saved_at=saved_at) for entry in pending]
        return (versions + unrecorded)[::-1]

    async def version(self, ref: DocRef, number: int) -> DocVersion:
        """One entry of the history."""
        for entry in await self.versions(ref):
            if entry.number == number:
                return entry
        raise TemplateNotFound(f"{ref.key!r} has no version {number}")

    async def rollback(self, ref: DocRef, number: int, *, if_match: str | None) -> DocWrite:
        """Publish an earlier version again, as a new version."""
        entry = await self.version(ref, number)
        now = isoformat(self._clock())
        check = _checked if ref.kind == "template" else _checked_rules

        def restore(current: dict[str, Any] | None) -> dict[str, Any]:
            created = (current or entry.document).get("createdAt")
            read_only = READ_ONLY_FIELDS if ref.kind == "template" else READ_ONLY_RULES_FIELDS
            restored = {k: v for k, v in entry.document.items() if k not in read_only}
            extra = {"createdAt": created} if ref.kind == "template" else {}
            return check({**restored, **extra, "updatedAt": now})

        return await self._write(ref, restore, if_match, "rollback")

    # -- universal rules ---------------------------------------------------------------------

    async def read_rules(self) -> DocWrite:
        """The stored universal rules and their ETag."""
        document = await self._store.read_document(RULES)
        if document is None:
            document = {"rules": "", "enabled": False}
        return DocWrite(document, etag_of(document))

    async def update_rules(self, changes: Mapping[str, Any], *, if_match: str | None) -> DocWrite:
        """Partial update of the universal rules."""
        now = isoformat(self._clock())
        editable = {k: v for k, v in changes.items() if k not in READ_ONLY_RULES_FIELDS}
        parse_rules(editable, strict=True)  # unknown fields and bad types, before any read

        def update(current: dict[str, Any] | None) -> dict[str, Any]:
            base = {k: v for k, v in (current or {}).items() if k in EDITABLE_RULES_FIELDS}
            return _checked_rules({**base, **editable, "updatedAt": now})

        return await self._write(RULES, update, if_match, "api")

    async def _write(
        self, ref: DocRef, change: Change, if_match: str | None, source: Source
    ) -> DocWrite:
        written = await self._store.write_document(
            ref, change, if_match=if_match, source=source, at=isoformat(self._clock())
        )
        logger.info("%s %s written by the authoring API (%s)", ref.kind, ref.key, source)
        await self._templates.refresh()
        return written


def _editable(draft: Any) -> dict[str, Any]:
    """The fields an author may write; a number or boolean sent as an empty or blank string (a
    form's emptied input) is ``None``: unset, as if left out (on an edit, cleared as null is)."""
    if not isinstance(draft, Mapping):
        return {}
    return {
        k: None if k in TYPED_FIELDS and isinstance(v, str) and not v.strip() else v
        for k, v in draft.items()
        if k not in READ_ONLY_FIELDS
    }


def _checked(document: dict[str, Any], *, also: Sequence[Problem] = ()) -> dict[str, Any]:
    """The document if it is a valid template, else ``InvalidInput`` naming every problem
    (located under body), ``also`` included, with its values typed ("1.3" stored as 1.3).
    Fields an author added in the console and the schema does not know are kept as they are."""
    document = with_tags_cleaned(document)
    problems = [*also, *with_prefix(template_problems(document), "body")]
    if problems:
        raise InvalidInput("The personality is not valid", problems=problems)
    typed: dict[str, Any] = typed_document(document)
    return typed


def _checked_rules(document: dict[str, Any]) -> dict[str, Any]:
    parse_rules(document)
    return document
