"""What local (pushed) repositories hold: the blobs their manifests need, and the blobs they link.

GC marks from `referenced`; reconcile decides a re-found file's origin from `linked` (a blob any
local repository links or lists as a manifest was pushed, anything else was cached).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pullcache.cache.store import Store
from pullcache.digests import Digest


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


async def _mark_manifest(store: Store, digest: str, referenced: set[str]) -> None:
    """Add a manifest and everything it references (children of an index too) to referenced."""
    pending = [digest]
    while pending:
        current = pending.pop()
        if current in referenced:
            continue
        referenced.add(current)
        try:
            data = await store.read_small(Digest.parse(current))
        except ValueError:
            continue
        if data is None:
            continue
        blobs, children = manifest_references(data)
        referenced.update(blobs)
        pending.extend(children)


async def local_refs(store: Store) -> LocalRefs:
    """Walk every local repository: its manifest revisions (tags name revisions) and blob links."""
    refs = LocalRefs()
    for name in await store.repository_names(cached=False):
        repository = store.repository(name)
        for manifest in await repository.manifests():
            await _mark_manifest(store, str(manifest), refs.referenced)
        for blob in await repository.blob_links():
            refs.links.setdefault(str(blob), []).append(name)
    return refs
