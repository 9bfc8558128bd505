"""The Vercel AI SDK's UI message stream (protocol v1), so React's ``useChat`` works as it is:

    const { messages, sendMessage } = useChat({
      id: sessionId,
      transport: new DefaultChatTransport({ api: `${BASE}/api/v1/chatbot/chat` }),
    });

``POST /chat`` takes the body ``useChat`` sends (``id`` is the session id, ``messages`` the
chat) and runs one turn with the last user message's text, its message id as the
``client_message_id``, through the same pipeline, limits and storage as every transport. The
reply streams as SSE ``data:`` parts (``start``, ``text-start``, ``text-delta``…, ``text-end``,
``finish`` or ``error``), then ``data: [DONE]``. ``GET /chat/{id}/stream`` resumes the turn in
flight (``useChat({resume: true})``), or answers 204 when there is none.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.background import BackgroundTask

from api.deps import CallerDep, ServicesDep, ValidSessionDep
from api.errors import documented
from api.events import SSE_EVENT_SCHEMA
from api.schemas import invalid, message_problem
from services.models import ToolCall, ToolUse
from services.quotas import StreamSlot
from services.turns import Turn, TurnEvent

router = APIRouter(prefix="/chatbot", tags=["streaming"])
HEADERS = {"x-vercel-ai-ui-message-stream": "v1", "Cache-Control": "no-cache"}
_TEXT_ID = "text-0"


class UIMessagePart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class UIMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    role: Literal["system", "user", "assistant"]
    parts: list[UIMessagePart] = []


class UIChatRequest(BaseModel):
    """What ``useChat``'s default transport sends; other fields are ignored."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(description="The chat's id: the Chatify session id")
    messages: Annotated[list[UIMessage], Field(min_length=1)]
    trigger: str | None = None
    messageId: str | None = None


_STREAM_DOC = {
    "description": "`text/event-stream` in the AI SDK's UI message stream protocol v1 "
    "(header `x-vercel-ai-ui-message-stream: v1`), ended by `data: [DONE]`.",
    "content": {"text/event-stream": {"schema": SSE_EVENT_SCHEMA}},
}


@router.post(
    "/chat",
    response_class=EventSourceResponse,
    responses={200: _STREAM_DOC, **documented(401, 404, 409, 413, 422, 429, 503)},
)
async def stream_ui_chat(
    body: UIChatRequest, services: ServicesDep, caller: CallerDep
) -> EventSourceResponse:
    """One turn for `useChat`: the last user message of `messages`, streamed back as UI
    message parts. Resending it (same message id) resumes or replays, never runs it twice."""
    text, client_message_id = _last_user_message(body, services.settings.max_message_chars)
    admission = services.admission
    record = await admission.session(body.id, caller, client_message_id=client_message_id)
    admitted = await admission.admit(
        record,
        lambda: services.turns.submit(
            record.session_id, text=text, client_message_id=client_message_id, stream=True
        ),
        stream=True,
    )
    turn, _ = admitted.started
    assert admitted.slot is not None
    return _response(turn, admitted.slot, services.settings.sse_ping_seconds)


@router.get(
    "/chat/{session_id}/stream",
    response_class=EventSourceResponse,
    responses={
        200: _STREAM_DOC,
        204: {"description": "No turn in flight"},
        **documented(401, 404, 429, 503),
    },
)
async def resume_ui_chat(session: ValidSessionDep, services: ServicesDep) -> Response:
    """The session's turn in flight from its start (`useChat({resume: true})`); 204 when
    there is none."""
    turn = services.turns.latest(session.session_id)
    if turn is None and services.relay is not None:  # in flight on another replica
        turn = await services.relay.latest(session.session_id)
    if turn is None:
        return Response(status_code=204)
    slot = await services.admission.slot(session.user_id)
    return _response(turn, slot, services.settings.sse_ping_seconds)


def _last_user_message(body: UIChatRequest, limit: int) -> tuple[str, str]:
    for index in range(len(body.messages) - 1, -1, -1):
        message = body.messages[index]
        if message.role == "user":
            text = "".join(p.text or "" for p in message.parts if p.type == "text").strip()
            where = ("body", "messages", index)
            problem = message_problem(text, limit)
            if problem is None and not 1 <= len(message.id) <= 64:
                problem = {"type": "string_too_long", "msg": "Message ids have 1-64 characters"}
            if problem is not None:
                raise RequestValidationError([{**problem, "loc": where}])
            return text, message.id
    raise invalid("body", "messages", msg="No user message", kind="missing")


def _response(turn: Turn, slot: StreamSlot, ping: float) -> EventSourceResponse:
    return EventSourceResponse(
        _parts(turn, slot),
        ping=ping,
        ping_message_factory=lambda: ServerSentEvent(comment="ping"),
        headers=HEADERS,
        background=BackgroundTask(slot.release_after),
    )


async def _parts(turn: Turn, slot: StreamSlot) -> AsyncIterator[ServerSentEvent]:
    try:
        async for event in turn.follow(coalesce=True):
            for part in ui_parts(turn, event):
                yield ServerSentEvent(data=json.dumps(part))
        yield ServerSentEvent(data="[DONE]")
    finally:
        slot.release()


def _tool_part(item: ToolCall | ToolUse) -> dict[str, Any]:
    """A tool event as the AI SDK's dynamic tool parts: the server ran it, the client only
    shows it (``dynamic``: the client declares no such tool)."""
    if isinstance(item, ToolCall):
        return {"type": "tool-input-available", "toolCallId": item.id, "toolName": item.name,
                "input": item.arguments, "providerExecuted": True, "dynamic": True}  # fmt: skip
    if item.is_error:
        return {"type": "tool-output-error", "toolCallId": item.call.id,
                "errorText": item.result, "providerExecuted": True, "dynamic": True}  # fmt: skip
    output: Any = {"text": item.result, "images": list(item.images)} if item.images else item.result
    return {"type": "tool-output-available", "toolCallId": item.call.id, "output": output,
            "providerExecuted": True, "dynamic": True}  # fmt: skip


def ui_parts(turn: Turn, event: TurnEvent) -> list[dict[str, Any]]:
    """The UI message stream parts of one turn event."""
    if event.kind == "start":
        message_id = f"{turn.client_message_id or turn.session_id}-reply"
        return [{"type": "start", "messageId": message_id}, {"type": "text-start", "id": _TEXT_ID}]
    if event.kind == "delta":
        return [{"type": "text-delta", "id": _TEXT_ID, "delta": event.content}]
    if event.tool is not None:
        return [_tool_part(event.tool)]
    if event.kind == "done" and event.result is not None:
        result = event.result
        metadata = {
            "session_id": result.session_id,
            "message_count": result.message_count,
            "replayed": result.replayed,
            "seq": result.assistant_message.seq if result.assistant_message else None,
        }
        return [
            {"type": "text-end", "id": _TEXT_ID},
            {"type": "finish", "messageMetadata": metadata},
        ]
    assert event.error is not None
    return [{"type": "error", "errorText": f"{event.error.code}: {event.error.message}"}]
