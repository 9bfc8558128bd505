"""``OpenAIChat``: our own lean client for any OpenAI-compatible chat-completions server, over
``services.llm.http`` (the OpenAI SDK's request path cost about 40 % of a turn's CPU, aiohttp's
two thirds of what was left of a call); the SDK is kept for image generation only. Failures on
the wire, and the SDK's errors, become the API's errors.
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

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
from services.core.records import Sampling
from services.core.settings import Settings
from services.llm.client import ChatMessage, Completion, DeltaSink, GeneratedImage, ToolDefinitions
from services.llm.http import (
    AiohttpPool,
    ConnectionFailed,
    ConnectTimeout,
    HTTPPool,
    HTTPReply,
    IdleTimeout,
)
from services.llm.replies import StreamedReply, parse_completion
from services.llm.wire import (
    SSEDecoder,
    error_for_status,
    rate_limited,
    status_error,
)

OPENAI_BASE_URL = "https://api.openai.com/v1"  # where a key without a base URL goes


class OpenAIChat:
    """Chat completions over the OpenAI HTTP API (or a compatible server).

    Our own lean client: pooled keep-alive connections (``services.llm.http``), the body
    serialized once with orjson, the reply parsed with orjson and the stream by ``SSEDecoder``
    as its bytes arrive (docs/performance.md has the measurements). Retries and fallback are
    the router's (services/llm/providers.py). Only images go through the OpenAI SDK: they are
    rare, and its typed reply fits.
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
        url = self._base_url + "/chat/completions"
        self._api_key = api_key
        self._extra_headers = dict(headers or {})
        auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # A keyless local server (Ollama, vLLM, llama.cpp) gets no Authorization header.
        sent = {"Content-Type": "application/json", **auth, **self._extra_headers}
        self._image_retries = min(1, settings.llm_max_retries)  # images do not fall back
        connect = min(settings.llm_connect_timeout_seconds, timeout)
        # A streamed reply may fall silent this long between two chunks (the first included).
        self._idle = min(settings.llm_stream_idle_seconds, timeout)
        # Read once: looking the proxy up again on every request cost more CPU than the rest
        # of the call (bench/llm_client.py).
        proxy = env_proxy(url)
        self._http: HTTPPool | AiohttpPool = (
            HTTPPool(url, headers=sent, connections=settings.llm_max_connections,
                     connect_timeout=connect)
            if proxy is None
            else AiohttpPool(url, headers=sent, connections=settings.llm_max_connections,
                             connect_timeout=connect, proxy=proxy)
        )  # fmt: skip
        self._images: openai.AsyncOpenAI | None = None

    async def close(self) -> None:
        """Close the HTTP connection pools."""
        await self._http.close()
        if self._images is not None:
            await self._images.close()

    async def complete(
        self, messages: list[ChatMessage], sampling: Sampling, *, tools: ToolDefinitions = ()
    ) -> Completion:
        """Ask for one reply within the provider's timeout."""
        body = orjson.dumps(request_body(messages, sampling, tools))
        reply = await self._post(body)
        try:
            data = orjson.loads(reply.body)
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
        """Stream the reply; usage comes from ``stream_options.include_usage`` when served.
        The deltas are handed on as the bytes arrive, from the connection's own callback."""
        body = request_body(messages, sampling, tools)
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        reply = StreamedReply(sampling.model, on_delta)
        decoder = SSEDecoder()
        await self._post(orjson.dumps(body), sink=lambda piece: reply.take(decoder.feed(piece)))
        reply.take(decoder.close())
        return reply.finished(messages, sampling.model)

    async def _post(self, body: bytes, *, sink: Callable[[bytes], None] | None = None) -> HTTPReply:
        """One call within the deadline; an answer other than 200 raises its API error."""
        try:
            async with asyncio.timeout(self._deadline):
                reply = await self._http.post(
                    body, sink=sink, idle=self._idle if sink is not None else None
                )
        except (TimeoutError, ConnectTimeout, IdleTimeout, ConnectionFailed) as exc:
            raise self._failure(exc) from exc
        if reply.status != 200:
            raise status_error(reply.status, reply.body, reply.headers)
        return reply

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
        if isinstance(exc, ConnectTimeout):
            return LLMUnavailable("The language model could not be reached; try again shortly")
        if isinstance(exc, IdleTimeout):
            return LLMTimeout(f"The language model stopped sending for {self._idle:g} s")
        if isinstance(exc, TimeoutError):
            return LLMTimeout(f"The language model did not answer within {self._deadline:g} s")
        return ProviderUnreachable("The connection to the language model failed; try again shortly")

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


def map_api_error(exc: openai.APIError) -> LLMError | LLMUnavailable | ContextTooLong:
    """An SDK error (the image calls) as the API's error; never carries the provider's body."""
    if isinstance(exc, openai.RateLimitError):
        return rate_limited(exc.response.headers.get("retry-after"))
    if isinstance(exc, openai.APIConnectionError):
        return ProviderUnreachable("The language model could not be reached; try again shortly")
    if isinstance(exc, openai.APIStatusError):
        return error_for_status(exc.status_code, exc.code, exc.message)
    return LLMError("The language model sent a reply the service could not read")
