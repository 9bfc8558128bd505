"""Records the service keeps: sessions, messages, turns, and time helpers."""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from services.core.attachment_records import Attachment
from services.core.provider_config import DEFAULT_PROVIDER, Target
from services.core.usage_counts import DayUsage as DayUsage
from services.core.usage_counts import ModelUsage as ModelUsage
from services.core.usage_counts import UsageTotals as UsageTotals
from services.core.usage_counts import by_target as by_target

Clock = Callable[[], datetime]
SessionStatus = Literal["active", "ended", "expired"]
Role = Literal["user", "assistant"]
MemoryMode = Literal["summary", "window"]


def utc_now() -> datetime:
    """The wall clock, timezone-aware in UTC."""
    return datetime.now(UTC)


def isoformat(moment: datetime) -> str:
    """ISO 8601 in UTC with milliseconds and a ``Z`` (sorts as a string)."""
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    # isoformat() rather than strftime(): a quarter of the time, on every turn's timestamps.
    return moment.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def is_session_id(value: str) -> bool:
    """Session ids are canonical UUIDs; anything else cannot exist and never reaches the store."""
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


def parse_iso(text: str) -> datetime:
    """Inverse of ``isoformat``."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass(frozen=True, slots=True)
class Sampling:
    """What the LLM is asked with, snapshotted per session."""

    model: str
    temperature: float
    max_tokens: int
    presence_penalty: float
    frequency_penalty: float
    provider: str = DEFAULT_PROVIDER
    fallbacks: tuple[Target, ...] = ()  # tried in order when the provider fails
    tools: tuple[str, ...] = ()  # the MCP tools it may call: "server/tool" or "server/*"


def background_sampling(
    session: Sampling, model: str | None, temperature: float, max_tokens: int
) -> Sampling:
    """A background call's sampling (a title, a memory): the session's provider and fallbacks,
    its model unless ``model`` names another, no penalties, no tools."""
    return dataclasses.replace(
        session,
        model=model or session.model,
        temperature=temperature,
        max_tokens=max_tokens,
        presence_penalty=0.0,
        frequency_penalty=0.0,
        tools=(),
    )


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A tool call the model made: which tool of which MCP server, with what arguments."""

    id: str  # the model's id for the call, which its result answers
    server: str
    tool: str
    arguments: dict[str, Any]
    round: int = 1  # the model call of the turn that made it, from 1

    @property
    def name(self) -> str:
        """``server/tool``, as templates name tools."""
        return f"{self.server}/{self.tool}"


@dataclass(frozen=True, slots=True)
class ToolUse:
    """A tool call and its result (text for the model; an error is a result too)."""

    call: ToolCall
    result: str
    is_error: bool = False
    images: tuple[str, ...] = ()  # image URLs the tool returned (the image tool)
    # On a round's first call: the text the model wrote with that round's calls (the reply's
    # content has it too, before the next round's text; services.llm.tools.messages).
    round_text: str = ""

    def as_dict(self) -> dict[str, Any]:
        """As stored with the reply and shown in history (docs/data.md)."""
        c = self.call
        doc: dict[str, Any] = {
            "id": c.id, "server": c.server, "tool": c.tool, "arguments": c.arguments,
            "round": c.round, "result": self.result, "is_error": self.is_error,
        }  # fmt: skip
        if self.images:
            doc["images"] = list(self.images)
        if self.round_text:
            doc["round_text"] = self.round_text
        return doc

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> ToolUse:
        """From the stored form."""
        arguments = doc.get("arguments") or {}
        if isinstance(arguments, str):  # Firebase keeps them as JSON text
            arguments = json.loads(arguments)
        call = ToolCall(
            str(doc["id"]), str(doc["server"]), str(doc["tool"]), dict(arguments),
            int(doc.get("round") or 1),
        )  # fmt: skip
        images = tuple(str(url) for url in doc.get("images") or ())
        result, is_error = str(doc.get("result") or ""), bool(doc.get("is_error"))
        return cls(call, result, is_error, images, str(doc.get("round_text") or ""))


def tool_uses(raw: Any) -> tuple[ToolUse, ...]:
    """Stored tool uses: a list of dicts (SQLite keeps it as JSON text), in call order."""
    items = json.loads(raw) if isinstance(raw, str) else raw or ()
    if isinstance(items, Mapping):  # Firebase may hand a list back as a dict by index
        items = [items[key] for key in sorted(items, key=int)]
    return tuple(ToolUse.from_dict(item) for item in items)


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one completion."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_tokens: int = 0  # of prompt_tokens, those the provider read from its cache
    cost_micros: int | None = None  # micro-USD, priced once (``PriceTable``); None: unknown

    def as_dict(self) -> dict[str, int | None]:
        """The API's JSON shape."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "cached_tokens": self.cached_tokens,
            "cost_micros": self.cost_micros,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Usage | None:
        """Read a stored usage object, if there is one."""
        if not data:
            return None
        return cls(
            int(data.get("prompt_tokens", 0)),
            int(data.get("completion_tokens", 0)),
            int(data.get("total_tokens", 0)),
            int(data.get("cached_tokens") or 0),
            None if data.get("cost_micros") is None else int(data["cost_micros"]),  # older: None
        )


@dataclass(frozen=True, slots=True)
class CallUsage:
    """An answered background call's counts (a title, a memory), for the write that stores
    its result to add: its tokens and one call, on the user's UTC day of ``at`` and on the
    session, and on ``target``'s share of both."""

    user_id: str
    usage: Usage
    at: str
    target: Target | None = None


@dataclass(slots=True)
class SessionRecord:
    """A session's metadata as stored (its history lives beside it)."""

    session_id: str
    user_id: str
    template_id: str
    status: SessionStatus
    created_at: str
    last_activity: str
    ended_at: str | None
    message_count: int
    system_prompt: str
    sampling: Sampling
    context_messages: int
    title: str | None = None
    summary: str | None = None
    template_version: int | None = None
    preview: str | None = None  # the start of the last message (lists only)
    welcome_message: str | None = None  # the greeting the session opened with (no seq)
    context_tokens: int | None = None  # budget for history in the prompt; None: count only
    memory_mode: MemoryMode = "summary"
    summary_seq: int = 0  # ``summary`` covers every message below this seq
    usage_totals: UsageTotals | None = None  # get_session only; None: nothing counted yet

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> SessionRecord:
        """From stored fields named as in docs/data.md (a SQLite row or a Firebase node)."""
        return cls(
            session_id=fields["session_id"],
            user_id=fields["user_id"],
            template_id=fields["template_id"],
            status=fields["status"],
            created_at=fields["created_at"],
            last_activity=fields["last_activity"],
            ended_at=fields.get("ended_at"),
            message_count=int(fields.get("message_count") or 0),
            system_prompt=fields["system_prompt"],
            sampling=Sampling(
                model=fields["model"],
                temperature=float(fields["temperature"]),
                max_tokens=int(fields["max_tokens"]),
                presence_penalty=float(fields["presence_penalty"]),
                frequency_penalty=float(fields["frequency_penalty"]),
                provider=fields.get("provider") or DEFAULT_PROVIDER,
                fallbacks=_targets(fields.get("fallbacks")),
                tools=_tool_patterns(fields.get("tools")),
            ),
            context_messages=int(fields["context_messages"]),
            title=fields.get("title"),
            preview=fields.get("preview"),
            welcome_message=fields.get("welcome_message"),
            template_version=fields.get("template_version"),
            context_tokens=fields.get("context_tokens"),
            memory_mode="window" if fields.get("memory_mode") == "window" else "summary",
            **_memory_fields(fields),
        )


def _targets(raw: Any) -> tuple[Target, ...]:
    """Stored fallbacks: a list of ``{provider, model}`` (SQLite keeps it as JSON text)."""
    items = json.loads(raw) if isinstance(raw, str) else raw or ()
    return tuple((str(item["provider"]), str(item["model"])) for item in items)


def _tool_patterns(raw: Any) -> tuple[str, ...]:
    """Stored tool patterns: a list (SQLite keeps it as JSON text)."""
    items = json.loads(raw) if isinstance(raw, str) else raw or ()
    return tuple(str(item) for item in items)


def _memory_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The memory as stored: a ``memory`` node (Firebase), or ``summary`` and ``summary_seq``
    (SQLite, or a summary an author put on a session by hand: it covers nothing yet)."""
    node = fields.get("memory")
    if isinstance(node, Mapping):
        return {"summary": node.get("text") or None, "summary_seq": int(node.get("seq") or 0)}
    return {"summary": fields.get("summary"), "summary_seq": int(fields.get("summary_seq") or 0)}


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One message of a session's history."""

    seq: int
    role: Role
    content: str
    timestamp: str
    client_message_id: str | None = None
    usage: Usage | None = None
    provider: str | None = None  # replies: the provider and model that wrote it
    model: str | None = None
    tools: tuple[ToolUse, ...] = ()  # replies: the tools it called first, in order
    finish_reason: str | None = None  # replies: "stopped" when stopped; None: ran to its end
    attachments: tuple[Attachment, ...] = ()  # user messages: the images sent with it


@dataclass(frozen=True, slots=True)
class NewTurn:
    """A completed turn, ready to store: the user's message and the reply."""

    user_text: str
    reply: str
    client_message_id: str | None
    user_at: str
    reply_at: str
    usage: Usage | None
    provider: str | None = None
    model: str | None = None  # as the provider named it in its reply
    tools: tuple[ToolUse, ...] = ()
    asked_model: str | None = None  # the model the provider was asked for (the route's)
    finish_reason: str | None = None  # "stopped": the reply is what came before a stop
    attachments: tuple[Attachment, ...] = ()  # the user message's images, stored before

    @property
    def served_by(self) -> Target | None:
        """The route target its usage is counted under (None: unknown, totals only)."""
        if self.provider is None:
            return None
        return (self.provider, self.asked_model or self.model or "")


@dataclass(frozen=True, slots=True)
class StoredTurn:
    """A turn as stored. ``created`` is False when it was already there (idempotent replay)."""

    user: StoredMessage
    assistant: StoredMessage
    created: bool = True

    @property
    def message_count(self) -> int:
        """Completed turns up to and including this one."""
        return self.assistant.seq // 2 + 1


PREVIEW_CHARS = 120


def preview_of(text: str) -> str:
    """The start of a message for a sessions list: one line, about ``PREVIEW_CHARS`` long."""
    flat = " ".join(text.split())
    return flat if len(flat) <= PREVIEW_CHARS else flat[: PREVIEW_CHARS - 1].rstrip() + "…"


@dataclass(frozen=True, slots=True)
class SessionCursor:
    """Where a page of a user's sessions (newest activity first) continues: below this."""

    last_activity: str
    session_id: str


@dataclass(frozen=True, slots=True)
class TurnClaim:
    """What a store reserved for a turn before its write (seqs, the id), so that the write
    after the reply is one request. ``seq`` is -1 where the store allocates at write time."""

    seq: int = -1
    token: str = ""


@dataclass(frozen=True, slots=True)
class TurnResult:
    """What a turn returns to its transport."""

    session_id: str
    reply: str
    message_count: int
    replayed: bool
    usage: Usage | None
    model: str
    latency_ms: float = 0.0
    # The stored messages (seqs, timestamps); None only for previews, which store nothing.
    user_message: StoredMessage | None = None
    assistant_message: StoredMessage | None = None

    @property
    def finish_reason(self) -> str:
        """``"stopped"`` for a reply stopped part-way, else ``"stop"`` (it ran to its end)."""
        stored = self.assistant_message
        return "stopped" if stored is not None and stored.finish_reason == "stopped" else "stop"


@dataclass(frozen=True, slots=True)
class SeedReport:
    """What seeding did."""

    created: list[str] = field(default_factory=list)
    overwritten: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)


@dataclass(slots=True)
class ModelCounts:
    """A personality's turns and reply tokens that one route target served."""

    turns: int = 0
    reply_tokens: int = 0


@dataclass(slots=True)
class TemplateCounts:
    """Usage counters of one personality (totals, or a delta waiting to be flushed)."""

    sessions: int = 0
    turns: int = 0
    reply_tokens: int = 0
    failed_turns: int = 0
    last_used: str | None = None
    by_model: dict[Target, ModelCounts] = field(default_factory=dict)  # turns' share by target
    cost_micros: int = 0  # micro-USD of its turns whose cost was known (not background calls)

    def add(self, other: TemplateCounts) -> None:
        """Add another set of counters to these."""
        self.sessions += other.sessions
        self.turns += other.turns
        self.reply_tokens += other.reply_tokens
        self.failed_turns += other.failed_turns
        self.cost_micros += other.cost_micros
        if other.last_used and (self.last_used is None or other.last_used > self.last_used):
            self.last_used = other.last_used
        for target, counts in other.by_model.items():
            self.served(target, turns=counts.turns, reply_tokens=counts.reply_tokens)

    def served(self, target: Target, *, turns: int, reply_tokens: int) -> None:
        """Add to one route target's share."""
        share = self.by_model.setdefault(target, ModelCounts())
        share.turns += turns
        share.reply_tokens += reply_tokens

    def as_dict(self) -> dict[str, Any]:
        """As stored (Firebase node, SQLite row)."""
        return {
            "sessions": self.sessions,
            "turns": self.turns,
            "reply_tokens": self.reply_tokens,
            "failed_turns": self.failed_turns,
            "last_used": self.last_used,
            "cost_micros": self.cost_micros,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TemplateCounts:
        """From the stored form."""
        return cls(
            int(data.get("sessions") or 0),
            int(data.get("turns") or 0),
            int(data.get("reply_tokens") or 0),
            int(data.get("failed_turns") or 0),
            data.get("last_used"),
            cost_micros=int(data.get("cost_micros") or 0),
        )


def utc_day(at: str) -> str:
    """The UTC day (``YYYY-MM-DD``) of an ISO 8601 timestamp: where its usage is counted."""
    if len(at) == 24 and at[10] == "T" and at[-1] == "Z":  # ours (``isoformat``): UTC already
        return at[:10]
    return parse_iso(at).astimezone(UTC).strftime("%Y-%m-%d")
