"""Soak: steady load on a service process (SQLite) for a bounded time, sampling its memory,
file descriptors, threads and live totals, to show that nothing grows without bound.

Virtual users create sessions continuously (each with unique user), send a few turns paced to
a fixed total rate, then end half of their sessions and leave the other half idle, so that idle
eviction (SESSION_IDLE_TIMEOUT_SECONDS=5, EVICTION_INTERVAL_SECONDS=1) always has work.
Samples come from /proc/PID (VmRSS, Threads, fd/) and GET /api/v1/admin/stats. The verdict
compares the averages of the first and last thirds of the samples; the exit status is non-zero
when anything is not flat, any turn failed, or the load fell short of the target rate.

    python -m bench.soak --minutes 10
    python -m bench.soak --minutes 1   # a quick run
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.harness import running, start_mock_llm, start_service
from bench.load import bench_settings, table

logger = logging.getLogger("bench.soak")
API = "/api/v1/chatbot"
RSS_TOLERANCE = 0.10  # flat: last third within 10% of the first third
# Small counts also get an absolute allowance, so 20 -> 23 fds is not "15% growth".
ABSOLUTE_SLACK = {"fds": 3.0, "threads": 2.0, "cached_sessions": 20.0}


@dataclass
class Sample:
    """One reading of the service process."""

    at: float
    rss_mb: float
    fds: int
    threads: int
    cached_sessions: int
    turns_in_flight: int
    turns: int
    errors: int


@dataclass
class Totals:
    """What the virtual users did."""

    turns: int = 0
    sessions: int = 0
    errors: Counter[str] = field(default_factory=Counter)


class Pacer:
    """Hands out evenly spaced start times: ``rate`` per second across all users."""

    def __init__(self, rate: float) -> None:
        self._interval = 1.0 / rate
        self._next = time.monotonic()

    async def wait(self) -> None:
        """Sleep until this caller's slot (pacing the load, not waiting for a condition)."""
        now = time.monotonic()
        slot = max(now, self._next)
        self._next = slot + self._interval
        await asyncio.sleep(slot - now)


def read_proc(pid: int) -> tuple[float, int, int]:
    """RSS in MB, open file descriptors and threads of a process."""
    fields = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            fields[name] = value.split()
    rss_mb = int(fields["VmRSS"][0]) / 1024
    return rss_mb, len(os.listdir(f"/proc/{pid}/fd")), int(fields["Threads"][0])


async def user(
    client: httpx.AsyncClient,
    number: int,
    turns_per_session: int,
    pacer: Pacer,
    deadline: float,
    totals: Totals,
) -> None:
    """Sessions one after another until the deadline: create, a few turns, end every other."""
    session_number = 0
    while time.monotonic() < deadline:
        session_number += 1
        user_id = f"soak-{number}-{session_number}"
        created = await client.post(f"{API}/session", json={"user_id": user_id})
        if created.status_code != 201:
            totals.errors[f"create {created.status_code}"] += 1
            await pacer.wait()
            continue
        totals.sessions += 1
        session_id = created.json()["session_id"]
        for turn in range(turns_per_session):
            await pacer.wait()
            if time.monotonic() >= deadline:
                return
            response = await client.post(
                f"{API}/session/{session_id}/message",
                json={"message": f"{user_id} turn {turn}", "client_message_id": f"t{turn}"},
            )
            if response.status_code == 200:
                totals.turns += 1
            else:
                totals.errors[f"turn {response.status_code}"] += 1
        if session_number % 2:
            ended = await client.delete(f"{API}/session/{session_id}")
            if ended.status_code != 200:
                totals.errors[f"end {ended.status_code}"] += 1


async def sampler(
    client: httpx.AsyncClient,
    pid: int,
    interval: float,
    deadline: float,
    totals: Totals,
    samples: list[Sample],
) -> None:
    """A sample every ``interval`` seconds until the deadline."""
    started = time.monotonic()
    while time.monotonic() + interval <= deadline:
        await asyncio.sleep(interval)  # pacing the samples
        stats = (await client.get("/api/v1/admin/stats")).json()
        rss_mb, fds, threads = read_proc(pid)
        samples.append(
            Sample(
                at=time.monotonic() - started,
                rss_mb=rss_mb,
                fds=fds,
                threads=threads,
                cached_sessions=int(stats["cached_sessions"]),
                turns_in_flight=int(stats["turns_in_flight"]),
                turns=totals.turns,
                errors=sum(totals.errors.values()),
            )
        )


def verdict(samples: list[Sample]) -> list[tuple[str, float, float, bool]]:
    """(metric, first-third average, last-third average, flat) for each watched metric."""
    third = max(1, len(samples) // 3)
    first, last = samples[:third], samples[-third:]
    rows = []
    for metric in ("rss_mb", "fds", "threads", "cached_sessions"):
        before = statistics.fmean(float(getattr(s, metric)) for s in first)
        after = statistics.fmean(float(getattr(s, metric)) for s in last)
        allowed = before * (1 + RSS_TOLERANCE) + ABSOLUTE_SLACK.get(metric, 0.0)
        rows.append((metric, before, after, after <= allowed))
    return rows


async def soak(args: argparse.Namespace) -> bool:
    """Run the soak; True when everything stayed flat and healthy."""
    duration = args.minutes * 60
    interval = args.interval or max(2.0, duration / 60)
    with running(start_mock_llm("--latency-ms", str(args.latency_ms))) as llm:
        settings = bench_settings(
            llm.url,
            None,
            session_idle_timeout_seconds=5,
            eviction_interval_seconds=1,
            auth_mode="none",
        )
        folder = tempfile.TemporaryDirectory(prefix="chatify-soak-")
        settings["sqlite_path"] = str(Path(folder.name) / "chatify.db")
        with folder, running(start_service(**settings)) as service:
            pid = service.popen.pid
            logger.info(
                "soak: %.1f min, %d users, %.0f turns/s, %d turns a session, pid %d, %s",
                args.minutes,
                args.users,
                args.rate,
                args.turns_per_session,
                pid,
                settings["sqlite_path"],
            )
            totals, samples = Totals(), list[Sample]()
            limits = httpx.Limits(max_connections=args.users + 4)
            async with httpx.AsyncClient(base_url=service.url, timeout=30, limits=limits) as client:
                start = time.monotonic()
                deadline = start + duration
                pacer = Pacer(args.rate)
                warm = asyncio.create_task(asyncio.sleep(args.warmup))
                users = [
                    asyncio.create_task(
                        user(client, n, args.turns_per_session, pacer, deadline, totals)
                    )
                    for n in range(args.users)
                ]
                await warm
                turns_at_warm = totals.turns
                await sampler(client, pid, interval, deadline, totals, samples)
                await asyncio.wait_for(asyncio.gather(*users), timeout=60)
                measured = time.monotonic() - start - args.warmup
            rss_final, fds_final, threads_final = read_proc(pid)

    logger.info(
        "\n%s",
        table(
            [vars(s) for s in samples],
            [
                ("t (s)", lambda r: f"{r['at']:.0f}"),
                ("RSS MB", lambda r: f"{r['rss_mb']:.1f}"),
                ("fds", lambda r: str(r["fds"])),
                ("threads", lambda r: str(r["threads"])),
                ("cached sessions", lambda r: str(r["cached_sessions"])),
                ("turns in flight", lambda r: str(r["turns_in_flight"])),
                ("turns", lambda r: str(r["turns"])),
                ("errors", lambda r: str(r["errors"])),
            ],
        ),
    )
    rate = (totals.turns - turns_at_warm) / measured if measured > 0 else 0.0
    rows = verdict(samples) if len(samples) >= 3 else []
    logger.info(
        "\n%s",
        table(
            [{"m": m, "b": b, "a": a, "ok": ok} for m, b, a, ok in rows],
            [
                ("metric", lambda r: r["m"]),
                ("first third", lambda r: f"{r['b']:.1f}"),
                ("last third", lambda r: f"{r['a']:.1f}"),
                ("change", lambda r: f"{(r['a'] - r['b']) / r['b'] * 100 if r['b'] else 0:+.1f}%"),
                ("flat", lambda r: "yes" if r["ok"] else "NO"),
            ],
        ),
    )
    logger.info(
        "turns %d (%.1f/s of %.0f/s target), sessions %d, errors %s; at the end RSS %.1f MB, "
        "%d fds, %d threads",
        totals.turns,
        rate,
        args.rate,
        totals.sessions,
        dict(totals.errors) or 0,
        rss_final,
        fds_final,
        threads_final,
    )
    problems = [f"{m} not flat ({b:.1f} -> {a:.1f})" for m, b, a, ok in rows if not ok]
    if len(samples) < 3:
        problems.append(f"only {len(samples)} samples: run longer")
    if totals.errors:
        problems.append(f"{sum(totals.errors.values())} failed requests")
    if rate < 0.9 * args.rate:
        problems.append(f"load fell short: {rate:.1f} turns/s")
    if problems:
        logger.error("VERDICT: NOT FLAT: %s", "; ".join(problems))
    else:
        logger.info("VERDICT: flat (RSS within 10%, fds, threads and cached sessions flat)")
    return not problems


def main() -> None:
    """Command-line entry point; exits 1 when the verdict is not flat."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="total run time")
    parser.add_argument("--users", type=int, default=8, help="virtual users")
    parser.add_argument("--rate", type=float, default=50.0, help="turns per second, in total")
    parser.add_argument("--turns-per-session", type=int, default=5)
    parser.add_argument("--latency-ms", type=float, default=20.0, help="mock LLM latency")
    parser.add_argument("--interval", type=float, default=None, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds before sampling")
    args = parser.parse_args()
    if args.minutes * 60 < args.warmup + 20:
        parser.error("--minutes must leave at least 20 s after the warm-up")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    ok = False
    with contextlib.suppress(KeyboardInterrupt):
        ok = asyncio.run(soak(args))
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
