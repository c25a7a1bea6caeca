"""Which processes use a store right now, and which stopped without a clean shutdown.

Several processes may serve one storage.path (`workers: N`, or a `serve` beside another). One flag in the
index cannot say whether the store is clean: the first process to stop would set it while the others
still write, and one that dies meanwhile would go unnoticed. So each process that uses the store keeps a
marker file in `<storage.path>/running/`, owned the way temp files are (cache/files.py: an flock the
kernel drops when the process ends, kill -9 included):

- a marker whose lock is held belongs to a live process;
- a marker whose lock is free was left by a process that ended without a clean stop: the store needs a
  reconcile, and the process that starts next (and reconciles) removes it;
- a clean stop removes its own marker; the process that then sees no marker left is the last one.

Blocking functions: the Store runs them with asyncio.to_thread.
"""
from __future__ import annotations

from io import FileIO
from pathlib import Path

from pullcache.cache.files import create_temp, is_orphaned, remove_if_orphaned, temp_path, unlink_if_present

RUNNING_DIR = "running"


class UsageMarkers:
    def __init__(self, root: Path) -> None:
        self.dir = root / RUNNING_DIR
        self._path = temp_path(self.dir)  # this process's marker
        self._mine: FileIO | None = None  # open (and locked) while this process uses the store

    def _others(self) -> list[Path]:
        if not self.dir.is_dir():
            return []
        return [path for path in self.dir.iterdir() if path != self._path]

    def others(self) -> tuple[int, int]:
        """(live, dead): markers of other processes using the store now, and of those that ended uncleanly."""
        others = self._others()
        dead = sum(is_orphaned(path) for path in others)
        return len(others) - dead, dead

    def claim(self) -> None:
        """Mark this process as a user of the store (once), and settle the markers dead processes left: the
        caller asked others() first and reconciles when there were any."""
        if self._mine is not None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        for path in self._others():
            remove_if_orphaned(path)
        self._mine = create_temp(self._path)

    def release(self) -> bool:
        """A clean stop: remove this process's marker; True if no other marker remains (the last user)."""
        if self._mine is not None:
            unlink_if_present(self._path)
            self._mine.close()
            self._mine = None
        return not self._others()

    def close(self) -> None:
        """Let go of the marker without a clean stop (what a crash does): it stays, unowned."""
        if self._mine is not None:
            self._mine.close()
            self._mine = None
