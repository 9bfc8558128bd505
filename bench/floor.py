"""The floor beside the service: CPU per JSON turn of a minimal service on the same stack
(``bench.floor_service``), of a baseline commit and of this checkout, in one run.

    python -m bench.floor [--baseline REV] [--rounds N] [--turns N] [--set NAME=VALUE ...]

Each round runs the three, one after the other, in an order that rotates from round to round,
in ``bench.lean``'s json1 scenario (SQLite, 1 user, LLM 0 ms, 40 warm-up turns). A ratio is the
median of each round's own, as in ``bench.lean``: on a machine whose speed drifts, the three
of one round ran within seconds of each other. The table says where the issue's target (30 %
of the baseline's CPU) lies against the floor, which no feature of the service is in.
``--set`` runs HEAD with settings of its own (``--set session_memory=false``: what the
rolling memory's folds cost).
"""

from __future__ import annotations

import argparse
import logging
import statistics
from pathlib import Path
from typing import Any

from bench.harness import REPO
from bench.lean import add_baseline_argument, checkout, describe
from bench.scenario import scenario

logger = logging.getLogger(__name__)
SIDES = ("floor", "baseline", "HEAD")
TARGET = 0.30  # the CPU target: HEAD's CPU per JSON turn over the baseline's


def measure(
    repos: dict[str, Path], *, rounds: int, turns: int, head_settings: dict[str, Any]
) -> dict[str, list[float]]:
    """Each side's service CPU per JSON turn (ms), one value a round; ``head_settings``:
    HEAD's settings beyond the defaults."""
    cpu: dict[str, list[float]] = {side: [] for side in SIDES}
    for round_ in range(rounds):
        order = SIDES[round_ % len(SIDES) :] + SIDES[: round_ % len(SIDES)]
        for side in order:
            logger.info("json1: %s, round %d of %d", side, round_ + 1, rounds)
            _, service = scenario(
                store="sqlite",
                users=1,
                turns=turns,
                latency_ms=0,
                processes=1,
                warmup_turns=40,
                repo=repos[side],
                module="bench.floor_service" if side == "floor" else "api",
                **(head_settings if side == "HEAD" else {}),
            )
            if sum(service["errors"].values()):
                raise RuntimeError(f"{side}: errors {dict(service['errors'])}")
            cpu[side].append(service["service_cpu_ms_per_turn"])
    return cpu


def table(cpu: dict[str, list[float]], labels: dict[str, str]) -> str:
    """Each side's CPU, its ratio to the baseline's and to the floor's, and the target."""

    def ratio(side: str, over: str) -> tuple[float, list[float]]:
        rounds = [a / b for a, b in zip(cpu[side], cpu[over], strict=True)]
        return statistics.median(rounds), rounds

    lines = [
        "| side | CPU per JSON turn, median (by round) | of the baseline's | × the floor's |",
        "|---|---|---|---|",
    ]
    for side in SIDES:
        of_base, base_rounds = ratio(side, "baseline")
        of_floor, floor_rounds = ratio(side, "floor")
        values = ", ".join(f"{v:.2f}" for v in cpu[side])
        lines.append(
            f"| {side} {labels[side]} | {statistics.median(cpu[side]):.2f} ms ({values}) "
            f"| {100 * of_base:.0f} % ({', '.join(f'{100 * r:.0f}' for r in base_rounds)}) "
            f"| {of_floor:.2f}× ({', '.join(f'{r:.2f}' for r in floor_rounds)}) |"
        )
    floor_of_base, _ = ratio("floor", "baseline")
    lines.append(
        f"| the target: {100 * TARGET:.0f} % of the baseline's | "
        f"| {100 * TARGET:.0f} % | {TARGET / floor_of_base:.2f}× |"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Measure the three sides and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_baseline_argument(parser)
    parser.add_argument("--rounds", type=int, default=6, metavar="N", help="default 6")
    parser.add_argument(
        "--turns", type=int, default=400, metavar="N", help="a side's turns (default 400)"
    )
    parser.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="NAME=VALUE",
        help="a setting of HEAD's service (e.g. session_memory=false)",
    )
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.turns < 1:
        parser.error("--rounds and --turns must be at least 1")
    if any("=" not in item for item in args.set):
        parser.error("--set takes NAME=VALUE")
    head_settings = dict(item.split("=", 1) for item in args.set)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("httpx", "bench"):  # "bench": each scenario's own table
        logging.getLogger(name).setLevel(logging.WARNING)
    logger.setLevel(logging.INFO)
    try:
        labels = {
            "floor": "(bench.floor_service)",
            "baseline": f"({describe(args.baseline)})",
            "HEAD": f"({describe('HEAD', worktree=True)}{''.join(f', {s}' for s in args.set)})",
        }
    except RuntimeError as exc:  # an unknown REV, most likely
        parser.error(str(exc))
    with checkout(args.baseline) as baseline:
        repos = {"floor": REPO, "baseline": baseline, "HEAD": REPO}
        cpu = measure(repos, rounds=args.rounds, turns=args.turns, head_settings=head_settings)
    logger.info("\nService CPU per JSON turn: the floor, the baseline and HEAD, in one run")
    logger.info("%s", table(cpu, labels))


if __name__ == "__main__":
    main()
