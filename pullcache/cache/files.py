"""Crash-safe file primitives: nothing half-written is ever visible under its final name.

Every write goes to a temp file in tmp/, is fsync'd, then renamed into place; the directory is
fsync'd so the rename itself survives a crash. These are blocking functions: callers run them
with asyncio.to_thread.
"""
from __future__ import annotations

import errno
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
    closing would write). A tmp/ removed under the running process (rm -rf) is made again."""
    try:
        return open(path, "xb", buffering=0)
    except FileNotFoundError:
        if path.parent.is_dir():
            raise
        log.warning("%s was missing (removed while running?): made it again", path.parent)
        path.parent.mkdir(exist_ok=True)
        return open(path, "xb", buffering=0)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(file: FileIO, temp: Path, final: Path) -> None:
    """fsync temp (open as file, closed by the caller), rename it to final (creating parents) and make
    the rename durable."""
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
