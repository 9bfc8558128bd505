"""The current templates, kept in memory, refreshed from the store, and seeded from files."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from services.core.errors import InvalidInput, TemplateNotFound
from services.core.provider_config import DEFAULT_PROVIDER
from services.core.records import Clock, MemoryMode, Sampling, utc_now
from services.core.settings import Settings
from services.store.base import Store
from services.templates.effective import as_read, inherited_values
from services.templates.schema import (
    Problem,
    Template,
    UniversalRules,
    id_problems,
    provider_problems,
    rules_problems,
    template_problems,
    tool_problems,
    typed_document,
    with_tags_cleaned,
)
from services.templates.variables import built_in_values, clean_value, render, zone

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class SessionTemplate:
    """What a new session snapshots from its template."""

    template_id: str
    system_prompt: str
    sampling: Sampling
    context_messages: int
    welcome_message: str | None
    version: int | None = None
    context_tokens: int | None = None
    memory_mode: MemoryMode = "summary"


class TemplateService:
    """The current templates, kept in memory and refreshed from the store."""

    def __init__(self, store: Store, settings: Settings, *, clock: Clock = utc_now) -> None:
        self._store = store
        self._settings = settings
        self._clock = clock
        self._templates: dict[str, Template] = {}
        self._rules = UniversalRules(enabled=False)
        self._raw: dict[str, Any] = {}
        self._problems: dict[str, list[Problem]] = {}
        self._rules_problems: list[Problem] = []

    @property
    def count(self) -> int:
        """How many valid templates are loaded."""
        return len(self._templates)

    @property
    def rules(self) -> UniversalRules:
        """The universal rules in service."""
        return self._rules

    def problems(self) -> dict[str, list[Problem]]:
        """Stored templates that are invalid, with what is wrong (the last good one serves)."""
        return dict(self._problems)

    @property
    def rules_problems(self) -> list[Problem]:
        """What is wrong with the stored universal rules (the last good ones serve)."""
        return self._rules_problems

    def stored(self) -> dict[str, Any]:
        """The raw documents as last read from the store, valid or not, by id."""
        return dict(self._raw)

    def served(self, template_id: str) -> Template | None:
        """The version of a template new sessions get, if any."""
        return self._templates.get(template_id)

    def as_read(self, template_id: str, document: Mapping[str, Any]) -> dict[str, Any]:
        """A stored document as the authoring API reads it: typed, every unset field at the
        value a new session would use, and ``inherited`` naming those."""
        return as_read(template_id, document, self._settings)

    def inherited_values(self, template_id: str, document: Mapping[str, Any]) -> dict[str, Any]:
        """The value each field a document leaves unset reads as."""
        return inherited_values(template_id, document, self._settings)

    def provider_problems(self, doc: Any) -> list[Problem]:
        """The providers a template names that this service does not have."""
        return provider_problems(doc, self._settings.provider_names)

    def reference_problems(self, doc: Any) -> list[Problem]:
        """The providers and MCP servers a template names that this service does not have
        (checked when a template is written; a stored one whose server went away keeps
        working, without that server's tools)."""
        servers = frozenset(self._settings.mcp_servers)
        return self.provider_problems(doc) + tool_problems(doc, servers)

    def budget_models(self) -> set[str]:
        """Models of the personalities with a token budget (their tokenizer is loaded early)."""
        default = self._settings.default_model
        return {t.model or default for t in self._templates.values() if t.context_tokens}

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
        problems: dict[str, list[Problem]] = {}
        for template_id, raw in raw_templates.items():
            template, found = self._validate(template_id, raw)
            if template is not None:
                templates[template_id] = template
            if found:
                problems[template_id] = found
        self._templates, self._problems, self._raw = templates, problems, dict(raw_templates)
        self._refresh_rules(raw_rules)

    def _refresh_rules(self, raw_rules: Any) -> None:
        if raw_rules is None:
            self._rules, self._rules_problems = UniversalRules(enabled=False), []
            return
        self._rules_problems = rules_problems(raw_rules)
        if self._rules_problems:
            logger.error("universal rules are malformed; keeping the last good ones")
            return
        self._rules = UniversalRules.model_validate(raw_rules)

    def _validate(self, template_id: str, raw: Any) -> tuple[Template | None, list[Problem]]:
        previous = self._templates.get(template_id)
        if raw is self._raw.get(template_id) and previous is not None:
            return previous, self._problems.get(template_id, [])
        problems = template_problems(raw) + self.provider_problems(raw)
        if problems:
            errors = "; ".join(f"{'.'.join(map(str, p['loc']))}: {p['msg']}" for p in problems)
            kept = "keeping the last good version" if previous else "skipping it"
            logger.error("template %r is malformed (%s); %s", template_id, errors, kept)
            return previous, problems
        return Template.model_validate(raw), []

    def public(self) -> dict[str, str]:
        """Public template ids with their descriptions."""
        return {key: t.description for key, t in sorted(self._templates.items()) if t.is_public}

    def resolve(
        self,
        template_id: str | None,
        *,
        variables: Mapping[str, str] | None = None,
        timezone: str | None = None,
        public_only: bool = False,
    ) -> SessionTemplate:
        """The snapshot a new session takes; the default template when no id is given.
        ``public_only``: a non-public personality does not exist for this caller."""
        template_id = template_id or self._default_id()
        template = self._templates.get(template_id)
        if template is None or (public_only and not template.is_public):
            raise TemplateNotFound(f"Template {template_id!r} not found")
        return self.snapshot(template_id, template, variables=variables, timezone=timezone)

    def snapshot(
        self,
        template_id: str,
        template: Template,
        *,
        variables: Mapping[str, str] | None = None,
        timezone: str | None = None,
    ) -> SessionTemplate:
        """A template (stored or a draft) as a session would start with it: placeholders
        filled, rules prepended, defaults applied."""
        s = self._settings
        sampling = Sampling(
            model=template.model or s.default_model,
            temperature=_pick(template.temperature, s.default_temperature),
            max_tokens=template.max_tokens or s.default_max_tokens,
            presence_penalty=_pick(template.presence_penalty, s.default_presence_penalty),
            frequency_penalty=_pick(template.frequency_penalty, s.default_frequency_penalty),
            provider=template.provider or DEFAULT_PROVIDER,
            fallbacks=tuple(target.target() for target in template.fallbacks),
            tools=tuple(template.tools),
        )
        values = self._values(template_id, template, sampling.model, variables or {}, timezone)
        welcome = template.welcome_message
        return SessionTemplate(
            template_id=template_id,
            system_prompt=self._compose(render(template.personality_prompt, values)),
            sampling=sampling,
            context_messages=_pick(template.context_messages, s.context_messages),
            welcome_message=render(welcome, values) if welcome is not None else None,
            version=template.version,
            context_tokens=template.context_tokens,
            memory_mode=template.memory or "summary",
        )

    def _values(
        self,
        template_id: str,
        template: Template,
        model: str,
        given: Mapping[str, str],
        timezone: str | None,
    ) -> dict[str, str]:
        problems: list[Problem] = []
        values = {name: variable.default for name, variable in template.variables.items()}
        for name, value in given.items():
            declared = template.variables.get(name)
            loc = ["body", "variables", name]
            if declared is None:
                msg = f"{template_id!r} declares no variable {name!r}"
                problems.append({"type": "undeclared_variable", "loc": loc, "msg": msg})
            elif len(clean_value(value)) > declared.max_length:
                msg = f"At most {declared.max_length} characters"
                problems.append({"type": "string_too_long", "loc": loc, "msg": msg})
            else:
                values[name] = clean_value(value)
        if problems:
            raise InvalidInput("Invalid session variables", problems=problems)
        now = self._clock().astimezone(zone(timezone, self._settings.default_timezone))
        title = template.title or template.name or template_id
        return values | built_in_values(now=now, model=model, personality=title)

    def _default_id(self) -> str:
        if self._settings.default_template_id:
            return self._settings.default_template_id
        defaults = sorted(key for key, t in self._templates.items() if t.is_default)
        if not defaults:
            raise TemplateNotFound("No default template is configured; pass template_id")
        return defaults[0]

    def is_default(self, template_id: str) -> bool:
        """Whether sessions without a template_id get this one."""
        try:
            return self._default_id() == template_id
        except TemplateNotFound:
            return False

    def _compose(self, personality_prompt: str) -> str:
        if self._rules.enabled and self._rules.rules.strip():
            return f"{self._rules.rules.strip()}\n\n{personality_prompt.strip()}"
        return personality_prompt.strip()


def _pick(value: T | None, default: T) -> T:
    return default if value is None else value


def read_seed_dir(folder: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Templates (``templates/<id>.json``) and ``universal_rules.json`` from a seed folder,
    checked by the one schema (``ValueError`` naming every problem) and numbered version 1."""
    templates = {
        path.stem: with_tags_cleaned(json.loads(path.read_text(encoding="utf-8")))
        for path in sorted((folder / "templates").glob("*.json"))
    }
    rules_path = folder / "universal_rules.json"
    rules = json.loads(rules_path.read_text(encoding="utf-8")) if rules_path.exists() else None
    found = [
        f"{key}.json: {'.'.join(map(str, p['loc']))}: {p['msg']}"
        for key, doc in templates.items()
        for p in id_problems(key, field="file name") + template_problems(doc, strict=True)
    ]
    if rules is not None:
        found += [f"universal_rules.json: {p['msg']}" for p in rules_problems(rules, strict=True)]
    if found:
        raise ValueError(f"invalid seed files in {folder}: " + "; ".join(found))
    templates = {key: typed_document(doc) for key, doc in templates.items()}
    for doc in templates.values():
        doc.setdefault("version", 1)
    if rules is not None:
        rules.setdefault("revision", 1)
    return templates, rules
