"""A user's things: the sessions list a chat app shows, data rights (export, erasure), and
token usage with the daily quota."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from api.deps import CallerDep, PathUserDep, ServicesDep
from api.errors import documented
from api.schemas import (
    ExportedDevice,
    ExportedMessage,
    ExportedSession,
    SessionListItem,
    SessionSummary,
    SessionUsage,
    UserDeleted,
    UserExport,
    UserSessions,
)
from services.core.errors import Forbidden, InvalidCursor
from services.core.records import (
    DayUsage,
    SessionCursor,
    SessionRecord,
    is_session_id,
    isoformat,
    parse_iso,
    utc_now,
)
from services.limits.usage import MAX_DAYS

router = APIRouter(prefix="/chatbot", tags=["sessions"])


@router.get(
    "/users/{user_id}/sessions",
    response_model=UserSessions,
    responses=documented(400, 401, 403, 422, 503),
)
async def list_user_sessions(
    user_id: PathUserDep,
    services: ServicesDep,
    caller: CallerDep,
    status: Annotated[
        Literal["active", "ended", "expired"] | None,
        Query(description="Only sessions in this state; all when absent"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[
        str | None, Query(max_length=400, description="`next_cursor` of the previous page")
    ] = None,
) -> UserSessions:
    """A user's sessions, most recent activity first, with titles and a preview of each one's
    last message; follow `next_cursor` to reach every one (callers bound to a user: their
    own)."""
    if not caller.may_act_for(user_id):
        raise Forbidden("A user may list only their own sessions")
    before = decode_cursor(cursor) if cursor is not None else None
    # One more than the page, to know whether another page follows.
    records = await services.sessions.list_user_sessions(
        user_id, status=status, limit=limit + 1, before=before
    )
    page, more = records[:limit], len(records) > limit
    items = [_item(record, services) for record in page]
    return UserSessions(sessions=items, next_cursor=encode_cursor(page[-1]) if more else None)


@router.get(
    "/users/{user_id}/export",
    response_model=UserExport,
    responses=documented(401, 403, 422, 503),
)
async def export_user(user_id: PathUserDep, services: ServicesDep, caller: CallerDep) -> UserExport:
    """Everything stored for a user: every session with every message (the user themself,
    a server key or an admin)."""
    if not caller.may_act_for(user_id):
        raise Forbidden("A user may export only their own data")
    exported = await services.user_data.export(user_id)
    return UserExport(
        user_id=user_id,
        exported_at=isoformat(utc_now()),
        sessions=[
            ExportedSession(
                **SessionSummary.fields_of(item.record),
                welcome_message=item.record.welcome_message,
                messages=[
                    ExportedMessage.of_stored(m, item.record.session_id) for m in item.messages
                ],
            )
            for item in exported
        ],
        devices=[
            ExportedDevice(**device.as_dict())
            for device in await services.user_data.export_devices(user_id)
        ],
    )


@router.delete(
    "/users/{user_id}",
    response_model=UserDeleted,
    responses=documented(401, 403, 422, 503),
)
async def delete_user(
    user_id: PathUserDep, services: ServicesDep, caller: CallerDep
) -> UserDeleted:
    """Erase every session and message of a user from the store and the caches (the user
    themself, a server key or an admin). Idempotent: a second call erases nothing."""
    if not caller.may_act_for(user_id):
        raise Forbidden("A user may delete only their own data")
    return UserDeleted(deleted_sessions=await services.user_data.erase_user(user_id))


def _item(record: SessionRecord, services: ServicesDep) -> SessionListItem:
    template = services.templates.served(record.template_id)
    return SessionListItem(
        **SessionSummary.fields_of(record),
        template_title=(template.title or template.name) if template else None,
        preview=record.preview,
    )


def encode_cursor(record: SessionRecord) -> str:
    """An opaque cursor just below this session in the list's order."""
    return _encode_position(record.last_activity, record.session_id)


def _encode_position(last_activity: str, session_id: str) -> str:
    raw = json.dumps([last_activity, session_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> SessionCursor:
    """The cursor's position; 400 ``invalid_cursor`` for anything ``encode_cursor`` did not
    make, so crafted text (a lone surrogate, another timestamp format) never reaches a store."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        last_activity, session_id = json.loads(raw)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise InvalidCursor() from exc
    if not (
        isinstance(last_activity, str)
        and isinstance(session_id, str)
        and _is_timestamp(last_activity)
        and is_session_id(session_id)
        # Only the exact text we issue: no second spelling of a position.
        and _encode_position(last_activity, session_id) == cursor
    ):
        raise InvalidCursor()
    return SessionCursor(last_activity, session_id)


def _is_timestamp(text: str) -> bool:
    """Whether ``text`` is a time exactly as ``isoformat`` writes it."""
    try:
        return isoformat(parse_iso(text)) == text
    except ValueError:
        return False


class DayUsageBody(SessionUsage):
    day: str = Field(description="A UTC day", json_schema_extra={"format": "date"})

    @classmethod
    def of_day(cls, usage: DayUsage) -> DayUsageBody:
        """From the domain record."""
        return cls(day=usage.day, **SessionUsage.of(usage).model_dump())


class QuotaBody(BaseModel):
    daily_tokens: int | None = Field(description="USER_DAILY_TOKEN_QUOTA; null: no quota")
    used: int = Field(description="Tokens spent today (UTC), prompt and completion")
    remaining: int | None = Field(description="Tokens left today; null: no quota")
    resets_at: str = Field(description="The next UTC midnight, when today's count restarts")
    daily_cost_micros: int | None = Field(
        None, description="USER_DAILY_COST_LIMIT_MICROS (micro-USD); null: no cost limit"
    )
    cost_remaining_micros: int | None = Field(
        None, description="Micro-USD left today under the cost limit; null: no cost limit"
    )


class UserUsage(BaseModel):
    success: Literal[True] = True
    user_id: str
    days: list[DayUsageBody] = Field(
        description="Every day of the window, newest (today) first; days without usage are zeros"
    )
    today: DayUsageBody
    quota: QuotaBody


@router.get(
    "/users/{user_id}/usage",
    response_model=UserUsage,
    responses=documented(401, 403, 422, 503),
)
async def get_user_usage(
    user_id: PathUserDep,
    services: ServicesDep,
    caller: CallerDep,
    days: Annotated[
        int, Query(ge=1, le=MAX_DAYS, description="How many UTC days, today included")
    ] = 7,
) -> UserUsage:
    """A user's tokens, cost, turns and background calls per UTC day, and today's quota and
    cost limit (the user themself, a server key or an admin)."""
    if not caller.may_act_for(user_id):
        raise Forbidden("A user may read only their own usage")
    report = await services.usage.report(user_id, days=days)
    today = DayUsageBody.of_day(report.today)
    return UserUsage(
        user_id=user_id,
        days=[DayUsageBody.of_day(day) for day in report.days],
        today=today,
        quota=QuotaBody(
            daily_tokens=report.quota,
            used=today.total_tokens,
            remaining=report.remaining,
            resets_at=report.resets_at,
            daily_cost_micros=report.cost_limit,
            cost_remaining_micros=report.cost_remaining,
        ),
    )
