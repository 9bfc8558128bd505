"""Turn latency with push notifications on and off: the service (``python -m api``) with the
mock LLM and the FCM test server (``testkit/fcm_server.py``). One user sends JSON turns one
after another and their latency is measured; meanwhile a second user streams turns to a
personality served by a slower mock (50 ms, provider ``slow``) and hangs up as each starts, so
that (pushes on) their replies, which nobody hears, are pushed to two devices each while the
measured turns run. Rounds alternate off / on, so both see the same machine.

Target (issue 26): no change in turn latency with pushes on: p50 within 1 ms or 5 % of off.

    python -m bench.push [--turns 200] [--rounds 2]
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from typing import Any

import httpx

from bench.harness import running, start_service
from bench.load import bench_settings
from bench.roundtrips import percentile
from testkit.fcm_server import FCMServer
from testkit.mock_llm import MockLLM, MockLLMConfig

logger = logging.getLogger("bench.push")
API = "/api/v1/chatbot"
TARGET_MS, TARGET_SHARE = 1.0, 0.05


def _session(client: httpx.Client, user: str) -> str:
    created = client.post(f"{API}/session", json={"user_id": user})
    created.raise_for_status()
    session_id: str = created.json()["session_id"]
    return session_id


def _hang_ups(client: httpx.Client, stop: threading.Event) -> int:
    """Streamed turns of another user, each left as it starts; how many."""
    personality = {"name": "sleeper", "personalityPrompt": "You sleep.", "provider": "slow"}
    created = client.post("/api/v1/personalities", json=personality)
    created.raise_for_status()
    template_id = created.json()["id"]
    count = 0
    while not stop.is_set():
        body = {"user_id": "sleeper", "template_id": template_id}
        session = client.post(f"{API}/session", json=body)
        session.raise_for_status()
        url = f"{API}/session/{session.json()['session_id']}/message/stream"
        with client.stream("POST", url, json={"message": "ping"}) as response:
            for line in response.iter_lines():
                if line == "event: start":
                    break  # gone before the reply: it will be pushed
        count += 1
        time.sleep(0.02)  # pacing: about one unheard turn per few measured ones
    return count


def one_round(
    llm: MockLLM, slow: MockLLM, fcm: FCMServer, *, push: bool, turns: int
) -> dict[str, Any]:
    """Measured JSON turn latencies (ms) of one service run, and what FCM received."""
    provider = f'[{{"name": "slow", "base_url": "{slow.url}"}}]'
    extra: dict[str, Any] = {"llm_providers": provider}
    if push:
        extra |= {"push_enabled": "true", "fcm_url": fcm.url, "fcm_project_id": "bench",
                  "push_grace_seconds": "0.05"}  # fmt: skip
    fcm.reset()
    settings = bench_settings(llm.url.removesuffix("/v1"), None, **extra)
    with running(start_service(**settings)) as service:
        with httpx.Client(base_url=service.url, timeout=30) as client:
            for token in ("bench-phone-0001", "bench-tablet-002"):
                body = {"token": token, "platform": "android"}
                client.post(f"{API}/users/sleeper/devices", json=body).raise_for_status()
            session_id = _session(client, "measured")
            client.post(f"{API}/session/{session_id}/message", json={"message": "warm"})
            stop, loaded = threading.Event(), {"n": 0}
            with httpx.Client(base_url=service.url, timeout=30) as other:
                loader = threading.Thread(
                    target=lambda: loaded.update(n=_hang_ups(other, stop)), daemon=True
                )
                loader.start()
                times = []
                for _ in range(turns):
                    started = time.perf_counter()
                    sent = client.post(
                        f"{API}/session/{session_id}/message", json={"message": "hi"}
                    )
                    times.append((time.perf_counter() - started) * 1000)
                    sent.raise_for_status()
                stop.set()
                loader.join(30)
            time.sleep(0.5)  # the last unheard turns end, and their grace periods
    return {"times": times, "unheard": loaded["n"], "pushed": len(fcm.messages)}


def run(turns: int, rounds: int) -> str:
    """The table: p50 / p95 of JSON turns, off and on, against the target."""
    results: dict[bool, dict[str, Any]] = {
        False: {"times": [], "unheard": 0, "pushed": 0},
        True: {"times": [], "unheard": 0, "pushed": 0},
    }
    with MockLLM() as llm, MockLLM(config=MockLLMConfig(latency=0.05)) as slow, FCMServer() as fcm:
        for _ in range(rounds):
            for push in (False, True):
                got = one_round(llm, slow, fcm, push=push, turns=turns)
                for key in ("unheard", "pushed"):
                    results[push][key] += got[key]
                results[push]["times"] += got["times"]
    off, on = (percentile(results[p]["times"], 50) for p in (False, True))
    allowed = max(TARGET_MS, TARGET_SHARE * off)
    verdict = "met" if on - off <= allowed else "missed"
    lines = [
        "| pushes | JSON turns | p50 ms | p95 ms | unheard streamed turns | FCM messages "
        "| target | |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for push in (False, True):
        r = results[push]
        target = f"p50 ≤ off + {allowed:.2f} ms" if push else "(reference)"
        lines.append(
            f"| {'on' if push else 'off'} | {len(r['times'])} | {percentile(r['times'], 50):.2f} "
            f"| {percentile(r['times'], 95):.2f} | {r['unheard']} | {r['pushed']} | {target} "
            f"| {verdict if push else ''} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments, run and log the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=200, help="measured turns per round")
    parser.add_argument("--rounds", type=int, default=2, help="off/on rounds (default 2)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("httpx", "bench.harness"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logger.info("%s", run(args.turns, args.rounds))


if __name__ == "__main__":
    main()
