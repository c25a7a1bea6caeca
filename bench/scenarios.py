"""The scenarios, each written once and run against either cache.

A scenario takes one `Cache` and returns {metric key: value}; `ScenarioError` says why a
run produced no figure (a wrong status, a short body), and the table shows it instead.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from tests.support.images import MANIFEST_TYPES
from tests.support.skopeo import Skopeo

from . import loadgen
from .procstat import MiB, RssSampler, cpu_seconds, rss_bytes
from .stack import Cache, Layer, Seeded
from .throttle import Throttle

ACCEPT = "Accept: " + ", ".join(MANIFEST_TYPES)
HERD = 16
T = TypeVar("T")


class ScenarioError(RuntimeError):
    """The cache answered wrongly; the figure would be meaningless."""


@dataclass(frozen=True)
class Settings:
    wrk_seconds: float = 10.0
    herd: int = HERD
    repeats: int = 5  # transfers per figure where one transfer is too short to time alone


def checked(result: loadgen.Herd, layer: Layer, what: str) -> loadgen.Herd:
    failure = result.failure()
    if failure is None and any(f.size != layer.size for f in result.fetches):
        sizes = sorted({f.size for f in result.fetches})
        failure = f"bodies of {sizes} bytes, expected {layer.size}"
    if failure:
        raise ScenarioError(f"{what}: {failure}")
    return result


@dataclass(frozen=True)
class Busy:
    """Cores kept busy while a body ran: the cache's, and its object store's (None on disk)."""

    cache: float
    store: float | None

    def figures(self, suffix: str) -> dict[str, float]:
        figures = {f"cpu_{suffix}": self.cache}
        if self.store is not None:
            figures[f"store_cpu_{suffix}"] = self.store
        return figures


def _busy(cache: Cache, body: Callable[[], T]) -> tuple[T, Busy]:
    """Run `body`; also return the cores the cache process (and its object store) kept busy meanwhile."""
    pids = [cache.pid] + ([cache.store_pid] if cache.store_pid is not None else [])
    start, before = time.monotonic(), [cpu_seconds(pid) for pid in pids]
    result = body()
    wall = time.monotonic() - start
    cores = [(cpu_seconds(pid) - b) / wall for pid, b in zip(pids, before, strict=True)]
    return result, Busy(cores[0], cores[1] if len(cores) > 1 else None)


def warm_blob(cache: Cache, layer: Layer, attempts: int = 10) -> None:
    """GET `layer` until a GET no longer reaches the upstream: then it is served from cache.

    Distribution finishes storing in a background goroutine after the first client is
    served, so one GET is not enough to call it warm.
    """
    url = cache.url + layer.path
    for _ in range(attempts):
        before = cache.throttle.blob_gets(layer.digest)
        checked(loadgen.herd(url, 1), layer, f"warming {layer.repo}@{layer.digest[:19]}")
        if cache.throttle.blob_gets(layer.digest) == before:
            return
        time.sleep(0.5)
    raise ScenarioError(f"{layer.digest[:19]} still fetched upstream after {attempts} GETs")


def warm_manifests(cache: Cache, seeded: Seeded) -> None:
    for reference in ("v1", seeded.multi.digest):
        result = loadgen.herd(f"{cache.url}/v2/{seeded.multi.repo}/manifests/{reference}", 1,
                              headers=[ACCEPT])
        if result.failure():
            raise ScenarioError(f"manifest {reference}: {result.failure()}")


def cached_layer(cache: Cache, seeded: Seeded, settings: Settings) -> dict[str, float]:
    """Throughput of a warm 200 MiB layer to 1 client and to 8 concurrent clients.

    One transfer takes a fraction of a second, and the machine's other load can only slow a
    transfer down, never speed it up: each figure is the best of `repeats` transfers.
    """
    warm_blob(cache, seeded.cached)
    url = cache.url + seeded.cached.path
    singles = [checked(loadgen.herd(url, 1), seeded.cached, "1 client") for _ in range(settings.repeats)]
    eights = []
    for _ in range(settings.repeats):
        eights.append(_busy(cache, lambda: checked(loadgen.herd(url, 8), seeded.cached, "8 clients")))
    cpu_seconds_per_gb = [busy.cache * h.wall / (h.bytes / 1e9) for h, busy in eights]
    return {
        "cpu_per_gb_cached": statistics.median(cpu_seconds_per_gb),
        "cached_1": max(h.throughput for h in singles),
        "cached_8": max(h.throughput for h, _ in eights),
        **_median_busy([busy for _, busy in eights]).figures("cached_8"),
        "loadgen_cpu_cached_8": statistics.median(h.client_cpu / h.wall for h, _ in eights),
    }


def _median_busy(runs: list[Busy]) -> Busy:
    stores = [b.store for b in runs if b.store is not None]
    return Busy(statistics.median(b.cache for b in runs), statistics.median(stores) if stores else None)


def redirected_layer(cache: Cache, seeded: Seeded, settings: Settings) -> dict[str, float]:
    """The cached layer with redirects on (S3 only): each client follows the 307 to the object store.

    What the cache's own port sent is measured twice: by the clients (every byte received on the
    connection to the cache, heads included) and, where the cache counts them, its own count of
    body bytes served (pullcache's `pullcache_bytes_served_total`). The cache restarts with
    redirects on for this scenario and off again after it.
    """
    warm_blob(cache, seeded.cached)
    cache.redirecting(True)
    try:
        url = cache.url + seeded.cached.path
        served_before = cache.body_bytes_served()
        singles = [_redirected(loadgen.herd(url, 1, follow=True), seeded.cached, "1 client")
                   for _ in range(settings.repeats)]
        eights = [_busy(cache, lambda: _redirected(loadgen.herd(url, 8, follow=True), seeded.cached, "8 clients"))
                  for _ in range(settings.repeats)]
        served_after = cache.body_bytes_served()
    finally:
        cache.redirecting(False)
    herds = singles + [h for h, _ in eights]
    figures = {
        "redirect_1": max(h.throughput for h in singles),
        "redirect_8": max(h.throughput for h, _ in eights),
        **_median_busy([busy for _, busy in eights]).figures("redirect_8"),
        "redirect_origin_bytes": max(f.from_origin for h in herds for f in h.fetches),
    }
    if served_before is not None and served_after is not None:
        figures["redirect_body_bytes_served"] = served_after - served_before
    return figures


def _redirected(result: loadgen.Herd, layer: Layer, what: str) -> loadgen.Herd:
    checked(result, layer, what)
    if not all(f.redirects == 1 for f in result.fetches):
        raise ScenarioError(f"{what}: {sorted({f.redirects for f in result.fetches})} redirects followed, "
                            "expected 1 per GET")
    return result


def manifests(cache: Cache, seeded: Seeded, settings: Settings) -> dict[str, float]:
    """Requests/s for a cached tag and for a digest (wrk, 16 connections)."""
    warm_manifests(cache, seeded)
    base = f"{cache.url}/v2/{seeded.multi.repo}/manifests/"
    figures: dict[str, float] = {}
    upstream_before = cache.throttle.manifest_requests()
    tag, busy = _busy(cache, lambda: loadgen.wrk(base + "v1", seconds=settings.wrk_seconds, headers=[ACCEPT]))
    upstream_after = cache.throttle.manifest_requests()
    if tag.failure():
        raise ScenarioError(f"tag: {tag.failure()}")
    figures["manifest_tag"] = tag.requests_per_second
    figures["manifest_tag_upstream"] = upstream_after - upstream_before
    figures.update(busy.figures("manifest_tag"))
    figures["loadgen_cpu_manifest_tag"] = tag.client_cpu / settings.wrk_seconds
    digest = loadgen.wrk(base + seeded.multi.digest, seconds=settings.wrk_seconds, headers=[ACCEPT])
    if digest.failure():
        raise ScenarioError(f"digest: {digest.failure()}")
    figures["manifest_digest"] = digest.requests_per_second
    return figures


def herd(throttle: Throttle, url: str, layer: Layer, settings: Settings, prefix: str,
         measured: Callable[[Callable[[], loadgen.Herd]], tuple[loadgen.Herd, T]]) -> tuple[dict[str, float], T]:
    """`settings.herd` clients released together on `url`, an uncached `layer` behind `throttle`: the
    `<prefix>_*` figures (upstream fetches and bytes, times to first byte, time until done), and what
    `measured` (which runs the herd) measured meanwhile."""
    before, bytes_before = throttle.blob_gets(layer.digest), throttle.blob_bytes(layer.digest)
    result, measure = measured(lambda: checked(loadgen.herd(url, settings.herd), layer, prefix.replace("_", " ")))
    return {
        f"{prefix}_fetches": throttle.blob_gets(layer.digest) - before,
        f"{prefix}_upstream_mib": (throttle.blob_bytes(layer.digest) - bytes_before) / MiB,
        f"{prefix}_ttfb_median": result.ttfb_median,
        f"{prefix}_ttfb_worst": result.ttfb_worst,
        f"{prefix}_done": result.wall,
    }, measure


def cold_herd(cache: Cache, layer: Layer, settings: Settings) -> dict[str, float]:
    """16 clients at once on one uncached layer over the rate-capped upstream path."""
    figures, busy = herd(cache.throttle, cache.url + layer.path, layer, settings, "herd",
                         lambda body: _busy(cache, body))
    return {**busy.figures("herd"), **figures}


def skopeo_pull(cache: Cache, seeded: Seeded, settings: Settings) -> dict[str, float]:
    """`skopeo copy --all` of the multi-platform image from empty storage, then again."""
    cache.reset()
    ref = f"docker://{cache.host}/{seeded.multi.ref}"
    figures = {}
    with Skopeo() as skopeo:
        for key in ("skopeo_cold", "skopeo_warm"):
            dest = Path(tempfile.mkdtemp(prefix="pc-bench-skopeo-"))
            try:
                start = time.monotonic()
                skopeo.copy(ref, f"dir:{dest}", all_platforms=True)
                figures[key] = time.monotonic() - start
            finally:
                shutil.rmtree(dest, ignore_errors=True)
    return figures


def memory(cache: Cache, layer: Layer, settings: Settings) -> dict[str, float]:
    """Peak RSS while 16 clients stream the uncached 1 GiB layer, from a fresh process."""
    cache.reset()
    idle = rss_bytes(cache.pid)
    before = cache.throttle.blob_gets(layer.digest)
    with RssSampler(cache.pid) as rss:
        result = checked(loadgen.herd(cache.url + layer.path, settings.herd), layer, "1 GiB herd")
    return {
        "rss_idle": idle / MiB,
        "rss_peak": max(rss.peak, rss.hwm) / MiB,
        "rss_herd_fetches": cache.throttle.blob_gets(layer.digest) - before,
        "rss_herd_done": result.wall,
    }

