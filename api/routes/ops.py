"""Operational endpoints at the root: liveness and readiness."""

from __future__ import annotations

import asyncio
import logging
from typing import Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from api.deps import ServicesDep
from services.core.errors import StoreUnavailable

logger = logging.getLogger(__name__)
router = APIRouter(tags=["operations"])
PING_TIMEOUT_SECONDS = 3.0
UNVERIFIED_AUTH = "unverified (FIREBASE_AUTH_EMULATOR_HOST)"


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready", "degraded", "unavailable"] = Field(
        description="`degraded`: ready, but Redis is not answering, so limits, stream resume "
        "and live events are per process until it is back"
    )
    store: str
    store_ok: bool
    redis: Literal["off", "ok", "unavailable"] = Field(
        description="`off` without REDIS_URL; `unavailable` does not make the service unready"
    )
    llm: str
    templates: int
    problems: list[str]
    template_problems: dict[str, list[str]] = Field(
        description="Stored personalities that are invalid (the last good version serves); "
        "they do not make the service unready. Details: GET /api/v1/personalities/problems"
    )
    push: Literal["ok", "failing"] | None = Field(
        None,
        description="Present only with PUSH_ENABLED: `failing` when FCM did not take the last "
        "push that ended (it does not make the service unready: pushes are lost, not turns)",
    )
    auth: str | None = Field(
        None,
        description="Present only when callers are not really authenticated: "
        "`unverified (FIREBASE_AUTH_EMULATOR_HOST)` means any unsigned ID token is accepted",
    )


@router.get("/health", response_model=Health)
async def health() -> Health:
    """Liveness: answers without touching any dependency."""
    return Health()


@router.get(
    "/ready",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Store down or no templates loaded"}},
)
async def ready(services: ServicesDep) -> JSONResponse:
    """Readiness: 200 when the store answers and templates are loaded, else 503; a Redis that
    does not answer makes it `degraded`, still 200 (the service falls back to per process)."""
    problems = []
    try:
        async with asyncio.timeout(PING_TIMEOUT_SECONDS):
            await services.store.ping()
    except (StoreUnavailable, TimeoutError):
        problems.append("store is not answering")
    if services.templates.count == 0:
        problems.append("no templates loaded")
    redis = "off"
    if services.redis is not None:
        redis = "ok" if await services.redis.check() else "unavailable"
    body = Readiness(
        status="unavailable" if problems else "degraded" if redis == "unavailable" else "ready",
        store=services.store.name,
        store_ok="store is not answering" not in problems,
        redis=redis,
        llm=services.llm.provider,
        templates=services.templates.count,
        problems=problems,
        template_problems={
            key: [f"{'.'.join(map(str, p['loc']))}: {p['msg']}" for p in found]
            for key, found in services.templates.problems().items()
        },
        push=None if services.push is None else "failing" if services.push.failing else "ok",
        auth=UNVERIFIED_AUTH if services.settings.tokens_unverified else None,
    )
    shown = body.model_dump(exclude={k for k in ("auth", "push") if getattr(body, k) is None})
    return JSONResponse(shown, status_code=503 if problems else 200)
