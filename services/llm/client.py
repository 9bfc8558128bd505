"""The model client's contract: the messages a prompt is made of, the ``Completion`` a model
answers with, and the ``LLMClient`` protocol every client follows.

Two clients follow it: ``OpenAIChat`` (``openai_chat``), our lean client for any
OpenAI-compatible chat-completions server, and the ``OfflineResponder`` (``offline``) for an
install without a model. The providers' router (``providers``) puts them behind one client.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from services.core.provider_config import DEFAULT_PROVIDER, Target
from services.core.records import Sampling, ToolUse, Usage

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
    stopped: bool = False  # cut short by a stop: the text that came before it

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


def message_text(message: ChatMessage) -> str:
    """What a message says, for counting: its content, and any tool calls it makes."""
    text = message.get("content") or ""
    if isinstance(text, list):  # content parts: their text (images are counted apart)
        text = " ".join(str(part.get("text") or "") for part in text)
    if message.get("tool_calls"):
        text += json.dumps(message["tool_calls"], ensure_ascii=False)
    return text


def estimate_usage(messages: list[ChatMessage], reply: str) -> Usage:
    """About four characters a token, for servers that report no usage."""
    prompt = sum(len(message_text(m)) for m in messages) // 4 + 4 * len(messages)
    completion = max(1, len(reply) // 4)
    return Usage(prompt, completion, prompt + completion)
