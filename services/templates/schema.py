"""The one definition of a valid personality template and of the universal rules.

The authoring API, the seed files and whatever the store holds (authors still edit the Firebase
console) are all checked against these models; ``GET /personalities/schema`` serves them as JSON
Schema. A problem is reported the way FastAPI reports a validation error: ``{type, loc, msg}``
with ``loc`` naming the field by its camelCase name.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)

from services.core.errors import InvalidInput
from services.core.provider_config import NAME_PATTERN as PROVIDER_NAME_PATTERN
from services.core.provider_config import TargetConfig
from services.core.tool_config import IMAGES_SERVER, TOOL_PATTERN, TOOLS_MAX
from services.templates.variables import BUILT_INS, placeholders

# Limits, named once; the docs (docs/authoring.md) list the same numbers.
ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
# A name that makes a valid id (lower-cased, spaces as -): what creating a personality needs.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9 _-]{0,63}$"
RESERVED_IDS = frozenset({"schema", "problems", "preview", "validate"})
NAME_MAX = 64
TITLE_MAX = 80
DESCRIPTION_MAX = 300
CATEGORY_MAX = 40
PROMPT_MIN, PROMPT_MAX = 10, 8000
WELCOME_MAX = 500
MODEL_MAX = 100
MAX_TOKENS_MAX = 16384
CONTEXT_MESSAGES_MAX = 100
CONTEXT_TOKENS_MIN, CONTEXT_TOKENS_MAX = 100, 1_000_000
FALLBACKS_MAX = 5
TAGS_MAX, TAG_MAX = 10, 30
VARIABLES_MAX = 20
VARIABLE_NAME_PATTERN = r"^[a-z_][a-z0-9_]{0,31}$"
VARIABLE_LENGTH_MAX = 500
RULES_MAX = 8000
# Fields the service maintains: tolerated in a write body (clients send objects back), ignored
# (``inherited`` tells a write which values read back are only defaults: ``effective.py``).
READ_ONLY_FIELDS = frozenset(
    {"id", "usageCount", "createdAt", "updatedAt", "version", "problems", "inherited"}
)
READ_ONLY_RULES_FIELDS = frozenset({"updatedAt", "revision"})

Problem = dict[str, Any]
Tag = Annotated[str, StringConstraints(min_length=1, max_length=TAG_MAX, strip_whitespace=True)]
VariableName = Annotated[str, StringConstraints(pattern=VARIABLE_NAME_PATTERN)]


class Variable(BaseModel):
    """A value a client may pass when it starts a session, used as ``{{name}}``."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid", frozen=True)

    default: str = Field("", max_length=VARIABLE_LENGTH_MAX, description="Used when not passed")
    max_length: int = Field(
        100, alias="maxLength", ge=1, le=VARIABLE_LENGTH_MAX, description="Longest value accepted"
    )
    description: str | None = Field(None, max_length=DESCRIPTION_MAX)


class Template(BaseModel):
    """A personality as template authors write it (camelCase, as in Firebase)."""

    model_config = ConfigDict(
        populate_by_name=True,
        extra="ignore",
        frozen=True,
        title="Personality template",
        json_schema_extra={"additionalProperties": False},
    )

    name: str | None = Field(None, min_length=1, max_length=NAME_MAX)
    title: str | None = Field(None, max_length=TITLE_MAX)
    description: str = Field("", max_length=DESCRIPTION_MAX, description="Shown in pickers")
    category: str | None = Field(None, max_length=CATEGORY_MAX)
    personality_prompt: str = Field(
        alias="personalityPrompt",
        min_length=PROMPT_MIN,
        max_length=PROMPT_MAX,
        description="The personality's instructions; may use {{placeholders}}",
    )
    welcome_message: str | None = Field(
        None, alias="welcomeMessage", max_length=WELCOME_MAX, description="May use placeholders"
    )
    model: str | None = Field(None, min_length=1, max_length=MODEL_MAX, pattern=r"^\S+$")
    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int | None = Field(None, alias="maxTokens", ge=1, le=MAX_TOKENS_MAX)
    presence_penalty: float | None = Field(None, alias="presencePenalty", ge=-2, le=2)
    frequency_penalty: float | None = Field(None, alias="frequencyPenalty", ge=-2, le=2)
    context_messages: int | None = Field(
        None, alias="contextMessages", ge=0, le=CONTEXT_MESSAGES_MAX
    )
    context_tokens: int | None = Field(
        None,
        alias="contextTokens",
        ge=CONTEXT_TOKENS_MIN,
        le=CONTEXT_TOKENS_MAX,
        description="Budget for history in each prompt, in tokens: the most recent messages "
        "that fit (and at most contextMessages). Unset: contextMessages alone",
    )
    memory: Literal["summary", "window"] | None = Field(
        None,
        description="summary (the default): messages that leave the window are folded into a "
        "stored memory sent with every prompt; window: they are forgotten",
    )
    provider: str | None = Field(
        None,
        pattern=PROVIDER_NAME_PATTERN,
        description="A provider of LLM_PROVIDERS; unset: default",
    )
    fallbacks: list[TargetConfig] = Field(
        [], max_length=FALLBACKS_MAX, description="Tried in order when the provider fails"
    )
    tools: list[Annotated[str, StringConstraints(pattern=TOOL_PATTERN)]] = Field(
        [],
        max_length=TOOLS_MAX,
        description='MCP tools it may call: "server/tool", or "server/*" for all of a server\'s '
        "(servers are MCP_SERVERS)",
    )
    images: bool = Field(
        True,
        description="Whether users may send images to it (docs/images.md); false: a message "
        "with images is 422 images_not_supported",
    )
    tags: list[Tag] = Field(
        [], max_length=TAGS_MAX, description="Empty and blank tags are dropped, not refused"
    )
    is_public: bool = Field(True, alias="isPublic")
    is_default: bool = Field(False, alias="isDefault")
    variables: dict[VariableName, Variable] = Field(
        {}, max_length=VARIABLES_MAX, description="Variables a client may set at session start"
    )
    version: int | None = Field(None, ge=1, description="Set by the service on every write")
    created_at: str | None = Field(None, alias="createdAt", description="Set by the service")
    updated_at: str | None = Field(None, alias="updatedAt", description="Set by the service")

    @field_validator("tags", mode="before")
    @classmethod
    def _drop_blank_tags(cls, tags: Any) -> Any:
        return without_blank_tags(tags)


# Fields a form sends as text that are numbers or booleans (by their JSON names).
TYPED_FIELDS = frozenset(
    field.alias or name
    for name, field in Template.model_fields.items()
    if {int, float, bool} & set(get_args(field.annotation) or (field.annotation,))
)


def without_blank_tags(tags: Any) -> Any:
    """Tags without the empty and blank ones, which a form sends for a field left empty (the
    original backend took them); anything but a list is left for validation to refuse."""
    if not isinstance(tags, list):
        return tags
    return [tag for tag in tags if not (isinstance(tag, str) and not tag.strip())]


def with_tags_cleaned(doc: Any) -> Any:
    """A template document as it is stored: ``tags`` without the empty and blank ones."""
    if not isinstance(doc, dict) or not isinstance(doc.get("tags"), list):
        return doc
    return {**doc, "tags": without_blank_tags(doc["tags"])}


def typed_document(doc: Any) -> Any:
    """A valid template document with each value in the type the schema gives it: the lax
    coercion the original backend applied (``"1.3"``, ``"200"``, ``"true"``) is stored and
    read typed. An invalid document is given back as it is (its problems say why)."""
    if not isinstance(doc, dict):
        return doc
    try:
        template = Template.model_validate(doc)
    except ValidationError:
        return doc
    typed = template.model_dump(mode="json", by_alias=True, exclude_unset=True)
    return {**doc, **{key: typed[key] for key in doc if key in typed}}


class UniversalRules(BaseModel):
    """Rules put before every personality prompt."""

    model_config = ConfigDict(
        extra="ignore",
        frozen=True,
        title="Universal rules",
        json_schema_extra={"additionalProperties": False},
    )

    rules: str = Field("", max_length=RULES_MAX)
    version: str | None = Field(None, max_length=40, description="The authors' own label")
    enabled: bool = True
    revision: int | None = Field(None, ge=1, description="Set by the service on every write")
    updated_at: str | None = Field(None, alias="updatedAt", description="Set by the service")


EDITABLE_TEMPLATE_FIELDS = frozenset(
    field.alias or name
    for name, field in Template.model_fields.items()
    if (field.alias or name) not in READ_ONLY_FIELDS
)
EDITABLE_RULES_FIELDS = frozenset({"rules", "version", "enabled"})


def template_problems(doc: Any, *, strict: bool = False) -> list[Problem]:
    """Everything wrong with a template document; ``strict`` also flags unknown fields (writes).
    Placeholders are checked even when other fields are bad, so one answer names them all."""
    try:
        template = Template.model_validate(doc)
        problems = _variable_problems(template)
    except ValidationError as exc:
        problems = _problems(exc)
    problems += _placeholder_problems(doc, problems)
    if strict:
        problems += _unknown_fields(doc, EDITABLE_TEMPLATE_FIELDS | READ_ONLY_FIELDS)
    return problems


def provider_problems(doc: Any, known: frozenset[str]) -> list[Problem]:
    """The providers a template names that are not configured (``LLM_PROVIDERS``)."""
    if not isinstance(doc, dict):
        return []
    named: list[tuple[list[Any], Any]] = [(["provider"], doc.get("provider"))]
    fallbacks = doc.get("fallbacks")
    if isinstance(fallbacks, list):
        named += [
            (["fallbacks", index, "provider"], item.get("provider"))
            for index, item in enumerate(fallbacks)
            if isinstance(item, dict)
        ]
    return [
        {
            "type": "unknown_provider",
            "loc": loc,
            "msg": f"No provider named {name!r} is configured; known: {', '.join(sorted(known))}",
        }
        for loc, name in named
        if isinstance(name, str) and name not in known
    ]


def tool_problems(doc: Any, known: frozenset[str]) -> list[Problem]:
    """The tools a template names that this service does not have: an MCP server that is not
    configured (``MCP_SERVERS``), or a built-in image tool other than ``images/generate``."""
    tools = doc.get("tools") if isinstance(doc, dict) else None
    if not isinstance(tools, list):
        return []
    problems: list[Problem] = []
    for index, pattern in enumerate(tools):
        if not isinstance(pattern, str) or "/" not in pattern:
            continue
        server, tool = pattern.split("/", 1)
        if server == IMAGES_SERVER and tool not in ("generate", "*"):
            message, kind = f"The built-in {IMAGES_SERVER!r} tool is: generate", "unknown_tool"
        elif server != IMAGES_SERVER and server not in known:
            names = ", ".join(sorted(known)) or "none"
            message = f"No MCP server named {server!r} is configured; known: {names}"
            kind = "unknown_tool_server"
        else:
            continue
        problems.append({"type": kind, "loc": ["tools", index], "msg": message})
    return problems


def rules_problems(doc: Any, *, strict: bool = False) -> list[Problem]:
    """Everything wrong with a universal rules document."""
    try:
        UniversalRules.model_validate(doc)
    except ValidationError as exc:
        return _problems(exc)
    return _unknown_fields(doc, EDITABLE_RULES_FIELDS | READ_ONLY_RULES_FIELDS) if strict else []


def parse_rules(doc: Any, *, strict: bool = False) -> UniversalRules:
    """The universal rules, or ``InvalidInput`` naming every bad field."""
    problems = rules_problems(doc, strict=strict)
    if problems:
        raise InvalidInput("The universal rules are not valid", problems=problems)
    return UniversalRules.model_validate(doc)


def template_id_for(name: str) -> str:
    """Chatify's rule: the name, lower-cased, with spaces turned into ``-``."""
    return name.strip().lower().replace(" ", "-")


def id_problems(template_id: str, *, field: str = "name") -> list[Problem]:
    """Whether an id is one the API can serve (a valid key, not a reserved path)."""
    if re.match(ID_PATTERN, template_id) and template_id not in RESERVED_IDS:
        return []
    why = (
        "is reserved"
        if template_id in RESERVED_IDS
        else "must be 1-64 characters of a-z 0-9 _ - (after lower-casing, spaces as -)"
    )
    return [{"type": "invalid_id", "loc": [field], "msg": f"The id {template_id!r} {why}"}]


def with_prefix(problems: list[Problem], *prefix: str) -> list[Problem]:
    """The same problems located under ``prefix`` (e.g. ``body``)."""
    return [{**p, "loc": [*prefix, *p["loc"]]} for p in problems]


def _problems(exc: ValidationError) -> list[Problem]:
    return [
        {"type": e["type"], "loc": list(e["loc"]), "msg": e["msg"]}
        for e in exc.errors(include_url=False, include_input=False, include_context=False)
    ]


def _unknown_fields(doc: Any, known: frozenset[str]) -> list[Problem]:
    if not isinstance(doc, dict):
        return []
    return [
        {"type": "extra_forbidden", "loc": [key], "msg": f"Unknown field {key!r}"}
        for key in doc
        if key not in known
    ]


def _variable_problems(template: Template) -> list[Problem]:
    problems = [
        {
            "type": "variable_shadows_built_in",
            "loc": ["variables", name],
            "msg": f"{name!r} is a built-in placeholder; pick another name",
        }
        for name in sorted(set(template.variables) & BUILT_INS)
    ]
    for name, variable in sorted(template.variables.items()):
        if len(variable.default) > variable.max_length:
            problems.append(
                {
                    "type": "string_too_long",
                    "loc": ["variables", name, "default"],
                    "msg": f"The default is longer than maxLength ({variable.max_length})",
                }
            )
    return problems


def _placeholder_problems(doc: Any, found: list[Problem]) -> list[Problem]:
    """Unknown ``{{placeholders}}`` in the prompt and greeting (fields not already reported)."""
    if not isinstance(doc, dict):
        return []
    declared = doc.get("variables")
    known = BUILT_INS | (set(declared) if isinstance(declared, dict) else set())
    reported = {p["loc"][0] for p in found if p["loc"]}
    problems: list[Problem] = []
    for field in ("personalityPrompt", "welcomeMessage"):
        text = doc.get(field)
        if not isinstance(text, str) or field in reported:
            continue
        for name in sorted(placeholders(text) - known):
            problems.append(
                {
                    "type": "unknown_placeholder",
                    "loc": [field],
                    "msg": f"Unknown placeholder {{{{{name}}}}}: declare it under variables "
                    f"or use a built-in ({', '.join(sorted(BUILT_INS))})",
                }
            )
    return problems


def template_json_schema() -> dict[str, Any]:
    """The template as JSON Schema, with the fields the service adds marked read-only."""
    schema = Template.model_json_schema(by_alias=True)
    properties = schema["properties"]
    for name in ("version", "createdAt", "updatedAt"):
        properties[name]["readOnly"] = True
    properties["id"] = {"type": "string", "pattern": ID_PATTERN, "readOnly": True}
    properties["usageCount"] = {"type": "integer", "readOnly": True}
    properties["problems"] = {"type": "array", "readOnly": True}
    properties["inherited"] = {
        "type": "array",
        "items": {"type": "string"},
        "readOnly": True,
        "description": "The fields read at their default, not stored (sent back, it keeps "
        "them inherited)",
    }
    return schema


def draft_json_schema(*, create: bool = False) -> dict[str, Any]:
    """The template schema for a request body, self-contained (its ``$defs`` inlined, since an
    OpenAPI document resolves ``$ref`` from its own root). Creating also needs a ``name`` that
    makes a valid id."""
    schema = template_json_schema()
    definitions = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return inline(definitions[ref.removeprefix("#/$defs/")])
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(item) for item in node]
        return node

    draft: dict[str, Any] = inline(schema)
    if create:
        draft["required"] = ["name", *draft.get("required", [])]
        draft["properties"]["name"] = {
            "type": "string",
            "pattern": NAME_PATTERN,
            "description": "The id is the name, lower-cased, with spaces turned into -",
        }
    return draft
