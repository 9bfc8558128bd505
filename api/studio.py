"""The authoring studio: plain HTML and JavaScript over the authoring API, no build step."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import FileResponse

from api.playground import SECURITY_HEADERS, STATIC

router = APIRouter(include_in_schema=False)


@router.get("/studio")
async def studio() -> FileResponse:
    """The studio page."""
    return FileResponse(STATIC / "studio.html", headers=SECURITY_HEADERS)


@router.get("/studio/app.js")
async def studio_script() -> FileResponse:
    """The studio's script."""
    return FileResponse(
        STATIC / "studio.js", media_type="text/javascript", headers=SECURITY_HEADERS
    )
