"""Fill: one blob arriving into a temp file, readable by any number of readers while it grows.

One producer writes (and hashes) the bytes as they arrive; every reader streams from the same
file from any offset, waiting for more when it has caught up. When the producer finishes, the
digest is verified and the file committed to the store, or the fill fails: the temp file is
removed and every reader raises FillFailed on its next wait. A reader never hands out the last
byte of what it was asked for before the fill is committed, so a consumer can never complete a
read of wrong or truncated bytes.

Readers copy nothing: they say which spans of the file are on disk and hand out its descriptor, so a
consumer sends them straight from the page cache (sendfile) at its client's pace, and a client that
reads slowly or not at all holds no bytes of the blob in memory.

Disk only: the producer may be an upstream fetch or anything else that yields bytes.
"""
from __future__ import annotations

import asyncio
import enum
import os
from collections.abc import AsyncGenerator, Callable
from typing import Self

from pullcache.cache.store import Store
from pullcache.cache.writer import BlobWriter
from pullcache.digests import Digest


class FillFailed(Exception):
    """The fill ended without a verified blob; the bytes read from it must not be trusted."""

    def __init__(self, digest: Digest, cause: BaseException | None) -> None:
        super().__init__(f"fill of {digest} failed: {cause or 'abandoned'}")
        self.digest = digest
        self.cause = cause


class State(enum.Enum):
    PENDING = "pending"      # created; the producer has not said how big the blob is yet
    RUNNING = "running"      # bytes are arriving into the temp file
    COMMITTED = "committed"  # verified and published in the store
    FAILED = "failed"        # temp file removed; readers raise


class Fill:
    """A blob being written by one producer and read by many.

    The producer (one task) calls begin, write..., then commit or fail; readers come and go at any time.
    """

    def __init__(self, store: Store, digest: Digest, *, origin: str) -> None:
        self.digest = digest
        self.size: int | None = None   # total size, when the producer knows it
        self.written = 0               # bytes on disk, readable by readers
        self.state = State.PENDING
        self.error: BaseException | None = None
        self._store = store
        self._origin = origin
        self._writer: BlobWriter | None = None
        self._fd: int | None = None    # one read-only descriptor shared by readers; survives rename and unlink
        self._users = 1                # the producer plus every open reader; the descriptor closes at zero
        self._producer_done = False
        self._failing = False
        self._changed = asyncio.Event()

    # ------------------------------------------------------------------ producer side
    async def begin(self, size: int | None) -> None:
        """Open the temp file; readers waiting for started() learn the size.

        A known size is allocated on disk first: a blob that cannot fit fails here (StoreFullError),
        before any reader has sent a header, so clients get a clean 507 rather than a cut transfer.
        """
        assert self.state is State.PENDING, "begin() twice or after the end"
        self.size = size
        self._writer = self._store.new_writer(self.digest.algorithm)
        await self._writer.open()
        if size:
            await self._writer.reserve(size)
        self._fd = os.open(self._writer.path, os.O_RDONLY)
        self.state = State.RUNNING
        self._notify()

    async def write(self, chunk: bytes) -> None:
        """Append and flush at once, so readers see every network chunk as it arrives."""
        assert self._writer is not None and self.state is State.RUNNING, "write() before begin() or after the end"
        await self._writer.write(chunk)
        await self._writer.flush()
        self.written = self._writer.hasher.size
        self._notify()

    async def commit(self) -> None:
        """Verify digest (and size, when known) and publish. On a mismatch this raises DigestMismatch or
        ValueError (the temp file is already gone) and the producer calls fail()."""
        assert self._writer is not None and self.state is State.RUNNING, "commit() before begin() or after the end"
        await self._store.commit(self._writer, self.digest, origin=self._origin, size=self.size)
        self.state = State.COMMITTED
        self._notify()
        self._producer_release()

    async def fail(self, exc: BaseException) -> None:
        """End the fill without a blob: readers raise FillFailed, the temp file goes. Idempotent."""
        if self.done or self._failing:
            return
        self._failing = True
        try:
            await self._discard()  # first, so that whoever sees the failure also sees the temp file gone
        finally:
            self.state = State.FAILED
            self.error = exc
            self._notify()

    async def _discard(self) -> None:
        self._producer_release()
        if self._writer is not None:
            await self._writer.abort()

    def _producer_release(self) -> None:
        if not self._producer_done:
            self._producer_done = True
            self._release()

    # ------------------------------------------------------------------ reader side
    def reader(self) -> FillReader:
        """Register a reader now (synchronously), so the file stays readable until it is closed."""
        assert self._users > 0, "reader() of a fill that is over: open the committed blob instead"
        self._users += 1
        return FillReader(self)

    @property
    def done(self) -> bool:
        return self.state in (State.COMMITTED, State.FAILED)

    async def changed(self) -> None:
        """Wait for the next change (bytes written or a new state)."""
        await self._changed.wait()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Wait until predicate() holds; it is checked again after every change of the fill."""
        while not predicate():
            await self.changed()

    async def closed(self) -> None:
        """Wait until the producer and every reader let go of the temp file: a failed fill's file was
        unlinked at once, but its disk space comes back only when the last descriptor closes."""
        await self.wait_for(lambda: self._users == 0)

    def _notify(self) -> None:
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    def _release(self) -> None:
        self._users -= 1
        if self._users == 0:
            if self._fd is not None:
                fd, self._fd = self._fd, None
                os.close(fd)
            self._notify()

    def _raise_if_failed(self) -> None:
        if self.state is State.FAILED:
            raise FillFailed(self.digest, self.error)


class FillReader:
    """One consumer of a Fill. Use `async with`; close() releases the file.

    It reads nothing itself: spans() says which bytes are ready and fileno() where to read them.
    """

    def __init__(self, fill: Fill) -> None:
        self.fill = fill
        self._closed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    async def started(self) -> int | None:
        """The blob's size (None if unknown) once the producer began; raises FillFailed if it never did."""
        fill = self.fill
        await fill.wait_for(lambda: fill.state is not State.PENDING)
        fill._raise_if_failed()
        return fill.size

    async def begun(self) -> int | None:
        """The blob's size (None if unknown) once its first byte landed or the fill committed (an empty blob).

        Until then a consumer has promised nothing, so it can still answer a failure with an error rather
        than a cut transfer; raises FillFailed if the fill failed first.
        """
        fill = self.fill
        await fill.wait_for(lambda: fill.written > 0 or fill.done)
        fill._raise_if_failed()
        return fill.size

    async def finished(self) -> None:
        """Wait for the end of the fill; raises FillFailed if it did not commit."""
        fill = self.fill
        await fill.wait_for(lambda: fill.done)
        fill._raise_if_failed()

    def fileno(self) -> int:
        """The file's read-only descriptor, open until close() (and across the commit's rename).

        A consumer whose read may outlive close() (a thread, a cancelled send) reads from a duplicate.
        """
        fd = self.fill._fd
        assert fd is not None and not self._closed, "fileno() before the start or after close()"
        return fd

    async def spans(self, start: int = 0, end: int | None = None) -> AsyncGenerator[tuple[int, int], None]:
        """(offset, count) spans of bytes [start, end) as they land on disk (end None: to the end of the
        blob), to be read from fileno().

        The final byte is held back until the digest is verified; a failure raises FillFailed.
        """
        fill = self.fill
        await self.started()
        end = fill.size if end is None else end
        if end is not None and start >= end:  # nothing to send, but the verdict still comes first
            await self.finished()
            return
        offset = start
        while end is None or offset < end:
            fill._raise_if_failed()
            committed = fill.state is State.COMMITTED
            limit = fill.written if end is None else min(fill.written, end)
            if not committed and end is not None and limit == end:
                limit = end - 1  # the last byte waits for the verdict
            if offset < limit:
                yield offset, limit - offset
                offset = limit
            elif committed:
                if end is not None:  # committed shorter than asked: a caller's range past the blob
                    raise FillFailed(fill.digest, EOFError(f"blob ends at {fill.written}, before {end}"))
                return
            else:
                await fill.changed()

    def close(self) -> None:
        """Stop reading; the producer carries on."""
        if not self._closed:
            self._closed = True
            self.fill._release()
