"""What push notifications keep per user: the devices that receive them and the opt-outs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Platform = Literal["android", "ios", "web"]


@dataclass(frozen=True, slots=True)
class Device:
    """A device's Firebase Cloud Messaging registration token, as a user registered it."""

    token: str
    platform: Platform
    app_version: str | None
    registered_at: str  # ISO time of the latest registration (re-registering refreshes it)

    def as_dict(self) -> dict[str, str | None]:
        """As stored (Firebase) and exported."""
        return {
            "token": self.token,
            "platform": self.platform,
            "app_version": self.app_version,
            "registered_at": self.registered_at,
        }


@dataclass(frozen=True, slots=True)
class PushPreferences:
    """A user's opt-outs: every push (``enabled`` False) or those of some sessions."""

    enabled: bool = True
    muted_sessions: frozenset[str] = field(default_factory=frozenset)

    def allows(self, session_id: str) -> bool:
        """Whether a finished turn of this session may be pushed."""
        return self.enabled and session_id not in self.muted_sessions
