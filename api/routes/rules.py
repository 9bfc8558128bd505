"""The universal rules put before every personality prompt (admins only), versioned like the
personalities, in the shape the published Chatify frontend reads."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from api.deps import AdminDep, ServicesDep
from api.errors import documented
from api.routes.personalities import IfMatch, Versions, versions_of
from services.store.versions import RULES, DocWrite

router = APIRouter(prefix="/settings/universal-rules", tags=["authoring"])


class Rules(BaseModel):
    rules: str | None
    version: str | None = Field(description='The authors\' own label (e.g. "1.0")')
    enabled: bool | None
    updated_at: str | None = Field(alias="updatedAt")
    revision: int | None = Field(description="Its number in the history; set on every write")


class RulesChanges(BaseModel):
    """The fields to change; the others stay."""

    rules: str | None = Field(None, max_length=8000)
    version: str | None = Field(None, max_length=40)
    enabled: bool | None = None


class RulesRollback(BaseModel):
    revision: int = Field(ge=1, le=2**31, description="The revision to publish again")


def _rules(written: DocWrite) -> JSONResponse:
    doc = written.document or {}
    body = {name: doc.get(name) for name in ("rules", "version", "enabled", "updatedAt")}
    body["revision"] = doc.get("revision")
    return JSONResponse(body, headers={"ETag": written.etag or ""})


@router.get("", response_model=Rules, responses=documented(401, 403, 503))
async def get_rules(services: ServicesDep, admin: AdminDep) -> JSONResponse:
    """The stored universal rules, with their `ETag`."""
    return _rules(await services.authoring.read_rules())


_WRITE_ERRORS = documented(401, 403, 412, 413, 422, 503)


@router.put("", response_model=Rules, responses=_WRITE_ERRORS)
@router.patch("", response_model=Rules, responses=_WRITE_ERRORS)
async def update_rules(
    changes: Annotated[RulesChanges, Body()],
    services: ServicesDep,
    admin: AdminDep,
    if_match: IfMatch = None,
) -> JSONResponse:
    """Partial update (PUT and PATCH alike): the fields sent replace the stored ones. New
    sessions use it at once."""
    sent = changes.model_dump(exclude_unset=True)
    return _rules(await services.authoring.update_rules(sent, if_match=if_match))


@router.get("/versions", response_model=Versions, responses=documented(401, 403, 404, 503))
async def list_rules_versions(services: ServicesDep, admin: AdminDep) -> Versions:
    """Every revision of the universal rules, newest first (`version` is the revision)."""
    return await versions_of(services, RULES)


@router.post("/rollback", response_model=Rules, responses=documented(401, 403, 404, 412, 422, 503))
async def rollback_rules(
    body: RulesRollback, services: ServicesDep, admin: AdminDep, if_match: IfMatch = None
) -> JSONResponse:
    """Publish an earlier revision of the rules again, as a new revision."""
    return _rules(await services.authoring.rollback(RULES, body.revision, if_match=if_match))
