"""Three replicas behind haproxy (round-robin, health-checked on /readyz), as an operator runs them: one
SeaweedFS bucket, one redis-server, the seeded Distribution upstream reached through a rate-capped path that
counts what crosses it (bench/throttle.py). Real clients: skopeo, dockerd, aiohttp.

The cluster is started once for the module (tests/support/replicas.py); each test uses image names of its
own. The cases that kill a replica or stop Redis come last and leave the cluster as they found it.
"""
from __future__ import annotations

import functools
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from bench.throttle import Throttle
from tests.support.htpasswd import write_htpasswd
from tests.support.images import Image, build_image, push_image
from tests.support.procs import http_status
from tests.support.pullcache_proc import PullcacheProcess
from tests.support.registry_client import RegistryClient
from tests.support.replicas import Cluster, running_cluster
from tests.support.seaweed import SeaweedFS
from tests.support.seed import ADMIN_PASSWORD, ADMIN_USER, Upstream
from tests.support.skopeo import Skopeo

PASSWORDS = {"alice": "alice-password"}
UPSTREAM_RATE = 2_000_000  # bytes/s per upstream connection: a cold layer takes seconds to fill


@pytest.fixture(scope="module")
def throttle(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Throttle]:
    """The replicas' path to the upstream: capped per connection, and the record of every request."""
    path = Throttle(upstream.host, tmp_path_factory.mktemp("throttle"), rate=UPSTREAM_RATE).start()
    yield path
    path.stop()


@pytest.fixture(scope="module")
def cluster(throttle: Throttle, seaweed_server: SeaweedFS,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Three replicas (htpasswd users push, anyone pulls) behind haproxy, upstream through `throttle`."""
    htpasswd = write_htpasswd(tmp_path_factory.mktemp("auth") / "htpasswd", PASSWORDS)
    config = {"auth": {"htpasswd": str(htpasswd)}, "local": {"anonymous_push": False}}
    with running_cluster(tmp_path_factory.mktemp("cluster"), upstream_url=throttle.url,
                         seaweed_server=seaweed_server, config=config) as started:
        yield started


def fresh_image(upstream: Upstream, name: str) -> Image:
    """A small single-platform image pushed to the upstream under a repository no other test uses."""
    image = build_image(f"balancer/{name}-{uuid.uuid4().hex[:8]}", "v1", multi=False)
    push_image(RegistryClient(upstream.url, username=ADMIN_USER, password=ADMIN_PASSWORD), image)
    return image


def pull(skopeo: Skopeo, host: str, image: Image, into: Path) -> None:
    """skopeo copies `image` from `host` (verifying every blob's digest); the manifest is the upstream's."""
    target = into / f"{image.repo.replace('/', '_')}-{uuid.uuid4().hex[:6]}"
    skopeo.copy(f"docker://{host}/{image.ref}", f"dir:{target}")
    assert (target / "manifest.json").read_bytes() == image.top.data


def logged_a_spread_request(replica: PullcacheProcess) -> bool:
    return "GET /v2/balancer/spread-" in replica.log_text()


async def test_the_balancer_sends_requests_on_one_connection_to_every_replica(cluster: Cluster) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        for n in range(3 * len(cluster.replicas)):
            async with session.get(f"{cluster.url}/v2/balancer/spread-{n}/tags/list") as response:
                assert response.status == 404
    for replica in cluster.replicas:
        replica.process.wait_until(functools.partial(logged_a_spread_request, replica), timeout=10,
                                   what="logging a request sent through the balancer")


def test_pulls_go_on_through_the_balancer_with_a_replica_killed(
        cluster: Cluster, upstream: Upstream, skopeo: Skopeo, tmp_path: Path) -> None:
    cached = fresh_image(upstream, "before-kill")
    pull(skopeo, cluster.host, cached, tmp_path)
    victim = cluster.replicas[1]
    victim.kill()
    try:
        assert cluster.balancer is not None
        cluster.balancer.wait_for_state(cluster.server_name(victim), "DOWN")
        pull(skopeo, cluster.host, cached, tmp_path)
        for n in range(3):
            pull(skopeo, cluster.host, fresh_image(upstream, f"after-kill{n}"), tmp_path)
    finally:
        cluster.restart(victim)


def test_pulls_go_on_through_the_balancer_with_redis_stopped_and_after_it_returns(
        cluster: Cluster, upstream: Upstream, skopeo: Skopeo, tmp_path: Path) -> None:
    cached = fresh_image(upstream, "before-redis-stop")
    pull(skopeo, cluster.host, cached, tmp_path)
    cluster.redis.stop()
    try:
        for _ in range(len(cluster.replicas)):
            pull(skopeo, cluster.host, cached, tmp_path)
        assert [http_status(f"{r.url}/readyz", timeout=10) for r in cluster.replicas] == [200] * 3
        assert cluster.balancer is not None
        assert set(cluster.balancer.states().values()) == {"UP"}
    finally:
        cluster.redis.start()
    for n in range(2):
        pull(skopeo, cluster.host, fresh_image(upstream, f"after-redis{n}"), tmp_path)
