"""PLACEHOLDER (owner: upstream client): one client per configured upstream."""
from typing import Any

from pullcache.config import UpstreamConfig


class Upstreams:
    def __init__(self, configs: "tuple[UpstreamConfig, ...]") -> None:
        self.configs = configs

    def by_name(self, name: str) -> Any:
        return None

    def by_ns(self, ns: str) -> Any:
        return None

    @property
    def default(self) -> Any:
        return None

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass
