"""Configuration: defaults, backend selection, and bad values failing loudly at start."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from api.app import create_app
from services.core.records import Usage
from services.core.settings import Settings
from services.limits.cost import PriceTable
from services.store.firebase.connection import _database_url


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)


def test_defaults_need_nothing() -> None:
    plain = settings()
    assert (plain.store, plain.llm_provider, plain.port) == ("sqlite", "offline", 8000)


@pytest.mark.parametrize(
    ("values", "names"),
    [
        ({"store": "mongodb"}, "store"),
        ({"context_messages": -1}, "context_messages"),
        ({"cors_origins": "*,https://a.example"}, "CORS_ORIGINS"),
        ({"store": "firebase"}, "FIREBASE_DATABASE_URL"),
        ({"store": "postgres"}, "DATABASE_URL"),
        ({"store": "postgres", "database_url": "  "}, "DATABASE_URL"),
        (
            {"store": "postgres", "database_url": "postgresql://x/y", "database_pool_size": 0},
            "database_pool_size",
        ),
        ({"firebase_database_url": "ftp://x"}, "FIREBASE_DATABASE_URL"),
        ({"firebase_database_url": "https://x.firebaseio.com"}, "FIREBASE_CREDENTIALS_JSON"),
        (
            {
                "firebase_database_url": "https://x.firebaseio.com",
                "google_application_credentials": "/nonexistent/key.json",
            },
            "GOOGLE_APPLICATION_CREDENTIALS",
        ),
        (
            {
                "firebase_database_url": "https://x.firebaseio.com",
                "firebase_database_emulator_host": "http://127.0.0.1:9000",
            },
            "FIREBASE_DATABASE_EMULATOR_HOST",
        ),
    ],
)
def test_bad_configuration_names_the_setting(values: dict[str, Any], names: str) -> None:
    with pytest.raises(ValidationError, match=names):
        settings(**values)


@pytest.mark.parametrize(
    "prices",
    [
        '{"gpt-4o": {"input": -1, "output": 10}}',  # negative
        '{"gpt-4o": {"input": 2.5}}',  # no output price
        '{"gpt-4o": {"input": 2.5, "output": 10, "per": "token"}}',  # an unknown field
        '{"gpt-4o": {"input": "cheap", "output": 10}}',
        '{"gpt-4o": {"input": 2500000, "output": 10}}',  # per token, not per million
        '{" ": {"input": 1, "output": 1}}',  # no model name
        '["gpt-4o"]',
    ],
)
def test_a_bad_price_table_fails_at_start(prices: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_PRICES", prices)
    with pytest.raises(ValidationError, match="model_prices"):
        Settings(_env_file=None)
    provider = {"name": "local", "base_url": "http://127.0.0.1:1/v1"}
    monkeypatch.delenv("MODEL_PRICES")
    monkeypatch.setenv("LLM_PROVIDERS", json.dumps([{**provider, "prices": json.loads(prices)}]))
    with pytest.raises(ValidationError, match="llm_providers"):
        Settings(_env_file=None)


def test_model_prices_add_to_the_list_prices_and_a_provider_names_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MODEL_PRICES", '{"gpt-4o": {"input": 1, "output": 2}, "mine": '
                       '{"input": 0.5, "cached_input": 0.25, "output": 1}}')  # fmt: skip
    own = {"gpt-4o": {"input": 10, "output": 20}}
    local = {"name": "local", "base_url": "http://127.0.0.1:1/v1", "prices": own}
    monkeypatch.setenv("LLM_PROVIDERS", json.dumps([local]))
    table = PriceTable.of(Settings(_env_file=None))
    spent = Usage(1000, 100, 1100, 400)  # 400 of the prompt tokens read from a cache
    assert table.cost_micros(("default", "gpt-4o"), spent) == 1000 * 1 + 100 * 2
    assert table.cost_micros(("local", "gpt-4o"), spent) == 1000 * 10 + 100 * 20
    assert table.cost_micros(("local", "mine"), spent) == 300 + 100 + 100
    # A list price stays: gpt-4o-mini at 0.15 / 0.075 / 0.60, rounded half up per call.
    assert table.cost_micros(("default", "gpt-4o-mini"), spent) == 90 + 30 + 60
    assert table.cost_micros(("default", "gpt-4o-mini"), Usage(1, 1, 2)) == 1  # 0.75
    assert table.cost_micros(("default", "gpt-4o-mini"), Usage(3, 0, 3)) == 0  # 0.45
    assert table.cost_micros(("default", "unknown-model"), spent) is None


def test_lists_come_comma_separated() -> None:
    origins = settings(cors_origins="https://a.example, https://b.example").cors_origins
    assert origins == ["https://a.example", "https://b.example"]


def test_a_database_url_selects_firebase_unless_store_says_otherwise() -> None:
    url = "http://127.0.0.1:9000?ns=chatify"
    assert settings(firebase_database_url=url).store == "firebase"
    assert settings(firebase_database_url=url, store="sqlite").store == "sqlite"


def test_a_postgres_url_is_a_secret_in_the_settings() -> None:
    url = "postgresql://chatify:hunter2-secret@db.example.com:5432/chatify?sslmode=require"
    chosen = settings(store="postgres", database_url=url)
    assert chosen.database_url is not None and chosen.database_url.get_secret_value() == url
    assert "hunter2-secret" not in repr(chosen) and "hunter2-secret" not in str(chosen)


def test_emulator_host_turns_a_production_url_into_the_emulator_namespace() -> None:
    emulated = settings(
        firebase_database_url="https://chatify-prod.firebaseio.com",
        firebase_database_emulator_host="127.0.0.1:9000",
    )
    assert emulated.firebase_uses_emulator
    assert _database_url(emulated) == "http://127.0.0.1:9000?ns=chatify-prod"


async def test_invalid_inline_credentials_fail_at_start_without_echoing_them(
    tmp_path: Path,
) -> None:
    secret = {"type": "service_account", "private_key": "SECRET-KEY-MATERIAL"}
    bad = settings(
        firebase_database_url="https://x.firebaseio.com",
        firebase_credentials_json=json.dumps(secret),
    )
    app = create_app(bad)
    with pytest.raises(ValueError, match="FIREBASE_CREDENTIALS_JSON") as caught:
        async with app.router.lifespan_context(app):
            pass
    assert "SECRET" not in str(caught.value)
    assert "SECRET" not in repr(bad)


UNVERIFIED = {
    "auth_mode": "firebase",
    "firebase_project_id": "chatify-prod",
    "firebase_auth_emulator_host": "127.0.0.1:9099",
}
CREDENTIALS = json.dumps({"type": "service_account", "project_id": "chatify-prod"})


def test_unverified_tokens_refuse_a_production_database() -> None:
    with pytest.raises(ValidationError, match="FIREBASE_AUTH_EMULATOR_HOST") as caught:
        settings(
            **UNVERIFIED,
            firebase_database_url="https://chatify-prod.firebaseio.com",
            firebase_credentials_json=CREDENTIALS,
        )
    assert "ALLOW_UNVERIFIED_TOKENS" in str(caught.value)


@pytest.mark.parametrize(
    "values",
    [
        {},  # SQLite: a local setup
        {"firebase_database_url": "http://127.0.0.1:9000?ns=chatify"},
        {"firebase_database_url": "http://localhost:9000?ns=chatify"},
        {
            "firebase_database_url": "https://chatify-prod.firebaseio.com",
            "firebase_database_emulator_host": "127.0.0.1:9000",
        },
        {
            "firebase_database_url": "https://chatify-prod.firebaseio.com",
            "firebase_credentials_json": CREDENTIALS,
            "allow_unverified_tokens": True,
        },
    ],
)
def test_unverified_tokens_start_with_an_emulated_database_or_when_allowed(
    values: dict[str, Any],
) -> None:
    assert settings(**UNVERIFIED, **values).tokens_unverified


def test_pushes_need_a_project_and_for_the_real_fcm_credentials() -> None:
    with pytest.raises(ValueError, match="FCM_PROJECT_ID"):
        Settings(_env_file=None, push_enabled=True)
    with pytest.raises(ValueError, match="FIREBASE_CREDENTIALS_JSON"):
        Settings(_env_file=None, push_enabled=True, fcm_project_id="p")
    local = Settings(
        _env_file=None, push_enabled=True, fcm_project_id="p", fcm_url="http://127.0.0.1:9099"
    )
    assert not local.fcm_uses_credentials
    assert not Settings(_env_file=None).push_enabled  # off unless asked
