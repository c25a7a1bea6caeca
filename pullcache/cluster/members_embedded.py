"""The members roster of one host (no Redis): `<storage.path>/members/<uuid>.member`, one per process, holding
its JSON info and locked while the process lives (an owned file, as cache/files.py makes temp files: the
kernel drops the lock when the process ends, kill -9 included). A member is a file whose lock is held;
a file whose lock is free is a dead process's, and whoever reads the roster next removes it.

A file is written under a `.tmp` name and renamed once complete (the lock goes with it), so a reader never
sees a member without its info. Blocking work runs in a thread.
"""
from __future__ import annotations

import asyncio
import json
from io import FileIO
from pathlib import Path

from pullcache.cache.files import create_temp, remove_if_orphaned, temp_path, unlink_if_present
from pullcache.cluster.base import CoordinationUnavailable
from pullcache.cluster.members import Member, Roster

MEMBERS_DIR = "members"
SUFFIX = ".member"


class FileRoster(Roster):
    kind = "embedded"

    def __init__(self, storage_path: str | Path) -> None:
        self.dir = Path(storage_path).resolve() / MEMBERS_DIR
        self.where = str(self.dir)
        self._path = temp_path(self.dir).with_suffix(SUFFIX)  # this process's file
        self._mine: FileIO | None = None

    def _join(self, me: Member) -> None:
        """Write this process's file (again, if it was removed under it), locked for as long as it runs."""
        if self._mine is not None and self._path.exists():
            return
        self._drop_mine()
        self.dir.mkdir(parents=True, exist_ok=True)
        partial = temp_path(self.dir)
        file = create_temp(partial)
        try:
            file.write(json.dumps({"id": me.id, **me.info()}).encode())
            partial.rename(self._path)
        except BaseException:
            file.close()
            unlink_if_present(partial)
            raise
        self._mine = file

    def _read(self) -> list[Member]:
        members = []
        for path in sorted(self.dir.iterdir()):
            if path.suffix not in (SUFFIX, ".tmp") or remove_if_orphaned(path):
                continue  # not a roster file, or a dead process's (removed now)
            if path.suffix == SUFFIX:
                try:
                    info = json.loads(path.read_bytes())
                except (FileNotFoundError, ValueError):  # left just now, or not ours
                    continue
                members.append(Member.from_info(str(info.get("id", path.stem)), info, 0.0))
        return members

    def _announce(self, me: Member) -> list[Member]:
        self._join(me)
        return self._read()

    async def announce(self, me: Member) -> list[Member]:
        try:
            return await asyncio.to_thread(self._announce, me)
        except OSError as exc:
            raise CoordinationUnavailable(f"members in {self.dir}: {exc.strerror or exc}") from exc

    def _drop_mine(self) -> None:
        if self._mine is not None:
            unlink_if_present(self._path)
            self._mine.close()
            self._mine = None

    async def leave(self, me: Member) -> None:
        await asyncio.to_thread(self._drop_mine)

    async def close(self) -> None:
        await asyncio.to_thread(self._drop_mine)
