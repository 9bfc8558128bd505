"""Image attachments (docs/images.md): uploaded ahead of a message, and read back by their
owner only."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Path, Response, UploadFile

from api.attachment_bodies import AttachmentBody
from api.deps import ServicesDep, ValidSessionDep
from api.errors import documented
from services.attachments.images import MEDIA_TYPES
from services.core.errors import ImageTooLarge

router = APIRouter(prefix="/chatbot", tags=["attachments"])
_EXTENSIONS = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg",
               "webp": "image/webp", "gif": "image/gif"}  # fmt: skip


@router.post(
    "/session/{session_id}/attachments",
    status_code=201,
    response_model=AttachmentBody,
    responses=documented(401, 404, 413, 422, 503),
)
async def upload_attachment(
    session: ValidSessionDep,
    services: ServicesDep,
    file: Annotated[UploadFile, File(description="One image: png, jpeg, webp or gif")],
) -> AttachmentBody:
    """Upload an image (`multipart/form-data`, field `file`) to send with a later message of
    the session as `{"id": …}`. It is decoded, scaled down and re-encoded without metadata
    before it is stored; 422 `invalid_image` when it is not the image its type or file name
    claims, 413 over ATTACHMENT_MAX_BYTES."""
    services.admission.check_images(session)
    limit = services.settings.attachment_max_bytes
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise ImageTooLarge(f"An image is larger than {limit} bytes")
    attachment = await services.attachments.upload(
        session.user_id, data, _claimed(file.content_type, file.filename)
    )
    return AttachmentBody.of(attachment, session.session_id)


@router.get(
    "/session/{session_id}/attachments/{attachment_id}",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}},
        **documented(401, 404, 503),
    },
)
async def get_attachment(
    session: ValidSessionDep,
    services: ServicesDep,
    attachment_id: Annotated[str, Path(max_length=64)],
) -> Response:
    """An image of the session's user, as stored; 404 `attachment_not_found` for any other
    (another user's too)."""
    attachment, data = await services.attachments.read(session.user_id, attachment_id)
    return Response(
        data,
        media_type=attachment.media_type,
        headers={"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"},
    )


def _claimed(content_type: str | None, filename: str | None) -> str | None:
    """The type the client claims: the part's content type when it names an image type,
    else the file name's extension (a generic type says nothing)."""
    if content_type and content_type.split(";", 1)[0].strip().lower() in MEDIA_TYPES:
        return content_type
    extension = (filename or "").rpartition(".")[2].lower()
    return _EXTENSIONS.get(extension, content_type if content_type else None)
