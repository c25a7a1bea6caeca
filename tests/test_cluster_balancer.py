"""Three replicas behind haproxy (round-robin, health-checked on /readyz), as an operator runs them: one
SeaweedFS bucket, one redis-server, the seeded Distribution upstream reached through a rate-capped path that
counts what crosses it (bench/throttle.py). Real clients: skopeo, dockerd, aiohttp.

The cluster is started once for the module (tests/support/replicas.py); each test uses image names of its
own. The cases that kill a replica or stop Redis come last and leave the cluster as they found it.
"""
from __future__ import annotations

import asyncio
import functools
import os
import statistics
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from bench.throttle import Throttle
from pullcache.cache.bucket_files import NAMES_REFRESH
from pullcache.resolver import LOCAL_CHECK_SECONDS
from tests.support.dockerd import Dockerd
from tests.support.htpasswd import write_htpasswd
from tests.support.images import DOCKER_MANIFEST, Image, build_image, push_image
from tests.support.procs import http_status
from tests.support.pullcache_proc import PullcacheProcess
from tests.support.registry_client import RegistryClient
from tests.support.replicas import Cluster, running_cluster
from tests.support.seaweed import SeaweedFS
from tests.support.seed import ADMIN_PASSWORD, ADMIN_USER, Upstream
from tests.support.skopeo import Skopeo

PASSWORDS = {"alice": "alice-password"}
UPSTREAM_RATE = 2_000_000  # bytes/s per upstream connection: a cold layer takes seconds to fill
HERD_LAYER_SIZE = 6 * 1024 * 1024 + 7
HERD = 15
TAG_PULLS = 300
TAG_CONCURRENCY = 16
MANIFEST_ACCEPT = ", ".join([
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
])


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


def upstream_manifest_requests(throttle: Throttle, repo: str) -> list[str]:
    """Manifest requests for `repo` that reached the upstream ("GET /v2/... 200"), token challenges (401) left
    out."""
    return [f"{r.method} {r.path} {r.status}" for r in throttle.requests()
            if r.path.startswith(f"/v2/{repo}/manifests/") and r.status != 401]


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


def push_layer(upstream: Upstream, name: str) -> tuple[str, bytes, str]:
    """(repository, bytes, digest) of a random layer of HERD_LAYER_SIZE pushed to the upstream under a repository
    of its own: cold everywhere, and seconds to fill over UPSTREAM_RATE."""
    repo = f"balancer/{name}-{uuid.uuid4().hex[:8]}"
    data = os.urandom(HERD_LAYER_SIZE)
    digest = RegistryClient(upstream.url, username=ADMIN_USER, password=ADMIN_PASSWORD).upload_blob(repo, data)
    return repo, data, digest


async def get_blob(session: aiohttp.ClientSession, url: str,
                   first_bytes: asyncio.Event | None = None) -> tuple[float, bytes]:
    """GET a blob: (seconds until its first body bytes came, the body); `first_bytes` is set when they came."""
    started = time.monotonic()
    waited: float | None = None
    body = bytearray()
    async with session.get(url) as response:
        assert response.status == 200, await response.text()
        async for chunk in response.content.iter_any():
            if waited is None:
                waited = time.monotonic() - started
                if first_bytes is not None:
                    first_bytes.set()
            body += chunk
    assert waited is not None, "an empty body"
    return waited, bytes(body)


async def test_300_pulls_of_one_tag_through_the_balancer_make_at_most_2_upstream_requests(
        cluster: Cluster, upstream: Upstream, throttle: Throttle) -> None:
    image = fresh_image(upstream, "tag")
    url = f"{cluster.url}/v2/{image.repo}/manifests/{image.tag}"
    gate = asyncio.Semaphore(TAG_CONCURRENCY)

    async def get(session: aiohttp.ClientSession) -> tuple[int, bytes]:
        async with gate, session.get(url, headers={"Accept": MANIFEST_ACCEPT}) as response:
            return response.status, await response.read()

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        answers = await asyncio.gather(*(get(session) for _ in range(TAG_PULLS)))
    assert all(answer == (200, image.top.data) for answer in answers), {a[0] for a in answers}
    requests = upstream_manifest_requests(throttle, image.repo)
    assert len(requests) <= 2, requests


async def test_a_herd_on_a_cold_layer_through_the_balancer_makes_one_upstream_get(
        cluster: Cluster, upstream: Upstream, throttle: Throttle) -> None:
    repo, data, digest = push_layer(upstream, "herd")
    url = f"{cluster.url}/v2/{repo}/blobs/{digest}"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=180)) as session:
        results = await asyncio.gather(*(get_blob(session, url) for _ in range(HERD)))
    assert all(body == data for _, body in results), "every copy is the layer, byte for byte"
    assert throttle.blob_gets(digest) == 1, [f"{r.method} {r.path} {r.status}" for r in throttle.requests()
                                              if r.path.endswith(digest)]
    first_bytes = sorted(seconds for seconds, _ in results)
    assert statistics.median(first_bytes) < 1.0, first_bytes


def manifest_served(replica: PullcacheProcess, name: str, tag: str) -> bool:
    """`replica` answers a GET of the manifest `name:tag` with 200."""
    request = urllib.request.Request(f"{replica.url}/v2/{name}/manifests/{tag}", headers={"Accept": DOCKER_MANIFEST})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status == 200
    except urllib.error.HTTPError:
        return False


def test_docker_logs_in_pushes_and_pulls_through_the_balancer(
        cluster: Cluster, upstream: Upstream, dockerd_factory: Callable[..., Dockerd]) -> None:
    daemon = dockerd_factory()
    source = f"{upstream.host}/library/single:v1"
    daemon.docker("pull", source)
    ref = f"{cluster.host}/team/app-{uuid.uuid4().hex[:8]}:v1"
    daemon.docker("tag", source, ref)
    daemon.docker("login", "-u", "alice", "--password-stdin", cluster.host, input=PASSWORDS["alice"] + "\n")
    daemon.docker("push", ref)
    daemon.docker("rmi", ref)
    daemon.docker("pull", ref)
    pulled = daemon.docker("image", "inspect", "--format", "{{.Id}}", ref).stdout.strip()
    assert pulled == daemon.docker("image", "inspect", "--format", "{{.Id}}", source).stdout.strip()


def test_each_replica_asked_directly_serves_an_image_pushed_to_one(
        cluster: Cluster, upstream: Upstream, skopeo: Skopeo, tmp_path: Path) -> None:
    """With a default upstream a bare name is routed as local once the replica knows it exists: at once on the
    replica that was pushed to, on the others within the documented refresh of the shared names (the set read
    again every NAMES_REFRESH, each answer kept LOCAL_CHECK_SECONDS)."""
    source = upstream["library/single:v1"]
    name = f"team/shared-{uuid.uuid4().hex[:8]}"
    skopeo.copy(f"docker://{upstream.host}/{source.ref}", f"docker://{cluster.replicas[0].host}/{name}:v1",
                dest_creds=f"alice:{PASSWORDS['alice']}")
    pushed = Image(name, "v1", source.index, source.platforms)
    assert manifest_served(cluster.replicas[0], name, "v1"), "the replica pushed to serves it at once"
    for replica in cluster.replicas:
        replica.process.wait_until(functools.partial(manifest_served, replica, name, "v1"),
                                   timeout=NAMES_REFRESH + LOCAL_CHECK_SECONDS + 2, what=f"serving {name}:v1")
        pull(skopeo, replica.host, pushed, tmp_path)


async def test_the_fill_holder_killed_mid_fill_sends_no_wrong_bytes_and_the_next_pull_succeeds(
        cluster: Cluster, upstream: Upstream) -> None:
    repo, data, digest = push_layer(upstream, "holder")
    url = f"{cluster.url}/v2/{repo}/blobs/{digest}"
    started = [asyncio.Event() for _ in range(2 * len(cluster.replicas))]
    redis = aioredis.from_url(cluster.redis.redis_url, decode_responses=True)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        pulls = [asyncio.create_task(get_blob(session, url, event)) for event in started]
        await asyncio.wait_for(asyncio.gather(*(event.wait() for event in started)), 60)  # all stream the fill
        holder = await redis.get(f"pullcache:lease:fill/docker.io/{digest}")
        await redis.aclose()
        assert isinstance(holder, str), "a replica holds the fill's lease"
        victim = next(r for r in cluster.replicas if holder.startswith(r.url + "/"))
        victim.kill()
        try:
            for outcome in await asyncio.gather(*pulls, return_exceptions=True):
                assert isinstance(outcome, aiohttp.ClientError) or (isinstance(outcome, tuple)
                                                                     and len(outcome[1]) < len(data)), \
                    "a client of a fill whose holder died sees a cut transfer, never a complete one"
            assert cluster.balancer is not None
            cluster.balancer.wait_for_state(cluster.server_name(victim), "DOWN")
            assert (await get_blob(session, url))[1] == data, "the next pull fetches it again"
        finally:
            cluster.restart(victim)


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
