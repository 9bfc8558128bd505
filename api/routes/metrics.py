"""``GET /metrics``: this process's Prometheus metrics, for admins or a METRICS_TOKEN."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from starlette.requests import HTTPConnection

from api.deps import ServicesDep, credentials_of
from api.errors import documented
from services.core.errors import Unauthenticated
from services.identity import key_matches

router = APIRouter(tags=["operations"])

_EXPOSITION = {"schema": {"type": "string"}}
_METRICS_DOC = {
    "description": "Prometheus text format 0.0.4, or OpenMetrics 1.0 when the `Accept` header "
    "asks for `application/openmetrics-text`. docs/operations.md names every metric.",
    "content": {"text/plain": _EXPOSITION, "application/openmetrics-text": _EXPOSITION},
}


async def metrics_reader(conn: HTTPConnection, services: ServicesDep) -> None:
    """Lets in ``Authorization: Bearer <METRICS_TOKEN>`` or an admin; else 401 / 403.

    With ``AUTH_MODE=none`` everyone is an admin, as on every admin route, unless
    METRICS_TOKEN is set: then the token is required (a service without auth can still keep
    its metrics to its scraper)."""
    token = services.settings.metrics_token
    credentials = credentials_of(conn)
    if token is not None and credentials.bearer is not None:
        if key_matches(credentials.bearer, token.get_secret_value()):
            return
    caller = await services.auth.authenticate(credentials)
    if token is not None and caller.role == "local":
        raise Unauthenticated("Send the metrics token: Authorization: Bearer <METRICS_TOKEN>")
    caller.require_admin()


MetricsReaderDep = Annotated[None, Depends(metrics_reader)]


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: _METRICS_DOC, **documented(401, 403)},
)
async def get_metrics(_: MetricsReaderDep, request: Request, services: ServicesDep) -> Response:
    """This process's metrics for Prometheus (admin key or claim, or METRICS_TOKEN)."""
    body, content_type = services.metrics.render(request.headers.get("accept"))
    return Response(body, media_type=content_type)
