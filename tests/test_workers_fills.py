"""A herd on `workers: 2` without Redis: the workers share one store and one port, their fills are coordinated
by the embedded flock lease under storage.path, and their peer requests are signed with the secret the
supervisor makes (no cluster.secret_env). The upstream is the real Distribution behind a front that holds blob
bodies at a gate (tests/support/gated_front.py), so every client of the herd is streaming the fill while it
still runs; which worker answered each client is read from the kernel (tests/test_workers.py)."""
from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import aiohttp

from pullcache.cluster.embedded import LEASE_DIR
from pullcache.digests import Digest
from pullcache.pullthrough.fill_leases import fill_key
from tests.support.gated_front import GatedFront
from tests.support.pullcache_proc import PullcacheProcess, docker_hub_upstream
from tests.test_cluster_fills import blob_results, front, layer  # noqa: F401  (front, layer: fixtures)
from tests.test_workers import accepted_inodes, children, peer_addresses, socket_owners, wait_for

HERD = 14
Factory = Callable[..., PullcacheProcess]


def start_workers(factory: Factory, gated: GatedFront, storage: dict[str, Any]) -> PullcacheProcess:
    """`workers: 2` in front of `gated`, on `storage`; no cluster section: no Redis, no secret_env."""
    proc = factory({"workers": 2, "upstreams": [docker_hub_upstream(gated.url)], "storage": storage})
    wait_for(lambda: len(children(proc.process.pid)) == 2 and len(peer_addresses(proc)) == 2, "two workers")
    return proc


class Pull:
    """One client's GET of a blob on a connection of its own; `port` is the client's end of it, known once
    the response began, and `first_bytes` is set once part of the body arrived."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.port: int | None = None
        self.first_bytes = asyncio.Event()
        self.task = asyncio.create_task(self._get(session, url))

    async def _get(self, session: aiohttp.ClientSession, url: str) -> bytes:
        async with session.get(url) as response:
            assert response.status == 200, await response.text()
            assert response.connection is not None and response.connection.transport is not None
            self.port = response.connection.transport.get_extra_info("sockname")[1]
            body = bytearray()
            async for chunk in response.content.iter_any():
                body += chunk
                self.first_bytes.set()
            return bytes(body)


async def herd(session: aiohttp.ClientSession, url: str, gated: GatedFront) -> list[Pull]:
    """HERD clients at once, each streaming the fill held at the gate (so each still holds its connection)."""
    pulls = [Pull(session, url) for _ in range(HERD)]
    await asyncio.to_thread(gated.held.wait, 60)
    await asyncio.wait_for(asyncio.gather(*(pull.first_bytes.wait() for pull in pulls)), 60)
    return pulls


def answering_workers(proc: PullcacheProcess, pulls: list[Pull]) -> list[int]:
    """The pid of the worker holding each pull's connection (all of them open)."""
    ports = {pull.port for pull in pulls if pull.port is not None}
    inodes = accepted_inodes(proc.port, ports)
    owners = socket_owners(children(proc.process.pid))
    return [owners[inodes[pull.port]] for pull in pulls if pull.port in inodes and inodes[pull.port] in owners]


async def summed_blob_results(proc: PullcacheProcess, session: aiohttp.ClientSession,
                              expected: dict[str, float]) -> dict[str, float]:
    """The host's blob results once they reach `expected`, or as they are after 10 s: each worker writes its
    counts for /metrics twice a second (pullcache/metric_files.py), so the other worker's may come late."""
    deadline = asyncio.get_running_loop().time() + 10
    while (results := await blob_results(proc, session)) != expected and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    return results


def fill_lease_holder(proc: PullcacheProcess, digest: str) -> int:
    """The pid of the worker holding the fill's lease, from the name it wrote into the lease's file."""
    path = proc.data_dir / LEASE_DIR / f"{quote(fill_key('docker.io', Digest.parse(digest)), safe='')}.lock"
    holder = path.read_text().strip()  # <advertised address>/<pid>/<random>
    return int(holder.rsplit("/", 2)[1])


async def test_a_herd_on_two_workers_makes_one_upstream_fetch(
        pullcache_factory: Factory, front: GatedFront, storage_backend: dict[str, Any],  # noqa: F811  (the fixture)
        layer: tuple[str, bytes, str]) -> None:  # noqa: F811  (the fixture)
    proc = start_workers(pullcache_factory, front, storage_backend)
    repo, data, digest = layer
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        pulls = await herd(session, f"{proc.url}/v2/{repo}/blobs/{digest}", front)
        served_by = answering_workers(proc, pulls)
        front.open_gate()
        bodies = await asyncio.gather(*(pull.task for pull in pulls))

        assert len(served_by) == HERD and set(served_by) == children(proc.process.pid), "both workers served"
        assert all(body == data for body in bodies)
        assert front.blob_gets(digest) == 1
        expected = {"miss": 1.0, "coalesced": HERD - 1.0}
        assert await summed_blob_results(proc, session, expected) == expected, "summed over workers"


async def test_the_worker_holding_the_fill_killed_mid_fill_is_replaced_and_the_next_pull_succeeds(
        pullcache_factory: Factory, front: GatedFront, storage_backend: dict[str, Any],  # noqa: F811  (the fixture)
        layer: tuple[str, bytes, str]) -> None:  # noqa: F811  (the fixture)
    proc = start_workers(pullcache_factory, front, storage_backend)
    repo, data, digest = layer
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        pulls = await herd(session, f"{proc.url}/v2/{repo}/blobs/{digest}", front)
        assert set(answering_workers(proc, pulls)) == children(proc.process.pid), "both workers served"
        holder = fill_lease_holder(proc, digest)
        assert holder in children(proc.process.pid)

        os.kill(holder, signal.SIGKILL)
        outcomes = await asyncio.gather(*(pull.task for pull in pulls), return_exceptions=True)

        for outcome in outcomes:
            cut = isinstance(outcome, aiohttp.ClientError) or (isinstance(outcome, bytes) and len(outcome) < len(data))
            assert cut, f"every client must see a cut transfer, never a complete one: {outcome!r}"
        wait_for(lambda: len(children(proc.process.pid)) == 2 and holder not in children(proc.process.pid),
                 "a new worker in place of the killed one")
        proc.wait_for_log(rf"worker \d+ \(pid {holder}\) died \(killed by SIGKILL\); starting another")
        wait_for(lambda: len(peer_addresses(proc)) == 3, "the new worker's start")
        front.open_gate()
        for pid in children(proc.process.pid):  # on each worker's own address: the survivor and the new one
            again = Pull(session, f"{peer_addresses(proc)[pid]}/v2/{repo}/blobs/{digest}")
            assert await again.task == data
    assert front.blob_gets(digest) == 2
