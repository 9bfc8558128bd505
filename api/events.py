"""The shapes of streamed events and WebSocket frames, for the OpenAPI document (and the
tests that check real events against them). The transports build these dicts directly."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from api.schemas import (
    ErrorInfo,
    MessageBody,
    MessageResponse,
    ToolCallBody,
    ToolUseBody,
    UsageBody,
)


class StreamStart(BaseModel):
    """SSE `start`: the turn began."""

    session_id: str
    turn: int = Field(description="The turn's number (its message_count once stored)")


class StreamDelta(BaseModel):
    """SSE `delta`: more of the reply's text."""

    content: str


class ToolCallFrame(ToolCallBody):
    """The model called a tool (before it runs)."""

    type: Literal["tool_call"]
    client_message_id: str | None


class ToolResultFrame(ToolUseBody):
    """A tool's result, as the model was given it."""

    type: Literal["tool_result"]
    client_message_id: str | None


class ClientMessageFrame(BaseModel):
    """WebSocket, client to server: one turn."""

    type: Literal["user_message"]
    message: str
    client_message_id: str | None = Field(None, min_length=1, max_length=64)


class ClientStopFrame(BaseModel):
    """WebSocket, client to server: stop the session's turn in flight (its `ai_response` then
    says `finish_reason: "stopped"`; an `error` `no_turn_in_flight` when none runs)."""

    type: Literal["stop"]


class ChatHistoryFrame(BaseModel):
    """Once on connect: the last 50 messages."""

    type: Literal["chat_history"]
    messages: list[MessageBody]
    welcome_message: str | None = Field(description="The greeting the session opened with")


class DeltaFrame(BaseModel):
    """More of the reply's text."""

    type: Literal["ai_response_delta"]
    content: str
    client_message_id: str | None


class ResponseFrame(MessageResponse):
    """The stored reply: the JSON endpoint's 200 body."""

    type: Literal["ai_response"]
    client_message_id: str | None


class BackendStatusFrame(BaseModel):
    """After each turn."""

    type: Literal["backend_status"]
    latency_ms: float
    usage: UsageBody | None
    model: str
    client_message_id: str | None


class TurnStartedFrame(BaseModel):
    """Another connection (device, transport) sent a message on this session."""

    type: Literal["turn_started"]
    turn: int
    message: str
    client_message_id: str | None


class SessionTitleFrame(BaseModel):
    """The session was named or renamed."""

    type: Literal["session_title"]
    title: str | None


class SessionEndedFrame(BaseModel):
    """The session ended, expired or was deleted; the socket closes with 4409 next."""

    type: Literal["session_ended"]
    status: Literal["ended", "expired", "deleted"]


class ErrorFrame(ErrorInfo):
    """A refused frame or a failed turn; fatal ones are followed by a 44xx close."""

    type: Literal["error"]
    client_message_id: str | None = None
    retry_after: int | None = Field(
        None,
        description="Seconds to wait before sending again, as HTTP's Retry-After (`rate_limited`, "
        "`session_busy`, `quota_exceeded` and `cost_limit`: the next UTC midnight…)",
    )


# One Server-Sent Event as OpenAPI 3.2's ``itemSchema`` describes it (and schemathesis checks
# it): its ``data`` is JSON text, of the payload schema named by ``event``.
SSE_EVENT_SCHEMA = {
    "type": "object",
    "properties": {
        "event": {"type": "string"},
        "data": {"type": "string", "description": "JSON text"},
        "id": {"type": "string"},
        "retry": {"type": "integer"},
    },
    "required": ["data"],
}
SSE_EVENTS: dict[str, type[BaseModel]] = {
    "start": StreamStart,
    "delta": StreamDelta,
    "tool_call": ToolCallBody,
    "tool_result": ToolUseBody,
    "done": MessageResponse,
    "error": ErrorInfo,
}
WS_CLIENT_FRAMES: dict[str, type[BaseModel]] = {
    "user_message": ClientMessageFrame,
    "stop": ClientStopFrame,
}
WS_SERVER_FRAMES: dict[str, type[BaseModel]] = {
    "chat_history": ChatHistoryFrame,
    "ai_response_delta": DeltaFrame,
    "tool_call": ToolCallFrame,
    "tool_result": ToolResultFrame,
    "ai_response": ResponseFrame,
    "backend_status": BackendStatusFrame,
    "error": ErrorFrame,
    "turn_started": TurnStartedFrame,
    "session_title": SessionTitleFrame,
    "session_ended": SessionEndedFrame,
}
