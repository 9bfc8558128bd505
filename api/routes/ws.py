"""The real-time channel: turns over one WebSocket, streamed as they are typed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import uuid
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import BaseModel, Field, TypeAdapter, ValidationError, field_validator
from starlette.types import Message

from api.attachment_bodies import AttachmentRef
from api.deps import CallerOrErrorDep, ServicesDep, SessionIdPath
from api.schemas import MessageBody, MessageResponse, message_problem, tool_data
from services.conversation.bus import Overflowed, SessionEvent, Subscription
from services.conversation.turn_events import Turn
from services.core.errors import (
    ChatifyError,
    Forbidden,
    RateLimited,
    SessionEnded,
    SessionNotFound,
    Unauthenticated,
)
from services.core.records import SessionRecord, TurnResult
from services.core.settings import Settings

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/chatbot", tags=["streaming"])
HISTORY_ON_CONNECT = 50
CLOSE_CODES = {
    Unauthenticated.code: 4401,
    Forbidden.code: 4403,
    SessionNotFound.code: 4404,
    SessionEnded.code: 4409,
    RateLimited.code: 4429,
}
MESSAGE_TOO_BIG = 1009  # the WebSocket protocol's close code for a frame over the limit
# What json.loads leaves of a lone \ud800-\udfff escape (a valid pair becomes one character).
_SURROGATE = re.compile("[\ud800-\udfff]")


class UserMessageFrame(BaseModel):
    """What a client sends."""

    type: Literal["user_message"]
    message: str
    client_message_id: str | None = Field(None, min_length=1, max_length=64)
    attachments: list[AttachmentRef] | None = Field(None, max_length=16)

    @field_validator("message", "client_message_id")
    @classmethod
    def _valid_unicode(cls, value: str | None) -> str | None:
        # A lone surrogate is valid JSON but no text: UTF-8 cannot store or send it.
        if value is not None and _SURROGATE.search(value):
            raise ValueError("contains a lone surrogate (\\ud800-\\udfff), which is not text")
        return value


class StopFrame(BaseModel):
    """Stop the session's turn in flight (whichever connection or transport sent it)."""

    type: Literal["stop"]


Frame = Annotated[UserMessageFrame | StopFrame, Field(discriminator="type")]
_FRAME: TypeAdapter[UserMessageFrame | StopFrame] = TypeAdapter(Frame)


@router.websocket("/session/{session_id}/ws")
async def session_socket(
    websocket: WebSocket,
    session_id: SessionIdPath,
    services: ServicesDep,
    caller: CallerOrErrorDep,
) -> None:
    """`chat_history` on connect; then for each `user_message`: `ai_response_delta`…,
    `ai_response`, `backend_status`. A `stop` frame stops the session's turn in flight (its
    `ai_response` says `finish_reason: "stopped"`; an `error` `no_turn_in_flight` when none
    runs). Turns sent by other connections to the session arrive
    live too (`turn_started`, then the same frames), as do `session_title` and
    `session_ended` (then close 4409). Authenticate like HTTP, or with a `token` query parameter
    (browsers cannot set WebSocket headers). Recoverable errors arrive as `error` events; the
    socket closes with 4401 (not authenticated), 4403 (a browser page whose origin is neither
    this service's nor in CORS_ORIGINS), 4404 (no such session), 4409 (ended), 4429 (too many
    open streams) or 1009 (a frame over WS_MAX_FRAME_BYTES)."""
    await websocket.accept()
    try:
        if not origin_allowed(websocket, services.settings.cors_origins):
            raise Forbidden("This page's origin may not open a WebSocket here (CORS_ORIGINS)")
        if isinstance(caller, ChatifyError):
            raise caller
        record = await services.admission.session(session_id, caller, client_message_id=None)
        slot = await services.admission.slot(record.user_id)
    except ChatifyError as error:
        await _fail(websocket, error)
        return
    origin = uuid.uuid4().hex
    try:
        # Subscribed before the history is read: an event may repeat a message the history
        # holds (match by seq), but none falls between the two.
        with services.bus.subscribe(session_id) as subscription:
            history = await services.sessions.messages(session_id, limit=HISTORY_ON_CONNECT)
            messages = [MessageBody.of(m, session_id=session_id).model_dump() for m in history]
            welcome = record.welcome_message
            await websocket.send_json(
                {"type": "chat_history", "messages": messages, "welcome_message": welcome}
            )
            relay = asyncio.create_task(_relay(websocket, subscription, origin))
            try:
                await _serve_frames(websocket, services, record, origin)
            finally:
                relay.cancel()
                with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError):
                    await relay
    except WebSocketDisconnect:
        return
    finally:
        slot.release()


async def _serve_frames(
    websocket: WebSocket, services: ServicesDep, record: SessionRecord, origin: str
) -> None:
    """Frames in order, one turn at a time; while a turn streams, the next frame is read
    already, so a ``stop`` acts at once (a next ``user_message`` waits for the turn's end)."""
    reading: asyncio.Task[UserMessageFrame | StopFrame | None] | None = None
    forwarding: asyncio.Task[bool] | None = None
    try:
        while True:
            if reading is None:
                reading = asyncio.create_task(_next_frame(websocket, services.settings))
            waiting = {reading} if forwarding is None else {reading, forwarding}
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if forwarding is not None and forwarding.done():
                if not forwarding.result():
                    return
                forwarding = None
            if not reading.done():
                continue
            frame, reading = reading.result(), None
            if isinstance(frame, StopFrame):
                await _stop(websocket, services, record)
            elif frame is not None:
                if forwarding is not None and not await forwarding:
                    return
                forwarding = await _turn(websocket, services, record, frame, origin)
    finally:
        for task in (reading, forwarding):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError):
                    await task


async def _stop(websocket: WebSocket, services: ServicesDep, record: SessionRecord) -> None:
    """A ``stop`` frame: the turn's own frames say it stopped; only a refusal is answered."""
    try:
        await services.turns.stop(record.session_id)
    except ChatifyError as error:
        await _send_error(websocket, error.code, error.message)


async def _relay(websocket: WebSocket, subscription: Subscription, origin: str) -> None:
    """The session's events from other connections (other devices, other transports) as
    frames; when the session ends, say so and close with 4409."""
    while True:
        try:
            event = await subscription.next()
        except Overflowed:
            await websocket.close(code=1013, reason="too far behind; reconnect")
            return
        if event.origin == origin:
            continue  # this connection follows its own turns
        for frame in session_frames(event):
            await websocket.send_json(frame)
        if event.kind == "ended":
            await websocket.close(code=CLOSE_CODES[SessionEnded.code], reason=SessionEnded.code)
            return


def session_frames(event: SessionEvent) -> list[dict[str, Any]]:
    """The frames of one session event."""
    answers = {"client_message_id": event.client_message_id}
    if event.kind == "turn_started":
        return [{"type": "turn_started", "turn": event.turn, "message": event.text, **answers}]
    if event.kind == "delta":
        return [{"type": "ai_response_delta", "content": event.text, **answers}]
    if event.tool is not None:  # tool_call, tool_result
        return [{"type": event.kind, **tool_data(event.tool), **answers}]
    if event.kind == "reply" and event.result is not None:
        return _reply_frames(event.result, answers)
    if event.kind == "turn_error" and event.error is not None:
        return [{"type": "error", "code": event.error.code, "message": event.error.message,
                 **answers}]  # fmt: skip
    if event.kind == "title":
        return [{"type": "session_title", "title": event.text or None}]
    return [{"type": "session_ended", "status": event.status}]


def _reply_frames(result: TurnResult, answers: dict[str, str | None]) -> list[dict[str, Any]]:
    body = MessageResponse.of(result).model_dump()
    status = {
        "type": "backend_status",
        "latency_ms": round(result.latency_ms, 1),
        "usage": body["usage"],
        "model": result.model,
        **answers,
    }
    return [{"type": "ai_response", **body, **answers}, status]


def origin_allowed(websocket: WebSocket, allowed: list[str]) -> bool:
    """Browsers send ``Origin`` and enforce no CORS on WebSockets, so the server must: a page
    of this service's own origin or of CORS_ORIGINS may connect; clients without an
    ``Origin`` (apps, servers) are not browsers and are let through to authentication."""
    origin = websocket.headers.get("origin")
    if origin is None or "*" in allowed or origin in allowed:
        return True
    return urlsplit(origin).netloc == websocket.headers.get("host")


async def _next_frame(
    websocket: WebSocket, settings: Settings
) -> UserMessageFrame | StopFrame | None:
    """The next valid frame; a bad one is answered with an ``error`` event and None. A frame
    over WS_MAX_FRAME_BYTES (one with ``attachments``: room for its images beside) closes the
    socket with 1009 (uvicorn does so itself for the larger bound when it serves with
    ``ws_max_size``, as ``python -m api`` does; other servers may not)."""
    message = await websocket.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    size = _frame_size(message)
    if size > settings.ws_max_frame_bytes and (
        size > settings.ws_frame_limit or '"attachments"' not in (message.get("text") or "")
    ):  # only a frame with images may pass WS_MAX_FRAME_BYTES (docs/images.md)
        await websocket.close(code=MESSAGE_TOO_BIG, reason="message too big")
        raise WebSocketDisconnect(MESSAGE_TOO_BIG)
    try:
        frame = _FRAME.validate_python(json.loads(message.get("text") or "null"))
    except (ValueError, RecursionError) as exc:  # RecursionError: JSON nested too deep
        code, detail = _frame_problem(exc)
        await _send_error(websocket, code, detail)
        return None
    if isinstance(frame, StopFrame):
        return frame
    problem = message_problem(frame.message.strip(), settings.max_message_chars)
    if problem is not None:
        await _send_error(websocket, "validation_error", problem["msg"])
        return None
    return frame.model_copy(update={"message": frame.message.strip()})


def _frame_size(message: Message) -> int:
    """The bytes of a received frame, text or binary."""
    if message.get("bytes") is not None:
        return len(message["bytes"])
    text: str = message.get("text") or ""
    return len(text.encode("utf-8", "surrogatepass"))


def _frame_problem(exc: Exception) -> tuple[str, str]:
    if not isinstance(exc, ValidationError):
        return "bad_frame", 'Frames are JSON text: {"type": "user_message", "message": "..."}'
    first = exc.errors()[0]
    loc = first["loc"][1:]  # past the frame's type, which picked the model
    if not first["loc"] or (loc and loc[0] == "type") or first["type"] == "model_type":
        frames = '{"type": "user_message", "message": "..."} or {"type": "stop"}'
        return "bad_frame", f"Unknown frame; send {frames}"
    where = ".".join(str(part) for part in loc)
    return "validation_error", f"{where}: {first['msg']}"


async def _turn(
    websocket: WebSocket,
    services: ServicesDep,
    record: SessionRecord,
    frame: UserMessageFrame,
    origin: str,
) -> asyncio.Task[bool] | None:
    """Start one turn over the socket: the task forwarding its frames (False once the socket
    was closed), or None when it was refused (the client was told)."""
    try:
        images = await services.admission.images(
            record, [item.as_input() for item in frame.attachments or ()]
        )
        admitted = await services.admission.admit(
            record.user_id,  # the socket holds its stream slot; its session was checked
            lambda: services.turns.submit(
                record.session_id,
                text=frame.message,
                client_message_id=frame.client_message_id,
                stream=True,
                origin=origin,
                images=images,
            ),
            stream=False,
        )
        turn, _ = admitted.started
    except ChatifyError as error:
        answers = {"client_message_id": frame.client_message_id}
        await _send_error(websocket, error.code, error.message, **answers, **retry_of(error))
        return None
    return asyncio.create_task(_forward(websocket, turn))


async def _forward(websocket: WebSocket, turn: Turn) -> bool:
    """A turn's events as frames, each naming the ``client_message_id`` it answers."""
    answers = {"client_message_id": turn.client_message_id}
    async for event in turn.follow(coalesce=True):
        if event.kind == "delta":
            await websocket.send_json(
                {"type": "ai_response_delta", "content": event.content, **answers}
            )
        elif event.tool is not None:  # tool_call, tool_result
            await websocket.send_json({"type": event.kind, **tool_data(event.tool), **answers})
        elif event.kind == "done" and event.result is not None:
            for frame in _reply_frames(event.result, answers):
                await websocket.send_json(frame)
        elif event.kind == "error" and event.error is not None:
            if event.error.code in (SessionNotFound.code, SessionEnded.code):
                await _fail(websocket, event.error, **answers)
                return False
            await _send_error(
                websocket, event.error.code, event.error.message, **answers, **retry_of(event.error)
            )
    return True


def retry_of(error: ChatifyError) -> dict[str, int]:
    """``retry_after`` for an error frame, in whole seconds like HTTP's ``Retry-After``."""
    if error.retry_after is None:
        return {}
    return {"retry_after": max(1, math.ceil(error.retry_after))}


async def _send_error(websocket: WebSocket, code: str, message: str, **extra: Any) -> None:
    await websocket.send_json({"type": "error", "code": code, "message": message, **extra})


async def _fail(websocket: WebSocket, error: ChatifyError, **extra: Any) -> None:
    """Tell the client why, then close with the matching 4xxx code."""
    await _send_error(websocket, error.code, error.message, **extra, **retry_of(error))
    await websocket.close(code=CLOSE_CODES.get(error.code, 1011), reason=error.code)
