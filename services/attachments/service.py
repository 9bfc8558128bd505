"""``Attachments``: images taken in, stored for their user, read back by that user only, and
the data URLs a prompt carries."""

from __future__ import annotations

import asyncio
import base64
import logging
import uuid
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from cachetools import LRUCache

from services.attachments.images import (
    CleanImage,
    ImageRules,
    claimed_type,
    clean_image,
    data_url_bytes,
)
from services.core.attachment_records import Attachment
from services.core.errors import AttachmentNotFound, ImagesNotSupported, InvalidImage
from services.core.records import StoredMessage
from services.core.settings import Settings
from services.store.base import AttachmentStore

logger = logging.getLogger(__name__)
_CACHE_BYTES = 64_000_000  # data URLs of recent images, for the next turns' prompts
_ID_LENGTH = 32


@dataclass(frozen=True, slots=True)
class ImageInput:
    """An image as a transport received it: a ``data:`` URL (with the type a client claims
    for it, if it named one apart), or the id of an uploaded attachment."""

    url: str | None = None
    id: str | None = None
    media_type: str | None = None


class Attachments:
    """Image input for every transport (see the module docstring)."""

    def __init__(self, store: AttachmentStore, settings: Settings) -> None:
        self._store = store
        self.max_per_message = settings.attachments_per_message
        self._without_images = tuple(m.lower() for m in settings.models_without_images)
        self.rules = ImageRules(
            types=frozenset(settings.attachment_types),
            max_bytes=settings.attachment_max_bytes,
            max_side=settings.attachment_max_side,
            max_pixels=settings.attachment_max_pixels,
        )
        self.history_turns = settings.attachment_history_turns
        # Decoding and encoding are CPU-bound: at most as many at once as this pool has
        # threads, however many images arrive together.
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="images")
        self._urls: LRUCache[tuple[str, str], str] = LRUCache(_CACHE_BYTES, getsizeof=len)
        # A message's images are written while its turn asks the model: the writes under way,
        # by id, awaited before the turn's messages reference them (``written``).
        self._writes: dict[str, asyncio.Task[None]] = {}

    async def close(self) -> None:
        """Finish the writes under way, then stop the image pool."""
        if self._writes:
            await asyncio.gather(*self._writes.values(), return_exceptions=True)
        self._pool.shutdown(wait=True)

    def check_allowed(self, *, model: str, template_allows: bool) -> None:
        """``ImagesNotSupported`` when the personality or its model takes no images."""
        if not template_allows or self.max_per_message == 0:
            raise ImagesNotSupported("This personality does not take images")
        name = model.strip().lower()
        if any(name.startswith(prefix) for prefix in self._without_images):
            raise ImagesNotSupported(f"The model {model} does not accept images")

    async def accept(self, user_id: str, inputs: Sequence[ImageInput]) -> tuple[Attachment, ...]:
        """The images of one message, checked and stored (uploads: read back), in order."""
        if len(inputs) > self.max_per_message:
            raise InvalidImage(f"At most {self.max_per_message} images per message")
        taken: list[Attachment] = []
        for item in inputs:
            if item.id is not None:
                taken.append(await self._uploaded(user_id, item.id))
                continue
            if item.url is None:
                raise InvalidImage("An attachment needs a url or an id")
            kind, data = data_url_bytes(item.url, self.rules)
            if item.media_type is not None:
                kind = claimed_type(item.media_type, self.rules) or kind
            taken.append(await self.store_image(user_id, data, claimed=kind, wait=False))
        return tuple(taken)

    async def upload(self, user_id: str, data: bytes, media_type: str | None) -> Attachment:
        """An uploaded file, checked and stored."""
        return await self.store_image(user_id, data, claimed=claimed_type(media_type, self.rules))

    async def store_image(
        self, user_id: str, data: bytes, *, claimed: str | None, wait: bool = True
    ) -> Attachment:
        """Clean the image on the pool, then store it; nothing is stored when it is refused.
        Without ``wait``, the write goes on while the caller carries on (``written`` waits)."""
        loop = asyncio.get_running_loop()
        clean: CleanImage = await loop.run_in_executor(
            self._pool, lambda: clean_image(data, claimed=claimed, rules=self.rules)
        )
        attachment = Attachment(
            uuid.uuid4().hex, clean.media_type, len(clean.data), clean.width, clean.height
        )
        self._urls[(user_id, attachment.id)] = _data_url(attachment, clean.data)
        if wait:
            await self._store.put(user_id, attachment, clean.data)
        else:
            task = asyncio.create_task(self._store.put(user_id, attachment, clean.data))
            self._writes[attachment.id] = task
            task.add_done_callback(lambda done: self._write_done(attachment.id, done))
        logger.info(
            "stored an image attachment %s (%d bytes, %dx%d)",
            attachment.id, attachment.size, attachment.width, attachment.height,
        )  # fmt: skip
        return attachment

    async def written(self, attachments: Iterable[Attachment]) -> None:
        """Wait for these images' writes under way; ``StoreUnavailable`` when one failed (the
        message that would reference it is then not stored)."""
        for attachment in attachments:
            task = self._writes.get(attachment.id)
            if task is not None:
                await asyncio.shield(task)

    def _write_done(self, attachment_id: str, task: asyncio.Task[None]) -> None:
        self._writes.pop(attachment_id, None)
        if not task.cancelled() and task.exception() is not None:
            logger.warning("an image attachment %s was not stored", attachment_id)

    async def read(self, user_id: str, attachment_id: str) -> tuple[Attachment, bytes]:
        """The user's image, or ``AttachmentNotFound`` (also for another user's)."""
        if not _is_id(attachment_id):
            raise AttachmentNotFound(attachment_id)
        if (task := self._writes.get(attachment_id)) is not None:
            await asyncio.wait({task})
        found = await self._store.get(user_id, attachment_id)
        if found is None:
            raise AttachmentNotFound(attachment_id)
        return found

    async def data_urls(self, user_id: str, attachments: Iterable[Attachment]) -> dict[str, str]:
        """Each image as a ``data:`` URL by id (recent ones from memory); one that is gone
        from the store is left out (the prompt then says an image was there)."""
        urls: dict[str, str] = {}
        for attachment in attachments:
            key = (user_id, attachment.id)
            url = self._urls.get(key)
            if url is None:
                found = await self._store.get(user_id, attachment.id)
                if found is None:
                    continue
                url = self._urls[key] = _data_url(*found)
            urls[attachment.id] = url
        return urls

    async def prompt_urls(
        self, user_id: str, window: Sequence[StoredMessage], images: Sequence[Attachment]
    ) -> dict[str, str]:
        """The data URLs a prompt sends: the images of the last ATTACHMENT_HISTORY_TURNS user
        messages, the new one (with ``images``) included."""
        chosen = list(images)
        turns = self.history_turns - 1
        for message in [m for m in window if m.role == "user"][-turns:] if turns else []:
            chosen += message.attachments
        return await self.data_urls(user_id, chosen)

    async def erase_user(self, user_id: str) -> int:
        """Every image of the user, from the store and from memory."""
        for key in [key for key in self._urls if key[0] == user_id]:
            self._urls.pop(key, None)
        return await self._store.delete_user(user_id)

    async def _uploaded(self, user_id: str, attachment_id: str) -> Attachment:
        attachment, data = await self.read(user_id, attachment_id)
        self._urls[(user_id, attachment.id)] = _data_url(attachment, data)
        return attachment


def _data_url(attachment: Attachment, data: bytes) -> str:
    return f"data:{attachment.media_type};base64,{base64.b64encode(data).decode()}"


def _is_id(text: str) -> bool:
    return len(text) == _ID_LENGTH and all(c in "0123456789abcdef" for c in text)
