"""One image checked and cleaned: decoded whole (a file that is not the image it claims, or is
cut short, is refused), bounded in pixels before it is decoded (a decompression bomb is a
small file), turned upright by its EXIF orientation, scaled down to a longest side, and
re-encoded without any metadata (phone photos carry their GPS position in EXIF).

Blocking and CPU-bound: run it on a pool thread, never on the event loop.
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from services.core.errors import ImageTooLarge, InvalidImage

# Accepted type names (ATTACHMENT_TYPES) → Pillow's format, and the media types naming them.
FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP", "gif": "GIF"}
MEDIA_TYPES = {
    "image/png": "png",
    "image/jpeg": "jpeg",
    "image/jpg": "jpeg",
    "image/webp": "webp",
    "image/gif": "gif",
}
# What each is stored and sent as: a GIF's first frame as PNG (providers take still images).
_OUTPUT = {"PNG": ("PNG", "image/png"), "JPEG": ("JPEG", "image/jpeg"),
           "WEBP": ("WEBP", "image/webp"), "GIF": ("PNG", "image/png")}  # fmt: skip
_QUALITY = 85


@dataclass(frozen=True, slots=True)
class ImageRules:
    """The limits an image is checked against (from the settings)."""

    types: frozenset[str]  # of FORMATS' keys
    max_bytes: int
    max_side: int
    max_pixels: int


@dataclass(frozen=True, slots=True)
class CleanImage:
    """An image as stored: re-encoded bytes, their media type and dimensions."""

    data: bytes
    media_type: str
    width: int
    height: int


def claimed_type(media_type: str | None, rules: ImageRules) -> str | None:
    """The accepted type a media type names (None when none was given); ``InvalidImage``
    for a type that is not an accepted image type."""
    if media_type is None or not media_type.strip():
        return None
    kind = MEDIA_TYPES.get(media_type.split(";", 1)[0].strip().lower())
    if kind is None or kind not in rules.types:
        accepted = ", ".join(sorted(rules.types))
        raise InvalidImage(f"Images must be one of: {accepted}")
    return kind


def data_url_bytes(url: str, rules: ImageRules) -> tuple[str | None, bytes]:
    """The claimed type and the bytes of a ``data:<type>;base64,`` URL; the size is checked
    from the text's length before anything is decoded."""
    head, comma, payload = url.partition(",")
    if not head.startswith("data:") or not comma or not head.endswith(";base64"):
        raise InvalidImage("An attachment url must be a base64 data: URL")
    if len(payload) * 3 // 4 > rules.max_bytes + 2:
        raise ImageTooLarge(f"An image is larger than {rules.max_bytes} bytes")
    kind = claimed_type(head.removeprefix("data:").removesuffix(";base64") or None, rules)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImage("An attachment's data: URL is not valid base64") from None
    return kind, data


def clean_image(data: bytes, *, claimed: str | None, rules: ImageRules) -> CleanImage:
    """``data`` checked and re-encoded (see the module docstring); ``InvalidImage`` or
    ``ImageTooLarge`` when it cannot be taken."""
    if len(data) > rules.max_bytes:
        raise ImageTooLarge(f"An image is larger than {rules.max_bytes} bytes")
    formats = [FORMATS[kind] for kind in sorted(rules.types)]
    try:
        with Image.open(io.BytesIO(data), formats=formats) as image:
            found = image.format or ""
            if claimed is not None and found != FORMATS[claimed]:
                raise InvalidImage(f"The attachment is not the {claimed} image it claims to be")
            width, height = image.size
            if width * height > rules.max_pixels:  # read from the header: nothing decoded yet
                raise InvalidImage(f"An image has more than {rules.max_pixels} pixels")
            image.load()  # the first frame, whole: a file cut short fails here
            upright = ImageOps.exif_transpose(image)
            return _encode(upright, found, rules.max_side)
    except InvalidImage:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidImage("The attachment is not a readable image of an accepted type") from None
    except (OSError, ValueError, SyntaxError, EOFError):
        raise InvalidImage("The image could not be decoded (damaged or cut short)") from None


def _encode(image: Image.Image, found: str, max_side: int) -> CleanImage:
    """Scaled to ``max_side`` and saved without metadata (no EXIF, ICC profile or text)."""
    output, media_type = _OUTPUT[found]
    if max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    if output == "JPEG" and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    elif output == "PNG" and image.mode not in ("RGB", "RGBA", "L", "LA", "P", "1"):
        image = image.convert("RGBA")
    image.info.clear()  # nothing of the original's metadata is handed to the encoder
    buffer = io.BytesIO()
    if output == "PNG":
        image.save(buffer, "PNG", optimize=False)
    else:
        image.save(buffer, output, quality=_QUALITY)
    return CleanImage(buffer.getvalue(), media_type, image.width, image.height)
