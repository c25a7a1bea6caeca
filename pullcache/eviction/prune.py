"""Cached repositories keep naming content that eviction removed: GC prunes those names.

Eviction removes a cached blob's file and index row, nothing else, so the manifest revision that
names it in its upstream repository (proxied/<upstream>/<name>) stays behind, and so does a
_layers link written before cached blobs stopped being linked. Left alone they grow without bound.
GC removes each one whose blob is gone. A tag stays, and with it the revision it names: the tag
records when the upstream last confirmed it, and its next pull fetches the manifest again.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass

from pullcache.cache.store import Store
from pullcache.digests import Digest

REVISION = "revision"  # a cached manifest revision no tag names
LINK = "link"  # a cached blob link (only older versions wrote them)


@dataclass(frozen=True)
class StaleName:
    kind: str  # REVISION or LINK
    repository: str
    digest: Digest

    def __str__(self) -> str:
        return f"{self.repository}@{self.digest}"


async def stale_names(store: Store) -> list[StaleName]:
    """Untagged revisions and blob links of cached repositories whose blob is gone."""
    names: list[StaleName] = []
    for name in await store.repository_names(cached=True):
        repository = store.repository(name, cached=True)
        tagged = set((await repository.tags()).values())
        names += [StaleName(REVISION, name, digest) for digest in await repository.manifests() if digest not in tagged]
        names += [StaleName(LINK, name, digest) for digest in await repository.blob_links()]

    def gone() -> list[StaleName]:
        return [stale for stale in names if store.blob_size(stale.digest) is None]
    return await asyncio.to_thread(gone)


async def prune(store: Store, stale: list[StaleName]) -> list[StaleName]:
    """Remove each name whose blob is still gone (a pull may have fetched it again since the scan);
    returns those removed."""
    pruned = []
    for name in stale:
        if store.blob_size(name.digest) is not None:
            continue
        repository = store.repository(name.repository, cached=True)
        if name.kind == REVISION:
            removed = await repository.unlink_manifest(name.digest)
        else:
            removed = await repository.unlink_blob(name.digest)
        if removed:
            pruned.append(name)
    return pruned
