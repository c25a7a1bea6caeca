"""What local (pushed) repositories hold: the blobs their manifests need, and the blobs they link.

GC marks from `referenced`; reconcile decides a re-found file's origin from `linked` (a blob any
local repository links or lists as a manifest was pushed, anything else was cached).

The manifests are read from their blob files and parsed in one worker thread: a GC must not
parse every local manifest on the event loop, nor push the hot manifests out of the store's
memory cache (which serves pulls) with every manifest it reads once.
"""
from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pullcache.cache.store import Store


@dataclass
class LocalRefs:
    referenced: set[str] = field(default_factory=set)  # local manifests and everything they reference
    links: dict[str, list[str]] = field(default_factory=dict)  # blob digest -> repositories linking it

    @property
    def linked(self) -> set[str]:
        """Every digest a local repository holds, as a manifest or as a blob link."""
        return self.referenced | self.links.keys()


def _digests(items: Any, key: str = "digest") -> list[str]:
    if isinstance(items, dict):
        items = [items]
    if not isinstance(items, list):
        return []
    return [item[key] for item in items if isinstance(item, dict) and isinstance(item.get(key), str)]


def manifest_references(data: bytes) -> tuple[list[str], list[str]]:
    """(blob digests, manifest digests) that a manifest's JSON names: config, layers, artifact
    blobs and schema 1 fsLayers are blobs; an index's manifests and a referrer's subject are
    manifests. Bytes that are not a JSON object name nothing."""
    try:
        manifest = json.loads(data)
    except ValueError:
        return [], []
    if not isinstance(manifest, dict):
        return [], []
    blobs = (_digests(manifest.get("config")) + _digests(manifest.get("layers")) + _digests(manifest.get("blobs"))
             + _digests(manifest.get("fsLayers"), "blobSum"))
    return blobs, _digests(manifest.get("manifests")) + _digests(manifest.get("subject"))


def _mark_manifests(read: Callable[[str], bytes | None], manifests: list[str]) -> set[str]:
    """The manifests and everything they reference (children of an index too); blocking."""
    referenced: set[str] = set()
    pending = list(manifests)
    while pending:
        current = pending.pop()
        if current in referenced:
            continue
        referenced.add(current)
        data = read(current)
        if data is None:
            continue
        blobs, children = manifest_references(data)
        referenced.update(blobs)
        pending.extend(children)
    return referenced


async def local_refs(store: Store) -> LocalRefs:
    """Walk every local repository: its manifest revisions (tags name revisions) and blob links."""
    refs = LocalRefs()
    manifests: list[str] = []
    for name in await store.repository_names(cached=False):
        repository = store.repository(name)
        manifests += [str(manifest) for manifest in await repository.manifests()]
        for blob in await repository.blob_links():
            refs.links.setdefault(str(blob), []).append(name)
    refs.referenced = await asyncio.to_thread(_mark_manifests, store.read_blob_blocking, manifests)
    return refs
