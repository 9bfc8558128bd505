"""The core flow over HTTP and what the LLM receives."""

from __future__ import annotations

from services.conversation.prompt import WELCOME_PREFIX
from testkit.mock_llm import MockLLM
from tests.conftest import RULES, FakeClock, RunningApp, SettingsFactory, running_app

API = "/api/v1/chatbot"


async def test_create_message_message_end(chat: RunningApp, llm: MockLLM) -> None:
    created = await chat.client.post(f"{API}/session", json={"user_id": "user_12345"})
    assert created.status_code == 201
    body = created.json()
    assert body["success"] is True
    assert body["template_id"] == "pirate"  # the isDefault template
    assert body["welcome_message"] == "Ahoy!"
    assert body["message"] == "Session created successfully"
    assert body["created_at"] == "2026-01-01T12:00:00.000Z"
    session_id = body["session_id"]

    first = await chat.send(session_id, "  Hello there  ")
    assert first.status_code == 200
    stored_user, stored_reply = first.json()["user_message"], first.json()["assistant_message"]
    assert first.json() == {
        "success": True,
        "response": "Echo: Hello there",
        "session_id": session_id,
        "message_count": 1,
        "replayed": False,
        "usage": first.json()["usage"],
        "user_message": stored_user,
        "assistant_message": stored_reply,
        "finish_reason": "stop",
    }
    assert set(first.json()["usage"]) == {
        "prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens", "cost_micros",
    }  # fmt: skip

    second = await chat.send(session_id, "How are you?")
    assert second.json()["message_count"] == 2
    assert second.json()["response"] == "Echo: How are you?"

    detail = (await chat.client.get(f"{API}/session/{session_id}")).json()
    assert detail["status"] == "active"
    assert detail["message_count"] == 2
    assert [(m["seq"], m["role"], m["content"]) for m in detail["conversation_history"]] == [
        (0, "user", "Hello there"),
        (1, "assistant", "Echo: Hello there"),
        (2, "user", "How are you?"),
        (3, "assistant", "Echo: How are you?"),
    ]
    assert "system_prompt" not in detail
    # The reply named the messages exactly as history stores them.
    assert [stored_user, stored_reply] == detail["conversation_history"][:2]

    ended = await chat.client.delete(f"{API}/session/{session_id}")
    assert ended.status_code == 200
    assert ended.json() == {
        "success": True,
        "message": "Session ended successfully",
        "stats": {"duration_seconds": 0.0, "message_count": 2, "total_messages": 4},
    }
    again = await chat.client.delete(f"{API}/session/{session_id}")
    assert again.json() == ended.json()
    assert (await chat.client.get(f"{API}/session/{session_id}")).json()["status"] == "ended"
    assert session_id not in chat.services.sessions._sessions


async def test_llm_receives_rules_personality_trimmed_history_and_sampling(
    chat: RunningApp, llm: MockLLM
) -> None:
    session_id = await chat.create_session("pirate")  # contextMessages 4
    for text in ["one", "two", "three", "four"]:
        assert (await chat.send(session_id, text)).status_code == 200

    assert llm.chat_requests()[-1] == {
        "model": "gpt-test-pirate",
        "messages": [
            {"role": "system", "content": f"{RULES}\n\nYou are a pirate."},
            {"role": "user", "content": "two"},
            {"role": "assistant", "content": "Echo: two"},
            {"role": "user", "content": "three"},
            {"role": "assistant", "content": "Echo: three"},
            {"role": "user", "content": "four"},
        ],
        "temperature": 0.3,
        "max_tokens": 77,
        "presence_penalty": 0.1,
        "frequency_penalty": 0.2,
    }


async def test_template_without_settings_uses_the_defaults(chat: RunningApp, llm: MockLLM) -> None:
    session_id = await chat.create_session("plain")
    await chat.send(session_id, "hi")
    sent = llm.chat_requests()[-1]
    assert sent["model"] == "gpt-4o-mini"
    assert (sent["temperature"], sent["max_tokens"]) == (0.9, 50)
    assert (sent["presence_penalty"], sent["frequency_penalty"]) == (0.6, 0.6)
    assert sent["messages"][0] == {"role": "system", "content": f"{RULES}\n\nYou are plain."}


async def test_template_edits_affect_new_sessions_only(chat: RunningApp, llm: MockLLM) -> None:
    old = await chat.create_session("pirate")
    store = chat.services.store
    await store.seed(
        {"pirate": {"personalityPrompt": "You are a reformed pirate.", "contextMessages": 2}},
        None,
        overwrite=True,
    )
    await chat.services.templates.refresh()
    new = await chat.create_session("pirate")

    await chat.send(old, "a")
    assert llm.chat_requests()[-1]["messages"][0]["content"].endswith("You are a pirate.")
    await chat.send(new, "b")
    assert llm.chat_requests()[-1]["messages"][0]["content"].endswith("You are a reformed pirate.")


async def test_conversation_survives_a_restart(
    make_settings: SettingsFactory, clock: FakeClock, llm: MockLLM
) -> None:
    settings = make_settings()
    async with running_app(settings, clock) as first:
        session_id = await first.create_session("pirate")
        await first.send(session_id, "remember the treasure")

    async with running_app(settings, clock) as second:
        reply = await second.send(session_id, "what did I say?")
        assert reply.status_code == 200
        assert reply.json()["message_count"] == 2
    # The stored welcome opens the conversation the model sees, after a restart too.
    assert llm.chat_requests()[-1]["messages"][1:] == [
        {"role": "system", "content": WELCOME_PREFIX + "Ahoy!"},
        {"role": "user", "content": "remember the treasure"},
        {"role": "assistant", "content": "Echo: remember the treasure"},
        {"role": "user", "content": "what did I say?"},
    ]


async def test_idle_session_is_evicted_and_reloaded(
    chat: RunningApp, llm: MockLLM, clock: FakeClock
) -> None:
    timeout = chat.services.settings.session_idle_timeout_seconds
    busy = await chat.create_session("pirate")
    idle = await chat.create_session("pirate")
    await chat.send(idle, "before the nap")
    clock.advance(timeout - 1)
    await chat.send(busy, "still here")
    clock.advance(2)

    evicted = chat.services.sessions.evict_idle_sessions()

    assert evicted == [idle]
    cache = chat.services.sessions._sessions
    assert idle not in cache and busy in cache
    reply = await chat.send(idle, "after the nap")
    assert reply.json()["message_count"] == 2
    assert llm.chat_requests()[-1]["messages"][2]["content"] == "before the nap"
    assert idle in cache
    detail = (await chat.client.get(f"{API}/session/{idle}")).json()
    assert detail["status"] == "active"


async def test_sessions_idle_past_expiry_are_marked_expired(
    make_settings: SettingsFactory, clock: FakeClock
) -> None:
    settings = make_settings(session_expire_after_seconds=3600)
    async with running_app(settings, clock) as chat:
        stale = await chat.create_session()
        clock.advance(1800)
        fresh = await chat.create_session()
        clock.advance(1801)

        assert await chat.services.sessions.expire_idle_sessions() == [stale]

        reply = await chat.send(stale, "hello?")
        assert reply.status_code == 409
        assert reply.json()["error"]["code"] == "session_ended"
        assert (await chat.client.get(f"{API}/session/{stale}")).json()["status"] == "expired"
        assert (await chat.send(fresh, "hi")).status_code == 200


async def test_offline_responder_without_any_llm_settings(
    make_settings: SettingsFactory, clock: FakeClock, llm: MockLLM
) -> None:
    settings = make_settings(openai_base_url=None, openai_api_key=None)
    async with running_app(settings, clock) as chat:
        ready = await chat.client.get("/ready")
        assert ready.json()["llm"] == "offline"
        session_id = await chat.create_session()
        reply = (await chat.send(session_id, "hello")).json()
        assert reply["response"].startswith("[offline]")
        assert "OPENAI_API_KEY" in reply["response"] and '"hello"' in reply["response"]
        again = await chat.send(session_id, "hello")
        assert again.json()["response"] == reply["response"]
    assert llm.chat_requests() == []


async def test_the_welcome_opens_the_conversation_until_the_window_moves_on(
    chat: RunningApp, llm: MockLLM
) -> None:
    session_id = await chat.create_session("pirate")  # welcome "Ahoy!", 4 messages of context
    for n in range(4):
        await chat.send(session_id, f"m{n}")
    prompts = [request["messages"] for request in llm.chat_requests()]
    welcome = {"role": "system", "content": WELCOME_PREFIX + "Ahoy!"}
    assert [p[1] for p in prompts[:3]] == [welcome] * 3
    assert prompts[3][1] == {"role": "user", "content": "m1"}  # seq 0 left the window
    detail = (await chat.client.get(f"{API}/session/{session_id}")).json()
    assert detail["welcome_message"] == "Ahoy!" and detail["message_count"] == 4
    assert detail["conversation_history"][0]["seq"] == 0  # the welcome takes no seq
