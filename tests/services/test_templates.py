"""Template validation, defaults and the composed system prompt."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.errors import TemplateNotFound
from services.settings import Settings
from services.store.sqlite import SQLiteStore
from services.templates.service import TemplateService


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
