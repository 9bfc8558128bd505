"""Token counting: exact ids from the vendored encodings, their hash check, which models are
exact, the estimate's calibration, and that loading happens once, in a thread, never in a count."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import importlib.util
import re
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import tiktoken
import tiktoken_ext.openai_public as openai_public

import services.llm.tokens
from bench.token_corpus import COOKBOOK_MESSAGES
from services.llm.client import ChatMessage
from services.llm.tokens import MAX_MODELS, TokenCounter, encoding_for_model
from services.llm.tokens.encodings import (
    DATA_DIR,
    ENCODING_NAMES,
    ENCODINGS,
    EXPECTED_SHA256,
    PAT_STR,
    SPECIAL_TOKENS,
    EncodingIntegrityError,
    EncodingName,
    Encodings,
)

# Ids cross-checked against an independent tokenizer (the Rust one in the bpe-openai wheel,
# which does not use tiktoken), run outside the project's environment.
KNOWN_IDS: dict[str, dict[EncodingName, list[int]]] = {
    "hello world": {"cl100k_base": [15339, 1917], "o200k_base": [24912, 2375]},
    "I'm sure they'll say we've done it, haven't we?": {
        "cl100k_base": [40, 2846, 2771, 814, 3358, 2019, 584, 3077, 2884, 433, 11, 9167, 956, 584]
        + [30],
        "o200k_base": [15390, 3239, 57956, 2891, 24716, 4167, 480, 11, 23399, 581, 30],
    },
    "DON'T SHOUT": {
        "cl100k_base": [85741, 17773, 6570, 3740],
        "o200k_base": [134882, 51532, 10902, 5858],
    },
    "1234567 + 3.14159 = 1234570.14159": {
        "cl100k_base": [4513, 10961, 22, 489, 220, 18, 13, 9335, 2946, 284, 220, 4513, 21675, 15]
        + [13, 9335, 2946],
        "o200k_base": [7633, 19354, 22, 659, 220, 18, 13, 16926, 4621, 314, 220, 7633, 39380, 15]
        + [13, 16926, 4621],
    },
    "Nice job! 🎉👍🏽": {
        "cl100k_base": [46078, 2683, 0, 11410, 236, 231, 9468, 239, 235, 9468, 237, 121],
        "o200k_base": [51469, 3349, 0, 139786, 231, 82514, 52622, 121],
    },
    "今日はいい天気ですね。": {
        "cl100k_base": [37271, 9080, 15682, 16995, 16995, 36827, 95221, 38641, 2243, 255, 1811],
        "o200k_base": [170411, 64170, 867, 25717, 131656, 788],
    },
    "你好，世界": {
        "cl100k_base": [57668, 53901, 3922, 3574, 244, 98220],
        "o200k_base": [177519, 979, 28428],
    },
    "Привет, как дела?": {
        "cl100k_base": [54745, 28089, 8341, 11, 52770, 95369, 1506, 30],
        "o200k_base": [23881, 131903, 11, 6220, 78857, 30],
    },
    "a    b\n\n\n  c\t\td   ": {
        "cl100k_base": [64, 262, 293, 1432, 220, 272, 197, 2765, 262],
        "o200k_base": [64, 271, 287, 2499, 220, 274, 197, 5971, 271],
    },
    "def f(x):\n    return x ** 2\n": {
        "cl100k_base": [755, 282, 2120, 997, 262, 471, 865, 3146, 220, 17, 198],
        "o200k_base": [1314, 285, 4061, 1883, 271, 622, 1215, 6240, 220, 17, 198],
    },
}


def chat(turns: int, *, salt: str = "") -> list[ChatMessage]:
    """A system prompt and ``turns`` user/assistant exchanges."""
    messages: list[ChatMessage] = [{"role": "system", "content": "You are a cheerful pirate."}]
    for n in range(turns):
        messages.append({"role": "user", "content": f"Question {n}{salt}: where be the treasure?"})
        messages.append({"role": "assistant", "content": f"Arr, under the {n}th palm tree!"})
    return messages


def raw_estimate(messages: list[ChatMessage]) -> int:
    """The uncalibrated estimate, written out: ceil(chars / 4) + 3 a message, + 3 priming."""
    return sum(-(-len(m["content"]) // 4) + 3 for m in messages) + 3


@pytest.mark.parametrize("name", ENCODING_NAMES)
@pytest.mark.parametrize("text", sorted(KNOWN_IDS))
def test_the_vendored_encodings_give_known_token_ids(name: EncodingName, text: str) -> None:
    encoding = ENCODINGS.load(name)
    assert encoding.encode_ordinary(text) == KNOWN_IDS[text][name]
    assert encoding.decode(KNOWN_IDS[text][name]) == text


@pytest.mark.parametrize(
    ("name", "end", "n_vocab"), [("cl100k_base", 100257, 100277), ("o200k_base", 199999, 200019)]
)
def test_special_tokens_exist_but_typed_text_stays_text(
    name: EncodingName, end: int, n_vocab: int
) -> None:
    encoding = ENCODINGS.load(name)
    assert encoding.encode("<|endoftext|>", allowed_special="all") == [end]
    assert end not in encoding.encode_ordinary("<|endoftext|>")
    assert encoding.n_vocab == n_vocab


@pytest.mark.parametrize("name", ENCODING_NAMES)
def test_the_vendored_files_hash_to_what_the_installed_tiktoken_expects(
    name: EncodingName,
) -> None:
    spec = importlib.util.find_spec("tiktoken_ext.openai_public")
    assert spec is not None and spec.origin is not None
    source = Path(spec.origin).read_text()
    expected = re.search(rf'/{name}\.tiktoken",\s*expected_hash="([0-9a-f]{{64}})"', source)
    assert expected is not None, f"no expected_hash for {name} in {spec.origin}"
    raw = gzip.decompress((DATA_DIR / f"{name}.tiktoken.gz").read_bytes())
    assert hashlib.sha256(raw).hexdigest() == expected[1] == EXPECTED_SHA256[name]


@pytest.mark.parametrize("name", ENCODING_NAMES)
def test_split_pattern_and_special_tokens_are_the_installed_tiktokens(
    name: EncodingName, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[tuple[str, str | None]] = []

    def no_download(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
        asked.append((url, expected_hash))
        return {}

    monkeypatch.setattr(openai_public, "load_tiktoken_bpe", no_download)
    spec: dict[str, Any] = openai_public.ENCODING_CONSTRUCTORS[name]()
    assert spec["pat_str"] == PAT_STR[name]
    assert spec["special_tokens"] == SPECIAL_TOKENS[name]
    assert asked == [(asked[0][0], EXPECTED_SHA256[name])]


def _rewrite(path: Path, change: Callable[[bytes], bytes]) -> None:
    path.write_bytes(gzip.compress(change(gzip.decompress(path.read_bytes()))))


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda p: _rewrite(p, lambda raw: raw.replace(b"IQ== 0\n", b"IQ== 7\n", 1)),
        lambda p: _rewrite(p, lambda raw: raw[: len(raw) // 2]),
        lambda p: p.write_bytes(p.read_bytes()[:1000]),
    ],
    ids=["rank-changed", "truncated-text", "truncated-gzip"],
)
def test_a_corrupted_encoding_file_fails_loudly(
    tmp_path: Path, corrupt: Callable[[Path], None]
) -> None:
    copy = tmp_path / "cl100k_base.tiktoken.gz"
    shutil.copy(DATA_DIR / copy.name, copy)
    Encodings(tmp_path).load("cl100k_base")  # the intact copy loads
    encodings = Encodings(tmp_path)
    corrupt(copy)
    for _ in range(2):  # a failure is not remembered as a success
        with pytest.raises(EncodingIntegrityError, match="cl100k_base"):
            encodings.load("cl100k_base")
    assert encodings.loaded("cl100k_base") is None


def test_threads_loading_at_once_parse_the_file_once(tmp_path: Path) -> None:
    shutil.copy(DATA_DIR / "cl100k_base.tiktoken.gz", tmp_path)
    encodings = Encodings(tmp_path)
    with ThreadPoolExecutor(4) as pool:
        loaded = list(pool.map(encodings.load, ["cl100k_base"] * 4))
    assert encodings.parses("cl100k_base") == 1
    assert all(encoding is loaded[0] for encoding in loaded)


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini-2024-07-18", "o200k_base"),
        ("openai/gpt-4o-mini", "o200k_base"),
        ("chatgpt-4o-latest", "o200k_base"),
        ("gpt-4.1-nano", "o200k_base"),
        ("gpt-4.5-preview", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("openai/gpt-5-mini", "o200k_base"),
        ("o1-mini", "o200k_base"),
        ("o3", "o200k_base"),
        ("o4-mini", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4-turbo-2024-04-09", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("gpt-35-turbo", "cl100k_base"),
        ("openai/gpt-3.5-turbo", "cl100k_base"),
        ("claude-3-5-sonnet-latest", None),
        ("anthropic/claude-sonnet-4", None),
        ("llama3.1:8b", None),
        ("mistral-small", None),
        ("gemini-2.0-flash", None),
        ("gpt-oss-20b", None),  # o200k_harmony and another chat format: estimated
        ("", None),
    ],
)
def test_which_models_are_counted_exactly(model: str, encoding: str | None) -> None:
    assert encoding_for_model(model) == encoding
    assert TokenCounter().method(model) == ("exact" if encoding else "estimate")
    if encoding:
        bare = model.removeprefix("openai/")
        assert tiktoken.encoding_name_for_model(bare) == encoding  # tiktoken agrees


@pytest.mark.parametrize(("model", "reported"), [("gpt-4", 129), ("gpt-4o", 124)])
async def test_exact_prompt_counts_match_what_the_openai_api_reported(
    model: str, reported: int
) -> None:
    counter = TokenCounter()
    await counter.prepare(model)
    assert counter.count_prompt(model, COOKBOOK_MESSAGES) == reported
    assert counter.count_text(model, "hello world") == 2
    first = COOKBOOK_MESSAGES[1]  # 3 + role 1 + content + name 2 + 1 for the name
    assert (
        counter.count_message(model, first)
        == 3
        + 1
        + counter.count_text(model, first["content"])
        + counter.count_text(model, "example_user")
        + 1
    )


async def test_a_count_before_prepare_is_the_estimate_and_never_loads() -> None:
    ENCODINGS.load("o200k_base")  # even with the encoding in memory, an unprepared count
    counter = TokenCounter()  # does not use it: counting never waits for anything
    messages = chat(3)
    assert counter.count_prompt("gpt-4o", messages) == raw_estimate(messages)
    assert counter.count_text("gpt-4o", "hello world") == 3  # ceil(11 / 4)
    await counter.prepare("gpt-4o")
    assert counter.count_prompt("gpt-4o", messages) != raw_estimate(messages)
    assert counter.count_text("gpt-4o", "hello world") == 2


async def test_prepare_loads_in_a_thread_and_counts_meanwhile_are_estimates(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fresh = Encodings(DATA_DIR)  # as in a new process: nothing loaded yet
    monkeypatch.setattr(services.llm.tokens, "ENCODINGS", fresh)
    counter, messages = TokenCounter(), chat(3)
    loading = asyncio.create_task(counter.prepare("gpt-4"))
    await asyncio.sleep(0)  # one loop step: prepare runs up to its first await
    assert not loading.done()  # parsing takes hundreds of ms, in a worker thread
    assert counter.count_prompt("gpt-4", messages) == raw_estimate(messages)
    await loading
    assert fresh.parses("cl100k_base") == 1
    assert counter.count_prompt("gpt-4", messages) != raw_estimate(messages)


async def test_prepare_parses_once_per_process_and_is_free_after() -> None:
    a, b = TokenCounter(), TokenCounter()
    await asyncio.gather(a.prepare("gpt-4o"), b.prepare("gpt-4o-mini"), a.prepare("openai/gpt-5"))
    await b.prepare("o3")
    assert ENCODINGS.parses("o200k_base") == 1
    for counter, model in ((a, "gpt-4o"), (b, "o4-mini"), (a, "claude-3-haiku")):
        step = counter.prepare(model)
        with pytest.raises(StopIteration):  # finished without awaiting anything: no thread hop
            step.send(None)


async def test_an_unknown_model_is_estimated_and_prepare_is_a_no_op() -> None:
    counter = TokenCounter()
    await counter.prepare("mistral-small")
    messages = chat(2)
    assert counter.count_prompt("mistral-small", messages) == raw_estimate(messages)
    assert counter.count_message("mistral-small", messages[0]) == 7 + 3  # 26 chars, 1 message


def test_the_estimate_converges_on_what_the_provider_reports() -> None:
    counter, model = TokenCounter(), "llama3.1:8b"
    for turn in range(1, 6):
        prompt = chat(turn)
        counter.observe(model, prompt, round(1.5 * raw_estimate(prompt)))
    later = chat(9, salt=" (later)")
    reported = 1.5 * raw_estimate(later)
    assert abs(counter.count_prompt(model, later) - reported) / reported < 0.03
    assert counter.count_prompt("another-model", later) == raw_estimate(later)  # per model
    assert counter.count_prompt(model.upper(), later) == counter.count_prompt(model, later)


def test_calibration_is_smoothed_and_bounded() -> None:
    counter, model, prompt = TokenCounter(), "local-model", chat(4)
    raw = raw_estimate(prompt)
    counter.observe(model, prompt, 2 * raw)
    counter.observe(model, prompt, raw)  # one odd report moves the ratio only part of the way
    assert 1.4 * raw < counter.count_prompt(model, prompt) < 1.6 * raw
    counter.observe(model, prompt, 0)  # nonsense reports are ignored
    counter.observe(model, [], 50)
    assert 1.4 * raw < counter.count_prompt(model, prompt) < 1.6 * raw
    wild = TokenCounter()
    wild.observe(model, prompt, 1000 * raw)
    assert wild.count_prompt(model, prompt) == pytest.approx(4 * raw, abs=2)
    wild.observe("tiny", prompt, 1)
    assert wild.count_prompt("tiny", prompt) == pytest.approx(raw / 4, abs=2)


def test_calibrations_are_bounded_in_number() -> None:
    counter, prompt = TokenCounter(), chat(1)
    raw = raw_estimate(prompt)
    for n in range(MAX_MODELS + 1):
        counter.observe(f"model-{n}", prompt, 2 * raw)
    assert counter.count_prompt(f"model-{MAX_MODELS}", prompt) == 2 * raw
    assert counter.count_prompt("model-0", prompt) == raw  # the least recent was forgotten


async def test_a_prepared_exact_model_ignores_reports() -> None:
    counter, prompt = TokenCounter(), chat(3)
    await counter.prepare("gpt-4o-mini")
    exact = counter.count_prompt("gpt-4o-mini", prompt)
    counter.observe("gpt-4o-mini", prompt, 10 * exact)
    assert counter.count_prompt("gpt-4o-mini", prompt) == exact
