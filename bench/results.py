"""What the benchmark measures, the targets, and the figures per round.

Every figure is kept per round and per cache; the summary is the median with min-max,
and the ratio is pullcache's median divided by Distribution's (same run).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Literal

PULLCACHE, DISTRIBUTION = "pullcache", "distribution"
CACHES = (PULLCACHE, DISTRIBUTION)


@dataclass(frozen=True)
class Target:
    """A figure to reach: `ratio >= value`, or pullcache's median `< value` / `== value`."""

    kind: Literal["ratio_at_least", "below", "equals"]
    value: float

    def met(self, pullcache: float | None, ratio: float | None) -> bool | None:
        if self.kind == "ratio_at_least":
            return None if ratio is None else ratio >= self.value
        if pullcache is None:
            return None
        return pullcache < self.value if self.kind == "below" else pullcache == self.value

    def text(self, unit: str) -> str:
        if self.kind == "ratio_at_least":
            return f"ratio ≥ {self.value:g}×"
        return f"pullcache {'<' if self.kind == 'below' else '='} {self.value:g}{' ' + unit if unit else ''}"


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    better: Literal["higher", "lower"]
    target: Target | None = None


MiB = 1024 * 1024

METRICS: tuple[Metric, ...] = (
    Metric("cached_1", "cached 200 MiB layer, 1 client", "MB/s", "higher", Target("ratio_at_least", 1.5)),
    Metric("cached_8", "cached 200 MiB layer, 8 clients (aggregate)", "MB/s", "higher",
           Target("ratio_at_least", 1.5)),
    Metric("cpu_cached_8", "  server CPU during the 8-client run", "cores", "lower"),
    Metric("store_cpu_cached_8", "  object store (SeaweedFS) CPU during the 8-client run", "cores", "lower"),
    Metric("cpu_per_gb_cached", "  server CPU per GB served (8 clients)", "core-s/GB", "lower"),
    Metric("loadgen_cpu_cached_8", "  load generator (blobget) CPU during the 8-client run", "cores", "lower"),
    Metric("redirect_1", "cached layer, redirect mode (client follows the 307), 1 client", "MB/s", "higher"),
    Metric("redirect_8", "cached layer, redirect mode, 8 clients (aggregate)", "MB/s", "higher"),
    Metric("redirect_body_bytes_served", "  layer bytes the cache sent itself (pullcache's /metrics)", "bytes",
           "lower", Target("equals", 0)),
    Metric("redirect_origin_bytes", "  bytes a client received from the cache's port per GET (the 307)", "bytes",
           "lower"),
    Metric("cpu_redirect_8", "  server CPU during the 8-client redirect run", "cores", "lower"),
    Metric("store_cpu_redirect_8", "  object store CPU during the 8-client redirect run", "cores", "lower"),
    Metric("manifest_tag", "manifest by tag (cached), wrk 16 conns", "req/s", "higher",
           Target("ratio_at_least", 10)),
    Metric("manifest_tag_upstream", "  upstream manifest requests during that run", "", "lower"),
    Metric("cpu_manifest_tag", "  server CPU during that run", "cores", "lower"),
    Metric("store_cpu_manifest_tag", "  object store CPU during that run", "cores", "lower"),
    Metric("loadgen_cpu_manifest_tag", "  load generator (wrk) CPU during that run", "cores", "lower"),
    Metric("manifest_digest", "manifest by digest, wrk 16 conns", "req/s", "higher", Target("ratio_at_least", 3)),
    Metric("herd_fetches", "cold herd (16 × uncached 200 MiB): upstream fetches", "", "lower",
           Target("equals", 1)),
    Metric("herd_upstream_mib", "  bytes fetched from upstream", "MiB", "lower"),
    Metric("herd_ttfb_median", "cold herd: median time to first byte", "s", "lower", Target("below", 1)),
    Metric("herd_ttfb_worst", "cold herd: worst time to first byte", "s", "lower"),
    Metric("herd_done", "cold herd: time until all 16 are done", "s", "lower"),
    Metric("cpu_herd", "  server CPU during the cold herd", "cores", "lower"),
    Metric("store_cpu_herd", "  object store CPU during the cold herd", "cores", "lower"),
    Metric("replicas_herd_fetches", "cold herd over 3 replicas behind haproxy: upstream fetches", "", "lower",
           Target("equals", 1)),
    Metric("replicas_herd_upstream_mib", "  bytes fetched from upstream", "MiB", "lower"),
    Metric("replicas_herd_ttfb_median", "cold herd over 3 replicas: median time to first byte", "s", "lower",
           Target("below", 1)),
    Metric("replicas_herd_ttfb_worst", "cold herd over 3 replicas: worst time to first byte", "s", "lower"),
    Metric("replicas_herd_done", "cold herd over 3 replicas: time until all are done", "s", "lower"),
    Metric("cpu_replicas_herd", "  server CPU during it (the 3 server processes together)", "cores", "lower"),
    Metric("skopeo_cold", "skopeo copy --all, multi-platform image, cold", "s", "lower"),
    Metric("skopeo_warm", "skopeo copy --all, multi-platform image, warm", "s", "lower"),
    Metric("rss_idle", "RSS right after start-up, empty storage", "MiB", "lower"),
    Metric("rss_peak", "peak RSS, 16 clients streaming the uncached 1 GiB layer", "MiB", "lower",
           Target("below", 150)),
    Metric("rss_herd_fetches", "  upstream fetches of the 1 GiB layer", "", "lower", Target("equals", 1)),
    Metric("rss_herd_done", "  time until all 16 have the 1 GiB layer", "s", "lower"),
)
BY_KEY = {m.key: m for m in METRICS}


@dataclass(frozen=True)
class Summary:
    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Summary | None:
        return cls(statistics.median(values), min(values), max(values), len(values)) if values else None


@dataclass
class Results:
    """Per metric, per cache: the value of each round, and any failure messages."""

    values: dict[str, dict[str, list[float]]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(list)))
    failures: dict[str, dict[str, list[str]]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(list)))
    extra: dict[str, object] = field(default_factory=dict)  # scale, load-generator ceiling, notes

    def add(self, key: str, cache: str, value: float) -> None:
        assert key in BY_KEY, key
        self.values[key][cache].append(value)

    def fail(self, key: str, cache: str, reason: str) -> None:
        self.failures[key][cache].append(reason)

    def summary(self, key: str, cache: str) -> Summary | None:
        return Summary.of(self.values.get(key, {}).get(cache, []))

    def ratio(self, key: str) -> float | None:
        pc, dist = self.summary(key, PULLCACHE), self.summary(key, DISTRIBUTION)
        if pc is None or dist is None or dist.median == 0:
            return None
        return pc.median / dist.median

    def met(self, key: str) -> bool | None:
        metric = BY_KEY[key]
        if metric.target is None:
            return None
        pc = self.summary(key, PULLCACHE)
        return metric.target.met(pc.median if pc else None, self.ratio(key))

    def json(self) -> dict[str, object]:
        rows = []
        for metric in METRICS:
            row: dict[str, object] = {
                "key": metric.key, "label": metric.label.strip(), "unit": metric.unit,
                "better": metric.better,
                "target": metric.target.text(metric.unit) if metric.target else None,
                "ratio": self.ratio(metric.key), "met": self.met(metric.key),
            }
            for cache in CACHES:
                summary = self.summary(metric.key, cache)
                row[cache] = {
                    "rounds": self.values.get(metric.key, {}).get(cache, []),
                    "median": summary.median if summary else None,
                    "min": summary.low if summary else None,
                    "max": summary.high if summary else None,
                    "failures": self.failures.get(metric.key, {}).get(cache, []),
                }
            rows.append(row)
        return {"metrics": rows, **self.extra}
