"""RSS per cached session: N sessions with T turns each, loaded into the active-session cache.

The sessions are written through the store, then read through (``ActiveSessions.get``) as a
restarted service would; the growth of this process's RSS, divided by N, is the cost of one
cached session. The cache holds only what a turn needs, so long conversations cost no more.

    python -m bench.memory
"""

from __future__ import annotations

import asyncio
import gc
import logging
import tempfile
import tracemalloc
import uuid
from pathlib import Path

from services.conversation.registry import ActiveSessions
from services.core.records import NewTurn, Sampling, SessionRecord, Usage, utc_now
from services.store.sqlite import SQLiteStore
from testkit.stored_turns import append_turn

logger = logging.getLogger("bench.memory")
PROMPT = "You are a friendly, helpful assistant. " * 28  # ~1.1 kB, like a seed personality


def rss_kib() -> int:
    """This process's resident set size."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def fill(store: SQLiteStore, sessions: int, turns: int) -> list[str]:
    """Sessions with ``turns`` turns of texting-length messages each."""
    ids = []
    now = "2026-01-01T00:00:00.000Z"
    for n in range(sessions):
        record = SessionRecord(
            session_id=str(uuid.uuid4()),
            user_id=f"user-{n}",
            template_id="friendly-assistant",
            status="active",
            created_at=now,
            last_activity=now,
            ended_at=None,
            message_count=0,
            system_prompt=f"{PROMPT} #{n % 8}",  # eight personalities; read back as new strings
            sampling=Sampling("gpt-4o-mini", 0.9, 50, 0.6, 0.6),
            context_messages=10,
        )
        await store.create_session(record)
        ids.append(record.session_id)

    async def talk(record_id: str, user: str) -> None:
        record = SessionRecord(
            record_id, user, "", "active", now, now, None, 0, "", Sampling("", 0, 1, 0, 0), 10
        )
        for t in range(turns):
            turn = NewTurn(
                f"message {t} from {user}: how is it going today?",
                f"reply {t}: pretty good, thanks for asking! And you?",
                f"{user}-{t}",
                now,
                now,
                Usage(40, 12, 52),
            )
            await append_turn(store, record, turn)

    for start in range(0, sessions, 200):
        batch = ids[start : start + 200]
        await asyncio.gather(*(talk(sid, f"user-{start + i}") for i, sid in enumerate(batch)))
    return ids


async def measure(sessions: int, turns: int) -> dict[str, float]:
    """KiB of RSS per cached session."""
    with tempfile.TemporaryDirectory() as folder:
        store = SQLiteStore(Path(folder) / "memory.db", synchronous="NORMAL")
        await store.open()
        try:
            ids = await fill(store, sessions, turns)
            # RSS first, without tracemalloc (whose bookkeeping would inflate it).
            cache = ActiveSessions(store, maxsize=sessions + 1, idle_seconds=3600, clock=utc_now)
            await cache.get(ids[0])
            gc.collect()
            before = rss_kib()
            for sid in ids[1:]:
                await cache.get(sid)
            gc.collect()
            after = rss_kib()
            del cache
            gc.collect()
            heap = ActiveSessions(store, maxsize=sessions + 1, idle_seconds=3600, clock=utc_now)
            await heap.get(ids[0])
            tracemalloc.start()
            for sid in ids[1:]:
                await heap.get(sid)
            gc.collect()
            traced = tracemalloc.get_traced_memory()[0]
            tracemalloc.stop()
        finally:
            await store.close()
    return {
        "sessions": sessions,
        "turns": turns,
        "kib_per_session": (after - before) / (sessions - 1),
        "traced_kib_per_session": traced / 1024 / (sessions - 1),
    }


def _rss(row: dict[str, float]) -> str:
    if row["sessions"] < 1000:
        return "below RSS resolution"
    return f"{row['kib_per_session']:.1f} KiB"


def main() -> None:
    """Print the table."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows = [asyncio.run(measure(10_000, 10)), asyncio.run(measure(100, 500))]
    lines = ["| sessions × turns | RSS per cached session | Python heap per session |"]
    lines.append("|---|---|---|")
    lines += [
        f"| {r['sessions']:,} × {r['turns']} | {_rss(r)} | {r['traced_kib_per_session']:.1f} KiB |"
        for r in rows
    ]
    logger.info("\n".join(lines))


if __name__ == "__main__":
    main()
