"""One configuration measured direct and through the service in the same run (``scenario``),
and the overhead row of the two (``overhead_row``): what ``python -m bench`` and
``python -m bench.lean`` both run."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from bench.harness import REPO, running, start_mock_llm, start_rtdb, start_service
from bench.load import Phase, bench_settings, measure, remove_database, summary_table
from testkit.postgres_server import PostgresServer, postgres_bin

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
    client: str = "httpx",
    llm_flags: Sequence[str] = (),
    warmup_turns: int = 0,
    repo: Path = REPO,
    module: str = "api",
    sampler: Callable[[int], contextlib.AbstractContextManager[object]] | None = None,
    **settings: object,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(direct, service) summaries of one configuration, the service run from ``repo``;
    ``llm_flags`` go to the mock LLM, ``sampler(pid)`` wraps the service phase (a profiler);
    ``client``: the load generator's HTTP library (``bench.load``); ``module``: the service
    to start (``python -m module``; ``bench.floor_service`` for the floor).

    ``warmup_turns``: one user's turns through the service first, not measured, so that its
    one-time work (FastAPI building routes on first use, the first title and memory fold)
    is not counted as the turns' cost."""
    llm_args = ["--latency-ms", str(latency_ms), "--chunks", str(chunks), *llm_flags]
    with running(start_mock_llm(*llm_args)) as llm, postgres_database(store) as database_url:
        rtdb = start_rtdb() if store == "firebase" else None
        if database_url is not None:
            settings = {**settings, "database_url": database_url}
        try:
            config = bench_settings(llm.url, rtdb.url if rtdb else None, **settings)
            with running(start_service(repo=repo, module=module, **config)) as service:
                direct_mode = "direct" if transport == "rest" else "direct-stream"
                base = (service.url, f"{llm.url}/v1")
                if warmup_turns:
                    measure(Phase(transport, 1, warmup_turns, *base, 1, client=client))
                direct = measure(
                    Phase(direct_mode, users, turns, *base, processes, 60, ramp_seconds, client)
                )
                pid = service.popen.pid
                with sampler(pid) if sampler else contextlib.nullcontext():
                    through = measure(
                        Phase(transport, users, turns, *base, processes, 60, ramp_seconds, client),
                        pid,
                    )
            remove_database(config)
        finally:
            if rtdb:
                rtdb.stop()
    for row in (direct, through):
        row.update(store=store, latency_ms=latency_ms)
    logger.info("%s", summary_table([direct, through]))
    return direct, through


@contextlib.contextmanager
def postgres_database(store: str) -> Iterator[str | None]:
    """For ``store="postgres"``, a database on a cluster of its own, durable as in
    production (fsync and synchronous commits on); None for the other stores."""
    if store != "postgres":
        yield None
        return
    bindir = postgres_bin()
    if bindir is None:
        raise RuntimeError("the postgres scenarios need Debian's postgresql package (README)")
    with PostgresServer(bindir, durable=True) as server:
        yield server.create_database("bench")


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


def overhead_table(rows: list[dict[str, Any]]) -> str:
    """The rows of ``overhead_row`` as a Markdown table."""
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
    return "\n".join(lines)
