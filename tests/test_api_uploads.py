"""Blob uploads: monolithic POST, POST then PUT, chunked PATCH (Content-Range), streamed PATCH, status,
cancel, cross-repository mount, and every way an upload can be wrong (each leaves the store unchanged)."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from pullcache.api.appkeys import STORE
from pullcache.cache.writer import BlobWriter
from pullcache.config import Config
from tests.registry_api import blob_files, error_code, push_blob, sha256, sha512, store_snapshot

pytest_plugins = ["tests.registry_api"]

BLOB = b"0123456789abcdef" * 64  # 1024 bytes
DIGEST = sha256(BLOB)
UPLOADS = "/v2/team/app/blobs/uploads/"


async def start(registry: TestClient, name: str = "team/app") -> str:
    response = await registry.post(f"/v2/{name}/blobs/uploads/", headers={"Content-Length": "0"})
    assert response.status == 202
    return response.headers["Location"]


async def patch(registry: TestClient, location: str, chunk: bytes, first: int) -> object:
    return await registry.patch(location, data=chunk, headers={
        "Content-Type": "application/octet-stream", "Content-Range": f"{first}-{first + len(chunk) - 1}"})


async def sessions(registry: TestClient) -> list[str]:
    """The ids of the upload sessions the registry's store holds, read through it."""
    return [folder.upload_id for folder in await registry.app[STORE].uploads.folders()]


async def remove_behind_the_servers_back(registry: TestClient) -> None:
    """Remove the one upload session's storage as `pullcache gc` in another process does: the server's live
    session object is not told."""
    (upload_id,) = await sessions(registry)
    await registry.app[STORE].uploads.remove_folder(upload_id)


# ------------------------------------------------------------------ monolithic

async def test_single_post_with_digest_creates_the_blob(registry: TestClient) -> None:
    response = await registry.post(UPLOADS, params={"digest": DIGEST}, data=BLOB,
                                   headers={"Content-Type": "application/octet-stream"})
    assert response.status == 201
    assert response.headers["Location"] == f"/v2/team/app/blobs/{DIGEST}"
    assert response.headers["Docker-Content-Digest"] == DIGEST
    pulled = await registry.get(response.headers["Location"])
    assert await pulled.read() == BLOB


async def test_single_post_with_wrong_digest_is_digest_invalid_and_stores_nothing(
        registry: TestClient, registry_config: Config) -> None:
    response = await registry.post(UPLOADS, params={"digest": sha256(b"something else")}, data=BLOB)
    assert response.status == 400
    assert await error_code(response) == "DIGEST_INVALID"
    assert await blob_files(registry) == set()
    assert list((Path(registry_config.storage.path) / "tmp").iterdir()) == []


async def test_post_then_put_creates_the_blob(registry: TestClient) -> None:
    started = await registry.post(UPLOADS)
    assert started.status == 202
    location = started.headers["Location"]
    assert location.startswith(UPLOADS)
    assert started.headers["Docker-Upload-UUID"] == location.rsplit("/", 1)[1]
    assert started.headers["Range"] == "0-0"
    done = await registry.put(location, params={"digest": DIGEST}, data=BLOB)
    assert done.status == 201
    assert done.headers["Location"] == f"/v2/team/app/blobs/{DIGEST}"
    assert done.headers["Docker-Content-Digest"] == DIGEST
    assert (await registry.head(f"/v2/team/app/blobs/{DIGEST}")).status == 200


async def test_empty_blob_can_be_pushed(registry: TestClient) -> None:
    digest = await push_blob(registry, "team/app", b"")
    response = await registry.get(f"/v2/team/app/blobs/{digest}")
    assert (response.status, await response.read()) == (200, b"")


async def test_sha512_upload(registry: TestClient) -> None:
    location = await start(registry)
    assert (await patch(registry, location, BLOB, 0)).status == 202
    done = await registry.put(location, params={"digest": sha512(BLOB)})
    assert done.status == 201
    assert done.headers["Docker-Content-Digest"] == sha512(BLOB)


# ------------------------------------------------------------------ chunked

async def test_chunked_upload_in_order(registry: TestClient) -> None:
    location = await start(registry)
    first = await patch(registry, location, BLOB[:400], 0)
    assert first.status == 202
    assert first.headers["Range"] == "0-399"
    assert first.headers["Location"] == location
    second = await patch(registry, first.headers["Location"], BLOB[400:], 400)
    assert second.status == 202
    assert second.headers["Range"] == f"0-{len(BLOB) - 1}"
    done = await registry.put(second.headers["Location"], params={"digest": DIGEST},
                              headers={"Content-Length": "0"})
    assert done.status == 201
    assert await (await registry.get(f"/v2/team/app/blobs/{DIGEST}")).read() == BLOB


async def test_final_chunk_may_come_with_the_put(registry: TestClient) -> None:
    location = await start(registry)
    await patch(registry, location, BLOB[:500], 0)
    done = await registry.put(location, params={"digest": DIGEST}, data=BLOB[500:],
                              headers={"Content-Range": f"500-{len(BLOB) - 1}"})
    assert done.status == 201
    assert await (await registry.get(f"/v2/team/app/blobs/{DIGEST}")).read() == BLOB


async def test_streamed_patch_without_content_range(registry: TestClient) -> None:
    location = await start(registry)

    async def body():
        for i in range(0, len(BLOB), 100):
            yield BLOB[i:i + 100]
    streamed = await registry.patch(location, data=body())
    assert streamed.status == 202
    assert streamed.headers["Range"] == f"0-{len(BLOB) - 1}"
    assert (await registry.put(location, params={"digest": DIGEST})).status == 201


async def test_out_of_order_chunk_is_416(registry: TestClient) -> None:
    location = await start(registry)
    response = await patch(registry, location, BLOB[400:], 400)
    assert response.status == 416
    assert response.headers["Range"] == "0-0"
    assert response.headers["Location"] == location


async def test_repeated_chunk_is_416_and_the_upload_continues(registry: TestClient) -> None:
    location = await start(registry)
    await patch(registry, location, BLOB[:400], 0)
    again = await patch(registry, location, BLOB[:400], 0)
    assert again.status == 416
    status = await registry.get(location)
    assert status.headers["Range"] == "0-399"
    assert (await patch(registry, location, BLOB[400:], 400)).status == 202
    assert (await registry.put(location, params={"digest": DIGEST})).status == 201


async def test_upload_status_is_204_with_range_and_location(registry: TestClient) -> None:
    location = await start(registry)
    await patch(registry, location, BLOB[:10], 0)
    response = await registry.get(location)
    assert response.status == 204
    assert response.headers["Range"] == "0-9"
    assert response.headers["Location"] == location
    assert response.headers["Docker-Upload-UUID"] == location.rsplit("/", 1)[1]


async def test_content_range_whose_length_differs_from_content_length_is_size_invalid(
        registry: TestClient) -> None:
    location = await start(registry)
    response = await registry.patch(location, data=BLOB[:100], headers={"Content-Range": "0-199"})
    assert response.status == 400
    assert await error_code(response) == "SIZE_INVALID"
    assert (await registry.get(location)).headers["Range"] == "0-0"


async def test_streamed_chunk_shorter_than_its_content_range_is_rolled_back(registry: TestClient) -> None:
    location = await start(registry)
    await patch(registry, location, BLOB[:100], 0)

    async def short_body():
        yield BLOB[100:150]
    response = await registry.patch(location, data=short_body(), headers={"Content-Range": "100-199"})
    assert response.status == 400
    assert await error_code(response) == "SIZE_INVALID"
    assert (await registry.get(location)).headers["Range"] == "0-99"
    await patch(registry, location, BLOB[100:], 100)
    assert (await registry.put(location, params={"digest": DIGEST})).status == 201


async def test_malformed_content_range_is_400(registry: TestClient) -> None:
    location = await start(registry)
    response = await registry.patch(location, data=BLOB, headers={"Content-Range": "zero to ten"})
    assert response.status == 400
    assert await error_code(response) == "BLOB_UPLOAD_INVALID"


# ------------------------------------------------------------------ endings

async def test_wrong_digest_on_put_is_digest_invalid_and_ends_the_session(
        registry: TestClient) -> None:
    location = await start(registry)
    await patch(registry, location, BLOB, 0)
    response = await registry.put(location, params={"digest": sha256(b"not it")})
    assert response.status == 400
    assert await error_code(response) == "DIGEST_INVALID"
    assert await blob_files(registry) == set()
    assert await sessions(registry) == []
    gone = await registry.get(location)
    assert gone.status == 404
    assert await error_code(gone) == "BLOB_UPLOAD_UNKNOWN"


async def test_put_without_digest_keeps_the_session(registry: TestClient) -> None:
    location = await start(registry)
    response = await registry.put(location, data=BLOB)
    assert response.status == 400
    assert await error_code(response) == "DIGEST_INVALID"
    assert (await registry.get(location)).status == 204


async def test_put_with_malformed_digest_is_digest_invalid(registry: TestClient) -> None:
    location = await start(registry)
    response = await registry.put(location, params={"digest": "sha256:short"}, data=BLOB)
    assert response.status == 400
    assert await error_code(response) == "DIGEST_INVALID"


async def test_cancel_removes_the_session_and_its_bytes(registry: TestClient) -> None:
    location = await start(registry)
    await patch(registry, location, BLOB, 0)
    assert (await registry.delete(location)).status == 204
    assert await sessions(registry) == []
    assert (await registry.get(location)).status == 404
    assert (await registry.put(location, params={"digest": DIGEST})).status == 404


async def test_unknown_session_is_404_blob_upload_unknown_for_every_method(registry: TestClient) -> None:
    location = UPLOADS + "3f1c0a8e-0000-4000-8000-000000000000"
    for method in ("GET", "PATCH", "PUT", "DELETE"):
        response = await registry.request(method, location, params={"digest": DIGEST})
        assert response.status == 404, method
        assert await error_code(response) == "BLOB_UPLOAD_UNKNOWN"
    response = await registry.patch(UPLOADS + "..%2f..%2fetc", data=b"x")
    assert response.status == 404


async def test_a_chunk_for_a_session_removed_on_disk_is_blob_upload_unknown(
        registry: TestClient) -> None:
    location = await start(registry)
    await patch(registry, location, BLOB[:100], 0)
    await remove_behind_the_servers_back(registry)

    response = await patch(registry, location, BLOB[100:], 100)

    assert (response.status, await error_code(response)) == (404, "BLOB_UPLOAD_UNKNOWN")


async def test_a_chunk_whose_session_is_removed_while_it_streams_is_blob_upload_unknown(
        registry: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    location = await start(registry)
    uploads, writing = registry.server.app[STORE].uploads, asyncio.Event()
    real_writer = uploads.writer

    async def writer(*args: Any) -> BlobWriter:
        opened = await real_writer(*args)
        writing.set()
        return opened
    monkeypatch.setattr(uploads, "writer", writer)

    async def body() -> AsyncIterator[bytes]:
        yield BLOB[:100]
        await writing.wait()  # the server is appending this chunk
        await remove_behind_the_servers_back(registry)
        yield BLOB[100:]
    response = await registry.patch(location, data=body())

    assert (response.status, await error_code(response)) == (404, "BLOB_UPLOAD_UNKNOWN")


async def test_closing_a_session_removed_on_disk_is_blob_upload_unknown(
        registry: TestClient) -> None:
    location = await start(registry)
    await patch(registry, location, BLOB, 0)
    await remove_behind_the_servers_back(registry)

    response = await registry.put(location, params={"digest": DIGEST})

    assert (response.status, await error_code(response)) == (404, "BLOB_UPLOAD_UNKNOWN")


async def test_session_of_another_repository_is_unknown(registry: TestClient) -> None:
    location = await start(registry, "team/app")
    other = location.replace("/team/app/", "/team/other/")
    assert (await registry.patch(other, data=BLOB)).status == 404


async def test_completed_upload_cannot_be_reused(registry: TestClient) -> None:
    location = await start(registry)
    assert (await registry.put(location, params={"digest": DIGEST}, data=BLOB)).status == 201
    assert (await patch(registry, location, BLOB, 0)).status == 404


# ------------------------------------------------------------------ mount

async def test_mount_from_a_repository_holding_the_blob_is_201(registry: TestClient) -> None:
    await push_blob(registry, "team/base", BLOB)
    response = await registry.post("/v2/team/app/blobs/uploads/", params={"mount": DIGEST, "from": "team/base"})
    assert response.status == 201
    assert response.headers["Location"] == f"/v2/team/app/blobs/{DIGEST}"
    assert response.headers["Docker-Content-Digest"] == DIGEST
    assert await (await registry.get(f"/v2/team/app/blobs/{DIGEST}")).read() == BLOB


async def test_mount_of_a_blob_the_source_lacks_starts_an_upload(registry: TestClient) -> None:
    await push_blob(registry, "team/elsewhere", BLOB)
    response = await registry.post("/v2/team/app/blobs/uploads/", params={"mount": DIGEST, "from": "team/base"})
    assert response.status == 202
    assert response.headers["Location"].startswith("/v2/team/app/blobs/uploads/")
    assert (await registry.get(f"/v2/team/app/blobs/{DIGEST}")).status == 404


async def test_mount_of_unknown_blob_without_from_starts_an_upload(registry: TestClient) -> None:
    response = await registry.post("/v2/team/app/blobs/uploads/", params={"mount": DIGEST})
    assert response.status == 202
    assert response.headers["Location"].startswith("/v2/team/app/blobs/uploads/")


async def test_mount_without_from_finds_a_blob_the_registry_holds(registry: TestClient) -> None:
    await push_blob(registry, "team/base", BLOB)
    response = await registry.post("/v2/team/app/blobs/uploads/", params={"mount": DIGEST})
    assert response.status == 201


async def test_mount_with_malformed_digest_is_400(registry: TestClient) -> None:
    response = await registry.post("/v2/team/app/blobs/uploads/", params={"mount": "sha256:nope", "from": "a/b"})
    assert response.status == 400
    assert await error_code(response) == "DIGEST_INVALID"


async def test_post_to_a_session_url_is_unsupported(registry: TestClient) -> None:
    location = await start(registry)
    response = await registry.post(location)
    assert response.status == 405
    assert await error_code(response) == "UNSUPPORTED"


async def test_failed_uploads_leave_the_store_unchanged(registry: TestClient) -> None:
    await push_blob(registry, "team/app", b"already here")
    before = await store_snapshot(registry)
    location = await start(registry)
    await registry.patch(location, data=BLOB[:10], headers={"Content-Range": "5-14"})
    await registry.put(location, params={"digest": sha256(b"wrong")}, data=BLOB)
    await registry.post(UPLOADS, params={"digest": sha256(b"wrong")}, data=BLOB)
    assert await store_snapshot(registry) == before
