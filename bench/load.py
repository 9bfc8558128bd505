"""Load: virtual users that create a session, send K turns one after another and end it, over
REST or SSE; and, in the same run, the same chat completions with the same growing histories
sent straight to the LLM, so the service's overhead is a difference measured side by side.

Virtual users are spread over several client processes so that the client is not the
bottleneck; each phase reports the clients' CPU use next to the service's. They speak httpx
by default, the client the lean-turn targets were set with; ``client="aiohttp"`` (``--client
aiohttp``) is the lighter load generator: with httpx, 1,000 streams took 1.2 of this
machine's 2 cores in the clients alone, so that row measured their contention as much as
the service (docs/performance.md, "The load generator").

    python -m bench.load --users 32 --turns 20 --latency-ms 200 --store sqlite
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import functools
import json
import logging
import multiprocessing
import os
import shutil
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx

logger = logging.getLogger("bench.load")
SYSTEM_PROMPT = "x" * 1100  # about the size of a seed personality with the universal rules
CONTEXT = 10
# Through the service: from asking for a session to its first turn's first delta (what a user
# who opens a chat waits for); direct, the first turn's first delta (there is no session).
FROM_START = "start to first delta"


@dataclass
class Phase:
    """One measured run: what to do and against what."""

    mode: str  # "rest", "sse", "direct", "direct-stream"
    users: int
    turns: int
    base_url: str
    llm_url: str
    processes: int = 4
    message_chars: int = 60
    ramp_seconds: float = 0.0  # virtual users start spread over this time
    client: str = "httpx"  # or "aiohttp": see the module docstring


@dataclass
class Result:
    """Latencies by operation (ms), errors, wall time and CPU of the clients."""

    ops: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    wall: float = 0.0
    client_cpu: float = 0.0
    turns: int = 0

    def merge(self, other: Result) -> None:
        """Add another process's numbers."""
        for op, values in other.ops.items():
            self.ops[op].extend(values)
        for code, count in other.errors.items():
            self.errors[code] += count
        self.client_cpu += other.client_cpu
        self.turns += other.turns


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def message(user: int, turn: int, chars: int) -> str:
    """A user message of a fixed length."""
    text = f"user {user} says turn {turn}: "
    return (text + "lorem ipsum dolor sit amet " * 10)[:chars]


class _Client:
    """What a virtual user needs of an HTTP client; one implementation per library, so that
    the users below are the same code whichever measures."""

    async def send(self, method: str, url: str, body: Any = None) -> tuple[int, bytes]:
        raise NotImplementedError

    def stream(
        self, url: str, body: Any
    ) -> contextlib.AbstractAsyncContextManager[tuple[int, AsyncIterator[str]]]:
        """A POST whose answer is read a line at a time: (status, lines)."""
        raise NotImplementedError


class _Httpx(_Client):
    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def send(self, method: str, url: str, body: Any = None) -> tuple[int, bytes]:
        response = await self._client.request(method, url, json=body)
        return response.status_code, response.content

    @contextlib.asynccontextmanager
    async def stream(self, url: str, body: Any) -> AsyncIterator[tuple[int, AsyncIterator[str]]]:
        async with self._client.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                await response.aread()
            yield response.status_code, response.aiter_lines()


class _Aiohttp(_Client):
    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    async def send(self, method: str, url: str, body: Any = None) -> tuple[int, bytes]:
        async with self._session.request(method, url, json=body) as response:
            return response.status, await response.read()

    @contextlib.asynccontextmanager
    async def stream(self, url: str, body: Any) -> AsyncIterator[tuple[int, AsyncIterator[str]]]:
        async with self._session.post(url, json=body) as response:
            if response.status != 200:
                await response.read()
            yield response.status, _lines(response.content)


async def _lines(content: aiohttp.StreamReader) -> AsyncIterator[str]:
    async for line in content:  # one line at a time, its newline kept
        yield line.decode()


@contextlib.asynccontextmanager
async def _client(phase: Phase, users: int) -> AsyncIterator[_Client]:
    """The phase's client library, holding a connection per user (and a few more)."""
    if phase.client == "aiohttp":
        connector = aiohttp.TCPConnector(limit=users + 10)
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            yield _Aiohttp(session)
        return
    if phase.client != "httpx":
        raise ValueError(f"unknown load client {phase.client!r}: httpx or aiohttp")
    limits = httpx.Limits(max_connections=users + 10, max_keepalive_connections=users)
    async with httpx.AsyncClient(limits=limits, timeout=120) as client:
        yield _Httpx(client)


async def _user_service(phase: Phase, client: _Client, user: int, out: Result) -> None:
    base = f"{phase.base_url}/api/v1/chatbot/session"
    started = opened = time.perf_counter()
    code, answer = await client.send("POST", base, {"user_id": f"load-{os.getpid()}-{user}"})
    out.ops["create"].append((time.perf_counter() - started) * 1000)
    if code != 201:
        out.errors[f"create {code}"] += 1
        return
    session = f"{base}/{json.loads(answer)['session_id']}"
    for turn in range(phase.turns):
        body = {"message": message(user, turn, phase.message_chars)}
        started = time.perf_counter()
        if phase.mode == "rest":
            code, _ = await client.send("POST", f"{session}/message", body)
        else:
            code, first = await _sse_turn(client, f"{session}/message/stream", body, started, out)
            if turn == 0 and first is not None:  # what a user opening a chat waits for
                out.ops[FROM_START].append((first - opened) * 1000)
        out.ops["turn"].append((time.perf_counter() - started) * 1000)
        if code == 200:
            out.turns += 1
        else:
            out.errors[f"turn {code}"] += 1
    started = time.perf_counter()
    code, _ = await client.send("DELETE", session)
    out.ops["end"].append((time.perf_counter() - started) * 1000)
    if code != 200:
        out.errors[f"end {code}"] += 1


async def _sse_turn(
    client: _Client, url: str, body: dict[str, Any], started: float, out: Result
) -> tuple[int, float | None]:
    """The turn's status (599: an error event, 598: no end) and when its first delta came."""
    first: float | None = None
    async with client.stream(url, body) as (code, lines):
        if code != 200:
            return code, first
        async for line in lines:
            if first is None and line.startswith("event: delta"):
                first = time.perf_counter()
                out.ops["first delta"].append((first - started) * 1000)
            if line.startswith("event: error"):
                return 599, first
            if line.startswith("event: done"):
                return 200, first
    return 598, first


async def _user_direct(phase: Phase, client: _Client, user: int, out: Result) -> None:
    history: list[dict[str, str]] = []
    stream = phase.mode == "direct-stream"
    url = f"{phase.llm_url}/chat/completions"
    for turn in range(phase.turns):
        text = message(user, turn, phase.message_chars)
        body: dict[str, Any] = {
            "model": "gpt-4o-mini",
            "messages": [{"role": "system", "content": SYSTEM_PROMPT}, *history[-CONTEXT:]]
            + [{"role": "user", "content": text}],
            "temperature": 0.9,
            "max_tokens": 50,
            "presence_penalty": 0.6,
            "frequency_penalty": 0.6,
        }
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        started = time.perf_counter()
        reply = ""
        if stream:
            async with client.stream(url, body) as (code, lines):
                first = True
                async for line in lines:
                    if line.startswith("data: {"):
                        chunk = json.loads(line[6:])
                        for choice in chunk["choices"]:
                            reply += choice["delta"].get("content") or ""
                            if first and reply:
                                waited = (time.perf_counter() - started) * 1000
                                out.ops["first delta"].append(waited)
                                if turn == 0:  # nothing to start: the same wait
                                    out.ops[FROM_START].append(waited)
                                first = False
        else:
            code, answer = await client.send("POST", url, body)
            if code == 200:
                reply = json.loads(answer)["choices"][0]["message"]["content"]
        out.ops["turn"].append((time.perf_counter() - started) * 1000)
        if code != 200:
            out.errors[f"turn {code}"] += 1
            continue
        out.turns += 1
        history += [{"role": "user", "content": text}, {"role": "assistant", "content": reply}]


async def _run_users(phase: Phase, users: list[int]) -> Result:
    out = Result()
    direct = phase.mode.startswith("direct")
    async with _client(phase, len(users)) as client:
        run = _user_direct if direct else _user_service

        async def guarded(user: int) -> None:
            await asyncio.sleep(phase.ramp_seconds * user / max(1, phase.users))
            try:
                await run(phase, client, user, out)
            except (httpx.HTTPError, aiohttp.ClientError, TimeoutError) as exc:
                out.errors[type(exc).__name__] += 1  # counted, never fatal: the table says

        await asyncio.gather(*(guarded(user) for user in users))
    return out


def _process_main(phase: Phase, users: list[int], start_at: float, queue: Any) -> None:
    time.sleep(max(0.0, start_at - time.time()))  # all processes start together
    cpu = time.process_time()
    result = asyncio.run(_run_users(phase, users))
    result.client_cpu = time.process_time() - cpu
    queue.put((dict(result.ops), dict(result.errors), result.client_cpu, result.turns))


def run_phase(phase: Phase) -> Result:
    """Run the virtual users in ``phase.processes`` client processes; merged results."""
    processes = max(1, min(phase.processes, phase.users))
    shares = [list(range(n, phase.users, processes)) for n in range(processes)]
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    start_at = time.time() + 1.5
    workers = [
        context.Process(target=_process_main, args=(phase, share, start_at, queue))
        for share in shares
    ]
    for worker in workers:
        worker.start()
    merged = Result()
    for _ in workers:
        ops, errors, cpu, turns = queue.get(timeout=3600)
        part = Result(defaultdict(list, ops), defaultdict(int, errors), 0.0, cpu, turns)
        merged.merge(part)
    for worker in workers:
        worker.join()
    merged.wall = time.time() - start_at
    return merged


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its live children (WEB_CONCURRENCY workers)
    so far."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry) == pid or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def measure(phase: Phase, service_pid: int | None = None) -> dict[str, Any]:
    """Run a phase and summarise it; with ``service_pid``, also the service's CPU per turn."""
    cpu_before = process_cpu_seconds(service_pid) if service_pid else 0.0
    result = run_phase(phase)
    service_cpu = process_cpu_seconds(service_pid) - cpu_before if service_pid else 0.0
    summary: dict[str, Any] = {
        "mode": phase.mode,
        "users": phase.users,
        "turns": result.turns,
        "errors": dict(result.errors),
        "turns_per_s": result.turns / result.wall if result.wall else 0.0,
        "client_cpu_pct": 100 * result.client_cpu / result.wall if result.wall else 0.0,
        "service_cpu_ms_per_turn": 1000 * service_cpu / result.turns if result.turns else 0.0,
        "ops": {
            op: {
                "n": len(values),
                "p50": percentile(values, 50),
                "p95": percentile(values, 95),
                "p99": percentile(values, 99),
                "max": max(values),
                "mean": statistics.fmean(values),
            }
            for op, values in result.ops.items()
            if values
        },
    }
    return summary


def table(
    rows: list[dict[str, Any]], columns: list[tuple[str, Callable[[dict[str, Any]], str]]]
) -> str:
    """A Markdown table."""
    head = "| " + " | ".join(name for name, _ in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(cell(row) for _, cell in columns) + " |" for row in rows]
    return "\n".join([head, rule, *body])


def main() -> None:
    """Run one scenario against a service this command starts, and print the tables."""
    from bench.harness import running, start_mock_llm, start_rtdb, start_service

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1)
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--latency-ms", type=float, default=0)
    parser.add_argument("--store", choices=["sqlite", "firebase"], default="sqlite")
    parser.add_argument("--transport", choices=["rest", "sse"], default="rest")
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--client", choices=["httpx", "aiohttp"], default="httpx")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with running(start_mock_llm("--latency-ms", str(args.latency_ms))) as llm:
        store = start_rtdb() if args.store == "firebase" else None
        try:
            settings = bench_settings(llm.url, store.url if store else None)
            with running(start_service(**settings)) as service:
                direct = "direct" if args.transport == "rest" else "direct-stream"
                rows = [
                    measure(
                        Phase(
                            direct,
                            args.users,
                            args.turns,
                            service.url,
                            f"{llm.url}/v1",
                            args.processes,
                            client=args.client,
                        )
                    ),
                    measure(
                        Phase(
                            args.transport,
                            args.users,
                            args.turns,
                            service.url,
                            f"{llm.url}/v1",
                            args.processes,
                            client=args.client,
                        ),
                        service.popen.pid,
                    ),
                ]
        finally:
            if store:
                store.stop()
    logger.info("%s", summary_table(rows))


def bench_settings(llm_url: str, rtdb_url: str | None, **extra: object) -> dict[str, Any]:
    """Service settings for load: limits that a benchmark must not hit. The store: the
    Realtime Database at ``rtdb_url``, else PostgreSQL when ``database_url`` is among
    ``extra``, else a SQLite file of its own."""
    settings: dict[str, Any] = {
        "openai_base_url": f"{llm_url}/v1",
        "openai_api_key": "bench",
        "rate_limit_turns_per_minute": 10_000_000,
        "rate_limit_sessions_per_minute": 10_000_000,
        "max_streams_per_user": 10_000,
        "max_active_sessions_per_user": 10_000,
        "session_queue_limit": 100,
        **extra,
    }
    if rtdb_url:
        settings["firebase_database_url"] = f"{rtdb_url}?ns=bench{os.getpid()}"
    elif settings.get("database_url"):
        settings["store"] = "postgres"
    else:
        settings["store"] = "sqlite"
        settings["sqlite_path"] = str(_scratch() / f"{time.time_ns()}.db")
    return settings


def remove_database(settings: dict[str, Any]) -> None:
    """Delete a stopped service's SQLite files (the database, its WAL and shared memory), so
    that a long run neither piles them up nor leaves the next scenario sharing the disk with
    their pages still being written back."""
    path = settings.get("sqlite_path")
    if path:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


@functools.cache
def _scratch() -> Path:
    """This process's directory for SQLite databases, removed when it exits (each file used to
    stay in /tmp: a full ``bench.lean`` run left about 50 MB behind)."""
    path = Path(tempfile.mkdtemp(prefix="chatify-bench-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def summary_table(rows: list[dict[str, Any]]) -> str:
    """Per-operation latencies of each phase."""
    flat = []
    for row in rows:
        for op, stats in row["ops"].items():
            flat.append({**row, "op": op, **stats})
    return table(
        flat,
        [
            ("phase", lambda r: r["mode"]),
            ("users", lambda r: str(r["users"])),
            ("op", lambda r: r["op"]),
            ("n", lambda r: str(r["n"])),
            ("p50 ms", lambda r: f"{r['p50']:.2f}"),
            ("p95 ms", lambda r: f"{r['p95']:.2f}"),
            ("p99 ms", lambda r: f"{r['p99']:.2f}"),
            ("max ms", lambda r: f"{r['max']:.1f}"),
            ("turns/s", lambda r: f"{r['turns_per_s']:.0f}"),
            ("errors", lambda r: json.dumps(r["errors"]) if r["errors"] else "0"),
            ("client CPU %", lambda r: f"{r['client_cpu_pct']:.0f}"),
            ("service CPU ms/turn", lambda r: f"{r['service_cpu_ms_per_turn']:.2f}"),
        ],
    )


if __name__ == "__main__":
    main()
