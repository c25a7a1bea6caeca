"""Blob pulls and deletes of local repositories: GET/HEAD, Range, digests, unknown and malformed digests."""
from __future__ import annotations

import hashlib

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from pullcache.api.appkeys import STORE
from pullcache.api.blob_response import ByteRange, parse_range
from pullcache.config import Config
from pullcache.digests import Digest
from tests.registry_api import error_code, push_blob, sha256, store_snapshot

pytest_plugins = ["tests.registry_api"]

DATA = bytes(range(256)) * 40  # 10240 bytes


async def test_get_returns_the_blob_with_its_digest(registry: TestClient) -> None:
    digest = await push_blob(registry, "team/app", DATA)
    response = await registry.get(f"/v2/team/app/blobs/{digest}")
    assert response.status == 200
    assert await response.read() == DATA
    assert response.headers["Docker-Content-Digest"] == digest
    assert response.headers["Content-Length"] == str(len(DATA))
    assert response.headers["Accept-Ranges"] == "bytes"


async def test_head_has_size_and_digest_but_no_body(registry: TestClient) -> None:
    digest = await push_blob(registry, "team/app", DATA)
    response = await registry.head(f"/v2/team/app/blobs/{digest}")
    assert response.status == 200
    assert response.headers["Content-Length"] == str(len(DATA))
    assert response.headers["Docker-Content-Digest"] == digest
    assert await response.read() == b""


async def test_range_returns_206_with_the_slice(registry: TestClient) -> None:
    digest = await push_blob(registry, "team/app", DATA)
    response = await registry.get(f"/v2/team/app/blobs/{digest}", headers={"Range": "bytes=100-199"})
    assert response.status == 206
    assert await response.read() == DATA[100:200]
    assert response.headers["Content-Range"] == f"bytes 100-199/{len(DATA)}"
    assert response.headers["Docker-Content-Digest"] == digest


async def test_open_ended_and_suffix_ranges(registry: TestClient) -> None:
    digest = await push_blob(registry, "team/app", DATA)
    tail = await registry.get(f"/v2/team/app/blobs/{digest}", headers={"Range": "bytes=10000-"})
    assert (tail.status, await tail.read()) == (206, DATA[10000:])
    suffix = await registry.get(f"/v2/team/app/blobs/{digest}", headers={"Range": "bytes=-40"})
    assert (suffix.status, await suffix.read()) == (206, DATA[-40:])
    clamped = await registry.get(f"/v2/team/app/blobs/{digest}", headers={"Range": "bytes=10200-99999"})
    assert clamped.headers["Content-Range"] == f"bytes 10200-10239/{len(DATA)}"


async def test_range_past_the_end_is_416_with_the_size(registry: TestClient) -> None:
    digest = await push_blob(registry, "team/app", DATA)
    response = await registry.get(f"/v2/team/app/blobs/{digest}", headers={"Range": f"bytes={len(DATA)}-"})
    assert response.status == 416
    assert response.headers["Content-Range"] == f"bytes */{len(DATA)}"


async def test_malformed_range_is_ignored(registry: TestClient) -> None:
    digest = await push_blob(registry, "team/app", DATA)
    response = await registry.get(f"/v2/team/app/blobs/{digest}", headers={"Range": "pages=1-2"})
    assert (response.status, await response.read()) == (200, DATA)


async def test_if_none_match_with_the_digest_is_not_modified(registry: TestClient) -> None:
    digest = await push_blob(registry, "team/app", DATA)
    response = await registry.get(f"/v2/team/app/blobs/{digest}", headers={"If-None-Match": f'"{digest}"'})
    assert response.status == 304


async def test_unknown_blob_is_404_blob_unknown(registry: TestClient) -> None:
    await push_blob(registry, "team/app", DATA)
    for method in ("GET", "HEAD"):
        response = await registry.request(method, f"/v2/team/app/blobs/{sha256(b'never pushed')}")
        assert response.status == 404
    response = await registry.get(f"/v2/team/app/blobs/{sha256(b'never pushed')}")
    assert await error_code(response) == "BLOB_UNKNOWN"


async def test_blob_of_another_repository_is_not_served(registry: TestClient) -> None:
    digest = await push_blob(registry, "team/app", DATA)
    response = await registry.get(f"/v2/team/other/blobs/{digest}")
    assert response.status == 404
    assert await error_code(response) == "BLOB_UNKNOWN"


async def test_malformed_and_unsupported_digests_are_400_digest_invalid(registry: TestClient) -> None:
    for bad in ("sha256:abc", "md5:" + "0" * 32, "sha256:" + "g" * 64, "notadigest:"):
        response = await registry.get(f"/v2/team/app/blobs/{bad}")
        assert response.status == 400, bad
        assert await error_code(response) == "DIGEST_INVALID"


async def test_sha512_blob_round_trip(registry: TestClient) -> None:
    digest = "sha512:" + hashlib.sha512(DATA).hexdigest()
    created = await registry.post("/v2/team/app/blobs/uploads/", params={"digest": digest}, data=DATA)
    assert created.status == 201
    response = await registry.get(f"/v2/team/app/blobs/{digest}")
    assert (response.status, await response.read()) == (200, DATA)
    assert response.headers["Docker-Content-Digest"] == digest


async def test_delete_unlinks_the_blob_from_the_repository(registry: TestClient) -> None:
    digest = await push_blob(registry, "team/app", DATA)
    await push_blob(registry, "team/other", DATA)
    deleted = await registry.delete(f"/v2/team/app/blobs/{digest}")
    assert deleted.status == 202
    assert (await registry.get(f"/v2/team/app/blobs/{digest}")).status == 404
    assert (await registry.get(f"/v2/team/other/blobs/{digest}")).status == 200


async def test_delete_of_unknown_blob_is_404_and_changes_nothing(registry: TestClient,
                                                                registry_config: Config) -> None:
    await push_blob(registry, "team/app", DATA)
    before = await store_snapshot(registry)
    response = await registry.delete(f"/v2/team/app/blobs/{sha256(b'other')}")
    assert response.status == 404
    assert await error_code(response) == "BLOB_UNKNOWN"
    assert await store_snapshot(registry) == before


async def test_blob_removed_after_the_link_check_is_blob_unknown(registry: TestClient) -> None:
    """Eviction or GC may remove a blob between a handler's look at the links and the open: no 500, no half
    answer (the blob is removed through the backend, behind the store's back: the links and the index stay)."""
    digest = await push_blob(registry, "team/app", DATA)
    registry.app[STORE].blobs.remove_blocking(Digest.parse(digest))
    response = await registry.get(f"/v2/team/app/blobs/{digest}")
    assert response.status == 404
    assert await error_code(response) == "BLOB_UNKNOWN"
    assert "Docker-Content-Digest" not in response.headers


def test_parse_range_cases() -> None:
    assert parse_range(None, 100) is None
    assert parse_range("bytes=0-9", 100) == ByteRange(0, 9)
    assert parse_range("bytes=90-", 100) == ByteRange(90, 99)
    assert parse_range("bytes=-10", 100) == ByteRange(90, 99)
    assert parse_range("bytes=-1000", 100) == ByteRange(0, 99)
    assert parse_range("bytes=50-5000", 100) == ByteRange(50, 99)
    assert parse_range("bytes=9-3", 100) is None          # invalid: ignored
    assert parse_range("bytes=0-1,5-6", 100) is None      # multi-range: ignored
    with pytest.raises(web.HTTPRequestRangeNotSatisfiable):
        parse_range("bytes=100-", 100)
    with pytest.raises(web.HTTPRequestRangeNotSatisfiable):
        parse_range("bytes=-0", 100)
