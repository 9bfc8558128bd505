"""Background work that never holds up a turn: titles, memories, usage counts."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


class Tasks:
    """Background tasks of one kind: counted, at most one per key, stopped together."""

    def __init__(self) -> None:
        self._tasks: dict[object, asyncio.Task[None]] = {}

    def __len__(self) -> int:
        return len(self._tasks)

    def running(self, key: object) -> bool:
        """Whether the task started with this key is still running."""
        return key in self._tasks

    def start(self, work: Coroutine[Any, Any, None], key: object | None = None) -> None:
        """Run ``work`` in a task of its own (under ``key``, when one is given)."""
        slot = object() if key is None else key
        task = asyncio.create_task(work)
        self._tasks[slot] = task
        task.add_done_callback(lambda _: self._tasks.pop(slot, None))

    async def idle(self) -> None:
        """Wait until none is running (tests and benchmarks)."""
        while self._tasks:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def close(self) -> None:
        """Cancel them all (at shutdown) and wait until they have stopped."""
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
