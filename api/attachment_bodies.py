"""The JSON shapes of image attachments (docs/images.md): as a message sends them, and as
history, exports and replies show them."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.attachments.service import ImageInput
from services.core.attachment_records import Attachment

ATTACHMENT_PATH = "/api/v1/chatbot/session/{session_id}/attachments/{attachment_id}"


class AttachmentRef(BaseModel):
    """One image of a message: a `data:` URL, or the `id` an upload returned."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(
        None,
        description="`data:image/png;base64,…` (png, jpeg, webp or gif: ATTACHMENT_TYPES); "
        "its bytes at most ATTACHMENT_MAX_BYTES",
        examples=["data:image/png;base64,iVBORw0KGgo…"],
    )
    id: str | None = Field(
        None,
        description="An attachment uploaded to POST …/attachments by the same user",
        examples=["3f2b8c1d9e7a4b6c8d0e1f2a3b4c5d6e"],
    )

    @model_validator(mode="after")
    def _one_of(self) -> AttachmentRef:
        if (self.url is None) == (self.id is None):
            raise ValueError("an attachment has either a url or an id")
        return self

    def as_input(self) -> ImageInput:
        """As the attachments service takes it."""
        return ImageInput(url=self.url, id=self.id)


class AttachmentBody(BaseModel):
    """A stored image: its reference, and where its owner reads it."""

    id: str
    type: str = Field(description="Media type as stored: image/png, image/jpeg or image/webp")
    size: int = Field(description="Bytes as stored (re-encoded, without metadata)")
    width: int
    height: int
    url: str | None = Field(
        None,
        description="GET it (same credentials) for the bytes; answers 404 to anyone but the "
        "session's user",
    )

    @classmethod
    def of(cls, attachment: Attachment, session_id: str | None) -> AttachmentBody:
        """From a stored reference, with its read URL when the session is known."""
        url = None
        if session_id is not None:
            url = ATTACHMENT_PATH.format(session_id=session_id, attachment_id=attachment.id)
        return cls(
            id=attachment.id,
            type=attachment.media_type,
            size=attachment.size,
            width=attachment.width,
            height=attachment.height,
            url=url,
        )


def attachment_bodies(
    attachments: tuple[Attachment, ...], session_id: str | None
) -> list[AttachmentBody] | None:
    """A message's attachments as shown (None: it has none)."""
    return [AttachmentBody.of(a, session_id) for a in attachments] or None
