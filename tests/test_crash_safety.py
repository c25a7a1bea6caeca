"""Nothing half-written is ever served: SIGKILL a real server in the middle of blob uploads, restart it,
and check that what completed survived, what did not is absent (never partial), and an interrupted
chunked upload can be resumed from the Range the restarted server reports.

It looks at the local spool (temp files, upload folders) under storage.path, and at committed blobs through
the Store."""
from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from tests.registry_api import OCI_MANIFEST, image_manifest, sha256
from tests.support.pullcache_proc import PullcacheProcess

MiB = 1024 * 1024
CONFIG = b'{"architecture":"amd64","os":"linux"}'
LAYER = bytes(range(256)) * 4096                                  # 1 MiB, completed before the crash
CHUNKED = hashlib.sha256(b"chunked").digest() * (12 * MiB // 32)  # 12 MiB, interrupted in its second chunk
MONOLITHIC = hashlib.sha256(b"mono").digest() * (8 * MiB // 32)   # 8 MiB, interrupted mid-POST
FIRST_CHUNK = 4 * MiB


@pytest.fixture
def server(tmp_path: Path) -> Iterator[PullcacheProcess]:
    process = PullcacheProcess(tmp_path / "pullcache", {"log": {"level": "info"}})
    process.start()
    yield process
    process.stop()


async def wait_for(predicate, what: str, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    """Poll the disk for a state the server reaches while a request is still streaming."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def start_streaming(port: int, method: str, path: str, body: bytes, sent: int) -> asyncio.StreamWriter:
    """Send a request with its full Content-Length but only the first `sent` bytes of the body."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n".encode())
    writer.write(body[:sent])
    await writer.drain()
    return writer


def files_under(root: Path) -> list[Path]:
    return [path for path in root.rglob("*") if path.is_file()]


@dataclass(frozen=True)
class Crashed:
    server: PullcacheProcess
    manifest: bytes
    chunked_location: str       # the upload whose second chunk was cut off
    leftover_temp: list[Path]   # what the killed process left in tmp/


@pytest.fixture
async def crashed(server: PullcacheProcess) -> Crashed:
    """Push an image, start a chunked and a monolithic upload, SIGKILL mid-stream, restart."""
    url = server.url
    async with aiohttp.ClientSession() as http:
        for blob in (CONFIG, LAYER):
            pushed = await http.post(f"{url}/v2/team/app/blobs/uploads/", params={"digest": sha256(blob)}, data=blob)
            assert pushed.status == 201
        manifest = image_manifest(CONFIG, [LAYER])
        tagged = await http.put(f"{url}/v2/team/app/manifests/v1", data=manifest,
                                headers={"Content-Type": OCI_MANIFEST})
        assert tagged.status == 201
        started = await http.post(f"{url}/v2/team/app/blobs/uploads/")
        location = started.headers["Location"]
        first = await http.patch(f"{url}{location}", data=CHUNKED[:FIRST_CHUNK],
                                 headers={"Content-Range": f"0-{FIRST_CHUNK - 1}"})
        assert first.status == 202

    upload_data = server.data_dir / "uploads" / location.rsplit("/", 1)[1] / "data"
    tmp_dir = server.data_dir / "tmp"
    second = await start_streaming(server.port, "PATCH", location, CHUNKED[FIRST_CHUNK:], 3 * MiB)
    monolithic = await start_streaming(server.port, "POST",
                                       f"/v2/team/app/blobs/uploads/?digest={sha256(MONOLITHIC)}", MONOLITHIC,
                                       5 * MiB)
    await wait_for(lambda: upload_data.stat().st_size >= FIRST_CHUNK + 2 * MiB, "the second chunk on disk")
    await wait_for(lambda: any(p.stat().st_size >= 2 * MiB for p in files_under(tmp_dir)),
                   "the monolithic upload's temp file")
    server.kill()
    for writer in (second, monolithic):
        writer.close()
    leftover_temp = files_under(tmp_dir)
    await asyncio.to_thread(server.start)
    return Crashed(server, manifest, location, leftover_temp)


async def test_completed_uploads_survive_the_crash(crashed: Crashed) -> None:
    url = crashed.server.url
    async with aiohttp.ClientSession() as http:
        layer = await http.get(f"{url}/v2/team/app/blobs/{sha256(LAYER)}")
        assert (layer.status, await layer.read()) == (200, LAYER)
        pulled = await http.get(f"{url}/v2/team/app/manifests/v1")
        assert (pulled.status, await pulled.read()) == (200, crashed.manifest)


async def test_interrupted_uploads_are_absent_not_partial(crashed: Crashed) -> None:
    async with crashed.server.store() as store:
        stored = await store.stored_blobs()
    assert sha256(LAYER) in stored  # the completed one: stored_blobs names blobs as the digests here do
    assert sha256(CHUNKED) not in stored
    assert sha256(MONOLITHIC) not in stored
    async with aiohttp.ClientSession() as http:
        for blob in (CHUNKED, MONOLITHIC):
            missing = await http.get(f"{crashed.server.url}/v2/team/app/blobs/{sha256(blob)}")
            assert missing.status == 404
            assert (await missing.json())["errors"][0]["code"] == "BLOB_UNKNOWN"


async def test_temp_files_left_by_the_crash_are_never_served(crashed: Crashed) -> None:
    assert crashed.leftover_temp, "the crash should leave the half-written temp file behind"
    async with aiohttp.ClientSession() as http:
        for temp in crashed.leftover_temp:
            served = await http.get(f"{crashed.server.url}/v2/team/app/blobs/sha256:{temp.stem}")
            assert served.status in (400, 404)


async def test_interrupted_chunked_upload_resumes_from_the_reported_range(crashed: Crashed) -> None:
    url, location = crashed.server.url, crashed.chunked_location
    async with aiohttp.ClientSession() as http:
        status = await http.get(f"{url}{location}")
        assert status.status == 204
        received = int(status.headers["Range"].split("-")[1]) + 1
        assert FIRST_CHUNK <= received < len(CHUNKED)
        rest = await http.patch(f"{url}{location}", data=CHUNKED[received:],
                                headers={"Content-Range": f"{received}-{len(CHUNKED) - 1}"})
        assert rest.status == 202
        done = await http.put(f"{url}{location}", params={"digest": sha256(CHUNKED)})
        assert done.status == 201
        resumed = await http.get(f"{url}/v2/team/app/blobs/{sha256(CHUNKED)}")
        assert hashlib.sha256(await resumed.read()).digest() == hashlib.sha256(CHUNKED).digest()
