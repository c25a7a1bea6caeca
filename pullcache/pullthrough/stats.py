"""How pull-through requests are counted (DESIGN.md "Metrics"), in one place so every path counts alike.

A request answered from the cache is one `hit`; one that started an upstream fetch is one `miss`;
one that joined a fetch already under way is one `coalesced`; a tag served past its ttl because the
upstream failed is one `stale`; a tag whose ttl passed and that upstream confirmed is one `revalidated`.
"""
from __future__ import annotations

from prometheus_client import Counter

from pullcache import metrics
from pullcache.metric_children import child

HIT = "hit"
MISS = "miss"
STALE = "stale"
REVALIDATED = "revalidated"
COALESCED = "coalesced"

MANIFEST = "manifest"
BLOB = "blob"


def count(kind: str, upstream: str, result: str) -> None:
    child(metrics.cache_requests, kind, upstream, result).inc()


def manifest_hits(upstream: str) -> Counter:
    """The counter of an upstream's manifest hits, for a caller that counts many (a replayed hit, api/hot.py)."""
    return child(metrics.cache_requests, MANIFEST, upstream, HIT)
