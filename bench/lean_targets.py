"""The lean-turn issue's targets, and how one line of ``bench.lean``'s table judges them.

Figures come from ``bench.scenario.overhead_row`` of each (direct, service) pair: a latency
target is each side's p50 over the direct call measured next to it, a throughput target its
turns/s over direct's, an overhead target the difference, and a CPU target HEAD's service CPU
per turn over the baseline's. Several rounds give the median, with every value shown; a CPU
target's ratio is the median of each round's own (the two sides of a round ran one after the
other, so a machine whose speed drifts between rounds moves both alike).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any, Literal

SIDES = ("baseline", "HEAD")


# "latency": service p50 / direct p50; "overhead": service p50 - direct p50; "tps": service
# turns/s / direct turns/s; "cpu": HEAD's service CPU per turn / the baseline's.
Kind = Literal["latency", "overhead", "tps", "cpu"]


@dataclass(frozen=True)
class Target:
    """A target of the issue over one scenario's operation (``op``); ``text`` may name
    ``{users}``, the scenario's number of users (fewer streams in a quick run)."""

    text: str
    scenario: str
    op: str
    kind: Kind
    limit: float
    # Shown for information beside the targets, never judged (no target of the issue).
    informational: bool = False


TARGETS = (
    Target("1 user, LLM 0 ms: JSON turn p50 ≤ 4× direct", "json1", "turn", "latency", 4.0),
    Target("service CPU per JSON turn ≤ 30 % of baseline's", "json1", "turn", "cpu", 0.30),
    Target(
        "service CPU per streamed turn of 200 deltas ≤ 30 % of baseline's",
        "sse200",
        "turn",
        "cpu",
        0.30,
    ),
    Target("64 users × LLM 200 ms: turns/s ≥ 95 % of direct", "users64", "turn", "tps", 0.95),
    Target(
        "{users:,} concurrent SSE streams, LLM 5 s: first-delta p50 ≤ 1.25× direct",
        "streams1000",
        "first delta",
        "latency",
        1.25,
    ),
    Target(
        "(information) the same from asking for the session: start to first delta p50",
        "streams1000",
        "start to first delta",
        "latency",
        math.inf,
        informational=True,
    ),
    Target(
        "Firebase, 32 users × LLM 200 ms: overhead p50 ≤ 25 ms",
        "firebase32",
        "turn",
        "overhead",
        25.0,
    ),
)


# Per kind of target: the direct figure, each side's figure, their unit and decimals.
_FIGURES: dict[Kind, tuple[str | None, str, str, int]] = {
    "latency": ("direct_p50", "service_p50", " ms", 2),
    "overhead": ("direct_p50", "service_p50", " ms", 2),
    "tps": ("direct_tps", "service_tps", " turns/s", 0),
    "cpu": (None, "cpu", " ms CPU", 2),
}


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _divide(a: float, b: float) -> float:
    return a / b if b else float("nan")


def _cell(values: list[float], unit: str, digits: int) -> str:
    """The median, and every value when there are several."""
    text = f"{_median(values):.{digits}f}{unit}"
    if len(values) > 1:
        text += " (" + ", ".join(f"{v:.{digits}f}" for v in values) + ")"
    return text


def _ratio(kind: Kind, row: dict[str, Any]) -> float:
    """What the target bounds, for one (direct, service) pair."""
    if kind == "latency":
        return _divide(row["service_p50"], row["direct_p50"])
    if kind == "overhead":
        return float(row["over_p50"])
    return _divide(row["service_tps"], row["direct_tps"])


def _shown(kind: Kind, ratio: float) -> str:
    if kind == "latency":
        return f"{ratio:.2f}×"
    if kind == "overhead":
        return f"+{ratio:.2f} ms"
    return f"{100 * ratio:.0f} %"


def target_row(target: Target, rows: dict[str, list[dict[str, Any]]], *, text: str) -> str:
    """One line of the targets table from both sides' overhead rows (one per round)."""
    direct_key, key, unit, digits = _FIGURES[target.kind]
    figures = {side: [float(row[key]) for row in rows[side]] for side in SIDES}
    direct = "–"
    if direct_key is not None:
        direct = _cell([row[direct_key] for side in SIDES for row in rows[side]], unit, digits)
    if target.kind == "cpu":  # HEAD against baseline, round by round
        rounds = [_divide(h, b) for b, h in zip(figures["baseline"], figures["HEAD"], strict=True)]
        ratio = _median(rounds)
        shown = _shown(target.kind, ratio)
        if len(rounds) > 1:
            shown += f" ({', '.join(_shown(target.kind, r) for r in rounds)} by round)"
    else:  # each side against the direct call measured next to it
        by = {side: _median([_ratio(target.kind, row) for row in rows[side]]) for side in SIDES}
        ratio = by["HEAD"]
        shown = f"{_shown(target.kind, ratio)} (baseline {_shown(target.kind, by['baseline'])})"
    met = ratio >= target.limit if target.kind == "tps" else ratio <= target.limit
    verdict = "n/a" if math.isnan(ratio) else ("met" if met else "missed")
    if target.informational:
        verdict = "–"
    errors = " / ".join(str(sum(row["errors"] for row in rows[side])) for side in SIDES)
    cells = [text, direct, *(_cell(figures[s], unit, digits) for s in SIDES), shown]
    return "| " + " | ".join([*cells, verdict, errors]) + " |"
