"""Where a repository's small files (tags, revisions, blob links, referrers) are read and written.

Repository (cache/repos.py) speaks in paths of the filesystem layout and leaves the where to one of two:
- LocalFiles: files under storage.path, each write atomic. With the S3 backend on one node, each write
  goes to the bucket first (a Mirror) and the local copy serves every read: the fast path.
- BucketFiles (cache/bucket_files.py): replicas on one bucket with cluster.redis; the bucket is read
  through a Redis cache every replica shares, and nothing is kept locally.
"""
from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Protocol

from pullcache.cache.files import remove_empty_parents, remove_quietly, write_atomic
from pullcache.cache.layout import Layout

MANIFESTS, LAYERS = "_manifests", "_layers"  # a repository is a folder holding either


class Mirror(Protocol):
    """Where repository files are also kept (the S3 backend's bucket): written before the local file, so a
    write that fails there (StorageUnavailable) changes nothing."""

    async def put(self, path: Path, data: bytes) -> None: ...

    async def delete(self, paths: list[Path]) -> None: ...

    async def restore(self) -> int: ...


class RepositoryFiles(Protocol):
    async def open(self) -> None:
        """Ready the files for use (a local copy restored from the bucket, say)."""

    async def close(self) -> None: ...

    async def read(self, path: Path) -> bytes | None:
        """The file's bytes; None if there is none."""

    async def modified(self, path: Path) -> float:
        """When the file was last written (POSIX time)."""

    async def exists(self, path: Path) -> bool: ...

    async def existing(self, paths: list[Path]) -> list[bool]:
        """exists() of each, at once."""

    async def read_folder(self, folder: Path) -> dict[str, bytes]:
        """Every file under `folder`, at any depth, by its path relative to it (posix)."""

    async def listing(self, folder: Path) -> list[str]:
        """The relative paths of read_folder(), without reading the files."""

    async def write(self, path: Path, data: bytes) -> None: ...

    async def remove(self, paths: list[Path], *, prune_up_to: Path | None = None) -> list[Path]:
        """Remove the files, then the folders they leave empty up to (not including) prune_up_to; returns the
        files that were there."""

    def holds_repository(self, path: Path) -> bool:
        """Whether a repository is at `path`; answered without waiting (the resolver asks on every request)."""

    @property
    def names_version(self) -> int:
        """Grows whenever holds_repository learns of repositories other processes created; 0 where it asks
        the disk each time (the resolver then keeps an answer for its usual interval)."""

    async def repository_names(self, root: Path) -> list[str]:
        """The names of every repository under root, sorted."""


def _walk(folder: Path) -> list[Path]:
    found: list[Path] = []
    for dirpath, _, filenames in os.walk(folder):
        found += (Path(dirpath) / name for name in filenames)
    return found


def _present(path: Path) -> bool:
    """One stat, run inline: a thread hop costs more, and a pushed repository's blob GET asks it each time."""
    return path.exists()


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None


def _read_folder(folder: Path) -> dict[str, bytes]:
    files = {}
    for path in _walk(folder):
        data = _read(path)
        if data is not None:
            files[path.relative_to(folder).as_posix()] = data
    return files


def _remove(paths: list[Path], prune_up_to: Path | None) -> None:
    for path in paths:
        remove_quietly(path)
        if prune_up_to is not None and path.is_relative_to(prune_up_to):
            remove_empty_parents(path.parent, prune_up_to)


def _names(root: Path) -> list[str]:
    names = []
    for dirpath, dirnames, _ in os.walk(root):
        if MANIFESTS in dirnames or LAYERS in dirnames:
            names.append(os.path.relpath(dirpath, root))
        dirnames[:] = [d for d in dirnames if not d.startswith("_")]
    return sorted(names)


class LocalFiles:
    """Files under storage.path, written through `mirror` first when there is one."""

    def __init__(self, layout: Layout, mirror: Mirror | None = None) -> None:
        self._tmp = layout.tmp
        self._mirror = mirror

    async def open(self) -> None:
        if self._mirror is not None:
            await self._mirror.restore()

    async def close(self) -> None:
        pass

    async def read(self, path: Path) -> bytes | None:
        return await asyncio.to_thread(_read, path)

    async def modified(self, path: Path) -> float:
        return (await asyncio.to_thread(path.stat)).st_mtime

    async def exists(self, path: Path) -> bool:
        return _present(path)

    async def existing(self, paths: list[Path]) -> list[bool]:
        return await asyncio.to_thread(lambda: [path.exists() for path in paths])

    async def read_folder(self, folder: Path) -> dict[str, bytes]:
        return await asyncio.to_thread(_read_folder, folder)

    async def listing(self, folder: Path) -> list[str]:
        paths = await asyncio.to_thread(_walk, folder)
        return [path.relative_to(folder).as_posix() for path in paths]

    async def write(self, path: Path, data: bytes) -> None:
        if self._mirror is not None:
            await self._mirror.put(path, data)
        await asyncio.to_thread(write_atomic, path, data, self._tmp)

    async def remove(self, paths: list[Path], *, prune_up_to: Path | None = None) -> list[Path]:
        present = [path for path, there in zip(paths, await self.existing(paths), strict=True) if there]
        if self._mirror is not None and present:
            await self._mirror.delete(present)
        await asyncio.to_thread(_remove, present, prune_up_to)
        return present

    def holds_repository(self, path: Path) -> bool:
        return (path / MANIFESTS).is_dir() or (path / LAYERS).is_dir()

    names_version = 0  # holds_repository asks the disk

    async def repository_names(self, root: Path) -> list[str]:
        return await asyncio.to_thread(_names, root)
