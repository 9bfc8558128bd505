"""What an OpenAI-compatible server sends back: server-sent events, and error replies.

``SSEDecoder`` turns the bytes of a streamed reply, cut anywhere, into the payloads of its
``data:`` lines; ``status_error`` turns an error reply into the API's error without ever
carrying the provider's text (it may hold keys, hosts or prompts).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

import orjson

from services.core.errors import ContextTooLong, LLMError, ProviderRateLimited

logger = logging.getLogger(__name__)

DONE = b"[DONE]"  # the payload that ends an OpenAI stream


class SSEDecoder:
    """Incremental ``text/event-stream`` parsing: feed it chunks, get whole events' data.

    Lines end with LF or CRLF and may be cut anywhere between two chunks. An event is its
    ``data:`` lines joined by LF, handed on at the blank line that ends it; comments
    (``: keep-alive``) and other fields (``event:``, ``id:``, ``retry:``) are ignored.
    """

    def __init__(self) -> None:
        self._partial = b""  # the start of a line whose end has not arrived
        self._data: list[bytes] = []  # the data lines of the event being read

    def feed(self, chunk: bytes) -> list[bytes]:
        """The events this chunk completes, in order."""
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        events: list[bytes] = []
        for line in lines:
            self._line(line[:-1] if line.endswith(b"\r") else line, events)
        return events

    def close(self) -> list[bytes]:
        """The last event, when the stream ended without the blank line after it."""
        events: list[bytes] = []
        if self._partial:
            self._line(self._partial.removesuffix(b"\r"), events)
            self._partial = b""
        self._line(b"", events)
        return events

    def _line(self, line: bytes, events: list[bytes]) -> None:
        if not line:
            if self._data:
                events.append(b"\n".join(self._data))
                self._data = []
        elif line.startswith(b"data:"):
            value = line[5:]
            self._data.append(value[1:] if value.startswith(b" ") else value)


# How providers say a prompt is too long: OpenAI's error code, and the wording of others
# (Azure, Anthropic-compatible proxies, vLLM, Ollama, llama.cpp), matched case-insensitively.
_TOO_LONG_CODES = frozenset({"context_length_exceeded", "string_above_max_length"})
_TOO_LONG_WORDS = re.compile(
    r"context.length|context.window|maximum context|prompt is too long|too many tokens"
    r"|input is too long|exceeds? the (?:model'?s? )?(?:maximum|context)",
    re.IGNORECASE,
)


def says_too_long(status: int, code: Any, message: Any) -> bool:
    """Whether a provider's refusal says the prompt does not fit the model."""
    if status not in (400, 413, 422):
        return False
    return code in _TOO_LONG_CODES or bool(_TOO_LONG_WORDS.search(str(message)))


def status_error(
    status: int, body: bytes, headers: Mapping[str, str]
) -> LLMError | ProviderRateLimited | ContextTooLong:
    """An error reply (any status but 200) as the API's error; never carries its body."""
    if status == 429:
        return rate_limited(headers.get("retry-after"))
    code, message = _error_fields(body)
    return error_for_status(status, code, message)


def rate_limited(retry_after: str | None) -> ProviderRateLimited:
    """A 429, with the provider's ``Retry-After`` (seconds) when it sent a readable one."""
    try:
        wait: float | None = max(0.0, float(retry_after or ""))
    except ValueError:
        wait = None  # absent, or an HTTP date (no provider we know sends one)
    return ProviderRateLimited(
        "The language model provider is rate limiting this service; try again shortly",
        wait=wait,
    )


def error_for_status(status: int, code: Any, message: Any) -> LLMError | ContextTooLong:
    """A refusal other than 429, from its status and the error's ``code`` and ``message``."""
    if says_too_long(status, code, message):
        logger.warning("LLM upstream refused the prompt as too long (HTTP %s)", status)
        return ContextTooLong(
            "The conversation is too long for the model, even with less history; start a new "
            "session or send a shorter message"
        )
    logger.warning("LLM upstream answered HTTP %s", status)
    return LLMError(f"The language model provider answered HTTP {status}", upstream_status=status)


def _error_fields(body: bytes) -> tuple[Any, Any]:
    """``error.code`` and ``error.message`` of an OpenAI-style error body, if it is one."""
    try:
        error = orjson.loads(body).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        return None, None
    if isinstance(error, str):  # some servers send {"error": "message"}
        return None, error
    if not isinstance(error, dict):
        return None, None
    return error.get("code"), error.get("message")
