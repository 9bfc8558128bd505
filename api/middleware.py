"""Pure ASGI middleware: request ids with one log line per request, the body size limit, and
paths that answer with or without a trailing slash."""

from __future__ import annotations

import itertools
import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import PayloadTooLarge, error_response

logger = logging.getLogger("chatify.requests")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class RequestLogMiddleware:
    """Tags each request with an id (``X-Request-ID``, kept from the client when sane) and logs
    method, path, status and latency when it ends. Never logs bodies or headers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id = _incoming_id(scope) or _next_id()
        started = time.perf_counter()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", ()),
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            logger.info(
                "%s %s %s %.1fms rid=%s",
                scope.get("method", "WS"),
                scope["path"],
                status or "-",
                (time.perf_counter() - started) * 1000,
                request_id,
            )


_PROCESS_TAG = uuid.uuid4().hex[:12]
_counter = itertools.count(1)


def _next_id() -> str:
    """Unique per process start and request, without a random draw per request."""
    return f"{_PROCESS_TAG}{next(_counter):020x}"


def _incoming_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            text = value.decode("latin-1")
            return text if _REQUEST_ID.match(text) else None
    return None


class BodyLimitMiddleware:
    """413 for bodies over ``max_bytes``, before any parsing: by Content-Length when sent, else
    by reading the body (up to the limit) before the app sees it, then replaying it."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _content_length(scope)
        if length is not None:
            if length > self.max_bytes:
                await self._reject(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            received += len(chunks[-1])
            if received > self.max_bytes:
                await self._reject(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(b"".join(chunks), receive), send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = f"Request body larger than {self.max_bytes} bytes"
        await error_response(413, PayloadTooLarge.code, message)(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit():
            return int(value)
    return None


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that first hands over the buffered body, then the connection's own events."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class TrailingSlashMiddleware:
    """``/x/`` is routed as ``/x``, with no redirect: a browser's cross-origin POST must not be
    redirected, and Chatify's clients call ``/personalities/`` with the slash."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] in ("http", "websocket") and len(path) > 1 and path.endswith("/"):
            scope = {**scope, "path": path.rstrip("/") or "/"}
        await self.app(scope, receive, send)


_CREDENTIAL_IN_TEXT = re.compile(
    r"((?:[?&](?:token|access_token|api_key|key)=)|(?:authorization|x-api-key)[\"']?[:=,]\s*[\"']?"
    r"(?:bearer\s+)?)[^&\s\"',)]+",
    re.IGNORECASE,
)
REDACTED = "[redacted]"


class CredentialRedactor(logging.Filter):
    """Rewrites a log record so that no credential survives in it: a WebSocket's ``?token=``
    reaches uvicorn's own log lines ("WebSocket /…/ws?token=… [accepted]")."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = _CREDENTIAL_IN_TEXT.sub(rf"\1{REDACTED}", message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


_REDACTOR = CredentialRedactor()
# Loggers that print request lines with their query strings.
_LOGGERS_WITH_URLS = ("uvicorn.error", "uvicorn.access", "websockets", "websockets.server")


def redact_credentials_in_logs(*handlers: logging.Handler) -> None:
    """Install the redactor on the loggers that print URLs, and on ``handlers`` (all records
    that reach them). Idempotent."""
    for target in (*(logging.getLogger(name) for name in _LOGGERS_WITH_URLS), *handlers):
        if _REDACTOR not in target.filters:
            target.addFilter(_REDACTOR)
