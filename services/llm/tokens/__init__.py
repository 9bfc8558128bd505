"""Prompt token counts per model: exact for OpenAI models, a calibrated estimate for the rest.

OpenAI chat models are counted with tiktoken over encodings vendored in ``data/`` (nothing is
downloaded; see ``encodings.py``), plus the per-message overhead of OpenAI's documented formula.
Other models get the field's rule of thumb, four characters a token and three tokens a message,
scaled per model by what the provider reported as ``prompt_tokens`` for earlier prompts
(``observe``). docs/tokens.md has the measured accuracy of each.

Counting is synchronous and cheap, so it runs on the event loop; only loading an encoding is
slow, and ``prepare`` does that in a worker thread. Until it has finished, an OpenAI model is
counted by the estimate, so a count never waits. tiktoken builds its tokenizer while holding the
GIL, though, so even from a thread a first load stalls the loop once per encoding and process
(about 0.15 s for cl100k_base, 0.3 s for o200k_base, measured): prepare the models you serve at
startup. A ``TokenCounter`` is meant for one event loop (its caches are not locked).
"""

from __future__ import annotations

import asyncio
import math
from typing import Literal

import tiktoken
from cachetools import LRUCache

from services.llm.client import ChatMessage, message_text
from services.llm.tokens.encodings import ENCODINGS, EncodingIntegrityError, EncodingName

__all__ = ["ChatMessage", "EncodingIntegrityError", "TokenCounter", "encoding_for_model"]

# OpenAI's "How to count tokens with tiktoken" (openai-cookbook,
# examples/How_to_count_tokens_with_tiktoken.ipynb): every message costs 3 tokens besides the
# tokens of its values, a "name" 1 more, and every reply is primed with 3
# (<|start|>assistant<|message|>).
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3

CHARS_PER_TOKEN = 4  # the rule of thumb for English text
RATIO_BOUNDS = (0.25, 4.0)
SMOOTHING = 0.5  # weight of the newest report in the moving average (bench/tokens.py)
MAX_MODELS = 256
MAX_CACHED_TEXTS = 4096

_O200K_PREFIXES = ("gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4", "chatgpt-4o")
_CL100K_PREFIXES = ("gpt-4", "gpt-3.5", "gpt-35")  # gpt-35-turbo: Azure's spelling


def encoding_for_model(model: str) -> EncodingName | None:
    """The tiktoken encoding of an OpenAI chat model (also spelled ``openai/…``), else None."""
    name = model.strip().lower().removeprefix("openai/").removeprefix("ft:")
    if name.startswith(_O200K_PREFIXES):
        return "o200k_base"
    if name.startswith(_CL100K_PREFIXES):
        return "cl100k_base"
    return None


class TokenCounter:
    """Counts prompt tokens per model: exact (tiktoken) for OpenAI models, else estimated."""

    def __init__(self) -> None:
        self._encodings: dict[EncodingName, tiktoken.Encoding] = {}
        self._ratios: LRUCache[str, float] = LRUCache(maxsize=MAX_MODELS)
        self._texts: LRUCache[tuple[str, str], int] = LRUCache(maxsize=MAX_CACHED_TEXTS)

    def method(self, model: str) -> Literal["exact", "estimate"]:
        """How the model is counted once ``prepare`` has run (before it, by the estimate)."""
        return "exact" if encoding_for_model(model) else "estimate"

    async def prepare(self, model: str) -> None:
        """Load the model's encoding (once per process, in a thread) if it is counted exactly.

        Cheap after the first call; an encoding file that fails its hash check raises
        ``EncodingIntegrityError``. The first load still holds the GIL for up to 0.3 s (see
        above), so call it at startup for the models you serve.
        """
        name = encoding_for_model(model)
        if name is None or name in self._encodings:
            return
        encoding = ENCODINGS.loaded(name)
        if encoding is None:
            encoding = await asyncio.to_thread(ENCODINGS.load, name)
        self._encodings[name] = encoding

    def count_text(self, model: str, text: str) -> int:
        """Tokens of a text alone (exact if prepared, else estimate)."""
        encoding = self._encoding(model)
        if encoding is None:
            return round(self._ratio(model) * _raw_text(text))
        return self._exact(encoding, text)

    def count_message(self, model: str, message: ChatMessage) -> int:
        """Tokens one message adds to a chat prompt (content + per-message overhead)."""
        encoding = self._encoding(model)
        if encoding is None:
            return round(self._ratio(model) * _raw_message(message))
        tokens = TOKENS_PER_MESSAGE
        tokens += self._exact(encoding, message["role"])
        tokens += self._exact(encoding, message_text(message))
        name = message.get("name")
        if name is not None:
            tokens += self._exact(encoding, name) + TOKENS_PER_NAME
        return tokens

    def count_prompt(self, model: str, messages: list[ChatMessage]) -> int:
        """Tokens of a whole chat prompt, as the provider reports prompt_tokens (with priming)."""
        priming = REPLY_PRIMING
        if self._encoding(model) is None:
            priming = round(self._ratio(model) * REPLY_PRIMING)
        return sum(self.count_message(model, message) for message in messages) + priming

    def observe(self, model: str, messages: list[ChatMessage], prompt_tokens: int) -> None:
        """Calibrate a model's estimate by the provider's reported prompt_tokens of a sent prompt.

        A no-op for an exact model once prepared. Pass only what the provider reported, never
        a locally estimated usage, or the estimate calibrates against itself.
        """
        if self._encoding(model) is not None:
            return
        if not messages or prompt_tokens <= 0:  # no prompt is sent without messages
            return
        raw = _raw_prompt(messages)
        low, high = RATIO_BOUNDS
        sample = min(max(prompt_tokens / raw, low), high)
        key = _model_key(model)
        previous = self._ratios.get(key)
        # The first report sets the ratio outright; later ones move it by a fixed share, so
        # one odd prompt cannot swing it far.
        self._ratios[key] = (
            sample if previous is None else previous + SMOOTHING * (sample - previous)
        )

    def _encoding(self, model: str) -> tiktoken.Encoding | None:
        name = encoding_for_model(model)
        return None if name is None else self._encodings.get(name)

    def _ratio(self, model: str) -> float:
        return self._ratios.get(_model_key(model), 1.0)

    def _exact(self, encoding: tiktoken.Encoding, text: str) -> int:
        key = (encoding.name, text)
        tokens = self._texts.get(key)
        if tokens is None:
            # Ordinary text only: a user who types "<|endoftext|>" sends characters, not a token.
            tokens = len(encoding.encode_ordinary(text))
            self._texts[key] = tokens
        return tokens


def _model_key(model: str) -> str:
    return model.strip().lower()


def _raw_text(text: str) -> float:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def _raw_message(message: ChatMessage) -> float:
    tokens = TOKENS_PER_MESSAGE + _raw_text(message_text(message))
    name = message.get("name")
    if name is not None:
        tokens += _raw_text(name) + TOKENS_PER_NAME
    return tokens


def _raw_prompt(messages: list[ChatMessage]) -> float:
    return sum(_raw_message(message) for message in messages) + REPLY_PRIMING
