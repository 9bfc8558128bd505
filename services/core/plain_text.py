"""One line of plain text, for what a request or a model gives that must stay one line:
variable values (``services.templates.variables``) and session titles
(``services.conversation.titles``).

- Line breaks: every separator ``str.splitlines`` knows (``\\n \\r \\v \\f``, ``\\x1c``–``\\x1e``,
  NEL ``\\x85``, U+2028, U+2029); with them all other control characters (C0, DEL, C1).
- Bidirectional controls (U+061C, U+200E, U+200F, U+202A–U+202E, U+2066–U+2069): they would let
  a value reorder the text shown around it (a title reading backwards, a name that swallows
  the rest of a greeting).
"""

from __future__ import annotations

import re

_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_BIDI = re.compile(r"[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def one_line(text: str) -> str:
    """The text with its line breaks and control characters as spaces and its bidirectional
    controls removed, stripped."""
    return _CONTROLS.sub(" ", _BIDI.sub("", text)).strip()


def is_plain(text: str) -> bool:
    """Whether the text has no line break, control character or bidirectional control."""
    return _CONTROLS.search(text) is None and _BIDI.search(text) is None
