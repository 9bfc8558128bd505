"""Memory: messages leaving the window folded into the session's memory, against a real SQLite
store and the service's model client talking to the mock LLM."""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from services.conversation import memory as memory_module
from services.conversation.memory import Memory, fold_point, plain_memory
from services.conversation.registry import ActiveSession, SeenIds
from services.core.records import Role, StoredMessage, isoformat
from services.llm.client import ChatMessage, LLMClient
from services.llm.offline import OfflineResponder
from services.store.base import Store
from testkit.mock_llm import MockLLM, Reply
from tests.conftest import FakeClock
from tests.unit.conftest import T0, session_record, stored_session

FACT = "My dog is called Biscuit."


class CharCounter:
    """Tokens as a quarter of the characters: enough to exercise a token budget."""

    def count_message(self, model: str, message: ChatMessage) -> int:
        return len(str(message["content"])) // 4


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory_module, "RETRY_DELAYS", (0.0, 0.0))


MemoryFactory = Callable[..., Memory]


@pytest.fixture
async def make_memory(
    store: Store, model: LLMClient, clock: FakeClock
) -> AsyncIterator[MemoryFactory]:
    """``make_memory(llm=..., summary_model=...)``: a Memory on the test's store; each one
    closed after the test."""
    made: list[Memory] = []

    def make(llm: LLMClient = model, summary_model: str | None = None) -> Memory:
        memory = Memory(
            store=store,
            llm=llm,
            counter=CharCounter(),
            clock=clock,
            model=summary_model,
            max_tokens=200,
        )
        made.append(memory)
        return memory

    yield make
    for memory in made:
        await memory.close()


def user_lines(request: dict[str, Any]) -> str:
    content: str = request["messages"][-1]["content"]
    return content


def held(record_fields: dict[str, Any], texts: list[tuple[Role, str]]) -> ActiveSession:
    """A session held in memory with these messages (no store needed: fold_point reads none)."""
    record = session_record(**record_fields)
    context = deque(
        (StoredMessage(seq, role, text, T0) for seq, (role, text) in enumerate(texts)),
        maxlen=record.context_messages,
    )
    return ActiveSession(record, context, len(texts), SeenIds())


def turns(count: int, size: int = 1) -> list[tuple[Role, str]]:
    return [
        message
        for n in range(1, count + 1)
        for message in (
            ("user", f"Question {n} " + "x" * size),
            ("assistant", f"Answer {n}"),
        )
    ]


def test_no_fold_while_the_window_has_room_for_another_turn() -> None:
    assert fold_point(held({"context_messages": 6}, turns(2)), CharCounter()) is None
    # Three turns in a window of six: the newer half is kept, from a user message on.
    assert fold_point(held({"context_messages": 6}, turns(3)), CharCounter()) == 4


def test_a_window_session_or_a_tiny_window_never_folds() -> None:
    window = held({"context_messages": 6, "memory_mode": "window"}, turns(10))
    assert fold_point(window, CharCounter()) is None
    assert fold_point(held({"context_messages": 1}, turns(10)), CharCounter()) is None


def test_the_kept_part_starts_at_a_user_message() -> None:
    # A window of 8 keeps 4: seqs 6..9 would start at a user message already; 7 would not.
    assert fold_point(held({"context_messages": 8}, turns(4)), CharCounter()) == 4
    assert fold_point(held({"context_messages": 7}, turns(4)), CharCounter()) == 6


def test_messages_already_in_the_memory_are_not_counted_again() -> None:
    active = held({"context_messages": 6}, turns(3))
    active.record.summary_seq = 4
    assert fold_point(active, CharCounter()) is None


def test_a_token_budget_folds_before_the_message_count_is_reached() -> None:
    roomy = {"context_messages": 50, "context_tokens": 400}
    assert fold_point(held(roomy, turns(3, size=100)), CharCounter()) is None
    # Over three quarters of the budget (87 of 100): folds, keeping at most half the budget's
    # tokens (the last reply and turn: 31 tokens; with the turn before, 60 would not fit).
    tight = {"context_messages": 50, "context_tokens": 100}
    assert fold_point(held(tight, turns(3, size=100)), CharCounter()) == 4


async def test_a_full_window_folds_the_messages_that_leave_it(
    store: Store, make_memory: MemoryFactory, llm: MockLLM
) -> None:
    active, _ = await stored_session(store, session_record(), 3, first=FACT)
    memory = make_memory(summary_model="gpt-summary")
    memory.after_turn(active)
    assert memory.pending == 1
    await memory.idle()

    (request,) = llm.chat_requests()
    assert request["model"] == "gpt-summary" and request.get("stream") is not True
    assert request["messages"][0]["content"].startswith(memory_module.INSTRUCTIONS[:40])
    asked = user_lines(request)
    assert asked.startswith(f"{memory_module.MEMORY_SO_FAR}\n(empty)")
    assert FACT in asked and "Reply 2." in asked and "Turn 3." not in asked  # the kept turn
    stored = await store.get_session(active.record.session_id)
    assert stored is not None and FACT in (stored.summary or "") and stored.summary_seq == 4
    assert (active.record.summary, active.record.summary_seq) == (stored.summary, 4)
    assert memory.calls == 1 and memory.pending == 0


async def test_a_window_with_room_asks_nothing(
    store: Store, make_memory: MemoryFactory, llm: MockLLM
) -> None:
    active, _ = await stored_session(store, session_record(), 2)
    memory = make_memory()
    memory.after_turn(active)
    assert memory.pending == 0
    await memory.idle()
    assert llm.chat_requests() == []


async def test_the_old_memory_is_updated_not_replaced(
    store: Store, make_memory: MemoryFactory, llm: MockLLM
) -> None:
    active, _ = await stored_session(store, session_record(), 4)
    await store.set_memory(active.record.session_id, "- old fact", seq=2, expected_seq=0, at=T0)
    active.record.summary, active.record.summary_seq = "- old fact", 2
    memory = make_memory()
    memory.after_turn(active)
    await memory.idle()

    asked = user_lines(llm.chat_requests()[0])
    assert asked.startswith(f"{memory_module.MEMORY_SO_FAR}\n- old fact\n")
    # Only what is not in it yet, and not the kept turn.
    assert "Turn 1." not in asked and "Turn 3." in asked and "Turn 4." not in asked
    assert active.record.summary_seq == 6
    assert active.record.summary == "- old fact\n- Turn 2.\n- Turn 3."


async def test_messages_the_context_no_longer_holds_are_read_from_the_store(
    store: Store, make_memory: MemoryFactory, llm: MockLLM
) -> None:
    active, _ = await stored_session(store, session_record(), 3, first=FACT)
    for _ in range(2):
        active.context.popleft()  # the first turn is only in the store now
    memory = make_memory()
    memory.after_turn(active)
    await memory.idle()
    assert FACT in user_lines(llm.chat_requests()[0])
    assert active.record.summary_seq == 4


async def test_a_failed_or_empty_summary_keeps_the_old_memory_and_is_retried(
    store: Store, make_memory: MemoryFactory, llm: MockLLM
) -> None:
    error = {"error": {"message": "upstream exploded: secret detail", "type": "server_error"}}
    llm.script(Reply(status=500, error_body=error), Reply(content="  "), Reply(content="- ok"))
    active, _ = await stored_session(store, session_record(), 3)
    memory = make_memory()
    memory.after_turn(active)
    await memory.idle()
    assert len(llm.chat_requests()) == 3
    stored = await store.get_session(active.record.session_id)
    assert stored is not None and (stored.summary, stored.summary_seq) == ("- ok", 4)


async def test_a_summary_that_fails_every_time_leaves_the_memory_as_it_was(
    store: Store, make_memory: MemoryFactory, llm: MockLLM
) -> None:
    llm.script(Reply(status=500), Reply(status=500), Reply(status=500))
    active, _ = await stored_session(store, session_record(), 3)
    memory = make_memory()
    memory.after_turn(active)
    await memory.idle()
    assert len(llm.chat_requests()) == 3
    stored = await store.get_session(active.record.session_id)
    assert stored is not None and (stored.summary, stored.summary_seq) == (None, 0)
    assert (active.record.summary, active.record.summary_seq) == (None, 0)


async def test_a_memory_another_instance_stored_first_is_adopted(
    store: Store, make_memory: MemoryFactory, llm: MockLLM, clock: FakeClock
) -> None:
    active, _ = await stored_session(store, session_record(), 3)
    sid = active.record.session_id
    # Another process folded the same messages meanwhile; this one's record does not know.
    assert await store.set_memory(sid, "- theirs", seq=4, expected_seq=0, at=isoformat(clock()))
    memory = make_memory()
    memory.after_turn(active)
    await memory.idle()
    assert len(llm.chat_requests()) == 1
    stored = await store.get_session(sid)
    assert stored is not None and stored.summary == "- theirs"
    assert (active.record.summary, active.record.summary_seq) == ("- theirs", 4)


async def test_one_fold_per_session_at_a_time(
    store: Store, make_memory: MemoryFactory, llm: MockLLM
) -> None:
    active, _ = await stored_session(store, session_record(), 3)
    memory = make_memory()
    memory.after_turn(active)
    memory.after_turn(active)  # a second turn stored while the first fold runs
    assert memory.pending == 1
    await memory.idle()
    assert len(llm.chat_requests()) == 1


async def test_without_a_model_the_memory_is_plain_notes(
    store: Store, make_memory: MemoryFactory, llm: MockLLM
) -> None:
    active, _ = await stored_session(store, session_record(), 3, first=FACT)
    memory = make_memory(llm=OfflineResponder())
    memory.after_turn(active)
    await memory.idle()
    assert llm.chat_requests() == []
    assert active.record.summary == f"- {FACT}\n- Turn 2."


def test_plain_notes_keep_the_first_and_the_last_lines_bounded() -> None:
    lines = [f"User: note {n} " + "y" * 200 for n in range(20)] + ["Assistant: not kept"]
    notes = plain_memory("- older", lines).splitlines()
    first, last = memory_module.PLAIN_LINES
    assert len(notes) == first + last
    assert notes[0] == "- older" and notes[-1].startswith("- note 19 ")
    assert all(len(line) <= memory_module.PLAIN_LINE_CHARS + 2 for line in notes)
    assert not any("not kept" in line for line in notes)
