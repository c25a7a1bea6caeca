"""A repository whose content is all in the store, read through the cache/registry.py interface: a pushed
one, or (cached=True) the cached copy of an upstream's, which pullthrough/repository.py wraps with the
upstream itself. Over the Store and the repository's links (cache/repos.py)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pullcache.cache.registry import CACHE, LOCAL, BlobBody, ManifestBody, RepositoryUnknown
from pullcache.cache.store import Store
from pullcache.digests import Digest


class LocalRepository:
    def __init__(self, store: Store, name: str, *, cached: bool = False) -> None:
        self._store = store
        self._links = store.repository(name, cached=cached)
        self._cached = cached
        self._source = CACHE if cached else LOCAL

    async def holds_blob(self, digest: Digest) -> bool:
        """A pushed repository serves the blobs linked to it; a cached blob is linked to no repository (one
        fetch serves every repository of its upstream), so the cached copy holds whatever the store has."""
        if self._cached:
            return self._store.blob_size(digest) is not None
        return await self._links.has_blob_link(digest)

    async def blob(self, digest: Digest, *, head: bool = False) -> BlobBody | None:
        if not await self.holds_blob(digest):
            return None
        opened = await self._store.open_blob(digest, body=not head)
        if opened is None:
            return None
        self._store.note_access(digest)
        return BlobBody(self._source, blob=opened)

    async def manifest(self, reference: str | Digest, accept: Sequence[str] = (), *, head: bool = False,
                       count: bool = True) -> ManifestBody | None:
        if isinstance(reference, Digest):
            digest = reference
        else:
            tag = await self._links.get_tag(reference)
            if tag is None:
                return None
            digest = tag.digest
        media_type = await self._links.manifest_media_type(digest)
        data = await self._store.read_small(digest) if media_type is not None else None
        if media_type is None or data is None:
            return None
        return ManifestBody(digest, media_type, len(data), data, self._source)

    def answered(self, manifest: ManifestBody, *, head: bool) -> None:
        self._store.note_access(manifest.digest)

    async def tags(self) -> list[str]:
        tags = await self._links.tags()
        if not tags and not await self._links.known():
            raise RepositoryUnknown("is not known to this registry")
        return list(tags)

    async def referrers(self, subject: Digest) -> list[dict[str, Any]]:
        return await self._links.referrers(subject)
