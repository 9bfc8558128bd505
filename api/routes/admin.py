"""Operational endpoints that reveal totals: admins only."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from api.deps import CallerDep, ServicesDep
from api.errors import documented

router = APIRouter(prefix="/admin", tags=["admin"])


class Stats(BaseModel):
    success: bool = True
    cached_sessions: int
    turns_in_flight: int
    templates: int
    store: str
    llm: str


@router.get("/stats", response_model=Stats, responses=documented(401, 403))
async def get_service_stats(caller: CallerDep, services: ServicesDep) -> Stats:
    """Live totals of this process (admin key or `admin: true` claim)."""
    caller.require_admin()
    return Stats(
        cached_sessions=services.sessions.cached_count,
        turns_in_flight=services.turns.in_flight_count,
        templates=services.templates.count,
        store=services.store.name,
        llm=services.llm.provider,
    )
