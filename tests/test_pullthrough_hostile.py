"""Blobs from upstreams that lie or stall: what they send never reaches a client as a complete answer,
and one upstream's stalled fill never holds up the clients of another."""
from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from tests.fault_upstream import FakeRegistry, Stall
from tests.support.hostile import Proxies, empty_ok, start_proxies
from tests.support_faults import Proxy, blob_path, start_proxy, truncated

LAYER = os.urandom(2 * 1024 * 1024 + 5)
EMPTY = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


@pytest.fixture
async def proxy(aiohttp_client: Any, fake: FakeRegistry, tmp_path: Path) -> Proxy:
    return await start_proxy(aiohttp_client, fake, tmp_path / "data", read_timeout="500ms")


async def test_an_empty_200_for_a_non_empty_digest_is_a_502_naming_the_upstream(proxy: Proxy) -> None:
    digest = proxy.fake.add_blob(LAYER)
    proxy.fake.faults[blob_path(digest)] = empty_ok(digest)
    async with proxy.client.get(blob_path(digest)) as response:
        assert response.status == 502
        error = (await response.json())["errors"][0]
    assert error["code"] == "UNAVAILABLE"
    assert proxy.upstream in error["message"] and proxy.fake.url not in error["message"]
    assert proxy.cached(digest) is None and proxy.temp_files() == []


async def test_the_empty_blob_itself_is_served_and_cached(proxy: Proxy) -> None:
    assert proxy.fake.add_blob(b"") == EMPTY
    async with proxy.client.get(blob_path(EMPTY)) as response:
        assert (response.status, await response.read()) == (200, b"")
        assert response.headers["Docker-Content-Digest"] == EMPTY
    assert proxy.cached(EMPTY) == b""


async def test_headers_without_a_body_byte_are_an_error_not_a_cut_transfer(proxy: Proxy) -> None:
    digest = proxy.fake.add_blob(LAYER)
    proxy.fake.faults[blob_path(digest)] = truncated(LAYER, 0)
    async with proxy.client.get(blob_path(digest)) as response:
        assert response.status == 503  # as any body the upstream cut short, before anything was sent
        assert proxy.upstream in (await response.json())["errors"][0]["message"]
    assert proxy.cached(digest) is None and proxy.temp_files() == []


async def test_a_stalled_upstream_does_not_hold_up_the_same_blob_from_another(
        aiohttp_server: Any, aiohttp_client: Any, tmp_path: Path) -> None:
    stalled, good = [await FakeRegistry().start(aiohttp_server) for _ in range(2)]
    digest = good.add_blob(LAYER)
    stall = Stall(LAYER, 64 * 1024)
    proxies: Proxies = await start_proxies(aiohttp_client, [stalled, good], tmp_path / "data", read_timeout="60s")
    slow_name, good_name = list(proxies.names)
    stalled.faults[f"/v2/team/app/blobs/{digest}"] = stall
    try:
        hanging = await proxies.client.get(proxies.blob_path(slow_name, digest))
        await stall.sent.wait()  # that fill has begun and now hangs
        async with asyncio.timeout(10):
            async with proxies.client.get(proxies.blob_path(good_name, digest)) as response:
                assert (response.status, await response.read()) == (200, LAYER)
        assert not hanging.content.at_eof()  # the stalled fill is still under way, untouched
        hanging.close()
    finally:
        stall.release.set()
    assert len([seen for seen in good.seen if seen.method == "GET"]) == 1
