"""CPU per model call of the chat-completions clients, against the mock LLM at 0 ms.

The mock runs as its own process (``bench.harness.start_mock_llm``), so ``time.process_time``
here counts only the client's side. Each client sends the same 12-message prompt, one call at
a time, as a plain completion and as a stream of about 65 chunks with usage in the last one:

- ``openai SDK``: the client before ``lean-llm`` (the SDK's low-level ``post`` over its aiohttp
  transport, as ``services/llm/client.py`` had it);
- ``aiohttp``: ``OpenAIChat`` over aiohttp (``services.llm.http.AiohttpPool``), as it was
  before our own HTTP/1.1 pool, and as it still is behind a proxy;
- ``httptools (ours)``: ``services.llm.openai_chat.OpenAIChat`` as it ships, over
  ``services.llm.http.HTTPPool``;
- ``httpx``: the same body, parsing and SSE decoder over ``httpx.AsyncClient``.

All run on uvloop, as the service does.

    python -m bench.llm_client [--calls 2000]
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import httpx
import httpx2
import openai
import orjson
import uvloop

from bench.harness import running, start_mock_llm
from services.core.errors import LLMError
from services.core.records import Sampling
from services.core.settings import Settings
from services.llm.client import ChatMessage, Completion, DeltaSink, estimate_usage
from services.llm.http import AiohttpPool
from services.llm.openai_chat import OpenAIChat, request_body
from services.llm.replies import (
    StreamedReply,
    _delta_texts,
    _StreamedCalls,
    _usage,
    parse_completion,
)
from services.llm.wire import SSEDecoder

logger = logging.getLogger("bench.llm_client")
SAMPLING = Sampling("gpt-bench", 0.7, 200, 0.0, 0.0)
CHUNKS = 65


def prompt() -> list[ChatMessage]:
    """A system prompt and 11 turns; the last is long enough to echo back in 65 chunks."""
    messages: list[ChatMessage] = [{"role": "system", "content": "You are a pirate. " * 12}]
    for n in range(10):
        role = "user" if n % 2 == 0 else "assistant"
        messages.append({"role": role, "content": f"Message {n}: " + "arr matey " * 18})
    # "Echo: " and 384 characters: 65 chunks of 6.
    messages.append({"role": "user", "content": ("Tell me about the sea. " * 17)[:384]})
    return messages


class SDKChat:
    """The client before: the OpenAI SDK's low-level ``post`` on its aiohttp transport."""

    def __init__(self, base_url: str) -> None:
        self._client = openai.AsyncOpenAI(
            api_key="sk-bench",
            base_url=base_url,
            timeout=30,
            max_retries=0,
            http_client=openai.DefaultAioHttpClient(
                limits=httpx2.Limits(max_connections=100, max_keepalive_connections=100)
            ),
        )

    async def complete(self, messages: list[ChatMessage], sampling: Sampling) -> Completion:
        """One reply."""
        response = await self._client.post(
            "/chat/completions", body=request_body(messages, sampling), cast_to=httpx2.Response
        )
        return parse_completion(orjson.loads(response.content), messages, sampling.model)

    async def stream(
        self, messages: list[ChatMessage], sampling: Sampling, *, on_delta: DeltaSink
    ) -> Completion:
        """One streamed reply."""
        body = request_body(messages, sampling)
        body["stream"], body["stream_options"] = True, {"include_usage": True}
        parts: list[str] = []
        calls, usage, model = _StreamedCalls(), None, sampling.model
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
        reply = "".join(parts)
        spent = usage or estimate_usage(messages, reply)
        return Completion(reply, spent, model, usage is not None, tool_calls=calls.finished())

    async def close(self) -> None:
        """Close the pool."""
        await self._client.close()


class AiohttpChat(OpenAIChat):
    """``OpenAIChat`` over aiohttp, as it was before ``services.llm.http.HTTPPool``."""

    def __init__(self, base_url: str) -> None:
        super().__init__(
            kind="openai",
            base_url=base_url,
            api_key="sk-bench",
            timeout=30,
            settings=Settings(_env_file=None, llm_max_connections=100),
        )
        url, headers = f"{base_url}/chat/completions", {"Authorization": "Bearer sk-bench"}
        self._http = AiohttpPool(
            url, headers=headers, connections=100, connect_timeout=30, proxy=None
        )


class HttpxChat:
    """Our client's body, parsing and decoder over ``httpx.AsyncClient`` instead."""

    def __init__(self, base_url: str) -> None:
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench"}
        self._client = httpx.AsyncClient(
            timeout=30, limits=httpx.Limits(max_connections=100, max_keepalive_connections=100)
        )

    async def complete(self, messages: list[ChatMessage], sampling: Sampling) -> Completion:
        """One reply."""
        body = orjson.dumps(request_body(messages, sampling))
        response = await self._client.post(self._url, content=body, headers=self._headers)
        if response.status_code != 200:
            raise LLMError(f"HTTP {response.status_code}")
        return parse_completion(orjson.loads(response.content), messages, sampling.model)

    async def stream(
        self, messages: list[ChatMessage], sampling: Sampling, *, on_delta: DeltaSink
    ) -> Completion:
        """One streamed reply."""
        body = request_body(messages, sampling)
        body["stream"], body["stream_options"] = True, {"include_usage": True}
        reply, decoder = StreamedReply(sampling.model, on_delta), SSEDecoder()
        request = self._client.build_request(
            "POST", self._url, content=orjson.dumps(body), headers=self._headers
        )
        response = await self._client.send(request, stream=True)
        try:
            async for piece in response.aiter_raw():
                reply.take(decoder.feed(piece))
            reply.take(decoder.close())
        finally:
            await response.aclose()
        return reply.finished(messages, sampling.model)

    async def close(self) -> None:
        """Close the pool."""
        await self._client.aclose()


async def cpu_per_call(call: Callable[[], Awaitable[Completion]], calls: int) -> float:
    """Milliseconds of this process's CPU per call, after a warm-up."""
    for _ in range(min(100, calls)):
        await call()
    started = time.process_time()
    for _ in range(calls):
        await call()
    return (time.process_time() - started) * 1000 / calls


async def measure(base_url: str, calls: int) -> list[tuple[str, float, float]]:
    """(client, complete ms, stream ms) for each client."""
    messages, pieces = prompt(), 0

    def count(_: str) -> None:
        nonlocal pieces
        pieces += 1

    ours = OpenAIChat(
        kind="openai",
        base_url=base_url,
        api_key="sk-bench",
        timeout=30,
        settings=Settings(_env_file=None, llm_max_connections=100),
    )
    rows = []
    for name, client in (
        ("openai SDK (before)", SDKChat(base_url)),
        ("aiohttp", AiohttpChat(base_url)),
        ("httptools (ours)", ours),
        ("httpx", HttpxChat(base_url)),
    ):
        try:
            complete = await cpu_per_call(partial(client.complete, messages, SAMPLING), calls)
            pieces = 0
            streamed = await cpu_per_call(
                partial(client.stream, messages, SAMPLING, on_delta=count), calls
            )
        finally:
            await client.close()
        logger.info("%s: %.0f deltas per stream", name, pieces / (calls + min(100, calls)))
        rows.append((name, complete, streamed))
    return rows


def table(rows: list[tuple[str, float, float]], calls: int) -> str:
    """The Markdown table, with each client's CPU as a share of the SDK's."""
    _, base_complete, base_stream = rows[0]
    lines = [
        f"CPU per call (ms, time.process_time over {calls} calls, 12 messages, mock LLM at 0 ms)",
        "",
        f"| client | complete | vs SDK | streamed ({CHUNKS} chunks) | vs SDK |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, complete, streamed in rows:
        lines.append(
            f"| {name} | {complete:.2f} | {complete / base_complete:.0%} "
            f"| {streamed:.2f} | {streamed / base_stream:.0%} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per client and mode")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("httpx", "httpx2", "openai", "bench.harness"):
        logging.getLogger(name).setLevel(logging.WARNING)
    with running(start_mock_llm("--latency-ms", "0", "--chunks", str(CHUNKS))) as llm:
        rows = uvloop.run(measure(f"{llm.url}/v1", args.calls))
    logger.info("\n%s", table(rows, args.calls))


if __name__ == "__main__":
    main()
