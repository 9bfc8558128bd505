"""The offline responder: a clearly labelled stand-in for a model, so a fresh install works
without one. It answers for the ``default`` provider when neither ``OPENAI_API_KEY`` nor
``OPENAI_BASE_URL`` is set."""

from __future__ import annotations

import asyncio

from services.core.records import Sampling
from services.llm.client import (
    ChatMessage,
    Completion,
    DeltaSink,
    GeneratedImage,
    ToolDefinitions,
    estimate_usage,
    message_text,
)
from services.llm.placeholder import placeholder_b64


class OfflineResponder:
    """A clearly labelled stand-in that needs no model, so a fresh install works."""

    provider = "offline"

    async def complete(
        self, messages: list[ChatMessage], sampling: Sampling, *, tools: ToolDefinitions = ()
    ) -> Completion:
        """A deterministic reply that says how to configure a real model (it calls no tools)."""
        said = message_text(messages[-1])
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
