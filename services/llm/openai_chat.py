"""``OpenAIChat``: our own lean client for any OpenAI-compatible chat-completions server, over
aiohttp (the OpenAI SDK's request path cost about 40 % of a turn's CPU); the SDK is kept for
image generation only. Failures on the wire, and the SDK's errors, become the API's errors.
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
import urllib.request
from typing import Any

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
from services.core.records import Sampling
from services.core.settings import Settings
from services.llm.client import ChatMessage, Completion, DeltaSink, GeneratedImage, ToolDefinitions
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
        reply = StreamedReply(sampling.model, on_delta)
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
