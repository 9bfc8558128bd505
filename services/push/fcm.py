"""Our FCM HTTP v1 client: one ``messages:send`` request per device, on aiohttp.

Why not ``firebase_admin.messaging.send_each_async``: its endpoint is a class constant
(``https://fcm.googleapis.com``) with no emulator setting, so pointing it at a local test
server means patching the library; and it hides ``Retry-After``, which our retries honour.
This client takes the base URL from ``FCM_URL`` and signs with the same service account as
the Firebase store (``google-auth``, already installed with ``firebase-admin``), refreshing
its access token on a thread.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
import orjson
from google.auth.transport.requests import Request

from services.core.firebase_credentials import firebase_credential
from services.core.settings import Settings

logger = logging.getLogger(__name__)
RETRYABLE = frozenset({429, 500, 502, 503, 504})
# FCM's error codes that mean the token will never work again: drop it.
DEAD_TOKEN_CODES = frozenset({"UNREGISTERED", "INVALID_ARGUMENT", "SENDER_ID_MISMATCH"})
_FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
Verdict = Literal["sent", "dead_token", "retry", "failed"]


@dataclass(frozen=True, slots=True)
class SendOutcome:
    """What FCM answered one message: sent, a token to drop, worth retrying, or failed."""

    verdict: Verdict
    status: int = 0  # the HTTP status; 0 when no answer came
    code: str = ""  # FCM's error code, when it named one
    retry_after: float | None = None  # seconds, from a Retry-After header


class FcmClient:
    """Sends FCM v1 messages for one project."""

    def __init__(self, settings: Settings, *, timeout: float = 10.0) -> None:
        project = settings.fcm_project_id or settings.firebase_auth_project_id
        self._url = f"{settings.fcm_url.rstrip('/')}/v1/projects/{project}/messages:send"
        self._credential = (
            firebase_credential(settings).get_credential()
            if settings.fcm_uses_credentials
            else None
        )
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._token_lock = asyncio.Lock()

    async def close(self) -> None:
        """Close the connection pool (at shutdown)."""
        if self._session is not None:
            await self._session.close()

    async def send(self, message: dict[str, Any]) -> SendOutcome:
        """POST one message (``{"token": ..., "notification": ..., "data": ...}``)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        headers = {"Content-Type": "application/json"}
        try:
            if self._credential is not None:
                headers["Authorization"] = f"Bearer {await self._access_token()}"
            async with self._session.post(
                self._url, data=orjson.dumps({"message": message}), headers=headers
            ) as response:
                body = await response.read()
                return _outcome(response.status, body, response.headers.get("Retry-After"))
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            logger.warning("FCM request failed: %s", type(exc).__name__)
            return SendOutcome("retry")

    async def _access_token(self) -> str:
        credential = self._credential
        assert credential is not None
        async with self._token_lock:
            if not credential.valid:
                await asyncio.to_thread(credential.refresh, Request())
        return str(credential.token)


def _outcome(status: int, body: bytes, retry_after: str | None) -> SendOutcome:
    if status == 200:
        return SendOutcome("sent", status)
    fcm_code, status_name = _error_codes(body)
    if status in RETRYABLE:
        return SendOutcome("retry", status, fcm_code or status_name, _seconds(retry_after))
    # Only FCM's own verdict on the token drops it: a 404 or 400 without one (a wrong FCM_URL
    # or project) must not empty every user's devices.
    if fcm_code in DEAD_TOKEN_CODES:
        return SendOutcome("dead_token", status, fcm_code)
    return SendOutcome("failed", status, fcm_code or status_name)


def _error_codes(body: bytes) -> tuple[str, str]:
    """FCM's own error code (``UNREGISTERED``...) and the error's status, each maybe empty."""
    try:
        error = orjson.loads(body)["error"]
        fcm_code = next(
            (
                str(detail["errorCode"])
                for detail in error.get("details") or ()
                if detail.get("@type") == _FCM_ERROR and detail.get("errorCode")
            ),
            "",
        )
        return fcm_code, str(error.get("status") or "")
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return "", ""


def _seconds(header: str | None) -> float | None:
    """A ``Retry-After`` in seconds (the HTTP-date form is not used by FCM)."""
    try:
        return max(0.0, float(header)) if header else None
    except ValueError:
        return None
