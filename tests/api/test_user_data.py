"""Data rights: export everything of a user; erase a user or one session from the store for
good (checked in the SQLite file's bytes, in the Realtime Database's tree and in every row of
the PostgreSQL database)."""

from __future__ import annotations

from pathlib import Path

from testkit.mock_llm import MockLLM
from testkit.postgres_server import dump
from testkit.rtdb_server import RTDBServer
from tests.conftest import RunningApp

API = "/api/v1/chatbot"
SECRET = "my-unforgettable-secret-7731"


async def talk(chat: RunningApp, user_id: str, *messages: str) -> str:
    """A session of ``user_id`` with these messages sent."""
    session_id = await chat.create_session("pirate", user_id=user_id)
    for n, message in enumerate(messages):
        reply = await chat.send(session_id, message, client_message_id=f"{session_id}-{n}")
        assert reply.status_code == 200
    return session_id


def stored_anywhere(chat: RunningApp, rtdb: RTDBServer, text: str) -> bool:
    """Whether any byte of the store still holds the text."""
    settings = chat.services.settings
    if settings.store == "sqlite":
        files = [Path(f"{settings.sqlite_path}{suffix}") for suffix in ("", "-wal")]
        return any(f.exists() and text.encode() in f.read_bytes() for f in files)
    if settings.database_url is not None:  # every row of every table
        return text in dump(settings.database_url.get_secret_value())
    ns = (settings.firebase_database_url or "").split("ns=")[1]
    return text in repr(rtdb.get_data(ns, "/"))


async def test_a_user_is_exported_whole(chat: RunningApp, llm: MockLLM) -> None:
    first = await talk(chat, "erin", "hello", SECRET)
    second = await talk(chat, "erin")
    await talk(chat, "frank", "not erin's")

    exported = (await chat.client.get(f"{API}/users/erin/export")).json()
    assert exported["user_id"] == "erin" and exported["exported_at"]
    sessions = {s["session_id"]: s for s in exported["sessions"]}
    assert set(sessions) == {first, second}
    messages = sessions[first]["messages"]
    assert [(m["seq"], m["role"], m["content"]) for m in messages] == [
        (0, "user", "hello"),
        (1, "assistant", "Echo: hello"),
        (2, "user", SECRET),
        (3, "assistant", f"Echo: {SECRET}"),
    ]
    assert messages[1]["usage"]["total_tokens"] > 0 and messages[0]["usage"] is None
    assert sessions[second]["messages"] == [] and sessions[first]["template_id"] == "pirate"
    nobody = (await chat.client.get(f"{API}/users/nobody/export")).json()
    assert nobody["sessions"] == []


async def test_a_deleted_user_is_gone_from_the_store(
    chat: RunningApp, llm: MockLLM, rtdb: RTDBServer
) -> None:
    erin = [await talk(chat, "erin", SECRET), await talk(chat, "erin", "two")]
    frank = await talk(chat, "frank", "stays")
    assert stored_anywhere(chat, rtdb, SECRET)

    deleted = await chat.client.delete(f"{API}/users/erin")
    assert deleted.status_code == 200 and deleted.json() == {"success": True, "deleted_sessions": 2}

    assert not stored_anywhere(chat, rtdb, SECRET)
    for session_id in erin:
        assert (await chat.client.get(f"{API}/session/{session_id}")).status_code == 404
        assert session_id not in chat.services.sessions._sessions
        resent = await chat.send(session_id, "anyone?")
        assert resent.status_code == 404
    listed = (await chat.client.get(f"{API}/users/erin/sessions")).json()
    assert listed["sessions"] == []
    again = await chat.client.delete(f"{API}/users/erin")
    assert again.json()["deleted_sessions"] == 0
    kept = (await chat.client.get(f"{API}/session/{frank}")).json()
    assert kept["message_count"] == 1 and stored_anywhere(chat, rtdb, "stays")


async def test_purge_erases_one_session(chat: RunningApp, llm: MockLLM, rtdb: RTDBServer) -> None:
    doomed = await talk(chat, "gina", SECRET)
    kept = await talk(chat, "gina", "keep me")
    purged = await chat.client.delete(f"{API}/session/{doomed}?purge=true")
    assert purged.status_code == 200 and purged.json()["message"] == "Session deleted"
    assert purged.json()["stats"]["message_count"] == 1
    assert not stored_anywhere(chat, rtdb, SECRET)
    assert (await chat.client.get(f"{API}/session/{doomed}")).status_code == 404
    assert (await chat.client.delete(f"{API}/session/{doomed}?purge=true")).status_code == 404
    listed = (await chat.client.get(f"{API}/users/gina/sessions")).json()["sessions"]
    assert [s["session_id"] for s in listed] == [kept]
