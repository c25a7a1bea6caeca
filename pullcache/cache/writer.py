"""BlobWriter: bytes in, a verified content-addressed blob out, or nothing at all.

Bytes go to a temp file in tmp/ while they are hashed; commit() verifies the digest, fsyncs and
renames the file to its content address. Disk writes and large hash updates run in worker
threads, so the event loop keeps serving while a layer arrives.

The file stays open, and so owned (files.create_temp), until it is renamed or removed. It is unbuffered:
the writer batches bytes itself, and no byte may wait in a file buffer, where closing the file after a
full disk refused it would try to write it again and fail over the original error.
"""
from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import time
from io import FileIO
from pathlib import Path
from typing import Self

from pullcache.cache.files import (
    StoreFullError,
    create_temp,
    is_disk_full,
    publish,
    remove_quietly,
    temp_path,
    write_all,
)
from pullcache.digests import Digest, Hasher

FLUSH_SIZE = 1024 * 1024  # batch small network chunks into one thread hop ...
FLUSH_AGE = 2.0  # ... but write at least this often: GC takes a temp file untouched for minutes for an orphan


class DigestMismatch(ValueError):
    """The bytes written do not hash to the digest they were said to have."""

    def __init__(self, expected: Digest, actual: Digest) -> None:
        super().__init__(f"content hashes to {actual}, not {expected}")
        self.expected = expected
        self.actual = actual


class BlobWriter:
    """One temp file being filled (or, with path, an upload session's data file continued); use as
    `async with` so an exception always removes it."""

    def __init__(self, tmp_dir: Path, algorithm: str = "sha256", *, path: Path | None = None,
                 hasher: Hasher | None = None) -> None:
        self.path = path or temp_path(tmp_dir, "blob-")
        self._is_temp = path is None
        self.hasher = hasher or Hasher(algorithm)
        self._file: FileIO | None = None
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._flushed_at = time.monotonic()
        self.committed = False

    @property
    def size(self) -> int:
        """Bytes accepted so far, including those not yet flushed to disk."""
        return self.hasher.size + self._pending_size

    async def open(self, append: bool = False) -> BlobWriter:
        if self._is_temp:
            self._file = await asyncio.to_thread(create_temp, self.path)
        else:
            self._file = await asyncio.to_thread(open, self.path, "ab" if append else "wb", buffering=0)
        return self

    async def __aenter__(self) -> Self:
        if self._file is None:
            await self.open()
        return self

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        if not self.committed:
            await self.abort()

    async def reserve(self, size: int) -> None:
        """Allocate the whole blob's disk space now, so a blob that cannot fit fails before its first
        byte (StoreFullError) rather than part-way. A file system without fallocate fills as bytes arrive."""
        assert self._file is not None, "reserve() before open()"
        try:
            await asyncio.to_thread(os.posix_fallocate, self._file.fileno(), 0, size)
        except OSError as exc:
            if is_disk_full(exc):
                raise StoreFullError(exc.errno, f"no space left on device for a blob of {size} bytes") from exc
            if exc.errno != errno.EOPNOTSUPP:
                raise

    async def write(self, chunk: bytes) -> None:
        self._pending.append(chunk)
        self._pending_size += len(chunk)
        if self._pending_size >= FLUSH_SIZE or time.monotonic() - self._flushed_at >= FLUSH_AGE:
            await self.flush()

    def _write_and_hash(self, data: bytes) -> None:
        assert self._file is not None
        try:
            write_all(self._file, data)
        except OSError as exc:
            if is_disk_full(exc):
                raise StoreFullError(exc.errno, "no space left on device for the blob being written") from exc
            raise
        self.hasher.update(data)

    async def flush(self) -> None:
        """Write and hash what is buffered (in a thread: hashlib releases the GIL)."""
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        self._pending_size = 0
        self._flushed_at = time.monotonic()
        await asyncio.to_thread(self._write_and_hash, data)

    async def close_file(self) -> None:
        await self.flush()
        if self._file is not None:
            await asyncio.to_thread(self._file.close)
            self._file = None

    async def verify(self, expected: Digest | None, size: int | None = None) -> Digest:
        """Flush and compare; raises DigestMismatch or ValueError(size) and leaves the temp to abort().
        The file stays open: publish_to() or abort() closes it."""
        await self.flush()
        actual = self.hasher.digest()
        if expected is not None and actual != expected:
            raise DigestMismatch(expected, actual)
        if size is not None and self.hasher.size != size:
            raise ValueError(f"received {self.hasher.size} bytes, expected {size}")
        return actual

    async def publish_to(self, final: Path) -> None:
        """fsync and rename the verified temp into its final place, then close it."""
        assert self._file is not None, "publish_to() before open() or after the end"
        try:
            await asyncio.to_thread(publish, self._file, self.path, final)
        except OSError as exc:
            if is_disk_full(exc):
                raise StoreFullError(exc.errno, "no space left on device publishing a blob") from exc
            raise
        self.committed = True
        await self.close_file()

    async def rollback(self, size: int) -> None:
        """Drop everything after the first `size` bytes (a chunk that failed half-way) and close.

        The hasher has already seen the dropped bytes, so the caller must discard it.
        """
        self._pending.clear()
        self._pending_size = 0
        if self._file is not None:
            file, self._file = self._file, None
            await asyncio.to_thread(file.close)
        await asyncio.to_thread(os.truncate, self.path, size)

    async def abort(self) -> None:
        """Drop the bytes and the file, whatever went wrong before: never raises over the caller's error."""
        self._pending.clear()
        self._pending_size = 0
        if self._file is not None:
            file, self._file = self._file, None
            with contextlib.suppress(OSError):  # the file goes anyway
                await asyncio.to_thread(file.close)
        await asyncio.to_thread(remove_quietly, self.path)
