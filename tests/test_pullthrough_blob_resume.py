"""A blob body cut mid-way is resumed with a Range request: the client gets the whole blob, the bytes
already received are not fetched again, and the digest is still verified over all of it."""
from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from pullcache import metrics
from tests.fault_upstream import FakeRegistry
from tests.support_faults import Proxy, blob_path, start_proxy

LAYER = os.urandom(4 * 1024 * 1024 + 123)
HALF = len(LAYER) // 2
Rest = Callable[[web.Request, int], web.Response]


class CutOnce:
    """Promises the whole blob, sends HALF of it and drops the connection (once `cut_now` is set, if given);
    then answers a `Range: bytes=N-` with `rest`. Counts the body bytes it sent."""

    def __init__(self, rest: Rest, cut_now: asyncio.Event | None = None) -> None:
        self.rest = rest
        self.cut_now = cut_now
        self.ranges: list[str | None] = []
        self.sent = 0

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        self.ranges.append(request.headers.get("Range"))
        if len(self.ranges) == 1:
            response = web.StreamResponse(headers={"Content-Length": str(len(LAYER))})
            await response.prepare(request)
            await response.write(LAYER[:HALF])
            self.sent += HALF
            if self.cut_now is not None:
                await self.cut_now.wait()
            assert request.transport is not None
            request.transport.close()
            return response
        match = re.fullmatch(r"bytes=(\d+)-", request.headers.get("Range", ""))
        answer = self.rest(request, int(match.group(1)) if match else 0)
        assert isinstance(answer.body, bytes)
        self.sent += len(answer.body)
        return answer


def partial(body: bytes) -> Rest:
    def rest(request: web.Request, start: int) -> web.Response:
        return web.Response(status=206, body=body[start:], headers={
            "Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}"})
    return rest


def whole(request: web.Request, start: int) -> web.Response:
    return web.Response(body=LAYER)


def unsatisfiable(request: web.Request, start: int) -> web.Response:
    return web.Response(status=416, body=b"", headers={"Content-Range": f"bytes */{len(LAYER)}"})


@pytest.fixture
async def proxy(aiohttp_client: Any, fake: FakeRegistry, tmp_path: Path) -> Proxy:
    return await start_proxy(aiohttp_client, fake, tmp_path / "data")


def resumes(proxy: Proxy) -> float:
    return metrics.REGISTRY.get_sample_value(
        "pullcache_upstream_retries_total", {"upstream": proxy.upstream, "reason": "resume"}) or 0.0


async def pull(proxy: Proxy, digest: str) -> tuple[int, bytes]:
    async with proxy.client.get(blob_path(digest)) as response:
        return response.status, await response.read()


async def test_a_cut_blob_is_resumed_from_where_it_was_cut(proxy: Proxy) -> None:
    digest = proxy.fake.add_blob(LAYER)
    cut = CutOnce(partial(LAYER), cut_now := asyncio.Event())
    proxy.fake.faults[blob_path(digest)] = cut
    received = b""
    async with proxy.client.get(blob_path(digest)) as response:
        assert response.status == 200
        async for chunk in response.content.iter_any():
            received += chunk
            if len(received) >= HALF:  # all the upstream sent has landed: cut it there
                cut_now.set()
    assert received == LAYER
    assert cut.ranges == [None, f"bytes={HALF}-"]
    assert cut.sent == len(LAYER)  # nothing fetched twice
    assert proxy.cached(digest) == LAYER
    assert resumes(proxy) == 1


async def test_a_resume_answered_with_the_whole_body_skips_what_was_received(proxy: Proxy) -> None:
    digest = proxy.fake.add_blob(LAYER)
    proxy.fake.faults[blob_path(digest)] = CutOnce(whole)
    assert await pull(proxy, digest) == (200, LAYER)
    assert proxy.cached(digest) == LAYER


async def test_a_resume_with_wrong_bytes_fails_verification_and_caches_nothing(proxy: Proxy) -> None:
    digest = proxy.fake.add_blob(LAYER)
    corrupt = bytearray(LAYER)
    corrupt[HALF + 10] ^= 0xFF
    proxy.fake.faults[blob_path(digest)] = CutOnce(partial(bytes(corrupt)))
    async with proxy.client.get(blob_path(digest)) as response:
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()
    assert proxy.cached(digest) is None
    assert proxy.temp_files() == []


async def test_a_refused_resume_fails_the_fill(proxy: Proxy) -> None:
    digest = proxy.fake.add_blob(LAYER)
    cut = CutOnce(unsatisfiable)
    proxy.fake.faults[blob_path(digest)] = cut
    async with proxy.client.get(blob_path(digest)) as response:
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()
    assert len(cut.ranges) == 2
    assert proxy.cached(digest) is None
    assert proxy.temp_files() == []
