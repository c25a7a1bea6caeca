"""GC over a real Store: mark from local manifests, sweep what a DELETE left, reconcile, dry run.

Tests observe the store through its interface; only the temp-file and upload-folder cases (the local spool
under storage.path) touch files.
"""
from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from pullcache import metrics
from pullcache.cache import writer as writer_module
from pullcache.cache.index import CACHED, PUSHED, BlobRow
from pullcache.cache.store import Store
from pullcache.config import Config, GCConfig, StorageConfig
from pullcache.digests import Digest
from pullcache.eviction.gc import BLOB_GRACE, collect_garbage, run_gc_command
from tests.support.store_view import lose_index_row, store_contents

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
GC = GCConfig(interval=3600, upload_ttl=86400)
LATER = BLOB_GRACE + 60  # seconds after which an unreferenced pushed blob may go


def descriptor(digest: Digest, size: int, media_type: str) -> dict[str, object]:
    return {"mediaType": media_type, "digest": str(digest), "size": size}


async def push_blob(store: Store, repo: str, data: bytes) -> Digest:
    digest = await store.put_small(data, origin=PUSHED)
    await store.repository(repo).link_blob(digest)
    return digest


async def push_manifest(store: Store, repo: str, manifest: dict[str, object], media_type: str,
                        tag: str | None = None) -> Digest:
    digest = await store.put_small(json.dumps(manifest).encode(), origin=PUSHED)
    repository = store.repository(repo)
    await repository.link_manifest(digest, media_type)
    if tag:
        await repository.set_tag(tag, digest)
    return digest


async def push_image(store: Store, repo: str, tag: str, layers: list[bytes]) -> tuple[Digest, set[Digest]]:
    """A pushed image: its manifest digest and every blob it needs (config, layers, manifest)."""
    config = await push_blob(store, repo, json.dumps({"tag": tag, "repo": repo}).encode())
    layer_digests = [await push_blob(store, repo, layer) for layer in layers]
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": descriptor(config, 0, "application/vnd.oci.image.config.v1+json"),
                "layers": [descriptor(d, len(layer), "application/vnd.oci.image.layer.v1.tar")
                           for d, layer in zip(layer_digests, layers, strict=True)]}
    digest = await push_manifest(store, repo, manifest, OCI_MANIFEST, tag)
    return digest, {config, *layer_digests, digest}


async def forget_row(store: Store, digest: Digest) -> None:
    """A crash between a blob's rename and its index write: the file is there, its row is not."""
    assert await lose_index_row(store, str(digest))


async def contents_and_rows(store: Store) -> tuple[dict[str, object], set[tuple[str, str]]]:
    """What the store holds (blobs, temps, repositories) and every index row: the dry run leaves them all."""
    return await store_contents(store), {(row.digest, row.origin) for row in await store.blob_rows()}


async def test_delete_then_gc_reclaims_exactly_the_unshared_blobs(store: Store) -> None:
    shared = b"shared base layer" * 100
    kept, kept_blobs = await push_image(store, "team/app", "v1", [shared, b"app v1 layer"])
    deleted, deleted_blobs = await push_image(store, "team/app", "v2", [shared, b"app v2 layer"])
    await store.repository("team/app").unlink_manifest(deleted)  # what DELETE /v2/.../manifests/<digest> does

    report = await collect_garbage(store, GC, dry_run=False, now=time.time() + LATER)

    unshared = deleted_blobs - kept_blobs
    assert {r.name for r in report.removals if r.kind == "blob"} == {str(d) for d in unshared}
    assert report.reclaimed == sum(r.bytes for r in report.removals)
    assert all(store.blob_size(d) is None for d in unshared)
    assert all(store.blob_size(d) is not None for d in kept_blobs)
    assert {str(d) for d in await store.repository("team/app").blob_links()} == {str(d) for d in kept_blobs - {kept}}
    assert store.totals()[PUSHED].blobs == len(kept_blobs)


async def test_a_blob_another_repository_references_stays(store: Store) -> None:
    shared = b"base" * 500
    await push_image(store, "team/one", "v1", [shared])
    gone, _ = await push_image(store, "team/two", "v1", [shared])
    await store.repository("team/two").unlink_manifest(gone)

    await collect_garbage(store, GC, dry_run=False, now=time.time() + LATER)

    assert store.blob_size(Digest.of(shared)) == len(shared)


async def test_children_of_a_local_index_are_marked(store: Store) -> None:
    amd64, _ = await push_image(store, "team/multi", "amd64", [b"amd64 layer"])
    await store.repository("team/multi").unlink_manifest(amd64)  # untagged child, only the index names it
    child = await store.put_small(json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": [
        descriptor(Digest.of(b"amd64 layer"), 11, "application/vnd.oci.image.layer.v1.tar")]}).encode(), origin=PUSHED)
    await push_manifest(store, "team/multi", {"schemaVersion": 2, "mediaType": OCI_INDEX,
                                              "manifests": [descriptor(child, 0, OCI_MANIFEST)]}, OCI_INDEX, "latest")

    await collect_garbage(store, GC, dry_run=False, now=time.time() + LATER)

    assert store.blob_size(child) is not None and store.blob_size(Digest.of(b"amd64 layer")) is not None


async def test_marking_reads_manifests_from_disk_not_through_the_manifest_cache(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    _, blobs = await push_image(store, "team/app", "v1", [b"layer"])

    async def read_small(digest: Digest) -> bytes | None:
        raise AssertionError("GC filled the manifest cache, which is for serving pulls")
    monkeypatch.setattr(store, "read_small", read_small)
    await collect_garbage(store, GC, dry_run=False, now=time.time() + LATER)

    assert all(store.blob_size(digest) is not None for digest in blobs)


async def test_a_recent_unreferenced_push_survives_the_grace_period(store: Store) -> None:
    layer = await push_blob(store, "team/app", b"uploaded, manifest not yet pushed")

    report = await collect_garbage(store, GC, dry_run=False)

    assert report.removals == [] and store.blob_size(layer) is not None


async def test_a_live_upload_session_protects_blobs_pushed_after_it_started(store: Store) -> None:
    await store.uploads.create("team/app")  # a push in progress, started first
    layer = await push_blob(store, "team/app", b"first layer of that push")

    await collect_garbage(store, GC, dry_run=False, now=time.time() + LATER)

    assert store.blob_size(layer) is not None


async def test_cached_blobs_are_left_to_the_lru(store: Store) -> None:
    cached = await store.put_small(b"pulled through, no local manifest", origin=CACHED)
    await collect_garbage(store, GC, dry_run=False, now=time.time() + LATER)
    assert store.blob_size(cached) is not None


async def cache_manifest(store: Store, repo: str, manifest: dict[str, object], tag: str | None = None) -> Digest:
    """A manifest pulled through from an upstream, as the pull-through path stores it."""
    digest = await store.put_small(json.dumps(manifest).encode(), origin=CACHED)
    repository = store.repository(repo, cached=True)
    await repository.link_manifest(digest, OCI_MANIFEST)
    if tag:
        await repository.set_tag(tag, digest)
    return digest


async def evict(store: Store, digest: Digest) -> None:
    """What an eviction pass does to one cached blob."""
    assert await store.remove_unchanged([await store.blob_row(digest)])


async def test_the_revision_of_an_evicted_cached_manifest_is_pruned(store: Store) -> None:
    repository = store.repository("docker.io/library/alpine", cached=True)
    evicted = await cache_manifest(store, repository.name, {"schemaVersion": 2, "n": 1})
    held = await cache_manifest(store, repository.name, {"schemaVersion": 2, "n": 2})
    await evict(store, evicted)

    report = await collect_garbage(store, GC, dry_run=False)

    assert [(r.kind, r.name) for r in report.removals] == [("revision", f"{repository.name}@{evicted}")]
    assert not await repository.has_manifest(evicted) and await repository.has_manifest(held)


async def test_a_cached_tag_stays_when_its_manifest_is_evicted(store: Store) -> None:
    repository = store.repository("docker.io/library/alpine", cached=True)
    tagged = await cache_manifest(store, repository.name, {"schemaVersion": 2}, tag="3.20")
    await evict(store, tagged)

    await collect_garbage(store, GC, dry_run=False)

    assert (await repository.get_tag("3.20")).digest == tagged and await repository.has_manifest(tagged)


async def test_a_legacy_blob_link_in_a_cached_repository_goes_with_its_blob(store: Store) -> None:
    repository = store.repository("docker.io/library/alpine", cached=True)
    evicted = await store.put_small(b"evicted layer", origin=CACHED)
    held = await store.put_small(b"held layer", origin=CACHED)
    for digest in (evicted, held):
        await repository.link_blob(digest)  # what the pull-through path used to write
    await evict(store, evicted)

    await collect_garbage(store, GC, dry_run=False)

    assert await repository.blob_links() == [held]


async def test_a_cached_blob_a_local_manifest_references_becomes_pushed(store: Store) -> None:
    base = await store.put_small(b"base layer pulled before", origin=CACHED)
    await push_image(store, "team/app", "v1", [b"base layer pulled before"])  # the push found it present
    await forget_row(store, base)
    as_if_only_cached = BlobRow(str(base), len(b"base layer pulled before"), CACHED, time.time())
    assert await store.index_found_blobs([as_if_only_cached]) == [as_if_only_cached]

    report = await collect_garbage(store, GC, dry_run=False)

    assert report.promoted == [str(base)] and (await store.blob_row(base)).origin == PUSHED


async def test_idle_upload_sessions_and_half_made_folders_are_removed(store: Store) -> None:
    idle = await store.uploads.create("team/app")
    (idle.path / "data").write_bytes(b"x" * 1000)
    os.utime(idle.path / "data", (0, 0))
    half_made = store.layout.uploads / "9b2f7c1e-0000-4000-8000-000000000000"
    half_made.mkdir()
    os.utime(half_made, (0, 0))
    live = await store.uploads.create("team/app")

    report = await collect_garbage(store, GC, dry_run=False)

    assert {r.name for r in report.removals if r.kind == "upload"} == {idle.id, half_made.name}
    assert not idle.path.exists() and not half_made.exists() and live.path.exists()
    assert report.reclaimed == 1000


async def test_an_idle_session_gc_removes_is_ended_for_the_server_too(store: Store) -> None:
    live = await store.uploads.create("team/app")  # the server's own object for it

    await collect_garbage(store, GC, dry_run=False, now=time.time() + GC.upload_ttl + 60)

    assert live.ended and await store.uploads.get(live.id, "team/app") is None


async def test_a_session_receiving_a_chunk_is_not_removed(store: Store) -> None:
    session = await store.uploads.create("team/app")
    async with session.lock:  # a PATCH is streaming into it
        report = await collect_garbage(store, GC, dry_run=False, now=time.time() + GC.upload_ttl + 60)

    assert report.count("upload") == 0 and session.path.exists() and not session.ended


async def test_a_session_written_to_after_the_scan_is_not_removed(store: Store,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    session = await store.uploads.create("team/app")
    os.utime(session.data, (0, 0))
    real_remove_if_idle = store.uploads.remove_if_idle

    async def chunk_lands_first(*args: Any) -> bool:  # a PATCH got the lock between the scan and the removal
        os.utime(session.data)
        return await real_remove_if_idle(*args)
    monkeypatch.setattr(store.uploads, "remove_if_idle", chunk_lands_first)

    report = await collect_garbage(store, GC, dry_run=False)

    assert report.count("upload") == 0 and session.path.exists() and not session.ended


async def test_orphaned_temp_files_are_removed_and_fresh_ones_kept(store: Store) -> None:
    orphan, fresh = store.layout.tmp / "blob-orphan.tmp", store.layout.tmp / "blob-writing.tmp"
    orphan.write_bytes(b"o" * 10)
    fresh.write_bytes(b"f" * 10)
    os.utime(orphan, (0, 0))

    report = await collect_garbage(store, GC, dry_run=False)

    assert [(r.kind, r.name, r.bytes) for r in report.removals] == [("temp", orphan.name, 10)]
    assert not orphan.exists() and fresh.exists()


async def test_an_old_temp_file_a_live_writer_owns_is_kept(store: Store) -> None:
    async with store.new_writer() as writer:  # a fill stalled for longer than the grace, still running
        await writer.write(b"a stalled fill")
        await writer.flush()
        os.utime(writer.path, (0, 0))

        report = await collect_garbage(store, GC, dry_run=False)

        assert report.count("temp") == 0 and writer.path.exists()


async def test_a_slow_write_touches_its_temp_file_before_its_buffer_fills(store: Store,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer_module, "FLUSH_AGE", 0.0)  # as if each chunk came FLUSH_AGE after the last
    async with store.new_writer() as writer:
        await writer.write(b"a trickle")

        assert writer.path.read_bytes() == b"a trickle"  # written, so GC sees a live temp file


async def test_reconcile_indexes_files_without_rows_by_their_links(store: Store) -> None:
    _, blobs = await push_image(store, "team/app", "v1", [b"pushed layer"])
    cached = await store.put_small(b"cached layer", origin=CACHED)
    for digest in [*blobs, cached]:  # a crash between file and index write
        await forget_row(store, digest)

    report = await collect_garbage(store, GC, dry_run=False)

    origins = {row.digest: row.origin for row in report.indexed}
    assert origins == {**{str(d): PUSHED for d in blobs}, str(cached): CACHED}
    assert {row.digest: row.origin for row in await store.blob_rows()} == origins


async def test_reconcile_drops_rows_whose_files_are_gone(store: Store) -> None:
    lost = await store.put_small(b"removed by hand", origin=CACHED)
    await asyncio.to_thread(store.blobs.remove_blocking, lost)

    report = await collect_garbage(store, GC, dry_run=False)

    assert [(r.kind, r.name) for r in report.removals] == [("row", str(lost))]
    assert await store.blob_row(lost) is None and store.totals()[CACHED].blobs == 0


async def test_dry_run_changes_nothing_and_reports_the_same(store: Store) -> None:
    gone, _ = await push_image(store, "team/app", "v1", [b"layer one" * 50])
    await store.repository("team/app").unlink_manifest(gone)
    orphan = store.layout.tmp / "blob-orphan.tmp"
    orphan.write_bytes(b"o" * 10)
    os.utime(orphan, (0, 0))
    unindexed = await store.put_small(b"crash left it unindexed", origin=CACHED)
    await forget_row(store, unindexed)
    await evict(store, await cache_manifest(store, "docker.io/library/alpine", {"schemaVersion": 2}))
    before = await contents_and_rows(store)
    runs_before = metrics.REGISTRY.get_sample_value("pullcache_gc_runs_total")

    dry = await collect_garbage(store, GC, dry_run=True, now=time.time() + LATER)

    assert await contents_and_rows(store) == before
    assert metrics.REGISTRY.get_sample_value("pullcache_gc_runs_total") == runs_before
    real = await collect_garbage(store, GC, dry_run=False, now=time.time() + LATER)
    assert set(dry.removals) == set(real.removals) and dry.reclaimed == real.reclaimed > 0
    assert [row.digest for row in dry.indexed] == [row.digest for row in real.indexed] == [str(unindexed)]


async def test_the_command_prints_what_it_removes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = Config(storage=StorageConfig(path=str(tmp_path / "data")))
    store = Store(config.storage.path)
    await store.open()
    orphan = store.layout.tmp / "blob-orphan.tmp"
    orphan.write_bytes(b"o" * 42)
    os.utime(orphan, (0, 0))
    await store.close()

    assert await run_gc_command(config, dry_run=True) == 0
    dry = capsys.readouterr().out.splitlines()
    assert await run_gc_command(config, dry_run=False) == 0
    real = capsys.readouterr().out.splitlines()

    assert dry[0] == "would remove temp blob-orphan.tmp (42 bytes): orphaned temp file"
    assert dry[-1].startswith("gc (dry run): would reclaim 42 bytes (0 blobs, 0 upload sessions, 1 temp files")
    assert real[0] == "removed temp blob-orphan.tmp (42 bytes): orphaned temp file"
    assert real[-1].startswith("gc: reclaimed 42 bytes")


async def test_the_command_refuses_a_storage_path_that_does_not_exist(tmp_path: Path) -> None:
    config = Config(storage=StorageConfig(path=str(tmp_path / "nowhere")))
    assert await run_gc_command(config, dry_run=True) == 1
    assert not (tmp_path / "nowhere").exists()
