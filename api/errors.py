"""One mapping from errors to HTTP: domain errors, validation errors, and the rest."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.deps import metrics_of
from api.schemas import ErrorBody
from services.core.errors import ChatifyError, InvalidInput

logger = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}

DOCS = {
    400: "`invalid_cursor`: a page cursor this API did not issue",
    401: "`unauthenticated`: missing or invalid API key or ID token",
    403: "`forbidden`: the caller may not act for that user, or is not an admin",
    404: "Not found: `session_not_found` (also another user's session), `template_not_found` "
    "(also a personality version) or `message_not_found` (a seq, or a variant of it, the "
    "session's active branch does not have), `attachment_not_found` (an image id the "
    "session's user does not have)",
    409: "`session_ended` (ended or expired), `active_session_limit` when creating a session, "
    "`template_exists` when creating a personality, `default_template` when deleting the "
    "default, `no_turn_in_flight` when stopping a session that runs no turn, "
    "`nothing_to_regenerate` before a session's first message, `history_changed` when "
    "another replica changed the history a regenerate, edit or variant choice replaces",
    412: "`precondition_failed`: `If-Match` names a version that is no longer current",
    413: "`payload_too_large`: the body exceeds MAX_REQUEST_BYTES (routes that carry images: "
    "docs/images.md), or an image exceeds ATTACHMENT_MAX_BYTES",
    422: "`validation_error` (detail lists the errors), `idempotency_conflict`, "
    "`context_too_long` (the model refused the prompt, even with less history; nothing "
    "stored), `not_a_user_message` (an edit of a reply), `invalid_image` (not a readable "
    "image of the type it claims, too many, too many pixels) or `images_not_supported` (the "
    "personality or its model takes no images)",
    429: "`session_busy` (over SESSION_QUEUE_LIMIT waiting) or `rate_limited` (also previews); "
    "see Retry-After. `quota_exceeded`: USER_DAILY_TOKEN_QUOTA is spent, `cost_limit`: "
    "USER_DAILY_COST_LIMIT_MICROS is spent; for both, Retry-After is the time to the next "
    "UTC midnight",
    502: "`llm_error`: the model provider failed or sent an unusable reply",
    503: "`store_unavailable` or `llm_unavailable`; see Retry-After",
    504: "`llm_timeout`: no reply within LLM_TIMEOUT_SECONDS",
}


def documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error statuses a route can answer."""
    return {status: {"model": ErrorBody, "description": DOCS[status]} for status in statuses}


def error_codes() -> list[str]:
    """Every ``error.code`` the API can answer, HTTP and WebSocket."""
    codes = {"validation_error", "bad_frame", "internal_error", "http_error", *_HTTP_CODES.values()}
    pending: list[type[ChatifyError]] = [ChatifyError]
    while pending:
        cls = pending.pop()
        pending += cls.__subclasses__()
        if cls is not ChatifyError:
            codes.add(cls.code)
    return sorted(codes)


class PayloadTooLarge(ChatifyError):
    code, status = "payload_too_large", 413


class AsciiJSONResponse(JSONResponse):
    """JSON escaped to ASCII: a validation error may echo a lone surrogate from the request,
    which UTF-8 cannot encode."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode()


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    detail: Any = None,
    retry_after: float | None = None,
) -> JSONResponse:
    """The API's error body."""
    body = {
        "success": False,
        "error": {"code": code, "message": message},
        "detail": message if detail is None else detail,
    }
    headers = {"Retry-After": str(max(1, math.ceil(retry_after)))} if retry_after else None
    return AsciiJSONResponse(body, status_code=status, headers=headers)


def count_error(app: Any, code: str) -> None:
    """Count an HTTP error response in the app's ``chatify_errors_total``."""
    metrics = metrics_of(app)
    if metrics is not None:
        metrics.error(code)


async def chatify_error(request: Request, exc: Exception) -> JSONResponse:
    """A domain error as its HTTP answer."""
    assert isinstance(exc, ChatifyError)
    count_error(request.app, exc.code)
    if exc.status >= 500:
        logger.warning("%s %s -> %s %s", request.method, request.url.path, exc.status, exc.code)
    detail, message = None, exc.message
    if isinstance(exc, InvalidInput):
        detail, message = exc.problems, describe_problems(exc.message, exc.problems)
    response = error_response(
        exc.status, exc.code, message, detail=detail, retry_after=exc.retry_after
    )
    if exc.status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    return response


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    """A request that does not validate, as 422 ``validation_error``."""
    assert isinstance(exc, RequestValidationError)
    errors = jsonable_encoder(exc.errors(), exclude={"url"})
    count_error(request.app, "validation_error")
    message = describe_problems("Invalid request", errors)
    return error_response(422, "validation_error", message, detail=errors)


_SHOWN_PROBLEMS = 5
_MAX_PART = 200
_SOURCES = frozenset({"body", "query", "path", "header", "cookie"})


def describe_problems(summary: str, problems: Sequence[Mapping[str, Any]]) -> str:
    """A 422's ``error.message``: the summary, then each bad field and what is wrong with it
    (``Invalid request: message: String should have at least 1 character``).

    Clients that show only ``error.message`` (the Chatify frontend) need every field named;
    ``detail`` keeps the full list. Only field names and validators' messages, never input
    values, each cut short; the first few problems, then how many more."""
    parts = [_describe(problem) for problem in problems[:_SHOWN_PROBLEMS]]
    if len(problems) > _SHOWN_PROBLEMS:
        parts.append(f"and {len(problems) - _SHOWN_PROBLEMS} more")
    return f"{summary}: {'; '.join(parts)}" if parts else summary


def _describe(problem: Mapping[str, Any]) -> str:
    loc = [part for part in problem.get("loc") or () if part is not None]
    if len(loc) > 1 and loc[0] in _SOURCES:
        loc = loc[1:]  # "body.message" reads as "message"; a bare "body" stays
    where = ""
    for part in loc:
        where += f"[{part}]" if isinstance(part, int) else f".{part}" if where else str(part)
    msg = str(problem.get("msg") or "is not valid")
    return _shorten(f"{where}: {msg}" if where else msg)


def _shorten(text: str) -> str:
    return text if len(text) <= _MAX_PART else text[: _MAX_PART - 1] + "\u2026"


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400:
        # FastAPI's answer to a body it cannot decode (not UTF-8, nested too deep): to clients
        # that is one more invalid request.
        problem = {"type": "json_invalid", "loc": ["body"], "msg": str(exc.detail)}
        count_error(request.app, "validation_error")
        return error_response(
            422, "validation_error", f"Invalid request: {exc.detail}", detail=[problem]
        )
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    count_error(request.app, code)
    response = error_response(exc.status_code, code, str(exc.detail))
    response.headers.update(exc.headers or {})
    allow = allowed_methods(request) if exc.status_code == 405 else ""
    if allow:
        response.headers["Allow"] = allow
    return response


def allowed_methods(request: Request) -> str:
    """The ``Allow`` of a 405: every method of every route on the request's path.

    The router stops at the first route that matches the path, so its own ``Allow`` names
    only that route's methods (``GET`` where GET, PATCH and DELETE share a path)."""
    methods: set[str] = set()
    for route in iter_route_contexts(request.app.routes):
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            methods |= route.methods or set()
    return ", ".join(sorted(methods))


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    count_error(request.app, "internal_error")
    return error_response(500, "internal_error", "Internal server error")


class UnhandledErrors:
    """Pure ASGI middleware answering a bug (an exception no handler maps) with the 500
    ``internal_error`` body, its traceback logged once, and the connection kept open.

    Starlette's ServerErrorMiddleware, which otherwise answers it through the handler for
    ``Exception`` below, re-raises the exception to the server after sending the 500; uvicorn
    then logs it a second time and closes the connection, so the client's next request on that
    keep-alive connection is reset. Raised after a complete response (a background task), the
    error is logged and the connection kept. Raised mid-response, it is re-raised: a response
    already under way cannot become a 500, and the server must cut it so the client sees it
    incomplete."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = complete = False

        async def watched(message: Message) -> None:
            nonlocal started, complete
            if message["type"] == "http.response.start":
                started = True
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                complete = True
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception as exc:
            if started and not complete:
                raise
            request = Request(scope, receive)
            response = await _unexpected_error(request, exc)
            if not started:
                await response(scope, receive, send)


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers on the app."""
    app.add_exception_handler(ChatifyError, chatify_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
