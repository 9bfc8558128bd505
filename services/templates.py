"""Personality templates: validated, cached, refreshed from the store, and seeded from files."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.errors import TemplateNotFound
from services.models import Sampling
from services.settings import Settings
from services.store.base import Store

logger = logging.getLogger(__name__)
T = TypeVar("T")


class Template(BaseModel):
    """A personality as template authors write it (camelCase, as in Firebase)."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)

    name: str | None = None
    title: str | None = None
    description: str = ""
    category: str | None = None
    personality_prompt: str = Field(alias="personalityPrompt", min_length=1)
    welcome_message: str | None = Field(None, alias="welcomeMessage")
    model: str | None = Field(None, min_length=1)
    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int | None = Field(None, alias="maxTokens", ge=1)
    presence_penalty: float | None = Field(None, alias="presencePenalty", ge=-2, le=2)
    frequency_penalty: float | None = Field(None, alias="frequencyPenalty", ge=-2, le=2)
    context_messages: int | None = Field(None, alias="contextMessages", ge=0, le=1000)
    tags: list[str] = []
    is_public: bool = Field(True, alias="isPublic")
    is_default: bool = Field(False, alias="isDefault")


class UniversalRules(BaseModel):
    """Rules prepended to every personality prompt."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    rules: str = ""
    version: str | None = None
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class SessionTemplate:
    """What a new session snapshots from its template."""

    template_id: str
    system_prompt: str
    sampling: Sampling
    context_messages: int
    welcome_message: str | None


class TemplateService:
    """The current templates, kept in memory and refreshed from the store."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self._store = store
        self._settings = settings
        self._templates: dict[str, Template] = {}
        self._rules = UniversalRules(enabled=False)
        self._raw_seen: dict[str, Any] = {}

    @property
    def count(self) -> int:
        """How many valid templates are loaded."""
        return len(self._templates)

    async def seed_if_empty(self) -> None:
        """On a store with no templates, load the seed files into it."""
        if await self._store.load_templates():
            return
        templates, rules = read_seed_dir(self._settings.templates_seed_dir)
        report = await self._store.seed(templates, rules, overwrite=False)
        logger.info("seeded empty store with templates: %s", ", ".join(report.created))

    async def refresh(self) -> None:
        """Reload from the store; a malformed template keeps its last good version."""
        raw_templates = await self._store.load_templates()
        raw_rules = await self._store.load_universal_rules()
        templates: dict[str, Template] = {}
        for template_id, raw in raw_templates.items():
            template = self._validate(template_id, raw)
            if template is not None:
                templates[template_id] = template
        self._templates = templates
        if raw_rules is None:
            self._rules = UniversalRules(enabled=False)
        else:
            try:
                self._rules = UniversalRules.model_validate(raw_rules)
            except ValidationError as exc:
                logger.error("universal rules are malformed (%s); keeping the last good ones", exc)

    def _validate(self, template_id: str, raw: Any) -> Template | None:
        previous = self._templates.get(template_id)
        if raw is self._raw_seen.get(template_id) and previous is not None:
            return previous
        try:
            template = Template.model_validate(raw)
        except ValidationError as exc:
            errors = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            kept = "keeping the last good version" if previous else "skipping it"
            logger.error("template %r is malformed (%s); %s", template_id, errors, kept)
            return previous
        self._raw_seen[template_id] = raw
        return template

    def public(self) -> dict[str, str]:
        """Public template ids with their descriptions."""
        return {key: t.description for key, t in sorted(self._templates.items()) if t.is_public}

    def resolve(self, template_id: str | None) -> SessionTemplate:
        """The snapshot a new session takes; the default template when no id is given."""
        template_id = template_id or self._default_id()
        template = self._templates.get(template_id)
        if template is None:
            raise TemplateNotFound(f"Template {template_id!r} not found")
        s = self._settings
        return SessionTemplate(
            template_id=template_id,
            system_prompt=self._compose(template),
            sampling=Sampling(
                model=template.model or s.default_model,
                temperature=_pick(template.temperature, s.default_temperature),
                max_tokens=template.max_tokens or s.default_max_tokens,
                presence_penalty=_pick(template.presence_penalty, s.default_presence_penalty),
                frequency_penalty=_pick(template.frequency_penalty, s.default_frequency_penalty),
            ),
            context_messages=_pick(template.context_messages, s.context_messages),
            welcome_message=template.welcome_message,
        )

    def _default_id(self) -> str:
        if self._settings.default_template_id:
            return self._settings.default_template_id
        defaults = sorted(key for key, t in self._templates.items() if t.is_default)
        if not defaults:
            raise TemplateNotFound("No default template is configured; pass template_id")
        return defaults[0]

    def _compose(self, template: Template) -> str:
        if self._rules.enabled and self._rules.rules.strip():
            return f"{self._rules.rules.strip()}\n\n{template.personality_prompt.strip()}"
        return template.personality_prompt.strip()


def _pick(value: T | None, default: T) -> T:
    return default if value is None else value


def read_seed_dir(folder: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Templates (``templates/<id>.json``) and ``universal_rules.json`` from a seed folder."""
    templates = {
        path.stem: json.loads(path.read_text(encoding="utf-8"))
        for path in sorted((folder / "templates").glob("*.json"))
    }
    rules_path = folder / "universal_rules.json"
    rules = json.loads(rules_path.read_text(encoding="utf-8")) if rules_path.exists() else None
    return templates, rules
