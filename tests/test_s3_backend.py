"""The S3 backend against a real SeaweedFS: what goes into the bucket, a new instance on an empty storage.path,
eviction and GC in the bucket, redirect mode with a real client, an object store killed and started again,
and commits that fail or race. The API suite itself runs on both backends (tests/registry_api.py).

The S3 backend's own test: it reads the bucket's objects and keys directly."""
from __future__ import annotations

import asyncio
import io
import os
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestClient

from pullcache.app import build_app
from pullcache.cache import s3_backend
from pullcache.cache.configured import store_for
from pullcache.cache.errors import StorageMisconfigured, StorageUnavailable
from pullcache.cache.index import CACHED, PUSHED
from pullcache.cache.store import Store
from pullcache.cache.writer import DigestMismatch
from pullcache.config import Config, build_config
from pullcache.digests import Digest
from pullcache.eviction.gc import collect_garbage
from pullcache.eviction.lru import evict_to
from pullcache.metrics import REGISTRY
from pullcache.warm import run_warm_command
from tests.registry_api import error_code, push_blob, push_image, sha256
from tests.support import seaweed
from tests.support.pullcache_proc import PullcacheProcess, docker_hub_upstream
from tests.support.seaweed import SeaweedFS
from tests.support.seed import Upstream
from tests.support.skopeo import Skopeo

pytest_plugins = ["tests.registry_api"]

DEAD_UPSTREAM = "http://127.0.0.1:9"  # discard port: nothing listens, so any upstream request fails


def s3_storage(server: SeaweedFS, tmp_path: Path, name: str, prefix: str, **s3: Any) -> dict[str, Any]:
    return {"path": str(tmp_path / name), "backend": "s3",
            "s3": server.storage_config(seaweed.BUCKET, prefix=prefix, timeout="3s", **s3)}


@pytest.fixture
def prefix() -> str:
    return f"t{os.urandom(6).hex()}"


@pytest.fixture
def s3_config(seaweed_server: SeaweedFS, tmp_path: Path, prefix: str) -> Config:
    return build_config({"storage": s3_storage(seaweed_server, tmp_path, "data", prefix),
                         "local": {"anonymous_push": True}})


@pytest.fixture
async def s3_store(s3_config: Config) -> AsyncIterator[Store]:
    store = store_for(s3_config.storage)
    await store.open()
    yield store
    await store.close()


async def one_chunk(data: bytes) -> AsyncIterable[bytes]:
    yield data


def bucket(config: Config, *tops: str) -> dict[str, bytes]:
    s3 = config.storage.s3
    assert s3.endpoint is not None
    return seaweed.bucket_objects(s3.endpoint, s3.bucket, s3.prefix, tops)


def blob_files(config: Config) -> set[str]:
    """Digests of every blob object in the bucket (this backend's own layout: blobs/<alg>/<xx>/<hex>)."""
    return {f"{Path(key).parent.parent.name}:{Path(key).name}" for key in bucket(config, "blobs")}


async def test_a_push_keeps_blobs_manifests_tags_and_links_in_the_bucket(aiohttp_client: Any,
                                                                          s3_config: Config) -> None:
    client = await aiohttp_client(build_app(s3_config))
    image = await push_image(client, "team/app", "v1")
    stored = bucket(s3_config, "blobs", "repositories")
    manifest = Digest.parse(image.digest)
    assert stored[f"blobs/sha256/{manifest.hex[:2]}/{manifest.hex}"] == image.manifest
    assert f"repositories/team/app/_manifests/revisions/sha256/{manifest.hex}" in stored
    assert b'"digest": "' + image.digest.encode() in stored["repositories/team/app/_manifests/tags/v1"]
    layer = Digest.parse(sha256(image.layers[0]))
    assert f"repositories/team/app/_layers/sha256/{layer.hex}" in stored


async def test_a_new_instance_on_an_empty_path_serves_everything_without_asking_upstream(
        aiohttp_client: Any, seaweed_server: SeaweedFS, upstream: Upstream, tmp_path: Path, prefix: str) -> None:
    """The bucket is the truth: storage.path (index, links, local cache) is rebuilt from it."""
    alpine = upstream.seed.alpine
    amd64 = alpine.platforms["linux/amd64"]
    first = await aiohttp_client(build_app(build_config({
        "storage": s3_storage(seaweed_server, tmp_path, "first", prefix), "local": {"anonymous_push": True},
        "upstreams": [docker_hub_upstream(upstream.url)]})))
    pushed = await push_image(first, "team/app", "v1")
    cached = {f"/v2/docker.io/library/alpine/manifests/{alpine.digest}": alpine.top.data,
              f"/v2/docker.io/library/alpine/manifests/{amd64.manifest.digest}": amd64.manifest.data}
    for blob in (amd64.config, *amd64.layers):
        cached[f"/v2/docker.io/library/alpine/blobs/{blob.digest}"] = await (
            await first.get(f"/v2/docker.io/library/alpine/blobs/{blob.digest}")).read()
    for path in cached:
        assert (await first.get(path)).status == 200
    tag = await first.get("/v2/docker.io/library/alpine/manifests/latest")
    assert tag.status == 200
    await first.close()

    second = await aiohttp_client(build_app(build_config({
        "storage": s3_storage(seaweed_server, tmp_path, "second", prefix),
        "upstreams": [docker_hub_upstream(DEAD_UPSTREAM)]})))
    for path, data in cached.items():
        response = await second.get(path)
        assert response.status == 200, path
        assert await response.read() == data
    assert await (await second.get("/v2/docker.io/library/alpine/manifests/latest")).read() == alpine.top.data
    assert await (await second.get(f"/v2/team/app/manifests/{pushed.tag}")).read() == pushed.manifest
    for blob in (pushed.config, *pushed.layers):
        assert await (await second.get(f"/v2/team/app/blobs/{sha256(blob)}")).read() == blob
    assert (await (await second.get("/v2/team/app/tags/list")).json())["tags"] == ["v1"]


async def test_eviction_under_max_size_removes_cached_blobs_from_the_bucket_and_never_pushed_ones(
        s3_store: Store, s3_config: Config) -> None:
    cached = [bytes([n]) * 100_000 for n in range(3)]
    digests = [await s3_store.write_blob(one_chunk(data), None, origin=CACHED) for data in cached]
    pushed = await s3_store.push_blob("team/app", one_chunk(b"p" * 100_000), Digest.of(b"p" * 100_000))
    s3_store.note_access(digests[2])  # the newest use: it stays
    await evict_to(s3_store, 150_000)
    assert blob_files(s3_config) == {str(digests[2]), str(pushed)}
    assert s3_store.totals()[CACHED].bytes == 100_000
    assert s3_store.totals()[PUSHED].blobs == 1
    assert await s3_store.open_blob(digests[0]) is None


async def test_gc_removes_deleted_content_from_the_bucket(aiohttp_client: Any, s3_config: Config) -> None:
    client = await aiohttp_client(build_app(s3_config))
    kept = await push_image(client, "team/app", "v1", seed="kept")
    gone = await push_image(client, "team/app", "v2", seed="gone")
    assert (await client.delete(f"/v2/team/app/manifests/{gone.digest}")).status == 202
    store = store_for(s3_config.storage)  # `pullcache gc` beside the server, with its own storage.path
    await store.open()
    try:
        report = await collect_garbage(store, s3_config.gc, dry_run=False, now=10**10)
    finally:
        await store.close()
    assert report.reclaimed > 0
    stored = blob_files(s3_config)
    assert kept.digest in stored and sha256(kept.layers[0]) in stored
    assert gone.digest not in stored and sha256(gone.layers[0]) not in stored


def test_redirect_mode_answers_307_and_a_real_client_pulls_from_the_bucket(
        pullcache_factory: Callable[..., PullcacheProcess], seaweed_server: SeaweedFS, skopeo: Skopeo,
        upstream: Upstream, tmp_path: Path, prefix: str) -> None:
    storage = s3_storage(seaweed_server, tmp_path, "unused", prefix, redirect=True, redirect_ttl="1m")
    del storage["path"]
    server = pullcache_factory({"storage": storage})
    alpine = upstream.seed.alpine
    reference = f"docker://{server.host}/docker.io/{alpine.ref}"
    skopeo.copy(reference, f"dir:{tmp_path / 'first'}")  # a miss: streamed from the fill
    skopeo.copy(reference, f"dir:{tmp_path / 'second'}")  # cached: every blob is a 307 to the bucket
    for blob in (alpine.platforms["linux/amd64"].config, *alpine.platforms["linux/amd64"].layers):
        assert (tmp_path / "second" / blob.digest.split(":")[1]).stat().st_size == blob.size
    log = server.log_text()
    assert " 307 " in log
    layer = alpine.platforms["linux/amd64"].layers[0].digest
    assert any(" 307 " in line for line in log.splitlines() if layer in line)


@pytest.fixture
def own_s3(tmp_path: Path) -> Iterator[SeaweedFS]:
    """A SeaweedFS of this test's own, which it kills and starts again."""
    server = SeaweedFS(tmp_path / "weed").start()
    server.create_bucket(seaweed.BUCKET)
    yield server
    server.stop()


async def test_s3_killed_then_started_again(aiohttp_client: Any, own_s3: SeaweedFS, upstream: Upstream,
                                           tmp_path: Path) -> None:
    config = build_config({"storage": s3_storage(own_s3, tmp_path, "data", "p", local_cache="1KiB"),
                           "local": {"anonymous_push": True}, "upstreams": [docker_hub_upstream(upstream.url)]})
    client: TestClient = await aiohttp_client(build_app(config))
    image = await push_image(client, "team/app", "v1")  # its layer (2 KB) is too big for the local cache
    small = b"tiny"
    small_digest = await push_blob(client, "team/app", small)  # kept on local disk too
    own_s3.kill()

    started = asyncio.get_running_loop().time()
    response = await client.get(f"/v2/team/app/blobs/{sha256(image.layers[0])}")
    assert response.status == 503
    assert await error_code(response) == "UNAVAILABLE"
    assert "storage" in (await response.json())["errors"][0]["message"]
    assert asyncio.get_running_loop().time() - started < 10
    assert await (await client.get(f"/v2/team/app/blobs/{small_digest}")).read() == small  # local cache
    assert await (await client.get("/v2/team/app/manifests/v1")).read() == image.manifest
    ready = await client.get("/readyz")
    assert ready.status == 503
    assert (await ready.json())["checks"]["backend"].startswith("blob storage not available")
    assert (await client.get("/healthz")).status == 200
    refused = await client.post("/v2/team/app/blobs/uploads/", params={"digest": sha256(b"new")}, data=b"new")
    assert refused.status == 503
    busybox = f"/v2/docker.io/{upstream.seed.busybox.repo}/manifests/{upstream.seed.busybox.tag}"
    uncached = await client.get(busybox)  # it must be stored to be served
    assert uncached.status == 503
    assert await error_code(uncached) == "UNAVAILABLE"

    own_s3.start()
    assert (await client.get("/readyz")).status == 200
    assert await (await client.get(f"/v2/team/app/blobs/{sha256(image.layers[0])}")).read() == image.layers[0]
    await push_blob(client, "team/app", b"new")
    assert (await client.get(busybox)).status == 200


async def test_a_failed_verify_uploads_nothing(s3_store: Store, s3_config: Config) -> None:
    data = os.urandom(12 * 1024 * 1024)  # more than one multipart part
    with pytest.raises(DigestMismatch):
        await s3_store.write_blob(one_chunk(data), Digest.of(b"something else"), origin=PUSHED)
    assert blob_files(s3_config) == set()
    assert not [key for key in seaweed.multipart_uploads(str(s3_config.storage.s3.endpoint), seaweed.BUCKET)
                if key.startswith(s3_config.storage.s3.prefix)]
    assert s3_store.totals()[PUSHED].blobs == 0


async def test_two_instances_committing_the_same_digest_at_once_both_succeed(
        s3_config: Config, seaweed_server: SeaweedFS, tmp_path: Path, prefix: str) -> None:
    other = build_config({"storage": s3_storage(seaweed_server, tmp_path, "other", prefix)})
    stores = [store_for(s3_config.storage), store_for(other.storage)]
    for store in stores:
        await store.open()
    data = os.urandom(9 * 1024 * 1024)
    try:
        digests = await asyncio.gather(*(store.write_blob(one_chunk(data), Digest.of(data), origin=CACHED)
                                         for store in stores))
        assert digests == [Digest.of(data)] * 2
        for store in stores:
            opened = await store.open_blob(digests[0])
            assert opened is not None and opened.size == len(data)
            await opened.close()
    finally:
        for store in stores:
            await store.close()
    assert bucket(s3_config, "blobs") == {f"blobs/sha256/{digests[0].hex[:2]}/{digests[0].hex}": data}


async def test_storage_metrics_count_s3_requests(s3_store: Store) -> None:
    assert REGISTRY.get_sample_value("pullcache_storage_requests_total",
                                     {"backend": "s3", "op": "list", "code": "ok"})


async def test_a_path_holding_a_filesystem_store_is_refused_for_s3_and_the_other_way_round(
        s3_config: Config, tmp_path: Path) -> None:
    """An s3 store would take a filesystem store's blobs for stale copies of its own and remove them."""
    filesystem = Store(tmp_path / "fs")
    await filesystem.open()
    await filesystem.write_blob(one_chunk(b"precious"), None, origin=PUSHED)
    await filesystem.close()
    misplaced = build_config({"storage": {**s3_storage_of(s3_config), "path": str(tmp_path / "fs")}})
    with pytest.raises(StorageMisconfigured, match="holds a filesystem store"):
        await store_for(misplaced.storage).open()
    assert Store(tmp_path / "fs").blob_size(Digest.of(b"precious")) == len(b"precious")

    s3 = store_for(s3_config.storage)
    await s3.open()
    await s3.close()
    with pytest.raises(StorageMisconfigured, match="spool and cache of s3://"):
        await Store(s3_config.storage.path).open()


def s3_storage_of(config: Config) -> dict[str, Any]:
    s3 = config.storage.s3
    return {"backend": "s3", "s3": {"endpoint": s3.endpoint, "bucket": s3.bucket, "prefix": s3.prefix,
                                    "access_key": s3.access_key, "secret_key": s3.secret_key}}


@pytest.fixture
async def failing_part_proxy(seaweed_server: SeaweedFS) -> AsyncIterator[str]:
    """A loopback proxy in front of the session's SeaweedFS that answers 500 to every upload of part 2 of a
    multipart upload, and passes everything else through (Host unchanged, so signatures still hold)."""
    session = ClientSession(auto_decompress=False)

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if request.method == "PUT" and request.query.get("partNumber") == "2":
            return web.Response(status=500, text="part 2 refused by the test")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        async with session.request(request.method, seaweed_server.url + request.path_qs, headers=headers,
                                   data=body, allow_redirects=False) as answer:
            data = await answer.read()
            return web.Response(status=answer.status, body=data, headers={
                k: v for k, v in answer.headers.items() if k.lower() not in HOP_HEADERS})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", forward)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()
    await session.close()


HOP_HEADERS = {"content-length", "transfer-encoding", "connection", "keep-alive"}


async def test_a_multipart_upload_that_fails_is_aborted_and_leaves_nothing(
        failing_part_proxy: str, s3_config: Config, tmp_path: Path) -> None:
    s3 = s3_storage_of(s3_config)["s3"]
    config = build_config({"storage": {"path": str(tmp_path / "via-proxy"), "backend": "s3",
                                       "s3": {**s3, "endpoint": failing_part_proxy, "timeout": "3s"}}})
    store = store_for(config.storage)
    await store.open()
    data = os.urandom(20 * 1024 * 1024)  # three parts
    try:
        with pytest.raises(StorageUnavailable):
            await store.write_blob(one_chunk(data), Digest.of(data), origin=PUSHED)
        assert store.blob_size(Digest.of(data)) is None
        assert store.totals()[PUSHED].blobs == 0
    finally:
        await store.close()
    assert blob_files(s3_config) == set()
    endpoint = str(s3_config.storage.s3.endpoint)
    assert not [key for key in seaweed.multipart_uploads(endpoint, seaweed.BUCKET) if key.startswith(s3["prefix"])]


async def test_eviction_while_s3_is_down_keeps_every_blob_and_evicts_once_it_is_back(
        own_s3: SeaweedFS, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = build_config({"storage": s3_storage(own_s3, tmp_path, "data", "p")})
    store = store_for(config.storage)
    await store.open()
    try:
        digests = [await store.write_blob(one_chunk(bytes([n]) * 1000), None, origin=CACHED) for n in range(3)]
        own_s3.kill()
        started = asyncio.get_running_loop().time()
        evicted = await evict_to(store, 0)
        assert asyncio.get_running_loop().time() - started < 10  # one failed delete, the others not tried
        assert evicted.blobs == 0 and store.totals()[CACHED].blobs == 3
        own_s3.start()
        assert blob_files(config) == {str(digest) for digest in digests}
        monkeypatch.setattr(s3_backend, "DELETE_BACKOFF", 0.0)
        assert (await evict_to(store, 0)).blobs == 3
        assert blob_files(config) == set()
    finally:
        await store.close()


async def test_warm_fills_the_bucket(s3_config: Config, upstream: Upstream) -> None:
    config = build_config({"storage": {"path": s3_config.storage.path, **s3_storage_of(s3_config)},
                           "upstreams": [docker_hub_upstream(upstream.url)]})
    code = await run_warm_command(config, ["alpine"], "linux/amd64", out=io.StringIO(), progress=io.StringIO())
    assert code == 0
    amd64 = upstream.seed.alpine.platforms["linux/amd64"]
    expected = {upstream.seed.alpine.digest, amd64.manifest.digest, amd64.config.digest,
                *(layer.digest for layer in amd64.layers)}
    assert expected <= blob_files(config)


async def test_without_an_access_key_the_aws_environment_credentials_are_used(
        seaweed_server: SeaweedFS, tmp_path: Path, prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", seaweed.ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", seaweed.SECRET_KEY)
    storage = s3_storage(seaweed_server, tmp_path, "data", prefix)
    storage["s3"] = {key: value for key, value in storage["s3"].items() if key not in ("access_key", "secret_key")}
    store = store_for(build_config({"storage": storage}).storage)
    await store.open()  # lists and writes: refused without credentials
    try:
        assert await store.write_blob(one_chunk(b"by the chain"), None, origin=PUSHED) == Digest.of(b"by the chain")
    finally:
        await store.close()


@pytest.mark.parametrize("local_cache", ["10GiB", "0"], ids=["copied-in", "streamed"])
async def test_a_blob_removed_from_the_bucket_by_another_process_is_absent_not_a_broken_answer(
        s3_config: Config, tmp_path: Path, local_cache: str) -> None:
    """`pullcache gc` beside a server removes objects the server still knows: its next read says absent."""
    s3 = s3_storage_of(s3_config)
    store = store_for(build_config({"storage": {"path": str(tmp_path / "server"), **s3,
                                                "s3": {**s3["s3"], "local_cache": local_cache}}}).storage)
    await store.open()
    try:
        data = b"soon gone" * 1000
        digest = await store.write_blob(one_chunk(data), None, origin=CACHED)
        key = f"{s3['s3']['prefix']}/blobs/sha256/{digest.hex[:2]}/{digest.hex}"
        seaweed.client(str(s3["s3"]["endpoint"])).delete_object(Bucket=seaweed.BUCKET, Key=key)
        (tmp_path / "server" / "blobs" / "sha256" / digest.hex[:2] / digest.hex).unlink(missing_ok=True)
        assert await store.open_blob(digest) is None
        assert store.blob_size(digest) is None
    finally:
        await store.close()


async def test_a_blob_evicted_while_the_bucket_is_listed_is_not_taken_for_stored(
        s3_store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """GC's reconcile lists the bucket while an eviction deletes: a blob deleted after the listing saw it must
    not come back as stored, or the reconcile would index it again and a later pass evict it twice."""
    digest = await s3_store.put_small(os.urandom(1000), origin=CACHED)
    objects = s3_store.blobs.objects  # type: ignore[attr-defined]
    listed, deleted = asyncio.Event(), asyncio.Event()
    list_objects = objects.list

    async def held_list(prefix: str = "") -> AsyncIterator[Any]:
        async for info in list_objects(prefix):
            yield info
        listed.set()
        await deleted.wait()
    monkeypatch.setattr(objects, "list", held_list)
    listing = asyncio.create_task(s3_store.stored_blobs())
    await listed.wait()
    (row,) = await s3_store.least_recent(1)
    assert await s3_store.remove_unchanged([row]) == [row]
    deleted.set()

    assert str(digest) not in await listing
    assert s3_store.blob_size(digest) is None
