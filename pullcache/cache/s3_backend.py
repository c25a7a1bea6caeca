"""The S3 backend: blobs, manifests, tags and links in a bucket; storage.path holds only what is derived.

The bucket is the truth. Its keys are the filesystem layout's paths (cache/layout.py) under
storage.s3.prefix, so `blobs/sha256/ab/ab..` and `repositories/<name>/_manifests/tags/<tag>`.

- Blobs (S3Blobs): a fill or an upload is spooled and hashed under storage.path/tmp as on disk, verified,
  then committed by one multipart upload (aborted if it fails: no half-object is visible). An object
  already there is the same bytes: a commit that lost a race is a success. The sizes of every blob are
  listed from the bucket at start-up and kept in memory, so a stat costs no request; opening one the map
  lacks asks the bucket (another replica's commit since the listing). Hot blobs are also
  kept in storage.path/blobs, bounded by storage.s3.local_cache (LRU), and served from there with
  sendfile; one not there is copied in first when it fits, else streamed from the bucket. With
  storage.s3.redirect a GET gets a presigned URL instead, and this host sends no byte of it.
- Repository files (BucketMirror, for one node): each write of a tag, revision, link or referrer goes to
  the bucket first and then to the same file under storage.path, which serves the reads. A storage.path
  with no repositories is filled from the bucket at start-up, and the index is rebuilt by the reconcile
  that an absent index triggers (in the background, while serving), from the listing above. Replicas
  (cluster.redis) keep no local copy: they read the bucket through Redis (cache/bucket_files.py).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from pathlib import Path

from pullcache.cache.backends import OpenedBlob, claim_path, open_file, read_file
from pullcache.cache.errors import StorageUnavailable
from pullcache.cache.files import remove_quietly, write_atomic
from pullcache.cache.layout import CACHED_ROOT, LOCAL_ROOT, Layout, digest_from_blob_path
from pullcache.cache.s3 import S3Objects
from pullcache.cache.scan import blob_files
from pullcache.cache.writer import BlobWriter
from pullcache.digests import Digest

log = logging.getLogger("pullcache.store")
RESTORE_CONCURRENCY = 16
DELETE_BACKOFF = 5.0  # seconds during which, after a failed delete, eviction and GC try no other


def blob_key(digest: Digest) -> str:
    return f"blobs/{digest.algorithm}/{digest.hex[:2]}/{digest.hex}"


class LocalCache:
    """Which blobs storage.path/blobs holds beside the bucket, least recently used first, within a budget."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._sizes: OrderedDict[str, int] = OrderedDict()
        self._total = 0

    def load(self, found: dict[str, tuple[int, float]]) -> None:
        for digest, (size, _) in sorted(found.items(), key=lambda item: item[1][1]):
            self.add(digest, size)

    def fits(self, size: int) -> bool:
        return size <= self.budget

    def touch(self, digest: str) -> None:
        with contextlib.suppress(KeyError):  # discarded meanwhile (eviction runs on the index's thread)
            self._sizes.move_to_end(digest)

    def add(self, digest: str, size: int) -> list[str]:
        """Count a new local copy; returns the copies to remove so that the rest fit the budget."""
        if digest not in self._sizes:
            self._sizes[digest] = size
            self._total += size
        self._sizes.move_to_end(digest)
        victims = []
        while self._total > self.budget and self._sizes:
            victim, victim_size = self._sizes.popitem(last=False)
            self._total -= victim_size
            victims.append(victim)
        return victims

    def discard(self, digest: str) -> None:
        size = self._sizes.pop(digest, None)
        if size is not None:
            self._total -= size


class S3Blobs:
    """Blobs in the bucket, hot ones also on local disk."""

    kind = "s3"

    def __init__(self, objects: S3Objects, layout: Layout, *, local_cache: int, redirect_ttl: float | None) -> None:
        self.objects = objects
        self.layout = layout
        self.local = LocalCache(local_cache)
        self._redirect_ttl = redirect_ttl  # None: no redirects
        self._sizes: dict[str, tuple[int, float]] = {}  # every blob in the bucket (as this process knows it)
        self._listings = 0  # stored() listings under way
        self._deleted: set[str] = set()  # blobs this process deleted while one was (see stored())
        self._copying: dict[str, asyncio.Future[bool]] = {}
        self._delete_failed_at = -math.inf

    @property
    def where(self) -> str:
        return self.objects.where

    async def open(self) -> None:
        """Check that storage.path is this bucket's and the bucket takes writes, list its blobs, and count
        the local copies."""
        await asyncio.to_thread(claim_path, self.layout.root, self.where)
        await self.objects.check_writable()
        await self.stored()
        local = await asyncio.to_thread(blob_files, self.layout.blobs)
        stale = [found for found in local if found not in self._sizes]  # removed from the bucket meanwhile
        for found in stale:
            await asyncio.to_thread(remove_quietly, self.layout.blob(Digest.parse(found)))
            del local[found]
        self.local.load(local)

    async def close(self) -> None:
        pass

    def size(self, digest: Digest) -> int | None:
        known = self._sizes.get(str(digest))
        return None if known is None else known[0]

    async def publish(self, writer: BlobWriter, digest: Digest) -> None:
        """Upload the verified spool file (multipart), then keep it as the local copy if it fits."""
        size = writer.hasher.size
        await writer.flush()
        await self.objects.put_file(blob_key(digest), writer.path)
        self._sizes[str(digest)] = (size, time.time())
        if self.local.fits(size) and not await asyncio.to_thread(self.layout.blob(digest).exists):
            await writer.publish_to(self.layout.blob(digest))
            await self._keep_local(str(digest), size)
        else:
            await writer.abort()

    async def _keep_local(self, digest: str, size: int) -> None:
        for victim in self.local.add(digest, size):
            await asyncio.to_thread(remove_quietly, self.layout.blob(Digest.parse(victim)))

    def remove_blocking(self, digest: Digest) -> None:
        """Delete the object, then the local copy. A failure is an OSError, which keeps the blob's row (the
        index's rule for a file that could not go); after one, the next deletes within DELETE_BACKOFF fail at
        once, so an eviction pass does not hold the index's write lock through hundreds of timeouts."""
        if time.monotonic() - self._delete_failed_at < DELETE_BACKOFF:
            raise OSError(f"{self.where}: not deleting {digest}, a delete failed just now")
        try:
            self.objects.delete_blocking(blob_key(digest))
        except StorageUnavailable as exc:
            self._delete_failed_at = time.monotonic()
            raise OSError(str(exc)) from exc
        self._sizes.pop(str(digest), None)
        if self._listings:
            self._deleted.add(str(digest))
        self.local.discard(str(digest))
        remove_quietly(self.layout.blob(digest))

    async def open_blob(self, digest: Digest, *, body: bool) -> OpenedBlob | None:
        size = await self.find_size(digest)
        if size is None:
            return None
        if not body:
            return OpenedBlob(size)
        if self._redirect_ttl is not None:  # this host sends no byte of it
            return OpenedBlob(size, url=await self.objects.presign(blob_key(digest), self._redirect_ttl))
        opened = await asyncio.to_thread(open_file, self.layout.blob(digest))
        if opened is None and self.local.fits(size):
            if not await self._copy_in(digest):
                return None  # removed from the bucket (a `pullcache gc` beside this server)
            opened = await asyncio.to_thread(open_file, self.layout.blob(digest))
        if opened is not None:
            self.local.touch(str(digest))
            return OpenedBlob(opened[1], file=opened[0])
        key = blob_key(digest)
        if await self.objects.stat(key) is None:  # answered now, not once the headers went out
            self._sizes.pop(str(digest), None)
            return None

        def read(offset: int, length: int) -> AsyncIterator[bytes]:
            return self.objects.read(key, offset, length)
        return OpenedBlob(size, read=read)

    async def find_size(self, digest: Digest) -> int | None:
        """The size map's answer, or the bucket's for a blob the map lacks: another replica may have committed
        it since the listing (a fill it fetched while this one waited), and asking costs less than fetching
        it again."""
        size = self.size(digest)
        return size if size is not None else await self.confirm_size(digest)

    async def confirm_size(self, digest: Digest) -> int | None:
        """The bucket's answer, which the size map learns: a blob another replica committed joins it, one
        another replica evicted leaves it."""
        info = await self.objects.stat(blob_key(digest))
        if info is None:
            self._sizes.pop(str(digest), None)
            return None
        self._sizes[str(digest)] = (info.size, info.modified)
        return info.size

    async def _copy_in(self, digest: Digest) -> bool:
        """Copy a blob from the bucket into the local cache, once however many ask; False if it is gone."""
        key = str(digest)
        running = self._copying.get(key)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._copying[key] = future
        try:
            copied = await self._download(digest)
            future.set_result(copied)
            return copied
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: nobody else may be waiting
            raise
        finally:
            del self._copying[key]

    async def _download(self, digest: Digest) -> bool:
        writer = await BlobWriter(self.layout.tmp, digest.algorithm).open()
        try:
            async for chunk in self.objects.read(blob_key(digest)):
                await writer.write(chunk)
            await writer.verify(digest)
            await writer.publish_to(self.layout.blob(digest))
        except FileNotFoundError:
            await writer.abort()
            self._sizes.pop(str(digest), None)
            return False
        except BaseException:
            await writer.abort()
            raise
        await self._keep_local(str(digest), writer.hasher.size)
        return True

    async def read_bytes(self, digest: Digest) -> bytes | None:
        """A small blob (a manifest) from the local copy, else the bucket, asked also when the size map lacks
        it: a repository names it, and another replica may have committed it since the listing."""
        data = await asyncio.to_thread(read_file, self.layout.blob(digest))
        if data is None:
            data = await self.objects.get_content(blob_key(digest))
            if data is not None:
                self._sizes.setdefault(str(digest), (len(data), time.time()))
        return data

    def read_blocking(self, digest: Digest) -> bytes | None:
        data = read_file(self.layout.blob(digest))
        if data is None and self.size(digest) is not None:
            data = self.objects.get_blocking(blob_key(digest))
        return data

    async def stored(self) -> dict[str, tuple[int, float]]:
        """A listing of the bucket's blobs, which also teaches the size map those other replicas committed."""
        listed = {}
        self._listings += 1
        try:
            async for info in self.objects.list("blobs/"):
                digest = digest_from_blob_path(Path(info.path))
                if digest is not None:
                    listed[str(digest)] = (info.size, info.modified)
            # A blob this process deleted while the listing ran (an eviction beside a GC) may be in it: it must
            # not come back to the map, where a reconcile would take it for stored and index it again.
            listed = {digest: found for digest, found in listed.items() if digest not in self._deleted}
        finally:
            self._listings -= 1
            if not self._listings:
                self._deleted.clear()
        self._sizes.update(listed)
        return listed

    async def check(self) -> None:
        await self.objects.check_writable()

    def note_access(self, digest: Digest) -> None:
        self.local.touch(str(digest))


class BucketMirror:
    """Repository files written to the bucket before their local copy, and restored from it."""

    def __init__(self, objects: S3Objects, layout: Layout) -> None:
        self.objects = objects
        self.layout = layout

    def key(self, path: Path) -> str:
        return path.relative_to(self.layout.root).as_posix()

    async def put(self, path: Path, data: bytes) -> None:
        await self.objects.put_content(self.key(path), data)

    async def delete(self, paths: list[Path]) -> None:
        await asyncio.gather(*(self.objects.delete(self.key(path)) for path in paths))

    def _has_repositories(self) -> bool:
        return any(any(root.iterdir()) for root in (self.layout.repositories(False), self.layout.repositories(True)))

    async def restore(self) -> int:
        """Fill an empty storage.path with the bucket's repository files; returns how many were copied."""
        if await asyncio.to_thread(self._has_repositories):
            return 0
        limit = asyncio.Semaphore(RESTORE_CONCURRENCY)
        copies: list[asyncio.Task[None]] = []

        async def copy(key: str) -> None:
            async with limit:
                data = await self.objects.get_content(key)
            if data is not None:
                await asyncio.to_thread(write_atomic, self.layout.root / key, data, self.layout.tmp)
        for top in (LOCAL_ROOT, CACHED_ROOT):
            async for info in self.objects.list(f"{top}/"):
                copies.append(asyncio.create_task(copy(info.path)))
        await asyncio.gather(*copies)
        if copies:
            log.info("restored %d repository files from %s", len(copies), self.objects.where)
        return len(copies)
