"""EvictionService: the bound is enforced in the background, recency persists, gauges stay right."""
from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import pytest
from aiohttp import web

from pullcache import metrics
from pullcache.api.appkeys import PULLTHROUGH, STORE
from pullcache.app import build_app
from pullcache.cache.files import StoreFullError
from pullcache.cache.index import CACHED, PUSHED, Totals
from pullcache.cache.store import Store
from pullcache.cluster.embedded import EmbeddedCoordinator
from pullcache.config import Config, GCConfig, StorageConfig
from pullcache.digests import Digest
from pullcache.eviction import service as service_module
from pullcache.eviction.lru import Evicted
from pullcache.eviction.service import EvictionService
from tests.test_gc import forget_row

KIB = 1024


def config_for(root: Path, *, max_size: int = 100 * KIB, gc_interval: float = 3600.0) -> Config:
    return Config(storage=StorageConfig(path=str(root), max_size=max_size, low_water=0.5),
                  gc=GCConfig(interval=gc_interval))


async def put(store: Store, seed: str, size: int, origin: str) -> Digest:
    return await store.put_small((seed * size).encode()[:size], origin=origin)


async def until_totals(store: Store, predicate: Callable[[Totals], bool]) -> None:
    """Wait (event-driven, bounded) until the index totals satisfy predicate."""
    reached = asyncio.Event()

    def check(totals: Totals) -> None:
        if predicate(totals):
            reached.set()
    def disk_full(needed: int) -> None:
        pass
    store.watch(check, disk_full)
    try:
        check(store.totals())
        await asyncio.wait_for(reached.wait(), 10)
    finally:
        store.unwatch(check, disk_full)


class Running:
    """A store and its service, started and stopped like app.py does."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.store = Store(config.storage.path)
        self.service = EvictionService(self.store, config, EmbeddedCoordinator(config.storage.path))

    async def __aenter__(self) -> Self:
        await self.store.open()
        await self.service.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.service.stop()
        await self.service.mark_clean()
        await self.store.close()


async def test_a_commit_over_the_bound_evicts_down_to_low_water_in_the_background(tmp_path: Path) -> None:
    async with Running(config_for(tmp_path)) as running:
        store = running.store
        pushed = await put(store, "pushed", 80 * KIB, PUSHED)
        cached = [await put(store, f"c{i}", 20 * KIB, CACHED) for i in range(6)]  # 120 KiB > 100 KiB

        await until_totals(store, lambda totals: totals[CACHED].bytes <= 50 * KIB)

        assert [store.blob_size(d) is not None for d in cached] == [False] * 4 + [True] * 2
        assert store.blob_size(pushed) == 80 * KIB


async def test_gauges_follow_commits_and_evictions(tmp_path: Path) -> None:
    def gauges() -> dict[str, tuple[float | None, float | None]]:
        sample = metrics.REGISTRY.get_sample_value
        return {origin: (sample("pullcache_store_bytes", {"origin": origin}),
                         sample("pullcache_store_blobs", {"origin": origin})) for origin in (CACHED, PUSHED)}

    async with Running(config_for(tmp_path)) as running:
        await put(running.store, "p", 7 * KIB, PUSHED)
        await put(running.store, "c", 5 * KIB, CACHED)
        assert gauges() == {CACHED: (5 * KIB, 1), PUSHED: (7 * KIB, 1)}
        for i in range(5):
            await put(running.store, f"big{i}", 30 * KIB, CACHED)
        await until_totals(running.store, lambda totals: totals[CACHED].bytes <= 100 * KIB)
        totals = running.store.totals()
        assert gauges()[CACHED] == (totals[CACHED].bytes, totals[CACHED].blobs)


async def test_recency_survives_a_restart(tmp_path: Path) -> None:
    config = config_for(tmp_path)
    async with Running(config) as running:
        used = await put(running.store, "used", 10 * KIB, CACHED)
        idle = await put(running.store, "idle", 60 * KIB, CACHED)
        running.store.note_access(used)  # the older blob is used last; flushed when the service stops

    async with Running(config) as running:
        await put(running.store, "more", 35 * KIB, CACHED)  # 105 KiB: evict down to 50 KiB
        await until_totals(running.store, lambda totals: totals[CACHED].bytes <= 50 * KIB)
        assert running.store.blob_size(idle) is None
        assert running.store.blob_size(used) == 10 * KIB


async def test_disk_full_runs_a_pass_that_frees_what_was_needed(tmp_path: Path) -> None:
    async with Running(config_for(tmp_path, max_size=10**9)) as running:
        for i in range(4):
            await put(running.store, f"c{i}", 10 * KIB, CACHED)
        running.store.report_disk_full(15 * KIB)  # what the error middleware does on ENOSPC
        await until_totals(running.store, lambda totals: totals[CACHED].bytes <= 25 * KIB)
        assert running.store.totals()[CACHED].blobs == 2


async def test_a_failed_pass_is_retried_and_still_frees_what_was_needed(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    real_evict_to = service_module.evict_to
    calls = 0

    async def fails_once(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("database or disk is full")
        return await real_evict_to(*args)
    monkeypatch.setattr(service_module, "evict_to", fails_once)
    monkeypatch.setattr(service_module, "FLUSH_INTERVAL", 0.01)  # the retry back-off

    async with Running(config_for(tmp_path, max_size=10**9)) as running:
        for i in range(4):
            await put(running.store, f"c{i}", 10 * KIB, CACHED)
        running.store.report_disk_full(15 * KIB)
        await until_totals(running.store, lambda totals: totals[CACHED].bytes <= 25 * KIB)
        assert calls == 2


async def test_a_full_index_fails_the_recency_flush_alone_and_is_logged_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    async def index_full(accesses: dict[str, float]) -> None:
        raise StoreFullError(errno.ENOSPC, "index index.sqlite: database or disk is full")
    space_checks = []
    caplog.set_level(logging.INFO, logger="pullcache.eviction")

    async with Running(config_for(tmp_path)) as running:
        store, service = running.store, running.service
        hit = await put(store, "hit", KIB, CACHED)
        async def free_space() -> tuple[int, int]:
            space_checks.append(1)
            return 10**12, 10**12
        monkeypatch.setattr(store, "free_space", free_space)
        touch_many = store.index.touch_many
        monkeypatch.setattr(store.index, "touch_many", index_full)
        for _ in range(3):
            store.note_access(hit)
            await service.tick()
        failures = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        monkeypatch.setattr(store.index, "touch_many", touch_many)
        await service.tick()

        assert len(space_checks) == 4  # every tick checked the free space
        assert failures == ["recording hits in the index failed: [Errno 28] index index.sqlite: database or "
                            "disk is full; retrying every 5s"]
        assert "recording hits in the index works again" in caplog.messages
        assert not store.hit_pending(str(hit))  # kept in memory until the index could take them


async def test_a_start_on_a_full_disk_makes_room_and_marks_the_store_in_use_once_it_can(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(tmp_path)
    await store.open()
    for i in range(4):
        await put(store, f"c{i}", 10 * KIB, CACHED)
    mark_in_use = store.mark_in_use

    async def index_full(in_use: bool) -> None:
        raise StoreFullError(errno.ENOSPC, "index index.sqlite: database or disk is full")
    monkeypatch.setattr(store, "mark_in_use", index_full)
    service = EvictionService(store, config_for(tmp_path, max_size=10**9), EmbeddedCoordinator(tmp_path))
    try:
        await service.start()
        await until_totals(store, lambda totals: totals[CACHED].blobs < 4)  # the pass a full disk asks for
        monkeypatch.setattr(store, "mark_in_use", mark_in_use)
        await service.tick()

        assert not await store.was_shut_down_cleanly()  # marked in use
    finally:
        await service.stop()
        await store.close()


async def test_a_clean_restart_does_not_reconcile(tmp_path: Path) -> None:
    config = config_for(tmp_path)
    async with Running(config) as running:
        assert running.service.reconciling is not None  # a new index always is
        await running.service.reconciling
    async with Running(config) as running:
        assert running.service.reconciling is None


async def test_after_a_crash_start_up_reconciles_in_the_background(tmp_path: Path) -> None:
    config = config_for(tmp_path)
    async with Running(config) as running:
        digest = await put(running.store, "orphan", 3 * KIB, CACHED)
        await forget_row(running.store, digest)
        await running.service.reconciling
    # An unclean stop: the marker written at start-up says so.
    crashed = Store(config.storage.path)
    await crashed.open()
    await crashed.mark_in_use(True)
    await crashed.close()

    async with Running(config) as running:
        assert running.service.reconciling is not None
        await running.service.reconciling
        row = await running.store.blob_row(digest)
        assert row is not None and row.origin == CACHED and row.size == 3 * KIB


async def test_the_periodic_gc_runs_on_its_interval(tmp_path: Path) -> None:
    async with Running(config_for(tmp_path, gc_interval=0.05)) as running:
        store = running.store
        stale = tmp_path / "tmp" / "blob-stale.tmp"
        stale.write_bytes(b"x" * 100)
        os.utime(stale, (0, 0))
        orphan = await put(store, "orphan", 2 * KIB, CACHED)
        store.blobs.remove_blocking(orphan)  # a row whose file is gone: GC's reconcile drops it
        await until_totals(store, lambda totals: totals[CACHED].blobs == 0)
        assert not stale.exists()


async def test_a_disk_full_report_during_a_pass_is_served_by_the_next_pass(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    targets: list[int] = []
    in_pass, release = asyncio.Event(), asyncio.Event()

    async def held_pass(store: Store, target: int) -> Evicted:
        targets.append(target)
        in_pass.set()
        await release.wait()
        return Evicted()
    monkeypatch.setattr(service_module, "evict_to", held_pass)
    config = config_for(tmp_path, max_size=10**9)
    store = Store(config.storage.path)
    await store.open()
    try:
        await put(store, "c", 50 * KIB, CACHED)
        # Not started: the test runs the passes itself.
        service = EvictionService(store, config, EmbeddedCoordinator(config.storage.path))
        service.disk_full(1 * KIB)
        first = asyncio.create_task(service.evict_now())
        await in_pass.wait()
        service.disk_full(40 * KIB)  # a second write ran out of disk while the first pass ran
        release.set()
        await first

        await service.evict_now()

        assert targets[1] == 10 * KIB  # 50 KiB cached, 40 KiB asked for
    finally:
        await store.close()


async def test_a_write_that_could_never_fit_evicts_nothing(tmp_path: Path) -> None:
    config = config_for(tmp_path, max_size=10**9)
    store = Store(config.storage.path)
    await store.open()
    try:
        cached = [await put(store, f"c{i}", 10 * KIB, CACHED) for i in range(4)]
        service = EvictionService(store, config, EmbeddedCoordinator(config.storage.path))
        service.disk_full(10**15)  # a bogus Content-Length: more than the cache and the free disk together

        evicted = await service.evict_now()

        assert evicted == Evicted() and all(store.blob_size(digest) == 10 * KIB for digest in cached)
    finally:
        await store.close()


async def test_shutdown_is_marked_clean_only_after_pull_through_closed(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    app = build_app(config_for(tmp_path))
    pullthrough, marker_while_closing = app[PULLTHROUGH], []
    real_close = pullthrough.close

    async def close() -> None:  # cancels running fills: a crash in here is not a clean shutdown
        marker_while_closing.append(await app[STORE].was_shut_down_cleanly())
        await real_close()
    monkeypatch.setattr(pullthrough, "close", close)
    runner = web.AppRunner(app)
    await runner.setup()
    await runner.cleanup()

    reopened = Store(tmp_path)
    await reopened.open()
    try:
        assert marker_while_closing == [False] and await reopened.was_shut_down_cleanly()
    finally:
        await reopened.close()
