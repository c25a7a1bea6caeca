"""Upstream 404s remembered for the upstream's `not_found_ttl`, per upstream repository and reference
(a tag or a digest), so a storm of requests for something missing does not become a storm upstream.

They are kept in the store's state (cluster/shared_state.py): this process's memory, or with replicas on one
bucket Redis, so that a 404 one replica got answers on every other. Manifests and blobs each keep their own.
"""
from __future__ import annotations

import json

from pullcache.cluster.shared_state import ExpiringMap, SharedState
from pullcache.resolver import Target
from pullcache.upstream.errors import UpstreamNotFound

ENTRIES = 10_000  # upstream 404s remembered per upstream


def _remembered(known: UpstreamNotFound) -> UpstreamNotFound:
    return UpstreamNotFound(known.upstream, f"{known.message} (remembered)", known.status)


class SharedMissing:
    def __init__(self, state: SharedState) -> None:
        self._state = state
        self._by_upstream: dict[str, ExpiringMap] = {}

    def _for(self, target: Target) -> ExpiringMap:
        assert target.upstream is not None
        missing = self._by_upstream.get(target.upstream.name)
        if missing is None:
            missing = self._state.expiring(f"missing:{target.upstream.name}", target.upstream.config.not_found_ttl,
                                           ENTRIES)
            self._by_upstream[target.upstream.name] = missing
        return missing

    async def remember(self, target: Target, reference: str, exc: UpstreamNotFound) -> None:
        await self._for(target).put(f"{target.repository}:{reference}",
                                    json.dumps([exc.upstream, exc.message, exc.status]))

    async def raise_if_known(self, target: Target, reference: str) -> None:
        """Raise the remembered 404 of `reference` in target's repository, if its ttl has not run out."""
        known = await self._for(target).get(f"{target.repository}:{reference}")
        if known is not None:
            raise _remembered(UpstreamNotFound(*json.loads(known)))
