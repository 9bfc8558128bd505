"""One turn streamed as Server-Sent Events, with resume by ``client_message_id``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Header
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.background import BackgroundTask

from api.deps import CallerDep, ServicesDep, SessionIdPath, admit_message
from api.errors import documented
from api.schemas import MessageResponse, SendMessageRequest, tool_data
from services.application import Services
from services.conversation.turn_events import Turn, TurnEvent
from services.core.settings import Settings
from services.identity import Caller
from services.limits.quotas import StreamSlot

router = APIRouter(prefix="/chatbot", tags=["streaming"])

_STREAM_DOC = {
    "description": "`text/event-stream`: `start`, `delta`…, then `done` (the JSON 200 body, "
    "sent once the turn is stored) or `error` (`{code, message}`). Every event has an `id`; "
    "`: ping` comments keep idle connections open.",
    "content": {"text/event-stream": {"schema": {"type": "string"}}},
}


@router.post(
    "/session/{session_id}/message/stream",
    response_class=EventSourceResponse,
    responses={200: _STREAM_DOC, **documented(401, 404, 409, 413, 422, 429, 503)},
)
async def stream_message(
    session_id: SessionIdPath,
    body: SendMessageRequest,
    services: ServicesDep,
    caller: CallerDep,
    last_event_id: Annotated[
        str | None,
        Header(description="Resume a turn in flight after this event (same client_message_id)"),
    ] = None,
) -> EventSourceResponse:
    """One turn, streamed. A dropped client does not cancel it; resend the same request (same
    `client_message_id`) to resume it, or to have it replayed once it is stored."""
    return await open_message_stream(services, caller, session_id, body, last_event_id)


async def open_message_stream(
    services: Services,
    caller: Caller,
    session_id: str,
    body: SendMessageRequest,
    last_event_id: str | None,
) -> EventSourceResponse:
    """Admit one streamed turn and follow it as SSE (the turn lane serves it too)."""
    admitted = await admit_message(services, caller, session_id, body, stream=True)
    turn, joined = admitted.started
    assert admitted.slot is not None
    return event_stream(
        turn,
        after=_event_number(last_event_id),
        slot=admitted.slot,
        settings=services.settings,
        data=event_data,
        joined=joined,
    )


EventData = Callable[[Turn, TurnEvent], dict[str, Any]]


def event_stream(
    turn: Turn,
    *,
    after: int,
    slot: StreamSlot,
    settings: Settings,
    data: EventData,
    joined: bool = True,
) -> EventSourceResponse:
    """A turn's events after ``after``, as SSE, holding the caller's stream slot. A turn not
    joined here skips them only when it relays the same turn from another replica."""
    events = turn.follow(after, coalesce=True) if joined else turn.resume(after, coalesce=True)
    return EventSourceResponse(
        _events(events, turn, slot, data),
        ping=settings.sse_ping_seconds,
        ping_message_factory=lambda: ServerSentEvent(comment="ping"),
        headers={"Cache-Control": "no-cache"},
        # Also runs when the client left before the first event was read.
        background=BackgroundTask(slot.release_after),
    )


def _event_number(header: str | None) -> int:
    try:
        return int(header) if header is not None else -1
    except ValueError:
        return -1


async def _events(
    events: AsyncIterator[TurnEvent], turn: Turn, slot: StreamSlot, data: EventData
) -> AsyncIterator[ServerSentEvent]:
    try:
        async for event in events:
            payload = json.dumps(data(turn, event))
            yield ServerSentEvent(data=payload, event=event.kind, id=str(event.id))
    finally:
        slot.release()


def event_data(turn: Turn, event: TurnEvent) -> dict[str, Any]:
    """The JSON of one event, as docs/api.md describes it."""
    if event.kind == "start":
        return {"session_id": turn.session_id, "turn": event.turn}
    if event.kind == "delta":
        return {"content": event.content}
    if event.tool is not None:  # tool_call, tool_result
        return tool_data(event.tool)
    if event.kind == "done":
        assert event.result is not None
        return MessageResponse.of(event.result).model_dump()
    assert event.error is not None
    return {"code": event.error.code, "message": event.error.message}
