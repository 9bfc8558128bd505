"""Pure ASGI middleware: request ids with one log line and one metric count per request, the
body size limit, and paths that answer with or without a trailing slash."""

from __future__ import annotations

import itertools
import logging
import re
import time
import uuid
from collections.abc import Mapping
from urllib.parse import unquote_plus

from fastapi.routing import iter_route_contexts
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.deps import metrics_of
from api.errors import PayloadTooLarge, count_error, error_response
from api.logs import request_id

logger = logging.getLogger("chatify.requests")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class RequestLogMiddleware:
    """Tags each request with an id (``X-Request-ID``, kept from the client when sane, and in
    ``api.logs.request_id`` for every line logged meanwhile), logs method, path, route, status
    and latency when it ends, and counts it in the app's metrics by route template and status.
    Never logs bodies or headers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._routes = RouteTemplates()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        rid = _incoming_id(scope) or _next_id()
        bound = request_id.set(rid)
        started = time.perf_counter()
        status = 0
        headers_after: float | None = None

        async def send_with_id(message: Message) -> None:
            nonlocal status, headers_after
            if message["type"] == "http.response.start":
                status = message["status"]
                headers_after = time.perf_counter() - started
                message["headers"] = [
                    *message.get("headers", ()),
                    (b"x-request-id", rid.encode()),
                ]
            elif message["type"] in _WEBSOCKET_STATUS and not status:
                status = message.get("status", _WEBSOCKET_STATUS[message["type"]])
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            status = status or 500  # the server answers 500 for what escaped the app
            raise
        finally:
            self._record(scope, status, started, headers_after)
            request_id.reset(bound)

    def _record(
        self, scope: Scope, status: int, started: float, headers_after: float | None
    ) -> None:
        method = scope.get("method", "WS")
        route = self._routes.of(scope)
        latency_ms = (time.perf_counter() - started) * 1000
        metrics = metrics_of(scope["app"])
        if metrics is not None:
            metrics.request(method=method, route=route, status=status, seconds=headers_after)
        if not logger.isEnabledFor(logging.INFO):
            return
        fields = {"method": method, "path": scope["path"], "route": route, "status": status}
        logger.info(
            "%s %s %s %.1fms rid=%s",
            method,
            scope["path"],
            status or "-",
            latency_ms,
            request_id.get(),
            extra={**fields, "latency_ms": round(latency_ms, 1)},
        )


# What a WebSocket's first answer says about it, as the HTTP status of its handshake.
_WEBSOCKET_STATUS = {
    "websocket.accept": 101,
    "websocket.close": 403,  # closed before it was accepted: the server refuses with 403
    "websocket.http.response.start": 0,  # the status is in the message
}
UNMATCHED = "unmatched"


class RouteTemplates:
    """The path template of the route that served a request, as the OpenAPI document names
    it (``/api/v1/chatbot/session/{session_id}``), never the raw path: a metric label must
    not take a value per session. ``unmatched`` when no route served it (an unknown path, a
    CORS preflight)."""

    def __init__(self) -> None:
        self._paths: dict[int, str] | None = None

    def of(self, scope: Scope) -> str:
        """The template of ``scope``'s route, once the app has routed it."""
        route = scope.get("route")
        if route is None:
            return UNMATCHED
        if self._paths is None:
            # FastAPI puts the route as its router declared it in the scope, without the
            # prefix it was included with; the app's route contexts know the full path.
            contexts = iter_route_contexts(scope["app"].routes)
            self._paths = {id(c.original_route): c.path for c in contexts if c.path}
        return self._paths.get(id(route)) or str(getattr(route, "path", UNMATCHED))


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
    by reading the body (up to the limit) before the app sees it, then replaying it.

    Routes that carry images take more (docs/images.md): ``limits`` maps a path's end
    (``/message``, ``/attachments``…) to its limit and the bytes a body with images holds
    (``"attachments"``; None: any body, an upload). A body over ``max_bytes`` without them is
    refused as any other, once read (up to the route's limit)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: int,
        limits: Mapping[str, tuple[int, bytes | None]] | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self._limits = dict(limits or {})

    def _limit(self, scope: Scope) -> tuple[int, bytes | None]:
        if self._limits and scope["method"] in ("POST", "PUT", "PATCH"):
            path: str = scope["path"]
            for tail, limit in self._limits.items():
                if path.endswith(tail):
                    return limit
        return self.max_bytes, None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes, marker = self._limit(scope)
        length = _content_length(scope)
        if length is not None:
            if length > max_bytes:
                await self._reject(scope, receive, send, max_bytes)
                return
            if length <= self.max_bytes or marker is None:
                await self.app(scope, receive, send)
                return
        chunks: list[bytes] = []
        received = 0
        then: Message | None = None  # a disconnect met while buffering, handed on after
        while True:
            message = await receive()
            if message["type"] != "http.request":
                then = message
                break
            chunks.append(message.get("body", b""))
            received += len(chunks[-1])
            if received > max_bytes:
                await self._reject(scope, receive, send, max_bytes)
                return
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if received > self.max_bytes and marker is not None and marker not in body:
            await self._reject(scope, receive, send, self.max_bytes)  # no images: the usual
            return
        await self.app(scope, replay(body, receive, then=then), send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send, max_bytes: int) -> None:
        message = f"Request body larger than {max_bytes} bytes"
        count_error(scope["app"], PayloadTooLarge.code)
        await error_response(413, PayloadTooLarge.code, message)(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit():
            return int(value)
    return None


def replay(body: bytes, receive: Receive, *, then: Message | None = None) -> Receive:
    """A receive that first hands over the buffered body, then ``then`` (a disconnect met
    while buffering), then the connection's own events."""
    pending: list[Message] = [
        {"type": "http.request", "body": body, "more_body": False},
        *([then] if then is not None else []),
    ]

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed


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


_CREDENTIAL_HEADER_IN_TEXT = re.compile(
    r"((?:authorization|x-api-key)[\"']?[:=,]\s*[\"']?(?:bearer\s+)?)[^&\s\"',)]+",
    re.IGNORECASE,
)
# Any query parameter: its key is judged after decoding, since a server decodes it before use.
_QUERY_PARAMETER_IN_TEXT = re.compile(r"([?&])([^&=\s\"'?#]+)=([^&\s\"',)]*)")
CREDENTIAL_QUERY_KEYS = frozenset(
    {"token", "access_token", "api_key", "key", "authorization", "x-api-key"}
)
REDACTED = "[redacted]"


def _decoded_key(key: str) -> str:
    """The query key a server would see, decoding until stable (``%2574oken`` too)."""
    for _ in range(5):
        decoded = unquote_plus(key)
        if decoded == key:
            break
        key = decoded
    return key.strip().lower()


def _redact_query_parameter(match: re.Match[str]) -> str:
    if _decoded_key(match[2]) not in CREDENTIAL_QUERY_KEYS:
        return match[0]
    return f"{match[1]}{match[2]}={REDACTED}"


def redact_credentials(text: str) -> str:
    """``text`` with the values of credential query parameters and headers replaced."""
    text = _QUERY_PARAMETER_IN_TEXT.sub(_redact_query_parameter, text)
    return _CREDENTIAL_HEADER_IN_TEXT.sub(rf"\1{REDACTED}", text)


class CredentialRedactor(logging.Filter):
    """Rewrites a log record so that no credential survives in it: a WebSocket's ``?token=``
    reaches uvicorn's own log lines ("WebSocket /…/ws?token=… [accepted]"), under whatever
    percent-encoding or case of its key the client chose."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_credentials(message)
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
