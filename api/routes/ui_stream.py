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
flight (``useChat({resume: true})``), or answers 204 when there is none. ``GET
/chat/{id}/messages`` gives the stored history as ``UIMessage``s (``useChat({id, messages})``
after a reload), with the ids and parts the stream gave.
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

from api.attachment_bodies import ATTACHMENT_PATH
from api.deps import (
    BeforeSeq,
    CallerDep,
    PageLimit,
    ServicesDep,
    SessionServiceDep,
    ValidSessionDep,
)
from api.errors import documented
from api.events import SSE_EVENT_SCHEMA
from api.schemas import invalid, message_problem
from services.application import Services
from services.attachments.service import ImageInput
from services.conversation.turn_events import Rewrite, Turn, TurnEvent
from services.core.records import StoredMessage, ToolCall, ToolUse
from services.limits.quotas import StreamSlot

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


class UITextPart(BaseModel):
    """A message's text."""

    type: Literal["text"] = "text"
    text: str
    state: Literal["done"] = "done"


class UIFilePart(BaseModel):
    """An image the user sent (docs/images.md): ``url`` is the service route that serves it
    to the session's user (same credentials)."""

    type: Literal["file"] = "file"
    mediaType: str
    url: str


class UIToolImages(BaseModel):
    """The image tool's result: its text and the images it made."""

    text: str
    images: list[str]


class UIToolOutputPart(BaseModel):
    """A tool the reply called and its result; the service ran it (``providerExecuted``)."""

    type: Literal["dynamic-tool"] = "dynamic-tool"
    toolName: str = Field(description="`server/tool`")
    toolCallId: str
    state: Literal["output-available"] = "output-available"
    input: dict[str, Any]
    output: str | UIToolImages = Field(description="The result (with images: `{text, images}`)")
    providerExecuted: Literal[True] = True


class UIToolErrorPart(BaseModel):
    """A tool call that failed, timed out or was made wrongly; the model was told so."""

    type: Literal["dynamic-tool"] = "dynamic-tool"
    toolName: str = Field(description="`server/tool`")
    toolCallId: str
    state: Literal["output-error"] = "output-error"
    input: dict[str, Any]
    errorText: str
    providerExecuted: Literal[True] = True


class UIMessageMetadata(BaseModel):
    session_id: str
    seq: int = Field(description="Position in the session, from 0")
    timestamp: str
    finish_reason: Literal["stopped"] | None = Field(
        None, description="Replies: `stopped` when a stop cut it short; else null"
    )


class UIStoredMessage(BaseModel):
    """A stored message as the AI SDK's ``UIMessage``."""

    id: str = Field(
        description="A user message's id (its `client_message_id`, else `{session_id}-{seq}`); "
        "a reply's is its user message's id plus `-reply`, as its stream's `messageId`"
    )
    role: Literal["user", "assistant"]
    metadata: UIMessageMetadata
    parts: list[UITextPart | UIFilePart | UIToolOutputPart | UIToolErrorPart] = Field(
        description="The text, then a user message's images or a reply's tool calls in order"
    )


class UIMessagesPage(BaseModel):
    success: Literal[True] = True
    messages: list[UIStoredMessage] = Field(description="Oldest first: `useChat`'s `messages`")
    next_before: int | None = Field(description="Pass as `before` for the previous page")


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
    message parts. Resending it (same message id) resumes or replays, never runs it twice.
    `trigger: "regenerate-message"` (`regenerate()`) answers that message again, and a
    `messageId` with `submit-message` (`sendMessage({ text, messageId })`) edits the stored
    message of that id: both as `.../regenerate` and `PATCH .../messages/{seq}` do."""
    text, client_message_id, files = _last_user_message(body, services.settings.max_message_chars)
    admission = services.admission
    record = await admission.session(body.id, caller, client_message_id=client_message_id)
    rewrite = await _rewrite(services, body, record.session_id, client_message_id)
    cid: str | None = client_message_id
    if rewrite is not None and rewrite.seq is None:
        text, cid = "", None  # a regenerate answers the stored message, under no id of its own
    elif rewrite is not None:
        cid = _stored_id(record.session_id, client_message_id)
    images = await admission.images(record, files) if rewrite is None else ()
    admitted = await admission.admit(
        record,
        lambda: services.turns.submit(
            record.session_id,
            text=text,
            client_message_id=cid,
            stream=True,
            rewrite=rewrite,
            images=images,
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


@router.get(
    "/chat/{session_id}/messages",
    response_model=UIMessagesPage,
    responses=documented(401, 404, 422, 503),
)
async def list_ui_messages(
    session: ValidSessionDep,
    sessions: SessionServiceDep,
    limit: PageLimit = 50,
    before: BeforeSeq = None,
) -> UIMessagesPage:
    """The stored history as AI SDK `UIMessage`s for `useChat({id, messages})` after a reload,
    with the ids and parts the stream gave: the newest page, oldest first (follow
    `next_before` back)."""
    page = await sessions.messages(session.session_id, limit=limit, before=before)
    asked = None
    if page and page[0].role == "assistant":
        # A reply's id is its user message's, which the page starts after.
        earlier = await sessions.messages(session.session_id, limit=1, before=page[0].seq)
        asked = earlier[-1] if earlier else None
    messages = []
    for message in page:
        messages.append(ui_message(session.session_id, message, asked))
        asked = message
    next_before = page[0].seq if page and page[0].seq > 0 else None
    return UIMessagesPage(messages=messages, next_before=next_before)


def ui_message(
    session_id: str, message: StoredMessage, asked: StoredMessage | None
) -> UIStoredMessage:
    """A stored message as a ``UIMessage``; ``asked`` is the message before it."""
    if message.role == "user":
        message_id = message.client_message_id or f"{session_id}-{message.seq}"
    else:
        asked_id = asked.client_message_id if asked is not None else None
        message_id = f"{asked_id or f'{session_id}-{message.seq - 1}'}-reply"
    parts: list[UITextPart | UIFilePart | UIToolOutputPart | UIToolErrorPart] = [
        UITextPart(text=message.content)
    ]
    for image in message.attachments:
        url = ATTACHMENT_PATH.format(session_id=session_id, attachment_id=image.id)
        parts.append(UIFilePart(mediaType=image.media_type, url=url))
    for use in message.tools:
        call = {"toolName": use.call.name, "toolCallId": use.call.id, "input": use.call.arguments}
        if use.is_error:
            parts.append(UIToolErrorPart(**call, errorText=use.result))
        else:
            parts.append(UIToolOutputPart(**call, output=_tool_output(use)))
    metadata = UIMessageMetadata(
        session_id=session_id,
        seq=message.seq,
        timestamp=message.timestamp,
        finish_reason="stopped" if message.finish_reason == "stopped" else None,
    )
    return UIStoredMessage(id=message_id, role=message.role, metadata=metadata, parts=parts)


async def _rewrite(
    services: Services, body: UIChatRequest, session_id: str, message_id: str
) -> Rewrite | None:
    """What the request asks beside a new turn: a regenerate of the last stored user message
    (an earlier one: an edit with its text), or an edit of the stored message ``message_id``
    (the body's ``messageId`` names it); None for a new message, a resend of one, or one
    that was never stored."""
    regenerate = body.trigger == "regenerate-message"
    edit = body.trigger in (None, "submit-message") and body.messageId == message_id
    if not (regenerate or edit):
        return None
    seq = await _seq_of(services, session_id, message_id)
    if seq is None:
        return None  # never stored (its turn failed): answered as a new message
    if regenerate:
        last = await services.sessions.messages(session_id, limit=1)
        if last and last[-1].seq == seq + 1:
            return Rewrite(asked_id=message_id)
    return Rewrite(seq=seq, asked_id=message_id)


async def _seq_of(services: Services, session_id: str, message_id: str) -> int | None:
    """The seq of the stored user message a ``UIMessage`` id names (as ``ui_message`` gave
    it: its ``client_message_id``, or ``{session_id}-{seq}``)."""
    prefix = f"{session_id}-"
    if message_id.startswith(prefix) and message_id[len(prefix) :].isdigit():
        return int(message_id[len(prefix) :])
    stored = await services.store.find_turn(session_id, message_id)
    return stored.user.seq if stored is not None else None


def _stored_id(session_id: str, message_id: str) -> str | None:
    """The ``client_message_id`` a message of this UI id is stored with: none for the ids
    ``ui_message`` makes of a seq (they name the message already)."""
    prefix = f"{session_id}-"
    return (
        None
        if message_id.startswith(prefix) and message_id[len(prefix) :].isdigit()
        else message_id
    )


def _last_user_message(body: UIChatRequest, limit: int) -> tuple[str, str, list[ImageInput]]:
    """The last user message's text, id and ``file`` parts (its images)."""
    for index in range(len(body.messages) - 1, -1, -1):
        message = body.messages[index]
        if message.role == "user":
            files = [_file_input(p) for p in message.parts if p.type == "file"]
            text = "".join(p.text or "" for p in message.parts if p.type == "text").strip()
            where = ("body", "messages", index)
            problem = message_problem(text, limit)
            if problem is None and not 1 <= len(message.id) <= 64:
                problem = {"type": "string_too_long", "msg": "Message ids have 1-64 characters"}
            if problem is not None:
                raise RequestValidationError([{**problem, "loc": where}])
            return text, message.id, files
    raise invalid("body", "messages", msg="No user message", kind="missing")


def _file_input(part: UIMessagePart) -> ImageInput:
    """A ``file`` part (``mediaType``, ``url``: a ``data:`` URL) as an image to check."""
    extra = part.model_extra or {}
    url, media_type = extra.get("url"), extra.get("mediaType")
    return ImageInput(
        url=url if isinstance(url, str) else "",
        media_type=media_type if isinstance(media_type, str) else None,
    )


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
    return {"type": "tool-output-available", "toolCallId": item.call.id,
            "output": _tool_output(item), "providerExecuted": True, "dynamic": True}  # fmt: skip


def _tool_output(use: ToolUse) -> Any:
    """A tool's result as the UI shows it: its text, with the image tool's images beside."""
    return {"text": use.result, "images": list(use.images)} if use.images else use.result


def ui_parts(turn: Turn, event: TurnEvent) -> list[dict[str, Any]]:
    """The UI message stream parts of one turn event."""
    if event.kind == "start":
        asked = turn.rewrite.asked_id if turn.rewrite is not None else None
        message_id = f"{asked or turn.client_message_id or turn.session_id}-reply"
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
            "finish_reason": result.finish_reason,
        }
        return [
            {"type": "text-end", "id": _TEXT_ID},
            {"type": "finish", "messageMetadata": metadata},
        ]
    assert event.error is not None
    return [{"type": "error", "errorText": f"{event.error.code}: {event.error.message}"}]
