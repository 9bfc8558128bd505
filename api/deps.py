"""Dependencies as named ``Annotated`` aliases; the lifespan puts ``Services``
(``services.application``) on app state."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Path, Query
from starlette.requests import HTTPConnection

from api.schemas import USER_ID_PATTERN, SendMessageRequest, checked_message
from services.application import Services
from services.conversation.admission import Admitted, owned
from services.conversation.sessions import SessionService
from services.conversation.turn_events import Turn
from services.core.errors import ChatifyError, InvalidInput
from services.core.metrics import Metrics
from services.core.records import SessionRecord
from services.identity import Caller, Credentials
from services.limits.quotas import Quotas

# A page of a session's messages, newest first (the message listings of both formats).
PageLimit = Annotated[int, Query(ge=1, le=200, description="Messages per page")]
BeforeSeq = Annotated[
    int | None, Query(ge=0, le=2**62, description="Only messages with seq below this")
]


def metrics_of(app: Any) -> Metrics | None:
    """An app's metrics, once its lifespan has built them (None before: nothing to count)."""
    services: Services | None = getattr(app.state, "services", None)
    return services.metrics if services is not None else None


async def get_services(conn: HTTPConnection) -> Services:
    """The app's services (built by the lifespan)."""
    services: Services = conn.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_session_service(services: ServicesDep) -> SessionService:
    """The session service."""
    return services.sessions


async def get_quotas(services: ServicesDep) -> Quotas:
    """The abuse limits."""
    return services.quotas


def credentials_of(conn: HTTPConnection) -> Credentials:
    """What a request presented: a bearer token, an X-API-Key, or (WebSocket only, since
    browsers cannot set headers there) a ``token`` query parameter."""
    authorization = conn.headers.get("authorization", "")
    scheme, _, value = authorization.partition(" ")
    return Credentials(
        bearer=value.strip() or None if scheme.lower() == "bearer" else None,
        api_key=conn.headers.get("x-api-key") or None,
        query_token=conn.query_params.get("token") if conn.scope["type"] == "websocket" else None,
    )


async def get_caller(conn: HTTPConnection, services: ServicesDep) -> Caller:
    """The authenticated caller, or 401 ``unauthenticated``."""
    return await services.auth.authenticate(credentials_of(conn))


async def get_caller_or_error(conn: HTTPConnection, services: ServicesDep) -> Caller | ChatifyError:
    """The same, with the error returned rather than raised (a WebSocket closes with it)."""
    try:
        return await get_caller(conn, services)
    except ChatifyError as error:
        return error


QuotasDep = Annotated[Quotas, Depends(get_quotas)]
CallerDep = Annotated[Caller, Depends(get_caller)]


async def get_admin(caller: CallerDep) -> Caller:
    """The caller, if an admin (AUTH_MODE=none: everyone); else 403 ``forbidden``."""
    caller.require_admin()
    return caller


AdminDep = Annotated[Caller, Depends(get_admin)]
CallerOrErrorDep = Annotated[Caller | ChatifyError, Depends(get_caller_or_error)]
SessionServiceDep = Annotated[SessionService, Depends(get_session_service)]
SessionIdPath = Annotated[str, Path(description="The session's id (a UUID)")]


async def valid_session(
    session_id: SessionIdPath, sessions: SessionServiceDep, caller: CallerDep
) -> SessionRecord:
    """The caller's stored session named in the path, or 404 ``session_not_found``."""
    return owned(await sessions.get_session(session_id), caller)


ValidSessionDep = Annotated[SessionRecord, Depends(valid_session)]

ME = "me"
"""The ``user_id`` in a path that means the authenticated caller's own id: reserved, never a
user's id in these routes (a user whose id is ``me`` reaches their data as ``me`` too)."""

UserIdPath = Annotated[
    str,
    Path(
        pattern=USER_ID_PATTERN,
        description="A user id (1-128 characters of A-Z a-z 0-9 _ . : @ -), or `me`: the "
        "authenticated caller's own id, whatever its characters (a Firebase uid with a space, "
        "`/` or non-ASCII letters is reachable only as `me`). `me` needs a caller bound to a "
        "user (Firebase ID token, per-user API key); for any other caller it is 422.",
        examples=["me", "user_12345"],
    ),
]


async def path_user(user_id: UserIdPath, caller: CallerDep) -> str:
    """The user a ``/users/{user_id}`` route acts for: ``me`` is the caller's own id."""
    if user_id != ME:
        return user_id
    if caller.user_id is None:
        problem = {
            "type": "unbound_caller",
            "loc": ["path", "user_id"],
            "msg": "'me' needs a caller bound to a user (an ID token or a per-user key)",
        }
        raise InvalidInput("Invalid request", problems=[problem])
    return caller.user_id


PathUserDep = Annotated[str, Depends(path_user)]


async def admit_message(
    services: Services,
    caller: Caller,
    session_id: str,
    body: SendMessageRequest,
    *,
    stream: bool,
) -> Admitted[tuple[Turn, bool]]:
    """A turn of the JSON or SSE route admitted and started, or joined by its
    ``client_message_id``: the turn, and whether it was joined."""
    cid = body.client_message_id
    record = await services.admission.session(session_id, caller, client_message_id=cid)
    text = checked_message(body, services.settings)
    images = await services.admission.images(
        record, [item.as_input() for item in body.attachments or ()]
    )
    return await services.admission.admit(
        record,
        lambda: services.turns.submit(
            session_id, text=text, client_message_id=cid, stream=stream, images=images
        ),
        stream=stream,
    )
