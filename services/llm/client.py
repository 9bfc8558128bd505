"""The LLM client: any OpenAI-compatible chat-completions server, or an offline responder.

``OpenAIChat`` is our own lean client over aiohttp (the OpenAI SDK's request path cost about
40 % of a turn's CPU); the SDK is kept for image generation only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import httpx2
import openai
import orjson

from services.core.errors import (
    ContextTooLong,
    LLMError,
    LLMTimeout,
    LLMUnavailable,
    ProviderUnreachable,
)
from services.core.provider_config import DEFAULT_PROVIDER, Target
from services.core.records import Sampling, ToolUse, Usage
from services.core.settings import Settings
from services.llm.placeholder import placeholder_b64
from services.llm.wire import (
    DONE,
    SSEDecoder,
    error_for_status,
    rate_limited,
    says_too_long,
    status_error,
)

logger = logging.getLogger(__name__)

OPENAI_BASE_URL = "https://api.openai.com/v1"  # where a key without a base URL goes
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
    """Chat completions over the OpenAI HTTP API (or a compatible server).

    Our own lean client: one pooled aiohttp session, the body serialized once with orjson,
    the reply parsed with orjson and the stream by ``SSEDecoder`` (docs/performance.md
    has the measurements). Retries and fallback are the router's (services/llm/providers.py).
    Only images go through the OpenAI SDK: they are rare, and its typed reply fits.
    """

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
        self._base_url = (base_url or OPENAI_BASE_URL).rstrip("/")
        self._url = self._base_url + "/chat/completions"
        self._api_key = api_key
        self._extra_headers = dict(headers or {})
        auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # A keyless local server (Ollama, vLLM, llama.cpp) gets no Authorization header.
        self._headers = {"Content-Type": "application/json", **auth, **self._extra_headers}
        self._connections = settings.llm_max_connections
        self._image_retries = min(1, settings.llm_max_retries)  # images do not fall back
        self._connect_timeout = min(settings.llm_connect_timeout_seconds, timeout)
        # A streamed reply may fall silent this long between two chunks (the first included).
        self._stream_timeout = aiohttp.ClientTimeout(
            sock_connect=self._connect_timeout,
            sock_read=min(settings.llm_stream_idle_seconds, timeout),
        )
        # Read once: aiohttp's trust_env looks the proxy up again on every request, which
        # cost more CPU than the rest of the call (bench/llm_client.py).
        self._proxy = env_proxy(self._url)
        self._session: aiohttp.ClientSession | None = None
        self._images: openai.AsyncOpenAI | None = None

    def _http(self) -> aiohttp.ClientSession:
        """The pooled session, made on first use (inside the running event loop)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._connections, limit_per_host=0),
                timeout=aiohttp.ClientTimeout(sock_connect=self._connect_timeout),
                proxy=self._proxy,
            )
        return self._session

    async def close(self) -> None:
        """Close the HTTP connection pools."""
        if self._session is not None:
            await self._session.close()
        if self._images is not None:
            await self._images.close()

    async def complete(
        self, messages: list[ChatMessage], sampling: Sampling, *, tools: ToolDefinitions = ()
    ) -> Completion:
        """Ask for one reply within the provider's timeout."""
        body = orjson.dumps(request_body(messages, sampling, tools))
        try:
            async with (
                asyncio.timeout(self._deadline),
                self._http().post(self._url, data=body, headers=self._headers) as response,
            ):
                raw = await response.read()
                if response.status != 200:
                    raise status_error(response.status, raw, response.headers)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._failure(exc) from exc
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise LLMError(
                "The language model sent a reply that is not JSON", garbled=True
            ) from exc
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
        reply = _StreamedReply(sampling.model, on_delta)
        try:
            async with (
                asyncio.timeout(self._deadline),
                self._http().post(
                    self._url,
                    data=orjson.dumps(body),
                    headers=self._headers,
                    timeout=self._stream_timeout,
                ) as response,
            ):
                if response.status != 200:
                    raw = await response.read()
                    raise status_error(response.status, raw, response.headers)
                decoder = SSEDecoder()
                async for piece in response.content.iter_any():
                    reply.take(decoder.feed(piece))
                reply.take(decoder.close())
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._failure(exc) from exc
        return reply.finished(messages, sampling.model)

    async def generate_image(
        self, prompt: str, sampling: Sampling, *, model: str, size: str
    ) -> GeneratedImage:
        """One image, within the provider's timeout: a URL, or base64 if that is what the
        server sends (``gpt-image-1`` always does)."""
        body = {"model": model, "prompt": prompt, "size": size, "n": 1}
        started = time.monotonic()
        try:
            async with asyncio.timeout(self._deadline):
                response = await self._image_client().post(
                    "/images/generations", body=body, cast_to=httpx2.Response
                )
            data = orjson.loads(response.content)["data"][0]
        except (TimeoutError, openai.APIError) as exc:
            raise self._sdk_failure(exc, started) from exc
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise LLMError("The images endpoint sent a reply without an image") from exc
        url, b64 = data.get("url"), data.get("b64_json")
        if not (isinstance(url, str) and url) and not (isinstance(b64, str) and b64):
            raise LLMError("The images endpoint sent a reply without an image")
        return GeneratedImage(url=url or None, b64=b64 or None)

    def _image_client(self) -> openai.AsyncOpenAI:
        """The SDK, for images only, made on first use."""
        if self._images is None:
            self._images = openai.AsyncOpenAI(
                # The SDK insists on a key; a keyless local server ignores this one.
                api_key=self._api_key or "not-needed",
                base_url=self._base_url,
                timeout=self._deadline,
                max_retries=self._image_retries,
                default_headers=self._extra_headers or None,
            )
        return self._images

    def _failure(self, exc: Exception) -> LLMError | LLMUnavailable | LLMTimeout:
        """The API error for a call that failed on the wire."""
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            return LLMUnavailable("The language model could not be reached; try again shortly")
        if isinstance(exc, aiohttp.SocketTimeoutError):
            seconds = self._stream_timeout.sock_read or self._deadline
            return LLMTimeout(f"The language model stopped sending for {seconds:g} s")
        if isinstance(exc, TimeoutError):
            return LLMTimeout(f"The language model did not answer within {self._deadline:g} s")
        if isinstance(exc, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError):
            return ProviderUnreachable(
                "The connection to the language model failed; try again shortly"
            )
        return LLMError("The language model sent a reply the service could not read")

    def _sdk_failure(
        self, exc: Exception, started: float
    ) -> LLMError | LLMUnavailable | LLMTimeout | ContextTooLong:
        """The API error for a failed SDK call (images)."""
        if isinstance(exc, TimeoutError) or (
            isinstance(exc, openai.APITimeoutError)
            and time.monotonic() - started >= 0.9 * self._deadline
        ):
            return LLMTimeout(f"The language model did not answer within {self._deadline:g} s")
        assert isinstance(exc, openai.APIError)
        return map_api_error(exc)


def env_proxy(url: str) -> str | None:
    """The proxy ``HTTPS_PROXY`` / ``HTTP_PROXY`` name for ``url``, unless ``NO_PROXY``
    excludes its host."""
    parts = urllib.parse.urlsplit(url)
    if not parts.hostname or urllib.request.proxy_bypass(parts.hostname):
        return None
    return urllib.request.getproxies().get(parts.scheme)


class _StreamedReply:
    """A streamed reply as its events arrive: text handed on, tool calls, usage, model."""

    def __init__(self, model: str, on_delta: DeltaSink) -> None:
        self._on_delta = on_delta
        self._parts: list[str] = []
        self._calls = _StreamedCalls()
        self._usage: Usage | None = None
        self._model = model
        self._done = False

    def take(self, events: list[bytes]) -> None:
        """Read events; after ``[DONE]`` nothing more counts (the stream is drained to its
        end so the connection stays pooled)."""
        for data in events:
            if self._done:
                return
            if data == DONE:
                self._done = True
                return
            try:
                chunk = orjson.loads(data)
            except orjson.JSONDecodeError as exc:
                raise LLMError(
                    "The language model sent a stream line that is not JSON", garbled=True
                ) from exc
            self._chunk(chunk)

    def _chunk(self, chunk: Any) -> None:
        if not isinstance(chunk, dict):
            raise LLMError("The language model sent a stream chunk that is not an object")
        if chunk.get("error") and not chunk.get("choices"):
            # OpenRouter and others report a failure mid-stream as a chunk (body not kept).
            raise LLMError("The language model provider failed during the reply", garbled=True)
        self._usage = _usage(chunk.get("usage")) or self._usage
        self._model = str(chunk.get("model") or self._model)
        for piece in _delta_texts(chunk):
            self._parts.append(piece)
            self._on_delta(piece)
        self._calls.add(chunk)

    def finished(self, messages: list[ChatMessage], asked: str) -> Completion:
        """The completion, once the stream ended."""
        reply, tool_calls = "".join(self._parts), self._calls.finished()
        if not reply.strip() and not tool_calls:
            raise LLMError("The language model sent an empty reply")
        usage = self._usage
        spent = usage or estimate_usage(messages, reply)
        return Completion(
            reply, spent, self._model, usage is not None, tool_calls=tool_calls, asked_model=asked
        )


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


def is_context_too_long(exc: openai.APIStatusError) -> bool:
    """Whether a provider refused the request because the prompt does not fit the model."""
    return says_too_long(exc.status_code, exc.code, exc.message)


def map_api_error(exc: openai.APIError) -> LLMError | LLMUnavailable | ContextTooLong:
    """An SDK error (the image calls) as the API's error; never carries the provider's body."""
    if isinstance(exc, openai.RateLimitError):
        return rate_limited(exc.response.headers.get("retry-after"))
    if isinstance(exc, openai.APIConnectionError):
        return ProviderUnreachable("The language model could not be reached; try again shortly")
    if isinstance(exc, openai.APIStatusError):
        return error_for_status(exc.status_code, exc.code, exc.message)
    return LLMError("The language model sent a reply the service could not read")


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
