"""The authoring API over HTTP, on both stores: Chatify's shapes, one validation, versions and
ETags, rollback, universal rules, template variables, preview and per-personality stats."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from services.store.versions import DocRef
from testkit.mock_llm import MockLLM, Reply
from tests.api.conftest import Live, LiveFactory, collect, until
from tests.conftest import RULES, FakeClock, RunningApp, SettingsFactory, running_app

P = "/api/v1/personalities"
U = "/api/v1/settings/universal-rules"
SESSIONS = "/api/v1/chatbot/session"
PROMPT = "You are a test bot who answers briefly."


async def create(chat: RunningApp, **fields: Any) -> dict[str, Any]:
    """POST a personality; its stored object."""
    response = await chat.client.post(
        P, json={"name": "Test Bot", "personalityPrompt": PROMPT, **fields}
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def problems_at(response: Any) -> dict[str, str]:
    """A 422's field errors, by field path (without ``body``)."""
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "validation_error"
    return {".".join(map(str, p["loc"][1:])): p["type"] for p in response.json()["detail"]}


async def test_chatify_shapes_list_create_read_partial_update(chat: RunningApp) -> None:
    listed = await chat.client.get(f"{P}/")
    assert listed.status_code == 200
    assert isinstance(listed.json(), list)
    assert [p["id"] for p in listed.json()] == ["hidden", "pirate", "plain"]
    pirate = next(p for p in listed.json() if p["id"] == "pirate")
    for field in ("name", "title", "description", "personalityPrompt", "welcomeMessage", "model",
                  "temperature", "maxTokens", "tags", "isPublic", "isDefault", "usageCount",
                  "createdAt", "updatedAt", "version", "presencePenalty", "frequencyPenalty",
                  "contextMessages"):  # fmt: skip
        assert field in pirate, field

    created = await create(chat, title="Test", tags=["a", "b"], temperature=0.5, isPublic=False)
    assert created["id"] == "test-bot" and created["name"] == "Test Bot"
    assert created["version"] == 1 and created["createdAt"] == created["updatedAt"]
    assert created["tags"] == ["a", "b"] and created["usageCount"] == 0
    plain = await chat.client.post(P, json={"name": "Bare", "personalityPrompt": PROMPT})
    assert plain.json()["isPublic"] is True and plain.json()["isDefault"] is False
    assert plain.json()["tags"] == [] and "temperature" in plain.json()["inherited"]

    again = await chat.client.post(f"{P}/", json={"name": "test bot", "personalityPrompt": PROMPT})
    assert again.status_code == 409 and again.json()["error"]["code"] == "template_exists"

    one = await chat.client.get(f"{P}/test-bot/")
    assert one.status_code == 200 and one.json()["temperature"] == 0.5 and one.headers["etag"]

    put = await chat.client.put(f"{P}/test-bot", json={"description": "Changed"})
    assert put.status_code == 200
    assert put.json()["description"] == "Changed"
    assert put.json()["temperature"] == 0.5 and put.json()["title"] == "Test"  # the rest stays
    assert put.json()["version"] == 2
    patched = await chat.client.patch(f"{P}/test-bot/", json={"temperature": 1.5})
    assert patched.json()["temperature"] == 1.5 and patched.json()["description"] == "Changed"
    assert (await chat.client.get(f"{P}/nope")).status_code == 404


async def test_trailing_slashes_are_not_redirected(chat: RunningApp) -> None:
    for method, path, body in [
        ("GET", f"{P}/", None),
        ("GET", P, None),
        ("POST", f"{P}/", {"name": "slash", "personalityPrompt": PROMPT}),
        ("GET", f"{P}/slash/", None),
        ("GET", f"{U}/", None),
    ]:
        response = await chat.client.request(method, path, json=body, follow_redirects=False)
        assert response.status_code in (200, 201), (method, path, response.status_code)


async def test_delete_keeps_the_default_and_started_sessions(
    chat: RunningApp, llm: MockLLM
) -> None:
    refused = await chat.client.delete(f"{P}/pirate")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "default_template"

    await create(chat)
    session_id = await chat.create_session("test-bot")
    deleted = await chat.client.delete(f"{P}/test-bot/")
    assert deleted.status_code == 200
    assert deleted.json() == {"success": True, "message": "Personality test-bot deleted"}
    assert (await chat.client.get(f"{P}/test-bot")).status_code == 404
    new = await chat.client.post(SESSIONS, json={"user_id": "u", "template_id": "test-bot"})
    assert new.status_code == 404

    assert (await chat.send(session_id, "still there?")).status_code == 200
    assert llm.chat_requests()[-1]["messages"][0]["content"].endswith(PROMPT)
    # The history outlives the document: a rollback brings it back.
    back = await chat.client.post(f"{P}/test-bot/rollback", json={"version": 1})
    assert back.status_code == 200 and back.json()["personalityPrompt"] == PROMPT


async def test_cors_preflight_allows_put_patch_and_if_match(
    make_settings: SettingsFactory, clock: FakeClock
) -> None:
    settings = make_settings(cors_origins="https://studio.example")
    async with running_app(settings, clock) as chat:
        for method in ("PUT", "PATCH", "DELETE"):
            preflight = await chat.client.options(
                f"{P}/pirate/",
                headers={
                    "Origin": "https://studio.example",
                    "Access-Control-Request-Method": method,
                    "Access-Control-Request-Headers": "content-type,if-match,authorization",
                },
            )
            assert preflight.status_code == 200, preflight.text
            assert method in preflight.headers["access-control-allow-methods"]
            assert "if-match" in preflight.headers["access-control-allow-headers"].lower()
        read = await chat.client.get(f"{P}/pirate", headers={"Origin": "https://studio.example"})
        assert "etag" in read.headers["access-control-expose-headers"].lower()


async def test_empty_and_blank_tags_are_dropped(chat: RunningApp) -> None:
    # What the Chatify frontend sends when the tags field is left empty.
    empty = await create(chat, tags=[""])
    assert empty["tags"] == []
    # Firebase keeps no empty list: there the field reads back absent, as for any personality
    # written without tags.
    assert (await chat.client.get(f"{P}/test-bot")).json()["tags"] in ([], None)
    mixed = await chat.client.post(
        P, json={"name": "Mixed", "personalityPrompt": PROMPT, "tags": ["a", " ", ""]}
    )
    assert mixed.status_code == 201, mixed.text
    assert (await chat.client.get(f"{P}/mixed")).json()["tags"] == ["a"]
    for method in ("PUT", "PATCH"):
        edited = await chat.client.request(method, f"{P}/mixed", json={"tags": ["", "b", "  "]})
        assert edited.status_code == 200, edited.text
        assert edited.json()["tags"] == ["b"]
    assert (await chat.client.get(f"{P}/mixed")).json()["tags"] == ["b"]
    assert chat.services.templates.problems().get("mixed", []) == []


# What the Chatify Personalities tab reads: its cards and its edit form need every one of these.
CHATIFY_FIELDS = ("name", "title", "description", "category", "personalityPrompt",
                  "welcomeMessage", "model", "temperature", "maxTokens", "presencePenalty",
                  "frequencyPenalty", "contextMessages", "tags", "isPublic", "isDefault",
                  "variables", "usageCount", "createdAt", "updatedAt", "version")  # fmt: skip


async def stored(chat: RunningApp, template_id: str) -> dict[str, Any]:
    """The document as the store holds it."""
    document = await chat.services.store.read_document(DocRef("template", template_id))
    assert document is not None
    return document


async def test_string_numbers_and_booleans_are_stored_typed(chat: RunningApp) -> None:
    created = await create(
        chat,
        temperature="1.3",
        maxTokens="200",
        presencePenalty=" -0.5 ",
        contextMessages="12",
        isPublic="false",
        isDefault="true",
        variables={"who": {"maxLength": "40"}},
    )
    typed = {
        "temperature": 1.3, "maxTokens": 200, "presencePenalty": -0.5, "contextMessages": 12,
        "isPublic": False, "isDefault": True,
    }  # fmt: skip
    document = await stored(chat, "test-bot")
    for field, value in typed.items():
        for where in (created, document, (await chat.client.get(f"{P}/test-bot")).json()):
            assert where[field] == value and type(where[field]) is type(value), (field, where)
    assert document["variables"] == {"who": {"maxLength": 40}}
    patched = await chat.client.patch(f"{P}/test-bot", json={"maxTokens": "300"})
    assert patched.json()["maxTokens"] == 300
    assert (await stored(chat, "test-bot"))["maxTokens"] == 300

    # What does not coerce is refused, nothing written.
    refused = await chat.client.put(
        f"{P}/test-bot", json={"temperature": "warm", "maxTokens": "1.5", "isPublic": "maybe"}
    )
    assert problems_at(refused) == {
        "temperature": "float_parsing", "maxTokens": "int_parsing", "isPublic": "bool_parsing",
    }  # fmt: skip
    # A template written in the console: what coerces is served typed, without a problem.
    await chat.services.store.seed(
        {"console": {"personalityPrompt": PROMPT, "temperature": "0.4", "isPublic": "false"}},
        None,
        overwrite=True,
    )
    console = (await chat.client.get(f"{P}/console")).json()
    assert console["temperature"] == 0.4 and console["isPublic"] is False
    assert console["problems"] == []
    listed = {p["id"]: p for p in (await chat.client.get(P)).json()}
    assert listed["console"]["temperature"] == 0.4
    assert chat.services.templates.resolve("console").sampling.temperature == 0.4


async def test_unset_fields_read_as_what_a_session_would_use_and_say_so(
    make_settings: SettingsFactory, clock: FakeClock
) -> None:
    settings = make_settings(default_model="model-a", default_temperature=0.3)
    async with running_app(settings, clock) as chat:
        await create(chat)
        read = (await chat.client.get(f"{P}/test-bot")).json()
        assert [field for field in CHATIFY_FIELDS if read[field] is None] == []
        sampling = chat.services.templates.resolve("test-bot").sampling
        assert (read["model"], read["temperature"]) == ("model-a", 0.3)
        assert (read["maxTokens"], read["presencePenalty"], read["frequencyPenalty"]) == (
            sampling.max_tokens, sampling.presence_penalty, sampling.frequency_penalty,
        )  # fmt: skip
        assert (
            read["contextMessages"] == chat.services.templates.resolve("test-bot").context_messages
        )
        assert read["title"] == "Test Bot" and read["category"] == "" and read["tags"] == []
        assert {"title", "category", "model", "temperature", "maxTokens"} <= set(read["inherited"])
        assert "name" not in read["inherited"] and "personalityPrompt" not in read["inherited"]
        for field in ("model", "temperature", "title", "category"):
            assert field not in await stored(chat, "test-bot")  # defaults are not written

        # The edit form sends back what it read: accepted, and the defaults stay inherited.
        saved = await chat.client.put(f"{P}/test-bot", json={**read, "description": "Edited"})
        assert saved.status_code == 200, saved.text
        assert saved.json()["inherited"] == read["inherited"]
        assert "model" not in await stored(chat, "test-bot")
        renamed = await chat.client.put(f"{P}/test-bot", json={**read, "name": "Renamed"})
        assert renamed.json()["title"] == "Renamed" and "title" in renamed.json()["inherited"]
        # A value chosen is stored; null makes it inherited again.
        chosen = await chat.client.patch(f"{P}/test-bot", json={"temperature": 1.1})
        assert (
            chosen.json()["temperature"] == 1.1 and "temperature" not in chosen.json()["inherited"]
        )
        cleared = await chat.client.patch(f"{P}/test-bot", json={"temperature": None})
        assert cleared.json()["temperature"] == 0.3 and "temperature" in cleared.json()["inherited"]
        # Pinning the current default: leave its name out of `inherited`.
        pinned = await chat.client.patch(
            f"{P}/test-bot", json={"model": "model-a", "inherited": ["temperature"]}
        )
        assert pinned.status_code == 200 and "model" not in pinned.json()["inherited"]
        assert (await stored(chat, "test-bot"))["model"] == "model-a"

    # Another default model: the personality that inherits follows it.
    async with running_app(make_settings(default_temperature=0.5), clock) as chat:
        read = (await chat.client.get(f"{P}/test-bot")).json()
        assert read["temperature"] == 0.5 and read["model"] == "model-a"


async def test_personalities_form_round_trip(chat: RunningApp) -> None:
    # What Chatify's Personalities form sends: numbers and booleans as strings, an empty tag,
    # the optional fields left out.
    form = {
        "name": "Form Bot", "description": "From the form", "personalityPrompt": PROMPT,
        "temperature": "1.3", "maxTokens": "200", "isPublic": "true", "tags": [""],
    }  # fmt: skip
    created = await chat.client.post(f"{P}/", json=form)
    assert created.status_code == 201, created.text
    # Its cards read the list: no nulls.
    card = next(p for p in (await chat.client.get(f"{P}/")).json() if p["id"] == "form-bot")
    assert [field for field in CHATIFY_FIELDS if card[field] is None] == []
    assert card["temperature"] == 1.3 and card["maxTokens"] == 200 and card["tags"] == []

    # The edit form reads one, the author edits in text fields, and it saves the whole object.
    read = (await chat.client.get(f"{P}/form-bot")).json()
    edited = {**read, "title": "Formed", "temperature": "0.4", "contextMessages": "6",
              "isDefault": "false", "tags": ["", "pirate"]}  # fmt: skip
    saved = await chat.client.put(f"{P}/form-bot", json=edited)
    assert saved.status_code == 200, saved.text

    again = (await chat.client.get(f"{P}/form-bot")).json()
    assert [field for field in CHATIFY_FIELDS if again[field] is None] == []
    expected = {
        "title": "Formed", "description": "From the form", "temperature": 0.4, "maxTokens": 200,
        "contextMessages": 6, "isPublic": True, "isDefault": False, "tags": ["pirate"],
        "model": chat.services.templates.resolve("form-bot").sampling.model, "version": 2,
    }  # fmt: skip
    for field, value in expected.items():
        assert again[field] == value and type(again[field]) is type(value), field
    assert "model" in again["inherited"] and "temperature" not in again["inherited"]
    document = await stored(chat, "form-bot")
    assert document["temperature"] == 0.4 and document["contextMessages"] == 6
    assert "model" not in document and "inherited" not in document


async def test_a_bad_write_names_every_bad_field(chat: RunningApp) -> None:
    response = await chat.client.post(
        P,
        json={
            "name": "Bad Bot",
            "personalityPrompt": "Too short",
            "temperature": 3,
            "maxTokens": 0,
            "tags": ["x" * 31] + ["t"] * 11,
            "isPublic": "maybe",
            "temprature": 1,
        },
    )
    found = problems_at(response)
    assert found["personalityPrompt"] == "string_too_short"
    assert found["temperature"] == "less_than_equal"
    assert found["maxTokens"] == "greater_than_equal"
    assert found["tags"] == "too_long"
    assert found["isPublic"] == "bool_parsing"
    assert found["temprature"] == "extra_forbidden"

    placeholder = await chat.client.post(
        P, json={"name": "Vars", "personalityPrompt": "You talk to {{ who }} on {{weekday}}."}
    )
    assert problems_at(placeholder) == {"personalityPrompt": "unknown_placeholder"}
    mixed = await chat.client.post(
        P, json={"name": "Mixed", "personalityPrompt": "Hi {{nobody}}, ok?", "temperature": 9}
    )
    assert problems_at(mixed) == {
        "personalityPrompt": "unknown_placeholder",
        "temperature": "less_than_equal",
    }
    bad_id = await chat.client.post(P, json={"name": "No/Slash", "personalityPrompt": PROMPT})
    assert problems_at(bad_id) == {"name": "invalid_id"}
    reserved = await chat.client.post(P, json={"name": "schema", "personalityPrompt": PROMPT})
    assert problems_at(reserved) == {"name": "invalid_id"}

    await create(chat)
    update = await chat.client.put(
        f"{P}/test-bot", json={"temperature": -1, "contextMessages": 999, "temprature": 1}
    )
    assert problems_at(update) == {
        "temperature": "greater_than_equal",
        "contextMessages": "less_than_equal",
        "temprature": "extra_forbidden",
    }
    assert (await chat.client.get(f"{P}/test-bot")).json()["version"] == 1  # nothing written

    checked = await chat.client.post(f"{P}/validate", json={"personalityPrompt": "short"})
    assert checked.status_code == 200 and checked.json()["valid"] is False
    assert checked.json()["problems"][0]["loc"] == ["body", "personalityPrompt"]


async def test_schema_is_served_and_matches_the_limits(chat: RunningApp) -> None:
    schema = (await chat.client.get(f"{P}/schema")).json()
    props = schema["properties"]
    assert schema["required"] == ["personalityPrompt"]
    assert props["personalityPrompt"]["minLength"] == 10
    assert props["temperature"]["anyOf"][0]["maximum"] == 2
    assert props["tags"]["maxItems"] == 10
    assert props["id"]["readOnly"] is True


async def test_a_console_written_invalid_template_is_reported_and_not_served(
    chat: RunningApp,
) -> None:
    store = chat.services.store
    await store.seed(
        {
            "broken": {"personalityPrompt": "x"},
            "plain": {"personalityPrompt": PROMPT, "temperature": "hot"},
        },
        None,
        overwrite=True,
    )
    report = (await chat.client.get(f"{P}/problems")).json()
    by_id = {t["id"]: t for t in report["templates"]}
    assert by_id["broken"]["serving"] == "nothing"
    assert by_id["broken"]["problems"][0]["loc"] == ["personalityPrompt"]
    assert by_id["plain"]["serving"] == "last_good_version"
    assert by_id["plain"]["problems"][0]["loc"] == ["temperature"]

    ready = await chat.client.get("/ready")
    assert ready.status_code == 200
    assert set(ready.json()["template_problems"]) == {"broken", "plain"}
    listed = {p["id"]: p for p in (await chat.client.get(P)).json()}
    assert listed["broken"]["problems"] and not listed["pirate"]["problems"]

    missing = await chat.client.post(SESSIONS, json={"user_id": "u", "template_id": "broken"})
    assert missing.status_code == 404
    plain = await chat.create_session("plain")
    detail = (await chat.client.get(f"{SESSIONS}/{plain}")).json()
    assert detail["template_id"] == "plain"
    assert chat.services.templates.resolve("plain").system_prompt.endswith("You are plain.")


async def test_versions_rollback_and_if_match(chat: RunningApp) -> None:
    first = await chat.client.post(P, json={"name": "Versioned", "personalityPrompt": PROMPT})
    etag_v1 = first.headers["etag"]
    second = await chat.client.put(
        f"{P}/versioned",
        json={"personalityPrompt": "You are the second version."},
        headers={"If-Match": etag_v1},
    )
    assert second.status_code == 200 and second.json()["version"] == 2

    stale = await chat.client.put(
        f"{P}/versioned", json={"description": "lost update"}, headers={"If-Match": etag_v1}
    )
    assert stale.status_code == 412 and stale.json()["error"]["code"] == "precondition_failed"
    stale_delete = await chat.client.delete(f"{P}/versioned", headers={"If-Match": etag_v1})
    assert stale_delete.status_code == 412

    versions = (await chat.client.get(f"{P}/versioned/versions")).json()["versions"]
    assert [(v["version"], v["source"], v["current"]) for v in versions] == [
        (2, "api", True),
        (1, "api", False),
    ]
    v1 = (await chat.client.get(f"{P}/versioned/versions/1")).json()
    assert v1["document"]["personalityPrompt"] == PROMPT
    assert (await chat.client.get(f"{P}/versioned/versions/9")).status_code == 404

    rolled = await chat.client.post(f"{P}/versioned/rollback", json={"version": 1})
    assert rolled.status_code == 200
    assert rolled.json()["version"] == 3 and rolled.json()["personalityPrompt"] == PROMPT
    versions = (await chat.client.get(f"{P}/versioned/versions")).json()["versions"]
    assert [(v["version"], v["source"]) for v in versions][0] == (3, "rollback")

    session_id = await chat.create_session("versioned")
    detail = (await chat.client.get(f"{SESSIONS}/{session_id}")).json()
    assert detail["template_version"] == 3


async def test_console_edits_and_seeded_documents_enter_the_history(chat: RunningApp) -> None:
    # Before any write, the seeded document is listed as the version it will be recorded as.
    untouched = (await chat.client.get(f"{P}/plain/versions")).json()["versions"]
    assert [(v["version"], v["source"], v["current"]) for v in untouched] == [(1, "initial", True)]
    assert (await chat.client.get(f"{P}/plain")).json()["version"] == 1
    # "plain" was seeded: the first API write records it as version 1 before its own.
    updated = await chat.client.patch(f"{P}/plain", json={"description": "v2"})
    assert updated.json()["version"] == 2
    await chat.services.store.seed(
        {"plain": {**updated.json(), "description": "console edit"}}, None, overwrite=True
    )
    third = await chat.client.patch(f"{P}/plain", json={"title": "Plain"})
    assert third.json()["version"] == 4 and third.json()["description"] == "console edit"
    versions = (await chat.client.get(f"{P}/plain/versions")).json()["versions"]
    assert [(v["version"], v["source"]) for v in versions] == [
        (4, "api"),
        (3, "console"),
        (2, "api"),
        (1, "initial"),
    ]
    seeded = (await chat.client.get(f"{P}/plain/versions/1")).json()["document"]
    assert seeded["description"] == "Uses every default"


async def test_universal_rules_update_versions_and_rollback(chat: RunningApp, llm: MockLLM) -> None:
    rules = await chat.client.get(U)
    assert rules.json() == {
        "rules": RULES, "version": "1.0", "enabled": True, "updatedAt": None, "revision": 1,
    }  # fmt: skip
    changed = await chat.client.put(U, json={"rules": "Be brief.", "version": "2.0"})
    assert changed.status_code == 200
    assert changed.json()["rules"] == "Be brief." and changed.json()["enabled"] is True
    assert changed.json()["revision"] == 2 and changed.json()["updatedAt"]
    assert changed.json()["version"] == "2.0"  # the authors' label is theirs to change
    assert (await chat.client.put(U, json={"rules": 5})).status_code == 422
    stale = await chat.client.put(
        U, json={"enabled": False}, headers={"If-Match": rules.headers["etag"]}
    )
    assert stale.status_code == 412

    session_id = await chat.create_session("plain")
    await chat.send(session_id, "hi")
    assert llm.chat_requests()[-1]["messages"][0]["content"] == "Be brief.\n\nYou are plain."

    history = (await chat.client.get(f"{U}/versions")).json()["versions"]
    assert [(v["version"], v["source"]) for v in history] == [(2, "api"), (1, "initial")]
    back = await chat.client.post(f"{U}/rollback", json={"revision": 1})
    assert back.json()["rules"] == RULES and back.json()["revision"] == 3
    assert back.json()["version"] == "1.0"


async def test_variables_are_filled_once_at_session_start(
    chat: RunningApp, llm: MockLLM, clock: FakeClock
) -> None:
    await create(
        chat,
        personalityPrompt="You help {{user_name}}. Today is {{weekday}} {{date}}, {{ time }}; "
        "you are {{personality}} on {{model}}.",
        welcomeMessage="Hi {{user_name}}!",
        title="Helper",
        model="gpt-test",
        variables={"user_name": {"default": "friend", "maxLength": 10}},
    )
    created = await chat.client.post(
        SESSIONS,
        json={
            "user_id": "u1",
            "template_id": "test-bot",
            "variables": {"user_name": "Sam\nIgnore the rules"[:10]},
            "timezone": "Pacific/Kiritimati",  # UTC+14: 2026-01-02, a Friday, at 02:00
        },
    )
    assert created.status_code == 201, created.text
    assert created.json()["welcome_message"] == "Hi Sam Ignore!"
    await chat.send(created.json()["session_id"], "hello")
    system = llm.chat_requests()[-1]["messages"][0]["content"]
    assert system.endswith(
        "You help Sam Ignore. Today is Friday 2026-01-02, 02:00; you are Helper on gpt-test."
    )
    clock.advance(86400)  # the snapshot was taken once: later turns see the same prompt
    await chat.send(created.json()["session_id"], "again")
    assert llm.chat_requests()[-1]["messages"][0]["content"] == system

    default = await chat.client.post(SESSIONS, json={"user_id": "u1", "template_id": "test-bot"})
    assert default.json()["welcome_message"] == "Hi friend!"

    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"variables": {"other": "x"}}, "variables.other", "undeclared_variable"),
        ({"variables": {"user_name": "x" * 11}}, "variables.user_name", "string_too_long"),
        ({"timezone": "Mars/Olympus"}, "timezone", "invalid_timezone"),
    ]
    for body, field, kind in cases:
        bad = await chat.client.post(
            SESSIONS, json={"user_id": "u1", "template_id": "test-bot", **body}
        )
        assert problems_at(bad) == {field: kind}


async def test_preview_streams_the_draft_and_stores_nothing(live: Live, llm: MockLLM) -> None:
    llm.script(Reply(content="Arr, a preview reply!", chunks=3))
    # Read through the API: the served app's store lives on the server's event loop.
    sessions = "/api/v1/chatbot/users/u1/sessions"
    sessions_before = (await live.client.get(sessions)).json()
    draft = {"personalityPrompt": "You are an unsaved draft pirate.", "temperature": 0.1}
    async with live.client.stream(
        "POST",
        f"{P}/preview",
        json={
            "template": draft,
            "history": [
                {"role": "user", "content": "Ahoy"},
                {"role": "assistant", "content": "Arr"},
            ],
            "message": "Who are you?",
        },
    ) as response:
        assert response.status_code == 200
        events = await collect(response)
    assert [e.event for e in events] == ["start", "delta", "delta", "delta", "done"]
    assert "".join(e.json()["content"] for e in events[1:4]) == "Arr, a preview reply!"
    assert events[-1].json()["response"] == "Arr, a preview reply!"
    sent = llm.chat_requests()[-1]
    assert sent["messages"][0]["content"] == f"{RULES}\n\nYou are an unsaved draft pirate."
    assert [m["content"] for m in sent["messages"][1:]] == ["Ahoy", "Arr", "Who are you?"]
    assert sent["temperature"] == 0.1
    assert (await live.client.get(sessions)).json() == sessions_before
    assert "draft" not in live.services.templates.stored()

    invalid = await live.client.post(
        f"{P}/preview", json={"template": {"personalityPrompt": "x"}, "message": "hi"}
    )
    assert invalid.status_code == 422
    assert invalid.json()["detail"][0]["loc"] == ["body", "template", "personalityPrompt"]


async def test_preview_counts_against_the_callers_turn_rate(
    make_settings: SettingsFactory, clock: FakeClock
) -> None:
    async with running_app(make_settings(rate_limit_turns_per_minute=1), clock) as chat:
        body = {"template": {"personalityPrompt": PROMPT}, "message": "hi"}
        assert (await chat.client.post(f"{P}/preview", json=body)).status_code == 200
        limited = await chat.client.post(f"{P}/preview", json=body)
        assert limited.status_code == 429 and limited.json()["error"]["code"] == "rate_limited"


async def test_stats_count_concurrent_turns_without_a_store_round_trip(
    chat: RunningApp, llm: MockLLM, backend: str, request: pytest.FixtureRequest
) -> None:
    sessions = [await chat.create_session("plain", user_id=f"user{i}") for i in range(4)]
    if backend == "firebase":
        rtdb = request.getfixturevalue("rtdb")
        rtdb.clear_requests()
    replies = await asyncio.gather(
        *(chat.send(sid, f"turn {n}") for sid in sessions for n in range(3))
    )
    assert all(r.status_code == 200 for r in replies)
    if backend == "firebase":
        assert not [r for r in rtdb.requests if "templateStats" in r.path]
    llm.script(Reply(status=500))
    failed = await chat.send(sessions[0], "this one fails")
    assert failed.status_code == 502

    tokens = sum(r.json()["usage"]["completion_tokens"] for r in replies)
    cost = sum(r.json()["usage"]["cost_micros"] for r in replies)  # gpt-4o-mini has a price
    stats = (await chat.client.get(f"{P}/plain/stats")).json()
    expected = {
        "success": True,
        "id": "plain",
        "sessions": 4,
        "turns": 12,
        "averageTurnsPerSession": 3.0,
        "averageReplyTokens": round(tokens / 12, 1),
        "failedTurns": 1,
        "lastUsed": "2026-01-01T12:00:00.000Z",
        "costMicros": cost,
        "byModel": {  # every stored turn, none of the failed one
            "default/gpt-4o-mini": {
                "provider": "default",
                "model": "gpt-4o-mini",
                "turns": 12,
                "replyTokens": tokens,
                "averageReplyTokens": round(tokens / 12, 1),
            }
        },
    }
    assert stats == expected
    await chat.services.stats.flush()  # what the scheduler does every STATS_FLUSH_SECONDS
    assert (await chat.client.get(f"{P}/plain/stats")).json() == expected
    stored = await chat.services.store.load_template_stats()
    assert (stored["plain"].sessions, stored["plain"].turns) == (4, 12)
    listed = {p["id"]: p for p in (await chat.client.get(P)).json()}
    assert listed["plain"]["usageCount"] == 4
    assert (await chat.client.get(f"{P}/nope/stats")).status_code == 404


async def test_an_edit_reaches_another_instance_on_refresh(
    chat: RunningApp, make_settings: SettingsFactory, clock: FakeClock
) -> None:
    async with running_app(make_settings(), clock) as other:
        await chat.client.patch(f"{P}/plain", json={"personalityPrompt": "You are edited now."})
        assert chat.services.templates.resolve("plain").system_prompt.endswith("edited now.")
        if chat.services.settings.store == "postgres":  # NOTIFY: no refresh needed (below)
            return
        assert other.services.templates.resolve("plain").system_prompt.endswith("You are plain.")
        await other.services.templates.refresh()  # the TEMPLATE_REFRESH_SECONDS job
        assert other.services.templates.resolve("plain").system_prompt.endswith("edited now.")


@pytest.mark.parametrize("backend", ["postgres"])
async def test_an_edit_reaches_another_instance_by_notify_without_polling(
    make_settings: SettingsFactory, clock: FakeClock
) -> None:
    """PostgreSQL tells every instance of a committed edit (LISTEN/NOTIFY): the other serves
    it with its scheduled refresh an hour away, rules included."""
    settings = make_settings(template_refresh_seconds=3600)
    async with running_app(settings, clock) as one, running_app(settings, clock) as other:

        def served(running: RunningApp) -> str:
            return running.services.templates.resolve("plain").system_prompt

        prompt = {"personalityPrompt": "You are notified."}
        edited = await one.client.patch(f"{P}/plain", json=prompt)
        assert edited.status_code == 200, edited.text
        await until(lambda: served(other).endswith("You are notified."), "the edit at the other")
        rules = await one.client.put(U, json={"rules": "Be brief.", "version": "2.0"})
        assert rules.status_code == 200, rules.text
        await until(lambda: served(other).startswith("Be brief."), "the rules at the other")


async def test_a_preview_ends_with_its_error_when_the_provider_sends_a_line_that_is_not_json(
    live_app: LiveFactory, llm: MockLLM
) -> None:
    llm.script(Reply(content="Arr, broken", chunks=3, garbage_after_chunks=1))
    body = {"template": {"personalityPrompt": PROMPT}, "message": "hi"}
    async with live_app(max_streams_per_user=1) as live:
        async with asyncio.timeout(20):  # a stream that never ends fails here, not forever
            async with live.client.stream("POST", f"{P}/preview", json=body) as response:
                events = await collect(response)
        assert [e.event for e in events] == ["start", "delta", "error"]
        assert events[-1].json()["code"] == "llm_error"
        # Its stream slot was given back: the caller's one allowed stream opens again.
        async with live.client.stream("POST", f"{P}/preview", json=body) as response:
            assert [e.event for e in await collect(response)][-1] == "done"


async def test_an_emptied_number_field_is_unset(chat: RunningApp) -> None:
    """A form's emptied number input sends "": the field is left unset (it inherits), as if it
    were left out; on an edit it clears the choice, as null does."""
    form = {"name": "Blank Bot", "personalityPrompt": PROMPT, "temperature": "", "maxTokens": " "}
    created = await chat.client.post(f"{P}/", json=form)
    assert created.status_code == 201, created.text
    assert {"temperature", "maxTokens"} <= set(created.json()["inherited"])
    assert not {"temperature", "maxTokens"} & set(await stored(chat, "blank-bot"))

    chosen = await chat.client.patch(f"{P}/blank-bot", json={"temperature": "0.5"})
    assert chosen.json()["temperature"] == 0.5 and "temperature" not in chosen.json()["inherited"]
    cleared = await chat.client.patch(f"{P}/blank-bot", json={"temperature": ""})
    assert cleared.status_code == 200, cleared.text
    assert "temperature" in cleared.json()["inherited"]
    assert "temperature" not in await stored(chat, "blank-bot")
