"""Dependencies as named ``Annotated`` aliases; the lifespan puts ``Services`` on app state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Path
from starlette.requests import HTTPConnection

from services.llm import LLMClient
from services.models import SessionRecord
from services.sessions import SessionService
from services.settings import Settings
from services.store.base import Store
from services.templates import TemplateService
from services.turns import TurnPipeline


@dataclass(frozen=True, slots=True)
class Services:
    """Everything the lifespan built, for the routes."""

    settings: Settings
    store: Store
    templates: TemplateService
    llm: LLMClient
    sessions: SessionService
    turns: TurnPipeline


def get_services(conn: HTTPConnection) -> Services:
    """The app's services (built by the lifespan)."""
    services: Services = conn.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def get_settings(services: ServicesDep) -> Settings:
    """The settings."""
    return services.settings


def get_session_service(services: ServicesDep) -> SessionService:
    """The session service."""
    return services.sessions


def get_turns(services: ServicesDep) -> TurnPipeline:
    """The turn pipeline."""
    return services.turns


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionServiceDep = Annotated[SessionService, Depends(get_session_service)]
TurnPipelineDep = Annotated[TurnPipeline, Depends(get_turns)]
SessionIdPath = Annotated[str, Path(description="The session's id (a UUID)")]


async def valid_session(session_id: SessionIdPath, sessions: SessionServiceDep) -> SessionRecord:
    """The stored session named in the path, or 404 ``session_not_found``."""
    return await sessions.get_session(session_id)


ValidSessionDep = Annotated[SessionRecord, Depends(valid_session)]
