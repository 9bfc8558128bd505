"""What turns cost: the price table applied to the usage the provider reported (cached prompt
tokens included), stored with each turn and background call, added up by the usage routes, the
studio's stats and /metrics, and the daily cost limit (issue 23, "What it cost")."""

from __future__ import annotations

import math
import sqlite3
from fractions import Fraction
from pathlib import Path
from typing import Any

from services.core.records import Usage
from services.store.sqlite import SQLiteStore
from services.store.sqlite.schema import _SCHEMA
from services.store.sqlite.usage_rows import USAGE_SCHEMA
from testkit.mock_llm import MockLLM
from tests.api.conftest import API, until
from tests.api.test_usage import usage_of
from tests.conftest import FakeClock, RunningApp, SettingsFactory, running_app

# OpenAI's list prices (USD per million tokens: input, cached input, output), written out here
# rather than read from the code under test.
LIST_PRICES = {
    "gpt-4o-mini": (Fraction("0.15"), Fraction("0.075"), Fraction("0.60")),
    "gpt-4.1-nano": (Fraction("0.10"), Fraction("0.025"), Fraction("0.40")),
}
CACHED = 5  # prompt tokens the mock reports as read from the cache, every reply


def priced(model: str, usage: dict[str, Any]) -> int:
    """A call's cost in micro-USD from the mock's own numbers: tokens x USD per million
    tokens is micro-USD, rounded half up per call."""
    price_in, price_cached, price_out = LIST_PRICES[model]
    cached = usage.get("prompt_tokens_details", {}).get("cached_tokens", 0)
    exact = (
        (usage["prompt_tokens"] - cached) * price_in
        + cached * price_cached
        + usage["completion_tokens"] * price_out
    )
    return int(math.floor(exact + Fraction(1, 2)))


async def stored_replies(chat: RunningApp, session_id: str) -> list[dict[str, Any]]:
    """The session's stored replies, usage included (read through the export)."""
    export = (await chat.client.get(f"{API}/users/user_1/export")).json()
    (session,) = [s for s in export["sessions"] if s["session_id"] == session_id]
    return [m for m in session["messages"] if m["role"] == "assistant"]


async def test_the_usage_routes_cost_is_the_price_table_applied_to_the_mocks_tokens(
    make_settings: SettingsFactory, clock: FakeClock, llm: MockLLM
) -> None:
    llm.config.cached_tokens = CACHED
    try:
        settings = make_settings(session_titles=True, title_model="gpt-4.1-nano")
        async with running_app(settings, clock) as chat:
            session_id = await chat.create_session("plain")  # gpt-4o-mini
            first = await chat.send(session_id, "Hello there, what can you do for me today?")
            assert first.status_code == 200, first.text
            await until(
                lambda: chat.services.titles.pending == chat.services.calls.pending == 0,
                "the title and its usage",
            )
            streamed = await chat.client.post(
                f"{API}/session/{session_id}/message/stream", json={"message": "and streamed?"}
            )
            assert streamed.status_code == 200 and "event: done" in streamed.text
            assert (await chat.send(session_id, "A third turn, " * 20)).status_code == 200
            await chat.services.stats.flush()

            reported = list(llm.reported_usage)
            assert [model for model, _ in reported] == [
                "gpt-4o-mini", "gpt-4.1-nano", "gpt-4o-mini", "gpt-4o-mini",
            ]  # fmt: skip
            assert all(usage["prompt_tokens_details"]["cached_tokens"] for _, usage in reported)
            turn_costs = [priced(m, u) for m, u in reported if m == "gpt-4o-mini"]
            title_cost = priced(*reported[1])
            assert all(turn_costs) and title_cost

            replies = await stored_replies(chat, session_id)
            assert [r["usage"]["cost_micros"] for r in replies] == turn_costs
            assert [r["usage"]["cached_tokens"] for r in replies] == [CACHED] * 3

            total = sum(turn_costs) + title_cost
            today = (await usage_of(chat))["today"]
            assert (today["cost_micros"], today["calls_cost_micros"]) == (total, title_cost)
            assert today["unpriced"] == 0
            shares = today["by_model"]
            assert shares["default/gpt-4o-mini"]["cost_micros"] == sum(turn_costs)
            assert shares["default/gpt-4o-mini"]["calls_cost_micros"] == 0
            assert shares["default/gpt-4.1-nano"]["cost_micros"] == title_cost
            assert shares["default/gpt-4.1-nano"]["calls_cost_micros"] == title_cost

            detail = (await chat.client.get(f"{API}/session/{session_id}")).json()
            assert (detail["usage"]["cost_micros"], detail["usage"]["calls_cost_micros"]) == (
                total,
                title_cost,
            )
            stats = (await chat.client.get("/api/v1/personalities/plain/stats")).json()
            assert stats["costMicros"] == sum(turn_costs)  # the turns'; calls are the users'
    finally:
        llm.config.cached_tokens = 0


async def test_a_model_without_a_price_costs_null_never_a_guess(
    make_settings: SettingsFactory, clock: FakeClock, llm: MockLLM
) -> None:
    async with running_app(make_settings(session_titles=False), clock) as chat:
        session_id = await chat.create_session("pirate")  # gpt-test-pirate: no price
        reply = await chat.send(session_id, "ahoy")
        assert reply.status_code == 200
        assert reply.json()["usage"]["cost_micros"] is None
        today = (await usage_of(chat))["today"]
        assert (today["cost_micros"], today["unpriced"], today["turns"]) == (None, 1, 1)
        share = today["by_model"]["default/gpt-test-pirate"]
        assert (share["cost_micros"], share["unpriced"]) == (None, 1)


async def test_model_prices_replace_a_list_price_or_price_a_model_without_one(
    make_settings: SettingsFactory, clock: FakeClock, llm: MockLLM
) -> None:
    settings = make_settings(
        session_titles=False,
        model_prices={"gpt-test-pirate": {"input": 2000, "output": 3000}},  # USD per million
    )
    async with running_app(settings, clock) as chat:
        pirate = (await chat.send(await chat.create_session("pirate"), "ahoy")).json()
        (model, reported) = llm.reported_usage[-1]
        assert model == "gpt-test-pirate"
        expected = reported["prompt_tokens"] * 2000 + reported["completion_tokens"] * 3000
        assert pirate["usage"]["cost_micros"] == expected
        plain = (await chat.send(await chat.create_session("plain"), "hi")).json()
        assert plain["usage"]["cost_micros"] == priced(*llm.reported_usage[-1])  # list price


async def test_the_daily_cost_limit_answers_429_cost_limit_until_midnight(
    make_settings: SettingsFactory, clock: FakeClock, llm: MockLLM
) -> None:
    settings = make_settings(session_titles=False, user_daily_cost_limit_micros=50)
    async with running_app(settings, clock) as chat:
        session_id = await chat.create_session("plain")
        first = await chat.send(session_id, "a" * 1500)  # about 375 prompt tokens: > 50 micro-USD
        assert first.status_code == 200 and first.json()["usage"]["cost_micros"] > 50
        refused = await chat.send(session_id, "one more")
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "cost_limit"
        assert refused.headers["Retry-After"] == str(12 * 3600)  # the clock is at 12:00 UTC
        quota = (await usage_of(chat))["quota"]
        assert (quota["daily_cost_micros"], quota["cost_remaining_micros"]) == (50, 0)

        clock.advance(12 * 3600)  # a new UTC day
        assert (await chat.send(session_id, "one more")).status_code == 200


async def test_an_older_sqlite_files_counts_gain_cost_columns_and_read_as_unpriced(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:  # the usage tables as they were, without cost
        conn.executescript(_SCHEMA + USAGE_SCHEMA)
        conn.execute("INSERT INTO usage_daily VALUES ('u1', '2026-01-01', 30, 10, 2, 0)")
        conn.execute(
            "INSERT INTO usage_daily_by_model VALUES ('u1', '2026-01-01', 'default', 'm', "
            "30, 10, 2, 0)"
        )
        conn.execute("INSERT INTO template_stats VALUES ('t', 1, 2, 10, 0, NULL)")
    conn.close()
    store = SQLiteStore(path)
    await store.open()
    try:
        (day,) = await store.load_usage(
            "u1", since_day="2026-01-01", until_day="2026-01-01", by_model=True
        )
        assert (day.turns, day.cost_micros, day.unpriced, day.known_cost) == (2, 0, 2, None)
        assert day.by_model[0].known_cost is None
        stats = await store.load_template_stats()
        assert (stats["t"].turns, stats["t"].cost_micros) == (2, 0)
        priced = Usage(100, 10, 110, cost_micros=21)
        await store.add_usage("u1", "gone", priced, at="2026-01-01T13:00:00.000Z")
        (day,) = await store.load_usage("u1", since_day="2026-01-01", until_day="2026-01-01")
        assert (day.calls, day.cost_micros, day.calls_cost_micros, day.priced) == (1, 21, 21, 1)
        assert (day.unpriced, day.known_cost) == (2, 21)
    finally:
        await store.close()
