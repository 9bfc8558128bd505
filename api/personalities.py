"""What personalities a client may offer."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import ServicesDep
from api.schemas import Personalities

router = APIRouter(tags=["personalities"])


@router.get("/chatbot/personalities", response_model=Personalities)
async def list_personalities(services: ServicesDep) -> Personalities:
    """Public personalities: id to description (the shape existing Chatify clients read)."""
    return Personalities(personalities=services.templates.public())
