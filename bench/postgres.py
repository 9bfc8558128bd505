"""``python -m bench.postgres``: the PostgreSQL store's turn overhead next to SQLite's, each
beside the direct call to the mock LLM in the same run (docs/performance.md).

Scenarios: 1 user with an instant model (where the store's share of a turn shows most),
1 user and 64 users with a 200 ms model. PostgreSQL runs on a cluster of its own on
127.0.0.1, durable (fsync and synchronous commits on), as SQLite runs with ``FULL`` syncs.

    python -m bench.postgres [--quick]
"""

from __future__ import annotations

import argparse
import logging

from bench.scenario import overhead_row, overhead_table, scenario

logger = logging.getLogger("bench")
SCENARIOS = ((1, 0, 400), (1, 200, 25), (64, 200, 15))  # users, LLM latency ms, turns each


def main(argv: list[str] | None = None) -> None:
    """Run the scenarios on both stores and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer turns (a smoke run)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("httpx", "bench.harness"):
        logging.getLogger(name).setLevel(logging.WARNING)
    rows = []
    for users, latency, turns in SCENARIOS:
        for store in ("sqlite", "postgres"):
            count = max(3, turns // 5) if args.quick else turns
            pair = scenario(
                store=store, users=users, turns=count, latency_ms=latency, warmup_turns=40
            )
            rows.append(overhead_row(f"{store}, {users} user(s), LLM {latency} ms", pair, "turn"))
    logger.info("\nThe store's share of a turn, service vs direct\n%s", overhead_table(rows))


if __name__ == "__main__":
    main()
