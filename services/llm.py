"""The LLM client: any OpenAI-compatible chat-completions server, or an offline responder.

``OpenAIChat`` keeps the SDK's retries, timeouts and error types but posts a plain JSON body
through the SDK's low-level ``post`` (building the typed request costs about three times the
CPU, measured), over the SDK's aiohttp transport (``openai[aiohttp]``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx2
import openai

from services.errors import ContextTooLong, LLMError, LLMTimeout, LLMUnavailable
from services.models import Sampling, ToolUse, Usage
from services.provider_config import DEFAULT_PROVIDER, Target
from services.settings import Settings
from services.tools.placeholder import placeholder_b64

logger = logging.getLogger(__name__)

ChatMessage = dict[str, Any]  # role and content; tool calls and results carry more
DeltaSink = Callable[[str], None]
ToolDefinitions = Sequence[dict[str, Any]]  # chat-completions ``tools`` entries


@dataclass(frozen=True, slots=True)
class LLMToolCall:
    """A function call the model asked for, as it sent it (arguments are JSON text)."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class Completion:
    """A finished reply (or, with ``tool_calls``, a request to call tools first)."""

    content: str
    usage: Usage
    model: str
    usage_reported: bool = True  # False: the provider sent none, ``usage`` is an estimate
    provider: str = DEFAULT_PROVIDER  # the provider that answered
    tool_calls: tuple[LLMToolCall, ...] = ()  # the model's calls, when it made some
    tool_uses: tuple[ToolUse, ...] = ()  # the tool loop's calls and results, in order
    # The model it was asked for. ``model`` is the name the reply gave (a dated snapshot, a
    # router's pick); usage is counted under this one, which configuration bounds.
    asked_model: str | None = None

    @property
    def served_by(self) -> Target:
        """The route target that answered: the provider and the model it was asked for."""
        return (self.provider, self.asked_model or self.model)


@dataclass(frozen=True, slots=True)
class GeneratedImage:
    """What an images endpoint returned: a URL, or the image's bytes (base64)."""

    url: str | None = None
    b64: str | None = None
    mime: str = "image/png"

    def reference(self) -> str:
        """A URL a client can show: the provider's, or a ``data:`` URL."""
        if self.url:
            return self.url
        return f"data:{self.mime};base64,{self.b64}"


class LLMClient(Protocol):
    """What the turn pipeline needs from a model."""

    provider: str

    async def complete(
        self, messages: list[ChatMessage], sampling: Sampling, *, tools: ToolDefinitions = ()
    ) -> Completion:
        """One chat completion; raises ``LLMError``/``LLMTimeout``/``LLMUnavailable``."""

    async def stream(
        self,
        messages: list[ChatMessage],
        sampling: Sampling,
        *,
        on_delta: DeltaSink,
        tools: ToolDefinitions = (),
    ) -> Completion:
        """The same, handing each piece of text to ``on_delta`` as it arrives."""

    async def generate_image(
        self, prompt: str, sampling: Sampling, *, model: str, size: str
    ) -> GeneratedImage:
        """One image from ``/images/generations`` (the image tool)."""

    async def close(self) -> None:
        """Release connections."""


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


class OpenAIChat:
    """Chat completions over the OpenAI HTTP API (or a compatible server)."""

    def __init__(
        self,
        *,
        kind: str,
        base_url: str | None,
        api_key: str | None,
        timeout: float,
        settings: Settings,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.provider: str = kind
        self._deadline = timeout
        connections = settings.llm_max_connections
        self._client = openai.AsyncOpenAI(
            # Local compatible servers (Ollama, vLLM, llama.cpp) need no key, the SDK does.
            api_key=api_key or "not-needed",
            base_url=base_url,
            timeout=timeout,
            max_retries=settings.llm_max_retries,
            default_headers=headers,
            # The SDK's aiohttp transport: a quarter less CPU per call than its default httpx2
            # one (bench/), with the SDK's retries, timeouts and errors unchanged.
            http_client=openai.DefaultAioHttpClient(
                limits=httpx2.Limits(
                    max_connections=connections, max_keepalive_connections=connections
                )
            ),
        )

    async def close(self) -> None:
        """Close the HTTP connection pool."""
        await self._client.close()

    async def complete(
        self, messages: list[ChatMessage], sampling: Sampling, *, tools: ToolDefinitions = ()
    ) -> Completion:
        """Ask for one reply within ``LLM_TIMEOUT_SECONDS``, retries included."""
        body = request_body(messages, sampling, tools)
        started = time.monotonic()
        try:
            async with asyncio.timeout(self._deadline):
                response = await self._client.post(
                    "/chat/completions", body=body, cast_to=httpx2.Response
                )
            data = json.loads(response.content)
        except (TimeoutError, openai.APIError) as exc:
            raise self._failure(exc, started) from exc
        except ValueError as exc:
            raise LLMError("The language model sent a reply that is not JSON") from exc
        return parse_completion(data, messages, sampling.model)

    async def stream(
        self,
        messages: list[ChatMessage],
        sampling: Sampling,
        *,
        on_delta: DeltaSink,
        tools: ToolDefinitions = (),
    ) -> Completion:
        """Stream the reply; usage comes from ``stream_options.include_usage`` when served."""
        body = request_body(messages, sampling, tools)
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        parts: list[str] = []
        calls = _StreamedCalls()
        usage: Usage | None = None
        model = sampling.model
        started = time.monotonic()
        try:
            async with asyncio.timeout(self._deadline):
                chunks = await self._client.post(
                    "/chat/completions",
                    body=body,
                    cast_to=dict,
                    stream=True,
                    stream_cls=openai.AsyncStream[dict[str, Any]],
                )
                async with chunks:
                    async for chunk in chunks:
                        usage = _usage(chunk.get("usage")) or usage
                        model = str(chunk.get("model") or model)
                        for piece in _delta_texts(chunk):
                            parts.append(piece)
                            on_delta(piece)
                        calls.add(chunk)
        except (TimeoutError, openai.APIError) as exc:
            raise self._failure(exc, started) from exc
        reply, tool_calls = "".join(parts), calls.finished()
        if not reply.strip() and not tool_calls:
            raise LLMError("The language model sent an empty reply")
        spent = usage or estimate_usage(messages, reply)
        asked = sampling.model
        return Completion(
            reply, spent, model, usage is not None, tool_calls=tool_calls, asked_model=asked
        )

    async def generate_image(
        self, prompt: str, sampling: Sampling, *, model: str, size: str
    ) -> GeneratedImage:
        """One image, within ``LLM_TIMEOUT_SECONDS``: a URL, or base64 if that is what the
        server sends (``gpt-image-1`` always does)."""
        body = {"model": model, "prompt": prompt, "size": size, "n": 1}
        started = time.monotonic()
        try:
            async with asyncio.timeout(self._deadline):
                response = await self._client.post(
                    "/images/generations", body=body, cast_to=httpx2.Response
                )
            data = json.loads(response.content)["data"][0]
        except (TimeoutError, openai.APIError) as exc:
            raise self._failure(exc, started) from exc
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise LLMError("The images endpoint sent a reply without an image") from exc
        url, b64 = data.get("url"), data.get("b64_json")
        if not (isinstance(url, str) and url) and not (isinstance(b64, str) and b64):
            raise LLMError("The images endpoint sent a reply without an image")
        return GeneratedImage(url=url or None, b64=b64 or None)

    def _failure(
        self, exc: Exception, started: float
    ) -> LLMError | LLMUnavailable | LLMTimeout | ContextTooLong:
        """The API error for a failed call.

        Our deadline wraps every attempt, so a real timeout surfaces at the deadline. A
        "timeout" well before it is a failed connection: the SDK's aiohttp transport reports a
        dropped connection as ``ConnectTimeout``.
        """
        if isinstance(exc, TimeoutError) or (
            isinstance(exc, openai.APITimeoutError)
            and time.monotonic() - started >= 0.9 * self._deadline
        ):
            return LLMTimeout(f"The language model did not answer within {self._deadline:g} s")
        if isinstance(exc, openai.APITimeoutError):
            return LLMUnavailable("The connection to the language model failed; try again shortly")
        assert isinstance(exc, openai.APIError)
        return map_api_error(exc)


def _delta_texts(chunk: Any) -> list[str]:
    if not isinstance(chunk, dict):
        raise LLMError("The language model sent a stream chunk that is not an object")
    texts = []
    for choice in chunk.get("choices") or []:
        content = ((choice or {}).get("delta") or {}).get("content")
        if isinstance(content, str) and content:
            texts.append(content)
    return texts


class _StreamedCalls:
    """Tool calls arriving in pieces across stream chunks, by index."""

    def __init__(self) -> None:
        self._calls: dict[int, dict[str, str]] = {}

    def add(self, chunk: dict[str, Any]) -> None:
        for choice in chunk.get("choices") or []:
            for piece in ((choice or {}).get("delta") or {}).get("tool_calls") or []:
                call = self._calls.setdefault(
                    int(piece.get("index") or 0), {"id": "", "name": "", "arguments": ""}
                )
                function = piece.get("function") or {}
                call["id"] = piece.get("id") or call["id"]
                call["name"] += function.get("name") or ""
                call["arguments"] += function.get("arguments") or ""

    def finished(self) -> tuple[LLMToolCall, ...]:
        return tuple(
            LLMToolCall(call["id"] or f"call_{index}", call["name"], call["arguments"])
            for index, call in sorted(self._calls.items())
        )


def request_body(
    messages: list[ChatMessage], sampling: Sampling, tools: ToolDefinitions = ()
) -> dict[str, Any]:
    """The chat-completions request for one turn."""
    body: dict[str, Any] = {
        "model": sampling.model,
        "messages": messages,
        "temperature": sampling.temperature,
        "max_tokens": sampling.max_tokens,
        "presence_penalty": sampling.presence_penalty,
        "frequency_penalty": sampling.frequency_penalty,
    }
    if tools:
        body["tools"] = list(tools)
    return body


def message_text(message: ChatMessage) -> str:
    """What a message says, for counting: its content, and any tool calls it makes."""
    text = message.get("content") or ""
    if message.get("tool_calls"):
        text += json.dumps(message["tool_calls"], ensure_ascii=False)
    return text


# How providers say a prompt is too long: OpenAI's error code, and the wording of others
# (Azure, Anthropic-compatible proxies, vLLM, Ollama, llama.cpp), matched case-insensitively.
_TOO_LONG_CODES = frozenset({"context_length_exceeded", "string_above_max_length"})
_TOO_LONG_WORDS = re.compile(
    r"context.length|context.window|maximum context|prompt is too long|too many tokens"
    r"|input is too long|exceeds? the (?:model'?s? )?(?:maximum|context)",
    re.IGNORECASE,
)


def is_context_too_long(exc: openai.APIStatusError) -> bool:
    """Whether a provider refused the request because the prompt does not fit the model."""
    if exc.status_code not in (400, 413, 422):
        return False
    return exc.code in _TOO_LONG_CODES or bool(_TOO_LONG_WORDS.search(str(exc.message)))


def map_api_error(exc: openai.APIError) -> LLMError | LLMUnavailable | ContextTooLong:
    """An SDK error as the API's error; never carries the provider's body."""
    if isinstance(exc, openai.RateLimitError):
        retry_after = _retry_after(exc.response)
        return LLMUnavailable(
            "The language model provider is rate limiting this service; try again shortly",
            retry_after=retry_after or 5.0,
        )
    if isinstance(exc, openai.APIConnectionError):
        return LLMUnavailable("The language model could not be reached; try again shortly")
    if isinstance(exc, openai.APIStatusError) and is_context_too_long(exc):
        logger.warning("LLM upstream refused the prompt as too long (HTTP %s)", exc.status_code)
        return ContextTooLong(
            "The conversation is too long for the model, even with less history; start a new "
            "session or send a shorter message"
        )
    if isinstance(exc, openai.APIStatusError):
        logger.warning("LLM upstream answered HTTP %s", exc.status_code)
        return LLMError(
            f"The language model provider answered HTTP {exc.status_code}",
            upstream_status=exc.status_code,
        )
    return LLMError("The language model sent a reply the service could not read")


def _retry_after(response: httpx2.Response) -> float | None:
    try:
        return float(response.headers.get("retry-after", ""))
    except ValueError:
        return None


def parse_completion(data: Any, messages: list[ChatMessage], model: str) -> Completion:
    """Read a chat-completions response; an unusable one is ``LLMError``."""
    try:
        message = data["choices"][0]["message"]
        content = message.get("content") or ""
        tool_calls = _message_calls(message.get("tool_calls"))
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        raise LLMError("The language model sent a reply without a message") from exc
    if not isinstance(content, str) or (not content.strip() and not tool_calls):
        raise LLMError("The language model sent an empty reply")
    usage = _usage(data.get("usage"))
    named = str(data.get("model") or model)
    spent = usage or estimate_usage(messages, content)
    return Completion(
        content, spent, named, usage is not None, tool_calls=tool_calls, asked_model=model
    )


def _message_calls(raw: Any) -> tuple[LLMToolCall, ...]:
    calls = []
    for index, call in enumerate(raw or []):
        function = call.get("function") or {}
        calls.append(
            LLMToolCall(
                str(call.get("id") or f"call_{index}"),
                str(function.get("name") or ""),
                str(function.get("arguments") or ""),
            )
        )
    return tuple(calls)


def _usage(raw: Any) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    try:
        prompt, completion = int(raw["prompt_tokens"]), int(raw["completion_tokens"])
    except (KeyError, TypeError, ValueError):
        return None
    return Usage(prompt, completion, int(raw.get("total_tokens") or prompt + completion))


def estimate_usage(messages: list[ChatMessage], reply: str) -> Usage:
    """About four characters a token, for servers that report no usage."""
    prompt = sum(len(message_text(m)) for m in messages) // 4 + 4 * len(messages)
    completion = max(1, len(reply) // 4)
    return Usage(prompt, completion, prompt + completion)


class OfflineResponder:
    """A clearly labelled stand-in that needs no model, so a fresh install works."""

    provider = "offline"

    async def complete(
        self, messages: list[ChatMessage], sampling: Sampling, *, tools: ToolDefinitions = ()
    ) -> Completion:
        """A deterministic reply that says how to configure a real model (it calls no tools)."""
        said = messages[-1]["content"]
        if len(said) > 200:
            said = said[:200] + "…"
        content = (
            "[offline] Chatify is running without a language model, so this is not a real "
            "reply. Set OPENAI_API_KEY (or OPENAI_BASE_URL for an OpenAI-compatible server "
            f'such as Ollama) and restart. You said: "{said}"'
        )
        return Completion(content, estimate_usage(messages, content), "offline", False)

    async def stream(
        self,
        messages: list[ChatMessage],
        sampling: Sampling,
        *,
        on_delta: DeltaSink,
        tools: ToolDefinitions = (),
    ) -> Completion:
        """The offline reply, a few words at a time."""
        completion = await self.complete(messages, sampling)
        words = completion.content.split(" ")
        for start in range(0, len(words), 4):
            on_delta(" ".join(words[start : start + 4]) + (" " if start + 4 < len(words) else ""))
            await asyncio.sleep(0)
        return completion

    async def generate_image(
        self, prompt: str, sampling: Sampling, *, model: str, size: str
    ) -> GeneratedImage:
        """A small placeholder image drawn from the prompt."""
        return GeneratedImage(b64=placeholder_b64(prompt))

    async def close(self) -> None:
        """Nothing to release."""
