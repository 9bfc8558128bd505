"""``DirectoryAttachments``: image bytes in a local folder, beside the SQLite file.

``{root}/{user}/{id}`` holds an image's bytes and ``{id}.json`` its reference, written after
the bytes (each through a temporary file renamed into place), so a reference always names
whole bytes. ``{user}`` is a digest of the user id: any id is a safe folder name, and the
folder of one user is the only place that user's images are looked for.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from services.core.attachment_records import Attachment, user_folder
from services.core.errors import StoreUnavailable

T = TypeVar("T")


class DirectoryAttachments:
    """``AttachmentStore`` on a local folder, driven from a small thread pool."""

    name = "directory"

    def __init__(self, root: Path, *, threads: int = 2) -> None:
        self.root = root
        self._threads = threads
        self._executor: ThreadPoolExecutor | None = None

    async def open(self) -> None:
        """Create the folder and the pool."""
        self._executor = ThreadPoolExecutor(self._threads, thread_name_prefix="attachments")
        await self._run(lambda: self.root.mkdir(parents=True, exist_ok=True))

    async def close(self) -> None:
        """Stop the pool."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def put(self, user_id: str, attachment: Attachment, data: bytes) -> None:
        """Write the bytes, then the reference."""
        folder = self.root / user_folder(user_id)

        def write() -> None:
            folder.mkdir(parents=True, exist_ok=True)
            _write_whole(folder / attachment.id, data)
            reference = json.dumps(attachment.as_dict()).encode()
            _write_whole(folder / f"{attachment.id}.json", reference)

        await self._run(write)

    async def get(self, user_id: str, attachment_id: str) -> tuple[Attachment, bytes] | None:
        """The reference and the bytes, when both are there."""
        folder = self.root / user_folder(user_id)

        def read() -> tuple[Attachment, bytes] | None:
            try:
                doc = json.loads((folder / f"{attachment_id}.json").read_bytes())
                return Attachment.from_dict(doc), (folder / attachment_id).read_bytes()
            except FileNotFoundError:
                return None

        return await self._run(read)

    async def delete_user(self, user_id: str) -> int:
        """Remove the user's folder."""
        folder = self.root / user_folder(user_id)

        def remove() -> int:
            if not folder.is_dir():
                return 0
            count = sum(1 for path in folder.iterdir() if path.suffix == ".json")
            shutil.rmtree(folder)
            return count

        return await self._run(remove)

    async def _run(self, work: Callable[[], T]) -> T:
        if self._executor is None:
            raise StoreUnavailable("The attachment store is not open")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, work)
        except OSError as exc:
            raise StoreUnavailable("The attachment store is unavailable; retry shortly") from exc


def _write_whole(path: Path, data: bytes) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(data)
    os.replace(partial, path)
