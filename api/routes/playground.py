"""A page to try personalities in a browser: plain HTML and JavaScript, no build step."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

router = APIRouter(include_in_schema=False)
STATIC = Path(__file__).parent.parent / "static"
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; connect-src 'self'; "
        "img-src data: https:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def page(name: str) -> FileResponse:
    """``static/<name>.html`` with the strict security headers."""
    return FileResponse(STATIC / f"{name}.html", headers=SECURITY_HEADERS)


def script(name: str) -> FileResponse:
    """``static/<name>.js`` with the same headers."""
    return FileResponse(
        STATIC / f"{name}.js", media_type="text/javascript", headers=SECURITY_HEADERS
    )


@router.get("/playground")
async def playground() -> FileResponse:
    """The playground page."""
    return page("playground")


@router.get("/playground/app.js")
async def playground_script() -> FileResponse:
    """The playground's script."""
    return script("playground")


@router.get("/playground/events.js")
async def events_script() -> FileResponse:
    """The Server-Sent Events reader the playground and the studio share."""
    return script("events")
