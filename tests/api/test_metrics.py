"""GET /metrics: who may read it, and that turns, LLM calls, errors, requests and the live
gauges move the metrics docs/operations.md names, with bounded labels."""

from __future__ import annotations

import asyncio
import hashlib
import threading

import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.core.metrics import MAX_LABEL_VALUES, Metrics
from testkit.mock_llm import MockLLM, Reply
from tests.api.conftest import API, until
from tests.conftest import FakeClock, RunningApp, SettingsFactory, running_app

HASHED_TOKEN = "sha256:" + hashlib.sha256(b"hashed").hexdigest()
API_KEYS = {
    "auth_mode": "api_key",
    "api_keys": "service-key",
    "user_api_keys": "alice=alice-key",
    "admin_api_keys": "admin-key",
}


@pytest.fixture
def backend() -> str:
    """Metrics do not depend on the store: SQLite only."""
    return "sqlite"


async def scrape(chat: RunningApp, **headers: str) -> str:
    """The exposition, as an admin (AUTH_MODE=none) or with ``headers``."""
    response = await chat.client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    return response.text


def value(text: str, name: str, **labels: str) -> float:
    """The sample ``name`` with exactly these labels (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


def names(text: str) -> set[str]:
    """Every sample name in the exposition."""
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Bearer wrong-token"}, 401),
        ({"X-API-Key": "scrape-token"}, 401),  # the token is a bearer token only
        ({"Authorization": "Bearer alice-key"}, 403),
        ({"X-API-Key": "service-key"}, 403),
        ({"Authorization": "Bearer admin-key"}, 200),
        ({"Authorization": "Bearer scrape-token"}, 200),
    ],
)
async def test_metrics_are_for_admins_and_the_metrics_token(
    make_settings: SettingsFactory, clock: FakeClock, headers: dict[str, str], status: int
) -> None:
    settings = make_settings(**API_KEYS, metrics_token="scrape-token")
    async with running_app(settings, clock) as chat:
        response = await chat.client.get("/metrics", headers=headers)
    assert response.status_code == status, response.text
    if status == 200:
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert "chatify_http_requests_total" in response.text
    else:
        assert (
            response.json()["error"]["code"] == {401: "unauthenticated", 403: "forbidden"}[status]
        )
        assert "chatify_" not in response.text


async def test_without_a_token_an_admin_key_reads_the_metrics(
    make_settings: SettingsFactory, clock: FakeClock
) -> None:
    async with running_app(make_settings(**API_KEYS), clock) as chat:
        admin = await chat.client.get("/metrics", headers={"Authorization": "Bearer admin-key"})
        service = await chat.client.get("/metrics", headers={"X-API-Key": "service-key"})
        anonymous = await chat.client.get("/metrics")
    assert (admin.status_code, service.status_code, anonymous.status_code) == (200, 403, 401)


@pytest.mark.parametrize(
    ("token", "headers", "status"),
    [
        (None, {}, 200),  # no auth and no token: open, like every admin route in this mode
        ("scrape-token", {}, 401),  # a token set: required, even without auth
        ("scrape-token", {"Authorization": "Bearer nope"}, 401),
        ("scrape-token", {"Authorization": "Bearer scrape-token"}, 200),
        (
            "sha256:" + hashlib.sha256(b"hashed").hexdigest(),
            {"Authorization": "Bearer hashed"},
            200,
        ),
    ],
)
async def test_auth_mode_none_opens_metrics_unless_a_token_is_set(
    make_settings: SettingsFactory,
    clock: FakeClock,
    token: str | None,
    headers: dict[str, str],
    status: int,
) -> None:
    async with running_app(make_settings(metrics_token=token), clock) as chat:
        response = await chat.client.get("/metrics", headers=headers)
    assert response.status_code == status, response.text


async def test_a_turn_moves_the_turn_histograms_and_the_token_counters(chat: RunningApp) -> None:
    session_id = await chat.create_session("pirate")
    labels = {"template": "pirate"}
    llm_labels = {"provider": "default", "model": "gpt-test-pirate"}
    before = await scrape(chat)

    reply = await chat.send(session_id, "Ahoy there", client_message_id="m1")
    assert reply.status_code == 200
    usage = reply.json()["usage"]
    after_json = await scrape(chat)
    async with chat.client.stream(
        "POST", f"{API}/session/{session_id}/message/stream", json={"message": "Stream it"}
    ) as response:
        await response.aread()
    after_stream = await scrape(chat)

    turns = "chatify_turn_seconds_count"
    first_delta = "chatify_turn_first_delta_seconds_count"
    assert value(after_json, turns, **labels) == value(before, turns, **labels) + 1
    # A JSON turn has no first delta for a client to wait for; a streamed one has.
    assert value(after_json, first_delta, **labels) == value(before, first_delta, **labels)
    assert value(after_stream, turns, **labels) == value(before, turns, **labels) + 2
    assert value(after_stream, first_delta, **labels) == value(before, first_delta, **labels) + 1
    assert value(after_stream, "chatify_turn_first_delta_seconds_sum", **labels) > 0

    token_labels = {"template": "pirate", **llm_labels}
    tokens_in = value(after_json, "chatify_tokens_total", direction="in", **token_labels)
    tokens_out = value(after_json, "chatify_tokens_total", direction="out", **token_labels)
    assert (tokens_in, tokens_out) == (usage["prompt_tokens"], usage["completion_tokens"])

    calls = value(after_stream, "chatify_llm_calls_total", outcome="ok", **llm_labels)
    assert calls == 2
    assert value(after_stream, "chatify_llm_call_seconds_count", **llm_labels) == 2
    for operation in ("claim_turn", "write_turn"):
        assert value(after_stream, "chatify_store_seconds_count", operation=operation) == 2
    assert "Ahoy there" not in after_stream and session_id not in after_stream


async def test_a_priced_turn_moves_the_cost_counter_by_its_stored_cost(chat: RunningApp) -> None:
    labels = {"template": "plain", "provider": "default", "model": "gpt-4o-mini"}
    session_id = await chat.create_session("plain")
    first = (await chat.send(session_id, "What does this cost?")).json()
    second = (await chat.send(session_id, "And this one?")).json()
    costs = [reply["usage"]["cost_micros"] for reply in (first, second)]
    assert all(costs), "gpt-4o-mini has a list price"
    assert value(await scrape(chat), "chatify_cost_micros_total", **labels) == sum(costs)
    unpriced = await chat.create_session("pirate")  # gpt-test-pirate has no price
    assert (await chat.send(unpriced, "ahoy")).json()["usage"]["cost_micros"] is None
    pirate = {**labels, "template": "pirate", "model": "gpt-test-pirate"}
    text = await scrape(chat)
    assert value(text, "chatify_cost_micros_total", **pirate) == 0  # never a guess
    assert value(text, "chatify_cost_micros_total", **labels) == sum(costs)


async def test_a_failed_turn_moves_errors_by_code(chat: RunningApp, llm: MockLLM) -> None:
    session_id = await chat.create_session("pirate")
    llm.script(Reply(status=500, error_body={"error": {"message": "upstream broke"}}))
    failed = await chat.send(session_id, "hello")
    missing = await chat.client.get(f"{API}/session/00000000-0000-4000-8000-000000000000")
    text = await scrape(chat)

    assert failed.status_code == 502 and missing.status_code == 404
    assert value(text, "chatify_errors_total", code="llm_error") == 1
    assert value(text, "chatify_errors_total", code="session_not_found") == 1
    assert value(text, "chatify_turn_failures_total", code="llm_error") == 1
    outcome = {"provider": "default", "model": "gpt-test-pirate", "outcome": "llm_error"}
    assert value(text, "chatify_llm_calls_total", **outcome) == 1
    assert value(text, "chatify_turn_seconds_count", template="pirate") == 0


async def test_requests_are_counted_by_route_template_never_by_raw_path(
    chat: RunningApp,
) -> None:
    session_id = await chat.create_session()
    for _ in range(2):
        assert (await chat.client.get(f"{API}/session/{session_id}")).status_code == 200
    assert (await chat.client.get(f"{API}/session/{session_id}/")).status_code == 200
    assert (await chat.client.get("/no/such/path/x1y2z3")).status_code == 404
    assert (await chat.client.request("BREW", "/health")).status_code == 405
    text = await scrape(chat)

    route = f"{API}/session/{{session_id}}"
    assert value(text, "chatify_http_requests_total", method="GET", route=route, status="200") == 3
    assert value(text, "chatify_http_request_seconds_count", method="GET", route=route) == 3
    unmatched = {"method": "GET", "route": "unmatched", "status": "404"}
    assert value(text, "chatify_http_requests_total", **unmatched) == 1
    # A method no client sends is not a label value of its own.
    other = {"method": "other", "route": "/health", "status": "405"}
    assert value(text, "chatify_http_requests_total", **other) == 1
    assert session_id not in text and "x1y2z3" not in text and "BREW" not in text


async def test_the_gauges_read_the_live_sessions_and_turns(chat: RunningApp, llm: MockLLM) -> None:
    release = threading.Event()
    llm.script(Reply(gate=release))
    session_id = await chat.create_session()
    turns = chat.services.turns
    running, _ = turns.submit(session_id, text="first", client_message_id=None, stream=False)
    waiting, _ = turns.submit(session_id, text="second", client_message_id=None, stream=False)
    try:
        await until(lambda: len(llm.chat_requests()) == 1, "the first turn to reach the model")
        busy = await scrape(chat)
    finally:
        release.set()
        await asyncio.gather(running.result(), waiting.result())
    idle = await scrape(chat)

    assert value(busy, "chatify_turns_in_flight") == 2
    assert value(busy, "chatify_turns_queued") == 1
    assert value(idle, "chatify_turns_in_flight") == value(idle, "chatify_turns_queued") == 0
    assert value(idle, "chatify_sessions_cached") == chat.services.sessions.cached_count == 1


async def test_two_apps_in_one_process_count_apart(
    make_settings: SettingsFactory, clock: FakeClock
) -> None:
    async with (
        running_app(make_settings(), clock) as first,
        running_app(make_settings(), clock) as second,
    ):
        session_id = await first.create_session()
        assert (await first.send(session_id, "only here")).status_code == 200
        one, two = await scrape(first), await scrape(second)
    assert value(one, "chatify_turn_seconds_count", template="pirate") == 1
    assert value(two, "chatify_turn_seconds_count", template="pirate") == 0


async def test_redis_health_is_absent_until_reported(chat: RunningApp) -> None:
    assert "chatify_redis_up" not in names(await scrape(chat))
    chat.services.metrics.set_redis_up(False)
    assert value(await scrape(chat), "chatify_redis_up") == 0
    chat.services.metrics.set_redis_up(True)
    assert value(await scrape(chat), "chatify_redis_up") == 1


@pytest.mark.parametrize(
    ("accept", "content_type"),
    [
        ("application/openmetrics-text; version=1.0.0", "application/openmetrics-text"),
        ("text/plain; version=abc", "text/plain; version=0.0.4"),  # prometheus-client raises
        ("*/*", "text/plain; version=0.0.4"),
    ],
)
async def test_the_format_follows_accept(chat: RunningApp, accept: str, content_type: str) -> None:
    response = await chat.client.get("/metrics", headers={"Accept": accept})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(content_type)
    assert "chatify_sessions_cached" in response.text
    assert response.text.rstrip().endswith("# EOF") == content_type.startswith("application")


def test_personality_and_model_labels_are_capped() -> None:
    metrics = Metrics()
    for n in range(MAX_LABEL_VALUES + 5):
        metrics.turn_stored(
            template=f"t{n}",
            provider="default",
            model="m",
            usage=None,
            seconds=0.1,
            first_delta_seconds=None,
        )
    body, _ = metrics.render(None)
    text = body.decode()
    templates = {
        s.labels["template"]
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "chatify_turn_seconds_count"
    }
    assert len(templates) == MAX_LABEL_VALUES + 1 and "other" in templates
    assert value(text, "chatify_turn_seconds_count", template="other") == 5


async def test_ending_a_session_held_here_reads_nothing_before_its_write(chat: RunningApp) -> None:
    # Whose a held session is never changes: the end's one store call is its write.
    held = await chat.create_session("pirate")
    before = await scrape(chat)
    ended = await chat.client.delete(f"{API}/session/{held}")
    assert ended.status_code == 200 and ended.json()["stats"]["message_count"] == 0
    after = await scrape(chat)
    reads = "chatify_store_seconds_count"
    assert value(after, reads, operation="get_session") == value(
        before, reads, operation="get_session"
    )
    assert (
        value(after, reads, operation="end_session")
        == value(before, reads, operation="end_session") + 1
    )
