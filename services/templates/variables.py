"""``{{placeholders}}`` in a personality's prompt and greeting, filled once at session start.

Built-ins: ``date``, ``time`` and ``weekday`` (in the session's time zone), ``model`` and
``personality`` (the template's title). Others are declared by the template with a default and
a maximum length, and passed by the client as data, made one line of plain text
(``services.core.plain_text``: line breaks and control characters become spaces, bidirectional
controls go) so a value cannot start a new line of instructions, and its double quotes become
``'`` so a value framed in quotes (``"{{user_name}}"``) cannot close them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from services.core.errors import InvalidInput
from services.core.plain_text import one_line

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
BUILT_INS = frozenset({"date", "time", "weekday", "model", "personality"})
# ASCII's double quote and its typographic forms, any of which may close a frame.
_DOUBLE_QUOTES = re.compile(r'["\u00ab\u00bb\u201c-\u201f\u301d-\u301f\uff02]')
TIMEZONE_MAX = 64


def placeholders(text: str) -> set[str]:
    """The placeholder names a text uses."""
    return set(PLACEHOLDER.findall(text))


def render(text: str, values: Mapping[str, str]) -> str:
    """The text with every known placeholder replaced (unknown ones are left as written)."""
    return PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), text)


def zone(name: str | None, default: str) -> ZoneInfo:
    """The time zone a client asked for, or ``InvalidInput`` naming ``timezone``."""
    try:
        if name is not None and len(name) > TIMEZONE_MAX:
            raise ValueError(name)
        return ZoneInfo(name or default)
    except (ZoneInfoNotFoundError, ValueError):
        problem = {
            "type": "invalid_timezone",
            "loc": ["body", "timezone"],
            "msg": "Unknown time zone; use an IANA name such as Europe/Paris",
        }
        raise InvalidInput("Unknown time zone", problems=[problem]) from None


def built_in_values(*, now: datetime, model: str, personality: str) -> dict[str, str]:
    """The built-in placeholders' values at ``now`` (already in the session's zone)."""
    return {
        "date": now.strftime("%Y-%m-%d"),
        "time": now.strftime("%H:%M"),
        "weekday": now.strftime("%A"),
        "model": model,
        "personality": personality,
    }


def clean_value(value: str) -> str:
    """A client's value as plain data on one line, with no double quote."""
    return _DOUBLE_QUOTES.sub("'", one_line(value))
