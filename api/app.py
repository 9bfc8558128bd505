"""The FastAPI app factory. The lifespan owns every resource: store, LLM client, scheduler."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from api.errors import UnhandledErrors, install_error_handlers
from api.lane import TurnLane
from api.middleware import (
    BodyLimitMiddleware,
    RequestLogMiddleware,
    TrailingSlashMiddleware,
    redact_credentials_in_logs,
)
from api.openapi import install_openapi, operation_id
from api.routes import (
    admin,
    attachments,
    branches,
    metrics,
    ops,
    personalities,
    playground,
    push,
    rules,
    sessions,
    stream,
    studio,
    ui_stream,
    users,
    ws,
)
from services import application
from services.core.records import Clock, utc_now
from services.core.settings import Settings

logger = logging.getLogger(__name__)
API_PREFIX = "/api/v1"


def create_app(settings: Settings | None = None, *, clock: Clock = utc_now) -> FastAPI:
    """Build the app; nothing connects until the lifespan starts."""
    settings = settings or Settings()
    redact_credentials_in_logs()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            app.state.services = await application.start(settings, clock, stack)
            logger.info(
                "chatify ready: store=%s llm=%s templates=%d redis=%s loop=%s",
                settings.store,
                settings.llm_provider,
                app.state.services.templates.count,
                "on" if settings.redis_url else "off",
                # uvloop when uvicorn found it (uvicorn[standard]); the HTTP parser is
                # httptools then too. Said here so an operator can check, not assume.
                type(asyncio.get_running_loop()).__module__.split(".")[0],
            )
            yield

    app = FastAPI(
        title="Chatify",
        version="1.0.0",
        summary="Session-oriented chatbot service with personalities",
        lifespan=lifespan,
        generate_unique_id_function=operation_id,
    )
    install_error_handlers(app)
    install_openapi(app)
    app.include_router(ops.router)
    app.include_router(metrics.router)
    app.include_router(playground.router)
    app.include_router(studio.router)
    app.include_router(sessions.router, prefix=API_PREFIX)
    app.include_router(attachments.router, prefix=API_PREFIX)
    app.include_router(branches.router, prefix=API_PREFIX)
    app.include_router(users.router, prefix=API_PREFIX)
    app.include_router(push.router, prefix=API_PREFIX)
    app.include_router(stream.router, prefix=API_PREFIX)
    app.include_router(ws.router, prefix=API_PREFIX)
    app.include_router(ui_stream.router, prefix=API_PREFIX)
    app.include_router(personalities.router, prefix=API_PREFIX)
    app.include_router(rules.router, prefix=API_PREFIX)
    app.include_router(admin.router, prefix=API_PREFIX)
    # Added first, so the innermost of ours: CORS, the body limit and the request log wrap it.
    app.add_middleware(TurnLane, prefix=API_PREFIX)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials="*" not in settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "X-API-Key",
                "X-Request-ID",
                "Last-Event-ID",
                "If-Match",
            ],
            expose_headers=["X-Request-ID", "Retry-After", "ETag"],
        )
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_request_bytes,
        limits=image_body_limits(settings),
    )
    # Inside the request log (its status, X-Request-ID and request id on the traceback), and
    # around everything that can fail, so that a bug does not cost the client its connection.
    app.add_middleware(UnhandledErrors)
    app.add_middleware(RequestLogMiddleware)
    app.add_middleware(TrailingSlashMiddleware)
    return app


def image_body_limits(settings: Settings) -> dict[str, tuple[int, bytes | None]]:
    """The body limits of the routes that carry images, and what a body with images holds:
    an upload is one image; a message (JSON, SSE, the AI SDK route) has ATTACHMENTS_PER_MESSAGE
    of them as base64 (4/3 the bytes)."""
    if settings.attachments_per_message == 0:
        return {}
    base = settings.max_request_bytes
    one = settings.attachment_max_bytes
    message = base + settings.attachments_per_message * (one * 4 // 3 + 64)
    return {
        "/attachments": (base + one, None),
        "/message": (message, b'"attachments"'),
        "/message/stream": (message, b'"attachments"'),
        "/chatbot/chat": (message, b'"file"'),
    }
