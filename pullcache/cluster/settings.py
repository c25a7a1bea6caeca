"""What `check-config` and `serve` check and say of the `cluster` section before anything starts.

Replicas on several hosts coordinating through Redis must share the store too: Redis holds only derived
state, and with `storage.backend: filesystem` each host would have a store of its own that the shared index,
leases and fills would take for one. Several processes of one host on one storage.path (`workers: N`, or
two `serve`s) do share a filesystem store, with or without Redis. pullcache cannot see other hosts'
disks, so the line it draws is `cluster.advertise`: an address other hosts reach (not loopback) says the
replicas are on several hosts.
"""
from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from pullcache.cluster.redis_client import redacted
from pullcache.cluster.secret import cluster_secret
from pullcache.config import Config, ConfigError


def _reached_from_other_hosts(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True  # a name: other hosts resolve it


def check_cluster(config: Config) -> list[str]:
    """Raise ConfigError (one line naming the keys) for a cluster that cannot work; the warnings to print."""
    cluster = config.cluster
    if cluster.redis and config.storage.backend == "filesystem" and cluster.advertise \
            and _reached_from_other_hosts(cluster.advertise):
        raise ConfigError(f"cluster.redis: set with storage.backend: filesystem while cluster.advertise "
                          f"({cluster.advertise}) is reached from other hosts (replicas on several hosts need a "
                          "shared backend: storage.backend: s3)")
    cluster_secret(cluster)  # a secret_env naming an unset variable is its one line
    if cluster.redis and cluster.secret_env is None:
        return ["cluster.secret_env: null while cluster.redis is set (each replica then signs /auth/token "
                "tokens with a key of its own, which the others refuse)"]
    return []


def describe_cluster(config: Config) -> str:
    """check-config's line: how processes coordinate, without the Redis password."""
    cluster = config.cluster
    way = f"redis {redacted(cluster.redis)}" if cluster.redis else "embedded (one host, on storage.path)"
    secret = f"secret from {cluster.secret_env} (set)" if cluster.secret_env else "no secret"
    workers = f"{config.workers} worker{'s' if config.workers > 1 else ''}"
    return f"cluster {way}, advertise {cluster.advertise or 'none'}, {secret}, {workers}"
