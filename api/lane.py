"""The turn lane: the two turn routes served without FastAPI's per-request machinery.

``POST …/session/{id}/message`` and ``…/message/stream`` are most of the traffic. For them this
middleware, the innermost of ours (request ids, logs, metrics, the body limit and CORS still
apply), parses the body once from bytes with pydantic-core and calls the functions the FastAPI
routes call (``api.routes.sessions.answer_message``,
``api.routes.stream.open_message_stream``), skipping route matching over every route,
dependency solving and a second parse of the body.

What it does not take on as it is (another content type, a body that does not validate) goes
on to the FastAPI route with its body, so every such error is answered exactly as there. The
routes stay declared there, and so does the OpenAPI document.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi.exceptions import RequestValidationError
from fastapi.routing import iter_route_contexts
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from api.deps import credentials_of
from api.errors import chatify_error, validation_error
from api.middleware import replay
from api.routes.sessions import answer_message
from api.routes.stream import open_message_stream
from api.schemas import SendMessageRequest
from services.application import Services
from services.core.errors import ChatifyError

LaneKind = Literal["message", "message/stream"]
_KINDS: tuple[LaneKind, ...] = ("message", "message/stream")


class TurnLane:
    """Serves the turn routes directly (see the module docstring); passes the rest on."""

    def __init__(self, app: ASGIApp, *, prefix: str) -> None:
        self.app = app
        self._prefix = f"{prefix}/chatbot/session/"
        self._routes: dict[LaneKind, BaseRoute] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind, session_id = self._match(scope)
        if kind is None or not _json_body(scope):
            await self.app(scope, receive, send)
            return
        body, receive = await _buffered(receive)
        try:
            parsed = SendMessageRequest.model_validate_json(body)
        except ValidationError:
            await self.app(scope, receive, send)  # answered there, exactly as always
            return
        scope["route"] = self._route(scope["app"], kind)  # the request log's route label
        request = Request(scope, receive)
        response = await self._answer(request, kind, session_id, parsed)
        await response(scope, receive, send)

    def _match(self, scope: Scope) -> tuple[LaneKind | None, str]:
        if scope["type"] != "http" or scope["method"] != "POST":
            return None, ""
        path: str = scope["path"]
        if not path.startswith(self._prefix):
            return None, ""
        session_id, _, tail = path[len(self._prefix) :].partition("/")
        if not session_id or tail not in _KINDS:
            return None, ""
        return tail, session_id

    async def _answer(
        self, request: Request, kind: LaneKind, session_id: str, body: SendMessageRequest
    ) -> Response:
        services: Services = request.app.state.services
        try:
            caller = await services.auth.authenticate(credentials_of(request))
            if kind == "message":
                reply = await answer_message(services, caller, session_id, body)
                return Response(reply, media_type="application/json")
            last_event_id = request.headers.get("last-event-id")
            return await open_message_stream(services, caller, session_id, body, last_event_id)
        except ChatifyError as error:
            return await chatify_error(request, error)
        except RequestValidationError as error:
            return await validation_error(request, error)

    def _route(self, app: Any, kind: LaneKind) -> BaseRoute:
        """The declared route of ``kind``, as the app's router would have put it in the
        scope."""
        if self._routes is None:
            wanted = {f"{self._prefix}{{session_id}}/{k}": k for k in _KINDS}
            self._routes = {
                wanted[c.path]: c.original_route
                for c in iter_route_contexts(app.routes)
                if c.path in wanted and "POST" in getattr(c.original_route, "methods", ())
            }
        return self._routes[kind]


def _json_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return bool(value.split(b";", 1)[0].strip().lower() == b"application/json")
    return False


async def _buffered(receive: Receive) -> tuple[bytes, Receive]:
    """The whole body (the body limit bounded it), and a receive that hands it over again."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), replay(b"".join(chunks), receive, then=message)
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), replay(b"".join(chunks), receive)
