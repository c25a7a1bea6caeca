"""A small tmpfs as a store's disk: mounted for a test, unmounted whatever happens, and filled to the byte.

A tmpfs has a hard size, so ENOSPC comes exactly where a real full disk would give it, and nothing of the
host's own disk is used up. Mounting needs root, as the tests run.
"""
from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .cleanup import mounts_under

FILL_ATTEMPTS = 100  # a running server may take a little space between a look and the allocation


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of `size` (mount's syntax: 8m) on path, created if missing; unmounted on exit."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        for point in mounts_under(path):
            subprocess.run(["umount", point], check=True)


def free_bytes(root: Path) -> int:
    stats = os.statvfs(root)
    return stats.f_bavail * stats.f_frsize


def fill_up(root: Path) -> Path:
    """Allocate every free byte of root's file system to one file (root/filler), so the next write
    that needs a block fails with ENOSPC; returns the file, which is no part of the store."""
    filler = root / "filler"
    with open(filler, "ab") as handle:
        for _ in range(FILL_ATTEMPTS):
            free = free_bytes(root)
            if free == 0:
                return filler
            try:
                os.posix_fallocate(handle.fileno(), os.fstat(handle.fileno()).st_size, free)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
    raise AssertionError(f"{root} still has {free_bytes(root)} bytes free after {FILL_ATTEMPTS} allocations")
