"""The Redis a store's shared state uses (cluster/shared_state.py, cache/bucket_files.py): its client, the
prefix of its keys, and the one log of its outages."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import redis.asyncio as aioredis

from pullcache.cluster.redis_client import redis_client

log = logging.getLogger("pullcache.cluster")


class RedisTrouble:
    """Says once that Redis cannot be reached and once that it answers again, however many callers notice:
    each falls back on the bucket (or on asking the upstream) and the log does not repeat per request."""

    def __init__(self) -> None:
        self.down = False

    def failed(self, exc: Exception) -> None:
        if not self.down:
            self.down = True
            log.warning("cluster.redis unreachable (%s): repository files are read from the bucket, and pending "
                        "tags and upstream 404s are not shared, until it answers", exc)

    def answered(self) -> None:
        if self.down:
            self.down = False
            log.info("cluster.redis answers again: replicas share repository files and pull-through state")


@dataclass(frozen=True)
class SharedRedis:
    """What one store's shared state uses of Redis: the client, the prefix of the store's keys (clusters on
    other buckets may share the Redis) and the one log of its outages."""

    client: aioredis.Redis
    namespace: str
    trouble: RedisTrouble


def shared_redis(url: str, namespace: str) -> SharedRedis:
    return SharedRedis(redis_client(url), namespace, RedisTrouble())
