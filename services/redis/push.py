"""``RedisClaims``: the push decisions replicas share through Redis (``services/push``).

- a client coming back to a session on any replica bumps ``{prefix}push:back:{session}``; the
  replica waiting to push compares it with what it read when the turn finished;
- a reply relayed to a client on another replica sets ``{prefix}push:heard:{session}:{seq}``;
- the push of a reply is claimed with ``SET {prefix}push:sent:{session}:{seq} NX``, in the
  same script as both checks: exactly one replica sends it, at most once;
- a socket on another replica shows as a subscriber of the session's channel (``PUBSUB
  NUMSUB``: each replica with sockets on a session subscribes to it, ``services/redis/bus``).

While Redis is down, a replica decides alone from what it sees (the turn ran there, so no
other replica would push it).
"""

from __future__ import annotations

import asyncio
import logging

from redis.asyncio import Redis

from services.core.background import Tasks
from services.core.redis_link import RedisDown, RedisLink
from services.push.claims import LocalClaims

logger = logging.getLogger(__name__)
CLAIM_SECONDS = 86_400  # how long a sent push is remembered
MARK_SECONDS = 60  # how long comings-back and heard replies are kept beyond the grace period

_CLAIM = """
local back = redis.call('GET', KEYS[1]) or '0'
if back ~= ARGV[1] then return 0 end
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if redis.call('SET', KEYS[3], '1', 'NX', 'EX', ARGV[2]) then return 1 end
return 0
"""


class RedisClaims:
    """``PushClaims`` shared by every replica."""

    def __init__(self, link: RedisLink, *, grace_seconds: float) -> None:
        self._link = link
        self._ttl = int(grace_seconds) + MARK_SECONDS
        self._script = link.client.register_script(_CLAIM)
        self._notes = Tasks()  # comings-back and heard replies, written without waiting
        self._alone = LocalClaims()
        self._bumps: dict[str, asyncio.Task[None]] = {}  # the last bump per session, in flight
        self._in_flight: set[asyncio.Task[None]] = set()

    async def connected_elsewhere(self, session_id: str) -> bool:
        """A replica subscribed to the session's channel has a socket on it."""
        channel = self._link.key("session", session_id)
        try:
            counts = await self._link.call(lambda client: client.pubsub_numsub(channel))
        except RedisDown:
            return False
        return any(int(count) > 0 for _, count in counts)

    async def mark(self, session_id: str) -> str:
        """The session's comings-back counter, once this replica's own bump of it (the turn
        that just finished was submitted here) has landed."""
        if (bump := self._bumps.get(session_id)) is not None:
            await asyncio.wait({bump})
        try:
            raw = await self._link.call(lambda client: client.get(self._back(session_id)))
        except RedisDown:
            return "0"
        return raw.decode() if isinstance(raw, bytes) else "0"

    def attached(self, session_id: str) -> None:
        """Bump the counter (in the background)."""
        key = self._back(session_id)

        async def bump() -> None:
            async def run(client: Redis) -> None:
                pipe = client.pipeline()
                pipe.incr(key)
                pipe.expire(key, self._ttl)
                await pipe.execute()

            try:
                await self._link.call(run)
            except RedisDown:
                pass  # a replica waiting to push cannot be told; it pushes

        task = asyncio.create_task(bump())
        self._bumps[session_id] = task
        self._in_flight.add(task)
        task.add_done_callback(lambda done: self._landed(session_id, done))

    def _landed(self, session_id: str, bump: asyncio.Task[None]) -> None:
        self._in_flight.discard(bump)
        if self._bumps.get(session_id) is bump:
            del self._bumps[session_id]

    def heard(self, session_id: str, seq: int) -> None:
        """Note the reply as heard (in the background)."""
        key = self._link.key("push", "heard", session_id, str(seq))

        async def note() -> None:
            try:
                await self._link.call(lambda client: client.set(key, 1, ex=self._ttl))
            except RedisDown:
                pass

        self._notes.start(note())

    async def claim(self, session_id: str, seq: int, mark: str) -> bool:
        """Both checks and the claim in one script (atomic)."""
        keys = [
            self._back(session_id),
            self._link.key("push", "heard", session_id, str(seq)),
            self._link.key("push", "sent", session_id, str(seq)),
        ]
        try:
            return bool(await self._link.script(self._script, keys, [mark, CLAIM_SECONDS]))
        except RedisDown:
            logger.warning("push for session %s decided without Redis", session_id)
            return await self._alone.claim(session_id, seq, mark)

    async def close(self) -> None:
        """Stop writing notes (at shutdown)."""
        for task in list(self._in_flight):
            task.cancel()
        await asyncio.gather(*self._in_flight, return_exceptions=True)
        await self._notes.close()

    def _back(self, session_id: str) -> str:
        return self._link.key("push", "back", session_id)
