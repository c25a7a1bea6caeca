"""Upstream 404s remembered for the upstream's `not_found_ttl`, per upstream repository and reference
(a tag or a digest), so a storm of requests for something missing does not become a storm upstream.

Shared by manifests and blobs: each keeps its own Missing, and the shape of the memory is the same.
"""
from __future__ import annotations

from cachetools import TTLCache

from pullcache.resolver import Target
from pullcache.upstream.errors import UpstreamNotFound

ENTRIES = 10_000  # upstream 404s remembered per upstream


class Missing:
    def __init__(self) -> None:
        self._by_upstream: dict[str, TTLCache[tuple[str, str], UpstreamNotFound]] = {}

    def _for(self, target: Target) -> TTLCache[tuple[str, str], UpstreamNotFound]:
        assert target.upstream is not None
        missing = self._by_upstream.get(target.upstream.name)
        if missing is None:
            missing = TTLCache(ENTRIES, target.upstream.config.not_found_ttl)
            self._by_upstream[target.upstream.name] = missing
        return missing

    def remember(self, target: Target, reference: str, exc: UpstreamNotFound) -> None:
        self._for(target)[(target.repository, reference)] = exc

    def raise_if_known(self, target: Target, reference: str) -> None:
        """Raise the remembered 404 of `reference` in target's repository, if its ttl has not run out."""
        known = self._for(target).get((target.repository, reference))
        if known is not None:
            raise UpstreamNotFound(known.upstream, f"{known.message} (remembered)", known.status)
