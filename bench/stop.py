"""How soon a stop closes the model's request: the service (``python -m api``, as the Procfile
starts it) with the mock LLM, which sends two chunks of a reply and then waits for the client
to hang up, noting when it does. One user streams a turn (SSE) and sends
``POST .../stop`` once two deltas came; the time measured runs from the stop request being
sent to the mock seeing the connection closed, on the same monotonic clock.

Target (issue 23): the upstream request closed within 100 ms of the stop.

    python -m bench.stop [--stops 50]
"""

from __future__ import annotations

import argparse
import logging
import time

import httpx

from bench.harness import running, start_service
from bench.load import bench_settings
from bench.roundtrips import percentile
from testkit.mock_llm import Hold, MockLLM, Reply

logger = logging.getLogger("bench.stop")
API = "/api/v1/chatbot"
TARGET_MS = 100.0


def one_stop(client: httpx.Client, llm: MockLLM) -> float:
    """Milliseconds from sending the stop to the mock seeing its request closed."""
    hold = Hold(after_chunks=2)
    llm.script(Reply(content="one two three four", chunks=4, hold=hold))
    created = client.post(f"{API}/session", json={"user_id": "stopper"})
    created.raise_for_status()
    session_id = created.json()["session_id"]
    deltas = 0
    asked = 0.0
    with client.stream(
        "POST", f"{API}/session/{session_id}/message/stream", json={"message": "count"}
    ) as response:
        for line in response.iter_lines():
            if line == "event: delta":
                deltas += 1
                if deltas == 2:
                    asked = time.monotonic()
                    client.post(f"{API}/session/{session_id}/stop").raise_for_status()
    if not hold.closed.wait(10) or hold.closed_at is None:
        raise RuntimeError("the upstream request stayed open after the stop")
    client.delete(f"{API}/session/{session_id}").raise_for_status()
    return (hold.closed_at - asked) * 1000


def run(stops: int) -> str:
    """The table: stop to upstream closed, p50/p95/max against the target."""
    with MockLLM() as llm:
        settings = bench_settings(llm.url.removesuffix("/v1"), None)
        with running(start_service(**settings)) as service:
            with httpx.Client(base_url=service.url, timeout=30) as client:
                one_stop(client, llm)  # warm-up, not counted
                times = [one_stop(client, llm) for _ in range(stops)]
    p50, p95, worst = percentile(times, 50), percentile(times, 95), max(times)
    verdict = "met" if worst <= TARGET_MS else "missed"
    return "\n".join(
        [
            "| stop → upstream request closed (SSE turn, SQLite) | n | p50 ms | p95 ms | max ms "
            "| target | |",
            "|---|---|---|---|---|---|---|",
            f"| `POST .../stop` after 2 deltas | {stops} | {p50:.1f} | {p95:.1f} | {worst:.1f} "
            f"| max ≤ {TARGET_MS:.0f} ms | {verdict} |",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments, run and log the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stops", type=int, default=50, help="stops measured (default 50)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("httpx", "bench.harness"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logger.info("%s", run(args.stops))


if __name__ == "__main__":
    main()
