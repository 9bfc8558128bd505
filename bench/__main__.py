"""``python -m bench``: every benchmark of docs/performance.md, docs/tokens.md,
docs/memory.md, docs/tools.md, docs/streaming.md (stopping) and docs/push.md, one command.

Each scenario starts its own service (``python -m api``), mock LLM and, for Firebase, the
Realtime Database test server (for PostgreSQL, a cluster of its own), all on 127.0.0.1;
measures going direct to the mock and going through the service in the same run; and prints
Markdown tables. ``--quick`` runs fewer turns.
"""

from __future__ import annotations

import argparse
import logging

from bench import conversation, memory, push, roundtrips, stop, store_bytes, tokens, tools
from bench.scenario import overhead_row, overhead_table, scenario

logger = logging.getLogger("bench")


def main() -> None:
    """Run everything and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer turns (a smoke run)")
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        help="memory, bytes, streams1000, roundtrips, tokens, conversation, tools, stop, push",
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="only run bench.lean: the lean-turn targets, this checkout against REV",
    )
    args = parser.parse_args()
    if args.baseline:
        from bench import lean

        lean.main(["--baseline", args.baseline, *(["--quick"] if args.quick else [])])
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("httpx", "bench.harness"):
        logging.getLogger(name).setLevel(logging.WARNING)
    q = 0.2 if args.quick else 1.0

    def n(turns: int) -> int:
        return max(3, int(turns * q))

    rows = []
    for store in ("sqlite", "firebase", "postgres"):
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
    for store in ("sqlite", "firebase", "postgres"):
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

    logger.info("\nOverhead, service vs direct in the same run\n%s", overhead_table(rows))
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
    if "stop" not in args.skip:
        logger.info("\nStopping a reply\n%s", stop.run(n(50)))
    if "push" not in args.skip:
        logger.info("\nTurn latency with push notifications off and on\n%s", push.run(n(200), 2))


if __name__ == "__main__":
    main()
