"""What a personality reads as: the stored document, typed, with every field it leaves unset
shown at the value a new session would use, and named in ``inherited``.

Stored documents stay as the author wrote them: the defaults are computed on read, never
written, so a personality that inherits the default model follows ``DEFAULT_MODEL``. An edit
form sends back what it read; a value it sends that is only the inherited one is not stored as
a choice (``without_inherited``).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from services.core.provider_config import DEFAULT_PROVIDER
from services.core.settings import Settings
from services.templates.schema import typed_document

# Tolerated in a write body (an edit form sends back what it read), never stored.
INHERITED_FIELD = "inherited"


def is_set(value: Any) -> bool:
    """Whether a stored value is the author's: as on the Realtime Database, which keeps none of
    them, null, an empty list and an empty object are unset."""
    return value is not None and value != [] and value != {}


def inherited_values(
    template_id: str, document: Mapping[str, Any], settings: Settings
) -> dict[str, Any]:
    """The value of each field the document leaves unset, as a new session would take it
    (``TemplateService.snapshot``); unset text without a default reads as ``""`` (none)."""
    name = document.get("name")
    name = name if isinstance(name, str) and name else template_id
    defaults: dict[str, Any] = {
        "name": template_id,
        "title": name,  # what {{personality}} names it
        "description": "",
        "category": "",
        "welcomeMessage": "",
        "model": settings.default_model,
        "temperature": settings.default_temperature,
        "maxTokens": settings.default_max_tokens,
        "presencePenalty": settings.default_presence_penalty,
        "frequencyPenalty": settings.default_frequency_penalty,
        "contextMessages": settings.context_messages,
        "memory": "summary",
        "provider": DEFAULT_PROVIDER,
        "fallbacks": [],
        "tools": [],
        "tags": [],
        "isPublic": True,
        "isDefault": False,
        "variables": {},
    }
    return {key: value for key, value in defaults.items() if not is_set(document.get(key))}


def as_read(template_id: str, document: Mapping[str, Any], settings: Settings) -> dict[str, Any]:
    """The document typed, its unset fields at their effective values, and which those are."""
    typed = {k: v for k, v in typed_document(dict(document)).items() if k != INHERITED_FIELD}
    inherited = inherited_values(template_id, typed, settings)
    return {**typed, **inherited, INHERITED_FIELD: sorted(inherited)}


def without_inherited(
    document: dict[str, Any],
    *,
    sent: Collection[str],
    inherited: Mapping[str, Any],
    named: Any,
) -> dict[str, Any]:
    """The document without the fields that were ``sent`` with only the value they inherit
    (``inherited``: what the author read), so saving a form back keeps them inherited. ``named``
    is the body's own ``inherited`` list: when a client sends one, a field it leaves out is
    kept as a choice, which is how an author pins the current default."""
    listed = set(named) if isinstance(named, list) else None
    dropped = {
        key
        for key in sent
        if key in inherited
        and key in document
        and _same(document[key], inherited[key])
        and (listed is None or key in listed)
    }
    return {key: value for key, value in document.items() if key not in dropped}


def _same(value: Any, default: Any) -> bool:
    # bool is an int in Python: True must not match a default of 1.
    return bool(value == default) and isinstance(value, bool) == isinstance(default, bool)
