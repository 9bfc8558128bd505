"""Try an unsaved personality: the reply to a short conversation, streamed like a session's
turn (admins only). Nothing is stored and no session is created."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from api.deps import AdminDep, ServicesDep
from api.errors import documented
from api.routes.stream import event_stream
from api.schemas import message_problem
from services.conversation.preview import PreviewMessage
from services.conversation.turn_events import Turn, TurnEvent
from services.core.errors import InvalidInput
from services.templates.schema import draft_json_schema

router = APIRouter(prefix="/personalities", tags=["authoring"])


class PreviewMessageBody(BaseModel):
    role: Literal["user", "assistant"]
    content: str = Field(min_length=1, max_length=8000)


class PreviewRequest(BaseModel):
    """A draft personality, a short conversation and a new message."""

    template: dict[str, Any] = Field(
        description="The draft (see /personalities/schema)",
        json_schema_extra=draft_json_schema(),
    )
    history: list[PreviewMessageBody] = Field([], max_length=40)
    message: str = Field(min_length=1)
    variables: dict[str, str] | None = None
    timezone: str | None = Field(None, max_length=64)


_PREVIEW_DOC = {
    "description": "`text/event-stream`: `start`, `delta`…, then `done` "
    "(`{success, response, usage, model}`) or `error` (`{code, message}`)",
    "content": {"text/event-stream": {"schema": {"type": "string"}}},
}


@router.post(
    "/preview",
    responses={200: _PREVIEW_DOC, **documented(401, 403, 413, 422, 429)},
)
async def preview_personality(body: PreviewRequest, services: ServicesDep, admin: AdminDep) -> Any:
    """Stream the reply of an unsaved draft. Nothing is stored and no session is created;
    it counts against the caller's turn rate and open streams."""
    text = body.message.strip()
    problem = message_problem(text, services.settings.max_message_chars)
    if problem is not None:
        raise InvalidInput("Invalid message", problems=[{**problem, "loc": ["body", "message"]}])
    who = admin.user_id or admin.label
    admitted = await services.admission.admit(
        who,
        lambda: services.previews.start(
            body.template,
            history=[PreviewMessage(m.role, m.content) for m in body.history],
            message=text,
            variables=body.variables,
            timezone=body.timezone,
        ),
        stream=True,
    )
    assert admitted.slot is not None
    return event_stream(
        admitted.started,
        after=-1,
        slot=admitted.slot,
        settings=services.settings,
        data=_preview_data,
    )


def _preview_data(turn: Turn, event: TurnEvent) -> dict[str, Any]:
    if event.kind == "start":
        return {"preview": True}
    if event.kind == "delta":
        return {"content": event.content}
    if event.kind == "done":
        assert event.result is not None
        usage = event.result.usage.as_dict() if event.result.usage else None
        return {
            "success": True,
            "response": event.result.reply,
            "usage": usage,
            "model": event.result.model,
        }
    assert event.error is not None
    return {"code": event.error.code, "message": event.error.message}
