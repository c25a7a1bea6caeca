"""Pull-through caching: manifests with ttl and HEAD revalidation, blobs with single-flight streaming fills.

repository.py puts them behind the repository interface every read handler uses (cache/registry.py), and
`pullcache warm` reads through the same, so a warmed cache and a pulled one are filled by one code path.
"""
from pullcache.cache.store import Store
from pullcache.cluster import Coordinator
from pullcache.config import Config
from pullcache.pullthrough.blobs import Blobs, BlobTooLarge
from pullcache.pullthrough.fill_leases import fill_leases
from pullcache.pullthrough.manifest_leases import ManifestLeases
from pullcache.pullthrough.manifests import Manifests
from pullcache.pullthrough.stats import HIT, manifest_hits

__all__ = ["HIT", "BlobTooLarge", "PullThrough", "manifest_hits"]


class PullThrough:
    """The pull-through cache of every upstream.

    Each request's Target carries its upstream client and that upstream's settings (manifest_ttl,
    not_found_ttl, timeouts), so nothing here is per upstream; from `config` it takes storage.max_size,
    the largest blob it will try to cache.
    """

    def __init__(self, store: Store, config: Config, coordinator: Coordinator | None = None) -> None:
        leases = None if coordinator is None else fill_leases(config, coordinator)  # blobs fetched once per cluster
        self.manifests = Manifests(store, leases=None if leases is None or coordinator is None
                                   else ManifestLeases(coordinator, leases.holder))  # and manifests asked once
        self.blobs = Blobs(store, max_size=config.storage.max_size, leases=leases)

    async def close(self) -> None:
        await self.manifests.close()
        await self.blobs.close()


__all__ = ["BlobTooLarge", "Blobs", "Manifests", "PullThrough"]
