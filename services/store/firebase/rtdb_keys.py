"""Realtime Database keys: any string as a valid key, and message keys that sort."""

from __future__ import annotations

import re
from urllib.parse import unquote

# What the key rules forbid (``. $ # [ ] /``, controls), what firebase-admin refuses in a path
# (those and ``?``, the start of a URL's query) and ``%`` (the escape itself). Every key the
# store builds from outside text (user ids, personality ids, client message ids) passes here.
_FORBIDDEN_IN_KEYS = re.compile(r"[%.$#?\[\]/\x00-\x1f\x7f]")


def encode_key(text: str) -> str:
    """Any string as a valid Realtime Database key (percent-escapes ``% . $ # ? [ ] /`` and
    control characters; ``decode_key`` undoes it)."""
    return _FORBIDDEN_IN_KEYS.sub(lambda m: f"%{ord(m.group()):02X}", text)


def decode_key(key: str) -> str:
    """Inverse of ``encode_key``."""
    return unquote(key)


def message_key(seq: int) -> str:
    """Keys that sort as strings in conversation order, and never look like array indexes."""
    return f"m{seq:010d}"
