"""The s3 driver against a real SeaweedFS on loopback: objects, ranges, multipart, listing, presigned
URLs, start-up checks, and an object store that goes away and comes back."""
from __future__ import annotations

import asyncio
import hashlib
import os
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pullcache import metrics
from pullcache.cache.s3 import PART_SIZE, S3Objects, S3Settings, StorageMisconfigured, StorageUnavailable
from tests.support import seaweed
from tests.support.seaweed import SeaweedFS


@pytest.fixture
def s3_server(seaweed_server: SeaweedFS) -> SeaweedFS:
    """The session's SeaweedFS (conftest), bucket `pullcache`."""
    return seaweed_server


def settings(server: SeaweedFS, **extra: object) -> S3Settings:
    values: dict[str, object] = {"bucket": "pullcache", "endpoint": server.url, "access_key": seaweed.ACCESS_KEY,
                                 "secret_key": seaweed.SECRET_KEY, "prefix": f"t{os.urandom(4).hex()}",
                                 "timeout": 5.0, "connect_timeout": 1.0}
    values.update(extra)
    return S3Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def objects(s3_server: SeaweedFS) -> S3Objects:
    """A fresh prefix in the shared bucket: tests do not see each other's objects."""
    return S3Objects(settings(s3_server))


async def read_all(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in chunks])


def big_file(path: Path, size: int) -> bytes:
    data = hashlib.sha256(b"seed").digest() * (size // 32) + b"x" * (size % 32)
    path.write_bytes(data)
    return data


async def test_small_objects_round_trip(objects: S3Objects) -> None:
    assert await objects.get_content("tags/v1") is None
    await objects.put_content("tags/v1", b"sha256:abc")
    assert await objects.get_content("tags/v1") == b"sha256:abc"
    await objects.put_content("tags/v1", b"sha256:def")
    assert await objects.get_content("tags/v1") == b"sha256:def"


async def test_a_large_file_goes_up_in_parts_and_reads_back_by_range(objects: S3Objects, tmp_path: Path) -> None:
    data = big_file(tmp_path / "spool", 2 * PART_SIZE + 12345)
    assert await objects.put_file("blobs/big", tmp_path / "spool") is True
    info = await objects.stat("blobs/big")
    assert info is not None and info.size == len(data)
    assert await read_all(objects.read("blobs/big")) == data
    assert await read_all(objects.read("blobs/big", PART_SIZE - 10, 20)) == data[PART_SIZE - 10:PART_SIZE + 10]
    assert await read_all(objects.read("blobs/big", len(data) - 5)) == data[-5:]


async def test_committing_content_that_is_already_there_is_a_success(objects: S3Objects, tmp_path: Path) -> None:
    (tmp_path / "spool").write_bytes(b"same bytes")
    assert await objects.put_file("blobs/x", tmp_path / "spool") is True
    assert await objects.put_file("blobs/x", tmp_path / "spool") is False
    assert await objects.get_content("blobs/x") == b"same bytes"


async def test_two_writers_of_one_path_both_succeed(objects: S3Objects, tmp_path: Path) -> None:
    data = big_file(tmp_path / "spool", PART_SIZE + 1)
    await asyncio.gather(objects.put_file("blobs/raced", tmp_path / "spool"),
                         objects.put_file("blobs/raced", tmp_path / "spool"))
    assert await read_all(objects.read("blobs/raced")) == data


async def test_reading_a_missing_object_is_file_not_found(objects: S3Objects) -> None:
    with pytest.raises(FileNotFoundError):
        await read_all(objects.read("blobs/absent"))
    assert await objects.stat("blobs/absent") is None


async def test_delete_is_idempotent(objects: S3Objects) -> None:
    await objects.put_content("a", b"1")
    await objects.delete("a")
    await objects.delete("a")
    assert await objects.stat("a") is None


async def test_listing_sees_only_its_own_prefix(s3_server: SeaweedFS, objects: S3Objects) -> None:
    other = S3Objects(settings(s3_server))
    await objects.put_content("blobs/one", b"1")
    await objects.put_content("blobs/deep/two", b"22")
    await objects.put_content("repos/x", b"3")
    await other.put_content("blobs/foreign", b"4")
    listed = {(info.path, info.size) async for info in objects.list("blobs/")}
    assert listed == {("blobs/one", 1), ("blobs/deep/two", 2)}
    assert {info.path async for info in objects.list()} == {"blobs/one", "blobs/deep/two", "repos/x"}


async def test_a_presigned_url_serves_the_object_without_credentials(objects: S3Objects) -> None:
    await objects.put_content("blobs/public", b"layer bytes")
    url = await objects.presign("blobs/public", ttl=60)
    body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
    assert body == b"layer bytes"


async def test_the_start_up_check_passes_on_a_writable_bucket(objects: S3Objects) -> None:
    await objects.check_writable()


async def test_a_missing_bucket_is_one_clear_line(s3_server: SeaweedFS) -> None:
    with pytest.raises(StorageMisconfigured) as refused:
        await S3Objects(settings(s3_server, bucket="no-such-bucket")).check_writable()
    assert "no-such-bucket" in str(refused.value) and "does not exist" in str(refused.value)
    assert "\n" not in str(refused.value)


async def test_wrong_credentials_are_a_configuration_error(s3_server: SeaweedFS) -> None:
    with pytest.raises(StorageMisconfigured):
        await S3Objects(settings(s3_server, secret_key="wrong")).check_writable()


async def test_requests_are_counted_by_operation_and_outcome(objects: S3Objects) -> None:
    def count(op: str, code: str) -> float:
        value = metrics.REGISTRY.get_sample_value("pullcache_storage_requests_total",
                                                  {"backend": "s3", "op": op, "code": code})
        return value or 0.0

    before = count("stat", "not_found"), count("put", "ok")
    await objects.stat("nothing")
    await objects.put_content("something", b"1")
    assert (count("stat", "not_found"), count("put", "ok")) == (before[0] + 1, before[1] + 1)


async def test_an_unreachable_store_is_unavailable_and_heals_when_it_returns(tmp_path: Path) -> None:
    server = SeaweedFS(tmp_path / "weed").start()
    try:
        server.create_bucket("pullcache")
        objects = S3Objects(settings(server))
        await objects.put_content("kept", b"survives")
        server.kill()
        with pytest.raises(StorageUnavailable) as down:
            await objects.get_content("kept")
        assert "\n" not in str(down.value)
        server.start()
        assert await objects.get_content("kept") == b"survives"
    finally:
        server.stop()
