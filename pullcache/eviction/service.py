"""PLACEHOLDER (owner: eviction): background LRU bound and periodic GC."""
from pullcache.cache.store import Store
from pullcache.config import Config


class EvictionService:
    def __init__(self, store: Store, config: Config) -> None:
        self.store = store

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass
