"""Where committed blobs live: the interface the Store uses, and its filesystem implementation.

A blob backend stats, publishes (the commit of a verified temp file: atomic, and a success when the same
digest is already there), opens for reading, removes and lists committed blobs. The Store keeps the index,
recency and the rules between them; a backend only moves bytes. The S3 one is cache/s3_backend.py.
Nothing outside cache/ knows which backend a Store holds: readers get an OpenedBlob, a local file for
sendfile, a stream, or a presigned URL, whichever the backend can give.
"""
from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol, Self

from pullcache.cache.errors import StorageMisconfigured
from pullcache.cache.files import remove_quietly, write_atomic
from pullcache.cache.layout import Layout
from pullcache.cache.scan import blob_files
from pullcache.cache.writer import BlobWriter
from pullcache.digests import Digest

BACKEND_MARK = "backend"  # file in storage.path naming the bucket whose spool and cache it is (s3 only)
RangeReader = Callable[[int, int], AsyncIterator[bytes]]  # (offset, length) -> the bytes, in chunks


@dataclass
class OpenedBlob:
    """A committed blob ready to be sent: exactly one of file (sendfile), url (a redirect: the client
    fetches it there) or read (a ranged stream) is set; with body=False only its size. Use `async with`."""

    size: int
    file: BinaryIO | None = None
    url: str | None = None
    read: RangeReader | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self.file is not None:
            file, self.file = self.file, None
            await asyncio.to_thread(file.close)


class BlobBackend(Protocol):
    kind: str  # "filesystem" or "s3", for check-config, logs and metrics

    @property
    def where(self) -> str: ...

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    def size(self, digest: Digest) -> int | None:
        """A committed blob's size, None if absent; inline, so it answers from memory or a stat."""

    async def find_size(self, digest: Digest) -> int | None:
        """Like size(), but also sees a blob another process committed since this one looked (S3: a stat of
        the object when memory says absent): for a client that was told the blob is there."""

    async def confirm_size(self, digest: Digest) -> int | None:
        """The size where the blobs are stored, never from memory (S3: a stat of the object): a check that
        another replica did not evict it, before the store promises it to a local repository."""

    async def publish(self, writer: BlobWriter, digest: Digest) -> None:
        """Make a verified writer's bytes the blob `digest`; the same bytes already there is a success."""

    def remove_blocking(self, digest: Digest) -> None:
        """Remove a blob (runs on the index's thread, inside its transaction); absent is fine."""

    async def open_blob(self, digest: Digest, *, body: bool) -> OpenedBlob | None: ...

    async def read_bytes(self, digest: Digest) -> bytes | None: ...

    def read_blocking(self, digest: Digest) -> bytes | None: ...

    async def stored(self) -> dict[str, tuple[int, float]]:
        """Every committed blob: digest text -> (size, last modified)."""

    async def check(self) -> None:
        """Raise with the reason if the backend cannot serve now (readiness)."""

    def note_access(self, digest: Digest) -> None: ...


def open_file(path: Path) -> tuple[BinaryIO, int] | None:
    """A file open for reading and its size; None if it is gone (evicted since the caller looked)."""
    try:
        file = open(path, "rb")  # noqa: SIM115 (handed to the caller, who closes it)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return file, os.fstat(file.fileno()).st_size


def read_file(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None


def claim_path(root: Path, owner: str | None, *, write: bool = True) -> None:
    """Refuse a storage.path another backend uses (blocking). An s3 store marks its path with its
    `s3://bucket/prefix` (owner); a filesystem store (owner None) has no mark. Without this, an s3 store would
    take a filesystem store's blobs for stale copies and remove them, and a filesystem store would take an
    s3 store's partial local cache for the whole store. Raises StorageMisconfigured, one line."""
    mark = root / BACKEND_MARK
    try:
        found: str | None = mark.read_text().strip()
    except FileNotFoundError:
        found = None
    if found == owner:
        return
    if found is not None:
        raise StorageMisconfigured(f"storage.path {str(root)!r} is the spool and cache of {found}, not of "
                                   f"{owner or 'a filesystem store'} (use another storage.path)")
    blobs = root / "blobs"
    if blobs.is_dir() and any(blobs.iterdir()):
        raise StorageMisconfigured(f"storage.path {str(root)!r} holds a filesystem store; the s3 backend needs "
                                   "an empty storage.path")
    if write:
        (root / "tmp").mkdir(parents=True, exist_ok=True)
        write_atomic(mark, f"{owner}\n".encode(), root / "tmp")


class FilesystemBlobs:
    """blobs/<alg>/<xx>/<hex> under storage.path: a rename commits, sendfile serves."""

    kind = "filesystem"

    def __init__(self, layout: Layout) -> None:
        self.layout = layout

    @property
    def where(self) -> str:
        return str(self.layout.root)

    async def open(self) -> None:
        await asyncio.to_thread(claim_path, self.layout.root, None)

    async def close(self) -> None:
        pass

    def size(self, digest: Digest) -> int | None:
        try:
            return os.stat(self.layout.blob(digest)).st_size
        except (FileNotFoundError, NotADirectoryError):
            return None

    async def find_size(self, digest: Digest) -> int | None:
        return await asyncio.to_thread(self.size, digest)

    async def confirm_size(self, digest: Digest) -> int | None:
        return await self.find_size(digest)  # the disk is where they are stored

    async def publish(self, writer: BlobWriter, digest: Digest) -> None:
        if self.size(digest) is not None:
            await writer.abort()  # the same bytes are already there
            return
        await writer.publish_to(self.layout.blob(digest))

    def remove_blocking(self, digest: Digest) -> None:
        remove_quietly(self.layout.blob(digest))

    async def open_blob(self, digest: Digest, *, body: bool) -> OpenedBlob | None:
        if not body:
            size = self.size(digest)
            return None if size is None else OpenedBlob(size)
        opened = await asyncio.to_thread(open_file, self.layout.blob(digest))
        return None if opened is None else OpenedBlob(opened[1], file=opened[0])

    async def read_bytes(self, digest: Digest) -> bytes | None:
        return await asyncio.to_thread(read_file, self.layout.blob(digest))

    def read_blocking(self, digest: Digest) -> bytes | None:
        return read_file(self.layout.blob(digest))

    async def stored(self) -> dict[str, tuple[int, float]]:
        return await asyncio.to_thread(blob_files, self.layout.blobs)

    async def check(self) -> None:
        pass

    def note_access(self, digest: Digest) -> None:
        pass

