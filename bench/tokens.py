"""Token counting: how close the estimate comes to a provider's count, and what counting costs.

A provider is simulated by exact counts (o200k_base as for gpt-4o, cl100k_base as for gpt-4) of
every prompt of generated conversations (``bench.token_corpus``): each turn's prompt is the
system prompt, the last ten messages and the new one. Three estimates are compared with it:
the raw rule of thumb (4 characters a token + 3 a message), the estimate calibrated within one
conversation after its first 5 turns were observed, and one calibration per model shared by
conversations of every kind (a model that serves users writing in different scripts). Then the
cost: loading each encoding, the memory it keeps, the event loop's longest stall while
``prepare()`` loads in a thread, and the time of one count.

    python -m bench.tokens
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import random
import statistics
import time
from collections import defaultdict
from collections.abc import Callable

from bench.memory import rss_kib
from bench.token_corpus import COOKBOOK_MESSAGES, KINDS, conversation, prompts, system_prompts
from services.llm.client import ChatMessage
from services.llm.tokens import TokenCounter
from services.llm.tokens.encodings import DATA_DIR, ENCODING_NAMES, read_encoding

logger = logging.getLogger("bench.tokens")
PROVIDERS = {"o200k_base": "gpt-4o", "cl100k_base": "gpt-4"}
OBSERVED = 5  # turns a conversation has reported before its estimate is judged
TARGET = 0.10
LOAD_TARGET_S = 2.0
ESTIMATED = "a-model-we-estimate"
Corpus = dict[str, list[list[list[ChatMessage]]]]
Pairs = list[tuple[int, int]]  # (estimate, provider's count)


def corpus(conversations: int, turns: int) -> Corpus:
    """Per kind of text, the prompts of each conversation, in order."""
    rng = random.Random(12)
    systems = system_prompts()
    return {
        kind: [
            prompts(conversation(kind, rng, turns=turns, system=rng.choice(systems)))
            for _ in range(conversations)
        ]
        for kind in KINDS
    }


def errors(pairs: Pairs) -> dict[str, float]:
    """Mean and max of |relative error|, its mean sign (bias), the share within the target."""
    rel = [(estimate - truth) / truth for estimate, truth in pairs]
    return {
        "mean": statistics.fmean(abs(r) for r in rel),
        "max": max(abs(r) for r in rel),
        "bias": statistics.fmean(rel),
        "within": sum(abs(r) <= TARGET for r in rel) / len(rel),
    }


def per_conversation(provider: TokenCounter, model: str, data: Corpus) -> dict[str, list[Pairs]]:
    """Raw estimates of every prompt, and calibrated ones after each conversation's 5th turn."""
    raw: dict[str, Pairs] = defaultdict(list)
    calibrated: dict[str, Pairs] = defaultdict(list)
    plain = TokenCounter()
    for kind, talks in data.items():
        for talk in talks:
            counter = TokenCounter()  # a fresh calibration for each conversation
            for turn, prompt in enumerate(talk):
                truth = provider.count_prompt(model, prompt)
                raw[kind].append((plain.count_prompt(ESTIMATED, prompt), truth))
                if turn >= OBSERVED:
                    calibrated[kind].append((counter.count_prompt(ESTIMATED, prompt), truth))
                counter.observe(ESTIMATED, prompt, truth)
    return {kind: [raw[kind], calibrated[kind]] for kind in data}


def shared(provider: TokenCounter, model: str, data: Corpus) -> dict[str, Pairs]:
    """One calibration for a model serving every kind at once, conversations interleaved."""
    counter, seen = TokenCounter(), 0
    found: dict[str, Pairs] = defaultdict(list)
    streams = [(kind, talk) for kind, talks in data.items() if kind != "mixed" for talk in talks]
    random.Random(7).shuffle(streams)
    for turn in range(max(len(talk) for _, talk in streams)):
        for kind, talk in streams:
            if turn < len(talk):
                truth = provider.count_prompt(model, talk[turn])
                if seen >= OBSERVED:
                    found[kind].append((counter.count_prompt(ESTIMATED, talk[turn]), truth))
                counter.observe(ESTIMATED, talk[turn], truth)
                seen += 1
    return found


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def accuracy_table(name: str, data: Corpus, provider: TokenCounter) -> str:
    """Markdown: per kind of text, the three estimates' errors beside the target."""
    model = PROVIDERS[name]
    rows, mixed = per_conversation(provider, model, data), shared(provider, model, data)
    lines = [
        f"| text ({name} provider) | prompts | raw: mean / max / bias | calibrated in the "
        "conversation: mean / max | per model, all texts mixed: mean / max "
        "| target ±10 % after 5 turns |",
        "|---|---|---|---|---|---|",
    ]
    for kind, (raw, calibrated) in rows.items():
        r, c = errors(raw), errors(calibrated)
        m = "—"
        if kind in mixed:
            m = f"{_pct(errors(mixed[kind])['mean'])} / {_pct(errors(mixed[kind])['max'])}"
        verdict = "met" if c["max"] <= TARGET else f"missed: {_pct(c['within'])} of prompts within"
        lines.append(
            f"| {kind} | {len(raw)} | {_pct(r['mean'])} / {_pct(r['max'])} / {r['bias']:+.0%} "
            f"| {_pct(c['mean'])} / {_pct(c['max'])} | {m} | {verdict} |"
        )
    return "\n".join(lines)


async def _stall_while(load: asyncio.Task[None]) -> float:
    """The longest gap, in ms, between the loop's turns while ``load`` runs (1 ms ticks)."""
    worst, last = 0.0, time.perf_counter()
    while not load.done():
        await asyncio.sleep(0.001)
        now = time.perf_counter()
        worst, last = max(worst, now - last - 0.001), now
    await load
    return 1000 * worst


async def preparing() -> list[tuple[str, str, str]]:
    """First in the process: ``prepare()`` of each encoding, its RSS and the loop's stall."""
    counter, rows = TokenCounter(), []
    idle = await _stall_while(asyncio.create_task(asyncio.sleep(0.5)))
    rows.append(("event loop's longest stall, idle (baseline)", "", f"{idle:.1f} ms"))
    for name, model in (("cl100k_base", "gpt-4"), ("o200k_base", "gpt-4o")):
        gc.collect()
        before, started = rss_kib(), time.perf_counter()
        stall = await _stall_while(asyncio.create_task(counter.prepare(model)))
        wall = time.perf_counter() - started
        gc.collect()
        grown = (rss_kib() - before) / 1024
        rows.append((f"prepare({model!r}) on a running loop: wall time", "", f"{wall:.2f} s"))
        rows.append((f"  event loop's longest stall meanwhile ({name})", "", f"{stall:.1f} ms"))
        rows.append((f"  memory kept by {name} (RSS growth)", "", f"{grown:.0f} MiB"))
    return rows


def load_times(repeats: int) -> list[tuple[str, str, str]]:
    """Median wall and CPU time of parsing each file (gunzip, SHA-256, ranks, tiktoken)."""
    rows = []
    for name in ENCODING_NAMES:
        walls, cpus = [], []
        for _ in range(repeats):
            wall, cpu = time.perf_counter(), time.process_time()
            read_encoding(name, DATA_DIR / f"{name}.tiktoken.gz")
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
        ok = "met" if max(walls) < LOAD_TARGET_S else "missed"
        rows.append(
            (
                f"load {name} (median of {repeats})",
                f"< {LOAD_TARGET_S:.0f} s",
                f"{statistics.median(walls):.2f} s wall, {statistics.median(cpus):.2f} s CPU: {ok}",
            )
        )
    return rows


def count_times(data: Corpus) -> list[tuple[str, str, str]]:
    """Microseconds per count: a new text, a cached one, a 12-message prompt."""
    counter = TokenCounter()
    asyncio.run(counter.prepare("gpt-4o"))
    texts = [m["content"] for talks in data.values() for t in talks for m in t[-1][1:]]
    prompt = next(p for talks in data.values() for t in talks for p in t if len(p) == 12)

    def per_call(call: Callable[[int], object], n: int) -> float:
        started = time.perf_counter()
        for i in range(n):
            call(i)
        return 1e6 * (time.perf_counter() - started) / n

    fresh = TokenCounter()
    asyncio.run(fresh.prepare("gpt-4o"))
    mean_chars = statistics.fmean(len(t) for t in texts)
    new = per_call(lambda i: fresh.count_text("gpt-4o", texts[i % len(texts)] + str(i)), 2000)
    cached = per_call(lambda i: counter.count_text("gpt-4o", texts[0]), 20000)
    whole = per_call(lambda i: counter.count_prompt("gpt-4o", prompt), 5000)
    estimate = per_call(lambda i: counter.count_prompt(ESTIMATED, prompt), 5000)
    return [
        (f"count_text, exact, a new text ({mean_chars:.0f} chars on average)", "", f"{new:.1f} µs"),
        ("count_text, exact, a text counted before (cached)", "", f"{cached:.2f} µs"),
        ("count_prompt, exact, 12 messages counted before", "", f"{whole:.1f} µs"),
        ("count_prompt, estimate, 12 messages", "", f"{estimate:.1f} µs"),
    ]


def cookbook_rows() -> list[tuple[str, str, str]]:
    """The cookbook's example prompt: our count beside the one OpenAI's API reported."""
    counter = TokenCounter()
    rows = []
    for model, reported in (("gpt-4", 129), ("gpt-4o", 124)):
        asyncio.run(counter.prepare(model))
        ours = counter.count_prompt(model, COOKBOOK_MESSAGES)
        rows.append((f"cookbook example prompt, {model}", f"{reported} (API)", f"{ours}"))
    return rows


def cost_table(rows: list[tuple[str, str, str]]) -> str:
    """Markdown: measure, target, result."""
    lines = ["| measure | target | result |", "|---|---|---|"]
    lines += [f"| {what} | {target or '—'} | {result} |" for what, target, result in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Measure and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=20, help="per kind of text")
    parser.add_argument("--turns", type=int, default=12, help="per conversation")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("services.llm.tokens").setLevel(logging.WARNING)
    costs = asyncio.run(preparing())  # first: the encodings are not loaded yet
    costs += load_times(3)
    data = corpus(args.conversations, args.turns)
    costs += count_times(data) + cookbook_rows()
    logger.info("\nCost of counting\n%s", cost_table(costs))
    for name, model in PROVIDERS.items():
        provider = TokenCounter()
        asyncio.run(provider.prepare(model))
        logger.info("\nEstimate vs provider\n%s", accuracy_table(name, data, provider))


if __name__ == "__main__":
    main()
