"""What a Firebase round trip costs a turn: the service (``python -m api``, as the Procfile
starts it) on the Realtime Database test server with every request delayed by 0, 20, 40 and
80 ms, and the mock LLM at 0 and 200 ms. One user sends turns with a ``client_message_id``
(as a mobile client should) to a session it already holds, as JSON and as SSE; the same
requests go straight to the mock in the same run.

Reports p50/p99 of the JSON turn and of the SSE first delta, the database requests per turn
(counted from the test server's request log), and the service's extra time as a multiple of
the round trip. Targets (issue 10): at 40 ms and a 200 ms LLM, the JSON turn within one round
trip (+10 ms) of the LLM's own time, the first delta within 10 ms of direct, and at most two
database requests per steady-state turn.

    python -m bench.roundtrips [--turns 40]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
import uuid
from typing import Any

import httpx

from bench.harness import running, start_mock_llm, start_service
from bench.load import bench_settings
from testkit.rtdb_server import RTDBServer

logger = logging.getLogger("bench.roundtrips")
ROUND_TRIPS_MS = (0, 20, 40, 80)
LLM_MS = (0, 200)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def direct(client: httpx.Client, llm_url: str, *, stream: bool) -> float:
    """Milliseconds to the whole reply (JSON) or to the first content chunk (stream)."""
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    started = time.perf_counter()
    if not stream:
        client.post(f"{llm_url}/v1/chat/completions", json=body).raise_for_status()
        return (time.perf_counter() - started) * 1000
    with client.stream("POST", f"{llm_url}/v1/chat/completions", json=body) as response:
        for line in response.iter_lines():
            if line.startswith("data:") and '"content"' in line:
                return (time.perf_counter() - started) * 1000
    raise RuntimeError("the mock sent no content")


def through(client: httpx.Client, url: str, *, stream: bool) -> float:
    """The same through the service, one turn with a fresh client_message_id."""
    body = {"message": "hi", "client_message_id": uuid.uuid4().hex}
    started = time.perf_counter()
    if not stream:
        client.post(f"{url}/message", json=body).raise_for_status()
        return (time.perf_counter() - started) * 1000
    elapsed = None
    with client.stream("POST", f"{url}/message/stream", json=body) as response:
        # Read the whole turn, so the next one starts on a quiet session.
        for line in response.iter_lines():
            if elapsed is None and line.startswith("event: delta"):
                elapsed = (time.perf_counter() - started) * 1000
    if elapsed is None:
        raise RuntimeError("the service sent no delta")
    return elapsed


def cell(rtdb: RTDBServer, rtt_ms: int, llm_ms: int, turns: int) -> list[dict[str, Any]]:
    """JSON and SSE rows at one round trip and one LLM latency."""
    with running(start_mock_llm("--latency-ms", str(llm_ms), "--chunks", "4")) as llm:
        # Personality stats are flushed in a multi-path update of their own, not per turn, and
        # the rolling memory folds in the background (4 requests a fold, every few turns; see
        # docs/performance.md): neither is the turn's, so neither is counted here.
        config = bench_settings(llm.url, None, stats_flush_seconds=3600, session_memory=False)
        namespace = f"rt{uuid.uuid4().hex[:8]}"
        config.pop("store"), config.pop("sqlite_path")
        config["firebase_database_url"] = rtdb.database_url(namespace)
        with running(start_service(**config)) as service, httpx.Client(timeout=60) as client:
            created = client.post(
                f"{service.url}/api/v1/chatbot/session", json={"user_id": "bench"}
            )
            session = f"{service.url}/api/v1/chatbot/session/{created.json()['session_id']}"
            through(client, session, stream=False)  # held here now: the steady state
            if not rtt_ms:  # no delay to add: measure the plain server
                return [
                    {
                        **measure(rtdb, client, session, llm.url, namespace, stream, turns),
                        "rtt": rtt_ms,
                        "llm": llm_ms,
                    }
                    for stream in (False, True)
                ]
            delayed = rtdb.faults.add(delay=rtt_ms / 1000, times=None, namespace=namespace)
            rows = []
            try:
                for stream in (False, True):
                    rows.append(measure(rtdb, client, session, llm.url, namespace, stream, turns))
            finally:
                rtdb.faults.remove(delayed)
    for row in rows:
        row.update(rtt=rtt_ms, llm=llm_ms)
    return rows


def measure(
    rtdb: RTDBServer,
    client: httpx.Client,
    session: str,
    llm_url: str,
    namespace: str,
    stream: bool,
    turns: int,
) -> dict[str, Any]:
    """Direct and through timings of ``turns`` turns, and the requests each turn made."""
    direct_ms = [direct(client, llm_url, stream=stream) for _ in range(turns)]
    rtdb.clear_requests()
    service_ms = [through(client, session, stream=stream) for _ in range(turns)]
    # The template refresh and /ready do not belong to turns.
    requests = [
        r
        for r in rtdb.requests
        if r.namespace == namespace and (r.path.startswith("/userSessions/") or r.path == "/")
    ]
    return {
        "kind": "SSE first delta" if stream else "JSON turn",
        "direct_p50": statistics.median(direct_ms),
        "p50": statistics.median(service_ms),
        "p99": percentile(service_ms, 99),
        "requests": len(requests) / turns,
    }


def table(rows: list[dict[str, Any]]) -> str:
    """The Markdown table, targets beside results."""
    lines = [
        "| round trip | LLM | measure | direct p50 ms | service p50 ms | service p99 ms "
        "| extra p50 ms | extra / round trip | db requests per turn |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        extra = r["p50"] - r["direct_p50"]
        multiple = f"{extra / r['rtt']:.1f}×" if r["rtt"] else "–"
        lines.append(
            f"| {r['rtt']} ms | {r['llm']} ms | {r['kind']} | {r['direct_p50']:.1f} "
            f"| {r['p50']:.1f} | {r['p99']:.1f} | {extra:.1f} | {multiple} | {r['requests']:.1f} |"
        )
    targets = (
        "Targets at 40 ms and LLM 200 ms: JSON extra ≤ 1 round trip + 10 ms (≤ 50 ms); "
        "SSE first delta extra ≤ 10 ms; ≤ 2 db requests per turn."
    )
    return "\n".join([*lines, "", targets])


def main(argv: list[str] | None = None) -> None:
    """Run the matrix and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=40, help="turns per measurement")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("httpx", "bench.harness", "testkit.rtdb_server"):
        logging.getLogger(name).setLevel(logging.WARNING)
    rows = []
    with RTDBServer() as rtdb:
        for llm_ms in LLM_MS:
            for rtt_ms in ROUND_TRIPS_MS:
                rows += cell(rtdb, rtt_ms, llm_ms, args.turns)
                logger.info("%s", json.dumps(rows[-2:]))
    logger.info(
        "\nFirebase round trips per turn (RTDB test server, delay on every request)\n%s",
        table(rows),
    )


if __name__ == "__main__":
    main()
