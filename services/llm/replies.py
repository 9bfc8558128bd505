"""A chat-completions reply read: a whole one (``parse_completion``) or a streamed one as its
events arrive (``StreamedReply``), with the tool calls and usage they carry. An unusable reply
is ``LLMError``; a reply without usage gets an estimate.
"""

from __future__ import annotations

from typing import Any

import orjson

from services.core.errors import LLMError
from services.core.records import Usage
from services.llm.client import ChatMessage, Completion, DeltaSink, LLMToolCall, estimate_usage
from services.llm.wire import DONE


class StreamedReply:
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
    details = raw.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return Usage(
        prompt,
        completion,
        int(raw.get("total_tokens") or prompt + completion),
        cached if isinstance(cached, int) and cached > 0 else 0,  # OpenAI's prompt caching
    )
