"""Request and response bodies of the HTTP API (docs/api.md), shared by the routers."""

from __future__ import annotations

from typing import Any, Literal

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field

from api.attachment_bodies import AttachmentBody, AttachmentRef, attachment_bodies
from services.conversation.titles import TITLE_MAX_CHARS
from services.core.provider_config import target_key
from services.core.records import (
    DayUsage,
    ModelUsage,
    SessionRecord,
    StoredMessage,
    ToolCall,
    ToolUse,
    TurnResult,
    Usage,
    UsageTotals,
)
from services.core.settings import Settings

USER_ID_PATTERN = r"^[A-Za-z0-9_.:@-]{1,128}$"


class CreateSessionRequest(BaseModel):
    """Start a session with a personality."""

    user_id: str | None = Field(
        None,
        pattern=USER_ID_PATTERN,
        min_length=1,
        max_length=128,
        description="1-128 characters of A-Z a-z 0-9 _ . : @ -. Required, except for callers "
        "bound to a user (Firebase ID token, per-user API key): they may omit it, and if "
        "they send it, it must be their own (else 403).",
        examples=["user_12345"],
    )
    template_id: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        description="A personality id; the default personality when absent",
        examples=["friendly-assistant"],
    )
    variables: dict[str, str] | None = Field(
        None,
        description="Values for the variables the personality declares (`{{name}}` in its "
        "prompt and greeting); undeclared names or values over the declared maxLength are 422. "
        "Each value becomes one line of plain text: line breaks and control characters turn "
        "into spaces, bidirectional controls are removed, double quotes become '",
        examples=[{"user_name": "Sam"}],
    )
    timezone: str | None = Field(
        None,
        max_length=64,
        description="IANA time zone for the {{date}}, {{time}} and {{weekday}} placeholders "
        "(default DEFAULT_TIMEZONE)",
        examples=["Europe/Paris"],
    )


class CreateSessionResponse(BaseModel):
    success: Literal[True] = True
    session_id: str
    message: str = "Session created successfully"
    template_id: str
    welcome_message: str | None
    created_at: str


class SendMessageRequest(BaseModel):
    """One user message. Leading and trailing white space is stripped."""

    message: str = Field(
        min_length=1,
        description="1 to MAX_MESSAGE_CHARS (default 4000) characters after stripping",
        examples=["Hi"],
    )
    client_message_id: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="Idempotency key: resending it returns the stored reply without a new "
        "LLM call; reusing it with a different message is 422 idempotency_conflict",
        examples=["5f0c9a2e-msg-1"],
    )
    attachments: list[AttachmentRef] | None = Field(
        None,
        max_length=16,
        description="Images sent with the message (docs/images.md), at most "
        "ATTACHMENTS_PER_MESSAGE",
    )


class UsageBody(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_tokens: int = Field(
        0, description="Of prompt_tokens, those the provider read from its prompt cache"
    )
    cost_micros: int | None = Field(
        None,
        description="What the call cost, in micro-USD (millionths of a US dollar), by the "
        "price table (docs/usage.md); null: unknown (a model without a price, or stored "
        "before costs were counted)",
    )

    @classmethod
    def of(cls, usage: Usage | None) -> UsageBody | None:
        """From the domain record."""
        return cls(**usage.as_dict()) if usage else None


class ToolCallBody(BaseModel):
    """A tool call the model made (SSE `tool_call`, WebSocket `tool_call`)."""

    id: str = Field(description="The model's id for the call; its result carries the same")
    name: str = Field(description="`server/tool`, as templates name tools")
    server: str = Field(description="The MCP server (MCP_SERVERS)")
    tool: str
    arguments: dict[str, Any] = Field(description="As the model sent them")
    round: int = Field(description="Which model call of the turn made it, from 1")

    @classmethod
    def of(cls, call: ToolCall) -> ToolCallBody:
        """From a call."""
        return cls(
            id=call.id,
            name=call.name,
            server=call.server,
            tool=call.tool,
            arguments=call.arguments,
            round=call.round,
        )


class ToolUseBody(ToolCallBody):
    """A tool call and its result (SSE `tool_result`; a reply's `tools`)."""

    result: str = Field(description="What the model was given (an error's message, if one)")
    is_error: bool = Field(description="The tool failed, timed out or was called wrongly")
    images: list[str] | None = Field(None, description="Image URLs the tool made (images tool)")
    round_text: str | None = Field(
        None,
        description="On a round's first call: the text the model wrote with that round's "
        "calls. The reply's `content` has it too: every round's text in order, a blank line "
        "between two",
    )

    @classmethod
    def of_use(cls, use: ToolUse) -> ToolUseBody:
        """From a call and its result."""
        return cls(
            **ToolCallBody.of(use.call).model_dump(),
            result=use.result,
            is_error=use.is_error,
            images=list(use.images) or None,
            round_text=use.round_text or None,
        )


def tool_data(item: ToolCall | ToolUse) -> dict[str, Any]:
    """A tool event's JSON: the call (``tool_call``) or the call with its result."""
    if isinstance(item, ToolCall):
        return ToolCallBody.of(item).model_dump()
    return ToolUseBody.of_use(item).model_dump(exclude_none=True)


class MessageBody(BaseModel):
    seq: int = Field(description="Position in the session, from 0")
    role: Literal["user", "assistant"]
    content: str
    timestamp: str
    client_message_id: str | None
    provider: str | None = Field(
        None, description="Replies: the provider that wrote it (`default`: OPENAI_*)"
    )
    model: str | None = Field(None, description="Replies: the model that wrote it")
    tools: list[ToolUseBody] | None = Field(
        None, description="Replies that called tools: each call and its result, in order"
    )
    images: list[str] | None = Field(
        None,
        description="Replies: images the image tool made, to show with the text (URLs or "
        "`data:` URLs)",
    )
    finish_reason: Literal["stopped"] | None = Field(
        None,
        description="Replies: `stopped` when a stop cut it short (the text is what came "
        "before); null for a reply that ran to its end, and for every message stored before "
        "this field",
    )
    attachments: list[AttachmentBody] | None = Field(
        None, description="User messages: the images sent with it (docs/images.md)"
    )

    @classmethod
    def of(cls, message: StoredMessage, *, session_id: str | None = None) -> MessageBody:
        """From a stored message (with its images' read URLs when ``session_id`` is given)."""
        return cls(
            seq=message.seq,
            role=message.role,
            content=message.content,
            timestamp=message.timestamp,
            client_message_id=message.client_message_id,
            provider=message.provider,
            model=message.model,
            tools=[ToolUseBody.of_use(use) for use in message.tools] or None,
            images=[url for use in message.tools for url in use.images] or None,
            finish_reason="stopped" if message.finish_reason == "stopped" else None,
            attachments=attachment_bodies(message.attachments, session_id),
        )


class MessageResponse(BaseModel):
    success: Literal[True] = True
    response: str
    session_id: str
    message_count: int = Field(description="Completed turns (a user message and its reply)")
    replayed: bool = Field(description="True when returned from an earlier identical request")
    usage: UsageBody | None
    user_message: MessageBody = Field(description="The stored user message (seq, timestamp)")
    assistant_message: MessageBody = Field(description="The stored reply (seq, timestamp)")
    finish_reason: Literal["stop", "stopped"] = Field(
        "stop",
        description="`stopped` when a stop cut the reply short (`response` is what came "
        "before it), else `stop`",
    )

    @classmethod
    def of(cls, result: TurnResult) -> MessageResponse:
        """From a stored turn's result."""
        assert result.user_message is not None and result.assistant_message is not None
        return cls(
            response=result.reply,
            session_id=result.session_id,
            message_count=result.message_count,
            replayed=result.replayed,
            usage=UsageBody.of(result.usage),
            user_message=MessageBody.of(result.user_message, session_id=result.session_id),
            assistant_message=MessageBody.of(result.assistant_message),
            finish_reason="stopped" if result.finish_reason == "stopped" else "stop",
        )


class StopResponse(BaseModel):
    session_id: str
    stopping: Literal[True] = Field(
        True,
        description="The turn in flight is being stopped: its own response (JSON, stream, "
        'socket) ends with `finish_reason: "stopped"` once the text so far is stored',
    )


class SessionSummary(BaseModel):
    session_id: str
    user_id: str
    template_id: str
    status: Literal["active", "ended", "expired"]
    created_at: str
    last_activity: str
    ended_at: str | None
    message_count: int
    title: str | None

    @classmethod
    def fields_of(cls, record: SessionRecord) -> dict[str, Any]:
        """The summary fields of a session record."""
        return {name: getattr(record, name) for name in SessionSummary.model_fields}


class ModelUsageBody(BaseModel):
    provider: str = Field(description="The provider that answered (`default`: OPENAI_*)")
    model: str = Field(
        description="The model it was asked for: the personality's, a fallback's, or the "
        "title or memory model. A reply's own `model` in history may name a dated snapshot"
    )
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int = Field(description="prompt_tokens + completion_tokens")
    turns: int = Field(description="Stored turns it answered")
    calls: int = Field(description="Background calls it answered (titles, memory summaries)")
    cost_micros: int | None = Field(
        description="What they cost, in micro-USD; null when none of them had a price"
    )
    calls_cost_micros: int = Field(description="Of cost_micros, the background calls' part")
    unpriced: int = Field(description="Turns and calls whose cost is unknown (left out)")

    @classmethod
    def of(cls, share: ModelUsage) -> ModelUsageBody:
        """From one target's share."""
        return cls(
            provider=share.provider,
            model=share.model,
            prompt_tokens=share.prompt_tokens,
            completion_tokens=share.completion_tokens,
            total_tokens=share.total_tokens,
            turns=share.turns,
            calls=share.calls,
            cost_micros=share.known_cost,
            calls_cost_micros=share.calls_cost_micros,
            unpriced=share.unpriced,
        )


class SessionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int = Field(description="prompt_tokens + completion_tokens")
    turns: int = Field(description="Stored turns (each counted once, replays never)")
    calls: int = Field(description="Background model calls: session titles, memory summaries")
    cost_micros: int | None = Field(
        description="What the turns and calls whose cost is known cost, in micro-USD "
        "(millionths of a US dollar); null when none of them had a known cost"
    )
    calls_cost_micros: int = Field(description="Of cost_micros, the background calls' part")
    unpriced: int = Field(
        description="Turns and calls whose cost is unknown (a model without a price, or "
        "counted before costs were), left out of cost_micros"
    )
    by_model: dict[str, ModelUsageBody] = Field(
        description="The same counts split by the provider and model that served them, keyed "
        "`provider/model`, ordered by provider, then model. Usage counted before this split "
        "existed is in the totals only, so the parts may add up to less. Bounded by "
        "configuration: the personality's provider and model, its fallbacks, the global "
        "fallbacks, and the title and memory models"
    )

    @classmethod
    def of(cls, totals: UsageTotals | DayUsage | None) -> SessionUsage:
        """From the stored totals (zeros when nothing was counted)."""
        totals = totals or UsageTotals()
        return cls(
            prompt_tokens=totals.prompt_tokens,
            completion_tokens=totals.completion_tokens,
            total_tokens=totals.total_tokens,
            turns=totals.turns,
            calls=totals.calls,
            cost_micros=totals.known_cost,
            calls_cost_micros=totals.calls_cost_micros,
            unpriced=totals.unpriced,
            by_model={
                target_key((share.provider, share.model)): ModelUsageBody.of(share)
                for share in totals.by_model
            },
        )


class SessionDetail(SessionSummary):
    success: Literal[True] = True
    template_version: int | None = Field(
        description="The personality's version the session started with (null: unversioned)"
    )
    welcome_message: str | None = Field(
        description="The greeting the session opened with; shown before the first message. "
        "Not a stored message: no seq, not counted in message_count"
    )
    conversation_history: list[MessageBody] = Field(description="The last 50 messages")
    usage: SessionUsage = Field(
        description="Tokens the session spent: its turns and its background calls (titles, "
        "memory summaries), in all and by provider and model (`by_model`)"
    )


class MessagesPage(BaseModel):
    success: Literal[True] = True
    messages: list[MessageBody] = Field(description="Oldest first")
    next_before: int | None = Field(description="Pass as `before` for the previous page")
    next_after: int | None = Field(
        None, description="With `after`: pass as `after` for the next page (null: up to date)"
    )


class SessionStats(BaseModel):
    duration_seconds: float
    message_count: int
    total_messages: int


class EndSessionResponse(BaseModel):
    success: Literal[True] = True
    message: str = "Session ended successfully"
    stats: SessionStats


class SessionListItem(SessionSummary):
    template_title: str | None = Field(
        description="The personality's title (or its name) as it is now; null if it is gone"
    )
    preview: str | None = Field(
        description="The last message's start: one line, at most 120 characters (null: none yet)"
    )


class UserSessions(BaseModel):
    success: Literal[True] = True
    sessions: list[SessionListItem] = Field(description="Most recent activity first")
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null on the last page"
    )


class ExportedMessage(MessageBody):
    usage: UsageBody | None = Field(description="Token usage of a reply")

    @classmethod
    def of_stored(cls, message: StoredMessage, session_id: str) -> ExportedMessage:
        """From a stored message, usage included."""
        body = MessageBody.of(message, session_id=session_id).model_dump()
        return cls(**body, usage=UsageBody.of(message.usage))


class ExportedSession(SessionSummary):
    welcome_message: str | None = Field(description="The greeting the session opened with")
    messages: list[ExportedMessage] = Field(description="Every message, oldest first")


class ExportedDevice(BaseModel):
    token: str
    platform: str
    app_version: str | None
    registered_at: str


class UserExport(BaseModel):
    success: Literal[True] = True
    user_id: str
    exported_at: str
    sessions: list[ExportedSession] = Field(description="Most recent activity first")
    devices: list[ExportedDevice] = Field(
        [], description="Push devices registered (POST /users/{user_id}/devices)"
    )


class UserDeleted(BaseModel):
    success: Literal[True] = True
    deleted_sessions: int = Field(description="Sessions erased with all their messages")


class RenameSessionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str | None = Field(
        description="The new title; null clears it. A line break, a control character or a "
        "bidirectional control in it is 422 (`invalid_characters`)",
        min_length=1,
        max_length=TITLE_MAX_CHARS,
    )


class SessionResponse(SessionSummary):
    success: Literal[True] = True


class Personalities(BaseModel):
    success: Literal[True] = True
    personalities: dict[str, str] = Field(description="Public personality ids and descriptions")


class ErrorInfo(BaseModel):
    code: str = Field(examples=["session_not_found"])
    message: str


class ErrorBody(BaseModel):
    """Every error response."""

    model_config = ConfigDict(json_schema_extra={"description": "Error response"})

    success: Literal[False] = False
    error: ErrorInfo
    detail: str | list[Any] = Field(description="The message; for 422, the validation errors")


def invalid(*loc: str | int, msg: str, kind: str = "value_error") -> RequestValidationError:
    """A 422 ``validation_error`` for one field, like those FastAPI raises itself."""
    return RequestValidationError([{"type": kind, "loc": loc, "msg": msg}])


def message_problem(text: str, limit: int) -> dict[str, Any] | None:
    """What is wrong with a stripped message, as a validation error entry; None when fine."""
    if not text:
        return {"type": "string_too_short", "msg": "Message is empty", "ctx": {"min_length": 1}}
    if len(text) > limit:
        return {
            "type": "string_too_long",
            "msg": f"Message has {len(text)} characters; at most {limit} are allowed",
            "ctx": {"max_length": limit},
        }
    return None


def checked_message(body: SendMessageRequest, settings: Settings) -> str:
    """The message stripped, within MAX_MESSAGE_CHARS, else a 422 like any validation error."""
    text = body.message.strip()
    problem = message_problem(text, settings.max_message_chars)
    if problem is not None:
        raise RequestValidationError([{**problem, "loc": ("body", "message")}])
    return text
