"""Several providers: routing per personality, fallback before the first delta, cooldown.

Two real OpenAI-compatible servers on 127.0.0.1: the suite's mock LLM is the ``default``
provider (OPENAI_BASE_URL), a second one is ``backup`` (LLM_PROVIDERS).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from services.core.settings import Settings
from testkit.live import read_events
from testkit.mock_llm import MockLLM, Reply
from tests.api.conftest import until
from tests.api.test_metrics import value
from tests.conftest import FakeClock, RunningApp, SettingsFactory, running_app

API = "/api/v1/chatbot"
TEMPLATES: dict[str, dict[str, Any]] = {
    "routed": {
        "name": "routed",
        "description": "Served by the backup provider",
        "personalityPrompt": "You are routed.",
        "provider": "backup",
        "model": "backup-model",
    },
    "resilient": {
        "name": "resilient",
        "description": "Falls back",
        "personalityPrompt": "You are resilient.",
        "model": "main-model",
        "fallbacks": [{"provider": "backup", "model": "backup-model"}],
    },
}


@pytest.fixture
def backup() -> Iterator[MockLLM]:
    with MockLLM() as server:
        server.config.reply_prefix = "Backup: "
        yield server


@pytest.fixture(autouse=True)
def provider_templates(seed_dir: Path) -> None:
    for key, doc in TEMPLATES.items():
        (seed_dir / "templates" / f"{key}.json").write_text(json.dumps(doc))


def with_backup(make_settings: SettingsFactory, backup: MockLLM, **extra: Any) -> Settings:
    providers = [{"name": "backup", "base_url": backup.url}]
    return make_settings(llm_providers=providers, **extra)


async def history(chat: RunningApp, session_id: str) -> list[dict[str, Any]]:
    page = await chat.client.get(f"{API}/session/{session_id}/messages")
    messages: list[dict[str, Any]] = page.json()["messages"]
    return messages


async def test_a_personality_is_served_by_its_provider_and_the_turn_says_which(
    make_settings: SettingsFactory, clock: FakeClock, llm: MockLLM, backup: MockLLM
) -> None:
    async with running_app(with_backup(make_settings, backup), clock) as chat:
        routed = await chat.create_session("routed")
        reply = await chat.send(routed, "hi")
        assert reply.status_code == 200 and reply.json()["response"] == "Backup: hi"
        plain = await chat.create_session("plain")
        assert (await chat.send(plain, "hello")).json()["response"] == "Echo: hello"

        assert [r["model"] for r in backup.chat_requests()] == ["backup-model"]
        assert len(llm.chat_requests()) == 1
        assert (await history(chat, routed))[-1] | {"timestamp": ""} == {
            "seq": 1,
            "role": "assistant",
            "content": "Backup: hi",
            "timestamp": "",
            "client_message_id": None,
            "provider": "backup",
            "model": "backup-model",
            "tools": None,
            "images": None,
            "finish_reason": None,
            "attachments": None,
        }
        assert (await history(chat, plain))[-1]["provider"] == "default"


FAILURES = {
    "500": Reply(status=500),
    "429": Reply(status=429, retry_after=0),
    "connection drop": Reply(drop=True),
    "timeout": Reply(hang=True),
}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("failure", FAILURES)
async def test_a_failure_before_the_first_delta_falls_back(
    make_settings: SettingsFactory,
    clock: FakeClock,
    llm: MockLLM,
    backup: MockLLM,
    failure: str,
    stream: bool,
) -> None:
    llm.script(FAILURES[failure])
    # Only the hanging provider needs a short timeout; the others answer at once, and a
    # short timeout would turn a slow answer on a loaded machine into a timeout instead.
    timeout = 2.0 if failure == "timeout" else 30.0
    settings = with_backup(make_settings, backup, llm_timeout_seconds=timeout)
    async with running_app(settings, clock) as chat:
        session_id = await chat.create_session("resilient")
        if stream:
            url = f"{API}/session/{session_id}/message/stream"
            async with chat.client.stream("POST", url, json={"message": "hi"}) as response:
                text = "".join([chunk async for chunk in response.aiter_text()])
            assert "event: done" in text and "event: error" not in text
        else:
            reply = await chat.send(session_id, "hi")
            assert reply.status_code == 200 and reply.json()["response"] == "Backup: hi"
        assert [r["model"] for r in llm.chat_requests()] == ["main-model"]
        assert [r["model"] for r in backup.chat_requests()] == ["backup-model"]
        stored = (await history(chat, session_id))[-1]
        assert (stored["content"], stored["provider"]) == ("Backup: hi", "backup")


def snapshot_reply(content: str, model: str) -> Reply:
    """A reply that names a model of its own (as OpenAI names a dated snapshot)."""
    usage = {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}
    message = {"role": "assistant", "content": content}
    body = {"model": model, "choices": [{"index": 0, "message": message}], "usage": usage}
    return Reply(raw_body=json.dumps(body).encode())


def shares_of(replies: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The by_model breakdown that these stored turns' bodies add up to."""
    shares: dict[str, dict[str, Any]] = {}
    for reply in replies:
        provider, model = reply["assistant_message"]["provider"], reply["asked"]
        share = shares.setdefault(
            f"{provider}/{model}",
            {"provider": provider, "model": model, "prompt_tokens": 0, "completion_tokens": 0,
             "total_tokens": 0, "turns": 0, "calls": 0, "cost_micros": None,
             "calls_cost_micros": 0, "unpriced": 0},
        )  # fmt: skip
        for name in ("prompt_tokens", "completion_tokens", "total_tokens"):
            share[name] += reply["usage"][name]
        share["turns"] += 1
        share["unpriced"] += 1  # main-model and backup-model have no price
    return shares


async def test_usage_and_stats_show_which_provider_and_model_served_the_turns(
    make_settings: SettingsFactory, clock: FakeClock, llm: MockLLM, backup: MockLLM
) -> None:
    async with running_app(with_backup(make_settings, backup), clock) as chat:
        resilient = await chat.create_session("resilient")
        routed = await chat.create_session("routed")
        served: dict[str, list[dict[str, Any]]] = {resilient: [], routed: []}

        async def turn(session_id: str, text: str, asked: str) -> dict[str, Any]:
            response = await chat.send(session_id, text)
            assert response.status_code == 200, response.text
            served[session_id].append({**response.json(), "asked": asked})
            return served[session_id][-1]

        await turn(resilient, "one", "main-model")
        llm.script(Reply(status=500))  # main fails before any delta: backup answers
        assert (await turn(resilient, "two", "backup-model"))["response"] == "Backup: two"
        llm.script(snapshot_reply("Three!", "main-model-2026-01-01"))
        third = await turn(resilient, "three", "main-model")
        # History names the model the reply named; usage counts it under the one asked for.
        assert third["assistant_message"]["model"] == "main-model-2026-01-01"
        await turn(routed, "four", "backup-model")
        assert [r["model"] for r in llm.chat_requests()] == ["main-model"] * 3
        assert [r["model"] for r in backup.chat_requests()] == ["backup-model"] * 2

        for session_id, replies in served.items():
            usage = (await chat.client.get(f"{API}/session/{session_id}")).json()["usage"]
            assert usage["by_model"] == shares_of(replies), session_id
        assert list(usage["by_model"]) == ["backup/backup-model"]  # the routed session's
        split = (await chat.client.get(f"{API}/session/{resilient}")).json()["usage"]["by_model"]
        assert list(split) == ["backup/backup-model", "default/main-model"]  # in a stable order

        day = (await chat.client.get(f"{API}/users/user_1/usage", params={"days": 1})).json()
        everything = shares_of(served[resilient] + served[routed])
        assert day["today"]["by_model"] == everything
        assert everything["backup/backup-model"]["turns"] == 2
        assert (
            sum(share["total_tokens"] for share in everything.values())
            == (day["today"]["total_tokens"])
        )

        stats = (await chat.client.get("/api/v1/personalities/resilient/stats")).json()
        assert {key: (s["turns"], s["replyTokens"]) for key, s in stats["byModel"].items()} == {
            "backup/backup-model": (1, split["backup/backup-model"]["completion_tokens"]),
            "default/main-model": (2, split["default/main-model"]["completion_tokens"]),
        }
        await chat.services.stats.flush()  # stored, and read back the same
        again = (await chat.client.get("/api/v1/personalities/resilient/stats")).json()
        assert again["byModel"] == stats["byModel"]

        # Metrics use the same names: the dated snapshot is counted under the model asked for.
        metrics = (await chat.client.get("/metrics")).text
        assert "main-model-2026-01-01" not in metrics
        labels = {"template": "resilient", "provider": "default", "model": "main-model"}
        assert (
            value(metrics, "chatify_tokens_total", direction="out", **labels)
            == (split["default/main-model"]["completion_tokens"])
        )


async def test_no_fallback_once_a_delta_reached_the_client(
    make_settings: SettingsFactory, clock: FakeClock, llm: MockLLM, backup: MockLLM
) -> None:
    llm.script(Reply(content="Hello there, my friend", chunks=4, fail_after_chunks=2))
    async with running_app(with_backup(make_settings, backup), clock) as chat:
        session_id = await chat.create_session("resilient")
        url = f"{API}/session/{session_id}/message/stream"
        async with chat.client.stream("POST", url, json={"message": "hi"}) as response:
            text = "".join([chunk async for chunk in response.aiter_text()])
        assert "event: delta" in text and "event: error" in text and "event: done" not in text
        assert backup.chat_requests() == []
        assert await history(chat, session_id) == []


async def test_a_client_error_is_not_retried_elsewhere(
    make_settings: SettingsFactory, clock: FakeClock, llm: MockLLM, backup: MockLLM
) -> None:
    llm.script(Reply(status=401))
    async with running_app(with_backup(make_settings, backup), clock) as chat:
        session_id = await chat.create_session("resilient")
        reply = await chat.send(session_id, "hi")
        assert reply.status_code == 502 and reply.json()["error"]["code"] == "llm_error"
        assert backup.chat_requests() == []


async def test_a_failing_provider_cools_down_and_is_skipped_without_being_asked(
    make_settings: SettingsFactory, clock: FakeClock, llm: MockLLM, backup: MockLLM
) -> None:
    llm.script(Reply(status=503), Reply(status=503))
    settings = with_backup(make_settings, backup, provider_failures_to_cool=2)
    async with running_app(settings, clock) as chat:
        session_id = await chat.create_session("resilient")
        for number in range(1, 5):
            reply = await chat.send(session_id, f"turn {number}")
            assert reply.json()["response"] == f"Backup: turn {number}"
        # Two failures cooled it down: turns 3 and 4 did not ask it at all.
        assert len(llm.chat_requests()) == 2
        assert len(backup.chat_requests()) == 4
        # A personality with no other target still uses it (the last target is always tried).
        plain = await chat.create_session("plain")
        assert (await chat.send(plain, "hello")).json()["response"] == "Echo: hello"


async def test_authoring_refuses_a_provider_that_is_not_configured(
    make_settings: SettingsFactory, clock: FakeClock, backup: MockLLM
) -> None:
    async with running_app(with_backup(make_settings, backup), clock) as chat:
        draft = {
            "name": "Lost",
            "personalityPrompt": "You are lost somewhere.",
            "provider": "nowhere",
            "fallbacks": [{"provider": "backup", "model": "m"}, {"provider": "gone", "model": "m"}],
        }
        response = await chat.client.post("/api/v1/personalities", json=draft)
        assert response.status_code == 422, response.text
        problems = response.json()["detail"]
        assert {(p["type"], tuple(p["loc"])) for p in problems} == {
            ("unknown_provider", ("body", "provider")),
            ("unknown_provider", ("body", "fallbacks", 1, "provider")),
        }
        draft.update(provider="backup", fallbacks=[])
        assert (await chat.client.post("/api/v1/personalities", json=draft)).status_code == 201


def test_bad_provider_settings_fail_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BACKUP_KEY", raising=False)
    keyed = [{"name": "backup", "base_url": "http://127.0.0.1:9/v1", "api_key_env": "BACKUP_KEY"}]
    with pytest.raises(ValidationError, match="BACKUP_KEY, which is not set"):
        Settings(_env_file=None, llm_providers=keyed)
    monkeypatch.setenv("BACKUP_KEY", "sk-backup")
    assert Settings(_env_file=None, llm_providers=keyed).provider_names == {"default", "backup"}
    with pytest.raises(ValidationError, match="unknown providers"):
        Settings(_env_file=None, llm_fallbacks=[{"provider": "nowhere", "model": "m"}])
    with pytest.raises(ValidationError, match="unique"):
        Settings(_env_file=None, llm_providers=[{"name": "default", "base_url": "http://x"}])


async def stream_events(chat: RunningApp, session_id: str) -> list[tuple[str, Any]]:
    """A streamed turn's events and their data (comments left out)."""
    url = f"{API}/session/{session_id}/message/stream"
    async with chat.client.stream("POST", url, json={"message": "hi"}) as response:
        return [(e.event, e.json()) async for e in read_events(response) if e.event != ":"]


async def test_a_stream_line_that_is_not_json_falls_back_before_the_first_delta(
    make_settings: SettingsFactory, clock: FakeClock, llm: MockLLM, backup: MockLLM
) -> None:
    llm.script(Reply(content="Hello there", chunks=3, garbage_after_chunks=0))
    async with running_app(with_backup(make_settings, backup), clock) as chat:
        session_id = await chat.create_session("resilient")
        events = await stream_events(chat, session_id)
        assert [kind for kind, _ in events if kind != "delta"] == ["start", "done"]
        assert events[-1][1]["response"] == "Backup: hi"
        assert [r["model"] for r in backup.chat_requests()] == ["backup-model"]


async def test_a_stream_line_that_is_not_json_after_a_delta_ends_the_turn_with_llm_error(
    make_settings: SettingsFactory, clock: FakeClock, llm: MockLLM, backup: MockLLM
) -> None:
    llm.script(Reply(content="Hello there, my friend", chunks=4, garbage_after_chunks=2))
    async with running_app(with_backup(make_settings, backup), clock) as chat:
        session_id = await chat.create_session("resilient")
        events = await stream_events(chat, session_id)
        assert [kind for kind, _ in events] == ["start", "delta", "delta", "error"]
        assert events[-1][1]["code"] == "llm_error"
        assert "'not'" not in events[-1][1]["message"]  # the provider's line is not echoed
        assert backup.chat_requests() == []
        assert await history(chat, session_id) == []


async def test_a_429_falls_back_at_once_while_another_target_is_left(
    make_settings: SettingsFactory, clock: FakeClock, llm: MockLLM, backup: MockLLM
) -> None:
    # Retry-After well within the timeout: waiting it out here would be the defect.
    llm.script(Reply(status=429, retry_after=2))
    settings = with_backup(make_settings, backup, llm_max_retries=2, llm_timeout_seconds=10)
    async with running_app(settings, clock) as chat:
        session_id = await chat.create_session("resilient")
        reply = await chat.send(session_id, "hi")
        assert reply.status_code == 200 and reply.json()["response"] == "Backup: hi"
        assert len(llm.chat_requests()) == 1 and len(backup.chat_requests()) == 1


async def test_a_429_on_the_last_target_is_waited_out_once_within_the_cap(
    make_settings: SettingsFactory, clock: FakeClock, llm: MockLLM
) -> None:
    llm.script(Reply(status=429, retry_after=0.05))
    settings = make_settings(llm_retry_after_max_seconds=1)
    async with running_app(settings, clock) as chat:
        session_id = await chat.create_session("plain")
        reply = await chat.send(session_id, "hi")
        assert reply.status_code == 200 and reply.json()["response"] == "Echo: hi"
        assert len(llm.chat_requests()) == 2


@pytest.mark.parametrize(
    ("replies", "requests", "retry_after"),
    [
        ([Reply(status=429, retry_after=0.05), Reply(status=429, retry_after=4)], 2, "4"),
        ([Reply(status=429, retry_after=30)], 1, "30"),
    ],
    ids=["a second 429", "past the cap"],
)
async def test_a_429_that_is_not_waited_out_answers_503_with_its_retry_after(
    make_settings: SettingsFactory,
    clock: FakeClock,
    llm: MockLLM,
    replies: list[Reply],
    requests: int,
    retry_after: str,
) -> None:
    llm.script(*replies)
    settings = make_settings(llm_retry_after_max_seconds=1)
    async with running_app(settings, clock) as chat:
        session_id = await chat.create_session("plain")
        reply = await chat.send(session_id, "hi")
        assert reply.status_code == 503 and reply.json()["error"]["code"] == "llm_unavailable"
        assert reply.headers["retry-after"] == retry_after
        assert len(llm.chat_requests()) == requests


RETRIED = {
    # failure, LLM_MAX_RETRIES, requests the failing provider gets, who answers
    "500": (Reply(status=500), 2, 2, "Backup: hi"),
    "500 without retries": (Reply(status=500), 0, 1, "Backup: hi"),
    "connection drop": (Reply(drop=True), 1, 2, "Backup: hi"),
    "timeout": (Reply(hang=True), 2, 1, "Backup: hi"),
}


@pytest.mark.parametrize("case", RETRIED)
async def test_a_failing_provider_gets_one_immediate_retry_then_the_next_one(
    make_settings: SettingsFactory, clock: FakeClock, llm: MockLLM, backup: MockLLM, case: str
) -> None:
    failure, retries, requests, answer = RETRIED[case]
    llm.script(failure, failure)
    timeout = 1.0 if failure.hang else 30.0
    settings = with_backup(
        make_settings, backup, llm_max_retries=retries, llm_timeout_seconds=timeout
    )
    async with running_app(settings, clock) as chat:
        session_id = await chat.create_session("resilient")
        reply = await chat.send(session_id, "hi")
        assert reply.status_code == 200 and reply.json()["response"] == answer
        assert len(llm.chat_requests()) == requests
        assert len(backup.chat_requests()) == 1


async def test_a_failing_title_model_does_not_cool_the_model_that_serves_turns(
    make_settings: SettingsFactory, clock: FakeClock, llm: MockLLM, backup: MockLLM
) -> None:
    # The first turn, then the title call and its retry fail on both providers (a title call
    # falls back like a turn): two failures in a row of the default provider's title model.
    llm.script(Reply(content="Ahoy"), Reply(status=503), Reply(status=503))
    backup.script(Reply(status=503), Reply(status=503))
    settings = with_backup(
        make_settings,
        backup,
        provider_failures_to_cool=2,
        session_titles=True,
        title_model="title-model",
    )
    async with running_app(settings, clock) as chat:
        session_id = await chat.create_session("resilient")
        assert (await chat.send(session_id, "turn 1")).json()["response"] == "Ahoy"
        await until(lambda: len(backup.chat_requests()) == 2, "the title call and its retry")
        await until(lambda: chat.services.titles.pending == 0, "the title tasks")
        reply = await chat.send(session_id, "turn 2")
        # Served by the default provider's turn model, not by the fallback ("Backup: ...").
        assert reply.json()["response"] == "Echo: turn 2"
        turns = [body for body in llm.chat_requests() if body["model"] == "main-model"]
        assert len(turns) == 2
