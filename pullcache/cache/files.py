"""Crash-safe file primitives: nothing half-written is ever visible under its final name.

Every write goes to a temp file in tmp/, is fsync'd, then renamed into place; the directory is
fsync'd so the rename itself survives a crash. These are blocking functions: callers run them
with asyncio.to_thread.

A temp file is owned: its writer holds an flock on it from creation until it is renamed or removed,
and the kernel drops the lock when the writer's process ends, kill -9 included. A temp file whose lock
is free belongs to no live process, whichever process (a server, a worker, `pullcache gc`) looks, so
it can be removed at once (remove_if_orphaned). flock, not fcntl locks: those are per process, and
a process would find its own temp files free.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import uuid
from io import FileIO
from pathlib import Path

log = logging.getLogger("pullcache.store")


class StoreFullError(OSError):
    """The disk has no room for a write (ENOSPC or EDQUOT); the temp file was removed."""


def is_disk_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


def temp_path(tmp_dir: Path, hint: str = "") -> Path:
    return tmp_dir / f"{hint}{uuid.uuid4().hex}.tmp"


def create_temp(path: Path) -> FileIO:
    """Create the temp file path (in tmp/), open for writing (unbuffered: no bytes wait in a buffer that
    closing would write) and owned until closed. A tmp/ removed under the running process (rm -rf) is
    made again."""
    try:
        return _create_owned(path)
    except FileNotFoundError:
        if path.parent.is_dir():
            raise
        log.warning("%s was missing (removed while running?): made it again", path.parent)
        path.parent.mkdir(exist_ok=True)
        return _create_owned(path)


def _create_owned(path: Path) -> FileIO:
    while True:
        file = open(path, "xb", buffering=0)  # noqa: SIM115 (the caller's to close)
        fcntl.flock(file.fileno(), fcntl.LOCK_EX)
        if _names(path, file.fileno()):
            return file
        file.close()  # removed as an orphan between its creation and the lock: create it again


def _names(path: Path, fd: int) -> bool:
    """Whether path is still the file open as fd."""
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _lock_if_free(path: Path) -> int | None:
    """A descriptor of path holding its lock, or None if a live writer holds it (or it is gone)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:  # gone already, or not a file a writer made
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def is_orphaned(path: Path) -> bool:
    """Whether no live process owns the temp file (a dry run's look; nothing changes)."""
    fd = _lock_if_free(path)
    if fd is None:
        return False
    os.close(fd)
    return True


def remove_if_orphaned(path: Path) -> bool:
    """Remove a temp file no live process owns, holding its lock meanwhile so no writer can take it
    in between; True if it was removed."""
    fd = _lock_if_free(path)
    if fd is None:
        return False
    try:
        return unlink_if_present(path)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(file: FileIO, temp: Path, final: Path) -> None:
    """fsync temp (open as file, which keeps owning it until the caller closes it), rename it to final
    (creating parents) and make the rename durable."""
    os.fsync(file.fileno())
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(temp, final)
    fsync_dir(final.parent)


def write_all(file: FileIO, data: bytes) -> None:
    """Write every byte: an unbuffered write may take fewer (the last ones before the disk filled up)."""
    view = memoryview(data)
    while view:
        view = view[file.write(view):]


def write_atomic(final: Path, data: bytes, tmp_dir: Path) -> None:
    """Write small data (a tag, a link, a manifest) so readers see the old or the new, never a part."""
    temp = temp_path(tmp_dir)
    try:
        with create_temp(temp) as file:
            write_all(file, data)
            publish(file, temp, final)
    except OSError as exc:
        remove_quietly(temp)
        if is_disk_full(exc):
            raise StoreFullError(exc.errno, f"no space left writing {final.name}") from exc
        raise


def unlink_if_present(path: Path) -> bool:
    """Remove a file; False if it was not there."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def remove_quietly(path: Path) -> None:
    unlink_if_present(path)


def remove_empty_parents(path: Path, stop: Path) -> None:
    """Remove now-empty directories from path upwards, never removing stop itself."""
    path = path.parent if not path.is_dir() else path
    while path != stop and stop in path.parents:
        try:
            path.rmdir()
        except OSError:
            return
        path = path.parent
