"""Tools: what MCP tool calling costs a turn, and that it costs nothing to personalities
without tools.

1. **Turn overhead without tools.** The load scenario of ``python -m bench`` (the service as
   its own process, the default personality, which has no tools) twice: with ``MCP_SERVERS={}``
   (no tool machinery at all) and with the example MCP server configured and connected. The
   target is the same overhead and CPU per turn, within run-to-run noise.
2. **A turn that calls a tool.** The service in this process against the mock LLM (0 ms),
   the example server over stdio and over HTTP: a turn whose model calls ``current_time``
   once (two model calls, one tool call) beside a plain turn of the same personality.

    python -m bench.tools [--turns 400] [--tool-turns 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from api.app import create_app
from bench.harness import clean_env, free_port, running, start, start_mock_llm, start_service
from bench.load import Phase, bench_settings, measure
from services.core.settings import REPO_ROOT, Settings
from testkit.mock_llm import MockLLM

logger = logging.getLogger("bench.tools")
API = "/api/v1/chatbot"
TIME = '[[call demo__current_time {"zone": "Asia/Tokyo"}]]'
DEMO_STDIO = {"command": sys.executable, "args": ["-m", "mcp_servers.demo"], "cwd": str(REPO_ROOT)}


def overhead(turns: int, users: int, mcp_servers: dict[str, Any] | None) -> dict[str, Any]:
    """Service minus direct for one configuration (the load harness of ``python -m bench``)."""
    extra = {} if mcp_servers is None else {"mcp_servers": json.dumps(mcp_servers)}
    with running(start_mock_llm("--latency-ms", "0")) as llm:
        config = bench_settings(llm.url, None, **extra)
        with running(start_service(**config)) as service:
            base = (service.url, f"{llm.url}/v1")
            direct = measure(Phase("direct", users, turns, *base, 4, 60))
            through = measure(Phase("rest", users, turns, *base, 4, 60), service.popen.pid)
    d, t = direct["ops"]["turn"], through["ops"]["turn"]
    return {
        "over_p50": t["p50"] - d["p50"],
        "over_p99": t["p99"] - d["p99"],
        "tps": through["turns_per_s"],
        "cpu": through["service_cpu_ms_per_turn"],
        "errors": sum(through["errors"].values()),
    }


def seed(root: Path) -> Path:
    folder = root / "seed"
    (folder / "templates").mkdir(parents=True)
    doc = {"name": "clock", "personalityPrompt": "You tell the time.", "tools": ["demo/*"]}
    (folder / "templates" / "clock.json").write_text(json.dumps(doc))
    (folder / "universal_rules.json").write_text(json.dumps({"rules": "", "enabled": False}))
    return folder


async def tool_turns(root: Path, server: dict[str, Any], turns: int) -> dict[str, list[float]]:
    """Latencies (ms) of plain turns and of turns that call one tool."""
    with MockLLM() as llm:
        settings = Settings(
            _env_file=None,
            store="sqlite",
            sqlite_path=root / f"tools-{time.time_ns()}.db",
            templates_seed_dir=seed(root / str(time.time_ns())),
            openai_base_url=llm.url,
            openai_api_key="bench",
            session_titles=False,
            session_memory=False,
            host="127.0.0.1",
            rate_limit_turns_per_minute=1_000_000,
            mcp_servers={"demo": server},
        )
        app = create_app(settings)
        results: dict[str, list[float]] = {"plain": [], "tool": []}
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://b") as client,
        ):
            created = await client.post(
                f"{API}/session", json={"user_id": "bench", "template_id": "clock"}
            )
            session_id = created.json()["session_id"]
            for number in range(turns * 2 + 2):
                kind = "tool" if number % 2 else "plain"
                text = f"turn {number}" + (f" {TIME}" if kind == "tool" else "")
                started = time.perf_counter()
                response = await client.post(
                    f"{API}/session/{session_id}/message", json={"message": text}
                )
                elapsed = (time.perf_counter() - started) * 1000
                assert response.status_code == 200, response.text
                if kind == "tool":
                    assert response.json()["assistant_message"]["tools"], "no tool was called"
                if number >= 2:  # the first two warm the connection up
                    results[kind].append(elapsed)
    return results


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def main(argv: list[str] | None = None) -> None:
    """Run and print both tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=400)
    parser.add_argument("--tool-turns", type=int, default=60)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logger.setLevel(logging.INFO)

    lines = [
        "| scenario | MCP_SERVERS | overhead p50 ms | overhead p99 ms | turns/s "
        "| service CPU ms/turn | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for users in (1, 32):
        turns = args.turns if users == 1 else max(5, args.turns // 16)
        for label, servers in (("{} (no tools)", {}), ("example server connected", None)):
            row = overhead(turns, users, servers)
            lines.append(
                f"| sqlite, {users} user(s), LLM 0 ms, personality without tools | {label} "
                f"| {row['over_p50']:.2f} | {row['over_p99']:.2f} | {row['tps']:.0f} "
                f"| {row['cpu']:.2f} | {row['errors']} |"
            )
    logger.info(
        "\nTurn overhead without tools (target: the same with and without MCP servers, "
        "within run-to-run noise)\n%s",
        "\n".join(lines),
    )

    rows = [
        "| example server over | plain turn p50 ms | tool turn p50 ms | tool turn p99 ms "
        "| added by one tool round p50 ms |",
        "|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        http_args = [sys.executable, "-m", "mcp_servers.demo", "--http", "--port", str(port)]
        url = f"http://127.0.0.1:{port}/mcp"
        with running(start(http_args, env=clean_env(), ready_url=url, name="mcp-demo")):
            for label, server in (("stdio", DEMO_STDIO), ("streamable HTTP", {"url": url})):
                ms = asyncio.run(tool_turns(Path(tmp), server, args.tool_turns))
                plain, tool = statistics.median(ms["plain"]), statistics.median(ms["tool"])
                rows.append(
                    f"| {label} | {plain:.2f} | {tool:.2f} | {_p(ms['tool'], 0.99):.2f} "
                    f"| {tool - plain:.2f} |"
                )
    logger.info(
        "\nA turn that calls one tool (mock LLM 0 ms: two model calls and one tool call; "
        "target: a tool round adds under 10 ms)\n%s",
        "\n".join(rows),
    )


if __name__ == "__main__":
    main()
