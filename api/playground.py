"""A page to try personalities in a browser: plain HTML and JavaScript, no build step."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

router = APIRouter(include_in_schema=False)
STATIC = Path(__file__).parent / "static"
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


@router.get("/playground")
async def playground() -> FileResponse:
    """The playground page."""
    return FileResponse(STATIC / "playground.html", headers=SECURITY_HEADERS)


@router.get("/playground/app.js")
async def playground_script() -> FileResponse:
    """The playground's script."""
    return FileResponse(
        STATIC / "playground.js", media_type="text/javascript", headers=SECURITY_HEADERS
    )
