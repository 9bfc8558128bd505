"""Counters of spent tokens and their cost: a session's totals, a user's UTC day, and the
share of either that one route target served (re-exported by ``records``)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.core.records import Usage

# Every counter, in the order of the records' fields (and of the stores' columns).
COUNTS = (
    "prompt_tokens",
    "completion_tokens",
    "turns",
    "calls",
    "cost_micros",
    "calls_cost_micros",
    "priced",
)


def counts_of(usage: Usage | None, *, turns: int = 0, calls: int = 0) -> tuple[int, ...]:
    """What a stored turn (``turns=1``) or a background call (``calls=1``) adds to each of
    ``COUNTS``: a cost not known (None, or no usage) adds nothing, and is not ``priced``."""
    cost = usage.cost_micros if usage is not None else None
    priced = cost or 0
    return (
        usage.prompt_tokens if usage is not None else 0,
        usage.completion_tokens if usage is not None else 0,
        turns,
        calls,
        priced,
        priced if calls else 0,
        0 if cost is None else turns + calls,
    )


class _Counted:
    """Counters of spent tokens (``UsageTotals``, ``DayUsage``, ``ModelUsage``).

    Their cost is in micro-USD (millionths of a US dollar): ``cost_micros`` adds up every
    counted turn and background call whose cost was known, ``calls_cost_micros`` is the
    background calls' part of it, and ``priced`` counts those turns and calls; the others (a
    model without a price, or counted before costs were) are ``unpriced``."""

    __slots__ = ()
    prompt_tokens: int
    completion_tokens: int
    turns: int
    calls: int
    cost_micros: int
    priced: int

    @property
    def total_tokens(self) -> int:
        """Prompt and completion tokens together."""
        return self.prompt_tokens + self.completion_tokens

    @property
    def unpriced(self) -> int:
        """Turns and calls whose cost is not known, left out of ``cost_micros``."""
        return self.turns + self.calls - self.priced

    @property
    def known_cost(self) -> int | None:
        """``cost_micros``, or None when nothing counted had a known cost."""
        return None if self.priced == 0 and self.unpriced else self.cost_micros


@dataclass(frozen=True, slots=True)
class ModelUsage(_Counted):
    """The share of a session's totals or a user's day that one route target served: a
    provider and the model it was asked for."""

    provider: str
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    turns: int = 0
    calls: int = 0
    cost_micros: int = 0
    calls_cost_micros: int = 0
    priced: int = 0


def by_target(shares: Iterable[ModelUsage]) -> tuple[ModelUsage, ...]:
    """Shares in a stable order: by provider, then model."""
    return tuple(sorted(shares, key=lambda share: (share.provider, share.model)))


@dataclass(frozen=True, slots=True)
class UsageTotals(_Counted):
    """Tokens a session spent, and their cost: its turns' and its background calls' (titles,
    memory)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    turns: int = 0
    calls: int = 0
    cost_micros: int = 0
    calls_cost_micros: int = 0
    priced: int = 0
    # The same, per route target (``by_target`` order).
    by_model: tuple[ModelUsage, ...] = field(default=(), kw_only=True)


@dataclass(frozen=True, slots=True)
class DayUsage(_Counted):
    """What a user spent on one UTC day (``YYYY-MM-DD``): turns, and background calls."""

    day: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    turns: int = 0
    calls: int = 0
    cost_micros: int = 0
    calls_cost_micros: int = 0
    priced: int = 0
    # The same, per route target; read only when asked for (``load_usage``).
    by_model: tuple[ModelUsage, ...] = field(default=(), kw_only=True)
