"""Blobs through pullcache from a (misbehaving) upstream: one fetch per digest streamed to every client,
verified before it is cached; failures cut transfers and cache nothing."""
from __future__ import annotations

import asyncio
import os
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from pullcache import metrics
from pullcache.api.appkeys import PULLTHROUGH, STORE
from pullcache.app import build_app
from pullcache.cache.fill import FillFailed
from pullcache.cache.store import Store
from pullcache.config import UpstreamConfig, build_config
from pullcache.digests import Digest
from pullcache.pullthrough import Blobs
from pullcache.resolver import Target
from pullcache.upstream.client import UpstreamClient
from tests.fault_upstream import FakeRegistry, Stall, answer
from tests.support_faults import (
    AccessLog,
    Gate,
    Held,
    Proxy,
    blob_path,
    bytes_served,
    start_proxy,
    truncated,
    wrong_bytes,
)
from tests.test_auth_tls import self_signed

LAYER = os.urandom(4 * 1024 * 1024 + 123)
FIRST = 256 * 1024


@pytest.fixture
async def proxy(aiohttp_client: Any, fake: FakeRegistry, tmp_path: Path) -> Proxy:
    """A proxy patient with a held upstream: a loaded machine may take seconds between a gate's first bytes
    and the test's release."""
    return await start_proxy(aiohttp_client, fake, tmp_path / "data", read_timeout="10s")


@pytest.fixture
async def impatient_proxy(aiohttp_client: Any, fake: FakeRegistry, tmp_path: Path) -> Proxy:
    """A proxy that gives up on an upstream silent for 500 ms: for the stalled-upstream tests."""
    return await start_proxy(aiohttp_client, fake, tmp_path / "data", read_timeout="500ms")


async def pull(proxy: Proxy, digest: str, **headers: str) -> tuple[int, bytes]:
    async with proxy.client.get(blob_path(digest), headers=headers) as response:
        return response.status, await response.read()


async def test_a_cold_blob_is_fetched_once_cached_and_then_served_from_disk(proxy: Proxy) -> None:
    digest = proxy.fake.add_blob(LAYER)
    assert await pull(proxy, digest) == (200, LAYER)
    assert proxy.cached(digest) == LAYER
    assert await pull(proxy, digest) == (200, LAYER)
    assert proxy.upstream_requests("GET", digest) == 1
    assert (proxy.count("blob", "miss"), proxy.count("blob", "hit")) == (1, 1)


async def test_many_clients_on_one_cold_layer_cause_one_upstream_get(proxy: Proxy) -> None:
    digest = proxy.fake.add_blob(LAYER)
    gate = Gate(LAYER, FIRST)
    proxy.fake.faults[blob_path(digest)] = gate
    responses = [await proxy.client.get(blob_path(digest))]
    await gate.sent.wait()
    responses += await asyncio.gather(*(proxy.client.get(blob_path(digest)) for _ in range(15)))
    # Every client already has headers and the first bytes while the upstream is still sending.
    firsts = await asyncio.gather(*(response.content.readexactly(1000) for response in responses))
    assert firsts == [LAYER[:1000]] * 16
    gate.release.set()
    bodies = await asyncio.gather(*(response.read() for response in responses))
    assert [response.status for response in responses] == [200] * 16
    assert all(first + body == LAYER for first, body in zip(firsts, bodies, strict=True))
    assert proxy.upstream_requests("GET", digest) == 1
    assert (proxy.count("blob", "miss"), proxy.count("blob", "coalesced")) == (1, 15)
    assert proxy.cached(digest) == LAYER


async def test_four_pulls_of_one_uncached_layer_count_one_miss(proxy: Proxy) -> None:
    digest = proxy.fake.add_blob(LAYER)
    results = await asyncio.gather(*(pull(proxy, digest) for _ in range(4)))
    assert results == [(200, LAYER)] * 4
    assert proxy.count("blob", "miss") == 1
    assert proxy.count("blob", "hit") + proxy.count("blob", "coalesced") == 3


async def test_bytes_served_say_where_they_came_from(proxy: Proxy) -> None:
    digest = proxy.fake.add_blob(LAYER)
    upstream_before, cache_before = bytes_served("upstream"), bytes_served("cache")
    with AccessLog() as access:
        await pull(proxy, digest)
        await access.wait_for(1)
        assert bytes_served("upstream") - upstream_before == len(LAYER)
        await pull(proxy, digest)
        await access.wait_for(2)
        assert bytes_served("cache") - cache_before == len(LAYER)


async def test_the_first_byte_arrives_before_the_upstream_finishes(proxy: Proxy) -> None:
    digest = proxy.fake.add_blob(LAYER)
    gate = Gate(LAYER, 10)
    proxy.fake.faults[blob_path(digest)] = gate
    async with proxy.client.get(blob_path(digest)) as response:
        assert await response.content.readexactly(10) == LAYER[:10]
        assert not gate.release.is_set()
        gate.release.set()
        assert await response.read() == LAYER[10:]


async def test_a_fill_streams_whole_over_tls(fake: FakeRegistry, tmp_path: Path, aiohttp_client: Any) -> None:
    """No kernel sendfile under TLS: the growing file goes out through loop.sendfile's fallback."""
    cert, key = self_signed(tmp_path)
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(cert, key)
    config = build_config({"storage": {"path": str(tmp_path / "data")},
                           "upstreams": [{"name": "tls", "url": fake.url, "default": True}]})
    server = TestServer(build_app(config))
    await server.start_server(ssl=server_side)
    client = await aiohttp_client(server, connector=aiohttp.TCPConnector(
        ssl=ssl.create_default_context(cafile=str(cert))))
    digest = fake.add_blob(LAYER)
    gate = Gate(LAYER, FIRST)
    fake.faults[blob_path(digest)] = gate
    async with client.get(blob_path(digest)) as response:
        assert await response.content.readexactly(FIRST - 1) == LAYER[:FIRST - 1]  # before the upstream is done
        gate.release.set()
        assert await response.read() == LAYER[FIRST - 1:]


async def test_a_client_that_disconnects_does_not_stop_the_fill(proxy: Proxy) -> None:
    digest = proxy.fake.add_blob(LAYER)
    gate = Gate(LAYER, FIRST)
    proxy.fake.faults[blob_path(digest)] = gate
    leaving = await proxy.client.get(blob_path(digest))
    await leaving.content.readexactly(100)
    leaving.close()  # drops the connection mid-body
    gate.release.set()
    assert await pull(proxy, digest) == (200, LAYER)  # joined the same fill, or the blob it committed
    assert proxy.upstream_requests("GET", digest) == 1
    assert proxy.cached(digest) == LAYER


async def test_a_range_on_a_miss_is_answered_from_the_fill(proxy: Proxy) -> None:
    digest = proxy.fake.add_blob(LAYER)
    async with proxy.client.get(blob_path(digest), headers={"Range": "bytes=1000-2999"}) as response:
        assert response.status == 206
        assert response.headers["Content-Range"] == f"bytes 1000-2999/{len(LAYER)}"
        assert await response.read() == LAYER[1000:3000]
    assert proxy.upstream_requests("GET", digest) == 1
    assert proxy.cached(digest) == LAYER


async def test_head_on_a_miss_asks_upstream_for_headers_only(proxy: Proxy) -> None:
    digest = proxy.fake.add_blob(LAYER)
    async with proxy.client.head(f"/v2/{proxy.upstream}/team/app/blobs/{digest}") as response:
        assert response.status == 200
        assert response.headers["Content-Length"] == str(len(LAYER))
        assert response.headers["Docker-Content-Digest"] == digest
    assert proxy.upstream_requests("HEAD", digest) == 1
    assert proxy.upstream_requests("GET", digest) == 0
    assert proxy.cached(digest) is None


async def test_head_of_a_bare_name_is_answered_from_the_store_so_a_push_uploads(proxy: Proxy) -> None:
    """`docker push host/team/app` asks HEAD before uploading; while team/app is not local yet the name
    falls back to the default upstream, whose same-named repository must not answer for us."""
    digest = proxy.fake.add_blob(LAYER)
    async with proxy.client.head(blob_path(digest)) as response:
        assert response.status == 404
    assert proxy.upstream_requests("HEAD", digest) == 0
    async with proxy.client.get(blob_path(digest)) as response:  # a pull of the bare name still goes upstream
        assert await response.read() == LAYER
    async with proxy.client.head(blob_path(digest)) as response:
        assert response.status == 200
        assert response.headers["Content-Length"] == str(len(LAYER))


async def test_a_cached_blob_evicted_between_its_stat_and_its_open_is_fetched_again(
        proxy: Proxy, monkeypatch: pytest.MonkeyPatch) -> None:
    digest = proxy.fake.add_blob(LAYER)
    assert await pull(proxy, digest) == (200, LAYER)
    store = proxy.client.app[STORE]
    stat = store.blob_size

    def evicted_right_after_the_stat(wanted: Digest) -> int | None:
        size = stat(wanted)
        store.blobs.remove_blocking(wanted)
        monkeypatch.setattr(store, "blob_size", stat)  # once
        return size
    monkeypatch.setattr(store, "blob_size", evicted_right_after_the_stat)

    assert await pull(proxy, digest) == (200, LAYER)
    assert proxy.upstream_requests("GET", digest) == 2
    assert proxy.cached(digest) == LAYER


async def test_a_blob_refused_for_one_repository_is_still_fetched_for_another_that_joined_it(
        proxy: Proxy) -> None:
    digest = proxy.fake.add_blob(LAYER)
    refused = Held(proxy.fake, f"/v2/team/a/blobs/{digest}",
                   then=answer(404, {"errors": [{"code": "BLOB_UNKNOWN"}]}))
    proxy.fake.faults[refused.path] = refused
    blobs = proxy.client.app[PULLTHROUGH].blobs
    open_blob = blobs.open
    b_asks = asyncio.Event()

    async def open_and_tell(target: Target, wanted: Digest) -> Any:
        if target.repository == "team/b":
            b_asks.set()  # b finds a's fetch running and joins it before anything else can run
        return await open_blob(target, wanted)

    blobs.open = open_and_tell
    pull_a = asyncio.ensure_future(proxy.client.get(f"/v2/team/a/blobs/{digest}"))
    await refused.arrived.wait()
    pull_b = asyncio.ensure_future(proxy.client.get(f"/v2/team/b/blobs/{digest}"))
    await b_asks.wait()
    refused.release.set()

    async with await pull_a as a, await pull_b as b:
        assert a.status == 404
        assert (b.status, await b.read()) == (200, LAYER)
    assert proxy.cached(digest) == LAYER


async def test_a_blob_larger_than_max_size_is_refused_with_507_from_its_headers_alone(
        aiohttp_client: Any, fake: FakeRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = await start_proxy(aiohttp_client, fake, tmp_path / "data", storage={"max_size": "1MiB"})
    digest = fake.add_blob(LAYER)
    gate = Gate(LAYER, FIRST)  # the body stops after its first bytes until released
    fake.faults[blob_path(digest)] = gate
    disk_full_reports: list[int] = []
    monkeypatch.setattr(proxy.client.app[STORE], "report_disk_full", disk_full_reports.append)
    try:
        async with proxy.client.get(blob_path(digest)) as response:
            assert response.status == 507
            assert "storage.max_size" in (await response.json())["errors"][0]["message"]
    finally:
        gate.release.set()
    assert proxy.cached(digest) is None and proxy.temp_files() == []
    assert disk_full_reports == []  # evicting would not make it fit


async def chunked_layer(request: web.Request) -> web.StreamResponse:
    """LAYER with chunked encoding: an upstream that announces no size."""
    response = web.StreamResponse()
    response.enable_chunked_encoding()
    await response.prepare(request)
    for start in range(0, len(LAYER), FIRST):
        await response.write(LAYER[start:start + FIRST])
    return response


async def test_a_blob_of_unannounced_size_is_cut_once_it_passes_max_size(
        aiohttp_client: Any, fake: FakeRegistry, tmp_path: Path) -> None:
    proxy = await start_proxy(aiohttp_client, fake, tmp_path / "data", storage={"max_size": "1MiB"})
    digest = fake.add_blob(LAYER)

    fake.faults[blob_path(digest)] = chunked_layer

    await assert_broken_transfer(proxy, digest)
    assert proxy.cached(digest) is None and proxy.temp_files() == []


async def test_a_blob_of_unannounced_size_reaches_the_client_whole(proxy: Proxy) -> None:
    digest = proxy.fake.add_blob(LAYER)

    proxy.fake.faults[blob_path(digest)] = chunked_layer

    async with proxy.client.get(blob_path(digest)) as response:
        assert response.headers.get("Transfer-Encoding") == "chunked"
        assert (response.status, await response.read()) == (200, LAYER)
    assert proxy.cached(digest) == LAYER


async def test_an_unknown_blob_is_blob_unknown(proxy: Proxy) -> None:
    missing = "sha256:" + "0" * 64
    async with proxy.client.get(blob_path(missing)) as response:
        assert response.status == 404
        assert (await response.json())["errors"][0]["code"] == "BLOB_UNKNOWN"


async def assert_broken_transfer(proxy: Proxy, digest: str) -> None:
    async with proxy.client.get(blob_path(digest)) as response:
        assert response.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()


async def assert_nothing_cached_then_recovers(proxy: Proxy, digest: str) -> None:
    assert proxy.cached(digest) is None
    assert proxy.temp_files() == []
    proxy.fake.faults.clear()
    assert await pull(proxy, digest) == (200, LAYER)
    assert proxy.cached(digest) == LAYER


async def test_a_truncated_body_breaks_the_transfer_and_caches_nothing(proxy: Proxy) -> None:
    digest = proxy.fake.add_blob(LAYER)
    proxy.fake.faults[blob_path(digest)] = truncated(LAYER, len(LAYER) // 2)
    await assert_broken_transfer(proxy, digest)
    await assert_nothing_cached_then_recovers(proxy, digest)


async def test_wrong_bytes_never_reach_a_client_whole(proxy: Proxy) -> None:
    digest = proxy.fake.add_blob(LAYER)
    proxy.fake.faults[blob_path(digest)] = wrong_bytes(LAYER)
    async with proxy.client.get(blob_path(digest)) as response:
        received = b""
        with pytest.raises(aiohttp.ClientPayloadError):
            async for chunk in response.content.iter_any():
                received += chunk
        assert len(received) < len(LAYER)
    await assert_nothing_cached_then_recovers(proxy, digest)


async def test_a_stalled_upstream_times_out_and_caches_nothing(impatient_proxy: Proxy) -> None:
    proxy = impatient_proxy
    digest = proxy.fake.add_blob(LAYER)
    stall = Stall(LAYER, FIRST)
    proxy.fake.faults[blob_path(digest)] = stall
    try:
        await assert_broken_transfer(proxy, digest)  # read_timeout is 500ms
    finally:
        stall.release.set()
    await assert_nothing_cached_then_recovers(proxy, digest)


async def test_an_upstream_429_is_passed_on_with_retry_after(proxy: Proxy) -> None:
    digest = proxy.fake.add_blob(LAYER)
    proxy.fake.faults[blob_path(digest)] = answer(429, {"errors": [{"code": "TOOMANYREQUESTS"}]},
                                                  headers={"Retry-After": "120"})  # past request_timeout: no retry
    async with proxy.client.get(blob_path(digest)) as response:
        assert response.status == 429
        assert response.headers["Retry-After"] == "120"
        assert (await response.json())["errors"][0]["code"] == "TOOMANYREQUESTS"
    await assert_nothing_cached_then_recovers(proxy, digest)


async def test_an_upstream_5xx_is_an_unavailable_answer(proxy: Proxy) -> None:
    digest = proxy.fake.add_blob(LAYER)
    proxy.fake.faults[blob_path(digest)] = answer(500, {"errors": [{"code": "UNKNOWN"}]})
    async with proxy.client.get(blob_path(digest)) as response:
        assert response.status == 503
        body = await response.json()
        assert body["errors"][0]["code"] == "UNAVAILABLE"
        assert proxy.upstream in body["errors"][0]["message"]
    await assert_nothing_cached_then_recovers(proxy, digest)


async def test_clients_waiting_on_a_failing_fill_all_see_it_fail(impatient_proxy: Proxy) -> None:
    proxy = impatient_proxy
    digest = proxy.fake.add_blob(LAYER)
    stall = Stall(LAYER, FIRST)
    proxy.fake.faults[blob_path(digest)] = stall
    try:
        responses = [await proxy.client.get(blob_path(digest))]
        await stall.sent.wait()
        responses += await asyncio.gather(*(proxy.client.get(blob_path(digest)) for _ in range(3)))
        for response in responses:
            with pytest.raises(aiohttp.ClientPayloadError):
                await response.read()
            response.close()
    finally:
        stall.release.set()
    assert proxy.upstream_requests("GET", digest) == 1
    await assert_nothing_cached_then_recovers(proxy, digest)


def inflight() -> float:
    return metrics.REGISTRY.get_sample_value("pullcache_inflight_fetches") or 0.0


async def test_inflight_fetches_count_the_fill_while_it_runs(proxy: Proxy) -> None:
    digest = proxy.fake.add_blob(LAYER)
    gate = Gate(LAYER, FIRST)
    proxy.fake.faults[blob_path(digest)] = gate
    before = inflight()
    async with proxy.client.get(blob_path(digest)) as response:
        await gate.sent.wait()
        assert inflight() == before + 1
        gate.release.set()
        await response.read()
    assert await pull(proxy, digest) == (200, LAYER)  # a hit: the fill is over
    assert inflight() == before


async def test_shutting_down_mid_fill_fails_its_readers_and_leaves_nothing(
        store: Store, fake: FakeRegistry) -> None:
    digest = fake.add_blob(LAYER)
    gate = Gate(LAYER, FIRST)
    fake.faults[blob_path(digest)] = gate
    client = UpstreamClient(UpstreamConfig(name="shutdown", url=fake.url))
    await client.start()
    blobs = Blobs(store, max_size=1024**3)
    try:
        async with await blobs.open(Target("team/app", client, "team/app"), Digest.parse(digest)) as source:
            assert source.reader is not None
            await gate.sent.wait()
            await blobs.close()
            with pytest.raises(FillFailed):
                await source.reader.finished()
    finally:
        gate.release.set()
        await client.close()
    assert store.blob_size(Digest.parse(digest)) is None
    assert os.listdir(store.layout.tmp) == []


async def test_a_cached_blob_is_linked_into_no_repository(proxy: Proxy) -> None:
    """Nothing reads per-repository links of cached blobs, and eviction would leave them behind."""
    digest = proxy.fake.add_blob(LAYER)
    assert await pull(proxy, digest) == (200, LAYER)
    assert proxy.cached(digest) == LAYER
    store = proxy.client.app[STORE]
    links = {name: await store.repository(name, cached=True).blob_links()
             for name in await store.repository_names(cached=True)}
    assert all(found == [] for found in links.values()), links
