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
from typing import Any

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


class Repository:
    """One repository's links (local ones under repositories/<name>, cached ones under proxied/<upstream>/<name>)."""

    def __init__(self, path: Path, tmp_dir: Path, name: str) -> None:
        self.path = path
        self.name = name
        self._tmp = tmp_dir

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
        await asyncio.to_thread(write_atomic, self._tag(tag), json.dumps(record).encode(), self._tmp)

    async def delete_tag(self, tag: str) -> bool:
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
        await asyncio.to_thread(write_atomic, self._revision(digest), media_type.encode(), self._tmp)

    def _unlink_manifest(self, digest: Digest) -> bool:
        path = self._revision(digest)
        if not path.exists():
            return False
        for tag, tagged in self._tags().items():
            if tagged == digest:
                remove_quietly(self._tag(tag))
        remove_quietly(path)
        referrers_root = self.path / "_referrers"
        if referrers_root.is_dir():
            for entry in referrers_root.glob(f"*/*/{digest.algorithm}-{digest.hex}"):
                remove_quietly(entry)
                remove_empty_parents(entry.parent, referrers_root)
        return True

    async def unlink_manifest(self, digest: Digest) -> bool:
        """Remove a manifest, every tag naming it and its referrer entries; False if it was absent."""
        return await asyncio.to_thread(self._unlink_manifest, digest)

    async def manifests(self) -> list[Digest]:
        return await asyncio.to_thread(_digest_dirs, self.path / "_manifests" / "revisions")

    # ------------------------------------------------------------------ blob links
    def has_blob_link(self, digest: Digest) -> bool:
        return self._layer(digest).exists()

    async def link_blob(self, digest: Digest) -> None:
        if not self.has_blob_link(digest):
            await asyncio.to_thread(write_atomic, self._layer(digest), b"", self._tmp)

    async def unlink_blob(self, digest: Digest) -> bool:
        return await asyncio.to_thread(unlink_if_present, self._layer(digest))

    async def blob_links(self) -> list[Digest]:
        return await asyncio.to_thread(_digest_dirs, self.path / "_layers")

    # ------------------------------------------------------------------ referrers
    async def add_referrer(self, subject: Digest, descriptor: dict[str, Any]) -> None:
        referrer = Digest.parse(descriptor["digest"])
        path = self._referrers(subject) / f"{referrer.algorithm}-{referrer.hex}"
        await asyncio.to_thread(write_atomic, path, json.dumps(descriptor).encode(), self._tmp)

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
