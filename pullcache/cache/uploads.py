"""Upload sessions: uploads/<id>/data grows chunk by chunk, info.json says whose it is.

The running hash lives in memory so a chunked push is hashed once; after a restart, or when another
process on the store (a worker) appended a chunk, it is rebuilt from the data file the next time the
session is touched. A session lock serialises chunks,
so two PATCHes of one session can never interleave, and GC removes a session under that lock.
There is one UploadSession object per session id (`_live`), so a removal by GC ends the very object
the requests hold. A `pullcache gc` in another process cannot reach it: a session whose folder
went raises UploadGone.

A session's id is a UUID, followed by a suffix its creator may give it (`.`-separated base64url parts: the
replica that holds it, cluster/upload_owners.py); the folder is named by the whole id.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import AsyncIterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pullcache.cache.files import write_atomic
from pullcache.cache.writer import BlobWriter
from pullcache.digests import Hasher

HASH_READ_SIZE = 4 * 1024 * 1024
_SUFFIX = re.compile(r"(?:\.[A-Za-z0-9_-]+)*")  # never a `/` nor a `..`: the id names a folder


class UploadGone(Exception):
    """The session's folder was removed (by a GC, maybe in another process): the upload is over."""

    def __init__(self, session: UploadSession) -> None:
        super().__init__(f"upload {session.id} was removed")
        self.session = session


@dataclass
class UploadSession:
    id: str
    repository: str
    started: float
    path: Path
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    hasher: Hasher | None = None
    ended: bool = False  # completed or cancelled: a request that waited on the lock must not touch it

    @property
    def data(self) -> Path:
        return self.path / "data"

    def last_write(self) -> float:
        """When a byte last arrived: the data file's mtime, the folder's before the data file
        exists, 0 once the folder is gone too."""
        for path in (self.data, self.path):
            try:
                return os.stat(path).st_mtime
            except FileNotFoundError:
                continue
        return 0.0

    def size(self) -> int:
        """Bytes received so far: the running hash knows it; after a restart or a rollback, the file does."""
        if self.hasher is not None:
            return self.hasher.size
        try:
            return self.data.stat().st_size
        except FileNotFoundError:
            return 0


def _file_size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def _well_formed(upload_id: str) -> bool:
    """A UUID in its canonical form, then a suffix create() accepts."""
    head, dot, tail = upload_id.partition(".")
    try:
        canonical = str(uuid.UUID(head)) == head
    except ValueError:
        return False
    return canonical and _SUFFIX.fullmatch(dot + tail) is not None


def _rehash(path: Path, algorithm: str) -> Hasher:
    hasher = Hasher(algorithm)
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_READ_SIZE):
            hasher.update(chunk)
    return hasher


@dataclass(frozen=True)
class UploadFolder:
    """What GC needs to know of a session's storage: its id, bytes received and last write."""

    upload_id: str
    size: int
    last_active: float


class Uploads:
    """Create, find, append to and end upload sessions."""

    def __init__(self, root: Path, tmp_dir: Path) -> None:
        self.root = root
        self._tmp = tmp_dir
        self._live: dict[str, UploadSession] = {}

    async def create(self, repository: str, suffix: str = "") -> UploadSession:
        """A new session, its id a fresh UUID followed by `suffix`."""
        if not _SUFFIX.fullmatch(suffix):
            raise ValueError(f"upload id suffix {suffix!r} is not .-separated base64url parts")
        upload_id = str(uuid.uuid4()) + suffix
        path = self.root / upload_id
        info = json.dumps({"repository": repository, "started": time.time()}).encode()

        def make() -> None:
            path.mkdir(parents=True)
            try:
                (path / "data").touch()
                write_atomic(path / "info.json", info, self._tmp)
            except BaseException:
                shutil.rmtree(path, ignore_errors=True)  # e.g. a full disk: no half-made session stays
                raise
        await asyncio.to_thread(make)
        session = UploadSession(upload_id, repository, time.time(), path, hasher=Hasher("sha256"))
        self._live[upload_id] = session
        return session

    async def get(self, upload_id: str, repository: str) -> UploadSession | None:
        """The session if it exists and belongs to this repository (ids are not shared across names)."""
        session = self._live.get(upload_id)
        if session is not None and session.hasher is not None and not session.lock.locked() \
                and await asyncio.to_thread(_file_size, session.data) not in (None, session.hasher.size):
            # Another process on this store (a worker of `workers: N`) appended since: the running hash is
            # stale, and the file says how far the upload got. A file gone is the folder gone: UploadGone.
            session.hasher = None
        if session is None:
            session = await asyncio.to_thread(self._load, upload_id)
            if session is not None:
                session = self._live.setdefault(upload_id, session)
        if session is None or session.repository != repository:
            return None
        return session

    async def holds(self, upload_id: str) -> bool:
        """Whether this store has the session, whichever process on it started it."""
        return upload_id in self._live or await asyncio.to_thread(self._load, upload_id) is not None

    def _load(self, upload_id: str) -> UploadSession | None:
        if not _well_formed(upload_id):
            return None
        path = self.root / upload_id
        try:
            info = json.loads((path / "info.json").read_bytes())
        except (OSError, ValueError):
            return None
        return UploadSession(upload_id, info["repository"], info["started"], path)

    @contextmanager
    def _gone_if_missing(self, session: UploadSession) -> Iterator[None]:
        """A session file that is not there means its folder was removed: end the session."""
        try:
            yield
        except FileNotFoundError as exc:
            self._end(session)
            raise UploadGone(session) from exc

    async def writer(self, session: UploadSession, algorithm: str = "sha256") -> BlobWriter:
        """A writer appending to the session's data, its hash continued (or rebuilt after a restart).

        Raises UploadGone if the session's folder was removed."""
        with self._gone_if_missing(session):
            if session.hasher is None or session.hasher.algorithm != algorithm:
                session.hasher = await asyncio.to_thread(_rehash, session.data, algorithm)
            writer = BlobWriter(self._tmp, path=session.data, hasher=session.hasher)
            return await writer.open(append=True)

    async def append(self, session: UploadSession, chunks: AsyncIterable[bytes]) -> int:
        """Append a chunk stream; returns the session's new size. Caller holds session.lock.

        A stream that fails half-way (client gone, wrong length, full disk) is cut off again, so
        the session is exactly as it was before this chunk and the client can resume from there.
        Raises UploadGone if the session's folder was removed, even while the chunk arrived (the
        open file took the bytes, but they went with the folder).
        """
        writer = await self.writer(session)
        start = writer.hasher.size
        with self._gone_if_missing(session):
            try:
                async for chunk in chunks:
                    await writer.write(chunk)
                await writer.close_file()
                await asyncio.to_thread(os.stat, session.data)
            except BaseException:
                session.hasher = None  # it has seen the dropped bytes; rebuilt from the file on next use
                await asyncio.shield(writer.rollback(start))
                raise
        return writer.hasher.size

    def _end(self, session: UploadSession) -> None:
        session.ended = True
        self._live.pop(session.id, None)

    async def remove(self, session: UploadSession) -> None:
        self._end(session)
        await asyncio.to_thread(shutil.rmtree, session.path, True)

    async def remove_if_idle(self, session: UploadSession, idle_before: float) -> bool:
        """GC's removal: only a session no request is writing to, that has received nothing since
        idle_before (an epoch time) and is not over already; True if it was removed."""
        if session.lock.locked():
            return False  # a chunk is streaming in right now
        async with session.lock:
            if session.ended or await asyncio.to_thread(session.last_write) >= idle_before:
                return False
            await self.remove(session)
        return True

    async def sessions(self) -> list[UploadSession]:
        """Every session on disk (GC removes those idle longer than gc.upload_ttl): the live object
        for each, so that what GC does to one, the requests holding it see."""
        def scan() -> list[UploadSession]:
            if not self.root.is_dir():
                return []
            found = [self._load(entry.name) for entry in self.root.iterdir()]
            return [s for s in found if s is not None]
        return [self._live.setdefault(session.id, session) for session in await asyncio.to_thread(scan)]

    async def folders(self) -> list[UploadFolder]:
        """Every upload folder with its data's size and last write (the folder's own time while it has no
        data yet), sessions and half-created folders alike."""
        def scan() -> list[UploadFolder]:
            found = []
            if self.root.is_dir():
                for entry in os.scandir(self.root):
                    try:
                        data = os.stat(Path(entry.path) / "data")  # made with the session, appended per chunk
                        found.append(UploadFolder(entry.name, data.st_size, data.st_mtime))
                    except FileNotFoundError:
                        found.append(UploadFolder(entry.name, 0, entry.stat().st_mtime))
            return found
        return await asyncio.to_thread(scan)

    async def remove_folder(self, upload_id: str) -> None:
        """Remove a folder that holds no session (half-created, its info never written)."""
        await asyncio.to_thread(shutil.rmtree, self.root / upload_id, True)
