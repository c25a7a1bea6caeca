"""Leases for the processes of one host: an flock on `<storage.path>/leases/<key>.lock`.

flock, not fcntl locks: an flock belongs to its open file, so two holders in one process exclude each
other too, and the kernel drops it the moment the holding process dies (kill -9 included), so a lease
here never waits out a ttl. The ttl is accepted for the interface's sake.

The holder writes its name into the file it locked; the others read it there (holder()), and trust it
only while the file is locked: a dead holder's name stays in a file nobody locks. A release removes the
file (there is one lease per fill, so kept files would pile up, one per blob ever fetched): the holder
unlinks it while still holding the lock, and whoever opened it before and locks it after sees that the
path no longer leads to the file it locked, and starts over on a new one.
"""
from __future__ import annotations

import asyncio
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from pullcache.cluster.base import CoordinationUnavailable, Coordinator

LEASE_DIR = "leases"


@dataclass(frozen=True)
class _Held:
    holder: str
    fd: int


def _same_file(fd: int, path: Path) -> bool:
    """Whether `path` still leads to the open file `fd` (its holder may have removed it meanwhile)."""
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (found.st_dev, found.st_ino) == (mine.st_dev, mine.st_ino)


class EmbeddedCoordinator(Coordinator):
    def __init__(self, storage_path: str | Path) -> None:
        self._dir = Path(storage_path) / LEASE_DIR
        self._held: dict[str, _Held] = {}

    def _path(self, key: str) -> Path:
        return self._dir / f"{quote(key, safe='')}.lock"

    def _lock(self, key: str, holder: str) -> int | None:
        """The locked file's descriptor, or None when another open file holds the lock."""
        self._dir.mkdir(parents=True, exist_ok=True)
        path = self._path(key)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if _same_file(fd, path):
                    os.ftruncate(fd, 0)  # who holds it, for the others and for an operator looking at the file
                    os.pwrite(fd, f"{holder}\n".encode(), 0)
                    return fd
            except BlockingIOError:
                os.close(fd)
                return None
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # locked a file its last holder had removed: start over on the path's file

    def _read_holder(self, key: str) -> str | None:
        """The name in the lease's file while another open file locks it; None if nobody does."""
        try:
            fd = os.open(self._path(key), os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # taken: nobody holds it (dropped with the fd)
                return None
            except BlockingIOError:
                pass
            text = os.pread(fd, 4096, 0).decode(errors="replace")
        finally:
            os.close(fd)
        return text[:-1] if text.endswith("\n") else None  # not written whole yet: as good as nobody

    def _unlock(self, key: str, fd: int) -> None:
        """Remove the file, then drop the lock with its only descriptor."""
        try:
            os.unlink(self._path(key))
        finally:
            os.close(fd)

    async def acquire(self, key: str, holder: str, ttl: float) -> bool:
        held = self._held.get(key)
        if held is not None:
            return held.holder == holder
        try:
            fd = await asyncio.to_thread(self._lock, key, holder)
        except OSError as exc:
            raise CoordinationUnavailable(f"lease file {self._path(key)}: {exc.strerror or exc}") from exc
        if fd is None:
            return False
        if key in self._held:  # another holder in this process won the race meanwhile
            os.close(fd)
            return self._held[key].holder == holder
        self._held[key] = _Held(holder, fd)
        return True

    async def renew(self, key: str, holder: str, ttl: float) -> bool:
        held = self._held.get(key)
        return held is not None and held.holder == holder

    async def release(self, key: str, holder: str) -> bool:
        held = self._held.get(key)
        if held is None or held.holder != holder:
            return False
        del self._held[key]
        try:
            await asyncio.to_thread(self._unlock, key, held.fd)
        except OSError as exc:
            raise CoordinationUnavailable(f"lease file {self._path(key)}: {exc.strerror or exc}") from exc
        return True

    async def holder(self, key: str) -> str | None:
        """Read without taking it: a shared lock tried and dropped at once, during which an acquire() by
        another process fails as if the lease were held."""
        held = self._held.get(key)
        if held is not None:
            return held.holder
        try:
            return await asyncio.to_thread(self._read_holder, key)
        except OSError as exc:
            raise CoordinationUnavailable(f"lease file {self._path(key)}: {exc.strerror or exc}") from exc

    async def close(self) -> None:
        for key, held in list(self._held.items()):
            await self.release(key, held.holder)
