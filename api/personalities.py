"""What personalities a client may offer."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import CallerDep, ServicesDep
from api.errors import documented
from api.schemas import Personalities

router = APIRouter(tags=["personalities"])


@router.get("/chatbot/personalities", response_model=Personalities, responses=documented(401))
async def list_personalities(services: ServicesDep, caller: CallerDep) -> Personalities:
    """Public personalities: id to description (the shape existing Chatify clients read)."""
    return Personalities(personalities=services.templates.public())
