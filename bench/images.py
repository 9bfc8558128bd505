"""What one image adds to a turn: the service (``python -m api``, as the Procfile starts it,
SQLite) with the mock LLM. One user sends JSON turns alternately without and with one photo
(a 3000 × 2000 JPEG as a ``data:`` URL, each turn in a fresh session so the prompt holds one
image); the image's own work is measured alone, in this process, as the service does it:
the ``data:`` URL decoded, the picture decoded, turned upright, scaled to
ATTACHMENT_MAX_SIDE and re-encoded, and sent on as a ``data:`` URL.

Target (issue 24): a turn with one image adds no more than the image's own decode/encode time
to the turn path (as a ratio at most 1.0: the median over rounds of each round's ratio, a
round being one measurement of each kind, back to back). The turn path is the service's part of the
turn: what the image adds to the whole turn, less what it adds outside the service, both
measured in the same run: sending its 4.5 MB body over the loopback (the same body posted to
a session that does not exist, answered 404 once parsed) and the model reading the larger
prompt (the same prompt sent to the mock directly, with the image and without).

    python -m bench.images [--turns 25]
"""

from __future__ import annotations

import argparse
import base64
import io
import logging
import statistics
import time

import httpx
from PIL import Image

from bench.harness import running, start_service
from bench.load import bench_settings
from services.attachments.images import ImageRules, clean_image, data_url_bytes
from testkit.mock_llm import MockLLM

logger = logging.getLogger("bench.images")
API = "/api/v1/chatbot"
RULES = ImageRules(
    types=frozenset({"png", "jpeg", "webp", "gif"}),
    max_bytes=10_000_000,
    max_side=2048,
    max_pixels=40_000_000,
)


def photo(width: int = 3000, height: int = 2000) -> bytes:
    """A phone-sized JPEG with texture (noise compresses as badly as a real photo)."""
    noise = Image.effect_noise((width, height), 40)
    colour = Image.merge(
        "RGB", (noise, noise.rotate(180), noise.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    )
    buffer = io.BytesIO()
    colour.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def image_work(url: str) -> float:
    """Milliseconds of the image's own work, as the service does it for one turn."""
    started = time.perf_counter()
    claimed, data = data_url_bytes(url, RULES)
    clean = clean_image(data, claimed=claimed, rules=RULES)
    base64.b64encode(clean.data)  # the data: URL the model is sent
    return (time.perf_counter() - started) * 1000


def one_turn(client: httpx.Client, attachments: list[dict[str, str]] | None) -> float:
    """Milliseconds of one JSON turn in a fresh session (its creation not counted)."""
    created = client.post(f"{API}/session", json={"user_id": "bench-images"})
    created.raise_for_status()
    session_id = created.json()["session_id"]
    body: dict[str, object] = {"message": "What is in this picture?"}
    if attachments:
        body["attachments"] = attachments
    started = time.perf_counter()
    client.post(f"{API}/session/{session_id}/message", json=body).raise_for_status()
    took = (time.perf_counter() - started) * 1000
    client.delete(f"{API}/session/{session_id}").raise_for_status()
    return took


def body_alone(client: httpx.Client, attachments: list[dict[str, str]] | None) -> float:
    """Milliseconds to send a turn's body and have it parsed: a session that does not exist
    answers 404 before any other work."""
    body: dict[str, object] = {"message": "What is in this picture?"}
    if attachments:
        body["attachments"] = attachments
    missing = "00000000-0000-4000-8000-000000000000"
    started = time.perf_counter()
    answer = client.post(f"{API}/session/{missing}/message", json=body)
    took = (time.perf_counter() - started) * 1000
    assert answer.status_code == 404, answer.text
    return took


def direct(client: httpx.Client, url: str, image_url: str | None) -> float:
    """Milliseconds of one call straight to the mock, with the prompt the service sends."""
    content: object = "What is in this picture?"
    if image_url is not None:
        image = {"type": "image_url", "image_url": {"url": image_url, "detail": "auto"}}
        content = [{"type": "text", "text": "What is in this picture?"}, image]
    body = {"model": "gpt-4o-mini", "messages": [{"role": "system", "content": "Hi."},
            {"role": "user", "content": content}]}  # fmt: skip
    started = time.perf_counter()
    client.post(f"{url}/chat/completions", json=body).raise_for_status()
    return (time.perf_counter() - started) * 1000


def run(turns: int) -> str:
    """The table: the image's own work, turns without and with it, what the image adds outside
    the service, and the service's part against the target."""
    data = photo()
    url = f"data:image/jpeg;base64,{base64.b64encode(data).decode()}"
    image_work(url)  # warm-up
    clean = clean_image(data_url_bytes(url, RULES)[1], claimed="jpeg", rules=RULES)
    sent = f"data:{clean.media_type};base64,{base64.b64encode(clean.data).decode()}"
    kinds = ("own", "plain", "image", "b0", "b1", "d0", "d1")
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    with MockLLM() as llm:
        settings = bench_settings(
            llm.url.removesuffix("/v1"), None, session_titles=False, session_memory=False
        )
        with running(start_service(**settings)) as service:
            with httpx.Client(base_url=service.url, timeout=60) as client:
                one_turn(client, None), one_turn(client, [{"url": url}])  # warm-up
                for _ in range(turns):  # alternated, so drift hits every kind alike
                    times["own"].append(image_work(url))
                    times["plain"].append(one_turn(client, None))
                    times["image"].append(one_turn(client, [{"url": url}]))
                    times["b0"].append(body_alone(client, None))
                    times["b1"].append(body_alone(client, [{"url": url}]))
                    times["d0"].append(direct(client, llm.url, None))
                    times["d1"].append(direct(client, llm.url, sent))
    m = {key: statistics.median(values) for key, values in times.items()}
    own = m["own"]
    added = m["image"] - m["plain"]
    outside = (m["b1"] - m["b0"]) + (m["d1"] - m["d0"])
    path = added - outside
    # Judged round by round: each round's measurements ran back to back, so a busy moment of
    # the machine weighs on a round's own work and its turn alike; the median round decides.
    rounds = [dict(zip(times, values, strict=True)) for values in zip(*times.values(), strict=True)]
    ratios = sorted(
        ((t["image"] - t["plain"]) - (t["b1"] - t["b0"]) - (t["d1"] - t["d0"])) / t["own"]
        for t in rounds
    )
    ratio = statistics.median(ratios)
    quartiles = statistics.quantiles(ratios, n=4)
    verdict = "met" if ratio <= 1.0 else "missed"
    size = f"{len(data) / 1e6:.1f} MB JPEG 3000×2000"
    return "\n".join(
        [
            f"| one image ({size}), SQLite, JSON turn | n | median ms | target | |",
            "|---|---|---|---|---|",
            f"| the image's own decode/encode (alone) | {turns} | {own:.1f} | | |",
            f"| turn without an image | {turns} | {m['plain']:.1f} | | |",
            f"| turn with the image | {turns} | {m['image']:.1f} | | |",
            f"| added by the image, whole turn | | {added:.1f} | | |",
            f"| of it, sending the body (404 alone: {m['b1']:.1f} vs {m['b0']:.1f}) | {turns} "
            f"| {m['b1'] - m['b0']:.1f} | | |",
            f"| of it, the model reading the image (direct: {m['d1']:.1f} vs {m['d0']:.1f}) "
            f"| {turns} | {m['d1'] - m['d0']:.1f} | | |",
            f"| added to the turn path | | {path:.1f} ({path / own:.2f}× its own) | | |",
            f"| added to the turn path / its own, median of the {turns} rounds | | "
            f"{ratio:.2f}× (quartiles {quartiles[0]:.2f}–{quartiles[2]:.2f}) | ≤ 1.0× "
            f"| {verdict} |",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments, run and log the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=25, help="rounds (default 25)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("httpx", "bench.harness"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logger.info("%s", run(args.turns))


if __name__ == "__main__":
    main()
