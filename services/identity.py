"""Who is calling: AUTH_MODE none, api_key (constant-time key check) or firebase (ID tokens).

The transports hand over the raw credentials; this module never sees a request. Keys and
tokens never reach a log line or an error message.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import uuid
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import firebase_admin
import google.auth.credentials
from cachetools import TTLCache
from firebase_admin import auth as firebase_auth
from firebase_admin import exceptions as firebase_errors

from services.core.errors import Forbidden, Unauthenticated
from services.core.firebase_credentials import firebase_credential
from services.core.records import Clock, utc_now
from services.core.settings import Settings

logger = logging.getLogger(__name__)
Role = Literal["local", "service", "user", "admin"]
CACHE_SECONDS = 300  # how long a verified ID token is remembered, at most


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated caller.

    ``local`` (AUTH_MODE=none) and ``service`` (a server key acting for its users) may name any
    user; ``user`` is bound to ``user_id``; ``admin`` may do anything, operations included.
    """

    role: Role
    user_id: str | None = None
    label: str = "local"  # for logs and limits: never a secret

    def may_act_for(self, user_id: str) -> bool:
        """Whether this caller may read or write ``user_id``'s sessions."""
        return self.role != "user" or self.user_id == user_id

    def resolve_user(self, requested: str | None) -> str | None:
        """The user a request acts for: the bound user, or the one it names."""
        if self.role == "user":
            if requested is not None and requested != self.user_id:
                raise Forbidden("user_id must be the authenticated user's own id")
            return self.user_id
        return requested or self.user_id

    def require_admin(self) -> None:
        """``Forbidden`` unless this caller may use operational endpoints."""
        if self.role not in ("admin", "local"):
            raise Forbidden("This endpoint needs an admin key or an admin claim")


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a request presented."""

    bearer: str | None = None
    api_key: str | None = None
    query_token: str | None = None

    @property
    def secret(self) -> str | None:
        """The one credential to check, in order of precedence."""
        return self.bearer or self.api_key or self.query_token


class Authenticator(Protocol):
    """Turns credentials into a caller, or raises ``Unauthenticated``."""

    mode: str

    async def authenticate(self, credentials: Credentials) -> Caller:
        """The caller, or ``Unauthenticated``."""

    async def close(self) -> None:
        """Release resources."""


def build_authenticator(settings: Settings, *, clock: Clock = utc_now) -> Authenticator:
    """The authenticator AUTH_MODE selects."""
    if settings.auth_mode == "api_key":
        return ApiKeyAuthenticator(settings)
    if settings.auth_mode == "firebase":
        return FirebaseAuthenticator(settings, clock=clock)
    return NoAuthenticator()


class NoAuthenticator:
    """AUTH_MODE=none: every request is the local developer."""

    mode = "none"

    async def authenticate(self, credentials: Credentials) -> Caller:
        """Everyone is ``local``."""
        return Caller("local")

    async def close(self) -> None:
        """Nothing to release."""


def _digest(key: str) -> bytes:
    """Keys are kept as SHA-256 digests; ``sha256:<hex>`` entries are digests already."""
    if key.startswith("sha256:"):
        return bytes.fromhex(key.removeprefix("sha256:"))
    return hashlib.sha256(key.encode()).digest()


def key_matches(presented: str, key: str) -> bool:
    """Whether ``presented`` is ``key`` (raw or ``sha256:<hex>``), compared in constant time."""
    return hmac.compare_digest(hashlib.sha256(presented.encode()).digest(), _digest(key))


class ApiKeyAuthenticator:
    """``Authorization: Bearer <key>`` or ``X-API-Key``, checked in constant time."""

    mode = "api_key"

    def __init__(self, settings: Settings) -> None:
        self._keys: list[tuple[bytes, Caller]] = []
        for key in settings.api_keys:
            self._add(key, "service", None)
        for key in settings.admin_api_keys:
            self._add(key, "admin", None)
        for entry in settings.user_api_keys:
            user_id, _, key = entry.partition("=")
            self._add(key, "user", user_id)

    def _add(self, key: str, role: Role, user_id: str | None) -> None:
        digest = _digest(key)
        self._keys.append((digest, Caller(role, user_id, f"key:{digest.hex()[:8]}")))

    async def authenticate(self, credentials: Credentials) -> Caller:
        """Compare the presented key's digest with every configured one, without early exit."""
        secret = credentials.secret
        if not secret:
            raise Unauthenticated("Send an API key: Authorization: Bearer <key> or X-API-Key")
        presented = hashlib.sha256(secret.encode()).digest()
        found: Caller | None = None
        for digest, caller in self._keys:
            if hmac.compare_digest(presented, digest):
                found = caller
        if found is None:
            raise Unauthenticated("Invalid API key")
        return found

    async def close(self) -> None:
        """Nothing to release."""


class FirebaseAuthenticator:
    """Firebase ID tokens (``Authorization: Bearer <ID token>``), verified by firebase-admin.

    Verified tokens are remembered for five minutes or until their ``exp``, whichever comes
    first, so a busy client costs one signature check per token, not per request.
    """

    mode = "firebase"

    def __init__(self, settings: Settings, *, clock: Clock = utc_now) -> None:
        if settings.firebase_auth_emulator_host:
            logger.warning(
                "FIREBASE_AUTH_EMULATOR_HOST is set: ID tokens are not verified; any unsigned "
                "token is accepted with the claims it states, admin included (emulator use only)"
            )
        if settings.firebase_auth_emulator_host and not os.environ.get(
            "FIREBASE_AUTH_EMULATOR_HOST"
        ):
            # firebase-admin reads this from the process environment only.
            os.environ["FIREBASE_AUTH_EMULATOR_HOST"] = settings.firebase_auth_emulator_host
        self._check_revoked = settings.firebase_check_revoked
        self._app = firebase_admin.initialize_app(
            _auth_credential(settings),
            options={"projectId": settings.firebase_auth_project_id, "httpTimeout": 10},
            name=f"chatify-auth-{uuid.uuid4()}",
        )
        self._clock = clock
        self._verified: TTLCache[str, dict[str, Any]] = TTLCache(
            maxsize=10000, ttl=CACHE_SECONDS, timer=lambda: clock().timestamp()
        )

    async def authenticate(self, credentials: Credentials) -> Caller:
        """Verify the ID token; its ``uid`` is the user, ``admin: true`` makes an admin."""
        token = credentials.bearer or credentials.query_token
        if not token:
            raise Unauthenticated("Send a Firebase ID token: Authorization: Bearer <ID token>")
        cache_key = hashlib.sha256(token.encode()).hexdigest()
        claims = None if self._check_revoked else self._cached(cache_key)
        if claims is None:
            claims = await asyncio.to_thread(self._verify, token)
            self._verified[cache_key] = claims
        uid = str(claims["uid"])
        role: Role = "admin" if claims.get("admin") is True else "user"
        return Caller(role, uid, f"uid:{uid}")

    def _cached(self, cache_key: str) -> dict[str, Any] | None:
        """The remembered claims, or ``None``; ``Unauthenticated`` once their ``exp`` passed.

        The TTL alone would keep a token that expires within the five minutes accepted after it
        expired."""
        claims = self._verified.get(cache_key)
        # Verified tokens always carry exp; the Auth emulator's unsigned ones need not.
        expires = claims.get("exp") if claims is not None else None
        if isinstance(expires, int | float) and self._clock().timestamp() >= expires:
            self._verified.pop(cache_key, None)
            raise Unauthenticated("The ID token has expired; refresh it and retry")
        return claims

    def _verify(self, token: str) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = firebase_auth.verify_id_token(
                token, app=self._app, check_revoked=self._check_revoked
            )
        except firebase_auth.ExpiredIdTokenError as exc:
            raise Unauthenticated("The ID token has expired; refresh it and retry") from exc
        except firebase_auth.RevokedIdTokenError as exc:
            raise Unauthenticated("The ID token has been revoked; sign in again") from exc
        except (ValueError, firebase_errors.FirebaseError) as exc:
            logger.info("rejected an ID token: %s", type(exc).__name__)
            raise Unauthenticated("Invalid ID token") from exc
        return claims

    async def close(self) -> None:
        """Delete the firebase-admin app."""
        firebase_admin.delete_app(self._app)


class _PublicKeysOnly(firebase_admin.credentials.Base):  # type: ignore[misc]
    """For verifying ID tokens, which needs only the project id and Google's public keys.

    firebase-admin builds its auth client with the app's credential even when it will not use
    it; without this it would go looking for Application Default Credentials and fail."""

    def get_credential(self) -> google.auth.credentials.Credentials:
        """Anonymous Google credentials."""
        return google.auth.credentials.AnonymousCredentials()  # type: ignore[no-untyped-call]


def _auth_credential(settings: Settings) -> firebase_admin.credentials.Base:
    if (
        settings.firebase_credentials_json is None
        and settings.google_application_credentials is None
    ):
        return _PublicKeysOnly()
    return firebase_credential(settings)
