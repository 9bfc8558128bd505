"""An image attachment as messages keep it: a reference to bytes stored elsewhere."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# What OpenAI counts for an image at ``detail: high`` (and ``auto`` on a large image): a base,
# and so much per 512-px tile of the image fitted in 2048 px, its short side then in 768 px.
IMAGE_BASE_TOKENS = 85
IMAGE_TILE_TOKENS = 170


@dataclass(frozen=True, slots=True)
class Attachment:
    """An image stored for a user: its id, media type, size in bytes and dimensions."""

    id: str
    media_type: str  # image/png, image/jpeg, image/webp
    size: int
    width: int
    height: int

    @property
    def tokens(self) -> int:
        """The prompt tokens the image costs at the provider's documented rate."""
        return image_tokens(self.width, self.height)

    def as_dict(self) -> dict[str, Any]:
        """As stored with the message (docs/data.md)."""
        return {
            "id": self.id,
            "type": self.media_type,
            "size": self.size,
            "width": self.width,
            "height": self.height,
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Attachment:
        """From the stored form."""
        return cls(
            str(doc["id"]),
            str(doc["type"]),
            int(doc["size"]),
            int(doc["width"]),
            int(doc["height"]),
        )


def attachments_of(raw: Any) -> tuple[Attachment, ...]:
    """Stored attachments: a list of dicts (SQLite keeps it as JSON text), in order."""
    if not raw:
        return ()
    items = json.loads(raw) if isinstance(raw, str) else raw
    if isinstance(items, Mapping):  # Firebase may hand a list back as a dict by index
        items = [items[key] for key in sorted(items, key=int)]
    return tuple(Attachment.from_dict(item) for item in items)


def attachments_json(attachments: tuple[Attachment, ...]) -> str | None:
    """The stored JSON text of a message's attachments (None: it has none)."""
    return json.dumps([a.as_dict() for a in attachments]) if attachments else None


def image_tokens(width: int, height: int) -> int:
    """OpenAI's count for an image of these dimensions: 85 + 170 per 512-px tile."""
    scale = min(1.0, 2048 / max(width, height, 1))
    w, h = width * scale, height * scale
    scale = min(1.0, 768 / max(min(w, h), 1))
    w, h = w * scale, h * scale
    tiles = math.ceil(w / 512) * math.ceil(h / 512)
    return IMAGE_BASE_TOKENS + IMAGE_TILE_TOKENS * tiles


def user_folder(user_id: str) -> str:
    """The folder (or object prefix) of a user's attachments: a digest, so any user id is a
    safe name, and the one place that user's images are looked for."""
    return hashlib.sha256(user_id.encode()).hexdigest()[:40]
