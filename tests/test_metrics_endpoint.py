"""/metrics: every contract metric in Prometheus' text format, and each HTTP request counted once under
its route (never its path), method and status. Counters live for the whole test process, so these
tests compare a scrape before with one after."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from pullcache.app import build_app
from pullcache.config import build_config

# DESIGN.md "Metrics" (plus pullcache_store_max_bytes, which the status page and alerts compare against).
CONTRACT = {
    "pullcache_http_requests_total": ("counter", {"method", "route", "code"}),
    "pullcache_http_request_duration_seconds": ("histogram", {"route"}),
    "pullcache_cache_requests_total": ("counter", {"kind", "upstream", "result"}),
    "pullcache_bytes_served_total": ("counter", {"source"}),
    "pullcache_upstream_requests_total": ("counter", {"upstream", "method", "code"}),
    "pullcache_upstream_request_duration_seconds": ("histogram", {"upstream"}),
    "pullcache_upstream_ratelimit_remaining": ("gauge", {"upstream"}),
    "pullcache_store_bytes": ("gauge", {"origin"}),
    "pullcache_store_blobs": ("gauge", {"origin"}),
    "pullcache_store_max_bytes": ("gauge", set()),
    "pullcache_inflight_fetches": ("gauge", set()),
    "pullcache_evictions_total": ("counter", set()),
    "pullcache_evicted_bytes_total": ("counter", set()),
    "pullcache_gc_runs_total": ("counter", set()),
    "pullcache_gc_reclaimed_bytes_total": ("counter", set()),
}
ROUTES = {"base", "catalog", "manifest", "blob", "upload", "tags", "referrers",
          "metrics", "healthz", "readyz", "status", "other"}


class Scrape:
    """One /metrics answer, parsed by prometheus_client's own parser."""

    def __init__(self, text: str) -> None:
        self.families = list(text_string_to_metric_families(text))

    def samples(self, name: str) -> list[Any]:
        return [sample for family in self.families for sample in family.samples if sample.name == name]

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples called `name` whose labels include `labels`; 0 when there is none."""
        return sum(s.value for s in self.samples(name) if labels.items() <= s.labels.items())

    def label_values(self, name: str, label: str) -> set[str]:
        return {s.labels[label] for s in self.samples(name)}


async def scrape(client: TestClient) -> Scrape:
    response = await client.get("/metrics")
    assert response.status == 200
    return Scrape(await response.text())


def family_name(name: str, kind: str) -> str:
    """The parser names a counter's family without its _total suffix."""
    return name.removesuffix("_total") if kind == "counter" else name


@pytest.fixture
async def client(aiohttp_client: Any, tmp_path: Path) -> TestClient:
    config = build_config({"storage": {"path": str(tmp_path / "data"), "max_size": "3GiB"},
                           "upstreams": [{"name": "docker.io", "url": "http://127.0.0.1:9", "default": True}]})
    return await aiohttp_client(build_app(config))


async def test_exposition_is_prometheus_text(client: TestClient) -> None:
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    process = await asyncio.create_subprocess_exec(
        "promtool", "check", "metrics", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    output, _ = await process.communicate(await response.read())
    assert process.returncode == 0, output.decode()


async def test_every_contract_metric_is_exported_with_its_type(client: TestClient) -> None:
    await client.get("/healthz")  # so that the HTTP metrics have samples whose labels can be checked
    families = {family.name: family for family in (await scrape(client)).families}
    for name, (kind, labels) in CONTRACT.items():
        family = families.get(family_name(name, kind))
        assert family is not None, f"{name} missing from /metrics"
        assert family.type == kind, name
        for sample in family.samples:
            assert set(sample.labels) - {"le"} == labels, (name, sample.labels)


async def test_store_bound_is_the_configured_max_size(client: TestClient) -> None:
    assert (await scrape(client)).value("pullcache_store_max_bytes") == 3 * 1024**3


async def test_each_request_is_counted_once_by_route_method_and_code(client: TestClient) -> None:
    before = await scrape(client)
    requests = [("GET", "/healthz"), ("GET", "/healthz"), ("HEAD", "/healthz"), ("GET", "/readyz"),
                ("GET", "/"), ("GET", "/v2/"), ("GET", "/no/such/page"), ("POST", "/healthz"),
                ("GET", "/v2/library/alpine/manifests/latest")]
    for method, path in requests:
        await client.request(method, path)
    after = await scrape(client)

    def added(**labels: str) -> float:
        return (after.value("pullcache_http_requests_total", **labels)
                - before.value("pullcache_http_requests_total", **labels))

    assert added(route="healthz", method="GET", code="200") == 2
    assert added(route="healthz", method="HEAD", code="200") == 1
    assert added(route="readyz", method="GET", code="200") == 1
    assert added(route="status", method="GET", code="200") == 1
    assert added(route="base", method="GET", code="200") == 1
    assert added(route="other", method="GET", code="404") == 1
    assert added(route="other", method="POST", code="405") == 1
    assert added(route="manifest", method="GET") == 1
    # the scrape before is counted too (after it answered); the scrape after is not yet
    assert added(route="metrics", method="GET", code="200") == 1
    assert added() == len(requests) + 1


async def test_every_request_is_timed_under_its_route(client: TestClient) -> None:
    before = await scrape(client)
    for path in ("/healthz", "/healthz", "/nothing-here"):
        await client.get(path)
    after = await scrape(client)
    name = "pullcache_http_request_duration_seconds_count"
    assert after.value(name, route="healthz") - before.value(name, route="healthz") == 2
    assert after.value(name, route="other") - before.value(name, route="other") == 1


async def test_route_labels_never_carry_request_paths(client: TestClient) -> None:
    for path in ("/a/b/c", "/v2/x", "/v2/UPPER/manifests/latest", "/v2/library/alpine/blobs/sha256:zz",
                 "/v2/team/app/tags/list", "/v2/team/app/blobs/uploads/", "/favicon.ico", "/v2/_catalog"):
        await client.get(path)
    result = await scrape(client)
    assert result.label_values("pullcache_http_requests_total", "route") <= ROUTES
    assert result.label_values("pullcache_http_request_duration_seconds_count", "route") <= ROUTES


async def test_unknown_methods_share_one_label(client: TestClient) -> None:
    await client.request("BREW", "/healthz")
    methods = (await scrape(client)).label_values("pullcache_http_requests_total", "method")
    assert "BREW" not in methods
    assert methods <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}


async def test_disabled_metrics_answer_404(aiohttp_client: Any, tmp_path: Path) -> None:
    config = build_config({"storage": {"path": str(tmp_path)}, "metrics": {"enabled": False}})
    client = await aiohttp_client(build_app(config))
    assert (await client.get("/metrics")).status == 404
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/")).status == 200
