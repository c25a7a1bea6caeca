"""Store: the one object api/, the pull-through path and eviction use to reach the disk.

It joins the content-addressed blobs, the repositories' links, upload sessions and the index,
and keeps the rule that a blob is visible under its digest only after it was verified.
"""
from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterable
from pathlib import Path

from cachetools import LRUCache

from pullcache.cache.files import remove_quietly
from pullcache.cache.index import CACHED, PUSHED, BlobIndex
from pullcache.cache.layout import Layout
from pullcache.cache.repos import Repository
from pullcache.cache.uploads import Uploads, UploadSession
from pullcache.cache.writer import BlobWriter
from pullcache.digests import Digest

MANIFEST_CACHE_BYTES = 64 * 1024 * 1024  # manifests are small and hot: keep their bytes in memory


class Store:
    def __init__(self, root: str | Path) -> None:
        self.layout = Layout(Path(root).resolve())
        self.index = BlobIndex(self.layout.index)
        self.uploads = Uploads(self.layout.uploads, self.layout.tmp)
        self._small: LRUCache[Digest, bytes] = LRUCache(maxsize=MANIFEST_CACHE_BYTES, getsizeof=len)
        self._accesses: dict[str, float] = {}
        self.index_was_missing = False

    async def open(self) -> None:
        await asyncio.to_thread(self.layout.make_dirs)
        self.index_was_missing = await self.index.open()

    async def close(self) -> None:
        await self.flush_accesses()
        await self.index.close()

    # ------------------------------------------------------------------ repositories
    def repository(self, name: str, *, cached: bool = False) -> Repository:
        """A local repository, or with cached=True one cached from an upstream (name = '<upstream>/<repo>')."""
        return Repository(self.layout.repository(name, cached), self.layout.tmp, name, cached)

    async def repository_names(self, *, cached: bool = False) -> list[str]:
        """Every repository name holding manifests or blobs, sorted (the _catalog)."""
        root = self.layout.repositories(cached)

        def walk() -> list[str]:
            names = []
            for dirpath, dirnames, _ in os.walk(root):
                if "_manifests" in dirnames or "_layers" in dirnames:
                    names.append(os.path.relpath(dirpath, root))
                dirnames[:] = [d for d in dirnames if not d.startswith("_")]
            return sorted(names)
        return await asyncio.to_thread(walk)

    # ------------------------------------------------------------------ blobs
    def blob_path(self, digest: Digest) -> Path:
        return self.layout.blob(digest)

    def blob_size(self, digest: Digest) -> int | None:
        """Size of a committed blob or None. A stat is microseconds, so it runs inline."""
        try:
            return os.stat(self.layout.blob(digest)).st_size
        except (FileNotFoundError, NotADirectoryError):
            return None

    def new_writer(self, algorithm: str = "sha256") -> BlobWriter:
        return BlobWriter(self.layout.tmp, algorithm)

    async def commit(self, writer: BlobWriter, expected: Digest | None, *, origin: str,
                     size: int | None = None) -> Digest:
        """Verify the writer's bytes, move them to their content address and index them.

        Raises DigestMismatch / ValueError (size) after removing the temp file: nothing stays behind.
        """
        try:
            digest = await writer.verify(expected, size)
            final = self.layout.blob(digest)
            if final.exists():
                await writer.abort()  # same bytes are already there
            else:
                await writer.publish_to(final)
        except BaseException:
            await writer.abort()
            raise
        await self.index.add(str(digest), writer.hasher.size, origin)
        return digest

    async def write_blob(self, chunks: AsyncIterable[bytes], expected: Digest | None, *, origin: str,
                         algorithm: str = "sha256", size: int | None = None) -> Digest:
        """Stream chunks into a new blob, verified against expected (and size, when given)."""
        writer = await self.new_writer(expected.algorithm if expected else algorithm).open()
        try:
            async for chunk in chunks:
                await writer.write(chunk)
        except BaseException:
            await writer.abort()
            raise
        return await self.commit(writer, expected, origin=origin, size=size)

    async def put_small(self, data: bytes, *, origin: str, algorithm: str = "sha256") -> Digest:
        """Store bytes already in memory (manifests); idempotent."""
        digest = Digest.of(data, algorithm)
        if self.blob_size(digest) is None:
            async def one() -> AsyncIterable[bytes]:
                yield data
            await self.write_blob(one(), digest, origin=origin)
        else:
            await self.index.add(str(digest), len(data), origin)
        self._small[digest] = data
        return digest

    async def read_small(self, digest: Digest) -> bytes | None:
        """A manifest's bytes, from memory when hot; None if the blob is absent."""
        data = self._small.get(digest)
        if data is None:
            try:
                data = await asyncio.to_thread(self.layout.blob(digest).read_bytes)
            except (FileNotFoundError, NotADirectoryError):
                return None
            self._small[digest] = data
        return data

    async def delete_blob(self, digest: Digest) -> int:
        """Remove a blob file and its index row; returns the bytes freed (0 if it was absent).

        A response already streaming it keeps its open file (Linux keeps unlinked files alive).
        """
        path = self.layout.blob(digest)
        size = self.blob_size(digest) or 0
        await asyncio.to_thread(remove_quietly, path)
        self._small.pop(digest, None)
        self._accesses.pop(str(digest), None)
        await self.index.remove_many([str(digest)])
        return size

    # ------------------------------------------------------------------ recency
    def note_access(self, digest: Digest) -> None:
        """Remember a hit in memory; flush_accesses() writes a batch, so a hot blob costs no write per hit."""
        self._accesses[str(digest)] = time.time()

    async def flush_accesses(self) -> None:
        accesses, self._accesses = self._accesses, {}
        await self.index.touch_many(accesses)

    # ------------------------------------------------------------------ pushes
    async def push_blob(self, repository: str, chunks: AsyncIterable[bytes], expected: Digest, *,
                        size: int | None = None) -> Digest:
        """A monolithic push: stream, verify, commit as pushed and link into the local repository."""
        digest = await self.write_blob(chunks, expected, origin=PUSHED, size=size)
        await self.repository(repository).link_blob(digest)
        return digest

    async def mount_blob(self, repository: str, digest: Digest) -> bool:
        """Link a blob the store already holds into a local repository; False if it holds none.

        A local repository must never lose a blob to eviction, so the blob becomes pushed content
        even when it first arrived as a cached layer of an upstream image.
        """
        size = self.blob_size(digest)
        if size is None:
            return False
        await self.index.add(str(digest), size, PUSHED)
        if self.blob_size(digest) is None:
            return False  # evicted between the stat and the index update; the client uploads it instead
        await self.repository(repository).link_blob(digest)
        return True

    # ------------------------------------------------------------------ uploads
    async def complete_upload(self, session: UploadSession, expected: Digest) -> Digest:
        """Verify a finished upload session and commit its data as a pushed blob of its repository.

        A mismatch raises DigestMismatch and the session is removed with its bytes.
        """
        writer = await self.uploads.writer(session, expected.algorithm)
        try:
            await writer.verify(expected)
            final = self.layout.blob(expected)
            if not final.exists():
                await writer.publish_to(final)
        finally:
            await self.uploads.remove(session)  # verified and moved, or rejected: either way it is over
        await self.index.add(str(expected), writer.hasher.size, PUSHED)
        await self.repository(session.repository).link_blob(expected)
        return expected


__all__ = ["CACHED", "PUSHED", "Store"]
