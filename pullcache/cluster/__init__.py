"""Coordination between pullcache processes: leases and the cluster secret.

One interface (Coordinator) with two implementations: embedded (one host: flock on lease files under
storage.path, so the processes sharing that path agree, and the kernel releases a dead holder's lease at
once) and Redis (`cluster.redis`: replicas on several hosts). Nothing outside this package knows which
one is in use.
"""
from __future__ import annotations

from pullcache.cluster.base import CoordinationUnavailable, Coordinator
from pullcache.cluster.lease import HeldLease, LeaseKeeper, address_of, holder_id
from pullcache.config import Config

__all__ = ["CoordinationUnavailable", "Coordinator", "HeldLease", "LeaseKeeper", "address_of", "holder_id",
           "open_coordinator"]


def open_coordinator(config: Config) -> Coordinator:
    """Redis when `cluster.redis` is set, else the embedded one on storage.path."""
    if config.cluster.redis:
        from pullcache.cluster.redis_backend import RedisCoordinator  # redis is imported only when used
        return RedisCoordinator(config.cluster.redis)
    from pullcache.cluster.embedded import EmbeddedCoordinator
    return EmbeddedCoordinator(config.storage.path)
