"""Blob bodies go out by sendfile on worker threads: every concurrent client gets exact bytes, and a
client that leaves mid-transfer costs the server nothing lasting."""
from __future__ import annotations

import asyncio
import os

import aiohttp
from aiohttp.test_utils import TestClient

from tests.registry_api import push_blob

pytest_plugins = ["tests.registry_api"]

BLOB = os.urandom(24 * 1024 * 1024 + 7)  # bigger than any socket buffer: many bursts per transfer


async def download(client: TestClient, digest: str, **headers: str) -> bytes:
    async with client.get(f"/v2/team/app/blobs/{digest}", headers=headers) as response:
        assert response.status in (200, 206)
        return await response.read()


async def test_concurrent_downloads_all_receive_the_exact_bytes(registry: TestClient) -> None:
    digest = await push_blob(registry, "team/app", BLOB)
    bodies = await asyncio.gather(*(download(registry, digest) for _ in range(8)))
    assert all(body == BLOB for body in bodies)


async def test_a_range_far_into_the_file_is_sent_from_its_offset(registry: TestClient) -> None:
    digest = await push_blob(registry, "team/app", BLOB)
    start = 20 * 1024 * 1024 + 3
    assert await download(registry, digest, Range=f"bytes={start}-") == BLOB[start:]


async def test_a_client_leaving_mid_transfer_does_not_disturb_the_next_one(registry: TestClient) -> None:
    digest = await push_blob(registry, "team/app", BLOB)
    url = registry.make_url(f"/v2/team/app/blobs/{digest}")
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as response:
            assert len(await response.content.readexactly(64 * 1024)) == 64 * 1024
            response.close()  # hang up with most of the body unsent
    assert await download(registry, digest) == BLOB
