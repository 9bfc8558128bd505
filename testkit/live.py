"""A real uvicorn server on 127.0.0.1 for tests where the wire matters (SSE, WebSocket,
disconnects), and a small reader for Server-Sent Events."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI


@contextmanager
def live_server(app: FastAPI) -> Iterator[str]:
    """Serve ``app`` (lifespan included) on a free port; yields its base URL."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_config=None, access_log=False, lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="live-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the live server did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


@dataclass
class Event:
    """One Server-Sent Event (or a comment, with ``event == ":"``)."""

    event: str
    data: str = ""
    id: str | None = None
    fields: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        """The data as JSON."""
        return json.loads(self.data)


async def read_events(response: httpx.Response) -> AsyncIterator[Event]:
    """Parse an event stream line by line, comments included, as the bytes arrive."""
    current: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line.startswith(":"):
            yield Event(":", line[1:].strip())
            continue
        if line == "":
            if current:
                yield Event(
                    current.get("event", "message"),
                    current.get("data", ""),
                    current.get("id"),
                    current,
                )
                current = {}
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        current[name] = f"{current[name]}\n{value}" if name == "data" and name in current else value
