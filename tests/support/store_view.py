"""What a Store holds, read through its interface and not its files, so tests hold for every backend."""
from __future__ import annotations

from pullcache.cache.store import Store


async def store_contents(store: Store) -> dict[str, object]:
    """Every committed blob with its size and last change, every orphaned temp file, and every repository
    (local and cached) with its tags, manifests and blob links: equal snapshots mean nothing was committed,
    linked or removed in between."""
    contents: dict[str, object] = {"blobs": await store.stored_blobs(),
                                   "temps": sorted((temp.name, temp.size) for temp in await store.orphaned_temps())}
    for cached in (False, True):
        for name in await store.repository_names(cached=cached):
            repository = store.repository(name, cached=cached)
            contents[f"{'cached' if cached else 'local'} {name}"] = (
                {tag: str(digest) for tag, digest in (await repository.tags()).items()},
                sorted(str(digest) for digest in await repository.manifests()),
                sorted(str(digest) for digest in await repository.blob_links()))
    return contents


async def lose_index_row(store: Store, digest: str) -> bool:
    """What a crash between a blob's commit and its index write leaves: the blob stored, its index row not.
    Done through the index's interface, not its file, so it holds for any index; False if there was no row."""
    return bool(await store.index.remove_missing([digest], lambda _digest: True))
