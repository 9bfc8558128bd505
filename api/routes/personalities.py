"""Personalities: what a client may offer (`/chatbot/personalities`), and the authoring API
(`/personalities`, admins only) in the shapes the published Chatify frontend codes against."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Header, Path
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from api.deps import AdminDep, CallerDep, ServicesDep
from api.errors import documented
from api.routes.preview import router as previews
from api.schemas import Personalities
from services.application import Services
from services.core.errors import TemplateNotFound
from services.core.provider_config import Target, target_key
from services.core.records import ModelCounts, TemplateCounts
from services.store.versions import DocRef, DocWrite, etag_of
from services.templates.schema import draft_json_schema, template_json_schema

router = APIRouter(tags=["personalities"])
authoring = APIRouter(prefix="/personalities", tags=["authoring"])

TemplateId = Annotated[str, Path(description="The personality's id", max_length=128)]
IfMatch = Annotated[
    str | None,
    Header(description="An ETag from a read: the write fails with 412 if the document changed"),
]
DRAFT_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": draft_json_schema()}},
    }
}
CREATE_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": draft_json_schema(create=True)}},
    }
}
Draft = Annotated[
    dict[str, Any], Body(description="Personality fields (see /personalities/schema)")
]


@router.get("/chatbot/personalities", response_model=Personalities, responses=documented(401))
async def list_personalities(services: ServicesDep, caller: CallerDep) -> Personalities:
    """Public personalities: id to description (the shape existing Chatify clients read)."""
    return Personalities(personalities=services.templates.public())


class Problem(BaseModel):
    type: str
    loc: list[str | int]
    msg: str


class Personality(BaseModel):
    """A personality as stored, typed, with every field it leaves unset at the value a new
    session would use (named in `inherited`), its id, usage count and validation state."""

    model_config = ConfigDict(extra="allow")

    id: str
    name: str | None = None
    title: str | None = None
    description: str | None = None
    category: str | None = None
    personalityPrompt: Any = None  # camelCase: the contract
    welcomeMessage: Any = None
    model: Any = None
    temperature: Any = None
    maxTokens: Any = None
    presencePenalty: Any = None
    frequencyPenalty: Any = None
    contextMessages: Any = None
    tags: Any = None
    isPublic: Any = None
    isDefault: Any = None
    variables: Any = None
    usageCount: int = Field(0, description="Sessions started with it")
    createdAt: Any = None
    updatedAt: Any = None
    version: Any = Field(None, description="Its number in the history; set on every write")
    problems: list[Problem] = Field(
        [], description="What is wrong with the stored document (then the last good one serves)"
    )
    inherited: list[str] = Field(
        [],
        description="The fields the document leaves unset, read at the value a new session "
        "would use (settings' defaults included). Sent back in a write, a field it names whose "
        "value is unchanged stays inherited",
    )


def _personality(
    services: Services,
    template_id: str,
    document: dict[str, Any],
    *,
    problems: list[Any],
    usage: int,
) -> dict[str, Any]:
    fields = dict.fromkeys(Personality.model_fields)
    read = services.templates.as_read(template_id, document)
    return {**fields, **read, "id": template_id, "usageCount": usage, "problems": problems}


async def _one(
    services: Services, template_id: str, written: DocWrite, status: int
) -> JSONResponse:
    assert written.document is not None
    totals = await services.stats.totals()
    body = _personality(
        services,
        template_id,
        written.document,
        problems=services.templates.problems().get(template_id, []),
        usage=totals.get(template_id, TemplateCounts()).sessions,
    )
    return JSONResponse(body, status_code=status, headers={"ETag": written.etag or ""})


@authoring.get("", response_model=list[Personality], responses=documented(401, 403, 503))
async def list_all(services: ServicesDep, admin: AdminDep) -> list[dict[str, Any]]:
    """Every stored personality (public or not, valid or not), as a JSON array."""
    await services.templates.refresh()
    totals = await services.stats.totals()
    problems = services.templates.problems()
    return [
        _personality(
            services,
            key,
            doc if isinstance(doc, dict) else {},
            problems=problems.get(key, []),
            usage=totals.get(key, TemplateCounts()).sessions,
        )
        for key, doc in sorted(services.templates.stored().items())
    ]


@authoring.post(
    "",
    status_code=201,
    response_model=Personality,
    responses=documented(401, 403, 409, 413, 422, 503),
    openapi_extra=CREATE_BODY,
)
async def create_personality(services: ServicesDep, admin: AdminDep, draft: Draft) -> JSONResponse:
    """Create a personality; its id is the name, lower-cased, spaces turned into `-`."""
    template_id, written = await services.authoring.create(draft)
    return await _one(services, template_id, written, 201)


@authoring.get("/schema", responses=documented(401, 403))
async def get_schema(admin: AdminDep) -> dict[str, Any]:
    """The one definition of a valid personality, as JSON Schema (limits included)."""
    return template_json_schema()


class ProblemReport(BaseModel):
    id: str
    problems: list[Problem]
    serving: Literal["last_good_version", "nothing"] = Field(
        description="What new sessions get meanwhile"
    )


class Problems(BaseModel):
    success: Literal[True] = True
    templates: list[ProblemReport]
    universal_rules: list[Problem] = Field(alias="universalRules")


@authoring.get("/problems", response_model=Problems, responses=documented(401, 403, 503))
async def list_problems(services: ServicesDep, admin: AdminDep) -> Problems:
    """Stored documents that are invalid (e.g. edited in the Firebase console), and why."""
    templates = services.templates
    await templates.refresh()
    reports = [
        ProblemReport(
            id=key,
            problems=[Problem(**p) for p in found],
            serving="last_good_version" if templates.served(key) else "nothing",
        )
        for key, found in sorted(templates.problems().items())
    ]
    rules = [Problem(**p) for p in templates.rules_problems]
    return Problems(templates=reports, universalRules=rules)


class Validation(BaseModel):
    success: Literal[True] = True
    valid: bool
    problems: list[Problem] = Field(description="Located like a 422's detail: ['body', field…]")


@authoring.post(
    "/validate",
    response_model=Validation,
    responses=documented(401, 403, 413, 422),
    openapi_extra=DRAFT_BODY,
)
async def validate_personality(services: ServicesDep, admin: AdminDep, draft: Draft) -> Validation:
    """Check a draft without saving it (the studio's live validation)."""
    problems = services.authoring.validate(draft)
    return Validation(valid=not problems, problems=[Problem(**p) for p in problems])


@authoring.get(
    "/{template_id}", response_model=Personality, responses=documented(401, 403, 404, 503)
)
async def get_personality(
    template_id: TemplateId, services: ServicesDep, admin: AdminDep
) -> JSONResponse:
    """One personality as stored, with its `ETag`."""
    return await _one(services, template_id, await services.authoring.read(template_id), 200)


_WRITE_ERRORS = documented(401, 403, 404, 412, 413, 422, 503)


@authoring.put(
    "/{template_id}", response_model=Personality, responses=_WRITE_ERRORS, openapi_extra=DRAFT_BODY
)
@authoring.patch(
    "/{template_id}", response_model=Personality, responses=_WRITE_ERRORS, openapi_extra=DRAFT_BODY
)
async def update_personality(
    template_id: TemplateId,
    services: ServicesDep,
    admin: AdminDep,
    draft: Draft,
    if_match: IfMatch = None,
) -> JSONResponse:
    """Partial update (Chatify's semantics; PUT and PATCH alike): the fields sent replace the
    stored ones, the rest stay, and `null` clears one."""
    written = await services.authoring.update(template_id, draft, if_match=if_match)
    return await _one(services, template_id, written, 200)


class Deleted(BaseModel):
    success: Literal[True] = True
    message: str


@authoring.delete(
    "/{template_id}", response_model=Deleted, responses=documented(401, 403, 404, 409, 412, 503)
)
async def delete_personality(
    template_id: TemplateId, services: ServicesDep, admin: AdminDep, if_match: IfMatch = None
) -> Deleted:
    """Delete a personality (not the default one). Sessions already started keep their
    snapshot; the history stays, so a rollback can bring it back."""
    await services.authoring.delete(template_id, if_match=if_match)
    return Deleted(message=f"Personality {template_id} deleted")


class VersionSummary(BaseModel):
    version: int
    saved_at: str = Field(alias="savedAt")
    source: Literal["initial", "console", "api", "rollback"]
    current: bool


class Versions(BaseModel):
    success: Literal[True] = True
    versions: list[VersionSummary] = Field(description="Newest first")


class VersionDetail(BaseModel):
    success: Literal[True] = True
    version: int
    saved_at: str = Field(alias="savedAt")
    source: Literal["initial", "console", "api", "rollback"]
    document: dict[str, Any]


async def versions_of(services: Services, ref: DocRef) -> Versions:
    """A document's history, newest first, marking the current one."""
    entries = await services.authoring.versions(ref)
    current = await services.store.read_document(ref)
    return Versions(
        versions=[
            VersionSummary(
                version=e.number,
                savedAt=e.saved_at,
                source=e.source,
                current=current is not None and etag_of(e.document) == etag_of(current),
            )
            for e in entries
        ]
    )


@authoring.get(
    "/{template_id}/versions", response_model=Versions, responses=documented(401, 403, 404, 503)
)
async def list_versions(
    template_id: TemplateId, services: ServicesDep, admin: AdminDep
) -> Versions:
    """Every version of a personality, newest first."""
    return await versions_of(services, DocRef("template", template_id))


@authoring.get(
    "/{template_id}/versions/{number}",
    response_model=VersionDetail,
    responses=documented(401, 403, 404, 503),
)
async def get_version(
    template_id: TemplateId,
    number: Annotated[int, Path(ge=1, le=2**31)],
    services: ServicesDep,
    admin: AdminDep,
) -> VersionDetail:
    """One version, whole."""
    entry = await services.authoring.version(DocRef("template", template_id), number)
    return VersionDetail(
        version=entry.number, savedAt=entry.saved_at, source=entry.source, document=entry.document
    )


class Rollback(BaseModel):
    version: int = Field(ge=1, le=2**31, description="The version to publish again")


@authoring.post(
    "/{template_id}/rollback",
    response_model=Personality,
    responses=documented(401, 403, 404, 412, 422, 503),
)
async def rollback_personality(
    template_id: TemplateId,
    body: Rollback,
    services: ServicesDep,
    admin: AdminDep,
    if_match: IfMatch = None,
) -> JSONResponse:
    """Publish an earlier version again; it becomes a new version."""
    ref = DocRef("template", template_id)
    written = await services.authoring.rollback(ref, body.version, if_match=if_match)
    return await _one(services, template_id, written, 200)


class ModelStats(BaseModel):
    provider: str = Field(description="The provider that answered (`default`: OPENAI_*)")
    model: str = Field(
        description="The model it was asked for, as the personality's route names it "
        "(a reply's own `model` in history may name a dated snapshot of it)"
    )
    turns: int = Field(description="Stored turns it answered")
    reply_tokens: int = Field(alias="replyTokens", description="Completion tokens of those")
    average_reply_tokens: float = Field(alias="averageReplyTokens")

    @classmethod
    def of(cls, target: Target, counts: ModelCounts) -> ModelStats:
        """From one target's share of a personality's counters."""
        average = round(counts.reply_tokens / counts.turns, 1) if counts.turns else 0
        return cls(
            provider=target[0],
            model=target[1],
            turns=counts.turns,
            replyTokens=counts.reply_tokens,
            averageReplyTokens=average,
        )


class PersonalityStats(BaseModel):
    success: Literal[True] = True
    id: str
    sessions: int = Field(description="Sessions started (`usageCount`)")
    turns: int
    average_turns_per_session: float = Field(alias="averageTurnsPerSession")
    average_reply_tokens: float = Field(alias="averageReplyTokens")
    failed_turns: int = Field(alias="failedTurns")
    last_used: str | None = Field(alias="lastUsed")
    cost_micros: int = Field(
        0,
        alias="costMicros",
        description="What its turns cost, in micro-USD (millionths of a US dollar), by the "
        "price table; turns of a model without a price, and those stored before costs were "
        "counted, add 0. Background calls (titles, memory) are the users' (usage routes)",
    )
    by_model: dict[str, ModelStats] = Field(
        alias="byModel",
        description="The turns by the provider and model that answered them, keyed "
        "`provider/model`. Turns stored before this was counted are in `turns` only. "
        "Failed turns are not split (a failure may have tried several)",
    )


@authoring.get(
    "/{template_id}/stats",
    response_model=PersonalityStats,
    responses=documented(401, 403, 404, 503),
)
async def get_personality_stats(
    template_id: TemplateId, services: ServicesDep, admin: AdminDep
) -> PersonalityStats:
    """Usage for authors (counted in memory, flushed every STATS_FLUSH_SECONDS)."""
    totals = await services.stats.totals()
    counts = totals.get(template_id)
    if counts is None:
        if template_id not in services.templates.stored():
            raise TemplateNotFound(f"Template {template_id!r} not found")
        counts = TemplateCounts()
    return PersonalityStats(
        id=template_id,
        sessions=counts.sessions,
        turns=counts.turns,
        averageTurnsPerSession=round(counts.turns / counts.sessions, 2) if counts.sessions else 0,
        averageReplyTokens=round(counts.reply_tokens / counts.turns, 1) if counts.turns else 0,
        failedTurns=counts.failed_turns,
        lastUsed=counts.last_used,
        costMicros=counts.cost_micros,
        byModel={
            target_key(target): ModelStats.of(target, share)
            for target, share in sorted(counts.by_model.items())
        },
    )


router.include_router(previews)  # before /{template_id}, so its path is never an id
router.include_router(authoring)
