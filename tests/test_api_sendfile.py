"""Blob bodies go out by sendfile on worker threads: every concurrent client gets exact bytes, and a
client that leaves mid-transfer costs the server nothing lasting.

The registry tests run on both backends: on S3 a cached blob is sent from the local cache
(storage.s3.local_cache) by the same sendfile. The reused-fd test is of `send_file` alone, on files of its own.
"""
from __future__ import annotations

import asyncio
import os
import socket
import threading
from pathlib import Path
from typing import BinaryIO

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from pullcache.api.sendfile import send_file
from pullcache.cache import backends, s3_backend
from tests.registry_api import push_blob

pytest_plugins = ["tests.registry_api"]

BLOB = os.urandom(24 * 1024 * 1024 + 7)  # bigger than any socket buffer: many bursts per transfer
SPARSE_SIZE = 4 * 1024**3


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


async def test_a_blob_file_found_short_cuts_the_transfer_and_is_logged_as_damage(
        registry: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A file that loses bytes after it was opened (a damaged store): the client must see a broken transfer
    at once, not a response that ends short on a connection kept open until its own timeout."""
    digest = await push_blob(registry, "team/app", BLOB)
    real_open = backends.open_file

    def open_then_truncated(path: Path) -> tuple[BinaryIO, int] | None:
        opened = real_open(path)
        if opened is not None:
            os.truncate(path, opened[1] // 2)
        return opened
    monkeypatch.setattr(backends, "open_file", open_then_truncated)
    monkeypatch.setattr(s3_backend, "open_file", open_then_truncated)
    with pytest.raises(aiohttp.ClientPayloadError):
        async with asyncio.timeout(30):
            await download(registry, digest)
    assert f"blob {digest} is damaged" in caplog.text


async def test_a_cancelled_transfer_never_writes_to_a_reused_fd(tmp_path: Path) -> None:
    """Cancelled twice (a shutdown that gave up waiting), the transfer returns while a burst still runs;
    the transport then closes its socket and its number is handed to new files: none of them may get a
    byte of the blob."""
    blob = tmp_path / "sparse-blob"
    with open(blob, "wb") as handle:
        handle.truncate(SPARSE_SIZE)  # long bursts to a fast reader, no disk used
    loop = asyncio.get_running_loop()
    connected: asyncio.Future[asyncio.Transport] = loop.create_future()

    class Accept(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            connected.set_result(transport)

    server = await loop.create_server(Accept, "127.0.0.1", 0)
    client = socket.create_connection(server.sockets[0].getsockname())
    receiving = threading.Event()
    reader = threading.Thread(target=drain, args=(client, receiving))
    reader.start()
    victims: list[BinaryIO] = []
    file = open(blob, "rb")
    try:
        transport = await connected
        transfer = asyncio.ensure_future(send_file(transport, file.fileno(), 0, SPARSE_SIZE))
        await asyncio.to_thread(receiving.wait)
        transfer.cancel()
        await asyncio.sleep(0)
        transfer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await transfer
        transport.close()  # as aiohttp closes the connection of a cancelled handler
        while transport.get_extra_info("socket").fileno() != -1:
            await asyncio.sleep(0)
        victims = [open(tmp_path / f"victim{i}", "wb") for i in range(16)]  # the freed numbers go to these
        await asyncio.sleep(0.2)  # a burst writing to a reused number would have written by now
        assert [os.fstat(victim.fileno()).st_size for victim in victims] == [0] * 16
    finally:
        client.shutdown(socket.SHUT_RDWR)
        reader.join()
        client.close()
        for victim in victims:
            victim.close()
        file.close()
        server.close()
        await server.wait_closed()


def drain(client: socket.socket, receiving: threading.Event) -> None:
    while client.recv(1024 * 1024):
        receiving.set()
