"""Several worker processes on one machine (WEB_CONCURRENCY): ``python -m api`` as the Procfile
starts it forks that many workers on one port, and turns spread over them lose nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from bench.harness import running, start_service
from testkit.mock_llm import MockLLM

API = "/api/v1/chatbot"


def children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


async def test_two_workers_share_one_port_and_one_store(tmp_path: Path, llm: MockLLM) -> None:
    settings: dict[str, Any] = {
        "web_concurrency": 2,
        "log_format": "json",  # configured in every worker, not only in the parent
        "log_level": "INFO",
        "sqlite_path": tmp_path / "chatify.db",
        "openai_base_url": llm.url,
        "openai_api_key": "sk-test",
    }
    with running(start_service(**settings)) as service:
        async with httpx.AsyncClient(base_url=service.url, timeout=30) as client:
            # Connections of their own, so the kernel spreads them over both workers.
            created = await client.post(f"{API}/session", json={"user_id": "u1"})
            session_id = created.json()["session_id"]
            replies = []
            for n in range(20):
                async with httpx.AsyncClient(base_url=service.url, timeout=30) as fresh:
                    replies.append(
                        await fresh.post(
                            f"{API}/session/{session_id}/message",
                            json={"message": f"turn {n}", "client_message_id": f"c{n}"},
                        )
                    )
            history = (await client.get(f"{API}/session/{session_id}/messages?limit=200")).json()
        workers = children(service.popen.pid)
    assert len(workers) >= 2, workers
    assert all(r.status_code == 200 for r in replies)
    assert [m["seq"] for m in history["messages"]] == list(range(40))
    assert [m["content"] for m in history["messages"][::2]] == [f"turn {n}" for n in range(20)]
    # Every line is JSON, from each worker (each logs its start) and for every turn.
    lines = [json.loads(line) for line in service.log_text().splitlines() if line]
    started = [line for line in lines if line["message"].startswith("Started server process")]
    assert len(started) >= 2
    turns = [line for line in lines if line["logger"] == "services.conversation.turns"]
    assert sorted(line["turn"] for line in turns) == list(range(1, 21))
