"""``python -m bench``: every benchmark of docs/performance.md, docs/tokens.md,
docs/memory.md and docs/tools.md, one command.

Each scenario starts its own service (``python -m api``), mock LLM and, for Firebase, the
Realtime Database test server, all on 127.0.0.1; measures going direct to the mock and going
through the service in the same run; and prints Markdown tables. ``--quick`` runs fewer turns.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench import conversation, memory, roundtrips, store_bytes, tokens, tools
from bench.harness import REPO, running, start_mock_llm, start_rtdb, start_service
from bench.load import Phase, bench_settings, measure, summary_table

logger = logging.getLogger("bench")


def scenario(
    *,
    store: str,
    users: int,
    turns: int,
    latency_ms: float,
    transport: str = "rest",
    chunks: int = 4,
    processes: int = 4,
    ramp_seconds: float = 0.0,
    llm_flags: Sequence[str] = (),
    warmup_turns: int = 0,
    repo: Path = REPO,
    sampler: Callable[[int], contextlib.AbstractContextManager[object]] | None = None,
    **settings: object,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(direct, service) summaries of one configuration, the service run from ``repo``;
    ``llm_flags`` go to the mock LLM, ``sampler(pid)`` wraps the service phase (a profiler).

    ``warmup_turns``: one user's turns through the service first, not measured, so that its
    one-time work (FastAPI building routes on first use, the first title and memory fold)
    is not counted as the turns' cost."""
    llm_args = ["--latency-ms", str(latency_ms), "--chunks", str(chunks), *llm_flags]
    with running(start_mock_llm(*llm_args)) as llm:
        rtdb = start_rtdb() if store == "firebase" else None
        try:
            config = bench_settings(llm.url, rtdb.url if rtdb else None, **settings)
            with running(start_service(repo=repo, **config)) as service:
                direct_mode = "direct" if transport == "rest" else "direct-stream"
                base = (service.url, f"{llm.url}/v1")
                if warmup_turns:
                    measure(Phase(transport, 1, warmup_turns, *base, 1))
                direct = measure(
                    Phase(direct_mode, users, turns, *base, processes, 60, ramp_seconds)
                )
                pid = service.popen.pid
                with sampler(pid) if sampler else contextlib.nullcontext():
                    through = measure(
                        Phase(transport, users, turns, *base, processes, 60, ramp_seconds), pid
                    )
        finally:
            if rtdb:
                rtdb.stop()
    for row in (direct, through):
        row.update(store=store, latency_ms=latency_ms)
    logger.info("%s", summary_table([direct, through]))
    return direct, through


def overhead_row(name: str, pair: tuple[dict[str, Any], dict[str, Any]], op: str) -> dict[str, Any]:
    """Service minus direct, side by side."""
    direct, through = pair
    d, t = direct["ops"][op], through["ops"][op]
    return {
        "name": name,
        "direct_p50": d["p50"],
        "service_p50": t["p50"],
        "over_p50": t["p50"] - d["p50"],
        "over_p99": t["p99"] - d["p99"],
        "direct_tps": direct["turns_per_s"],
        "service_tps": through["turns_per_s"],
        "cpu": through["service_cpu_ms_per_turn"],
        "errors": sum(through["errors"].values()),
    }


def main() -> None:
    """Run everything and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer turns (a smoke run)")
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        help="memory, bytes, streams1000, roundtrips, tokens, conversation, tools",
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="only run bench.lean: the lean-turn targets, this checkout against REV",
    )
    args = parser.parse_args()
    if args.baseline:
        from bench import lean  # imports this module's scenario helpers

        lean.main(["--baseline", args.baseline, *(["--quick"] if args.quick else [])])
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("httpx", "bench.harness"):
        logging.getLogger(name).setLevel(logging.WARNING)
    q = 0.2 if args.quick else 1.0

    def n(turns: int) -> int:
        return max(3, int(turns * q))

    rows = []
    for store in ("sqlite", "firebase"):
        for users, latency, turns in ((1, 0, 400), (1, 200, 25), (32, 0, 25), (32, 200, 10)):
            pair = scenario(store=store, users=users, turns=n(turns), latency_ms=latency)
            rows.append(overhead_row(f"{store}, {users} user(s), LLM {latency} ms", pair, "turn"))
    pair = scenario(store="sqlite", users=1, turns=n(40), latency_ms=200, transport="sse")
    rows.append(overhead_row("sqlite, SSE time to first delta, LLM 200 ms", pair, "first delta"))
    for workers in (1, 2):
        pair = scenario(
            store="sqlite", users=64, turns=n(40), latency_ms=0, web_concurrency=workers
        )
        name = f"sqlite, 64 users, LLM 0 ms (throughput), {workers} worker(s)"
        rows.append(overhead_row(name, pair, "turn"))
    for store in ("sqlite", "firebase"):
        pair = scenario(store=store, users=64, turns=n(15), latency_ms=200)
        rows.append(overhead_row(f"{store}, 64 users, LLM 200 ms", pair, "turn"))
    if "streams1000" not in args.skip:
        pair = scenario(
            store="sqlite",
            users=1000,
            turns=1,
            latency_ms=5000,
            transport="sse",
            processes=4,
            ramp_seconds=1.0,
        )
        rows.append(
            overhead_row("sqlite, 1,000 concurrent SSE streams, LLM 5 s", pair, "first delta")
        )

    lines = [
        "| scenario | direct p50 ms | service p50 ms | overhead p50 ms | overhead p99 ms "
        "| direct turns/s | service turns/s | service/direct | service CPU ms/turn | errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = 100 * r["service_tps"] / r["direct_tps"] if r["direct_tps"] else 0
        lines.append(
            f"| {r['name']} | {r['direct_p50']:.2f} | {r['service_p50']:.2f} "
            f"| {r['over_p50']:.2f} | {r['over_p99']:.2f} | {r['direct_tps']:.0f} "
            f"| {r['service_tps']:.0f} | {ratio:.0f} % | {r['cpu']:.2f} | {r['errors']} |"
        )
    logger.info("\nOverhead, service vs direct in the same run\n%s", "\n".join(lines))
    if "memory" not in args.skip:
        memory.main()
    if "bytes" not in args.skip:
        store_bytes.main_with(turns=200)
    if "roundtrips" not in args.skip:
        roundtrips.main(["--turns", str(n(40))])
    if "tokens" not in args.skip:
        tokens.main(["--conversations", str(n(20))])
    if "conversation" not in args.skip:
        conversation.main(["--turns", str(n(500)), "--show-turn", str(n(300))])
    if "tools" not in args.skip:
        tools.main(["--turns", str(n(400)), "--tool-turns", str(n(60))])


if __name__ == "__main__":
    main()
