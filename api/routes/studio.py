"""The authoring studio: plain HTML and JavaScript over the authoring API, no build step."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import FileResponse

from api.routes.playground import page, script

router = APIRouter(include_in_schema=False)


@router.get("/studio")
async def studio() -> FileResponse:
    """The studio page."""
    return page("studio")


@router.get("/studio/app.js")
async def studio_script() -> FileResponse:
    """The studio's script."""
    return script("studio")
