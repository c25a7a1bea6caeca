"""PLACEHOLDER (owner: pull-through): manifests with ttl, blobs with single-flight streaming fills."""
from pullcache.cache.store import Store
from pullcache.config import Config


class PullThrough:
    def __init__(self, store: Store, config: Config) -> None:
        self.store = store

    async def close(self) -> None:
        pass
