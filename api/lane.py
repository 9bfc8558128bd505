"""The turn lane: a session's life served without FastAPI's per-request machinery.

``POST …/session/{id}/message`` and ``…/message/stream`` are most of the traffic, and every
session also starts (``POST …/session``) and ends (``DELETE …/session/{id}``): with 1,000
streams starting at once, routing and dependency solving for those two were a third of the
service's CPU. For these four this middleware, the innermost of ours (request ids, logs,
metrics, the body limit and CORS still apply), parses the body once from bytes with
pydantic-core and calls the functions the FastAPI routes call
(``api.routes.sessions.answer_message``, ``start_session``, ``finish_session``,
``api.routes.stream.open_message_stream``), skipping route matching over every route,
dependency solving and a second parse of the body. An end with a query (``purge``) goes to
the route.

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
from api.routes.sessions import answer_message, finish_session, start_session
from api.routes.stream import open_message_stream
from api.schemas import CreateSessionRequest, SendMessageRequest
from services.application import Services
from services.conversation.admission import owned
from services.core.errors import ChatifyError

LaneKind = Literal["message", "message/stream", "create", "end"]
_TURNS: tuple[LaneKind, ...] = ("message", "message/stream")
_BODIES: dict[LaneKind, type[SendMessageRequest] | type[CreateSessionRequest]] = {
    "message": SendMessageRequest,
    "message/stream": SendMessageRequest,
    "create": CreateSessionRequest,
}
# Each kind's declared route: its path after the prefix, and its method.
_DECLARED: dict[LaneKind, tuple[str, str]] = {
    "message": ("session/{session_id}/message", "POST"),
    "message/stream": ("session/{session_id}/message/stream", "POST"),
    "create": ("session", "POST"),
    "end": ("session/{session_id}", "DELETE"),
}


class TurnLane:
    """Serves the turn routes directly (see the module docstring); passes the rest on."""

    def __init__(self, app: ASGIApp, *, prefix: str) -> None:
        self.app = app
        self._base = f"{prefix}/chatbot/"
        self._create = f"{prefix}/chatbot/session"
        self._prefix = f"{prefix}/chatbot/session/"
        self._routes: dict[LaneKind, BaseRoute] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind, session_id = self._match(scope)
        if kind is None:
            await self.app(scope, receive, send)
            return
        parsed: SendMessageRequest | CreateSessionRequest | None = None
        model = _BODIES.get(kind)
        if model is not None:
            if not _json_body(scope):
                await self.app(scope, receive, send)
                return
            body, receive = await _buffered(receive)
            try:
                parsed = model.model_validate_json(body)
            except ValidationError:
                await self.app(scope, receive, send)  # answered there, exactly as always
                return
        scope["route"] = self._route(scope["app"], kind)  # the request log's route label
        request = Request(scope, receive)
        response = await self._answer(request, kind, session_id, parsed)
        await response(scope, receive, send)

    def _match(self, scope: Scope) -> tuple[LaneKind | None, str]:
        if scope["type"] != "http":
            return None, ""
        method, path = scope["method"], scope["path"]
        if method == "POST" and path == self._create:
            return "create", ""
        if not path.startswith(self._prefix):
            return None, ""
        session_id, slash, tail = path[len(self._prefix) :].partition("/")
        if not session_id:
            return None, ""
        if method == "POST" and tail in _TURNS:
            return tail, session_id
        if method == "DELETE" and not slash and not scope["query_string"]:
            return "end", session_id
        return None, ""

    async def _answer(
        self,
        request: Request,
        kind: LaneKind,
        session_id: str,
        body: SendMessageRequest | CreateSessionRequest | None,
    ) -> Response:
        services: Services = request.app.state.services
        try:
            caller = await services.auth.authenticate(credentials_of(request))
            if isinstance(body, CreateSessionRequest):
                created = await start_session(services, caller, body)
                return Response(created, status_code=201, media_type="application/json")
            if body is None:  # the end of a session
                session = owned(await services.sessions.owned_by(session_id), caller)
                ended = await finish_session(services, session, purge=False)
                return Response(ended, media_type="application/json")
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
            wanted = {(f"{self._base}{path}", method): k for k, (path, method) in _DECLARED.items()}
            self._routes = {
                wanted[(c.path or "", method)]: c.original_route
                for c in iter_route_contexts(app.routes)
                for method in getattr(c.original_route, "methods", ())
                if (c.path or "", method) in wanted
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
