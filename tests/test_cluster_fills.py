"""One upstream fetch across processes that share a store, streamed to all of them: real pullcache processes
on loopback, two on one storage.path (the embedded coordinator, flock) or two on one SeaweedFS bucket with
redis-server, in front of real Distribution behind a front that holds blob bodies at a gate
(tests/support/gated_front.py), so a fill is still running for as long as a test needs it to."""
from __future__ import annotations

import asyncio
import hashlib
import os
import re
import secrets
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pullcache.cluster.secret import PEER_KEY_LABEL, derive_key
from pullcache.cluster.signing import RequestSigner
from pullcache.digests import Digest
from pullcache.pullthrough.fill_leases import LEASE_TTL
from pullcache.pullthrough.peer_client import fill_path
from tests.support import seaweed
from tests.support.gated_front import GatedFront
from tests.support.pullcache_proc import PullcacheProcess, deep_merge, docker_hub_upstream
from tests.support.redis import RedisServer
from tests.support.registry_client import RegistryClient
from tests.support.seaweed import SeaweedFS
from tests.support.seed import ADMIN_PASSWORD, ADMIN_USER, Upstream

SECRET_ENV = "TEST_PULLCACHE_CLUSTER_SECRET"
LAYER_SIZE = 2 * 1024 * 1024 + 17
Factory = Callable[..., PullcacheProcess]


@pytest.fixture
def secret() -> str:
    return secrets.token_hex(32)


@pytest.fixture
def front(upstream: Upstream) -> Iterator[GatedFront]:
    gated = GatedFront(upstream.url, upstream.token_server.realm).start()
    yield gated
    gated.open_gate()  # a handler still waiting must not hold the front's shutdown
    gated.stop()


def push_layer(upstream: Upstream) -> tuple[str, bytes, str]:
    """(repository, bytes, digest) of a random layer pushed to the upstream under a repository of its own."""
    repo = f"fills/t{uuid.uuid4().hex[:10]}"
    data = os.urandom(LAYER_SIZE)
    digest = RegistryClient(upstream.url, username=ADMIN_USER, password=ADMIN_PASSWORD).upload_blob(repo, data)
    assert digest == "sha256:" + hashlib.sha256(data).hexdigest()
    return repo, data, digest


@pytest.fixture
def layer(upstream: Upstream) -> tuple[str, bytes, str]:
    return push_layer(upstream)


def start_peer(factory: Factory, front: GatedFront, secret: str, config: dict[str, Any]) -> PullcacheProcess:
    """A pullcache process advertising its own URL, with the shared cluster secret, in front of `front`."""
    base = {"upstreams": [docker_hub_upstream(front.url)], "cluster": {"secret_env": SECRET_ENV}}
    return factory(deep_merge(base, config), env={SECRET_ENV: secret}, start=False).start_advertising_itself()


def replicas(request: pytest.FixtureRequest, factory: Factory, front: GatedFront, secret: str,
             tmp_path: Path) -> tuple[PullcacheProcess, PullcacheProcess]:
    """Two replicas on one bucket prefix on SeaweedFS with Redis, each its own storage.path (as on two hosts)."""
    server: SeaweedFS = request.getfixturevalue("seaweed_server")
    redis: RedisServer = request.getfixturevalue("redis_server")
    storage = {"backend": "s3", "s3": server.storage_config(seaweed.BUCKET, prefix=f"t{uuid.uuid4().hex[:12]}")}
    started = []
    for n in range(2):
        config = {"storage": {**storage, "path": str(tmp_path / f"replica{n}")}, "cluster": {"redis": redis.redis_url}}
        started.append(start_peer(factory, front, secret, config))
    return started[0], started[1]


@pytest.fixture(params=["filesystem", "s3+redis"])
def peers(request: pytest.FixtureRequest, pullcache_factory: Factory, front: GatedFront, secret: str,
          tmp_path: Path) -> tuple[PullcacheProcess, PullcacheProcess]:
    """Two processes sharing one store: one storage.path (embedded coordination), or replicas()."""
    if request.param == "filesystem":
        shared = {"storage": {"path": str(tmp_path / "shared")}}
        return tuple(start_peer(pullcache_factory, front, secret, shared) for _ in range(2))  # type: ignore[return-value]
    return replicas(request, pullcache_factory, front, secret, tmp_path)


class Pull:
    """One client's GET of the layer; `first_bytes` is set once part of the body arrived."""

    def __init__(self, session: aiohttp.ClientSession, proc: PullcacheProcess, repo: str, digest: str) -> None:
        self.first_bytes = asyncio.Event()
        self.task = asyncio.create_task(self._get(session, f"{proc.url}/v2/{repo}/blobs/{digest}"))

    async def _get(self, session: aiohttp.ClientSession, url: str) -> bytes:
        async with session.get(url) as response:
            assert response.status == 200, await response.text()
            body = bytearray()
            async for chunk in response.content.iter_any():
                body += chunk
                self.first_bytes.set()
            return bytes(body)


async def wait_for_first_bytes(pulls: list[Pull]) -> None:
    await asyncio.wait_for(asyncio.gather(*(pull.first_bytes.wait() for pull in pulls)), 60)


async def blob_results(proc: PullcacheProcess, session: aiohttp.ClientSession) -> dict[str, float]:
    """pullcache_cache_requests_total for blobs of docker.io, by result, from the process's /metrics."""
    async with session.get(f"{proc.url}/metrics") as response:
        text = await response.text()
    pattern = r'^pullcache_cache_requests_total\{kind="blob",result="(\w+)",upstream="docker.io"\} (\S+)$'
    return {m[1]: float(m[2]) for m in re.finditer(pattern, text, re.MULTILINE)}


async def test_a_herd_over_two_processes_makes_one_upstream_fetch(
        peers: tuple[PullcacheProcess, PullcacheProcess], front: GatedFront, layer: tuple[str, bytes, str]) -> None:
    a, b = peers
    repo, data, digest = layer
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        on_a = [Pull(session, a, repo, digest) for _ in range(4)]
        await asyncio.to_thread(front.held.wait, 60)  # a's fetch runs, held at the gate
        on_b = [Pull(session, b, repo, digest) for _ in range(4)]
        await wait_for_first_bytes(on_a + on_b)  # every client streams the fill that is still running
        front.open_gate()
        bodies = await asyncio.gather(*(pull.task for pull in on_a + on_b))
        assert all(body == data for body in bodies)
        assert front.blob_gets(digest) == 1
        assert await blob_results(a, session) == {"miss": 1.0, "coalesced": 3.0}
        assert await blob_results(b, session) == {"coalesced": 4.0}, "cross-process joins are coalesced"
        again = Pull(session, b, repo, digest)  # committed by a: b serves it from the store
        assert await again.task == data
        assert (await blob_results(b, session))["hit"] == 1.0
    assert front.blob_gets(digest) == 1


async def test_the_holder_killed_mid_fill_cuts_its_followers_and_the_next_pull_fetches_again(
        pullcache_factory: Factory, front: GatedFront, secret: str, tmp_path: Path,
        layer: tuple[str, bytes, str]) -> None:
    shared = {"storage": {"path": str(tmp_path / "shared")}}
    a = start_peer(pullcache_factory, front, secret, shared)
    b = start_peer(pullcache_factory, front, secret, shared)
    repo, data, digest = layer
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        on_a = Pull(session, a, repo, digest)
        await asyncio.to_thread(front.held.wait, 60)
        on_b = [Pull(session, b, repo, digest) for _ in range(3)]
        await wait_for_first_bytes(on_b)
        a.kill()  # SIGKILL mid-fill: its lease goes with it (the kernel drops the flock)
        for outcome in await asyncio.gather(*(pull.task for pull in on_b), return_exceptions=True):
            assert isinstance(outcome, aiohttp.ClientError) or len(outcome) < len(data), \
                "a follower's client must see a cut transfer, never a complete one"
        on_a.task.cancel()
        await asyncio.gather(on_a.task, return_exceptions=True)
        front.open_gate()
        assert await Pull(session, b, repo, digest).task == data
    assert front.blob_gets(digest) == 2


async def test_a_holder_that_hangs_mid_fill_is_cut_off_once_its_redis_lease_lapses(
        request: pytest.FixtureRequest, pullcache_factory: Factory, front: GatedFront, secret: str,
        tmp_path: Path, layer: tuple[str, bytes, str]) -> None:
    """SIGSTOP, not SIGKILL: its connections stay open and only its lease, no longer renewed, says it is gone."""
    a, b = replicas(request, pullcache_factory, front, secret, tmp_path)
    repo, data, digest = layer
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        on_a = Pull(session, a, repo, digest)
        await asyncio.to_thread(front.held.wait, 60)
        on_b = [Pull(session, b, repo, digest) for _ in range(2)]
        await wait_for_first_bytes(on_b)
        os.kill(a.process.pid, signal.SIGSTOP)
        try:
            outcomes = await asyncio.wait_for(asyncio.gather(*(pull.task for pull in on_b), return_exceptions=True),
                                              LEASE_TTL * 4)
            for outcome in outcomes:
                assert isinstance(outcome, aiohttp.ClientError) or len(outcome) < len(data)
            front.open_gate()
            assert await Pull(session, b, repo, digest).task == data, "the next pull fetches it again"
        finally:
            os.kill(a.process.pid, signal.SIGCONT)
        assert await on_a.task == data
    assert front.blob_gets(digest) == 2


async def test_the_peer_endpoint_refuses_requests_not_signed_with_the_cluster_secret(
        pullcache_factory: Factory, front: GatedFront, secret: str, layer: tuple[str, bytes, str]) -> None:
    a = start_peer(pullcache_factory, front, secret, {})
    repo, data, digest = layer
    path = fill_path("docker.io", Digest.parse(digest))
    good = RequestSigner(derive_key(secret.encode(), PEER_KEY_LABEL))
    wrong = RequestSigner(derive_key(secrets.token_hex(32).encode(), PEER_KEY_LABEL))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        pull = Pull(session, a, repo, digest)
        await asyncio.to_thread(front.held.wait, 60)  # a fill runs there: something to refuse
        async with session.get(a.url + path) as response:
            assert response.status == 401
        async with session.get(a.url + path, headers=wrong.headers("GET", path)) as response:
            assert response.status == 403
        async with session.get(a.url + path, headers=good.headers("GET", path + "x")) as response:
            assert response.status == 403, "a signature is good for its own path only"
        async with session.get(a.url + path, headers=good.headers("GET", path)) as response:
            assert response.status == 200
            front.open_gate()
            assert await response.read() == data
        assert await pull.task == data


async def test_without_redis_fills_are_local_and_said_once_and_coordination_resumes(
        pullcache_factory: Factory, front: GatedFront, secret: str, upstream: Upstream) -> None:
    redis = RedisServer().start()
    try:
        redis.stop()  # down from the start: every lease attempt fails
        front.open_gate()
        proc = start_peer(pullcache_factory, front, secret, {"cluster": {"redis": redis.redis_url}})
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
            for _ in range(2):
                repo, data, digest = push_layer(upstream)
                assert await Pull(session, proc, repo, digest).task == data, "never fail the request"
            assert proc.wait_for_log("coordination unavailable").count("coordination unavailable") == 1, \
                "said once per outage"
            redis.start()
            repo, data, digest = push_layer(upstream)
            assert await Pull(session, proc, repo, digest).task == data
            proc.wait_for_log("coordination is back")
    finally:
        redis.close()
