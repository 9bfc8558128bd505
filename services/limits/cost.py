"""What a model call cost: its usage priced by the price table, in micro-USD.

A call is priced once, when its usage arrives (a turn before its write, a background call
before its count): a dict lookup and integer arithmetic. Prices are held as integer
micro-USD per million tokens, so ``tokens x price`` is the cost in millionths of a micro-USD,
rounded half up to a whole micro-USD per call. A model without a price costs ``None``
(unknown), never a guess.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from services.core.prices import ModelPrice
from services.core.provider_config import Target
from services.core.records import Usage
from services.core.settings import Settings

_SCALE = 1_000_000  # prices in micro-USD per million tokens; a cost in micro-USD


@dataclasses.dataclass(frozen=True, slots=True)
class _Rates:
    input: int  # micro-USD per million tokens
    cached_input: int
    output: int

    @classmethod
    def of(cls, price: ModelPrice) -> _Rates:
        cached = price.input if price.cached_input is None else price.cached_input
        return cls(*(round(value * _SCALE) for value in (price.input, cached, price.output)))


class PriceTable:
    """Prices by model, and a provider's own prices first for the models it names."""

    def __init__(
        self,
        prices: Mapping[str, ModelPrice],
        by_provider: Mapping[str, Mapping[str, ModelPrice]] | None = None,
    ) -> None:
        self._rates = {model: _Rates.of(price) for model, price in prices.items()}
        self._own = {
            (provider, model): _Rates.of(price)
            for provider, table in (by_provider or {}).items()
            for model, price in table.items()
        }

    @classmethod
    def of(cls, settings: Settings) -> PriceTable:
        """MODEL_PRICES (over the shipped list prices) and each provider's ``prices``."""
        return cls(settings.model_prices, {p.name: p.prices for p in settings.llm_providers})

    def cost_micros(self, target: Target | None, usage: Usage) -> int | None:
        """The call's cost in micro-USD, or None when its model has no price."""
        if target is None:
            return None
        rates = self._own.get(target) if self._own else None
        if rates is None:
            rates = self._rates.get(target[1])
            if rates is None:
                return None
        cached = min(usage.cached_tokens, usage.prompt_tokens)
        pico = (
            (usage.prompt_tokens - cached) * rates.input
            + cached * rates.cached_input
            + usage.completion_tokens * rates.output
        )
        return (pico + _SCALE // 2) // _SCALE

    def priced(self, usage: Usage, target: Target | None) -> Usage:
        """``usage`` with its ``cost_micros`` (built directly: ``replace`` inspects fields)."""
        cost = self.cost_micros(target, usage)
        return Usage(
            usage.prompt_tokens, usage.completion_tokens, usage.total_tokens, usage.cached_tokens,
            cost,
        )  # fmt: skip
