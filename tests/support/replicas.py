"""Three pullcache replicas on one SeaweedFS bucket with one redis-server, behind haproxy: a cluster as an
operator runs it (issue "Replicas and workers"), on loopback.

Each replica is a real `python -m pullcache serve` with its own storage.path (as on its own host), the same
bucket prefix, `cluster.redis`, `cluster.advertise` (its own URL) and the same cluster secret. The replicas
start (and stop) in parallel: a start is mostly waiting for the interpreter and the bucket check. The cluster owns its
Redis, so a test may stop it and start it again on the same port.
"""
from __future__ import annotations

import secrets
import shutil
import uuid
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import seaweed
from .haproxy import Haproxy
from .procs import OnLoopback
from .pullcache_proc import PullcacheProcess, deep_merge, docker_hub_upstream
from .redis import RedisServer
from .seaweed import SeaweedFS

SECRET_ENV = "TEST_PULLCACHE_CLUSTER_SECRET"
REPLICAS = 3


class Cluster(OnLoopback):
    """The replicas, their Redis and the balancer; `url`/`host` are the balancer's."""

    def __init__(self, workdir: Path, *, upstream_url: str, seaweed_server: SeaweedFS,
                 config: Mapping[str, Any] | None = None, count: int = REPLICAS) -> None:
        self.workdir = workdir
        self.redis = RedisServer()
        self.secret = secrets.token_hex(32)
        self.prefix = f"t{uuid.uuid4().hex[:12]}"
        storage = {"backend": "s3", "s3": seaweed_server.storage_config(seaweed.BUCKET, prefix=self.prefix)}
        base = {"upstreams": [docker_hub_upstream(upstream_url)], "storage": storage,
                "cluster": {"redis": self.redis.redis_url, "secret_env": SECRET_ENV}}
        self.replicas = [
            PullcacheProcess(workdir / f"replica{n}", deep_merge(base, config or {}), env={SECRET_ENV: self.secret})
            for n in range(count)]
        self.balancer: Haproxy | None = None

    @property
    def port(self) -> int:  # type: ignore[override]
        assert self.balancer is not None, "the cluster was not started"
        return self.balancer.port

    def server_name(self, replica: PullcacheProcess) -> str:
        """The replica's name in haproxy's backend."""
        return f"r{self.replicas.index(replica)}"

    def start(self) -> Cluster:
        self.redis.start()
        with ThreadPoolExecutor(len(self.replicas)) as pool:
            list(pool.map(_start_advertising, self.replicas))
        self.balancer = Haproxy({self.server_name(r): r.host for r in self.replicas}).start()
        return self

    def restart(self, replica: PullcacheProcess) -> None:
        """Start a stopped or killed replica again (same port, same storage.path) and wait until the balancer
        sends it requests again."""
        assert self.balancer is not None
        replica.restart()
        self.balancer.wait_for_state(self.server_name(replica), "UP")

    def stop(self) -> None:
        if self.balancer is not None:
            self.balancer.stop()
        with ThreadPoolExecutor(len(self.replicas)) as pool:
            list(pool.map(PullcacheProcess.stop, self.replicas))
        self.redis.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _start_advertising(replica: PullcacheProcess) -> None:
    """Start `replica` advertising its own URL (restarted if its port was taken and another chosen)."""
    replica.config["cluster"]["advertise"] = replica.url
    replica.start()
    if replica.config["cluster"]["advertise"] != replica.url:
        replica.config["cluster"]["advertise"] = replica.url
        replica.restart()


@contextmanager
def running_cluster(workdir: Path, *, upstream_url: str, seaweed_server: SeaweedFS,
                    config: Mapping[str, Any] | None = None, count: int = REPLICAS) -> Iterator[Cluster]:
    """A started Cluster, stopped (every process by PID, temp dirs removed) when the block ends."""
    cluster = Cluster(workdir, upstream_url=upstream_url, seaweed_server=seaweed_server, config=config,
                      count=count)
    try:
        yield cluster.start()
    finally:
        cluster.stop()
