"""Several model providers: routing per personality, fallback before the first delta, cooldown.

A personality names its ``provider`` (default: ``default``, the ``OPENAI_*`` settings) and may
list ``fallbacks``; ``LLM_FALLBACKS`` applies after them to every personality. A call goes to
the first target that is not cooling down. It falls back to the next one on what a retry
elsewhere can fix (no connection, a timeout, 429, a 5xx, a garbled reply) and **only while
nothing of the reply has been handed on**: once a delta reached a client, a failure is the
turn's error. A target (provider and model) that fails ``PROVIDER_FAILURES_TO_COOL`` times in a
row is skipped for ``PROVIDER_COOLDOWN_SECONDS`` (a circuit breaker), so turns do not wait for
its timeout. It counts per model, so a failing ``TITLE_MODEL`` or ``SUMMARY_MODEL`` never cools
the model that serves turns. The last target left is always tried, so a personality with one
target is never refused by the breaker alone.

Before falling back, a provider gets at most one immediate retry, and only for what a retry
there can fix at once: a refused or dropped connection, or a 5xx (``LLM_MAX_RETRIES``: 0 or 1).
A 429 falls back at once; on the last target, a ``Retry-After`` up to
``LLM_RETRY_AFTER_MAX_SECONDS`` is waited out and the call tried once more.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator

from services.core.errors import (
    ChatifyError,
    LLMError,
    LLMTimeout,
    LLMUnavailable,
    ProviderRateLimited,
    ProviderUnreachable,
)
from services.core.metrics import LLMObserver
from services.core.provider_config import DEFAULT_PROVIDER, Target
from services.core.records import Sampling
from services.core.settings import Settings
from services.llm.client import (
    ChatMessage,
    Completion,
    DeltaSink,
    GeneratedImage,
    LLMClient,
    ToolDefinitions,
)
from services.llm.offline import OfflineResponder
from services.llm.openai_chat import OpenAIChat

logger = logging.getLogger(__name__)
ProviderFailure = LLMError | LLMTimeout | LLMUnavailable


class Breaker:
    """Consecutive failures per target (provider and model); one past the limit cools down.

    Counted per model, not per provider, because a call's model is its own product: a failing
    title or memory model (``TITLE_MODEL``, ``SUMMARY_MODEL``) must not cool the model that
    serves turns on the same provider. A provider that is down fails for every model, so each
    of its models still cools after its own run of failures.
    """

    def __init__(
        self, *, failures: int, cooldown: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._limit = failures
        self._cooldown = cooldown
        self._clock = clock
        self._failures: dict[Target, int] = {}
        self._until: dict[Target, float] = {}

    def cooling(self, target: Target) -> bool:
        """Whether calls to it are skipped now."""
        return self._until.get(target, 0.0) > self._clock()

    def failed(self, target: Target) -> None:
        """Count a failure; the one that reaches the limit starts a cooldown."""
        count = self._failures.get(target, 0) + 1
        self._failures[target] = count
        if count >= self._limit:
            self._until[target] = self._clock() + self._cooldown
            self._failures[target] = 0
            provider, model = target
            logger.warning(
                "provider %s model %s cools down for %g s", provider, model, self._cooldown
            )

    def succeeded(self, target: Target) -> None:
        """A success ends its run of failures."""
        self._failures.pop(target, None)


class Router:
    """``LLMClient`` over several providers (see the module docstring)."""

    def __init__(
        self,
        clients: dict[str, LLMClient],
        *,
        fallbacks: tuple[Target, ...],
        breaker: Breaker,
        observer: LLMObserver | None = None,
        retries: int = 1,
        retry_after_max: float = 0.0,
    ) -> None:
        self._clients = clients
        self._fallbacks = fallbacks
        self._breaker = breaker
        self._observer = observer
        self._retries = min(1, retries)  # one immediate retry at most, never a backoff
        self._retry_after_max = retry_after_max
        self.provider: str = clients[DEFAULT_PROVIDER].provider  # the default's kind

    @property
    def names(self) -> frozenset[str]:
        """The configured providers."""
        return frozenset(self._clients)

    def kind(self, provider: str) -> str:
        """What a provider is (``offline`` for the offline responder)."""
        client = self._clients.get(provider)
        return client.provider if client is not None else "unknown"

    async def complete(
        self, messages: list[ChatMessage], sampling: Sampling, *, tools: ToolDefinitions = ()
    ) -> Completion:
        """A reply from the first target that gives one."""
        return await self._route(messages, sampling, None, tools)

    async def stream(
        self,
        messages: list[ChatMessage],
        sampling: Sampling,
        *,
        on_delta: DeltaSink,
        tools: ToolDefinitions = (),
    ) -> Completion:
        """The same, streamed; no fallback once a delta was handed on."""
        return await self._route(messages, sampling, on_delta, tools)

    async def generate_image(
        self, prompt: str, sampling: Sampling, *, model: str, size: str
    ) -> GeneratedImage:
        """An image from the session's provider (images do not fall back: another provider's
        image model is another product)."""
        client = self._clients.get(sampling.provider)
        if client is None:
            raise LLMError(f"No model provider named {sampling.provider!r} is configured")
        with self._observed(sampling.provider, model):
            return await client.generate_image(prompt, sampling, model=model, size=size)

    async def close(self) -> None:
        """Close every provider's connections."""
        for client in self._clients.values():
            await client.close()

    def targets(self, sampling: Sampling) -> list[Target]:
        """Where a call goes, in order, each once."""
        ordered = [(sampling.provider, sampling.model), *sampling.fallbacks, *self._fallbacks]
        return list(dict.fromkeys(ordered))

    async def _route(
        self,
        messages: list[ChatMessage],
        sampling: Sampling,
        on_delta: DeltaSink | None,
        tools: ToolDefinitions,
    ) -> Completion:
        failure: ProviderFailure | None = None
        targets = self.targets(sampling)
        for index, (provider, model) in enumerate(targets):
            client = self._clients.get(provider)
            if client is None:
                failure = LLMError(f"No model provider named {provider!r} is configured")
                continue
            last = index == len(targets) - 1
            if self._breaker.cooling((provider, model)) and not last:
                continue  # skipped while another target is left; the last one is always tried
            asked = sampling
            if (sampling.provider, sampling.model) != (provider, model):  # a fallback target
                asked = dataclasses.replace(sampling, provider=provider, model=model)
            answer = await self._ask(client, messages, asked, on_delta, tools, last=last)
            if isinstance(answer, Completion):
                # replace() inspects every field: only when the provider differs
                if answer.provider == provider:
                    return answer
                return dataclasses.replace(answer, provider=provider)
            if not last:
                logger.warning(
                    "provider %s failed (%s); trying the next one", provider, answer.code
                )
            failure = answer
        assert failure is not None  # targets() is never empty
        raise failure

    async def _ask(
        self,
        client: LLMClient,
        messages: list[ChatMessage],
        asked: Sampling,
        on_delta: DeltaSink | None,
        tools: ToolDefinitions,
        *,
        last: bool,
    ) -> Completion | ProviderFailure:
        """One target's answer, retries included, or the failure that moves the call on to
        the next target; a failure no other target may fix is raised."""
        provider, handed_on = asked.provider, False

        def sink(piece: str) -> None:
            nonlocal handed_on
            handed_on = True
            if on_delta is not None:
                on_delta(piece)

        retries, waited = self._retries, False
        while True:
            try:
                completion = await self._call(
                    client, messages, asked, None if on_delta is None else sink, tools
                )
            except (LLMError, LLMTimeout, LLMUnavailable) as error:
                if not retryable(error):
                    raise
                if not handed_on and retries and retry_at_once(error):
                    retries -= 1
                    logger.warning("provider %s failed (%s); retrying once", provider, error.code)
                    continue
                wait = self._wait_before_retry(error) if last and not waited else None
                if not handed_on and wait is not None:
                    waited = True
                    logger.warning("provider %s rate limits; retrying in %g s", provider, wait)
                    await asyncio.sleep(wait)
                    continue
                self._breaker.failed((asked.provider, asked.model))
                if handed_on:
                    raise
                return error
            self._breaker.succeeded((asked.provider, asked.model))
            return completion

    def _wait_before_retry(self, error: LLMError | LLMTimeout | LLMUnavailable) -> float | None:
        """How long to wait out a 429 on the last target; None: answer it now."""
        if isinstance(error, ProviderRateLimited) and error.wait is not None:
            return error.wait if error.wait <= self._retry_after_max else None
        return None

    async def _call(
        self,
        client: LLMClient,
        messages: list[ChatMessage],
        asked: Sampling,
        on_delta: DeltaSink | None,
        tools: ToolDefinitions,
    ) -> Completion:
        """One provider's answer, its time and outcome told to the observer."""
        with self._observed(asked.provider, asked.model):
            if on_delta is None:
                return await client.complete(messages, asked, tools=tools)
            return await client.stream(messages, asked, on_delta=on_delta, tools=tools)

    @contextlib.contextmanager
    def _observed(self, provider: str, model: str) -> Iterator[None]:
        """Tell the observer the time and outcome of the call made inside."""
        started = time.perf_counter()
        outcome = "ok"
        try:
            yield
        except ChatifyError as error:
            outcome = error.code
            raise
        except asyncio.CancelledError:
            outcome = "cancelled"  # a replay was found meanwhile, or the service is stopping
            raise
        except Exception:
            outcome = "internal_error"
            raise
        finally:
            if self._observer is not None:
                seconds = time.perf_counter() - started
                self._observer.llm_call(
                    provider=provider, model=model, seconds=seconds, outcome=outcome
                )


def retryable(error: LLMError | LLMTimeout | LLMUnavailable) -> bool:
    """Whether another provider may succeed: no connection, a timeout, 429, a 5xx, or a reply
    that broke the protocol."""
    if isinstance(error, LLMError):
        return error.garbled or (error.upstream_status or 0) >= 500
    return True


def retry_at_once(error: LLMError | LLMTimeout | LLMUnavailable) -> bool:
    """Whether the same provider is worth one immediate retry: a refused or dropped
    connection, or a 5xx (not a timeout, which would double the wait)."""
    if isinstance(error, LLMError):
        return (error.upstream_status or 0) >= 500
    return isinstance(error, ProviderUnreachable)


def default_client(settings: Settings) -> LLMClient:
    """The ``default`` provider: the ``OPENAI_*`` settings, or the offline responder."""
    if settings.llm_provider == "offline":
        logger.warning(
            "no OPENAI_API_KEY or OPENAI_BASE_URL set: replies come from the offline responder"
        )
        return OfflineResponder()
    return OpenAIChat(
        kind=settings.llm_provider,
        base_url=settings.openai_base_url,
        api_key=settings.openai_api_key,
        timeout=settings.llm_timeout_seconds,
        settings=settings,
    )


def build_llm(settings: Settings, *, observer: LLMObserver | None = None) -> Router:
    """The ``default`` provider and every one of ``LLM_PROVIDERS``, behind one router; each
    call is told to ``observer``."""
    clients: dict[str, LLMClient] = {DEFAULT_PROVIDER: default_client(settings)}
    for config in settings.llm_providers:
        clients[config.name] = OpenAIChat(
            kind="openai-compatible",
            base_url=config.base_url,
            api_key=config.api_key(),
            timeout=config.timeout_seconds,
            settings=settings,
            headers=dict(config.headers) or None,
        )
    breaker = Breaker(
        failures=settings.provider_failures_to_cool, cooldown=settings.provider_cooldown_seconds
    )
    fallbacks = tuple(target.target() for target in settings.llm_fallbacks)
    return Router(
        clients,
        fallbacks=fallbacks,
        breaker=breaker,
        observer=observer,
        retries=settings.llm_max_retries,
        retry_after_max=settings.llm_retry_after_max_seconds,
    )
