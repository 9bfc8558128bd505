"""Model prices: what a million tokens cost, and the list prices shipped for the default models.

``DEFAULT_MODEL_PRICES`` are OpenAI's list prices (standard tier, USD per million tokens) as
published on https://openai.com/api/pricing/ (read 2025-08; check them before relying on a
bill). ``MODEL_PRICES`` adds to or replaces them, and a provider of ``LLM_PROVIDERS`` may name
prices of its own (``prices``), which come first for the models it serves.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

MAX_PRICE = 100_000.0  # USD per million tokens: far above any list price, catches unit mix-ups


class ModelPrice(BaseModel):
    """One model's prices, in USD per million tokens."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: float = Field(ge=0, le=MAX_PRICE, description="Prompt tokens not read from a cache")
    cached_input: float | None = Field(
        None, ge=0, le=MAX_PRICE, description="Prompt tokens read from the provider's cache "
        "(null: the input price)"
    )  # fmt: skip
    output: float = Field(ge=0, le=MAX_PRICE, description="Completion tokens")


ModelName = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=r"^\S+$")]
Prices = dict[ModelName, ModelPrice]  # a price table: by the model a provider is asked for


def _price(input: float, cached_input: float, output: float) -> ModelPrice:
    return ModelPrice(input=input, cached_input=cached_input, output=output)


DEFAULT_MODEL_PRICES: dict[str, ModelPrice] = {
    "gpt-4o-mini": _price(0.15, 0.075, 0.60),
    "gpt-4o": _price(2.50, 1.25, 10.00),
    "gpt-4.1": _price(2.00, 0.50, 8.00),
    "gpt-4.1-mini": _price(0.40, 0.10, 1.60),
    "gpt-4.1-nano": _price(0.10, 0.025, 0.40),
    "o4-mini": _price(1.10, 0.275, 4.40),
    "o3": _price(2.00, 0.50, 8.00),
    "o3-mini": _price(1.10, 0.55, 4.40),
}
