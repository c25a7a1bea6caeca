"""A repository: tags, manifest revisions, blob links and referrers, all as small files (cache/layout.py),
kept where cache/repo_files.py says: under storage.path, or in the bucket read through Redis.

Link files make a repository's content explicit, so a local repository only serves blobs that
were pushed or mounted into it, and GC can mark from them. Each write replaces a whole file.
"""
from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pullcache.cache.repo_files import LAYERS, MANIFESTS, RepositoryFiles
from pullcache.digests import Digest


@dataclass(frozen=True)
class TagLink:
    digest: Digest
    confirmed_at: float  # when the tag was written or last confirmed by its upstream


async def _parse_tag(data: bytes, mtime: Callable[[], Awaitable[float]]) -> TagLink | None:
    """A tag file: {"digest", "confirmed_at"}; or, as older versions wrote it, the bare digest, last
    confirmed at the file's mtime. None for anything else."""
    try:
        if data.lstrip().startswith(b"{"):
            record = json.loads(data)
            return TagLink(Digest.parse(record["digest"]), float(record["confirmed_at"]))
        return TagLink(Digest.parse(data.decode().strip()), await mtime())
    except (ValueError, KeyError, TypeError):
        return None


def _digests(relative: list[str]) -> list[Digest]:
    """Digests stored as <alg>/<hex> files, from their paths relative to the folder holding them."""
    found: list[Digest] = []
    for path in relative:
        algorithm, _, hex_ = path.partition("/")
        try:
            found.append(Digest.parse(f"{algorithm}:{hex_}"))
        except ValueError:
            continue
    return found


class Repository:
    """One repository's links (local ones under repositories/<name>, cached ones under proxied/<upstream>/<name>),
    as files wherever `files` keeps them (cache/repo_files.py)."""

    def __init__(self, path: Path, name: str, files: RepositoryFiles) -> None:
        self.path = path
        self.name = name
        self._files = files

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
        """Answered from memory, for the resolver: a repository another replica just made may not be in it."""
        return self._files.holds_repository(self.path)

    async def known(self) -> bool:
        """exists(), or else asked of the files themselves."""
        if self.exists():
            return True
        for folder in (MANIFESTS, LAYERS):
            if await self._files.listing(self.path / folder):
                return True
        return False

    # ------------------------------------------------------------------ tags
    async def _parse(self, path: Path, data: bytes) -> TagLink | None:
        return await _parse_tag(data, lambda: self._files.modified(path))

    async def get_tag(self, tag: str) -> TagLink | None:
        data = await self._files.read(self._tag(tag))
        return None if data is None else await self._parse(self._tag(tag), data)

    async def set_tag(self, tag: str, digest: Digest, *, confirmed_at: float | None = None) -> None:
        """Point the tag at digest, recording when that was last true (now, unless the caller learned it
        earlier): an upstream tag's ttl counts from there, on any backend and across restarts."""
        record = {"digest": str(digest), "confirmed_at": time.time() if confirmed_at is None else confirmed_at}
        await self._files.write(self._tag(tag), json.dumps(record).encode())

    async def delete_tag(self, tag: str) -> bool:
        return bool(await self._files.remove([self._tag(tag)]))

    async def tags(self) -> dict[str, Digest]:
        """Every tag and the digest it names."""
        found = await self._files.read_folder(self.path / "_manifests" / "tags")
        result = {}
        for tag, data in found.items():
            link = await self._parse(self._tag(tag), data)
            if link is not None and "/" not in tag:
                result[tag] = link.digest
        return result

    # ------------------------------------------------------------------ manifests
    async def has_manifest(self, digest: Digest) -> bool:
        return await self._files.exists(self._revision(digest))

    async def absent_manifests(self, digests: list[Digest]) -> list[Digest]:
        """Those of `digests` the repository holds no revision of."""
        present = await self._files.existing([self._revision(digest) for digest in digests])
        return [digest for digest, there in zip(digests, present, strict=True) if not there]

    async def manifest_media_type(self, digest: Digest) -> str | None:
        """The media type the manifest was stored with, or None if the repository lacks it."""
        data = await self._files.read(self._revision(digest))
        return None if data is None else data.decode()

    async def link_manifest(self, digest: Digest, media_type: str) -> None:
        await self._files.write(self._revision(digest), media_type.encode())

    async def _manifest_files(self, digest: Digest) -> list[Path]:
        """The manifest's revision file, the tags naming it and its referrer entries; [] if it is absent."""
        if not await self.has_manifest(digest):
            return []
        files = [self._tag(tag) for tag, tagged in (await self.tags()).items() if tagged == digest]
        entry = f"{digest.algorithm}-{digest.hex}"
        referrers_root = self.path / "_referrers"
        files += [referrers_root / found for found in await self._files.listing(referrers_root)
                  if found.count("/") == 2 and found.rsplit("/", 1)[1] == entry]
        return [*files, self._revision(digest)]

    async def unlink_manifest(self, digest: Digest) -> bool:
        """Remove a manifest, every tag naming it and its referrer entries; False if it was absent."""
        files = await self._manifest_files(digest)
        await self._files.remove(files, prune_up_to=self.path / "_referrers")
        return bool(files)

    async def manifests(self) -> list[Digest]:
        return _digests(await self._files.listing(self.path / "_manifests" / "revisions"))

    # ------------------------------------------------------------------ blob links
    async def has_blob_link(self, digest: Digest) -> bool:
        return await self._files.exists(self._layer(digest))

    async def unlinked_blobs(self, digests: list[Digest]) -> list[Digest]:
        """Those of `digests` not linked into the repository."""
        present = await self._files.existing([self._layer(digest) for digest in digests])
        return [digest for digest, there in zip(digests, present, strict=True) if not there]

    async def link_blob(self, digest: Digest) -> None:
        if not await self.has_blob_link(digest):
            await self._files.write(self._layer(digest), b"")

    async def unlink_blob(self, digest: Digest) -> bool:
        return bool(await self._files.remove([self._layer(digest)]))

    async def blob_links(self) -> list[Digest]:
        return _digests(await self._files.listing(self.path / "_layers"))

    # ------------------------------------------------------------------ referrers
    async def add_referrer(self, subject: Digest, descriptor: dict[str, Any]) -> None:
        referrer = Digest.parse(descriptor["digest"])
        path = self._referrers(subject) / f"{referrer.algorithm}-{referrer.hex}"
        await self._files.write(path, json.dumps(descriptor).encode())

    async def referrers(self, subject: Digest) -> list[dict[str, Any]]:
        """Descriptors of the manifests whose subject is `subject`, in a stable order."""
        found = await self._files.read_folder(self._referrers(subject))
        descriptors = []
        for name in sorted(found):
            try:
                descriptors.append(json.loads(found[name]))
            except ValueError:
                continue
        return descriptors
