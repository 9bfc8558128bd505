"""A 500-turn conversation: tokens sent per turn, turn latency with the memory on and off.

The service runs in this process (its real app and SQLite store) against the mock LLM on
127.0.0.1, which answers the memory's calls with deterministic summaries. One user talks for
500 turns in each mode; the first message states a fact, which must still reach the model late
in the conversation, through the memory:

- full history: what the published Chatify sends (every message so far), counted, not sent;
- last-N: the window alone (``contextMessages: 20``, ``memory: window``);
- budget: ``contextTokens: 600`` (at most 40 messages), with the rolling memory off and on
  (the turn latencies of these two show what the memory costs a turn: nothing, it runs after).

Tokens are counted exactly (o200k, the encoding of gpt-4o-mini) over the prompts the mock LLM
received. ``--show-turn N`` prints the prompt of turn N of the memory run as the LLM got it.

    python -m bench.conversation [--turns 500] [--latency-ms 20] [--show-turn 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from api.app import create_app
from services.conversation import memory
from services.core.settings import Settings
from services.llm.tokens import TokenCounter
from testkit.mock_llm import MockLLM, MockLLMConfig

logger = logging.getLogger("bench.conversation")
API = "/api/v1/chatbot"
MODEL = "gpt-4o-mini"
FACT = "Before anything else: my sister Inês is getting married in Lisbon on 14 June."
TOPICS = (
    "work", "the weather", "a film I saw", "dinner plans", "my running training",
    "a book about the sea", "the garden", "a trip to the mountains", "my cat", "music",
)  # fmt: skip
MODES: dict[str, dict[str, Any]] = {
    "last-N (20 messages)": {"contextMessages": 20, "memory": "window"},
    "budget 600 tokens, memory off": {
        "contextMessages": 40,
        "contextTokens": 600,
        "memory": "window",
    },
    "budget 600 tokens + memory": {"contextMessages": 40, "contextTokens": 600},
}
CHECKPOINTS = (10, 100, 300, 500)
TARGETS = {"tokens_500": "flat after the window fills", "latency": "memory on = off (±10 %)"}


def user_message(rng: random.Random, number: int) -> str:
    """A chat message of 5 to 80 words on one of a few topics."""
    if number == 1:
        return FACT
    words = rng.randint(5, 80)
    topic = rng.choice(TOPICS)
    filler = " ".join(
        rng.choice(("really", "so", "just", "also", "maybe", "today")) for _ in range(words)
    )
    return f"Turn {number}, about {topic}: {filler}."


def seed_dir(root: Path) -> Path:
    """A seed folder with one template per mode."""
    folder = root / "seed"
    (folder / "templates").mkdir(parents=True)
    for number, (_, fields) in enumerate(MODES.items()):
        doc = {
            "name": f"mode-{number}",
            "personalityPrompt": "You are a warm companion who remembers what the user tells you.",
            "model": MODEL,
            "maxTokens": 120,
            **fields,
        }
        (folder / "templates" / f"mode-{number}.json").write_text(json.dumps(doc))
    (folder / "universal_rules.json").write_text(json.dumps({"rules": "", "enabled": False}))
    return folder


async def talk(llm: MockLLM, root: Path, template: str, turns: int) -> dict[str, Any]:
    """One conversation; the prompts the LLM got and each turn's latency."""
    settings = Settings(
        _env_file=None,
        store="sqlite",
        sqlite_path=root / f"{template}.db",
        templates_seed_dir=seed_dir(root / template),
        openai_base_url=llm.url,
        openai_api_key="bench",
        session_titles=False,
        host="127.0.0.1",
        rate_limit_turns_per_minute=1_000_000,
    )
    app = create_app(settings)
    rng = random.Random(7)
    latencies: list[float] = []
    sent: list[str] = []
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://b") as client,
    ):
        created = await client.post(
            f"{API}/session", json={"user_id": "bench", "template_id": template}
        )
        session_id = created.json()["session_id"]
        for number in range(1, turns + 1):
            text = user_message(rng, number)
            sent.append(text)
            started = time.perf_counter()
            response = await client.post(
                f"{API}/session/{session_id}/message", json={"message": text}
            )
            latencies.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, response.text
        await app.state.services.memory.idle()
    requests = llm.chat_requests()
    turns_sent = [r["messages"] for r in requests if not _is_memory(r)]
    return {
        "prompts": turns_sent,
        "memory_calls": len(requests) - len(turns_sent),
        "latencies": latencies,
        "user": sent,
    }


def _is_memory(request: dict[str, Any]) -> bool:
    return str(request["messages"][0]["content"]).startswith(memory.INSTRUCTIONS[:40])


def full_history_tokens(counter: TokenCounter, run: dict[str, Any], turn: int) -> int:
    """What sending every message so far would cost at this turn."""
    system = run["prompts"][0][0]
    history: list[dict[str, str]] = []
    for number, text in enumerate(run["user"][: turn - 1], start=1):
        history += [
            {"role": "user", "content": text},
            {"role": "assistant", "content": f"Echo: {text}"},
        ]
        del number
    return counter.count_prompt(
        MODEL, [system, *history, {"role": "user", "content": run["user"][turn - 1]}]
    )


async def main_async(turns: int, latency_ms: float, show_turn: int | None) -> None:
    counter = TokenCounter()
    await counter.prepare(MODEL)
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for number, name in enumerate(MODES):
            with MockLLM(config=MockLLMConfig(latency=latency_ms / 1000)) as llm:
                runs[name] = await talk(llm, Path(tmp), f"mode-{number}", turns)
    checkpoints = [c for c in CHECKPOINTS if c <= turns]
    any_run = next(iter(runs.values()))
    lines = [
        "| mode | "
        + " | ".join(f"tokens sent at turn {c}" for c in checkpoints)
        + " | memory calls per 100 turns | turn p50 ms | turn p99 ms | fact in last prompt |",
        "|---|" + "---|" * (len(checkpoints) + 4),
    ]
    full = [full_history_tokens(counter, any_run, c) for c in checkpoints]
    lines.append(
        "| full history (published Chatify) | "
        + " | ".join(str(t) for t in full)
        + " | 0 | – | – | yes |"
    )
    for name, run in runs.items():
        tokens = [counter.count_prompt(MODEL, run["prompts"][c - 1]) for c in checkpoints]
        ms = sorted(run["latencies"])
        fact = any(FACT in m["content"] for m in run["prompts"][-1])
        lines.append(
            f"| {name} | "
            + " | ".join(str(t) for t in tokens)
            + f" | {100 * run['memory_calls'] / turns:.0f} | {statistics.median(ms):.1f}"
            f" | {ms[int(len(ms) * 0.99) - 1]:.1f} | {'yes' if fact else 'no'} |"
        )
    logger.info(
        "\n%d turns, mock LLM %g ms; targets: tokens %s, latency %s\n%s",
        turns, latency_ms, TARGETS["tokens_500"], TARGETS["latency"], "\n".join(lines),
    )  # fmt: skip
    if show_turn is not None and show_turn <= turns:
        prompt = runs["budget 600 tokens + memory"]["prompts"][show_turn - 1]
        logger.info(
            "\nThe prompt of turn %d, as the LLM received it:\n%s",
            show_turn,
            json.dumps(prompt, indent=1, ensure_ascii=False),
        )


def main(argv: list[str] | None = None) -> None:
    """Run and print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=500)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--show-turn", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logger.setLevel(logging.INFO)
    asyncio.run(main_async(args.turns, args.latency_ms, args.show_turn))


if __name__ == "__main__":
    main()
