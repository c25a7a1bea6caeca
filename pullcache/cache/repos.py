"""A repository on disk: tags, manifest revisions, blob links and referrers, all as small files.

Link files make a repository's content explicit, so a local repository only serves blobs that
were pushed or mounted into it, and GC can mark from them. Each write is atomic (files.write_atomic).
"""
from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pullcache.cache.files import (
    remove_empty_parents,
    remove_quietly,
    unlink_if_present,
    write_atomic,
)
from pullcache.digests import Digest


@dataclass(frozen=True)
class TagLink:
    digest: Digest
    confirmed_at: float  # when the tag was written or last confirmed by its upstream


def _parse_tag(data: bytes, mtime: Callable[[], float]) -> TagLink | None:
    """A tag file: {"digest", "confirmed_at"}; or, as older versions wrote it, the bare digest, last
    confirmed at the file's mtime. None for anything else."""
    try:
        if data.lstrip().startswith(b"{"):
            record = json.loads(data)
            return TagLink(Digest.parse(record["digest"]), float(record["confirmed_at"]))
        return TagLink(Digest.parse(data.decode().strip()), mtime())
    except (ValueError, KeyError, TypeError):
        return None


def _digest_dirs(root: Path) -> list[Digest]:
    """Digests stored as <alg>/<hex> files under root."""
    found: list[Digest] = []
    if not root.is_dir():
        return found
    for alg_dir in root.iterdir():
        if alg_dir.is_dir():
            for entry in alg_dir.iterdir():
                try:
                    found.append(Digest.parse(f"{alg_dir.name}:{entry.name}"))
                except ValueError:
                    continue
    return found


def _remove_files(paths: list[Path]) -> None:
    for path in paths:
        remove_quietly(path)


class Mirror(Protocol):
    """Where repository files are also kept (the S3 backend's bucket): written before the local file, so a
    write that fails there (StorageUnavailable) changes nothing."""

    async def put(self, path: Path, data: bytes) -> None: ...

    async def delete(self, paths: list[Path]) -> None: ...

    async def restore(self) -> int: ...


class Repository:
    """One repository's links (local ones under repositories/<name>, cached ones under proxied/<upstream>/<name>)."""

    def __init__(self, path: Path, tmp_dir: Path, name: str, mirror: Mirror | None = None) -> None:
        self.path = path
        self.name = name
        self._tmp = tmp_dir
        self._mirror = mirror

    async def _write(self, path: Path, data: bytes) -> None:
        if self._mirror is not None:
            await self._mirror.put(path, data)
        await asyncio.to_thread(write_atomic, path, data, self._tmp)

    async def _remove(self, paths: list[Path]) -> None:
        if self._mirror is not None and paths:
            await self._mirror.delete(paths)
        await asyncio.to_thread(_remove_files, paths)

    # ------------------------------------------------------------------ paths
    def _tag(self, tag: str) -> Path:
        return self.path / "_manifests" / "tags" / tag

    def _revision(self, digest: Digest) -> Path:
        return self.path / "_manifests" / "revisions" / digest.algorithm / digest.hex

    def _layer(self, digest: Digest) -> Path:
        return self.path / "_layers" / digest.algorithm / digest.hex

    def _referrers(self, subject: Digest) -> Path:
        return self.path / "_referrers" / subject.algorithm / subject.hex

    # ------------------------------------------------------------------ existence
    def exists(self) -> bool:
        return (self.path / "_manifests").is_dir() or (self.path / "_layers").is_dir()

    # ------------------------------------------------------------------ tags
    def _get_tag(self, tag: str) -> TagLink | None:
        path = self._tag(tag)
        try:
            return _parse_tag(path.read_bytes(), lambda: path.stat().st_mtime)
        except (FileNotFoundError, NotADirectoryError):
            return None

    async def get_tag(self, tag: str) -> TagLink | None:
        return await asyncio.to_thread(self._get_tag, tag)

    async def set_tag(self, tag: str, digest: Digest, *, confirmed_at: float | None = None) -> None:
        """Point the tag at digest, recording when that was last true (now, unless the caller learned it
        earlier): an upstream tag's ttl counts from there, on any backend and across restarts."""
        record = {"digest": str(digest), "confirmed_at": time.time() if confirmed_at is None else confirmed_at}
        await self._write(self._tag(tag), json.dumps(record).encode())

    async def delete_tag(self, tag: str) -> bool:
        if self._mirror is not None and await asyncio.to_thread(self._tag(tag).exists):
            await self._mirror.delete([self._tag(tag)])
        return await asyncio.to_thread(unlink_if_present, self._tag(tag))

    def _tags(self) -> dict[str, Digest]:
        tags_dir = self.path / "_manifests" / "tags"
        if not tags_dir.is_dir():
            return {}
        result = {}
        for entry in tags_dir.iterdir():
            link = self._get_tag(entry.name)
            if link is not None:
                result[entry.name] = link.digest
        return result

    async def tags(self) -> dict[str, Digest]:
        """Every tag and the digest it names."""
        return await asyncio.to_thread(self._tags)

    # ------------------------------------------------------------------ manifests
    def _media_type(self, digest: Digest) -> str | None:
        try:
            return self._revision(digest).read_text()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def has_manifest(self, digest: Digest) -> bool:
        return self._revision(digest).exists()

    async def manifest_media_type(self, digest: Digest) -> str | None:
        """The media type the manifest was stored with, or None if the repository lacks it."""
        return await asyncio.to_thread(self._media_type, digest)

    async def link_manifest(self, digest: Digest, media_type: str) -> None:
        await self._write(self._revision(digest), media_type.encode())

    def _manifest_files(self, digest: Digest) -> list[Path]:
        """The manifest's revision file, the tags naming it and its referrer entries; [] if it is absent."""
        path = self._revision(digest)
        if not path.exists():
            return []
        files = [self._tag(tag) for tag, tagged in self._tags().items() if tagged == digest]
        referrers_root = self.path / "_referrers"
        if referrers_root.is_dir():
            files += referrers_root.glob(f"*/*/{digest.algorithm}-{digest.hex}")
        return [*files, path]

    async def unlink_manifest(self, digest: Digest) -> bool:
        """Remove a manifest, every tag naming it and its referrer entries; False if it was absent."""
        files = await asyncio.to_thread(self._manifest_files, digest)
        await self._remove(files)
        referrers_root = self.path / "_referrers"
        for entry in files:
            if entry.is_relative_to(referrers_root):
                await asyncio.to_thread(remove_empty_parents, entry.parent, referrers_root)
        return bool(files)

    async def manifests(self) -> list[Digest]:
        return await asyncio.to_thread(_digest_dirs, self.path / "_manifests" / "revisions")

    # ------------------------------------------------------------------ blob links
    def has_blob_link(self, digest: Digest) -> bool:
        return self._layer(digest).exists()

    async def link_blob(self, digest: Digest) -> None:
        if not self.has_blob_link(digest):
            await self._write(self._layer(digest), b"")

    async def unlink_blob(self, digest: Digest) -> bool:
        if self._mirror is not None and self.has_blob_link(digest):
            await self._mirror.delete([self._layer(digest)])
        return await asyncio.to_thread(unlink_if_present, self._layer(digest))

    async def blob_links(self) -> list[Digest]:
        return await asyncio.to_thread(_digest_dirs, self.path / "_layers")

    # ------------------------------------------------------------------ referrers
    async def add_referrer(self, subject: Digest, descriptor: dict[str, Any]) -> None:
        referrer = Digest.parse(descriptor["digest"])
        path = self._referrers(subject) / f"{referrer.algorithm}-{referrer.hex}"
        await self._write(path, json.dumps(descriptor).encode())

    def _referrers_of(self, subject: Digest) -> list[dict[str, Any]]:
        folder = self._referrers(subject)
        if not folder.is_dir():
            return []
        descriptors = []
        for entry in sorted(folder.iterdir()):
            try:
                descriptors.append(json.loads(entry.read_bytes()))
            except (OSError, ValueError):
                continue
        return descriptors

    async def referrers(self, subject: Digest) -> list[dict[str, Any]]:
        """Descriptors of the manifests whose subject is `subject`, in a stable order."""
        return await asyncio.to_thread(self._referrers_of, subject)
