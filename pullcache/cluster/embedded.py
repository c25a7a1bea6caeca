"""Leases for the processes of one host: an flock on `<storage.path>/leases/<key>.lock`.

flock, not fcntl locks: an flock belongs to its open file, so two holders in one process exclude each
other too, and the kernel drops it the moment the holding process dies (kill -9 included), so a lease
here never waits out a ttl. The ttl is accepted for the interface's sake. Lock files are never removed:
removing one while another process opens it would let two holders lock two different files.
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


class EmbeddedCoordinator(Coordinator):
    def __init__(self, storage_path: str | Path) -> None:
        self._dir = Path(storage_path) / LEASE_DIR
        self._held: dict[str, _Held] = {}

    def _path(self, key: str) -> Path:
        return self._dir / f"{quote(key, safe='')}.lock"

    def _lock(self, key: str, holder: str) -> int | None:
        """The locked file's descriptor, or None when another open file holds the lock."""
        self._dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._path(key), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)  # who holds it, for an operator looking at the file
        os.pwrite(fd, f"{holder}\n".encode(), 0)
        return fd

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
        os.close(held.fd)  # closing the only descriptor of the open file drops the flock
        return True

    async def close(self) -> None:
        for key, held in list(self._held.items()):
            await self.release(key, held.holder)
