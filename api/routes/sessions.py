"""Session routes: create, one turn, stop it, read, history, rename, end."""

from __future__ import annotations

import dataclasses
from typing import Annotated

from fastapi import APIRouter, Query, Response

from api.deps import (
    ME,
    BeforeSeq,
    CallerDep,
    PageLimit,
    ServicesDep,
    SessionIdPath,
    SessionServiceDep,
    ValidSessionDep,
    admit_message,
)
from api.errors import documented
from api.schemas import (
    CreateSessionRequest,
    CreateSessionResponse,
    EndSessionResponse,
    MessageBody,
    MessageResponse,
    MessagesPage,
    RenameSessionRequest,
    SendMessageRequest,
    SessionDetail,
    SessionResponse,
    SessionStats,
    SessionSummary,
    SessionUsage,
    StopResponse,
    invalid,
)
from services.application import Services
from services.conversation.titles import client_title
from services.core.records import SessionRecord, parse_iso
from services.identity import Caller

router = APIRouter(prefix="/chatbot", tags=["sessions"])
HISTORY_IN_DETAIL = 50


@router.post(
    "/session",
    status_code=201,
    response_model=CreateSessionResponse,
    responses=documented(401, 403, 404, 409, 413, 422, 429, 503),
)
async def create_session(
    body: CreateSessionRequest, services: ServicesDep, caller: CallerDep
) -> Response:
    """Start a session with a personality (the default one when template_id is absent).
    A non-public personality answers 404 to callers bound to a user (Firebase ID tokens,
    per-user keys); server keys, admins and AUTH_MODE=none may use it."""
    created = await start_session(services, caller, body)
    return Response(created, status_code=201, media_type="application/json")


async def start_session(services: Services, caller: Caller, body: CreateSessionRequest) -> bytes:
    """A new session, as the 201 body's JSON (the turn lane serves it too)."""
    user_id = caller.resolve_user(body.user_id)
    if user_id is None:
        raise invalid("body", "user_id", msg="Field required", kind="missing")
    if user_id == ME and caller.role != "user":
        # The user routes read `me` as the caller's own id: a user named so could not reach
        # its data there.
        raise invalid("body", "user_id", msg="'me' is reserved: it names the caller's own id")
    await services.quotas.take_session(user_id)
    created = await services.sessions.create_session(
        user_id=user_id,
        template_id=body.template_id,
        variables=body.variables,
        timezone=body.timezone,
        # Non-public personalities are for the operator's own backends: end users bound to
        # their id (Firebase users, per-user keys) cannot start them.
        public_only=caller.role == "user",
    )
    return (
        CreateSessionResponse(
            session_id=created.record.session_id,
            template_id=created.record.template_id,
            welcome_message=created.welcome_message,
            created_at=created.record.created_at,
        )
        .model_dump_json()
        .encode()
    )


@router.post(
    "/session/{session_id}/message",
    response_model=MessageResponse,
    responses=documented(401, 404, 409, 413, 422, 429, 502, 503, 504),
)
async def send_message(
    session_id: SessionIdPath, body: SendMessageRequest, services: ServicesDep, caller: CallerDep
) -> Response:
    """One turn: the reply is stored with the message before it is returned."""
    reply = await answer_message(services, caller, session_id, body)
    return Response(reply, media_type="application/json")


async def answer_message(
    services: Services, caller: Caller, session_id: str, body: SendMessageRequest
) -> bytes:
    """One turn through the admission and the pipeline, as the 200 body's JSON (the turn
    lane serves it too, see ``api/lane.py``)."""
    admitted = await admit_message(services, caller, session_id, body, stream=False)
    turn, joined = admitted.started
    result = await turn.result()
    if joined:
        result = dataclasses.replace(result, replayed=True)
    # Serialised by pydantic-core directly: FastAPI would validate the model a second time.
    return MessageResponse.of(result).model_dump_json().encode()


@router.post(
    "/session/{session_id}/stop",
    response_model=StopResponse,
    responses=documented(401, 404, 409, 503),
)
async def stop_turn(session: ValidSessionDep, services: ServicesDep) -> StopResponse:
    """Stop the session's turn in flight, on whichever replica runs it: the model request is
    closed and the text so far is stored as the reply (`finish_reason: "stopped"`). 409
    `no_turn_in_flight` when none runs; a second stop while the turn is still being stored
    answers 200 again and changes nothing."""
    await services.turns.stop(session.session_id)
    return StopResponse(session_id=session.session_id)


@router.get(
    "/session/{session_id}",
    response_model=SessionDetail,
    responses=documented(401, 404, 503),
)
async def get_session(session: ValidSessionDep, sessions: SessionServiceDep) -> SessionDetail:
    """A session's state and its last 50 messages."""
    history = await sessions.messages(session.session_id, limit=HISTORY_IN_DETAIL)
    return SessionDetail(
        **SessionSummary.fields_of(session),
        template_version=session.template_version,
        welcome_message=session.welcome_message,
        conversation_history=[MessageBody.of(m, session_id=session.session_id) for m in history],
        usage=SessionUsage.of(session.usage_totals),
    )


@router.get(
    "/session/{session_id}/messages",
    response_model=MessagesPage,
    responses=documented(401, 404, 422, 503),
)
async def list_messages(
    session: ValidSessionDep,
    sessions: SessionServiceDep,
    limit: PageLimit = 50,
    before: BeforeSeq = None,
    after: Annotated[
        int | None,
        Query(
            ge=-1,
            le=2**62,
            description="Forward sync: only messages with seq above this (the last one the "
            "client holds; -1 for all), oldest first; follow `next_after`. Not with `before`.",
        ),
    ] = None,
) -> MessagesPage:
    """A page of history, oldest first: the newest page (follow `next_before` back), or with
    `after` the messages a client does not have yet (follow `next_after` forward)."""
    if after is not None:
        if before is not None:
            raise invalid("query", "after", msg="Use after or before")
        page = await sessions.messages_after(session.session_id, after=after, limit=limit)
        next_after = page[-1].seq if len(page) == limit else None
        return MessagesPage(
            messages=[MessageBody.of(m, session_id=session.session_id) for m in page],
            next_before=None,
            next_after=next_after,
        )
    page = await sessions.messages(session.session_id, limit=limit, before=before)
    next_before = page[0].seq if page and page[0].seq > 0 else None
    messages = [MessageBody.of(m, session_id=session.session_id) for m in page]
    return MessagesPage(messages=messages, next_before=next_before)


@router.delete(
    "/session/{session_id}",
    response_model=EndSessionResponse,
    responses=documented(401, 404, 503),
)
async def end_session(
    session: ValidSessionDep,
    services: ServicesDep,
    purge: Annotated[
        bool, Query(description="Erase the session and its messages from the store for good")
    ] = False,
) -> Response:
    """End a session (idempotent): its record and history stay stored. With `purge=true`,
    erase it instead (then it is 404 like one that never existed)."""
    ended = await finish_session(services, session, purge=purge)
    return Response(ended, media_type="application/json")


async def finish_session(services: Services, session: SessionRecord, *, purge: bool) -> bytes:
    """End or erase the caller's session, as the 200 body's JSON (the turn lane serves it
    too)."""
    if purge:
        await services.user_data.erase_session(session)
        record = session
        message = "Session deleted"
    else:
        record = await services.sessions.end_session(session.session_id)
        message = "Session ended successfully"
    ended_at = parse_iso(record.ended_at or record.last_activity)
    return (
        EndSessionResponse(
            message=message,
            stats=SessionStats(
                duration_seconds=round(
                    (ended_at - parse_iso(record.created_at)).total_seconds(), 3
                ),
                message_count=record.message_count,
                total_messages=record.message_count * 2,
            ),
        )
        .model_dump_json()
        .encode()
    )


@router.patch(
    "/session/{session_id}",
    response_model=SessionResponse,
    responses=documented(401, 404, 422, 503),
)
async def rename_session(
    body: RenameSessionRequest, session: ValidSessionDep, sessions: SessionServiceDep
) -> SessionResponse:
    """Rename a session (`{"title": null}` clears it). A generated title never overwrites
    one set here."""
    record = await sessions.rename(session.session_id, client_title(body.title))
    return SessionResponse(**SessionSummary.fields_of(record))
