"""What is really on disk, for reconciling the index with it: blob files and orphaned temp files.

Blocking functions: the Store runs each in one worker thread.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pullcache.cache.files import is_orphaned, remove_if_orphaned
from pullcache.cache.layout import digest_from_blob_path


@dataclass(frozen=True)
class StaleFile:
    """A temp file no live process owns."""

    path: Path
    size: int

    @property
    def name(self) -> str:
        return self.path.name


def blob_files(root: Path) -> dict[str, tuple[int, float]]:
    """Every blob file under blobs/<alg>/<xx>/<hex>: digest text -> (size, mtime)."""
    found: dict[str, tuple[int, float]] = {}
    if not root.is_dir():
        return found
    with os.scandir(root) as algorithms:
        for algorithm in algorithms:
            if not algorithm.is_dir():
                continue
            with os.scandir(algorithm.path) as prefixes:
                for prefix in prefixes:
                    if not prefix.is_dir():
                        continue
                    with os.scandir(prefix.path) as entries:
                        for entry in entries:
                            digest = digest_from_blob_path(Path(entry.path))
                            if digest is not None and entry.is_file():
                                info = entry.stat()
                                found[str(digest)] = (info.st_size, info.st_mtime)
    return found


def orphaned_files(folder: Path, older_than: float) -> list[StaleFile]:
    """Temp files directly in folder that no live process owns, last modified before older_than (an
    epoch time)."""
    stale = []
    if folder.is_dir():
        with os.scandir(folder) as entries:
            for entry in entries:
                try:
                    info = entry.stat()
                except FileNotFoundError:
                    continue
                if entry.is_file() and info.st_mtime < older_than and is_orphaned(Path(entry.path)):
                    stale.append(StaleFile(Path(entry.path), info.st_size))
    return stale


def remove_orphans(temps: list[StaleFile]) -> list[StaleFile]:
    """Remove those still orphaned (checked again under their lock); returns the ones removed."""
    return [temp for temp in temps if remove_if_orphaned(temp.path)]
