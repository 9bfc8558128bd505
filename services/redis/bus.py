"""``RedisBus``: the ``SessionBus`` for several replicas, over Redis pub/sub.

An event is delivered to this process's subscribers at once (exactly as ``LocalBus`` does) and
published on the session's channel, ``{prefix}session:{id}``; each replica subscribes to the
channels of the sessions it has sockets on, and hands what other replicas published to its own
subscribers. Publishing never waits: events queue for one task that sends them in order, many
per round trip. While Redis is down, events reach this process's sockets only; the channels are
subscribed again when it is back. Events published meanwhile are not replayed.

A stop (``request_stop``) goes on the channel every replica listens to, ``{prefix}bus``: the
replica that runs the session's turn may have no socket on the session, so it may not listen
to the session's channel. That replica stops the turn and answers on the same channel. So
does a session's rewrite (``rewritten``: a regenerate, an edit, a variant chosen): every other
replica drops the session from memory, so that none sends the model the branch it held.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections import deque
from collections.abc import Callable, Iterator

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from services.conversation.bus import LocalBus, SessionEvent, Subscription
from services.core.redis_link import RedisDown, RedisLink
from services.redis import codec

logger = logging.getLogger(__name__)
OUTBOX_LIMIT = 10_000  # events waiting to be published; older ones are dropped past it
READ_SECONDS = 1.0
LINGER_SECONDS = 0.01  # events gathered per PUBLISH round trip
STOP_ANSWER_SECONDS = 0.5  # how long a stop waits for the replica running the turn to answer


class RedisBus:
    """``SessionBus`` shared by every replica through Redis pub/sub."""

    def __init__(self, link: RedisLink) -> None:
        self._link = link
        self._local = LocalBus()
        self._instance = uuid.uuid4().hex  # to skip our own events coming back
        self._outbox: deque[tuple[str, str]] = deque(maxlen=OUTBOX_LIMIT)
        self._queued = asyncio.Event()
        self._channels: set[str] = set()  # sessions with subscribers here
        self._pubsub: PubSub | None = None
        self._changes: set[asyncio.Task[None]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._connected = asyncio.Event()
        link.on_recovery(self._connected.set)
        self._stop_here: Callable[[str], bool] = lambda session_id: False
        self._forget_here: Callable[[str], None] = lambda session_id: None
        self._stops_asked: dict[str, asyncio.Event] = {}  # by request id: answered

    def start(self) -> None:
        """Start publishing and listening (in the lifespan)."""
        self._tasks = [
            asyncio.create_task(self._publish_queued()),
            asyncio.create_task(self._listen()),
        ]

    async def close(self) -> None:
        """Stop (at shutdown)."""
        tasks = {*self._tasks, *self._changes}
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)
        if self._pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.aclose()  # type: ignore[no-untyped-call]

    def publish(self, event: SessionEvent) -> None:
        """Deliver to this process's subscribers now, and to other replicas' soon after."""
        self._local.publish(event)
        if self._link.healthy:
            payload = json.dumps({"o": self._instance, "e": codec.dumps(event)})
            self._outbox.append((self._channel(event.session_id), payload))
            self._queued.set()

    @contextlib.contextmanager
    def subscribe(self, session_id: str) -> Iterator[Subscription]:
        """Receive the session's events, from this replica and the others."""
        channel = self._channel(session_id)
        try:
            with self._local.subscribe(session_id) as subscription:
                if channel not in self._channels:
                    self._channels.add(channel)
                    self._change("subscribe", channel)
                yield subscription
        finally:
            # Once the local subscription is gone: the last one leaves the channel (checked
            # inside it, the count never reached 0 and the channel stayed subscribed).
            if not self._local.subscribers(session_id) and channel in self._channels:
                self._channels.discard(channel)
                self._change("unsubscribe", channel)

    def listened(self, session_id: str) -> bool:
        """Always: subscribers on other replicas are not known here."""
        return True

    def subscribers(self, session_id: str) -> int:
        """How many listen to a session on this replica."""
        return self._local.subscribers(session_id)

    def on_subscribe(self, hook: Callable[[str], None]) -> None:
        """Call ``hook(session_id)`` whenever a subscriber joins on this replica."""
        self._local.on_subscribe(hook)

    def on_stop(self, stop_here: Callable[[str], bool]) -> None:
        """What stops a session's turn in this process (True when it ran one here)."""
        self._stop_here = stop_here

    def on_forget(self, forget_here: Callable[[str], None]) -> None:
        """What drops a session from this process's memory (another replica rewrote it)."""
        self._forget_here = forget_here

    async def rewritten(self, session_id: str) -> None:
        """Have the other replicas drop the session from memory: its history was rewritten
        here (a regenerate, an edit, a variant chosen). Redis down: they cannot be told,
        and one of them may send the model the old branch until it reloads the session."""
        try:
            await self._send_control({"forget": session_id})
        except RedisDown:
            logger.warning("session %s rewritten with Redis down: replicas not told", session_id)

    async def request_stop(self, session_id: str) -> bool:
        """Ask the other replicas to stop the session's turn; whether the one running it
        answered within ``STOP_ANSWER_SECONDS`` (False as well while Redis is down)."""
        if not self._link.healthy:
            return False
        ask = uuid.uuid4().hex
        answered = self._stops_asked[ask] = asyncio.Event()
        try:
            await self._send_control({"stop": session_id, "ask": ask})
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STOP_ANSWER_SECONDS):
                    await answered.wait()
            return answered.is_set()
        except RedisDown:
            return False
        finally:
            del self._stops_asked[ask]

    async def _send_control(self, message: dict[str, str]) -> None:
        """Publish on the channel every replica listens to, at once (not after the linger)."""
        payload = json.dumps({"o": self._instance, **message})
        channel = self._link.key("bus")
        await self._link.call(lambda client: client.publish(channel, payload))

    def _control(self, envelope: dict[str, str]) -> None:
        """A stop asked by another replica (stopped, and answered, if it runs here), or the
        answer to one asked here."""
        if "forget" in envelope:
            self._forget_here(envelope["forget"])
        elif "stopped" in envelope:
            if (answered := self._stops_asked.get(envelope["stopped"])) is not None:
                answered.set()
        elif self._stop_here(envelope["stop"]):
            task = asyncio.create_task(self._answer_stop(envelope["ask"]))
            self._changes.add(task)
            task.add_done_callback(self._changes.discard)

    async def _answer_stop(self, ask: str) -> None:
        with contextlib.suppress(RedisDown):
            await self._send_control({"stopped": ask})

    def _channel(self, session_id: str) -> str:
        return self._link.key("session", session_id)

    def _change(self, command: str, channel: str) -> None:
        """SUBSCRIBE or UNSUBSCRIBE on the listening connection (sent at once: the reply
        arrives on the listener's reads)."""
        pubsub = self._pubsub
        if pubsub is None or not self._link.healthy:
            return  # the listener subscribes to every wanted channel when it connects

        async def send() -> None:
            try:
                await getattr(pubsub, command)(channel)
            except (RedisError, OSError) as error:
                self._link.failed(error)

        task = asyncio.create_task(send())
        self._changes.add(task)
        task.add_done_callback(self._changes.discard)

    async def _publish_queued(self) -> None:
        while True:
            await self._queued.wait()
            await asyncio.sleep(LINGER_SECONDS)
            self._queued.clear()
            batch = list(self._outbox)
            self._outbox.clear()
            if not batch:
                continue
            try:
                await self._link.call(_publish, batch)
            except RedisDown:
                pass  # other replicas miss these events; this one delivered them

    async def _listen(self) -> None:
        while True:
            if not self._link.healthy:
                self._connected.clear()
                await self._connected.wait()
            try:
                await self._read_until_failure()
            except (RedisError, OSError) as error:
                self._link.failed(error)
            finally:
                pubsub, self._pubsub = self._pubsub, None
                if pubsub is not None:
                    with contextlib.suppress(RedisError, OSError):
                        await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _read_until_failure(self) -> None:
        pubsub = self._link.client.pubsub(ignore_subscribe_messages=True)
        # A channel of our own keeps the connection subscribed while no socket is open.
        wanted = set(self._channels)
        await pubsub.subscribe(self._link.key("bus"), *wanted)
        self._pubsub = pubsub  # from here on, sockets that open subscribe themselves
        if late := self._channels - wanted:
            await pubsub.subscribe(*late)
        while True:
            message = await pubsub.get_message(timeout=READ_SECONDS)
            if message is None or message["type"] != "message":
                continue
            self._deliver(message["data"])

    def _deliver(self, data: bytes) -> None:
        try:
            envelope = json.loads(data)
            if envelope["o"] == self._instance:
                return
            if "e" not in envelope:
                self._control(envelope)
                return
            event = codec.loads(SessionEvent, envelope["e"])
        except (ValueError, KeyError, TypeError):
            logger.warning("dropped a session event that could not be read")
            return
        self._local.publish(event)


async def _publish(client: Redis, batch: list[tuple[str, str]]) -> None:
    async with client.pipeline(transaction=False) as pipe:
        for channel, payload in batch:
            pipe.publish(channel, payload)
        await pipe.execute()
