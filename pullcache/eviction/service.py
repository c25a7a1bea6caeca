"""EvictionService: the background side of the store's bound, started and stopped by app.py.

- Every FLUSH_INTERVAL it writes the batched hits (recency) to the index, re-reads the index
  totals if a `pullcache gc` process changed them, and checks the disk's free space: each on its
  own, so the index refusing the hits on a full disk cannot keep the free-space check from asking
  for the pass that makes room. A failure that repeats is logged when it starts and when it ends.
- It listens to the index: when a commit takes cached content over storage.max_size, an eviction
  pass frees it down to storage.low_water of the bound, in its own task, so no request waits.
- A write that hit ENOSPC (store.report_disk_full, wired to disk_full()) or a disk with less
  than its reserve free asks for a pass too, unless evicting all cached content could not make the
  room asked for.
- Every gc.interval it runs one GC (the same code as `pullcache gc`).
- Eviction passes and GC run only in the process holding the `eviction` lease (pullcache.cluster), so
  several processes on one store (workers, replicas) run them once; the lease passes to another process
  within seconds when its holder dies. Recency flushes, totals and free-space checks stay per process.
- It keeps the pullcache_store_bytes/blobs gauges equal to the index totals: with a shared index (Redis,
  replicas on one bucket) every process re-reads the cluster's totals each tick, so all show the same.
- An index that lost its rows (Redis lost its data) is rebuilt from the blobs by the lease holder, in the
  background, while every process goes on serving.
- Start-up does not walk the blob tree: reconcile runs in the background, and only when the index
  was missing or the last shutdown was not clean (a marker in the index says so); never for a shared
  index (replicas on one bucket), whose leader rebuilds it if lost and whose GC reconciles it. Start-up
  does remove, before the server answers, every temp file no live process owns: a crash's leftovers.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from pullcache import metrics
from pullcache.cache.files import StoreFullError
from pullcache.cache.index import CACHED, ORIGINS, Totals
from pullcache.cache.store import Store
from pullcache.cluster import Coordinator, LeaseKeeper, holder_id
from pullcache.config import Config
from pullcache.eviction.gc import collect_garbage
from pullcache.eviction.lru import Evicted, evict_to
from pullcache.eviction.reconcile import reconcile, remove_orphaned_temps

log = logging.getLogger("pullcache.eviction")

FLUSH_INTERVAL = 5.0  # how stale recency may get in the index: hits in between cost no write
DISK_RESERVE_FRACTION = 0.05  # keep this much of the filesystem free ...
DISK_RESERVE_MAX = 1024**3  # ... but never ask for more than 1 GiB
LEASE = "eviction"  # its holder runs eviction passes and GC for every process of the store


class Trouble:
    """One kind of background work that may fail again and again (a full disk fails it every tick):
    logged once when it starts failing, with its cause, again when the cause changes, and once when
    it works again."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._cause: str | None = None

    async def run(self, step: Callable[[], Awaitable[object]]) -> bool:
        """Run one try of the work; False if it failed (logged as above)."""
        try:
            await step()
        except Exception as exc:
            cause = str(exc) or exc.__class__.__name__
            if cause != self._cause:
                traceback = None if isinstance(exc, StoreFullError) else exc  # a full disk is no bug
                log.error("%s failed: %s; retrying every %gs", self.what, cause, FLUSH_INTERVAL, exc_info=traceback)
                self._cause = cause
            return False
        if self._cause is not None:
            log.info("%s works again", self.what)
            self._cause = None
        return True


class EvictionService:
    def __init__(self, store: Store, config: Config, coordinator: Coordinator) -> None:
        self.store = store
        self.config = config
        self._wake = asyncio.Event()
        self.leader = LeaseKeeper(coordinator, LEASE, holder_id(config), on_taken=self._took_lease)
        self._free_request = 0  # bytes of cached content a full disk asked to free on the next pass
        self._tasks: list[asyncio.Task[None]] = []
        self.reconciling: asyncio.Task[None] | None = None  # the start-up reconcile, when one runs
        self._marked_running = False
        self._marking = Trouble("recording that the store is in use (so a crash reconciles)")
        self._ticks = [(Trouble("recording hits in the index"), self.store.flush_accesses),
                       (Trouble("reading the index totals"), self.store.refresh_totals),
                       (Trouble("rebuilding a lost index"), self._rebuild_if_lost),
                       (Trouble("checking the free disk space"), self._check_free_space)]
        self._evicting = Trouble("eviction pass")

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self.store.watch(self._on_totals, self.disk_full)
        self._on_totals(self.store.totals())
        unclean = not await self.store.was_shut_down_cleanly()
        await self._mark_running()
        await self._remove_orphaned_temps()
        await self.leader.start()
        self._spawn(self._evict_loop)
        self._spawn(self._tick_loop)
        self._spawn(self._gc_loop)
        if unclean:
            self.reconciling = self._spawn(self._reconcile)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self.leader.stop()  # another process takes over at once, not after the lease's ttl
        self.store.unwatch(self._on_totals, self.disk_full)
        with contextlib.suppress(StoreFullError):  # on a full disk the last hits are lost: only recency
            await self.store.flush_accesses()

    async def mark_clean(self) -> None:
        """Record a clean shutdown, so the next start skips the reconcile. app.py calls it last, after
        everything that writes to the store has stopped: a crash before this point reconciles."""
        try:
            await self.store.mark_in_use(False)
        except StoreFullError as exc:
            log.warning("could not record the clean shutdown (%s): the next start reconciles", exc)

    async def _mark_running(self) -> None:
        """Mark the store in use, so a crash from now on reconciles at the next start. On a full disk
        the index cannot take it: eviction makes room, and every tick tries again."""
        if await self._marking.run(lambda: self.store.mark_in_use(True)):
            self._marked_running = True
        else:
            self.disk_full()

    async def _remove_orphaned_temps(self) -> None:
        """Remove what writers that died (a crash, kill -9) left in tmp/, now rather than at the next GC:
        a fill leaves a file of the whole layer's size."""
        removed = await remove_orphaned_temps(self.store)
        if removed:
            log.info("removed %d temp files (%d bytes) that no live process owns, left by one that ended "
                     "mid-write", len(removed), sum(temp.size for temp in removed))

    def _spawn(self, loop: Callable[[], Coroutine[Any, Any, None]]) -> asyncio.Task[None]:
        task = asyncio.create_task(loop(), name=f"pullcache-{loop.__name__.strip('_')}")
        self._tasks.append(task)
        return task

    # ------------------------------------------------------------------ triggers
    def _on_totals(self, totals: Totals) -> None:
        for origin in ORIGINS:
            metrics.store_bytes.labels(origin=origin).set(totals[origin].bytes)
            metrics.store_blobs.labels(origin=origin).set(totals[origin].blobs)
        if totals[CACHED].bytes > self.config.storage.max_size:
            self._wake.set()

    def _took_lease(self) -> None:
        """A bound crossed, or a full disk reported, while another process led (or none did) needs a pass now."""
        if self._free_request or self.store.totals()[CACHED].bytes > self.config.storage.max_size:
            self._wake.set()

    def disk_full(self, needed: int = 0) -> None:
        """A write failed for lack of space: run a pass that frees at least `needed` bytes of cached
        content, and at least the share between the bound and its low-water mark (or nothing, when
        evicting everything could not make room for it: see _servable)."""
        self._free_request = max(self._free_request, needed, 1)
        self._wake.set()

    async def _check_free_space(self) -> None:
        if not self.store.blobs_on_local_disk:  # evicting from a bucket would not free this disk
            return
        free, total = await self.store.free_space()
        reserve = min(DISK_RESERVE_MAX, int(total * DISK_RESERVE_FRACTION))
        if free < reserve:
            self.disk_full(2 * reserve - free)

    # ------------------------------------------------------------------ eviction
    def _target(self, free_request: int) -> int:
        """Cached bytes to evict down to: low water when over the bound, less still when the disk is full."""
        storage = self.config.storage
        cached = self.store.totals()[CACHED].bytes
        target = cached
        if cached > storage.max_size:
            target = int(storage.max_size * storage.low_water)
        if free_request:
            share = int(min(cached, storage.max_size) * (1 - storage.low_water))
            target = min(target, cached - max(free_request, share))
        return max(target, 0)

    async def _servable(self, request: int) -> int:
        """The part of a disk-full request eviction can serve: at most all cached content, and nothing
        if even all of it and the free space together are less than was asked for (a blob larger than
        the disk, or a bogus Content-Length, must not empty the cache for nothing)."""
        cached = self.store.totals()[CACHED].bytes
        if request <= cached:
            return request
        free, _ = await self.store.free_space()
        if request > cached + free:
            log.warning("a write needed %d bytes, more than all cached content (%d bytes) and the free space "
                        "(%d bytes) together; not evicting for it", request, cached, free)
            return 0
        return cached

    async def evict_now(self) -> Evicted:
        """One eviction pass (the background loop's unit of work).

        The disk-full request is taken when the pass starts: one made while it runs is left for the
        next pass, and a pass that fails puts its own back for the retry.
        """
        request, self._free_request = self._free_request, 0
        try:
            evicted = await evict_to(self.store, self._target(await self._servable(request)))
        except BaseException:
            self._free_request = max(self._free_request, request)
            raise
        if evicted.blobs:
            log.info("evicted %d cached blobs (%d bytes)", evicted.blobs, evicted.bytes)
        return evicted

    async def _evict_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self.leader.held:
                continue  # the leader sees the same totals and disk; a request stays until this one leads
            if not await self._evicting.run(self.evict_now):
                await asyncio.sleep(FLUSH_INTERVAL)
                self._wake.set()

    # ------------------------------------------------------------------ periodic work
    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            await self.tick()

    async def tick(self) -> None:
        """The periodic work, each step on its own: one that fails does not keep the others from running."""
        if not self._marked_running:
            await self._mark_running()
        for trouble, step in self._ticks:
            await trouble.run(step)

    async def _gc_loop(self) -> None:
        if self.config.gc.interval <= 0:
            return  # gc.interval: 0 turns the periodic sweep off; `pullcache gc` still works
        while True:
            await asyncio.sleep(self.config.gc.interval)
            if not self.leader.held:
                continue
            try:
                report = await collect_garbage(self.store, self.config.gc, dry_run=False)
                log.info(report.lines()[-1])
            except Exception:
                log.exception("gc run failed; the next runs in %gs", self.config.gc.interval)

    async def _rebuild_if_lost(self) -> None:
        """The leader rebuilds an index that lost its rows since it was built (Redis lost its data) from the
        blobs, in the background: every process goes on serving meanwhile."""
        if not (self.leader.held and self.store.index_needs_rebuild()):
            return
        if self.reconciling is None or self.reconciling.done():
            log.warning("the blob index lost its rows (cluster.redis lost its data): rebuilding it from the blobs")
            self.reconciling = self._spawn(self._reconcile)

    async def _reconcile(self) -> None:
        """Index and disk agree again after an unclean shutdown or a lost index."""
        try:
            done = await reconcile(self.store)
            await self.store.index_rebuilt()
            log.info("reconciled index with disk: %d rows without files dropped, %d files indexed, "
                     "%d temp files removed", len(done.rows_without_files), len(done.files_without_rows),
                     len(done.stale_temps))
        except Exception:
            log.exception("reconcile after unclean shutdown failed; the next gc run retries")
