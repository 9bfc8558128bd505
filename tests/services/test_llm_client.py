"""Our chat-completions client against the mock LLM on 127.0.0.1, and its stream parser."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from services.core.errors import (
    ContextTooLong,
    LLMError,
    LLMTimeout,
    ProviderRateLimited,
    ProviderUnreachable,
)
from services.core.records import Sampling
from services.core.settings import Settings
from services.llm.client import estimate_usage
from services.llm.openai_chat import OpenAIChat, env_proxy
from services.llm.wire import DONE, SSEDecoder, status_error
from testkit.mock_llm import MockLLM, Reply
from tests.support.relay_proxy import RelayProxy

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
SAMPLING = Sampling("gpt-test", 0.5, 40, 0.0, 0.0)


@pytest.fixture(params=["direct", "proxy"])
async def client(
    llm: MockLLM, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[OpenAIChat]:
    """The client, straight to the mock LLM or through a relaying proxy (aiohttp's path)."""
    proxy = RelayProxy() if request.param == "proxy" else None
    for name in ("NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    if proxy is not None:
        monkeypatch.setenv("HTTP_PROXY", await proxy.start())
    chat = OpenAIChat(
        kind="openai",
        base_url=llm.url,
        api_key="sk-test",
        timeout=5,
        settings=Settings(_env_file=None),
        headers={"X-Title": "Chatify"},
    )
    yield chat
    await chat.close()
    if proxy is not None:
        await proxy.close()
        assert proxy.targets and all(t.startswith(f"POST {llm.url}/") for t in proxy.targets)


async def test_a_reply_is_asked_once_with_the_body_and_headers_a_provider_expects(
    client: OpenAIChat, llm: MockLLM
) -> None:
    completion = await client.complete(MESSAGES, SAMPLING)
    assert (completion.content, completion.model, completion.usage_reported) == (
        "Echo: hi",
        "gpt-test",
        True,
    )
    [sent] = llm.requests
    assert (sent.method, sent.path) == ("POST", "/v1/chat/completions")
    assert sent.headers["authorization"] == "Bearer sk-test"
    assert sent.headers["x-title"] == "Chatify"
    assert sent.headers["content-type"] == "application/json"
    assert sent.body == {
        "model": "gpt-test",
        "messages": MESSAGES,
        "temperature": 0.5,
        "max_tokens": 40,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
    }


async def test_a_stream_hands_on_its_pieces_and_takes_usage_from_the_last_chunk(
    client: OpenAIChat, llm: MockLLM
) -> None:
    llm.script(Reply(content="one two three four five", chunks=5), Reply(usage=False))
    pieces: list[str] = []
    completion = await client.stream(MESSAGES, SAMPLING, on_delta=pieces.append)
    assert len(pieces) == 5 and "".join(pieces) == completion.content
    assert completion.usage_reported and completion.usage.completion_tokens == 6
    assert llm.requests[0].body is not None
    assert llm.requests[0].body["stream_options"] == {"include_usage": True}

    unreported = await client.stream(MESSAGES, SAMPLING, on_delta=pieces.append)
    assert not unreported.usage_reported
    assert unreported.usage == estimate_usage(MESSAGES, "Echo: hi")


async def test_streamed_tool_calls_are_put_together(client: OpenAIChat, llm: MockLLM) -> None:
    calls = [{"name": "lookup", "arguments": {"city": "Paris"}}, {"name": "time", "arguments": {}}]
    llm.script(Reply(tool_calls=calls))
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
    completion = await client.stream(MESSAGES, SAMPLING, on_delta=lambda _: None, tools=tools)
    assert [(c.name, json.loads(c.arguments)) for c in completion.tool_calls] == [
        ("lookup", {"city": "Paris"}),
        ("time", {}),
    ]
    assert llm.requests[0].body is not None and llm.requests[0].body["tools"] == tools


async def test_a_keyless_server_gets_no_authorization_header(llm: MockLLM) -> None:
    chat = OpenAIChat(
        kind="openai-compatible",
        base_url=llm.url,
        api_key=None,
        timeout=5,
        settings=Settings(_env_file=None),
    )
    try:
        await chat.complete(MESSAGES, SAMPLING)
    finally:
        await chat.close()
    assert "authorization" not in llm.requests[0].headers


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_wire_failures_are_our_errors_without_the_providers_text(
    client: OpenAIChat, llm: MockLLM, stream: bool
) -> None:
    secret = {"error": {"message": "key sk-live-SECRET", "type": "x"}}
    llm.script(
        Reply(status=429, retry_after=7, error_body=secret),
        Reply(status=400, error_body={"error": {"code": "context_length_exceeded"}}),
        Reply(status=502, error_body=secret),
        Reply(drop=True),
    )

    async def call() -> Any:
        if stream:
            return await client.stream(MESSAGES, SAMPLING, on_delta=lambda _: None)
        return await client.complete(MESSAGES, SAMPLING)

    with pytest.raises(ProviderRateLimited) as limited:
        await call()
    assert (limited.value.wait, limited.value.retry_after) == (7, 7)
    with pytest.raises(ContextTooLong):
        await call()
    with pytest.raises(LLMError) as failed:
        await call()
    assert failed.value.upstream_status == 502 and "SECRET" not in failed.value.message
    with pytest.raises(ProviderUnreachable):
        await call()


async def test_a_stream_line_that_is_not_json_is_a_garbled_reply(
    client: OpenAIChat, llm: MockLLM
) -> None:
    llm.script(Reply(content="abc def", chunks=2, garbage_after_chunks=1))
    pieces: list[str] = []
    with pytest.raises(LLMError) as garbled:
        await client.stream(MESSAGES, SAMPLING, on_delta=pieces.append)
    assert garbled.value.garbled and pieces == ["abc "]
    # The connection it broke is not reused: the next call is served.
    assert (await client.complete(MESSAGES, SAMPLING)).content == "Echo: hi"


def events_of(stream: bytes, cut: int) -> list[bytes]:
    """The events of a stream fed in pieces of ``cut`` bytes."""
    decoder = SSEDecoder()
    events: list[bytes] = []
    for start in range(0, len(stream), cut):
        events += decoder.feed(stream[start : start + cut])
    return events + decoder.close()


@pytest.mark.parametrize("cut", [1, 2, 3, 7, 1000])
def test_the_decoder_reads_events_cut_anywhere(cut: int) -> None:
    stream = (
        b": keep-alive\r\n\r\n"
        b'data: {"a": 1}\r\n\r\n'
        b"event: message\nid: 7\nretry: 10\n"
        b'data:{"b": 2}\n\n'
        b"data: first\ndata: second\n\n"
        b"\n\n"
        b"data: [DONE]\n\n"
        b"data: tail without a blank line"
    )
    assert events_of(stream, cut) == [
        b'{"a": 1}',
        b'{"b": 2}',
        b"first\nsecond",
        DONE,
        b"tail without a blank line",
    ]


def test_error_replies_map_by_status_and_never_carry_the_body() -> None:
    body = orjson.dumps({"error": {"message": "maximum context length is 10 tokens, sk-1"}})
    assert isinstance(status_error(413, body, {}), ContextTooLong)
    plain = status_error(400, b"<html>sk-1</html>", {})
    assert isinstance(plain, LLMError) and plain.upstream_status == 400
    assert "sk-1" not in plain.message
    limited = status_error(429, b"", {"retry-after": "soon"})
    assert isinstance(limited, ProviderRateLimited)
    assert (limited.wait, limited.retry_after) == (None, 5.0)


def test_the_proxy_comes_from_the_environment_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "internal.example")
    assert env_proxy("https://api.openai.com/v1/chat/completions") == "http://proxy.example:3128"
    assert env_proxy("https://internal.example/v1/chat/completions") is None
    assert env_proxy("http://127.0.0.1:9/v1/chat/completions") is None  # no HTTP_PROXY


async def test_a_stream_silent_for_the_idle_limit_is_a_timeout_well_before_the_deadline(
    llm: MockLLM,
) -> None:
    resume = threading.Event()
    llm.script(Reply(content="slow slow", chunks=2, pause_after_chunks=1, resume=resume))
    chat = OpenAIChat(
        kind="openai",
        base_url=llm.url,
        api_key="sk-test",
        timeout=30,
        settings=Settings(_env_file=None, llm_stream_idle_seconds=0.3),
    )
    pieces: list[str] = []
    try:
        with pytest.raises(LLMTimeout, match="stopped sending for 0.3 s"):
            await chat.stream(MESSAGES, SAMPLING, on_delta=pieces.append)
    finally:
        resume.set()
        await chat.close()
    assert pieces == ["slow "]
