"""Titles: a session named in the background after its first exchange, and what a title may
be; against a real SQLite store and the service's model client talking to the mock LLM."""

from __future__ import annotations

import asyncio

import pytest

from services.conversation import titles as titles_module
from services.conversation.bus import LocalBus
from services.conversation.titles import TITLE_MAX_CHARS, Titles, clean_title, client_title
from services.core.errors import InvalidInput
from services.limits.usage import BackgroundCalls
from services.llm.client import LLMClient
from services.llm.offline import OfflineResponder
from services.store.base import Store
from testkit.mock_llm import MockLLM, Reply
from tests.conftest import FakeClock
from tests.unit.conftest import background_done, session_record, stored_session


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(titles_module, "RETRY_DELAYS", (0.0, 0.0))


async def stored_title(store: Store, session_id: str) -> str | None:
    record = await store.get_session(session_id)
    assert record is not None
    return record.title


async def test_the_first_exchange_names_the_session_in_the_background(
    store: Store, model: LLMClient, llm: MockLLM
) -> None:
    llm.script(Reply(content='"Weather talk at sea."\nmore lines'))
    record = session_record()
    _, (first,) = await stored_session(store, record, 1, first="How is the weather?")
    bus = LocalBus()
    titles = Titles(store=store, llm=model, model="gpt-test-titles", bus=bus)
    with bus.subscribe(record.session_id) as events:
        titles.after_turn(record, first)
        assert titles.pending == 1  # started, not awaited: the turn goes on meanwhile
        async with asyncio.timeout(10):
            event = await events.next()
    assert (event.kind, event.text) == ("title", "Weather talk at sea")
    await background_done()
    assert titles.pending == 0
    assert record.title == await stored_title(store, record.session_id) == "Weather talk at sea"

    (request,) = llm.chat_requests()
    assert request["model"] == "gpt-test-titles" and request.get("stream") is not True
    assert request["messages"][-1]["content"] == (
        f"User: How is the weather?\nAssistant: {first.assistant.content}"
    )


async def test_only_an_untitled_session_s_first_exchange_names_it(
    store: Store, model: LLMClient, llm: MockLLM
) -> None:
    record = session_record()
    _, (_, second) = await stored_session(store, record, 2)
    titles = Titles(store=store, llm=model, model=None)
    titles.after_turn(record, second)
    assert titles.pending == 0

    titled = session_record(title="Mine")
    _, (first,) = await stored_session(store, titled, 1)
    titles.after_turn(titled, first)
    assert titles.pending == 0
    await background_done()
    assert llm.chat_requests() == []


async def test_a_failed_title_call_is_retried(store: Store, model: LLMClient, llm: MockLLM) -> None:
    llm.script(Reply(status=500), Reply(content="   "), Reply(content="Greetings"))
    record = session_record()
    _, (first,) = await stored_session(store, record, 1)
    titles = Titles(store=store, llm=model, model=None)
    titles.after_turn(record, first)
    await background_done()
    assert await stored_title(store, record.session_id) == "Greetings"
    assert len(llm.chat_requests()) == 3


async def test_a_title_that_fails_every_time_stays_null(
    store: Store, model: LLMClient, llm: MockLLM
) -> None:
    error = {"error": {"message": "upstream exploded: secret detail", "type": "server_error"}}
    llm.script(*[Reply(status=500, error_body=error)] * 3)
    record = session_record()
    _, (first,) = await stored_session(store, record, 1)
    titles = Titles(store=store, llm=model, model=None)
    titles.after_turn(record, first)
    await background_done()
    assert await stored_title(store, record.session_id) is None and record.title is None
    assert len(llm.chat_requests()) == 3


async def test_a_rename_wins_over_a_title_being_generated(
    store: Store, model: LLMClient, llm: MockLLM
) -> None:
    record = session_record()
    _, (first,) = await stored_session(store, record, 1)
    # The user renamed it (on another instance) after this one's turn was stored.
    await store.set_title(record.session_id, "Mine")
    titles = Titles(store=store, llm=model, model=None)
    titles.after_turn(record, first)
    await background_done()
    assert len(llm.chat_requests()) == 1
    assert record.title == await stored_title(store, record.session_id) == "Mine"


async def test_the_offline_responder_names_a_session_by_its_first_words(
    store: Store, llm: MockLLM
) -> None:
    record = session_record()
    first_message = "planning a trip to lisbon in may, any tips?"
    _, (first,) = await stored_session(store, record, 1, first=first_message)
    titles = Titles(store=store, llm=OfflineResponder(), model=None)
    titles.after_turn(record, first)
    await background_done()
    assert await stored_title(store, record.session_id) == "Planning a trip to lisbon in"
    assert llm.chat_requests() == []


async def test_an_answered_title_call_counts_as_a_call_of_the_user(
    store: Store, model: LLMClient, llm: MockLLM, clock: FakeClock
) -> None:
    record = session_record()
    _, (first,) = await stored_session(store, record, 1)
    calls = BackgroundCalls(store=store, clock=clock)
    titles = Titles(store=store, llm=model, model=None, calls=calls)
    titles.after_turn(record, first)
    await background_done()
    stored = await store.get_session(record.session_id)
    assert stored is not None and stored.usage_totals is not None
    assert (stored.usage_totals.turns, stored.usage_totals.calls) == (1, 1)
    assert calls.pending == 0


@pytest.mark.parametrize(
    ("answer", "title"),
    [
        ('"Weather talk at sea."', "Weather talk at sea"),
        ("\n\n  **trip   planning**  \nsecond line", "Trip planning"),
        ("“Quoted”", "Quoted"),
        ("Done!?", "Done"),
        ("“Quoted”!?", "Quoted"),  # quotes and final punctuation in either order
        ('"Trip to Rome."', "Trip to Rome"),
        ("a\u202eb\u0007c", "Ab c"),  # bidirectional controls out, other controls as spaces
        ("", ""),
        ("...", ""),
    ],
)
def test_a_generated_title_is_one_clean_line(answer: str, title: str) -> None:
    assert clean_title(answer) == title


def test_a_long_generated_title_is_cut_with_an_ellipsis() -> None:
    cut = clean_title("word " * 40)
    assert len(cut) == TITLE_MAX_CHARS and cut.endswith("…") and " …" not in cut


def test_a_client_title_is_stripped_and_none_clears_it() -> None:
    assert client_title("  My trip  ") == "My trip"
    assert client_title(None) is None


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("   ", "value_error"),
        ("two\nlines", "invalid_characters"),
        ("x\u202ey", "invalid_characters"),
    ],
)
def test_a_blank_or_unplain_client_title_is_refused(text: str, kind: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        client_title(text)
    (problem,) = refused.value.problems
    assert (problem["type"], problem["loc"]) == (kind, ["body", "title"])
