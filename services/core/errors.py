"""Domain errors. Each carries the API error code and HTTP status it maps to."""

from __future__ import annotations

from typing import Any


class ChatifyError(Exception):
    """Base of every error the API reports to clients."""

    code = "internal_error"
    status = 500
    retry_after: float | None = None

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        if retry_after is not None:
            self.retry_after = retry_after


class SessionNotFound(ChatifyError):
    code, status = "session_not_found", 404

    def __init__(self, session_id: str) -> None:
        super().__init__(f"Session {session_id} not found")


class SessionEnded(ChatifyError):
    code, status = "session_ended", 409

    def __init__(self, session_id: str, status: str = "ended") -> None:
        super().__init__(f"Session {session_id} is {status}; start a new session")


class NoTurnInFlight(ChatifyError):
    """A stop asked of a session with no turn running (it ended, or none was sent)."""

    code, status = "no_turn_in_flight", 409

    def __init__(self, session_id: str) -> None:
        super().__init__(f"Session {session_id} has no turn in flight to stop")


class NothingToRegenerate(ChatifyError):
    """A regenerate asked of a session with no user message yet."""

    code, status = "nothing_to_regenerate", 409

    def __init__(self, session_id: str) -> None:
        super().__init__(f"Session {session_id} has no message to answer again")


class MessageNotFound(ChatifyError):
    """A message seq (or a variant of it) the session's active branch does not have."""

    code, status = "message_not_found", 404


class NotAUserMessage(ChatifyError):
    """An edit of a reply: only the user's own messages are edited."""

    code, status = "not_a_user_message", 422

    def __init__(self, seq: int) -> None:
        super().__init__(f"Message {seq} is a reply; only user messages can be edited")


class HistoryChanged(ChatifyError):
    """A regenerate, edit or variant choice found the history changed meanwhile (another
    replica wrote to the session); nothing was written."""

    code, status = "history_changed", 409


class TemplateNotFound(ChatifyError):
    code, status = "template_not_found", 404


class IdempotencyConflict(ChatifyError):
    code, status = "idempotency_conflict", 422


class SessionBusy(ChatifyError):
    code, status = "session_busy", 429
    retry_after = 1.0


class LLMError(ChatifyError):
    code, status = "llm_error", 502

    def __init__(
        self, message: str, *, upstream_status: int | None = None, garbled: bool = False
    ) -> None:
        super().__init__(message)
        self.upstream_status = upstream_status  # the provider's HTTP status, when it sent one
        # The reply broke the protocol (not JSON, a stream line that is not JSON): the
        # provider misbehaves, so another one may answer.
        self.garbled = garbled


class ContextTooLong(ChatifyError):
    """The provider refused the prompt as too long, even after a retry with less history."""

    code, status = "context_too_long", 422


class ToolResultsTooLong(ContextTooLong):
    """Too long only once tool results were added: the turn's tools have run and clients saw
    them, so it is not retried with less history (that would run them again)."""


class LLMTimeout(ChatifyError):
    code, status = "llm_timeout", 504


class LLMUnavailable(ChatifyError):
    code, status = "llm_unavailable", 503


class ProviderUnreachable(LLMUnavailable):
    """The connection was refused, reset or dropped before the reply ended (worth one
    immediate retry, unlike a timeout)."""


class ProviderRateLimited(LLMUnavailable):
    """The provider answered 429. ``wait`` is its ``Retry-After`` in seconds, if it sent one;
    clients are told that (5 s when it sent none or 0)."""

    def __init__(self, message: str, *, wait: float | None) -> None:
        super().__init__(message, retry_after=wait or 5.0)
        self.wait = wait


class StoreUnavailable(ChatifyError):
    code, status = "store_unavailable", 503
    retry_after = 2.0


class Unauthenticated(ChatifyError):
    code, status = "unauthenticated", 401


class Forbidden(ChatifyError):
    code, status = "forbidden", 403


class RateLimited(ChatifyError):
    code, status = "rate_limited", 429


class ActiveSessionLimit(ChatifyError):
    code, status = "active_session_limit", 409


def active_limit(user_id: str, cap: int) -> ActiveSessionLimit:
    """A user's ``cap`` active sessions reached: end one to start another."""
    return ActiveSessionLimit(
        f"User {user_id} already has {cap} active sessions; end one to start another"
    )


class InvalidInput(ChatifyError):
    """A 422 whose ``problems`` list every bad field as ``{type, loc, msg}``."""

    code, status = "validation_error", 422

    def __init__(self, message: str, *, problems: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.problems = problems


class InvalidCursor(ChatifyError):
    """A page cursor this service did not issue: refused before it reaches the store."""

    code, status = "invalid_cursor", 400

    def __init__(self) -> None:
        super().__init__("Not a cursor this API issued; start again from the first page")


class TemplateExists(ChatifyError):
    code, status = "template_exists", 409


class DefaultTemplate(ChatifyError):
    code, status = "default_template", 409


class PreconditionFailed(ChatifyError):
    code, status = "precondition_failed", 412


class QuotaExceeded(ChatifyError):
    """USER_DAILY_TOKEN_QUOTA is used up; ``retry_after`` is the time to the next UTC midnight."""

    code, status = "quota_exceeded", 429


class CostLimitExceeded(ChatifyError):
    """USER_DAILY_COST_LIMIT_MICROS is spent; ``retry_after`` is the time to the next UTC
    midnight."""

    code, status = "cost_limit", 429


class InvalidImage(ChatifyError):
    """An attachment that is not an image of an accepted type, not the type it claims, cut
    short, too many of them, or of more pixels than ATTACHMENT_MAX_PIXELS."""

    code, status = "invalid_image", 422


class ImageTooLarge(ChatifyError):
    """An image over ATTACHMENT_MAX_BYTES: answered like a body over its limit."""

    code, status = "payload_too_large", 413


class ImagesNotSupported(ChatifyError):
    """Images sent to a session whose personality turns image input off, or whose model is
    known not to accept images (MODELS_WITHOUT_IMAGES); refused before any model call."""

    code, status = "images_not_supported", 422


class AttachmentNotFound(ChatifyError):
    """An attachment id the caller's user does not have (another user's answers the same)."""

    code, status = "attachment_not_found", 404

    def __init__(self, attachment_id: str) -> None:
        super().__init__(f"Attachment {attachment_id[:64]} not found")
