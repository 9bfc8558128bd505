"""``BucketAttachments``: image bytes in a Cloud Storage bucket (Firebase Storage).

One object per image, ``attachments/{user}/{id}``, its reference in the object's metadata
(content type, width, height), written in one upload. The client is google-cloud-storage, as
``firebase_admin.storage.bucket()`` returns it; with STORAGE_EMULATOR_HOST set it talks to that
server (the Storage emulator, or ``testkit.storage_server`` in tests) without credentials.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from google.api_core import exceptions as google_errors
from google.auth import exceptions as google_auth_errors
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from services.core.attachment_records import Attachment, user_folder
from services.core.errors import StoreUnavailable
from services.core.firebase_credentials import firebase_credential
from services.core.settings import Settings

logger = logging.getLogger(__name__)
T = TypeVar("T")
PREFIX = "attachments"


class BucketAttachments:
    """``AttachmentStore`` on a Cloud Storage bucket, driven from a small thread pool."""

    name = "bucket"

    def __init__(self, settings: Settings, *, threads: int = 2) -> None:
        self._settings = settings
        self._threads = threads
        self._timeout = settings.store_timeout_seconds
        self._executor: ThreadPoolExecutor | None = None
        self._bucket: Any = None
        # A database emulator without a storage one (local runs, drills): no bucket to reach,
        # so no image is ever stored; reads find none and erasing has nothing to do.
        self._configured = bool(settings.storage_emulator_host) or not (
            settings.firebase_uses_emulator
        )

    async def open(self) -> None:
        """The pool; the bucket's client is made on first use, so a service whose users send
        no images starts without Cloud Storage credentials."""
        self._executor = ThreadPoolExecutor(self._threads, thread_name_prefix="attachments")

    def _bucket_client(self) -> Any:
        """The bucket (made once, on a pool thread: building the client may read files)."""
        if self._bucket is None:
            self._bucket = self._connect()
        return self._bucket

    def _connect(self) -> Any:
        settings = self._settings
        if settings.storage_emulator_host:
            client = storage.Client(
                project=settings.firebase_project_id or "chatify",
                credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
                client_options={"api_endpoint": settings.storage_emulator_host},
            )
        else:
            credential = firebase_credential(settings).get_credential()
            client = storage.Client(project=settings.firebase_project_id, credentials=credential)
        return client.bucket(settings.storage_bucket)

    async def close(self) -> None:
        """Stop the pool."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def put(self, user_id: str, attachment: Attachment, data: bytes) -> None:
        """One upload: the bytes, with the reference as metadata."""
        if not self._configured:
            raise StoreUnavailable("Images need STORAGE_EMULATOR_HOST with a database emulator")

        def upload() -> None:
            blob = self._bucket_client().blob(_name(user_id, attachment.id))
            blob.metadata = {
                "size": str(attachment.size),
                "width": str(attachment.width),
                "height": str(attachment.height),
            }
            blob.upload_from_string(data, content_type=attachment.media_type)

        await self._run(upload)

    async def get(self, user_id: str, attachment_id: str) -> tuple[Attachment, bytes] | None:
        """The object's metadata, then its bytes."""
        if not self._configured:
            return None

        def download() -> tuple[Attachment, bytes] | None:
            blob = self._bucket_client().get_blob(_name(user_id, attachment_id))
            if blob is None:
                return None
            try:
                data: bytes = blob.download_as_bytes()
            except google_errors.NotFound:
                return None
            meta = blob.metadata or {}
            attachment = Attachment(
                attachment_id,
                str(blob.content_type),
                int(meta.get("size") or len(data)),
                int(meta.get("width") or 0),
                int(meta.get("height") or 0),
            )
            return attachment, data

        return await self._run(download)

    async def delete_user(self, user_id: str) -> int:
        """Every object under the user's prefix, listed then deleted."""
        if not self._configured:
            return 0

        def remove() -> int:
            prefix = f"{PREFIX}/{user_folder(user_id)}/"
            count = 0
            for blob in list(self._bucket_client().list_blobs(prefix=prefix)):
                try:
                    blob.delete()
                except google_errors.NotFound:
                    continue
                count += 1
            return count

        return await self._run(remove)

    async def _run(self, work: Callable[[], T]) -> T:
        if self._executor is None:
            raise StoreUnavailable("The attachment store is not open")
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._timeout):
                return await loop.run_in_executor(self._executor, work)
        except TimeoutError as exc:
            raise StoreUnavailable("The attachment store is not answering") from exc
        except (google_errors.GoogleAPIError, google_auth_errors.GoogleAuthError, OSError) as exc:
            logger.error("attachment bucket error: %s", type(exc).__name__)
            raise StoreUnavailable("The attachment store is unavailable; retry shortly") from exc
        except ValueError as exc:  # no credentials: FIREBASE_CREDENTIALS_JSON or the key file
            logger.error("attachment bucket not configured: %s", exc)
            raise StoreUnavailable("The attachment store is unavailable; retry shortly") from exc


def _name(user_id: str, attachment_id: str) -> str:
    return f"{PREFIX}/{user_folder(user_id)}/{attachment_id}"
