"""Versioned documents (templates and the universal rules): numbering, history and ETags.

Both stores run the same plan inside their own atomic write: every write appends the new
document to the history as version N+1, and first records the document it replaces when the
history does not hold it yet (a seeded template, or an edit made in the Firebase console), so
nothing an author wrote is ever lost and a rollback can always reach it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from services.core.errors import PreconditionFailed

DocKind = Literal["template", "rules"]
Source = Literal["initial", "console", "api", "rollback"]
Change = Callable[[dict[str, Any] | None], dict[str, Any] | None]


@dataclass(frozen=True, slots=True)
class DocRef:
    """Which versioned document: a template by id, or the universal rules."""

    kind: DocKind
    key: str

    @property
    def number_field(self) -> str:
        """The field of the document that holds its version number."""
        return "version" if self.kind == "template" else "revision"


RULES = DocRef("rules", "universalRules")


@dataclass(frozen=True, slots=True)
class DocVersion:
    """One entry of a document's history."""

    number: int
    document: dict[str, Any]
    saved_at: str
    source: Source

    def as_dict(self) -> dict[str, Any]:
        """As stored."""
        return {
            "number": self.number,
            "document": self.document,
            "saved_at": self.saved_at,
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DocVersion:
        """From its stored form."""
        return cls(int(data["number"]), data["document"], data["saved_at"], data["source"])


@dataclass(frozen=True, slots=True)
class DocWrite:
    """What a write stored: the document now current (None once deleted) and its ETag."""

    document: dict[str, Any] | None
    etag: str | None


def etag_of(document: Any) -> str:
    """A strong ETag of a document's content, the same on every store and instance."""
    text = json.dumps(_canonical(document), sort_keys=True, separators=(",", ":"))
    return '"' + hashlib.sha256(text.encode()).hexdigest()[:24] + '"'


def _canonical(value: Any) -> Any:
    """The content as every store gives it back: the Realtime Database keeps no null, empty
    list or empty object, and returns 1.0 as 1."""
    if isinstance(value, dict):
        kept = {key: _canonical(item) for key, item in value.items()}
        return {key: item for key, item in kept.items() if item not in (None, [], {})}
    if isinstance(value, list):
        return [_canonical(item) for item in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def check_if_match(current: Any, if_match: str | None) -> None:
    """``PreconditionFailed`` when ``If-Match`` names another version than the current one."""
    if if_match is None or if_match.strip() == "*" and current is not None:
        return
    wanted = {tag.strip().removeprefix("W/") for tag in if_match.split(",")}
    if current is None or etag_of(current) not in wanted:
        raise PreconditionFailed(
            "The document changed since you read it (If-Match does not match); reload it"
        )


def plan_write(
    ref: DocRef,
    *,
    current: dict[str, Any] | None,
    latest: DocVersion | None,
    new: dict[str, Any] | None,
    source: Source,
    at: str,
) -> tuple[list[DocVersion], dict[str, Any] | None]:
    """The history entries to append and the document to store (None: delete)."""
    field = ref.number_field
    entries: list[DocVersion] = []
    number = latest.number if latest else 0
    if current is not None and (latest is None or etag_of(latest.document) != etag_of(current)):
        claimed = current.get(field)
        recorded = claimed if isinstance(claimed, int) and claimed > number else number + 1
        origin: Source = "console" if latest else "initial"
        written_at = current.get("updatedAt")  # when it was written, if the writer said so
        saved_at = written_at if isinstance(written_at, str) and written_at else at
        entries.append(DocVersion(recorded, {**current, field: recorded}, saved_at, origin))
        number = recorded
    if new is None:
        return entries, None
    stored = {**new, field: number + 1}
    entries.append(DocVersion(number + 1, stored, at, source))
    return entries, stored
