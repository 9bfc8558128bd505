"""Router and Breaker: routing per personality, fallback before the first delta, one immediate
retry, cooldown; decisions on small fakes of the client interface and an injected clock, and
one fallback through two real mock LLM servers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from services.core.errors import (
    ChatifyError,
    ContextTooLong,
    LLMError,
    LLMTimeout,
    LLMUnavailable,
    ProviderRateLimited,
    ProviderUnreachable,
)
from services.core.provider_config import Target
from services.core.records import Sampling, Usage
from services.llm.client import (
    ChatMessage,
    Completion,
    DeltaSink,
    GeneratedImage,
    LLMClient,
    ToolDefinitions,
)
from services.llm.providers import Breaker, Router, build_llm
from testkit.mock_llm import MockLLM, Reply
from tests.conftest import FakeClock
from tests.unit.conftest import UnitSettings

HI: list[ChatMessage] = [{"role": "user", "content": "hi"}]
MAIN: Target = ("default", "main-model")
BACKUP: Target = ("backup", "backup-model")


class Partial(Exception):
    """A scripted stream that hands these pieces on, then fails with ``error``."""

    def __init__(self, pieces: list[str], error: ChatifyError) -> None:
        super().__init__("partial")
        self.pieces, self.error = pieces, error


Outcome = ChatifyError | Partial


class FakeProvider:
    """One provider: each call takes the next scripted failure, or answers."""

    def __init__(self, name: str, *outcomes: Outcome) -> None:
        self.provider = "openai-compatible"
        self.name = name
        self.outcomes = list(outcomes)
        self.asked: list[str] = []  # the model of each call

    async def complete(
        self, messages: list[ChatMessage], sampling: Sampling, *, tools: ToolDefinitions = ()
    ) -> Completion:
        return self._answer(sampling, None)

    async def stream(
        self,
        messages: list[ChatMessage],
        sampling: Sampling,
        *,
        on_delta: DeltaSink,
        tools: ToolDefinitions = (),
    ) -> Completion:
        return self._answer(sampling, on_delta)

    def _answer(self, sampling: Sampling, on_delta: DeltaSink | None) -> Completion:
        self.asked.append(sampling.model)
        outcome = self.outcomes.pop(0) if self.outcomes else None
        if isinstance(outcome, Partial):
            for piece in outcome.pieces:
                assert on_delta is not None
                on_delta(piece)
            raise outcome.error
        if outcome is not None:
            raise outcome
        content = f"{self.name} answers"
        if on_delta is not None:
            on_delta(content)
        return Completion(content, Usage(1, 1, 2), sampling.model)

    async def generate_image(
        self, prompt: str, sampling: Sampling, *, model: str, size: str
    ) -> GeneratedImage:
        raise AssertionError("not used")

    async def close(self) -> None:
        pass


def sampling(target: Target = MAIN, *fallbacks: Target) -> Sampling:
    provider, model = target
    return Sampling(model, 0.7, 100, 0.0, 0.0, provider=provider, fallbacks=fallbacks)


def router(
    main: FakeProvider,
    backup: FakeProvider | None = None,
    *,
    breaker: Breaker | None = None,
    fallbacks: tuple[Target, ...] = (),
    retries: int = 0,
    retry_after_max: float = 0.0,
) -> Router:
    clients: dict[str, LLMClient] = {"default": main}
    if backup is not None:
        clients["backup"] = backup
    return Router(
        clients,
        fallbacks=fallbacks,
        breaker=breaker or Breaker(failures=100, cooldown=30),
        retries=retries,
        retry_after_max=retry_after_max,
    )


def seconds(clock: FakeClock) -> float:
    return clock.now.timestamp()


def test_a_call_goes_to_the_personality_s_targets_then_the_global_fallbacks_each_once() -> None:
    routed = router(FakeProvider("main"), fallbacks=(("third", "t"), BACKUP))
    assert routed.targets(sampling(MAIN, BACKUP, MAIN)) == [MAIN, BACKUP, ("third", "t")]


async def test_a_personality_is_served_by_its_own_provider() -> None:
    main, backup = FakeProvider("main"), FakeProvider("backup")
    answer = await router(main, backup).complete(HI, sampling(BACKUP))
    assert (answer.content, answer.provider) == ("backup answers", "backup")
    assert (main.asked, backup.asked) == ([], ["backup-model"])


FALLS_BACK = {
    "5xx": LLMError("boom", upstream_status=503),
    "garbled": LLMError("not JSON", garbled=True),
    "timeout": LLMTimeout("slow"),
    "unreachable": ProviderUnreachable("refused"),
    "429": ProviderRateLimited("slow down", wait=1.0),
    "unavailable": LLMUnavailable("down"),
}


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize("failure", FALLS_BACK)
async def test_a_failure_before_the_first_delta_falls_back(failure: str, stream: bool) -> None:
    main, backup = FakeProvider("main", FALLS_BACK[failure]), FakeProvider("backup")
    routed, deltas = router(main, backup), list[str]()
    if stream:
        answer = await routed.stream(HI, sampling(MAIN, BACKUP), on_delta=deltas.append)
    else:
        answer = await routed.complete(HI, sampling(MAIN, BACKUP))
    assert (answer.content, answer.provider, answer.model) == (
        "backup answers",
        "backup",
        "backup-model",
    )
    assert (main.asked, backup.asked) == (["main-model"], ["backup-model"])
    assert deltas == (["backup answers"] if stream else [])


@pytest.mark.parametrize(
    "failure",
    [LLMError("unauthorized", upstream_status=401), LLMError("bad request", upstream_status=400),
     ContextTooLong("too long")],
    ids=["401", "400", "context too long"],
)  # fmt: skip
async def test_a_failure_no_other_provider_can_fix_is_the_call_s_error(
    failure: ChatifyError,
) -> None:
    main, backup = FakeProvider("main", failure), FakeProvider("backup")
    with pytest.raises(type(failure)) as raised:
        await router(main, backup).complete(HI, sampling(MAIN, BACKUP))
    assert raised.value is failure
    assert backup.asked == []


async def test_no_fallback_once_a_delta_was_handed_on() -> None:
    dropped = ProviderUnreachable("dropped")
    main, backup = FakeProvider("main", Partial(["Hel"], dropped)), FakeProvider("backup")
    deltas: list[str] = []
    with pytest.raises(ProviderUnreachable):
        await router(main, backup, retries=1).stream(
            HI, sampling(MAIN, BACKUP), on_delta=deltas.append
        )
    assert deltas == ["Hel"]
    assert (main.asked, backup.asked) == (["main-model"], [])  # not retried either


@pytest.mark.parametrize(
    ("failure", "asked"),
    [
        (LLMError("boom", upstream_status=500), 2),
        (ProviderUnreachable("refused"), 2),
        (LLMTimeout("slow"), 1),  # a retry would double the wait
        (ProviderRateLimited("slow down", wait=0.0), 1),  # falls back at once
    ],
    ids=["5xx", "unreachable", "timeout", "429"],
)
async def test_one_immediate_retry_only_where_a_retry_there_can_fix_it(
    failure: ChatifyError, asked: int
) -> None:
    main, backup = FakeProvider("main", failure, failure), FakeProvider("backup")
    answer = await router(main, backup, retries=2).complete(HI, sampling(MAIN, BACKUP))
    assert answer.provider == "backup"
    assert len(main.asked) == asked  # at most one retry, whatever LLM_MAX_RETRIES says
    without = FakeProvider("main", failure)
    await router(without, FakeProvider("backup"), retries=0).complete(HI, sampling(MAIN, BACKUP))
    assert len(without.asked) == 1


async def test_a_429_on_the_last_target_is_waited_out_once_within_the_cap() -> None:
    main = FakeProvider("main", ProviderRateLimited("slow down", wait=0.0))
    answer = await router(main, retry_after_max=1).complete(HI, sampling())
    assert answer.content == "main answers" and len(main.asked) == 2

    twice = ProviderRateLimited("again", wait=0.0)
    main = FakeProvider("main", ProviderRateLimited("slow down", wait=0.0), twice)
    with pytest.raises(ProviderRateLimited) as raised:
        await router(main, retry_after_max=1).complete(HI, sampling())
    assert raised.value is twice and len(main.asked) == 2

    past_cap = FakeProvider("main", ProviderRateLimited("slow down", wait=30.0))
    with pytest.raises(ProviderRateLimited):
        await router(past_cap, retry_after_max=1).complete(HI, sampling())
    assert len(past_cap.asked) == 1


async def test_a_provider_that_is_not_configured_is_passed_over() -> None:
    main = FakeProvider("main")
    answer = await router(main).complete(HI, sampling(("gone", "m"), MAIN))
    assert answer.content == "main answers"
    with pytest.raises(LLMError, match="No model provider named 'gone'"):
        await router(main).complete(HI, sampling(("gone", "m")))


async def test_a_failing_target_cools_down_and_is_skipped_until_its_cooldown_ends(
    clock: FakeClock,
) -> None:
    breaker = Breaker(failures=2, cooldown=30, clock=lambda: seconds(clock))
    down = LLMError("down", upstream_status=503)
    main, backup = FakeProvider("main", down, down), FakeProvider("backup")
    routed = router(main, backup, breaker=breaker)
    for _ in range(4):
        assert (await routed.complete(HI, sampling(MAIN, BACKUP))).provider == "backup"
    assert len(main.asked) == 2  # two failures cooled it: the next calls skip it
    clock.advance(29)
    await routed.complete(HI, sampling(MAIN, BACKUP))
    assert len(main.asked) == 2
    clock.advance(2)
    assert (await routed.complete(HI, sampling(MAIN, BACKUP))).provider == "default"
    assert len(main.asked) == 3


async def test_the_last_target_is_tried_even_while_cooling(clock: FakeClock) -> None:
    breaker = Breaker(failures=1, cooldown=30, clock=lambda: seconds(clock))
    breaker.failed(MAIN)
    assert breaker.cooling(MAIN)
    main = FakeProvider("main")
    assert (await router(main, breaker=breaker).complete(HI, sampling())).provider == "default"
    assert main.asked == ["main-model"]


def test_the_breaker_counts_failures_in_a_row_per_provider_and_model(clock: FakeClock) -> None:
    breaker = Breaker(failures=2, cooldown=30, clock=lambda: seconds(clock))
    title_model: Target = ("default", "title-model")
    breaker.failed(title_model)
    breaker.succeeded(title_model)  # a success ends the run
    breaker.failed(title_model)
    assert not breaker.cooling(title_model)
    breaker.failed(title_model)
    assert breaker.cooling(title_model)
    assert not breaker.cooling(MAIN)  # the same provider's turn model is not cooled
    clock.advance(30)
    assert not breaker.cooling(title_model)
    breaker.failed(title_model)  # the run starts again after a cooldown
    assert not breaker.cooling(title_model)


@pytest.fixture
def backup_llm() -> Iterator[MockLLM]:
    with MockLLM() as server:
        server.config.reply_prefix = "Backup: "
        yield server


async def test_a_fallback_through_two_real_servers(
    unit_settings: UnitSettings, llm: MockLLM, backup_llm: MockLLM
) -> None:
    settings = unit_settings(llm_providers=[{"name": "backup", "base_url": backup_llm.url}])
    routed = build_llm(settings)
    try:
        llm.script(Reply(status=500))
        answer = await routed.complete(HI, sampling(MAIN, BACKUP))
        assert (answer.content, answer.provider) == ("Backup: hi", "backup")

        llm.script(Reply(content="Hello there, my friend", chunks=4, fail_after_chunks=2))
        deltas: list[str] = []
        with pytest.raises((LLMError, LLMUnavailable)):
            await routed.stream(HI, sampling(MAIN, BACKUP), on_delta=deltas.append)
        assert "".join(deltas) and "Hello there, my friend".startswith("".join(deltas))
    finally:
        await routed.close()
    assert [r["model"] for r in llm.chat_requests()] == ["main-model"] * 2
    assert [r["model"] for r in backup_llm.chat_requests()] == ["backup-model"]
