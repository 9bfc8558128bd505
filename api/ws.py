"""The real-time channel: turns over one WebSocket, streamed as they are typed."""

from __future__ import annotations

import json
import logging
from typing import Any, Literal

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import BaseModel, Field, ValidationError

from api.deps import ServicesDep, SessionIdPath
from api.schemas import MessageBody, MessageResponse, message_problem
from services.errors import ChatifyError, SessionEnded, SessionNotFound
from services.turns import Turn

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/chatbot", tags=["streaming"])
HISTORY_ON_CONNECT = 50
CLOSE_CODES = {SessionNotFound.code: 4404, SessionEnded.code: 4409}


class UserMessageFrame(BaseModel):
    """What a client sends."""

    type: Literal["user_message"]
    message: str
    client_message_id: str | None = Field(None, min_length=1, max_length=64)


@router.websocket("/session/{session_id}/ws")
async def session_socket(
    websocket: WebSocket, session_id: SessionIdPath, services: ServicesDep
) -> None:
    """`chat_history` on connect; then for each `user_message`: `ai_response_delta`…,
    `ai_response`, `backend_status`. Recoverable errors arrive as `error` events; an unknown or
    ended session closes the socket with 4404 or 4409."""
    await websocket.accept()
    try:
        await services.turns.check_session(session_id)
    except ChatifyError as error:
        await _fail(websocket, error)
        return
    history = await services.sessions.messages(session_id, limit=HISTORY_ON_CONNECT)
    await websocket.send_json(
        {"type": "chat_history", "messages": [MessageBody.of(m).model_dump() for m in history]}
    )
    try:
        while True:
            frame = await _next_frame(websocket, services.settings.max_message_chars)
            if frame is not None and not await _turn(websocket, services, session_id, frame):
                return
    except WebSocketDisconnect:
        return


async def _next_frame(websocket: WebSocket, limit: int) -> UserMessageFrame | None:
    """The next valid frame; a bad one is answered with an ``error`` event and None."""
    message = await websocket.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    try:
        frame = UserMessageFrame.model_validate(json.loads(message.get("text") or "null"))
    except ValueError as exc:
        code, detail = _frame_problem(exc)
        await _send_error(websocket, code, detail)
        return None
    problem = message_problem(frame.message.strip(), limit)
    if problem is not None:
        await _send_error(websocket, "validation_error", problem["msg"])
        return None
    return frame.model_copy(update={"message": frame.message.strip()})


def _frame_problem(exc: ValueError) -> tuple[str, str]:
    if not isinstance(exc, ValidationError):
        return "bad_frame", 'Frames are JSON text: {"type": "user_message", "message": "..."}'
    first = exc.errors()[0]
    if (first["loc"] and first["loc"][0] == "type") or first["type"] == "model_type":
        return "bad_frame", 'Unknown frame; send {"type": "user_message", "message": "..."}'
    where = ".".join(str(part) for part in first["loc"])
    return "validation_error", f"{where}: {first['msg']}"


async def _turn(
    websocket: WebSocket, services: ServicesDep, session_id: str, frame: UserMessageFrame
) -> bool:
    """Run one turn over the socket; False when the socket was closed."""
    try:
        turn, _ = services.turns.submit(
            session_id, text=frame.message, client_message_id=frame.client_message_id, stream=True
        )
    except ChatifyError as error:
        await _send_error(websocket, error.code, error.message)
        return True
    return await _forward(websocket, turn)


async def _forward(websocket: WebSocket, turn: Turn) -> bool:
    async for event in turn.follow():
        if event.kind == "delta":
            await websocket.send_json({"type": "ai_response_delta", "content": event.content})
        elif event.kind == "done" and event.result is not None:
            body = MessageResponse.of(event.result).model_dump()
            await websocket.send_json({"type": "ai_response", **body})
            await websocket.send_json(
                {
                    "type": "backend_status",
                    "latency_ms": round(event.result.latency_ms, 1),
                    "usage": body["usage"],
                    "model": event.result.model,
                }
            )
        elif event.kind == "error" and event.error is not None:
            if event.error.code in CLOSE_CODES:
                await _fail(websocket, event.error)
                return False
            await _send_error(websocket, event.error.code, event.error.message)
    return True


async def _send_error(websocket: WebSocket, code: str, message: str, **extra: Any) -> None:
    await websocket.send_json({"type": "error", "code": code, "message": message, **extra})


async def _fail(websocket: WebSocket, error: ChatifyError) -> None:
    """Tell the client why, then close with the matching 4xxx code."""
    await _send_error(websocket, error.code, error.message)
    await websocket.close(code=CLOSE_CODES.get(error.code, 1011), reason=error.code)
