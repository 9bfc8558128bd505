"""Regenerate a reply, edit a user message, and the variants both leave behind.

A regenerate or an edit is a turn (``services.conversation.branches``): the same admission
(limits, the session's queue), the same reply (JSON, or SSE events as ``.../message/stream``)
and idempotency by its own ``client_message_id``.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Path, Response
from pydantic import BaseModel, Field
from sse_starlette import EventSourceResponse

from api.deps import CallerDep, ServicesDep, SessionIdPath, ValidSessionDep
from api.errors import documented
from api.routes.stream import _STREAM_DOC, event_data, event_stream
from api.schemas import MessageBody, MessageResponse, SendMessageRequest, checked_message
from services.application import Services
from services.conversation.turn_events import Rewrite, Turn
from services.identity import Caller
from services.limits.quotas import StreamSlot

router = APIRouter(prefix="/chatbot", tags=["sessions"])

SeqPath = Annotated[int, Path(ge=0, le=2**62, description="The message's seq in the session")]
VariantPath = Annotated[int, Path(ge=1, le=2**31, description="The variant's number, from 1")]


class RegenerateRequest(BaseModel):
    """Answer the session's last user message again."""

    client_message_id: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="Idempotency key of this regenerate: resent while its reply is still the "
        "session's last, it returns that reply without a new LLM call (the reply carries it "
        "as its `client_message_id`)",
        examples=["5f0c9a2e-regen-1"],
    )


class VariantBody(BaseModel):
    variant: int = Field(description="Its number at this seq, from 1; pass it to `select`")
    created_at: str = Field(description="When it left the active branch")
    messages: list[MessageBody] = Field(
        description="What it holds from the seq on: an earlier reply, or the branch an edit "
        "replaced (the user message and every message after it)"
    )


class VariantsPage(BaseModel):
    success: Literal[True] = True
    seq: int
    variants: list[VariantBody] = Field(description="By number; the active branch is not listed")


class SelectedVariant(BaseModel):
    success: Literal[True] = True
    seq: int
    messages: list[MessageBody] = Field(
        description="The active messages from the seq on, now the chosen variant's; the "
        "branch they replaced is kept as a variant under the chosen one's number"
    )


_ERRORS = documented(401, 404, 409, 413, 422, 429, 502, 503, 504)
_STREAM_ERRORS = documented(401, 404, 409, 413, 422, 429, 503)


@router.post("/session/{session_id}/regenerate", response_model=MessageResponse, responses=_ERRORS)
async def regenerate_reply(
    session_id: SessionIdPath,
    services: ServicesDep,
    caller: CallerDep,
    body: RegenerateRequest | None = None,
) -> Response:
    """Answer the last user message again: the new reply becomes the active one at the same
    seq, the earlier one a variant. 409 `nothing_to_regenerate` before the first message."""
    cid = body.client_message_id if body is not None else None
    return await _answer(services, caller, session_id, "", cid, Rewrite())


@router.post(
    "/session/{session_id}/regenerate/stream",
    response_class=EventSourceResponse,
    responses={200: _STREAM_DOC, **_STREAM_ERRORS},
)
async def stream_regenerate_reply(
    session_id: SessionIdPath,
    services: ServicesDep,
    caller: CallerDep,
    body: RegenerateRequest | None = None,
    last_event_id: Annotated[str | None, Header()] = None,
) -> EventSourceResponse:
    """`.../regenerate`, streamed as `.../message/stream` streams a turn."""
    cid = body.client_message_id if body is not None else None
    return await _stream(services, caller, session_id, "", cid, Rewrite(), last_event_id)


@router.patch(
    "/session/{session_id}/messages/{seq}", response_model=MessageResponse, responses=_ERRORS
)
async def edit_message(
    session_id: SessionIdPath,
    seq: SeqPath,
    body: SendMessageRequest,
    services: ServicesDep,
    caller: CallerDep,
) -> Response:
    """Replace a user message's text and answer it anew; the messages after it leave the
    active branch (kept as a variant of `seq`). 404 `message_not_found`, 422
    `not_a_user_message` for a reply."""
    text = checked_message(body, services.settings)
    rewrite = Rewrite(seq=seq)
    return await _answer(services, caller, session_id, text, body.client_message_id, rewrite)


@router.patch(
    "/session/{session_id}/messages/{seq}/stream",
    response_class=EventSourceResponse,
    responses={200: _STREAM_DOC, **_STREAM_ERRORS},
)
async def stream_edit_message(
    session_id: SessionIdPath,
    seq: SeqPath,
    body: SendMessageRequest,
    services: ServicesDep,
    caller: CallerDep,
    last_event_id: Annotated[str | None, Header()] = None,
) -> EventSourceResponse:
    """`PATCH .../messages/{seq}`, streamed as `.../message/stream` streams a turn."""
    text = checked_message(body, services.settings)
    rewrite = Rewrite(seq=seq)
    cid = body.client_message_id
    return await _stream(services, caller, session_id, text, cid, rewrite, last_event_id)


@router.get(
    "/session/{session_id}/messages/{seq}/variants",
    response_model=VariantsPage,
    responses=documented(401, 404, 422, 503),
)
async def list_variants(
    session: ValidSessionDep, seq: SeqPath, services: ServicesDep
) -> VariantsPage:
    """The variants kept at a seq: earlier replies (a reply's seq) and branches an edit
    replaced (a user message's seq). The active one is the message at `seq` in the history."""
    variants = await services.turns.branches.variants(session.session_id, seq)
    return VariantsPage(
        seq=seq,
        variants=[
            VariantBody(
                variant=v.number,
                created_at=v.created_at,
                messages=[MessageBody.of(m) for m in v.messages],
            )
            for v in variants
        ],
    )


@router.post(
    "/session/{session_id}/messages/{seq}/variants/{variant}/select",
    response_model=SelectedVariant,
    responses=documented(401, 404, 409, 422, 429, 503),
)
async def select_variant(
    session: ValidSessionDep, seq: SeqPath, variant: VariantPath, services: ServicesDep
) -> SelectedVariant:
    """Make a variant the active branch again, in the session's queue: it is what the model
    is sent from then on. 404 `message_not_found` when there is no such variant."""
    chosen = await services.turns.branches.select(session, seq, variant)
    return SelectedVariant(seq=seq, messages=[MessageBody.of(m) for m in chosen])


async def _start(
    services: Services,
    caller: Caller,
    session_id: str,
    text: str,
    cid: str | None,
    rewrite: Rewrite,
    *,
    stream: bool,
) -> tuple[Turn, bool, StreamSlot | None]:
    record = await services.admission.session(session_id, caller, client_message_id=None)
    admitted = await services.admission.admit(
        record,
        lambda: services.turns.submit(
            session_id, text=text, client_message_id=cid, stream=stream, rewrite=rewrite
        ),
        stream=stream,
    )
    turn, joined = admitted.started
    return turn, joined, admitted.slot


async def _answer(
    services: Services,
    caller: Caller,
    session_id: str,
    text: str,
    cid: str | None,
    rewrite: Rewrite,
) -> Response:
    turn, joined, _ = await _start(services, caller, session_id, text, cid, rewrite, stream=False)
    result = await turn.result()
    if joined:
        result = dataclasses.replace(result, replayed=True)
    return Response(MessageResponse.of(result).model_dump_json(), media_type="application/json")


async def _stream(
    services: Services,
    caller: Caller,
    session_id: str,
    text: str,
    cid: str | None,
    rewrite: Rewrite,
    last_event_id: str | None,
) -> EventSourceResponse:
    turn, joined, slot = await _start(services, caller, session_id, text, cid, rewrite, stream=True)
    assert slot is not None
    try:
        after = int(last_event_id) if last_event_id is not None else -1
    except ValueError:
        after = -1
    return event_stream(
        turn, after=after, slot=slot, settings=services.settings, data=event_data, joined=joined
    )
