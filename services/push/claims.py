"""What the replicas share about pushes: who heard a turn, who came back, who sends.

Without Redis a process knows it all (``LocalClaims``); with it, ``RedisClaims``
(``services/redis/push.py``) shares the same answers between replicas.
"""

from __future__ import annotations

from typing import Protocol

from cachetools import LRUCache

CLAIMS_KEPT = 100_000  # turns remembered as pushed in one process (at most once)


class PushClaims(Protocol):
    """The shared side of a push decision."""

    async def connected_elsewhere(self, session_id: str) -> bool:
        """Whether a socket of another replica listens to the session now."""

    async def mark(self, session_id: str) -> str:
        """Where the session's comings-back stand now (taken when a turn finishes)."""

    def attached(self, session_id: str) -> None:
        """A client came back to the session here (a socket, a turn, a stream): a push
        waiting for the grace period on another replica is cancelled. Never waits."""

    def heard(self, session_id: str, seq: int) -> None:
        """The reply at ``seq`` reached a client here (a stream relayed from the replica
        that ran the turn): that replica sends no push. Never waits."""

    async def claim(self, session_id: str, seq: int, mark: str) -> bool:
        """Whether this process sends the push of the reply at ``seq``: nobody came back
        since ``mark``, nobody heard it, and no push of it was claimed before."""

    async def close(self) -> None:
        """Stop what runs in the background (at shutdown)."""


class LocalClaims:
    """``PushClaims`` in one process: every client is seen here."""

    def __init__(self) -> None:
        self._claimed: LRUCache[tuple[str, int], bool] = LRUCache(CLAIMS_KEPT)

    async def connected_elsewhere(self, session_id: str) -> bool:
        """There is nowhere else."""
        return False

    async def mark(self, session_id: str) -> str:
        """Comings-back cancel the local wait directly: nothing to mark."""
        return ""

    def attached(self, session_id: str) -> None:
        """Handled by the notifier itself."""

    def heard(self, session_id: str, seq: int) -> None:
        """Relayed streams exist only with Redis."""

    async def claim(self, session_id: str, seq: int, mark: str) -> bool:
        """Once per reply."""
        key = (session_id, seq)
        if key in self._claimed:
            return False
        self._claimed[key] = True
        return True

    async def close(self) -> None:
        """Nothing runs."""
