"""The Prometheus objects whose names and labels are part of pullcache's contract (DESIGN.md).

With `workers: N` (N > 1) every worker writes its values to files in PROMETHEUS_MULTIPROC_DIR (pullcache.workers
sets it before this module is imported) and /metrics reads them all (exposition()): counters and histograms
are summed over the workers, and each gauge says how its workers' values combine (multiprocess_mode, which
prometheus_client ignores in one process). The store gauges follow the index every worker shares: the
most recent value, not one per worker summed, and so does the members count, which every worker reads
from the shared roster; the gauges of one process's own work are summed over the live workers; coordination
is up only while every live worker has it (the minimum).
"""
from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

from pullcache import metric_files

REGISTRY = CollectorRegistry(auto_describe=True)
MULTIPROCESS = "PROMETHEUS_MULTIPROC_DIR" in os.environ
if MULTIPROCESS:
    metric_files.install()  # before the first metric below is made

http_requests = Counter(
    "pullcache_http_requests_total", "HTTP requests answered", ["method", "route", "code"], registry=REGISTRY)
http_request_duration = Histogram(
    "pullcache_http_request_duration_seconds", "Time to answer an HTTP request (headers and body)", ["route"],
    registry=REGISTRY)
cache_requests = Counter(
    "pullcache_cache_requests_total", "Pull-through requests by cache outcome", ["kind", "upstream", "result"],
    registry=REGISTRY)
bytes_served = Counter(
    "pullcache_bytes_served_total", "Body bytes sent to clients by where they came from", ["source"],
    registry=REGISTRY)
upstream_requests = Counter(
    "pullcache_upstream_requests_total", "Requests sent to upstream registries", ["upstream", "method", "code"],
    registry=REGISTRY)
upstream_request_duration = Histogram(
    "pullcache_upstream_request_duration_seconds", "Time until an upstream answered with headers", ["upstream"],
    registry=REGISTRY)
upstream_ratelimit_remaining = Gauge(
    "pullcache_upstream_ratelimit_remaining", "Pulls left in the upstream's rate-limit window (ratelimit-remaining)",
    ["upstream"], registry=REGISTRY, multiprocess_mode="mostrecent")
store_bytes = Gauge("pullcache_store_bytes", "Bytes of blobs in the store", ["origin"], registry=REGISTRY,
                    multiprocess_mode="mostrecent")
store_blobs = Gauge("pullcache_store_blobs", "Blobs in the store", ["origin"], registry=REGISTRY,
                    multiprocess_mode="mostrecent")
store_max_bytes = Gauge("pullcache_store_max_bytes", "Configured bound on cached content (storage.max_size)",
                        registry=REGISTRY, multiprocess_mode="mostrecent")
inflight_fetches = Gauge("pullcache_inflight_fetches", "Upstream blob fetches under way", registry=REGISTRY,
                         multiprocess_mode="livesum")
evictions = Counter("pullcache_evictions_total", "Cached blobs evicted by the LRU bound", registry=REGISTRY)
evicted_bytes = Counter("pullcache_evicted_bytes_total", "Bytes evicted by the LRU bound", registry=REGISTRY)
cluster_lease_held = Gauge("pullcache_cluster_lease_held",
                           "1 in the process holding the lease (eviction: runs eviction passes and GC)",
                           ["lease"], registry=REGISTRY, multiprocess_mode="livesum")
cluster_members = Gauge(
    "pullcache_cluster_members", "pullcache processes (replicas, workers) serving this store, as the last heartbeat "
    "saw them", registry=REGISTRY, multiprocess_mode="livemostrecent")
cluster_coordination_up = Gauge(
    "pullcache_cluster_coordination_up", "1 while coordination works (Redis answers; always 1 embedded unless "
    "storage.path fails), 0 while degraded", registry=REGISTRY, multiprocess_mode="livemin")
gc_runs = Counter("pullcache_gc_runs_total", "Garbage-collection sweeps completed", registry=REGISTRY)
gc_reclaimed_bytes = Counter("pullcache_gc_reclaimed_bytes_total", "Bytes removed by garbage collection",
                             registry=REGISTRY)
storage_requests = Counter(
    "pullcache_storage_requests_total", "Requests to the storage backend by operation and outcome",
    ["backend", "op", "code"], registry=REGISTRY)
storage_request_duration = Histogram(
    "pullcache_storage_request_duration_seconds", "Time a storage backend request took", ["backend", "op"],
    registry=REGISTRY)
notifications = Counter(
    "pullcache_notifications_total", "Event envelopes' events by endpoint: sent, failed (one failed attempt each), "
    "dropped (queue full, or still queued at shutdown)", ["endpoint", "result"], registry=REGISTRY)
notifications_pending = Gauge(
    "pullcache_notifications_pending", "Events waiting for an endpoint", ["endpoint"], registry=REGISTRY,
    multiprocess_mode="livesum")
upstream_url_up = Gauge(
    "pullcache_upstream_url_up", "1 while requests may go to this URL of the upstream, 0 while it is skipped "
    "after failing (circuit breaker)", ["upstream", "url"], registry=REGISTRY, multiprocess_mode="livemin")
upstream_retries = Counter(
    "pullcache_upstream_retries_total", "Upstream requests sent again after a transient failure",
    ["upstream", "reason"], registry=REGISTRY)
policy_denied = Counter(
    "pullcache_policy_denied_total", "Pulls refused by an upstream's pull policy (rules)", ["upstream"],
    registry=REGISTRY)


def exposition() -> bytes:
    """The text /metrics answers: this process's registry, or with workers every live and past worker's files
    (read from disk: call it off the event loop)."""
    if not MULTIPROCESS:
        return generate_latest(REGISTRY)
    metric_files.flush()  # this worker's own counts are exact; the others' at most FLUSH_SECONDS old
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry)
