"""Fixtures for tests that need the real wire: an app served by uvicorn on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import firebase_admin._token_gen
import httpx
import pytest
from fastapi import FastAPI

from api.app import create_app
from services.application import Services
from testkit.firebase_tokens import TokenIssuer
from testkit.live import Event, live_server, read_events
from testkit.node_ai import node_script
from tests.conftest import FakeClock, SettingsFactory

API = "/api/v1/chatbot"


@dataclass
class Live:
    """An app served on 127.0.0.1 and a client for it."""

    url: str
    client: httpx.AsyncClient
    services: Services

    async def create_session(self, template_id: str = "plain") -> str:
        """A new session's id."""
        response = await self.client.post(
            f"{API}/session", json={"user_id": "u1", "template_id": template_id}
        )
        session_id: str = response.json()["session_id"]
        return session_id

    def stream(self, session_id: str, message: str, **extra: Any) -> Any:
        """The streamed turn's response, as an async context manager."""
        return self.client.stream(
            "POST",
            f"{API}/session/{session_id}/message/stream",
            json={"message": message, **extra.pop("body", {})},
            **extra,
        )

    async def history(self, session_id: str) -> list[dict[str, Any]]:
        """The stored messages."""
        page = await self.client.get(f"{API}/session/{session_id}/messages")
        messages: list[dict[str, Any]] = page.json()["messages"]
        return messages


LiveFactory = Callable[..., AbstractAsyncContextManager[Live]]


@asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[Live]:
    """Serve an app on 127.0.0.1 (lifespan included) with a client for it."""
    with live_server(app) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            yield Live(url, client, app.state.services)


@pytest.fixture(scope="session")
def node_ai() -> Path:
    """The AI SDK's client script (testkit/node_ai.py)."""
    return node_script()


@pytest.fixture
def live_app(make_settings: SettingsFactory, clock: FakeClock) -> LiveFactory:
    """``async with live_app(**setting_overrides) as live``: a served app."""
    return lambda **overrides: serve(create_app(make_settings(**overrides), clock=clock))


@pytest.fixture
async def live(live_app: LiveFactory) -> AsyncIterator[Live]:
    """A served app on default test settings."""
    async with live_app() as running:
        yield running


async def collect(response: httpx.Response) -> list[Event]:
    """Every event until the stream ends (comments left out)."""
    return [event async for event in read_events(response) if event.event != ":"]


async def until(condition: Callable[[], bool], what: str) -> None:
    """Poll a condition (bounded); for state that changes on another thread."""
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def issuer() -> Iterator[TokenIssuer]:
    """Signs test ID tokens and serves their certificates."""
    tokens = TokenIssuer()
    yield tokens
    tokens.close()


@pytest.fixture
def google_certs(issuer: TokenIssuer, monkeypatch: pytest.MonkeyPatch) -> TokenIssuer:
    """firebase-admin fetches its certificates from the test issuer instead of Google."""
    monkeypatch.setattr(firebase_admin._token_gen, "ID_TOKEN_CERT_URI", issuer.certs_url)
    return issuer
