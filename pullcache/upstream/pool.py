"""All configured upstreams, one client each, found the ways requests name them.

Routing names an upstream by path prefix (its name), by containerd's `?ns=` (name or alias) or not at
all (the default). Only configured upstreams exist here, so pullcache never contacts a host the
operator did not list.
"""
from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator

from ..config import UpstreamConfig
from .client import UpstreamClient


class Upstreams:
    """One UpstreamClient per configured upstream; start() and close() them together."""

    def __init__(self, configs: Iterable[UpstreamConfig]) -> None:
        self._by_name = {config.name: UpstreamClient(config) for config in configs}
        # Registry host names are case-insensitive, and containerd passes ns through as the user typed it.
        self._by_ns = {alias.lower(): client for client in self._by_name.values()
                       for alias in (client.name, *client.config.aliases)}
        self.default: UpstreamClient | None = next(
            (client for client in self._by_name.values() if client.config.default), None)

    def by_name(self, name: str) -> UpstreamClient | None:
        """The upstream whose name is exactly `name` (the path-prefix route)."""
        return self._by_name.get(name)

    def by_ns(self, ns: str) -> UpstreamClient | None:
        """The upstream whose name or alias is `ns` (containerd's ?ns=), ignoring case."""
        return self._by_ns.get(ns.lower())

    def __iter__(self) -> Iterator[UpstreamClient]:
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)

    async def start(self) -> None:
        for client in self:
            await client.start()

    async def close(self) -> None:
        await asyncio.gather(*(client.close() for client in self))
