"""``python -m bench.lean``: the lean-turn targets, this checkout against an earlier commit.

The earlier commit (``--baseline``, default a553ade, the code before the lean-turn work) is
checked out into a temporary git worktree. Each scenario then runs for the baseline and for
this checkout (HEAD), alternating (four rounds for CPU per turn, two for 64 users and
Firebase; ``--rounds N`` for every chosen scenario), the side that goes first changing from
round to round: each run goes direct to the mock LLM, then through that side's service,
started as the Procfile starts it with the service's defaults and settings from the
environment only. The mock LLM and the Realtime Database test server are this checkout's
for both. Prints the per-phase tables, the targets side by side, and the top functions of a
py-spy profile of each side's service during the 1-user JSON scenario.

    python -m bench.lean [--baseline REV] [--quick] [--only json1 sse200] [--no-profile]
                         [--client httpx|aiohttp] [--rounds N]

``--client aiohttp`` runs the load generator on aiohttp instead of httpx (the client the
targets were set with): a lighter client, for seeing what the service costs when the clients
do not take most of the machine (docs/performance.md, "The load generator").
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import pyspy
from bench.harness import REPO
from bench.lean_targets import SIDES, TARGETS, target_row
from bench.load import summary_table
from bench.scenario import overhead_row, scenario

logger = logging.getLogger(__name__)
DEFAULT_BASELINE = "a553ade"
Pair = tuple[dict[str, Any], dict[str, Any]]


@dataclass(frozen=True, kw_only=True)
class Spec:
    """One scenario: what ``bench.scenario.scenario`` runs, and how many rounds per side."""

    name: str
    title: str
    users: int
    turns: int
    store: str = "sqlite"
    latency_ms: float = 0
    transport: str = "rest"
    chunks: int = 4
    reply: str | None = None  # the mock's fixed reply, instead of its echo
    ramp_seconds: float = 0.0
    # Baseline/HEAD alternations: 4 where CPU per turn is compared, 2 for the 64-user and
    # Firebase rows, whose one-run figures moved by more than their margins (94-96 %,
    # +10 to +33 ms on the same code); the 1,000 streams take 5 minutes a round.
    rounds: int = 1
    # One user's unmeasured turns first. Measured at a553ade, 1 user, LLM 0 ms: after 10 such
    # turns the next 80 still cost 5.0 ms of CPU each, after 40 they cost 3.25, as every 80
    # after that (one-time work, not a turn's cost; idling 15 s first changed nothing).
    warmup_turns: int = 40


def specs(quick: bool) -> list[Spec]:
    """The scenarios; ``quick`` scales the turns (and the 1,000 streams) down."""

    def n(turns: int) -> int:
        return max(3, int(turns * (0.2 if quick else 1.0)))

    return [
        # Four rounds for the CPU rows: on this shared machine one round's ratio moves by
        # ±15 % (measured: 0.71-1.09 over eight pairs of the same two commits).
        Spec(name="json1", title="SQLite, 1 user, LLM 0 ms, JSON", users=1, turns=n(400), rounds=4),
        # The mock splits a reply into at most one chunk per character: a fixed reply of 200
        # characters in 200 chunks makes 200 deltas every turn (its echo of a message would
        # give fewer, and the service trims the message's trailing space).
        Spec(
            name="sse200",
            title="SQLite, 1 user, LLM 0 ms, SSE of 200 deltas",
            users=1,
            turns=n(100),
            transport="sse",
            chunks=200,
            reply=("lorem ipsum dolor sit amet " * 8)[:200],
            rounds=4,
        ),
        Spec(
            name="users64",
            title="SQLite, 64 users, LLM 200 ms, JSON",
            users=64,
            turns=n(15),
            latency_ms=200,
            warmup_turns=10,  # of 200 ms each; this target is about throughput, not CPU
            rounds=2,
        ),
        Spec(
            name="streams1000",
            title="SQLite, concurrent SSE streams, LLM 5 s",
            users=200 if quick else 1000,
            turns=1,
            latency_ms=5000,
            transport="sse",
            ramp_seconds=1.0,
            warmup_turns=1,  # of 5 s each
        ),
        Spec(
            name="firebase32",
            title="Firebase, 32 users, LLM 200 ms, JSON",
            store="firebase",
            users=32,
            turns=n(10),
            latency_ms=200,
            warmup_turns=10,
            rounds=2,
        ),
    ]


@contextlib.contextmanager
def checkout(rev: str) -> Iterator[Path]:
    """``rev`` in a temporary detached git worktree, removed on exit (also on error)."""
    folder = Path(tempfile.mkdtemp(prefix="chatify-baseline-"))
    path = folder / "checkout"
    try:
        _git("worktree", "add", "--detach", str(path), rev)
        try:
            yield path
        finally:
            _git("worktree", "remove", "--force", str(path))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout.strip()


def add_baseline_argument(parser: argparse.ArgumentParser) -> None:
    """``--baseline REV``, the commit to compare against (this bench's and ``bench.floor``'s)."""
    parser.add_argument(
        "--baseline",
        default=DEFAULT_BASELINE,
        metavar="REV",
        help=f"the commit to compare against (default {DEFAULT_BASELINE})",
    )


def describe(rev: str, *, worktree: bool = False) -> str:
    """A short commit id; with ``worktree`` (the code run is this checkout's files, not a
    clean checkout of ``rev``), ``+changes`` when they hold uncommitted edits."""
    short = _git("rev-parse", "--short", f"{rev}^{{commit}}")
    if worktree and _git("status", "--porcelain", "--untracked-files=no"):
        short += "+changes"
    return short


@dataclass
class Run:
    """Every (direct, service) pair measured, by scenario and side, plus the profiles."""

    pairs: dict[tuple[str, str], list[Pair]]
    profiles: dict[str, pyspy.Profile]


def run_all(
    chosen: list[Spec],
    repos: dict[str, Path],
    *,
    profile: bool,
    spool: Path,
    client: str = "httpx",
    rounds: int | None = None,
) -> Run:
    """Each scenario on both sides, ``rounds`` times (the spec's by default), baseline first
    in odd rounds and HEAD first in even ones; py-spy on json1's service phase."""
    result = Run({}, {side: pyspy.Profile() for side in SIDES})
    for spec in chosen:
        total = rounds or spec.rounds
        for round_ in range(1, total + 1):
            for side in SIDES if round_ % 2 else SIDES[::-1]:
                logger.info("%s: %s, round %d of %d", spec.name, side, round_, total)
                output = spool / f"{spec.name}-{side}-{round_}.raw"
                sampler = _sampler(output) if profile and spec.name == "json1" else None
                pair = scenario(
                    store=spec.store,
                    users=spec.users,
                    turns=spec.turns,
                    latency_ms=spec.latency_ms,
                    transport=spec.transport,
                    chunks=spec.chunks,
                    ramp_seconds=spec.ramp_seconds,
                    client=client,
                    llm_flags=["--reply", spec.reply] if spec.reply else [],
                    warmup_turns=spec.warmup_turns,
                    repo=repos[side],
                    sampler=sampler,
                )
                result.pairs.setdefault((spec.name, side), []).append(pair)
                if output.exists():
                    roots = (repos[side].resolve(),)
                    result.profiles[side].add_raw(output.read_text(), roots=roots)
    return result


def _sampler(output: Path) -> Callable[[int], contextlib.AbstractContextManager[None]]:
    def sample(pid: int) -> contextlib.AbstractContextManager[None]:
        return pyspy.recording(pid, output)

    return sample


def report(run: Run, chosen: list[Spec], labels: dict[str, str], *, profile: bool) -> None:
    """Log the per-phase tables, the targets table and the profiles."""
    for spec in chosen:
        phases = []
        for side in SIDES:
            for round_, (direct, through) in enumerate(run.pairs[(spec.name, side)], 1):
                for row in (direct, through):
                    phases.append({**row, "mode": f"{side} #{round_}: {row['mode']}"})
        logger.info("\n%s (%s)\n%s", spec.title, spec.name, summary_table(phases))
    logger.info(
        "\nLean turn targets, side by side in one run\n%s", targets_table(run, chosen, labels)
    )
    if profile and any(spec.name == "json1" for spec in chosen):
        for side in SIDES:
            prof = run.profiles[side]
            if not prof.total:
                logger.info("\nNo profile of %s %s (py-spy did not sample)", side, labels[side])
                continue
            logger.info(
                "\nProfile, %s %s, 1-user JSON scenario: top 10 functions by cumulative CPU "
                "(%d samples at %d Hz of the thread holding the GIL; entry frames left out)\n%s",
                side,
                labels[side],
                prof.total,
                pyspy.RATE_HZ,
                pyspy.profile_table(prof),
            )


def targets_table(run: Run, chosen: list[Spec], labels: dict[str, str]) -> str:
    """Per target of the chosen scenarios: direct, baseline, HEAD, the ratio, met or missed."""
    lines = [
        f"| target | direct | baseline {labels['baseline']} | HEAD {labels['HEAD']} "
        "| HEAD's ratio (baseline's) | verdict | errors baseline / HEAD |",
        "|---|---|---|---|---|---|---|",
    ]
    by_name = {spec.name: spec for spec in chosen}
    for target in (t for t in TARGETS if t.scenario in by_name):
        text = target.text.format(users=by_name[target.scenario].users)
        pairs = {side: run.pairs[(target.scenario, side)] for side in SIDES}
        measured = (row for side in SIDES for pair in pairs[side] for row in pair)
        if any(target.op not in row["ops"] for row in measured):
            lines.append(f"| {text} | no {target.op} measured: see the errors above |")
            continue
        rows = {
            side: [overhead_row(target.scenario, pair, target.op) for pair in pairs[side]]
            for side in SIDES
        }
        lines.append(target_row(target, rows, text=text))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run the chosen scenarios against both checkouts and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_baseline_argument(parser)
    parser.add_argument("--quick", action="store_true", help="fewer turns (a smoke run)")
    names = [spec.name for spec in specs(quick=False)]
    parser.add_argument("--only", nargs="+", choices=names, metavar="NAME", help=", ".join(names))
    parser.add_argument(
        "--profile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="py-spy each service during json1 and print its top 10 functions (default on)",
    )
    parser.add_argument(
        "--client",
        choices=["httpx", "aiohttp"],
        default="httpx",
        help="the load generator's HTTP library (default httpx, as the targets were set)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        metavar="N",
        help="rounds per side for every chosen scenario (default: each scenario's own)",
    )
    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("httpx", "bench"):  # "bench": each scenario's own table, reprinted labelled
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in (__name__, pyspy.__name__):
        logging.getLogger(name).setLevel(logging.INFO)
    chosen = [spec for spec in specs(args.quick) if not args.only or spec.name in args.only]
    if args.quick:
        logger.info("--quick: a smoke run (fewer turns, 200 streams instead of 1,000)")
    try:
        labels = {
            "baseline": f"({describe(args.baseline)})",
            "HEAD": f"({describe('HEAD', worktree=True)})",
        }
    except RuntimeError as exc:  # an unknown REV, most likely: say so, not a traceback
        parser.error(str(exc))
    with checkout(args.baseline) as baseline, tempfile.TemporaryDirectory() as spool:
        logger.info("baseline %s checked out in %s", labels["baseline"], baseline)
        logger.info("load generator: %s", args.client)
        repos = {"baseline": baseline, "HEAD": REPO}
        run = run_all(
            chosen,
            repos,
            profile=args.profile,
            spool=Path(spool),
            client=args.client,
            rounds=args.rounds,
        )
    report(run, chosen, labels, profile=args.profile)


if __name__ == "__main__":
    main()
