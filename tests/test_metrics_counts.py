"""Exact counts through the real pull-through path: a fresh pullcache process in front of the harness's
token-protected Distribution, read back from its own /metrics. A fresh process starts from zero, so
every figure below is absolute."""
from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest

from tests.support.images import Blob
from tests.support.pullcache_proc import PullcacheProcess
from tests.support.registry_client import RegistryClient
from tests.support.seed import Upstream
from tests.test_metrics_endpoint import Scrape

MANIFEST_TYPES = ", ".join([
    "application/vnd.oci.image.index.v1+json", "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json"])
SETTLE_TIMEOUT = 10.0


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


@pytest.fixture
def proc(pullcache_factory: Callable[..., PullcacheProcess]) -> PullcacheProcess:
    return pullcache_factory()


async def scrape(http: aiohttp.ClientSession, proc: PullcacheProcess) -> Scrape:
    async with http.get(f"{proc.url}/metrics") as response:
        assert response.status == 200
        return Scrape(await response.text())


async def get_blob(http: aiohttp.ClientSession, proc: PullcacheProcess, repository: str, blob: Blob,
                   **headers: str) -> bytes:
    async with http.get(f"{proc.url}/v2/{repository}/blobs/{blob.digest}", headers=headers) as response:
        assert response.status in (200, 206), await response.text()
        return await response.read()


def alpine_layer(upstream: Upstream) -> Blob:
    return upstream["library/alpine:latest"].platforms["linux/amd64"].layers[0]


async def settled(http: aiohttp.ClientSession, proc: PullcacheProcess, done: Callable[[Scrape], bool]) -> Scrape:
    """The first scrape for which done() holds: gauges follow commits that finish after the response."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        result = await scrape(http, proc)
        if done(result) or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.05)


def blob_results(result: Scrape) -> dict[str, float]:
    return {sample.labels["result"]: sample.value for sample in result.samples("pullcache_cache_requests_total")
            if sample.labels["kind"] == "blob"}


def upstream_exchanges(result: Scrape) -> dict[tuple[str, str, str], float]:
    return {(s.labels["upstream"], s.labels["method"], s.labels["code"]): s.value
            for s in result.samples("pullcache_upstream_requests_total")}


async def test_four_pulls_of_one_uncached_layer_are_one_miss_and_three_hits(
        http: aiohttp.ClientSession, proc: PullcacheProcess, upstream: Upstream) -> None:
    layer = alpine_layer(upstream)
    for _ in range(4):
        assert await get_blob(http, proc, "library/alpine", layer) == layer.data
    result = await scrape(http, proc)
    assert blob_results(result) == {"miss": 1, "hit": 3}
    assert result.value("pullcache_cache_requests_total", kind="blob", upstream="docker.io") == 4
    assert result.value("pullcache_http_requests_total", route="blob", method="GET", code="200") == 4
    assert result.value("pullcache_http_request_duration_seconds_count", route="blob") == 4


async def test_bytes_served_are_split_by_source(
        http: aiohttp.ClientSession, proc: PullcacheProcess, upstream: Upstream) -> None:
    layer = alpine_layer(upstream)
    for _ in range(4):
        await get_blob(http, proc, "library/alpine", layer)
    result = await scrape(http, proc)
    assert result.value("pullcache_bytes_served_total", source="upstream") == layer.size
    assert result.value("pullcache_bytes_served_total", source="cache") == 3 * layer.size
    assert result.value("pullcache_bytes_served_total", source="local") == 0


async def test_four_concurrent_pulls_start_one_fetch_the_rest_hit_or_coalesce(
        http: aiohttp.ClientSession, proc: PullcacheProcess, upstream: Upstream) -> None:
    layer = upstream["library/large:v1"].platforms["linux/amd64"].layers[0]
    bodies = await asyncio.gather(*(get_blob(http, proc, "library/large", layer) for _ in range(4)))
    assert {len(body) for body in bodies} == {layer.size}
    result = await scrape(http, proc)
    results = blob_results(result)
    assert results.get("miss") == 1
    assert results.get("hit", 0) + results.get("coalesced", 0) == 3
    assert set(results) <= {"miss", "hit", "coalesced"}
    served = result.value("pullcache_bytes_served_total", source="cache") + \
        result.value("pullcache_bytes_served_total", source="upstream")
    assert served == 4 * layer.size
    assert result.value("pullcache_bytes_served_total", source="upstream") >= layer.size


async def test_upstream_requests_carry_upstream_method_and_status_and_hits_send_none(
        http: aiohttp.ClientSession, proc: PullcacheProcess, upstream: Upstream) -> None:
    layer = alpine_layer(upstream)
    await get_blob(http, proc, "library/alpine", layer)
    after_miss = upstream_exchanges(await scrape(http, proc))
    # the token dance of a first pull: challenged (401), token fetched and blob fetched (200 each)
    assert after_miss == {("docker.io", "GET", "401"): 1, ("docker.io", "GET", "200"): 2}
    for _ in range(3):
        await get_blob(http, proc, "library/alpine", layer)
    result = await scrape(http, proc)
    assert upstream_exchanges(result) == after_miss
    assert result.value("pullcache_upstream_request_duration_seconds_count", upstream="docker.io") == 3


async def test_manifest_by_tag_is_a_miss_then_a_hit_within_its_ttl(
        http: aiohttp.ClientSession, proc: PullcacheProcess, upstream: Upstream) -> None:
    image = upstream["library/alpine:latest"]
    for _ in range(2):
        async with http.get(f"{proc.url}/v2/library/alpine/manifests/latest",
                            headers={"Accept": MANIFEST_TYPES}) as response:
            assert response.status == 200
            assert response.headers["Docker-Content-Digest"] == image.digest
            body = await response.read()
    result = await scrape(http, proc)
    assert {s.labels["result"]: s.value for s in result.samples("pullcache_cache_requests_total")
            if s.labels["kind"] == "manifest"} == {"miss": 1, "hit": 1}
    assert result.value("pullcache_bytes_served_total", source="upstream") == len(body)
    assert result.value("pullcache_bytes_served_total", source="cache") == len(body)
    assert result.value("pullcache_http_requests_total", route="manifest", method="GET", code="200") == 2


async def test_local_bytes_count_what_was_sent_range_and_head_included(
        http: aiohttp.ClientSession, proc: PullcacheProcess) -> None:
    data = os.urandom(300 * 1024)
    digest = await asyncio.to_thread(RegistryClient(proc.url).upload_blob, "team/app", data)
    url = f"{proc.url}/v2/team/app/blobs/{digest}"
    async with http.get(url) as response:
        assert await response.read() == data
    async with http.get(url, headers={"Range": "bytes=100-1123"}) as response:
        assert response.status == 206 and await response.read() == data[100:1124]
    async with http.head(url) as response:
        assert response.status == 200
    result = await scrape(http, proc)
    assert result.value("pullcache_bytes_served_total", source="local") == len(data) + 1024
    assert result.value("pullcache_bytes_served_total", source="cache") == 0
    assert result.value("pullcache_bytes_served_total", source="upstream") == 0
    assert result.value("pullcache_http_requests_total", route="blob", method="HEAD", code="200") == 1
    assert result.value("pullcache_http_requests_total", route="upload", method="PUT", code="201") == 1


async def test_store_gauges_match_the_disk(
        http: aiohttp.ClientSession, proc: PullcacheProcess, upstream: Upstream) -> None:
    layer = alpine_layer(upstream)
    pushed = os.urandom(200 * 1024)
    await get_blob(http, proc, "library/alpine", layer)
    await asyncio.to_thread(RegistryClient(proc.url).upload_blob, "team/app", pushed)

    def gauges(result: Scrape) -> dict[str, tuple[float, float]]:
        return {origin: (result.value("pullcache_store_bytes", origin=origin),
                         result.value("pullcache_store_blobs", origin=origin)) for origin in ("cached", "pushed")}

    expected = {"cached": (layer.size, 1), "pushed": (len(pushed), 1)}
    result = await settled(http, proc, lambda r: gauges(r) == expected)
    assert gauges(result) == expected
    async with proc.store() as store:
        stored = await store.stored_blobs()
    assert sum(size for size, _ in stored.values()) == layer.size + len(pushed)
    assert len(stored) == 2
    assert result.value("pullcache_store_max_bytes") > 0
