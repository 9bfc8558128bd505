"""An OpenAI-compatible chat-completions server on loopback, for tests and benchmarks.

It speaks real HTTP/1.1 (keep-alive, Content-Length requests, SSE responses), so the service's
own OpenAI client talks to it exactly as to api.openai.com. Behaviour is scripted per request:
tests push ``Reply`` objects that say what the next request gets (an error status, a hang, a
dropped connection, a 429 with ``Retry-After``, chunked streaming, a stream line that is not
JSON, a reply held part-way until the client hangs up: ``Hold``); with nothing scripted it
answers ``Echo: <last user message>`` after ``latency`` seconds.

Tools: when a request offers ``tools`` and the user's message says
``[[call <function> <JSON arguments>]]`` (once or more), the answer calls those functions; once
the tools answered, it replies ``Tool said: <results>``. ``[[loop <function> <JSON>]]`` calls
again on every request that offers tools (to reach the round limit).

Run alone: ``python -m testkit.mock_llm --port 9100 --latency-ms 200 --chunks 8``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import logging
import random
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from services.conversation import memory
from services.llm.placeholder import placeholder_b64

logger = logging.getLogger(__name__)

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


@dataclass
class Hold:
    """Send this many chunks (none for a reply that is not streamed), then wait for the client
    to close the connection, as a stopped turn does: ``closed`` is set then, and ``closed_at``
    says when (``time.monotonic()``, the same clock on every thread)."""

    after_chunks: int = 0
    closed: threading.Event = field(default_factory=threading.Event)
    closed_at: float | None = None

    async def until_closed(self, reader: asyncio.StreamReader) -> None:
        """Read until the client hangs up."""
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass
        self.closed_at = time.monotonic()
        self.closed.set()


@dataclass
class Reply:
    """What one request gets. Unset fields fall back to the server's defaults."""

    content: str | None = None
    status: int = 200
    error_body: Any = None
    retry_after: float | None = None
    delay: float | None = None
    hang: bool = False
    drop: bool = False
    chunks: int | None = None
    chunk_delay: float = 0.0
    fail_after_chunks: int | None = None
    # A ``data:`` line that is not JSON after this many chunks (the stream then goes on).
    garbage_after_chunks: int | None = None
    pause_after_chunks: int | None = None
    resume: threading.Event | None = None
    usage: bool = True
    gate: threading.Event | None = None
    arrived: threading.Event | None = None
    raw_body: bytes | None = None
    # Tool calls to answer with: ``{"name": <function>, "arguments": <dict or JSON text>}``;
    # with ``content``, that text comes with them (streamed before the calls).
    tool_calls: list[dict[str, Any]] | None = None
    hold: Hold | None = None  # stop part-way and wait for the client to close the connection


@dataclass
class RecordedRequest:
    """A request as the server saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None


@dataclass
class MockLLMConfig:
    """Defaults for requests that have no scripted ``Reply``."""

    latency: float = 0.0
    chunks: int = 4
    chunk_delay: float = 0.0
    reply_prefix: str = "Echo: "
    record: bool = True
    # Faults for requests with no scripted reply, drawn at random per request.
    error_rate: float = 0.0  # HTTP 500
    hang_rate: float = 0.0  # no answer until the client gives up
    rate_limit_rate: float = 0.0  # HTTP 429 with Retry-After: 1
    drop_rate: float = 0.0  # connection closed without an answer
    seed: int | None = None
    # A model's context window, in characters of the prompt (0: unlimited): a longer prompt
    # gets the 400 ``context_length_exceeded`` OpenAI answers.
    context_chars: int = 0
    # Prompt tokens every reply reports as read from a prompt cache (at most its prompt), as
    # OpenAI's ``usage.prompt_tokens_details.cached_tokens``; 0: none reported.
    cached_tokens: int = 0


class MockLLM:
    """The server: ``start()`` runs it on its own thread and event loop."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, config: MockLLMConfig | None = None):
        self.host = host
        self.port = port
        self.config = config or MockLLMConfig()
        self.requests: list[RecordedRequest] = []
        # Every ``usage`` object sent, in order, with the model the request asked for.
        self.reported_usage: list[tuple[str, dict[str, Any]]] = []
        self._script: collections.deque[Reply] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stopped: asyncio.Event | None = None
        self.fixed_reply: str | None = None
        self._random = random.Random(self.config.seed)

    @property
    def url(self) -> str:
        """Base URL to give an OpenAI client (``.../v1``)."""
        return f"http://{self.host}:{self.port}/v1"

    def script(self, *replies: Reply) -> None:
        """Queue replies; each request takes the next one."""
        self._script.extend(replies)

    def reset(self) -> None:
        """Forget scripted replies and recorded requests."""
        self._script.clear()
        self.requests.clear()
        self.reported_usage.clear()

    def chat_requests(self) -> list[dict[str, Any]]:
        """JSON bodies of the chat-completion requests received so far."""
        return [r.body for r in self.requests if r.body is not None and "chat" in r.path]

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> MockLLM:
        """Start serving on a background thread; returns once listening."""
        self._thread = threading.Thread(target=self._run, name="mock-llm", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        """Stop serving and join the thread."""
        if self._loop is not None and self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> MockLLM:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        asyncio.run(self.serve())

    async def serve(self) -> None:
        """Serve until ``stop()``."""
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        self._server = await asyncio.start_server(self._handle, self.host, self.port, backlog=4096)
        self.port = self._server.sockets[0].getsockname()[1]
        logger.info("mock LLM listening on %s", self.url)
        self._ready.set()
        async with self._server:
            await self._stopped.wait()

    # -- HTTP ------------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while await self._one_request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _one_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        raw = await reader.readexactly(int(headers.get("content-length", "0")))
        body = json.loads(raw) if raw else None
        if self.config.record:
            self.requests.append(RecordedRequest(method, path, headers, body))
        if path.rstrip("/").endswith("/images/generations"):
            await self._image(writer, body or {})
            return True
        if not path.rstrip("/").endswith("/chat/completions"):
            await _send(writer, 404, {"error": {"message": "not found", "type": "invalid_request"}})
            return True
        reply = self._script.popleft() if self._script else self._default_reply()
        if reply == Reply() and _prompt_chars(body or {}) > self.config.context_chars > 0:
            reply = Reply(status=400, error_body=_too_long(self.config.context_chars))
        return await self._respond(reader, writer, body or {}, reply)

    async def _image(self, writer: asyncio.StreamWriter, body: dict[str, Any]) -> None:
        """``/images/generations``: a small image drawn from the prompt, as ``b64_json`` (or a
        scripted error)."""
        reply = self._script.popleft() if self._script else Reply()
        if reply.status != 200:
            error = {"error": {"message": f"mock error {reply.status}", "type": "server_error"}}
            await _send(writer, reply.status, error)
            return
        if reply.raw_body is not None:
            await _send_raw(writer, 200, reply.raw_body)
            return
        image = {"b64_json": placeholder_b64(str(body.get("prompt", "")))}
        await _send(writer, 200, {"created": int(time.time()), "data": [image]})

    def _default_reply(self) -> Reply:
        """A normal reply, or a random fault at the configured rates."""
        c, draw = self.config, self._random.random()
        for rate, fault in (
            (c.error_rate, Reply(status=500)),
            (c.hang_rate, Reply(hang=True)),
            (c.rate_limit_rate, Reply(status=429, retry_after=1)),
            (c.drop_rate, Reply(drop=True)),
        ):
            if draw < rate:
                return fault
            draw -= rate
        return Reply()

    async def _respond(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        body: dict[str, Any],
        reply: Reply,
    ) -> bool:
        if reply.arrived is not None:
            reply.arrived.set()
        if reply.gate is not None:
            await asyncio.to_thread(reply.gate.wait, 30)
        delay = self.config.latency if reply.delay is None else reply.delay
        if delay:
            await asyncio.sleep(delay)
        if reply.hang:  # until the client gives up and closes the connection
            await reader.read()
            return False
        if reply.drop:
            return False
        if reply.hold is not None and not body.get("stream"):
            await reply.hold.until_closed(reader)
            return False
        if reply.status != 200:
            extra = {"retry-after": str(reply.retry_after)} if reply.retry_after is not None else {}
            error = reply.error_body or {
                "error": {"message": f"mock error {reply.status}", "type": "server_error"}
            }
            await _send(writer, reply.status, error, extra)
            return True
        if reply.raw_body is not None:
            await _send_raw(writer, 200, reply.raw_body)
            return True
        calls = _tool_calls(body) if reply.tool_calls is None else reply.tool_calls
        if calls:
            await self._send_calls(writer, body, calls, reply.content if reply.tool_calls else None)
            return True
        content = reply.content if reply.content is not None else self._echo(body)
        if body.get("stream"):
            return await self._stream(reader, writer, body, reply, content)
        result = _completion(body, content, False)
        if reply.usage:
            result["usage"] = self._usage(body, content)
        await _send(writer, 200, result)
        return True

    async def _send_calls(
        self,
        writer: asyncio.StreamWriter,
        body: dict[str, Any],
        calls: list[dict[str, Any]],
        content: str | None = None,
    ) -> None:
        """A reply that calls tools (after some text, with ``content``), streamed or whole."""
        wire: list[dict[str, Any]] = [
            {
                "id": f"call_{len(self.requests)}_{index}",
                "type": "function",
                "function": {"name": call["name"], "arguments": _json_text(call["arguments"])},
            }
            for index, call in enumerate(calls)
        ]
        usage = self._usage(body, json.dumps(wire))
        if not body.get("stream"):
            result = _completion(body, "", True)
            result["choices"][0]["message"] = {"role": "assistant", "content": content}
            result["choices"][0]["message"]["tool_calls"] = wire
            result["choices"][0]["finish_reason"] = "tool_calls"
            result["usage"] = usage
            await _send(writer, 200, result)
            return
        head = (
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            "transfer-encoding: chunked\r\ncache-control: no-cache\r\n\r\n"
        )
        writer.write(head.encode())
        for piece in _split(content, 2) if content else ():
            _write_chunk(writer, _sse(_chunk(body, {"content": piece}, None)))
        for index, call in enumerate(wire):
            arguments = call["function"]["arguments"]
            half = len(arguments) // 2
            first = {**call, "index": index, "function": {**call["function"], "arguments": ""}}
            for call_delta in (first, *(
                {"index": index, "function": {"arguments": part}}
                for part in (arguments[:half], arguments[half:])
            )):  # fmt: skip
                _write_chunk(writer, _sse(_chunk(body, {"tool_calls": [call_delta]}, None)))
        _write_chunk(writer, _sse(_chunk(body, {}, "tool_calls")))
        final = _chunk(body, None, None)
        final["choices"], final["usage"] = [], usage
        _write_chunk(writer, _sse(final))
        _write_chunk(writer, b"data: [DONE]\n\n")
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    def _usage(self, body: dict[str, Any], content: str) -> dict[str, Any]:
        """The usage a reply reports (recorded in ``reported_usage``)."""
        usage: dict[str, Any] = _usage(body, content)
        cached = min(self.config.cached_tokens, usage["prompt_tokens"])
        if cached:
            usage["prompt_tokens_details"] = {"cached_tokens": cached}
        self.reported_usage.append((str(body.get("model")), usage))
        return usage

    async def _stream(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        body: dict[str, Any],
        reply: Reply,
        content: str,
    ) -> bool:
        head = (
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            "transfer-encoding: chunked\r\ncache-control: no-cache\r\n\r\n"
        )
        writer.write(head.encode())
        pieces = _split(content, reply.chunks or self.config.chunks)
        for index, piece in enumerate(pieces):
            if reply.fail_after_chunks is not None and index >= reply.fail_after_chunks:
                return False
            if reply.hold is not None and index == reply.hold.after_chunks:
                await reply.hold.until_closed(reader)
                return False
            if index == reply.pause_after_chunks and reply.resume is not None:
                await asyncio.to_thread(reply.resume.wait, 30)
            if index == reply.garbage_after_chunks:
                _write_chunk(writer, b"data: {'not': json\n\n")
            _write_chunk(writer, _sse(_chunk(body, {"content": piece}, None)))
            await writer.drain()
            if reply.chunk_delay or self.config.chunk_delay:
                await asyncio.sleep(reply.chunk_delay or self.config.chunk_delay)
        _write_chunk(writer, _sse(_chunk(body, {}, "stop")))
        include_usage = (body.get("stream_options") or {}).get("include_usage")
        if include_usage and reply.usage:
            final = _chunk(body, None, None)
            final["choices"] = []
            final["usage"] = self._usage(body, content)
            _write_chunk(writer, _sse(final))
        _write_chunk(writer, b"data: [DONE]\n\n")
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    def _echo(self, body: dict[str, Any]) -> str:
        messages = body.get("messages") or [{}]
        if str(messages[0].get("content", "")).startswith(memory.INSTRUCTIONS[:40]):
            return _memory_of(str(messages[-1].get("content", "")))
        if self.fixed_reply is not None:
            return self.fixed_reply
        if messages[-1].get("role") == "tool":
            results = [m.get("content", "") for m in _trailing_tool_messages(messages)]
            return "Tool said: " + " | ".join(results)
        return f"{self.config.reply_prefix}{_said(messages[-1].get('content', ''))}"


def _said(content: Any) -> str:
    """A message's text; content parts' text, each image as ``[image/png]``-like marks."""
    if not isinstance(content, list):
        return str(content)
    said = [str(p.get("text", "")) for p in content if p.get("type") == "text"]
    for part in content:
        if part.get("type") == "image_url":
            url = str((part.get("image_url") or {}).get("url", ""))
            said.append(f"[{url.removeprefix('data:').split(';', 1)[0]}]")
    return " ".join(said)


_DIRECTIVE = re.compile(r"\[\[(call|loop) (\S+) (\{.*?\})\]\]")


def _tool_calls(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The calls the user's message asks for (see the module docstring), if tools are offered."""
    if not body.get("tools"):
        return []
    messages = body.get("messages") or []
    users = [m for m in messages if m.get("role") == "user"]
    if not users:
        return []
    answered = messages[-1].get("role") == "tool"
    return [
        {"name": name, "arguments": arguments}
        for kind, name, arguments in _DIRECTIVE.findall(str(users[-1].get("content", "")))
        if kind == "loop" or not answered
    ]


def _trailing_tool_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    trailing = []
    for message in reversed(messages):
        if message.get("role") != "tool":
            break
        trailing.append(message)
    return trailing[::-1]


def _json_text(arguments: Any) -> str:
    return arguments if isinstance(arguments, str) else json.dumps(arguments)


def _memory_of(request: str) -> str:
    """A deterministic memory for the service's memory request (what the offline responder
    writes): the first words of each user message, the oldest and newest lines kept."""
    old, _, new = request.removeprefix(memory.MEMORY_SO_FAR + "\n").partition(
        "\n\n" + memory.NEW_MESSAGES + "\n"
    )
    return memory.plain_memory(None if old == "(empty)" else old, new.splitlines())


def _prompt_chars(body: dict[str, Any]) -> int:
    return sum(len(str(m.get("content", ""))) for m in body.get("messages") or [])


def _too_long(limit: int) -> dict[str, Any]:
    message = (
        f"This model's maximum context length is {limit // 4} tokens. However, your messages "
        "resulted in more tokens. Please reduce the length of the messages."
    )
    return {
        "error": {
            "message": message,
            "type": "invalid_request_error",
            "param": "messages",
            "code": "context_length_exceeded",
        }
    }


def _usage(body: dict[str, Any], content: str) -> dict[str, int]:
    prompt = sum(len(_said(m.get("content", ""))) for m in body.get("messages", [])) // 4 + 1
    completion = len(content) // 4 + 1
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _completion(body: dict[str, Any], content: str, usage: bool) -> dict[str, Any]:
    result: dict[str, Any] = {
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "mock"),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
    }
    if usage:
        result["usage"] = _usage(body, content)
    return result


def _chunk(
    body: dict[str, Any], delta: dict[str, Any] | None, finish: str | None
) -> dict[str, Any]:
    return {
        "id": "chatcmpl-mock",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": body.get("model", "mock"),
        "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}],
    }


def _split(text: str, parts: int) -> list[str]:
    size = max(1, -(-len(text) // max(1, parts)))
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def _write_chunk(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")


async def _send(
    writer: asyncio.StreamWriter, status: int, payload: Any, extra: dict[str, str] | None = None
) -> None:
    await _send_raw(writer, status, json.dumps(payload).encode(), extra)


async def _send_raw(
    writer: asyncio.StreamWriter, status: int, data: bytes, extra: dict[str, str] | None = None
) -> None:
    headers = {
        "content-type": "application/json",
        "content-length": str(len(data)),
        **(extra or {}),
    }
    head = f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    writer.write(head.encode() + data)
    await writer.drain()


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--chunks", type=int, default=4)
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0)
    parser.add_argument("--reply", default=None, help="fixed reply text (default: echo)")
    parser.add_argument("--error-rate", type=float, default=0.0, help="share of HTTP 500s")
    parser.add_argument("--hang-rate", type=float, default=0.0, help="share of hangs")
    parser.add_argument("--rate-limit-rate", type=float, default=0.0, help="share of 429s")
    parser.add_argument("--drop-rate", type=float, default=0.0, help="share of dropped connections")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    config = MockLLMConfig(
        latency=args.latency_ms / 1000,
        chunks=args.chunks,
        chunk_delay=args.chunk_delay_ms / 1000,
        record=False,
        error_rate=args.error_rate,
        hang_rate=args.hang_rate,
        rate_limit_rate=args.rate_limit_rate,
        drop_rate=args.drop_rate,
    )
    server = MockLLM(args.host, args.port, config)
    if args.reply is not None:
        server.fixed_reply = args.reply
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(server.serve())


if __name__ == "__main__":
    main()
