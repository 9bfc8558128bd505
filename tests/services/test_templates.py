"""Template validation, defaults and the composed system prompt."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.core.errors import TemplateNotFound
from services.core.settings import REPO_ROOT, Settings
from services.store.sqlite import SQLiteStore
from services.templates.service import TemplateService, read_seed_dir


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    backend = SQLiteStore(tmp_path / "templates.db")
    await backend.open()
    yield backend
    await backend.close()


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


async def test_malformed_template_is_skipped_and_the_last_good_version_kept(
    store: SQLiteStore, caplog: pytest.LogCaptureFixture
) -> None:
    await store.seed(
        {
            "good": {"personalityPrompt": "Good and long enough."},
            "bad": {"personalityPrompt": "Fine at first."},
        },
        None,
        overwrite=False,
    )
    service = TemplateService(store, settings())
    await service.refresh()
    assert service.count == 2

    await store.seed(
        {
            "bad": {"personalityPrompt": 5, "temperature": "hot"},
            "broken": {"title": "no prompt"},
        },
        None,
        overwrite=True,
    )
    await service.refresh()

    assert service.resolve("bad").system_prompt == "Fine at first."
    with pytest.raises(TemplateNotFound):
        service.resolve("broken")
    assert "template 'broken' is malformed" in caplog.text
    assert "'bad' is malformed" in caplog.text and "keeping the last good version" in caplog.text


async def test_default_template_and_setting_override(store: SQLiteStore) -> None:
    await store.seed(
        {
            "a": {"personalityPrompt": "You are A, first."},
            "b": {"personalityPrompt": "You are B, default.", "isDefault": True},
        },
        None,
        overwrite=False,
    )
    service = TemplateService(store, settings())
    await service.refresh()
    assert service.resolve(None).template_id == "b"
    chosen = TemplateService(store, settings(default_template_id="a"))
    await chosen.refresh()
    assert chosen.resolve(None).template_id == "a"


async def test_disabled_rules_are_left_out(store: SQLiteStore) -> None:
    await store.seed(
        {"a": {"personalityPrompt": "  You are A.  "}},
        {"rules": "R.", "enabled": False},
        overwrite=False,
    )
    service = TemplateService(store, settings())
    await service.refresh()
    assert service.resolve("a").system_prompt == "You are A."


async def test_blank_tags_in_the_store_or_a_seed_file_are_dropped(
    store: SQLiteStore, tmp_path: Path
) -> None:
    # Written in the console: not a malformed document, just no tag.
    doc = {"personalityPrompt": "Good and long enough.", "tags": ["", "a", " "]}
    await store.seed({"console": doc}, None, overwrite=False)
    service = TemplateService(store, settings())
    await service.refresh()
    assert service.problems() == {}
    served = service.served("console")
    assert served is not None and served.tags == ["a"]

    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "seeded.json").write_text(json.dumps(doc))
    templates, _ = read_seed_dir(tmp_path)
    assert templates["seeded"]["tags"] == ["a"]


def test_a_seed_file_with_string_numbers_is_seeded_typed(tmp_path: Path) -> None:
    (tmp_path / "templates").mkdir()
    doc = {"personalityPrompt": "Good and long enough.", "maxTokens": "200", "isPublic": "no"}
    (tmp_path / "templates" / "typed.json").write_text(json.dumps(doc))
    templates, _ = read_seed_dir(tmp_path)
    assert templates["typed"]["maxTokens"] == 200 and templates["typed"]["isPublic"] is False


def test_the_shipped_seed_files_are_valid() -> None:
    templates, rules = read_seed_dir(REPO_ROOT / "templates_seed")
    assert len(templates) == 8 and rules is not None
    assert all(doc["version"] == 1 for doc in templates.values()) and rules["revision"] == 1


def test_an_invalid_seed_file_stops_seeding_and_names_the_problem(tmp_path: Path) -> None:
    (tmp_path / "templates").mkdir()
    doc = {"personalityPrompt": "Hi", "temprature": 0.5}
    (tmp_path / "templates" / "Bad Name.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError) as error:
        read_seed_dir(tmp_path)
    message = str(error.value)
    assert "Bad Name.json: file name: The id 'Bad Name'" in message
    assert "personalityPrompt: String should have at least 10 characters" in message
    assert "temprature: Unknown field" in message
