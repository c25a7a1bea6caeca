"""Store: the one object api/, the pull-through path and eviction use to reach the disk.

It joins the content-addressed blobs, the repositories' links, upload sessions and the index,
and keeps the rule that a blob is visible under its digest only after it was verified.
"""
from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections.abc import AsyncIterable, Callable, Iterable
from pathlib import Path

from cachetools import LRUCache

from pullcache.cache.backends import BlobBackend, FilesystemBlobs, OpenedBlob
from pullcache.cache.files import StoreFullError
from pullcache.cache.in_use import UsageMarkers
from pullcache.cache.index import CACHED, PUSHED, BlobIndex, BlobRow, Index, Totals, TotalsListener
from pullcache.cache.layout import Layout
from pullcache.cache.repo_files import LocalFiles, RepositoryFiles
from pullcache.cache.repos import Repository
from pullcache.cache.scan import StaleFile, orphaned_files, remove_orphans
from pullcache.cache.uploads import Uploads, UploadSession
from pullcache.cache.writer import BlobWriter
from pullcache.cluster.shared_state import ProcessState, SharedState
from pullcache.digests import Digest

CLEAN_SHUTDOWN = "clean_shutdown"  # index meta: "1" once the last server stopped cleanly, "0" while one runs
# (the SQLite index's only: a shared one keeps none)
MANIFEST_CACHE_BYTES = 64 * 1024 * 1024  # manifests are small and hot: keep their bytes in memory


def sqlite_index(layout: Layout) -> Index:
    return BlobIndex(layout.index)


class Store:
    def __init__(self, root: str | Path, *, backend: Callable[[Layout], BlobBackend] = FilesystemBlobs,
                 files: Callable[[Layout], RepositoryFiles] = LocalFiles, state: SharedState | None = None,
                 index: Callable[[Layout], Index] = sqlite_index) -> None:
        """A store under root (storage.path); blobs in the backend it names, the filesystem by default,
        repository files where `files` keeps them (under root by default), the pull-through's state in
        `state` (this process's memory by default; Redis for replicas), and the blob index where `index`
        keeps it (SQLite under root by default; Redis for replicas on one bucket)."""
        self.layout = Layout(Path(root).resolve())
        self.blobs = backend(self.layout)
        self.files = files(self.layout)
        self.state = state or ProcessState()
        self.index = index(self.layout)
        self.uploads = Uploads(self.layout.uploads, self.layout.tmp)
        self.users = UsageMarkers(self.layout.root)
        self._small: LRUCache[Digest, bytes] = LRUCache(maxsize=MANIFEST_CACHE_BYTES, getsizeof=len)
        self._accesses: dict[str, float] = {}
        self.index_was_missing = False

    async def open(self) -> None:
        await asyncio.to_thread(self.layout.make_dirs)
        await self.blobs.open()
        await self.files.open()
        self.index_was_missing = await self.index.open()

    async def close(self) -> None:
        with contextlib.suppress(StoreFullError):  # the last hits are lost on a full disk: only recency
            await self.flush_accesses()
        await self.index.close()
        await self.files.close()
        await self.blobs.close()
        await self.state.close()
        self.users.close()  # still marked in use: not a clean stop

    @property
    def backend(self) -> str:
        """`filesystem <path>` or `s3 s3://bucket/prefix`: for check-config and logs."""
        return f"{self.blobs.kind} {self.blobs.where}"

    # ------------------------------------------------------------------ repositories
    def repository(self, name: str, *, cached: bool = False) -> Repository:
        """A local repository, or with cached=True one cached from an upstream (name = '<upstream>/<repo>')."""
        return Repository(self.layout.repository(name, cached), name, self.files)

    async def repository_names(self, *, cached: bool = False) -> list[str]:
        """Every repository name holding manifests or blobs, sorted (the _catalog)."""
        return await self.files.repository_names(self.layout.repositories(cached))

    # ------------------------------------------------------------------ blobs
    def blob_size(self, digest: Digest) -> int | None:
        """Size of a committed blob or None: a stat or a look in memory, so it runs inline."""
        return self.blobs.size(digest)

    async def find_blob_size(self, digest: Digest) -> int | None:
        """Size of a committed blob or None, including one another process (a replica) committed since this
        one looked: for checks a client's earlier answer relies on (a manifest's blobs, a mount)."""
        return await self.blobs.find_size(digest)

    async def open_blob(self, digest: Digest, *, body: bool = True) -> OpenedBlob | None:
        """A committed blob to send (None if absent, evicted since the caller looked included): a local file
        for sendfile, a presigned URL to redirect to, or a stream, whichever the backend gives; body=False
        only its size. The caller closes it once sent."""
        return await self.blobs.open_blob(digest, body=body)

    def new_writer(self, algorithm: str = "sha256") -> BlobWriter:
        return BlobWriter(self.layout.tmp, algorithm)

    async def commit(self, writer: BlobWriter, expected: Digest | None, *, origin: str,
                     size: int | None = None) -> Digest:
        """Verify the writer's bytes, index them and move them to their content address.

        Raises DigestMismatch / ValueError (size) after removing the temp file: nothing stays behind.
        """
        try:
            digest = await writer.verify(expected, size)
            await self._keep(writer, digest, origin)
        except BaseException:
            await writer.abort()
            raise
        return digest

    async def _keep(self, writer: BlobWriter, digest: Digest, origin: str) -> None:
        """Index a verified blob, then publish the writer's file unless the same bytes are already in place.

        The row comes first. Once it is written (pushed, or cached and used just now), eviction's
        remove_unchanged leaves the file alone, so a file seen after it stays; an eviction that got in
        before it took the file too, and this publishes the bytes again. Looking at the file first
        would let eviction remove it between the look and the row: a pushed blob without its bytes.
        """
        key, size = str(digest), writer.hasher.size
        await self.index.add(key, size, origin)
        try:
            await self.blobs.publish(writer, digest)
        except BaseException:
            await self._drop_row_if_missing(digest)  # e.g. a full disk: no row may promise a file
            raise
        # Again, whether or not the row is there: an eviction (on another replica) may have taken it before
        # the file landed and be about to drop it, which add() waits for; the file counts after all.
        await self.index.add(key, size, origin)

    async def _drop_row_if_missing(self, digest: Digest) -> None:
        """Remove the blob's row if its file is absent where blobs are stored (not as this process remembers:
        another replica may have evicted it), checked again by the index, so a concurrent commit that
        published the file keeps it."""
        await self.blobs.confirm_size(digest)
        await self.index.remove_missing([str(digest)], lambda _: self.blob_size(digest) is None)

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
        """Store bytes already in memory (manifests); idempotent.

        Bytes already on disk go through a temp file all the same: commit is the one place that
        records a blob safely against eviction.
        """
        async def one() -> AsyncIterable[bytes]:
            yield data
        digest = await self.write_blob(one(), None, origin=origin, algorithm=algorithm)
        self._small[digest] = data
        return digest

    async def read_small(self, digest: Digest) -> bytes | None:
        """A manifest's bytes, from memory when hot; None if the blob is absent."""
        data = self._small.get(digest)
        if data is None:
            data = await self.blobs.read_bytes(digest)
            if data is None:
                return None
            self._small[digest] = data
        return data

    async def remove_unchanged(self, rows: Iterable[BlobRow]) -> list[BlobRow]:
        """Remove the blobs eviction or GC chose, each only if its index row is still exactly as given
        (BlobIndex.remove_unchanged: file, then row, under the index's write lock); returns those removed.

        A response already streaming one keeps its open file (Linux keeps unlinked files alive).
        """
        removed = await self.index.remove_unchanged(rows, self._remove_file)
        for row in removed:
            self.forget(Digest.parse(row.digest))
        return removed

    def _remove_file(self, digest: str) -> None:
        """Remove a blob by digest text (blocking: the index runs it on a thread, SQLite's inside its
        transaction)."""
        self.blobs.remove_blocking(Digest.parse(digest))

    def forget(self, digest: Digest) -> None:
        """Drop what memory holds of a blob whose file is gone: its bytes (a manifest) and a pending hit."""
        self._small.pop(digest, None)
        self._accesses.pop(str(digest), None)

    def report_disk_full(self, needed: int = 0) -> None:
        """A write failed with ENOSPC (StoreFullError): whoever caught it says so here, with the bytes
        it needed when known, and eviction frees cached content for the next write."""
        self.index.report_disk_full(needed)

    # ------------------------------------------------------------------ recency
    def note_access(self, digest: Digest) -> None:
        """Remember a hit in memory; flush_accesses() writes a batch, so a hot blob costs no write per hit."""
        self._accesses[str(digest)] = time.time()
        self.blobs.note_access(digest)

    def hit_pending(self, digest: str) -> bool:
        """Whether the blob was used since the last flush that reached the index (eviction spares it)."""
        return digest in self._accesses

    async def flush_accesses(self) -> None:
        """Write the pending hits to the index. On a full disk, where the index cannot grow, they stay
        pending for the next flush (hit_pending still says so) and StoreFullError is raised."""
        accesses, self._accesses = self._accesses, {}
        try:
            await self.index.touch_many(accesses)
        except StoreFullError:
            for digest, at in accesses.items():
                self._accesses[digest] = max(at, self._accesses.get(digest, at))
            raise

    # ------------------------------------------------------------------ the index, for eviction and GC
    def totals(self) -> Totals:
        """Bytes and blobs per origin, kept in memory: no query."""
        return self.index.totals()

    async def blob_rows(self, origin: str | None = None) -> list[BlobRow]:
        return await self.index.rows(origin)

    async def blob_row(self, digest: Digest) -> BlobRow | None:
        """One blob's index row (size, origin, last access), None if the index has none."""
        return await self.index.get(str(digest))

    async def least_recent(self, limit: int) -> list[BlobRow]:
        """The least recently used cached blobs, oldest first (eviction's candidates)."""
        return await self.index.least_recent(limit)

    async def promote(self, digests: Iterable[str]) -> list[str]:
        """Make cached blobs pushed (a local repository holds them: never evicted); returns those changed."""
        return await self.index.promote(digests)

    async def refresh_totals(self) -> None:
        """Re-read the totals if another process (a `pullcache gc`) changed the index."""
        await self.index.refresh_if_changed()

    def watch(self, on_totals: TotalsListener, on_disk_full: Callable[[int], None]) -> None:
        """Hear every change of the totals, and every write refused for a full disk (report_disk_full)."""
        self.index.subscribe(on_totals)
        self.index.on_disk_full(on_disk_full)

    def unwatch(self, on_totals: TotalsListener, on_disk_full: Callable[[int], None]) -> None:
        self.index.unsubscribe(on_totals)
        self.index.off_disk_full(on_disk_full)

    async def was_shut_down_cleanly(self) -> bool:
        """Whether every server that used the store stopped cleanly, or still runs; if not, reconcile the index
        with the blobs. Other servers running now keep the flag at "0": their marks (cache/in_use.py) say
        they are alive. A shared index (Redis) says True: no replica's start-up reconciles it (Index.shared)."""
        if self.index.shared:
            return True
        live, dead = await asyncio.to_thread(self.users.others)
        if self.index_was_missing or dead:
            return False
        return live > 0 or await self.index.get_meta(CLEAN_SHUTDOWN) == "1"

    async def mark_in_use(self, in_use: bool) -> None:
        """Record that this server uses the store (True) or stopped cleanly (False): the flag turns "1" only
        when the last server stops; a shared index keeps no flag (Index.shared). May raise StoreFullError."""
        if self.index.shared:
            return
        if in_use:
            await asyncio.to_thread(self.users.claim)
            await self.index.set_meta(CLEAN_SHUTDOWN, "0")
        elif await asyncio.to_thread(self.users.release):
            await self.index.set_meta(CLEAN_SHUTDOWN, "1")

    async def check_index(self) -> None:
        """One trivial query: the index is open and answers (readiness)."""
        await self.index.get("readyz-probe")

    async def check_backend(self) -> None:
        """The blob backend can serve now (readiness): raises with the reason if not."""
        await self.blobs.check()

    @property
    def blobs_on_local_disk(self) -> bool:
        """Whether blobs live on the disk under storage.path (filesystem), where evicting them frees it; in a
        bucket, that disk holds only the spool and a local cache of its own bound."""
        return self.blobs.kind == "filesystem"

    async def free_space(self) -> tuple[int, int]:
        """(free, total) bytes where the store writes."""
        stats = await asyncio.to_thread(os.statvfs, self.layout.root)
        return stats.f_bavail * stats.f_frsize, stats.f_blocks * stats.f_frsize

    # ------------------------------------------------------------------ reconcile: the index against the blobs
    async def stored_blobs(self) -> dict[str, tuple[int, float]]:
        """Every blob really stored: digest text -> (size, last modified)."""
        return await self.blobs.stored()

    async def drop_rows_without_blobs(self, digests: Iterable[str]) -> list[BlobRow]:
        """Remove the rows of blobs that are not stored, each re-checked under the index's write lock, after
        asking the backend once more (another replica may have committed one since the listing)."""
        gone = [digest for digest in digests if await self.find_blob_size(Digest.parse(digest)) is None]
        return await self.index.remove_missing(gone, self._absent)

    async def index_rebuilt(self) -> None:
        """Reconcile rebuilt the index from the blobs (it says whether it must: index_needs_rebuild)."""
        await self.index.rebuilt()

    def index_needs_rebuild(self) -> bool:
        """Whether the index lost its rows since it was built (Redis lost its data): reconcile rebuilds it."""
        return self.index.needs_rebuild()

    async def index_found_blobs(self, rows: Iterable[BlobRow]) -> list[BlobRow]:
        """Add rows for stored blobs the index lacks (each re-checked: still stored); returns those added."""
        return await self.index.add_many(rows, lambda digest: not self._absent(digest))

    def _absent(self, digest: str) -> bool:
        return self.blob_size(Digest.parse(digest)) is None

    async def orphaned_temps(self, older_than: float = math.inf) -> list[StaleFile]:
        """Temp files no live process owns, untouched since older_than (every one by default)."""
        return await asyncio.to_thread(orphaned_files, self.layout.tmp, older_than)

    async def remove_orphaned_temps(self, temps: list[StaleFile]) -> list[StaleFile]:
        """Remove those still orphaned; returns the ones removed."""
        return await asyncio.to_thread(remove_orphans, temps)

    def read_blob_blocking(self, digest: str) -> bytes | None:
        """A blob's bytes read directly, bypassing the manifest cache (GC reads every local manifest once,
        in a worker thread, and must not push the hot ones out); None if absent or not a digest."""
        try:
            return self.blobs.read_blocking(Digest.parse(digest))
        except ValueError:
            return None

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
        size = await self.find_blob_size(digest)
        if size is None:
            return False
        await self.index.add(str(digest), size, PUSHED)
        if await self.blobs.confirm_size(digest) is None:  # evicted, by any replica, before the index update
            await self._drop_row_if_missing(digest)
            return False  # the client uploads it instead
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
            await self._keep(writer, expected, PUSHED)
        except BaseException:
            await writer.abort()
            raise
        finally:
            await self.uploads.remove(session)  # verified and kept, or rejected: either way it is over
        await self.repository(session.repository).link_blob(expected)
        return expected


__all__ = ["CACHED", "PUSHED", "Store"]
