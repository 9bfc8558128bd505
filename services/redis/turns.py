"""Turns shared between replicas: each turn's events in a Redis Stream, so a client that
resends a turn (same ``client_message_id``) to any replica follows the one running turn,
and no second model call starts.

Keys (under REDIS_KEY_PREFIX; docs/scaling.md):
- ``turn:{session_id}:{client_message_id}``: which turn runs for that id: ``"{turn_id}
  {digest}"``, the digest of its message telling a resend from a conflicting one. Set by
  the replica that runs it, in the same script that checks for it; it lives 15 s and the
  runner renews it every 5 s, so it outlives a crashed runner by 15 s at most. Once the turn
  is done it is kept for 60 s, so a resend within a minute is answered from the stream.
- ``events:{turn_id}``: the turn's events, one entry each, entry id ``0-{event id + 1}``
  (so ids are the same numbers on every replica), fields ``k`` (the kind) and ``e`` (the
  event as JSON, ``codec``); at most about ``MAXLEN`` entries; expires like the marker.
- ``latest:{session_id}``: ``"{turn_id} {client_message_id}"`` of the session's turn in
  flight, for ``useChat``'s resume; deleted when the turn ends.

A replica that finds the turn running elsewhere relays its events into its own ``Turn`` (ids
and all); one that finds it done replays it from its last event, as a stored turn is
replayed; one that finds it failed runs it again. When the runner stops renewing (it
crashed) or Redis stops answering, the follower runs the turn itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import uuid
from typing import Any

from redis.asyncio import Redis

from services.conversation.turn_events import Turn, TurnEvent
from services.core.errors import ChatifyError, IdempotencyConflict, LLMUnavailable
from services.core.records import TurnResult
from services.core.redis_link import RedisDown, RedisLink
from services.redis import codec

logger = logging.getLogger(__name__)
RUNNING_MS = 15_000
HEARTBEAT_SECONDS = 5.0
LINGER_SECONDS = 0.02  # events gathered per send (the last one is sent at once)
KEEP_MS = 60_000
MAXLEN = 10_000
_ENDS = ("done", "error")

# KEYS: the id's marker, the session's latest. ARGV: the marker's value ("{turn id} {digest of
# the message}"), ttl, events key prefix, latest's value. Returns the marker of the running (or
# just done) turn, or nil when the caller now runs it.
_CLAIM = """
local owner = redis.call('GET', KEYS[1])
if owner then
  local id = string.match(owner, '^(%S+)')
  local last = redis.call('XREVRANGE', ARGV[3] .. id, '+', '-', 'COUNT', 1)
  if #last == 0 or last[1][2][2] ~= 'error' then return owner end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[2])
return false
"""
# KEYS: marker, latest. ARGV: the marker's value, ttl, latest's value, "done" or "running".
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if redis.call('GET', KEYS[2]) == ARGV[3] then
  if ARGV[4] == 'done' then redis.call('DEL', KEYS[2])
  else redis.call('PEXPIRE', KEYS[2], ARGV[2]) end
end
return 1
"""


class RedisTurns:
    """The ``TurnRelay`` of ``services/conversation/turn_events.py``, over Redis Streams."""

    def __init__(self, link: RedisLink) -> None:
        self._link = link
        self._claim = link.client.register_script(_CLAIM)
        self._block_ms = max(1, int(link.timeout * 600))  # a blocking read ends within a call
        self._tasks: set[asyncio.Task[Any]] = set()

    async def adopt(self, turn: Turn) -> TurnResult | None:
        """The turn's result when it runs (or just ran) on another replica, its events relayed
        into ``turn``; None when this process is to run it (its events are then recorded).
        ``IdempotencyConflict`` when the id runs elsewhere with another message."""
        assert turn.client_message_id is not None
        marker = self._link.key("turn", turn.session_id, turn.client_message_id)
        digest = hashlib.sha256(turn.text.encode()).hexdigest()[:16]
        for _ in range(2):  # a second time after the runner vanished
            mine = f"{uuid.uuid4().hex} {digest}"
            latest = f"{mine.split()[0]} {turn.client_message_id}"
            keys = [marker, self._link.key("latest", turn.session_id)]
            args = [mine, RUNNING_MS, self._link.key("events", ""), latest]
            try:
                owner = await self._link.script(self._claim, keys, args)
            except RedisDown:
                return None
            if owner is None:
                self._start(self._record(turn, _Recording(turn), mine, keys, latest))
                return None
            turn_id, _, text_digest = owner.decode().partition(" ")
            if text_digest != digest:
                raise IdempotencyConflict(
                    f"client_message_id {turn.client_message_id!r} was already used with a "
                    "different message"
                )
            result = await self._follow(turn, turn_id, marker)
            if result is not None:
                return result
        return None

    async def latest(self, session_id: str) -> Turn | None:
        """The session's turn in flight on any replica, relayed from its first event; None
        when there is none (or Redis is down)."""
        try:
            value: Any = await self._link.call(
                lambda client: client.get(self._link.key("latest", session_id))
            )
        except RedisDown:
            return None
        if not value:
            return None
        turn_id, _, client_message_id = value.decode().partition(" ")
        turn = Turn(session_id, "", client_message_id)
        marker = self._link.key("turn", session_id, client_message_id)
        self._start(self._relay_alone(turn, turn_id, marker))
        return turn

    async def close(self) -> None:
        """Let recordings finish briefly, then stop (at shutdown, after the turns drained)."""
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2 * self._link.timeout)
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=1.0)

    def _start(self, work: Any) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the replica that runs the turn ----------------------------------------------------

    async def _record(
        self, turn: Turn, recording: _Recording, mine: str, keys: list[str], latest: str
    ) -> None:
        """Send the turn's events as they come, renewing its marker while it runs."""
        stream = self._link.key("events", mine.split()[0])
        ended = False
        while not ended:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(HEARTBEAT_SECONDS):
                    await recording.arrived.wait()
            if recording.arrived.is_set():
                # A few events per round trip: a fast turn's start, reply and done go in one.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(LINGER_SECONDS):
                        await recording.ended.wait()
            batch = recording.take()
            ended = any(event.kind in _ENDS for event in batch)
            if not batch and turn.task is not None and turn.task.done():
                return  # cut off without an end (shutdown): the marker runs out
            try:
                await self._link.call(
                    self._send, stream, batch, keys=keys, mine=mine, latest=latest, ended=ended
                )
            except RedisDown:
                recording.stop()
                return  # followers elsewhere find the marker gone and run the turn themselves
            except TypeError:  # a field codec.py cannot write: a bug, but not the turn's end
                logger.exception("a turn's events cannot be shared between replicas")
                recording.stop()
                return

    async def _send(
        self,
        client: Redis,
        stream: str,
        batch: list[TurnEvent],
        *,
        keys: list[str],
        mine: str,
        latest: str,
        ended: bool,
    ) -> None:
        ttl = KEEP_MS if ended else RUNNING_MS
        async with client.pipeline(transaction=False) as pipe:
            for event in batch:
                fields: dict[Any, Any] = {"k": event.kind, "e": codec.dumps(event)}
                pipe.xadd(stream, fields, id=f"0-{event.id + 1}", maxlen=MAXLEN)
            pipe.pexpire(stream, ttl)
            state = "done" if ended else "running"
            # EVAL, not EVALSHA: a pipeline would first ask whether the script is loaded.
            pipe.eval(_RENEW, len(keys), *keys, mine, ttl, latest, state)
            await pipe.execute()

    # -- a replica that follows it ---------------------------------------------------------

    async def _follow(self, turn: Turn, turn_id: str, marker: str) -> TurnResult | None:
        """Relay the turn's events into ``turn``: its result (replayed), or its error raised;
        None when the runner vanished or Redis stopped answering (run it here instead)."""
        stream = self._link.key("events", turn_id)
        try:
            events = await self._link.call(_read, stream, "-", 0)
            if events and events[-1].kind == "done":
                return _replay(turn, events[-1])
            if events and events[-1].kind == "error":
                return None  # it failed: run it anew (the claim takes the id over)
            turn.relayed = True
            last = 0
            while True:
                for event in events:
                    if event.id != len(turn.events):
                        logger.warning("a relayed turn's events skip from %d to %d",
                                       len(turn.events), event.id)  # fmt: skip
                    last = event.id + 1
                    if event.kind == "error" and event.error is not None:
                        raise event.error
                    turn.emit(event.kind, **_fields(event))
                    if event.kind == "done" and event.result is not None:
                        return dataclasses.replace(event.result, replayed=True)
                after = f"0-{last}"
                events = await self._link.call(_read, stream, after, self._block_ms)
                if not events:
                    owner: Any = await self._link.call(lambda client: client.get(marker))
                    if owner is None or owner.decode().split()[0] != turn_id:
                        logger.warning("the replica running a turn stopped; running it here")
                        return None
        except RedisDown:
            return None

    async def _relay_alone(self, turn: Turn, turn_id: str, marker: str) -> None:
        """For a resume that sent no turn (``useChat``'s): relay, and end the events with an
        error when the turn cannot be followed to its end."""
        try:
            result = await self._follow(turn, turn_id, marker)
        except ChatifyError as error:
            turn.emit("error", error=error)
            return
        if result is None:
            turn.emit(
                "error",
                error=LLMUnavailable(
                    "The turn was interrupted before its reply was complete; send it again",
                    retry_after=1.0,
                ),
            )


class _Recording:
    """A turn's events since the last send (listening from the moment it is made)."""

    def __init__(self, turn: Turn) -> None:
        self._turn = turn
        self._pending: list[TurnEvent] = []
        self.arrived = asyncio.Event()
        self.ended = asyncio.Event()
        turn.taps.append(self._add)

    def _add(self, event: TurnEvent) -> None:
        self._pending.append(event)
        self.arrived.set()
        if event.kind in _ENDS:
            self.ended.set()

    def take(self) -> list[TurnEvent]:
        """The events not sent yet."""
        self.arrived.clear()
        batch, self._pending = self._pending, []
        return batch

    def stop(self) -> None:
        """Stop listening."""
        self._turn.taps.remove(self._add)


async def _read(client: Redis, stream: str, after: str, block_ms: int) -> list[TurnEvent]:
    """Events after the entry id ``after`` (``-``: all); waits up to ``block_ms`` if none."""
    entries: Any
    if block_ms:
        found: Any = await client.xread({stream: after}, count=1000, block=block_ms)
        entries = found[0][1] if found else []
    else:
        entries = await client.xrange(stream, after, "+")
    return [codec.loads(TurnEvent, fields[b"e"]) for _, fields in entries]


def _fields(event: TurnEvent) -> dict[str, Any]:
    """An event's fields besides its id and kind, for ``Turn.emit``."""
    return {
        f.name: getattr(event, f.name)
        for f in dataclasses.fields(event)
        if f.name not in ("id", "kind")
    }


def _replay(turn: Turn, done: TurnEvent) -> TurnResult:
    """A turn done elsewhere, as a stored turn is replayed: ``start``, the whole reply in one
    ``delta``, ``done`` marked replayed."""
    assert done.result is not None
    result = dataclasses.replace(done.result, replayed=True)
    turn.replayed = True
    turn.emit("start", turn=result.message_count)
    turn.emit("delta", content=result.reply)
    turn.emit("done", result=result)
    return result
