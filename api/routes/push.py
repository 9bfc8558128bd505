"""Push notifications (docs/push.md): a user's devices (FCM registration tokens) and the
opt-outs, for the user and per session."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Response
from pydantic import BaseModel, ConfigDict, Field

from api.deps import CallerDep, PathUserDep, ServicesDep, ValidSessionDep
from api.errors import documented
from services.core.errors import Forbidden
from services.core.push_records import Device, PushPreferences

router = APIRouter(prefix="/chatbot", tags=["push"])
TOKEN_PATTERN = r"^[A-Za-z0-9_:.\-]+$"  # FCM registration tokens (Android, Apple, web)
Token = Annotated[
    str,
    Field(
        min_length=8,
        max_length=4096,
        pattern=TOKEN_PATTERN,
        description="The FCM registration token (`FirebaseMessaging.getToken()`)",
    ),
]


class RegisterDevice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token: Token
    platform: Literal["android", "ios", "web"]
    app_version: str | None = Field(None, max_length=64, description="The app's version")


class DeviceBody(BaseModel):
    token: str
    platform: Literal["android", "ios", "web"]
    app_version: str | None
    registered_at: str = Field(description="The latest registration of this token")

    @classmethod
    def of(cls, device: Device) -> DeviceBody:
        """From the stored record."""
        return cls(**device.as_dict())


class Devices(BaseModel):
    success: Literal[True] = True
    devices: list[DeviceBody] = Field(
        description="Most recently registered first; at most PUSH_MAX_DEVICES_PER_USER"
    )
    push_enabled: bool = Field(
        description="Whether this service sends pushes (PUSH_ENABLED); devices are kept either way"
    )


class PushSettingsBody(BaseModel):
    success: Literal[True] = True
    enabled: bool = Field(description="false: no push for any of the user's sessions")
    muted_sessions: list[str] = Field(description="Sessions whose replies are never pushed")

    @classmethod
    def of(cls, preferences: PushPreferences) -> PushSettingsBody:
        """From the stored record."""
        return cls(enabled=preferences.enabled, muted_sessions=sorted(preferences.muted_sessions))


class SetPushEnabled(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool


def _check(caller: CallerDep, user_id: str) -> None:
    if not caller.may_act_for(user_id):
        raise Forbidden("A user may manage only their own devices")


def _devices(services: ServicesDep, devices: list[Device]) -> Devices:
    enabled = services.settings.push_enabled
    return Devices(devices=[DeviceBody.of(d) for d in devices], push_enabled=enabled)


@router.post(
    "/users/{user_id}/devices",
    response_model=Devices,
    status_code=201,
    responses=documented(401, 403, 422, 503),
)
async def register_device(
    user_id: PathUserDep, body: RegisterDevice, services: ServicesDep, caller: CallerDep
) -> Devices:
    """Register a device for push notifications (again: refreshed, never duplicated); a token
    another user held moves to this one. Keeps the PUSH_MAX_DEVICES_PER_USER most recent."""
    _check(caller, user_id)
    devices = await services.devices.register(
        user_id, token=body.token, platform=body.platform, app_version=body.app_version
    )
    return _devices(services, devices)


@router.get(
    "/users/{user_id}/devices", response_model=Devices, responses=documented(401, 403, 422, 503)
)
async def list_devices(user_id: PathUserDep, services: ServicesDep, caller: CallerDep) -> Devices:
    """The user's registered devices, most recent first."""
    _check(caller, user_id)
    return _devices(services, await services.devices.list(user_id))


@router.delete(
    "/users/{user_id}/devices/{token}",
    status_code=204,
    responses=documented(401, 403, 422, 503),
)
async def remove_device(
    user_id: PathUserDep,
    token: Annotated[str, Path(min_length=8, max_length=4096, pattern=TOKEN_PATTERN)],
    services: ServicesDep,
    caller: CallerDep,
) -> Response:
    """Forget a device (at sign-out); 204 whether or not it was registered."""
    _check(caller, user_id)
    await services.devices.remove(user_id, token)
    return Response(status_code=204)


@router.get(
    "/users/{user_id}/push",
    response_model=PushSettingsBody,
    responses=documented(401, 403, 422, 503),
)
async def get_push_settings(
    user_id: PathUserDep, services: ServicesDep, caller: CallerDep
) -> PushSettingsBody:
    """The user's push opt-outs: all of them, and per session."""
    _check(caller, user_id)
    return PushSettingsBody.of(await services.devices.preferences(user_id))


@router.put(
    "/users/{user_id}/push",
    response_model=PushSettingsBody,
    responses=documented(401, 403, 422, 503),
)
async def set_push_settings(
    user_id: PathUserDep, body: SetPushEnabled, services: ServicesDep, caller: CallerDep
) -> PushSettingsBody:
    """Turn every push of the user on or off (the per-session ones are kept)."""
    _check(caller, user_id)
    return PushSettingsBody.of(await services.devices.set_enabled(user_id, body.enabled))


@router.put(
    "/session/{session_id}/push",
    response_model=PushSettingsBody,
    responses=documented(401, 403, 404, 422, 503),
)
async def set_session_push(
    session: ValidSessionDep, body: SetPushEnabled, services: ServicesDep
) -> PushSettingsBody:
    """Turn this session's pushes on or off (its owner's settings after)."""
    preferences = await services.devices.set_session_enabled(
        session.user_id, session.session_id, body.enabled
    )
    return PushSettingsBody.of(preferences)
