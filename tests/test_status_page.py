"""The status page at /: rendered by a real headless Chromium, it shows the figures /metrics exports.

Prometheus counters live for the whole test process, so the scripted figures use an upstream name unique
to each test, and process-wide totals are compared with what /metrics says. Pull counts belong to each
server (its app's PULL_COUNTS), so a test's page lists only the pulls that test made.
"""
from __future__ import annotations

import asyncio
import json
import struct
import uuid
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from pullcache import metrics
from pullcache.api import status_page
from pullcache.api.appkeys import PULL_COUNTS
from pullcache.api.status_page import HEALTH_WINDOW, HealthWindow, PullCounts, Tally, upstream_state
from pullcache.app import build_app
from pullcache.config import build_config
from tests.fault_upstream import FakeRegistry
from tests.test_metrics_endpoint import Scrape

CHROMIUM = ["/usr/bin/chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"]
CHROMIUM_TIMEOUT = 60.0
MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": 2,
                                  "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"},
                       "layers": []}).encode()


async def chromium(profile: Path, *args: str) -> bytes:
    """Run Chromium without blocking the event loop (the page is served from this loop); its stdout."""
    process = await asyncio.create_subprocess_exec(
        *CHROMIUM, f"--user-data-dir={profile}", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(process.communicate(), CHROMIUM_TIMEOUT)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, err.decode(errors="replace")[-2000:]
    return out


class Cells(HTMLParser):
    """The visible text of a document, by section id: {"upstreams": [[cell, cell, ...] per row], ...} and
    the text of each section as one string."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, list[list[str]]] = {}
        self.text: dict[str, str] = {}
        self._section: str | None = None
        self._row: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "section":
            self._section = dict(attrs).get("id") or ""
            self.rows[self._section], self.text[self._section] = [], ""
        elif tag == "tr" and self._section is not None:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._row.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr" and self._row is not None and self._section is not None:
            self.rows[self._section].append([cell.strip() for cell in self._row])
            self._row = None
        elif tag == "section":
            self._section = None

    def handle_data(self, data: str) -> None:
        if self._section is not None:
            self.text[self._section] += data
        if self._row:
            self._row[-1] += data


def parse(dom: str) -> Cells:
    cells = Cells()
    cells.feed(dom)
    return cells


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.fixture
def upstream_name() -> str:
    return f"mirror-{uuid.uuid4().hex[:8]}.example"


@pytest.fixture
async def client(aiohttp_client: Any, tmp_path: Path, upstream_name: str) -> TestClient:
    config = build_config({
        "storage": {"path": str(tmp_path / "data"), "max_size": "2GiB"},
        "upstreams": [{"name": upstream_name, "url": "https://registry.mirror.example", "default": True},
                      {"name": f"quiet-{upstream_name}", "url": "https://quiet.mirror.example"}]})
    return await aiohttp_client(build_app(config))


def script_traffic(upstream: str, pulls: PullCounts) -> str:
    """Count what pull-through traffic through `upstream` would count; returns the most pulled repository."""
    metrics.cache_requests.labels("blob", upstream, "hit").inc(30)
    metrics.cache_requests.labels("blob", upstream, "miss").inc(10)
    metrics.bytes_served.labels("cache").inc(3 * 1024**3)
    metrics.bytes_served.labels("upstream").inc(1024**3)
    metrics.upstream_requests.labels(upstream, "GET", "200").inc(40)
    metrics.upstream_requests.labels(upstream, "GET", "503").inc(10)
    metrics.upstream_ratelimit_remaining.labels(upstream).set(77)
    repository = f"{upstream}/team/app"
    for _ in range(25_000):  # enough for a thousands separator
        pulls.add(repository)
    for _ in range(3):
        pulls.add(f"{upstream}/library/rare")
    return repository


async def test_chromium_renders_the_figures(client: TestClient, upstream_name: str, tmp_path: Path) -> None:
    repository = script_traffic(upstream_name, client.app[PULL_COUNTS])
    url = str(client.make_url("/"))
    screenshot = tmp_path / "status.png"
    await chromium(tmp_path / "profile-shot", f"--screenshot={screenshot}", "--window-size=1280,1000", url)
    dom = (await chromium(tmp_path / "profile-dom", "--dump-dom", url)).decode()
    scraped = Scrape(await (await client.get("/metrics")).text())

    image = screenshot.read_bytes()
    assert png_size(image) == (1280, 1000)
    assert len(image) > 30_000  # text, charts and tables; a blank page compresses to a few KiB

    page = parse(dom)
    hits = scraped.value("pullcache_cache_requests_total", result="hit")
    requests = scraped.value("pullcache_cache_requests_total")
    assert f"{hits / requests * 100:.1f}%" in page.text["hit-ratio"]
    assert f"{hits:,.0f} hits of {requests:,.0f}" in page.text["hit-ratio"]

    cache_bytes = status_page.human_bytes(scraped.value("pullcache_bytes_served_total", source="cache"))
    assert f"cache {cache_bytes}" in page.text["bytes-served"]
    assert "of 2.0 GiB" in page.text["store"]

    upstreams = {row[0].split("https://")[0]: row[1:] for row in page.rows["upstreams"][1:]}
    assert upstreams[upstream_name] == ["degraded", "50", "10", "0", "77"]
    assert upstreams[f"quiet-{upstream_name}"] == ["idle", "0", "0", "0", "–"]

    assert page.rows["top-images"][1:] == [[repository, "", "25,000"], [f"{upstream_name}/library/rare", "", "3"]]


async def test_page_is_self_contained_html_without_scripts(client: TestClient) -> None:
    response = await client.get("/")
    assert response.status == 200
    assert response.content_type == "text/html"
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    assert response.headers["Cache-Control"] == "no-store"
    body = await response.text()
    assert body.startswith("<!doctype html>")
    assert "<script" not in body and "<svg" in body


async def test_repository_names_are_escaped(client: TestClient) -> None:
    client.app[PULL_COUNTS].add("<img src=x onerror=alert(1)>")
    body = await (await client.get("/")).text()
    assert "<img src=x" not in body
    assert "&lt;img src=x onerror=alert(1)&gt;" in body


@pytest.fixture
async def registry(aiohttp_server: Any) -> FakeRegistry:
    """An upstream holding library/app:v1."""
    registry = await FakeRegistry().start(aiohttp_server)
    registry.add_manifest("library/app", "v1", MANIFEST)
    return registry


async def mirror_of(registry: FakeRegistry, aiohttp_client: Any, data: Path, upstream_name: str) -> TestClient:
    config = build_config({"storage": {"path": str(data)},
                           "upstreams": [{"name": upstream_name, "url": registry.url, "default": True}]})
    return await aiohttp_client(build_app(config))


async def top_images(client: TestClient) -> list[list[str]]:
    """The rows of the page's most pulled images table, below its header."""
    return parse(await (await client.get("/")).text()).rows["top-images"][1:]


async def test_manifest_gets_answered_200_count_as_pulls(
        registry: FakeRegistry, aiohttp_client: Any, tmp_path: Path, upstream_name: str) -> None:
    client = await mirror_of(registry, aiohttp_client, tmp_path / "data", upstream_name)
    for method, reference in [("GET", "v1"), ("GET", "v1"), ("HEAD", "v1"), ("GET", "v2")]:
        await client.request(method, f"/v2/{upstream_name}/library/app/manifests/{reference}")
    # the HEAD and the 404 are no pulls
    assert await top_images(client) == [[f"{upstream_name}/library/app", "", "2"]]


async def test_each_server_counts_its_own_pulls(
        registry: FakeRegistry, aiohttp_client: Any, tmp_path: Path, upstream_name: str) -> None:
    pulled = await mirror_of(registry, aiohttp_client, tmp_path / "pulled", upstream_name)
    idle = await mirror_of(registry, aiohttp_client, tmp_path / "idle", upstream_name)
    assert (await pulled.get(f"/v2/{upstream_name}/library/app/manifests/v1")).status == 200
    assert await top_images(pulled) == [[f"{upstream_name}/library/app", "", "1"]]
    assert await top_images(idle) == [["no image pulled yet"]]


@pytest.mark.parametrize(("recent", "remaining", "state"), [
    (Tally(0, 0, 0), None, "idle"),
    (Tally(0, 0, 0), 0, "rate limited"),
    (Tally(100, 0, 0), 50, "healthy"),
    (Tally(100, 5, 0), None, "healthy"),
    (Tally(100, 6, 0), None, "degraded"),
    (Tally(100, 0, 1), None, "rate limited"),
    (Tally(100, 0, 0), 0, "rate limited"),
    (Tally(7, 7, 0), None, "down"),
])
def test_upstream_state_from_recent_requests(recent: Tally, remaining: float | None, state: str) -> None:
    assert upstream_state(recent, remaining) == state


def test_health_looks_at_the_last_minutes_not_since_start() -> None:
    window = HealthWindow(started=0.0)
    recent, since = window.recent(60.0, {"up": Tally(10, 10, 0)})  # an outage right after start
    assert (recent["up"], since) == (Tally(10, 10, 0), 60.0)
    window.recent(120.0, {"up": Tally(10, 10, 0)})
    recent, since = window.recent(120.0 + HEALTH_WINDOW, {"up": Tally(110, 10, 0)})  # since then: all fine
    assert recent["up"] == Tally(100, 0, 0)
    assert since == HEALTH_WINDOW


def test_pull_counts_stay_bounded_and_keep_the_most_pulled() -> None:
    counts = PullCounts(limit=100)
    for _ in range(50):
        counts.add("popular")
    for number in range(1000):
        counts.add(f"once-{number}")
    assert len(counts.top(10_000)) <= 100
    assert counts.top(1) == [("popular", 50)]


async def test_the_page_says_pushes_are_refused_and_how_to_enable_them(client: TestClient) -> None:
    body = await (await client.get("/")).text()
    assert "pushes refused" in body
    assert "auth.htpasswd" in body and "local.anonymous_push: true" in body


async def test_the_page_says_when_anyone_may_push(aiohttp_client: Any, tmp_path: Path) -> None:
    config = build_config({"storage": {"path": str(tmp_path / "data")}, "local": {"anonymous_push": True}})
    body = await (await (await aiohttp_client(build_app(config))).get("/")).text()
    assert "pushes allowed for anyone" in body
