"""A small generated image: what the offline responder and the mock LLM's images endpoint
return, so the image tool works end to end without a provider."""

from __future__ import annotations

import base64
import hashlib
import struct
import zlib


def placeholder_png(prompt: str, side: int = 64) -> bytes:
    """A small PNG whose colours come from the prompt: what the offline responder and the mock
    LLM return, so the image path works end to end without a provider."""
    digest = hashlib.sha256(prompt.encode()).digest()
    top, bottom = digest[:3], digest[3:6]
    rows = []
    for y in range(side):
        mix = y / max(1, side - 1)
        pixel = bytes(round(a + (b - a) * mix) for a, b in zip(top, bottom, strict=True))
        rows.append(b"\x00" + pixel * side)
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + b"".join(
        _chunk(kind, data)
        for kind, data in (
            (b"IHDR", header),
            (b"IDAT", zlib.compress(b"".join(rows))),
            (b"IEND", b""),
        )
    )


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def placeholder_b64(prompt: str) -> str:
    """``placeholder_png`` as base64, as images endpoints send ``b64_json``."""
    return base64.b64encode(placeholder_png(prompt)).decode()
