"""`me` in the user routes: the caller's own id, whatever its characters (a Firebase uid with
a space, a non-ASCII letter or a `/` cannot be written in the path), on both stores."""

from __future__ import annotations

import pytest

from testkit.firebase_tokens import PROJECT_ID, TokenIssuer
from testkit.mock_llm import MockLLM
from tests.conftest import FakeClock, RunningApp, SettingsFactory, running_app

API = "/api/v1/chatbot"
UID = "jürgen müller/ü 7"


async def test_a_uid_with_a_space_umlaut_and_slash_reaches_its_data_as_me(
    make_settings: SettingsFactory, clock: FakeClock, google_certs: TokenIssuer, llm: MockLLM
) -> None:
    settings = make_settings(auth_mode="firebase", firebase_project_id=PROJECT_ID)
    user = {"Authorization": f"Bearer {google_certs.token(UID)}"}
    other = {"Authorization": f"Bearer {google_certs.token('bob')}"}
    async with running_app(settings, clock) as chat:
        created = await chat.client.post(f"{API}/session", json={}, headers=user)
        assert created.status_code == 201, created.text
        session_id = created.json()["session_id"]
        sent = await chat.client.post(
            f"{API}/session/{session_id}/message", json={"message": "hello"}, headers=user
        )
        assert sent.status_code == 200, sent.text
        bobs = await chat.client.post(f"{API}/session", json={}, headers=other)
        assert bobs.status_code == 201, bobs.text

        listed = await chat.client.get(f"{API}/users/me/sessions", headers=user)
        assert listed.status_code == 200, listed.text
        assert [s["session_id"] for s in listed.json()["sessions"]] == [session_id]
        usage = await chat.client.get(f"{API}/users/me/usage", headers=user)
        assert usage.status_code == 200, usage.text
        assert usage.json()["user_id"] == UID and usage.json()["today"]["turns"] == 1

        exported = await chat.client.get(f"{API}/users/me/export", headers=user)
        assert exported.status_code == 200, exported.text
        assert exported.json()["user_id"] == UID
        [session] = exported.json()["sessions"]
        assert session["session_id"] == session_id
        assert [m["content"] for m in session["messages"]] == ["hello", "Echo: hello"]

        deleted = await chat.client.delete(f"{API}/users/me", headers=user)
        assert deleted.status_code == 200, deleted.text
        assert deleted.json()["deleted_sessions"] == 1
        gone = await chat.client.get(f"{API}/session/{session_id}", headers=user)
        assert gone.status_code == 404
        after = await chat.client.get(f"{API}/users/me/export", headers=user)
        assert after.json()["sessions"] == []
        kept = await chat.client.get(f"{API}/users/me/sessions", headers=other)
        assert [s["session_id"] for s in kept.json()["sessions"]] == [bobs.json()["session_id"]]


@pytest.mark.parametrize("path", ["/users/me/sessions", "/users/me/export", "/users/me/usage"])
async def test_me_without_a_bound_user_is_422_naming_user_id(chat: RunningApp, path: str) -> None:
    response = await chat.client.get(API + path)  # AUTH_MODE=none: nobody in particular
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"]["code"] == "validation_error"
    assert body["error"]["message"].startswith("Invalid request: user_id: ")
    assert [p["loc"] for p in body["detail"]] == [["path", "user_id"]]
    deleted = await chat.client.delete(f"{API}/users/me")
    assert deleted.status_code == 422, deleted.text


async def test_no_session_is_created_for_a_user_named_me(chat: RunningApp) -> None:
    """`me` names the caller on the user routes, so no one else may be called so."""
    response = await chat.client.post(f"{API}/session", json={"user_id": "me"})
    assert response.status_code == 422, response.text
    assert [p["loc"] for p in response.json()["detail"]] == [["body", "user_id"]]
    assert "reserved" in response.json()["error"]["message"]
