"""Ids with the characters that Realtime Database keys or URLs reserve (`?`, `#`, `[`, `.`,
`$`, `%`, `/`, …): every store path is built from them safely, on both stores. Outside
testing found `?` answering 500 ("Path contains illegal characters") on Firebase."""

from __future__ import annotations

import pytest

from testkit.firebase_tokens import PROJECT_ID, TokenIssuer
from testkit.mock_llm import MockLLM
from tests.conftest import FakeClock, RunningApp, SettingsFactory, running_app

API = "/api/v1/chatbot"
# Every character the RTDB key rules (`. $ # [ ] /`, controls) or URL syntax (`? # % & = +`,
# space) reserve, plus a non-ASCII letter.
ODD = "q?u#s[e]r.$%41/&=+ ü"


async def test_a_uid_and_client_message_id_with_reserved_characters_work(
    make_settings: SettingsFactory, clock: FakeClock, google_certs: TokenIssuer, llm: MockLLM
) -> None:
    settings = make_settings(auth_mode="firebase", firebase_project_id=PROJECT_ID)
    user = {"Authorization": f"Bearer {google_certs.token(ODD)}"}
    async with running_app(settings, clock) as chat:
        created = await chat.client.post(f"{API}/session", json={}, headers=user)
        assert created.status_code == 201, created.text
        session_id = created.json()["session_id"]
        turn = {"message": "hello", "client_message_id": ODD}
        url = f"{API}/session/{session_id}/message"
        sent = await chat.client.post(url, json=turn, headers=user)
        assert sent.status_code == 200, sent.text
        # The retry is answered from the store: the session leaves the cache first.
        chat.services.sessions._sessions.forget(session_id)
        again = await chat.client.post(url, json=turn, headers=user)
        assert again.status_code == 200, again.text
        assert again.json() == {**sent.json(), "replayed": True}
        assert len(llm.requests) == 1

        listed = await chat.client.get(f"{API}/users/me/sessions", headers=user)
        assert listed.status_code == 200, listed.text
        assert [s["session_id"] for s in listed.json()["sessions"]] == [session_id]
        usage = await chat.client.get(f"{API}/users/me/usage", headers=user)
        assert usage.status_code == 200, usage.text
        assert usage.json()["user_id"] == ODD and usage.json()["today"]["turns"] == 1
        exported = await chat.client.get(f"{API}/users/me/export", headers=user)
        assert exported.status_code == 200, exported.text
        assert [s["session_id"] for s in exported.json()["sessions"]] == [session_id]
        deleted = await chat.client.delete(f"{API}/users/me", headers=user)
        assert deleted.status_code == 200, deleted.text
        assert deleted.json()["deleted_sessions"] == 1


@pytest.mark.parametrize("path", ["", "/versions", "/versions/1", "/stats"])
async def test_a_personality_id_with_reserved_characters_is_404(
    chat: RunningApp, path: str
) -> None:
    response = await chat.client.get(f"/api/v1/personalities/odd%3Fname%23%5B0%5D.%24{path}")
    assert response.status_code == 404, response.text
    assert response.json()["error"]["code"] == "template_not_found"


@pytest.mark.parametrize("session_id", ["a%3Fb", "a%23b", "a.b", "a%24b%5B0%5D", "%25"])
async def test_a_session_id_with_reserved_characters_is_404(
    chat: RunningApp, session_id: str
) -> None:
    for response in [
        await chat.client.get(f"{API}/session/{session_id}"),
        await chat.client.post(f"{API}/session/{session_id}/message", json={"message": "hi"}),
        await chat.client.delete(f"{API}/session/{session_id}"),
    ]:
        assert response.status_code == 404, response.text
        assert response.json()["error"]["code"] == "session_not_found"
