"""The status page at `/`: what a person with a browser wants to know about this mirror at a glance.

Hit ratio, bytes served by source, the store against its bound, upstream health, rate limit and last
error, the most pulled images. Server-rendered HTML with inline SVG charts and inline CSS: it needs no JavaScript
and no other request. Every figure comes from the Prometheus objects in pullcache.metrics (the same
numbers /metrics exports), except the pull counts: each application keeps its own PullCounts (ops.setup
puts it under appkeys.PULL_COUNTS, the access middleware adds every manifest pull to it), and each
upstream's last error, which pullcache.upstream.health keeps, and the cluster: the members and the
coordination state of the last heartbeat (pullcache.cluster.members), read from the roster every process
shares, so that with `workers: N` or replicas each process's page lists the same members.
"""
from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape

from prometheus_client.metrics import MetricWrapperBase

from pullcache import __version__, metrics
from pullcache.cluster.members import ClusterView
from pullcache.config import Config, UpstreamConfig
from pullcache.startup import push_policy
from pullcache.upstream import budget
from pullcache.upstream.health import LastError, last_error

STARTED = time.time()
TOP_IMAGES = 10
MAX_REPOSITORIES = 1000      # pull counts kept in memory; past this the least pulled half is forgotten
HEALTH_WINDOW = 300.0        # upstream health looks at roughly the last five minutes...
HEALTH_SAMPLE_EVERY = 30.0   # ...by keeping a snapshot of the request counters this often (on page views)
DEGRADED_SHARE = 0.05        # more failed upstream requests than this share: degraded
RESULTS = ("hit", "revalidated", "coalesced", "stale", "miss")
SOURCES = ("cache", "upstream", "local")
COLORS = {
    "hit": "#2f855a", "revalidated": "#38a169", "coalesced": "#68d391", "stale": "#d69e2e", "miss": "#3182ce",
    "cache": "#2f855a", "upstream": "#3182ce", "local": "#805ad5",
}


# ---------------------------------------------------------------------------------- pull counts

class PullCounts:
    """Manifest GETs per repository (its store name, e.g. docker.io/library/alpine) answered 200 since start,
    bounded so that many names cannot grow it without limit."""

    def __init__(self, limit: int = MAX_REPOSITORIES) -> None:
        self._limit = limit
        self._counts: Counter[str] = Counter()

    def add(self, repository: str) -> None:
        self._counts[repository] += 1
        if len(self._counts) > self._limit:
            self._counts = Counter(dict(self._counts.most_common(self._limit // 2)))

    def top(self, n: int) -> list[tuple[str, int]]:
        return self._counts.most_common(n)


# ---------------------------------------------------------------------------------- reading metrics

def _samples(metric: MetricWrapperBase, suffix: str = "") -> list[tuple[Mapping[str, str], float]]:
    """(labels, value) of every child; counters' values are the `_total` samples (suffix="_total")."""
    return [(sample.labels, sample.value) for family in metric.collect() for sample in family.samples
            if sample.name == family.name + suffix]


def _sum_by(samples: Iterable[tuple[Mapping[str, str], float]], label: str) -> dict[str, float]:
    sums: dict[str, float] = {}
    for labels, value in samples:
        sums[labels[label]] = sums.get(labels[label], 0.0) + value
    return sums


def _total(metric: MetricWrapperBase, suffix: str = "") -> float:
    return sum(value for _, value in _samples(metric, suffix))


@dataclass(frozen=True)
class Tally:
    """Upstream requests: all of them, the failed ones (network errors, 5xx) and the throttled ones (429)."""
    requests: float = 0.0
    failures: float = 0.0
    throttled: float = 0.0

    def __add__(self, other: Tally) -> Tally:
        return Tally(self.requests + other.requests, self.failures + other.failures, self.throttled + other.throttled)

    def __sub__(self, other: Tally) -> Tally:
        return Tally(self.requests - other.requests, self.failures - other.failures, self.throttled - other.throttled)


def _upstream_tallies() -> dict[str, Tally]:
    tallies: dict[str, Tally] = {}
    for labels, value in _samples(metrics.upstream_requests, "_total"):
        code = labels["code"]
        failed = code == "error" or code.startswith("5")
        tallies[labels["upstream"]] = tallies.get(labels["upstream"], Tally()) + Tally(
            value, value if failed else 0.0, value if code == "429" else 0.0)
    return tallies


class HealthWindow:
    """Upstream request counters count since start, but health is about now.

    Each page view may keep a snapshot of the counters; health is today's counters minus the newest
    snapshot that is at least HEALTH_WINDOW old (or minus zero at start, while none is that old yet).
    """

    def __init__(self, started: float) -> None:
        self._snapshots: deque[tuple[float, dict[str, Tally]]] = deque([(started, {})])

    def recent(self, now: float, totals: dict[str, Tally]) -> tuple[dict[str, Tally], float]:
        """(per upstream: requests since the baseline, seconds the baseline lies back)."""
        while len(self._snapshots) > 1 and self._snapshots[1][0] <= now - HEALTH_WINDOW:
            self._snapshots.popleft()
        since, baseline = self._snapshots[0]
        if now - self._snapshots[-1][0] >= HEALTH_SAMPLE_EVERY:
            self._snapshots.append((now, dict(totals)))
        return {name: tally - baseline.get(name, Tally()) for name, tally in totals.items()}, now - since


_health = HealthWindow(STARTED)


def upstream_state(recent: Tally, ratelimit_remaining: float | None) -> str:
    if recent.requests == 0:
        return "rate limited" if ratelimit_remaining == 0 else "idle"
    if recent.failures >= recent.requests:
        return "down"
    if recent.throttled or ratelimit_remaining == 0:
        return "rate limited"
    if recent.failures / recent.requests > DEGRADED_SHARE:
        return "degraded"
    return "healthy"


@dataclass(frozen=True)
class UpstreamFigures:
    name: str
    url: str  # the URL in use: the first one not skipped after failing (pullcache_upstream_url_up)
    state: str
    recent: Tally
    ratelimit_remaining: float | None
    last_error: LastError | None = None
    primary: str | None = None  # set when the URL in use is a fallback: the primary being skipped
    saving: bool = False  # down to its rate-limit reserve: cached tags are not revalidated


def _url_in_use(upstream: UpstreamConfig, up: Mapping[tuple[str, str], float]) -> str:
    """The upstream's first URL not skipped after failing (no sample yet: not known to fail)."""
    return next((url for url in upstream.all_urls if up.get((upstream.name, url), 1.0)), upstream.url)


@dataclass(frozen=True)
class Figures:
    """Everything the page shows, read at one moment."""
    now: float
    cache_results: dict[str, float]
    bytes_served: dict[str, float]
    store_bytes: dict[str, float]
    store_blobs: dict[str, float]
    store_max_bytes: float
    inflight_fetches: float
    evictions: float
    evicted_bytes: float
    gc_runs: float
    gc_reclaimed_bytes: float
    http_requests: float
    upstreams: list[UpstreamFigures]
    health_window: float
    top_images: list[tuple[str, int]]
    push_policy: str
    cluster: ClusterView

    @property
    def cache_requests(self) -> float:
        return sum(self.cache_results.values())

    @property
    def hit_ratio(self) -> float | None:
        """Hits over all cache requests: the same ratio the shipped Grafana dashboard plots."""
        return self.cache_results.get("hit", 0.0) / self.cache_requests if self.cache_requests else None


def read_figures(config: Config, pulls: PullCounts, cluster: ClusterView, now: float | None = None) -> Figures:
    now = time.time() if now is None else now
    remaining = {labels["upstream"]: value for labels, value in _samples(metrics.upstream_ratelimit_remaining)}
    recent, window = _health.recent(now, _upstream_tallies())
    up = {(labels["upstream"], labels["url"]): value for labels, value in _samples(metrics.upstream_url_up)}
    upstreams = []
    for u in config.upstreams:
        in_use = _url_in_use(u, up)
        upstreams.append(UpstreamFigures(
            u.name, in_use, upstream_state(recent.get(u.name, Tally()), remaining.get(u.name)),
            recent.get(u.name, Tally()), remaining.get(u.name), last_error(u.name),
            primary=u.url if in_use != u.url else None, saving=budget.saving(u.name)))
    return Figures(
        now=now,
        cache_results=_sum_by(_samples(metrics.cache_requests, "_total"), "result"),
        bytes_served=_sum_by(_samples(metrics.bytes_served, "_total"), "source"),
        store_bytes=_sum_by(_samples(metrics.store_bytes), "origin"),
        store_blobs=_sum_by(_samples(metrics.store_blobs), "origin"),
        store_max_bytes=_total(metrics.store_max_bytes),
        inflight_fetches=_total(metrics.inflight_fetches),
        evictions=_total(metrics.evictions, "_total"),
        evicted_bytes=_total(metrics.evicted_bytes, "_total"),
        gc_runs=_total(metrics.gc_runs, "_total"),
        gc_reclaimed_bytes=_total(metrics.gc_reclaimed_bytes, "_total"),
        http_requests=_total(metrics.http_requests, "_total"),
        upstreams=upstreams,
        health_window=window,
        top_images=pulls.top(TOP_IMAGES),
        push_policy=push_policy(config),
        cluster=cluster,
    )


# ---------------------------------------------------------------------------------- formatting

def human_bytes(value: float) -> str:
    """1536 -> '1.5 KiB'; IEC units, as storage.max_size is usually written."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_count(value: float) -> str:
    return f"{value:,.0f}"


def human_duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [f"{days}d"] * bool(days) + [f"{hours}h"] * bool(hours) + [f"{minutes}m"] * bool(minutes)
    return " ".join(parts[:2]) or f"{seconds}s"


def percent(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.1f}%"


# ---------------------------------------------------------------------------------- charts (inline SVG)

def stacked_bar(parts: list[tuple[str, float]], label: str) -> str:
    """One horizontal bar split into coloured parts by share; an empty grey bar when everything is zero."""
    total = sum(value for _, value in parts)
    rects, x = [], 0.0
    for name, value in parts:
        if total and value:
            width = value / total * 100
            rects.append(f'<rect x="{x:.3f}" y="0" width="{width:.3f}" height="10" fill="{COLORS[name]}">'
                         f'<title>{escape(name)}</title></rect>')
            x += width
    return (f'<svg class="bar" viewBox="0 0 100 10" preserveAspectRatio="none" role="img" '
            f'aria-label="{escape(label)}"><rect width="100" height="10" fill="#e2e8f0"/>{"".join(rects)}</svg>')


def donut(ratio: float | None, label: str) -> str:
    """A ring filled to `ratio` with the percentage in the middle."""
    circumference = 2 * 3.14159265 * 40
    filled = (ratio or 0.0) * circumference
    return (f'<svg class="donut" viewBox="0 0 100 100" role="img" aria-label="{escape(label)}">'
            f'<circle cx="50" cy="50" r="40" fill="none" stroke="#e2e8f0" stroke-width="14"/>'
            f'<circle cx="50" cy="50" r="40" fill="none" stroke="{COLORS["hit"]}" stroke-width="14" '
            f'stroke-dasharray="{filled:.2f} {circumference:.2f}" transform="rotate(-90 50 50)"/>'
            f'<text x="50" y="56" text-anchor="middle" font-size="17" font-weight="600" fill="#1a202c">'
            f'{percent(ratio)}</text></svg>')


def gauge(used: float, bound: float, label: str) -> str:
    """Use of a bound: green, amber past 80%, red past 95%."""
    share = min(used / bound, 1.0) if bound else 0.0
    color = "#c53030" if share > 0.95 else "#d69e2e" if share > 0.8 else "#2f855a"
    return (f'<svg class="bar" viewBox="0 0 100 10" preserveAspectRatio="none" role="img" '
            f'aria-label="{escape(label)}"><rect width="100" height="10" fill="#e2e8f0"/>'
            f'<rect width="{share * 100:.3f}" height="10" fill="{color}"/></svg>')


def share_bar(share: float) -> str:
    """A plain proportional bar for table rows."""
    return (f'<svg class="bar" viewBox="0 0 100 10" preserveAspectRatio="none" aria-hidden="true">'
            f'<rect width="{share * 100:.3f}" height="10" fill="{COLORS["local"]}"/></svg>')


def legend(parts: list[tuple[str, str]]) -> str:
    items = "".join(f'<li><span class="swatch" style="background:{COLORS[name]}"></span>{escape(name)} '
                    f'<b>{escape(text)}</b></li>' for name, text in parts)
    return f'<ul class="legend">{items}</ul>'


# ---------------------------------------------------------------------------------- the page

STYLE = """
*{box-sizing:border-box}
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
     color:#1a202c;background:#f4f6f9}
header{background:#1a202c;color:#f7fafc;padding:18px 32px;display:flex;align-items:baseline;gap:18px}
header h1{margin:0;font-size:22px;letter-spacing:.3px}
header p{margin:0;color:#a0aec0;font-size:13px}
main{padding:24px 32px;max-width:1400px}
.grid{display:grid;grid-template-columns:repeat(3,1fr);gap:20px;margin-bottom:20px}
.wide{display:grid;grid-template-columns:1fr 1fr;gap:20px}
section{background:#fff;border-radius:10px;padding:18px 20px;box-shadow:0 1px 3px rgba(0,0,0,.08)}
h2{margin:0 0 12px;font-size:13px;text-transform:uppercase;letter-spacing:.8px;color:#4a5568}
.big{font-size:30px;font-weight:650;margin:0}
.sub{color:#4a5568;margin:2px 0 12px;font-size:13px}
.split{display:flex;gap:18px;align-items:center}
.donut{width:120px;height:120px;flex:none}
.bar{width:100%;height:14px;border-radius:4px;display:block;margin:6px 0 10px}
.legend{list-style:none;margin:0;padding:0;font-size:13px;color:#4a5568}
.legend li{margin:3px 0}
.legend b{color:#1a202c;font-weight:600}
.swatch{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:6px}
table{width:100%;border-collapse:collapse;font-size:14px}
th{text-align:left;font-weight:600;color:#4a5568;font-size:12px;text-transform:uppercase;letter-spacing:.5px;white-space:nowrap;
   border-bottom:1px solid #e2e8f0;padding:6px 8px}
td{padding:7px 8px;border-bottom:1px solid #edf2f7;vertical-align:middle}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.url{color:#718096;font-size:12px;white-space:nowrap}
tr.has-error td{border-bottom:none}
td.last-error{color:#822727;font-size:12px;padding-top:0;word-break:break-word}
.pill{display:inline-block;padding:1px 9px;border-radius:10px;font-size:12px;font-weight:600;white-space:nowrap}
.healthy{background:#c6f6d5;color:#22543d}.idle{background:#e2e8f0;color:#4a5568}
.degraded,.rate-limited{background:#feebc8;color:#7b341e}.down{background:#fed7d7;color:#822727}
.empty{color:#718096;font-style:italic}
.cluster{margin-top:20px}
.facts{display:flex;gap:28px;flex-wrap:wrap;margin-top:20px;color:#4a5568;font-size:13px}
.facts b{color:#1a202c}
"""


def _hit_section(f: Figures) -> str:
    results = [(r, f.cache_results.get(r, 0.0)) for r in RESULTS]
    sub = (f"{human_count(f.cache_results.get('hit', 0.0))} hits of {human_count(f.cache_requests)} "
           "manifest and blob requests" if f.cache_requests else "no pulls through the cache yet")
    return (f'<section id="hit-ratio"><h2>Cache hit ratio</h2><div class="split">'
            f'{donut(f.hit_ratio, "hit ratio " + percent(f.hit_ratio))}<div>'
            f'<p class="sub">{sub}</p>{legend([(r, human_count(v)) for r, v in results])}</div></div></section>')


def _bytes_section(f: Figures) -> str:
    parts = [(s, f.bytes_served.get(s, 0.0)) for s in SOURCES]
    total = sum(v for _, v in parts)
    return (f'<section id="bytes-served"><h2>Bytes served</h2>'
            f'<p class="big">{human_bytes(f.bytes_served.get("cache", 0.0))}</p>'
            f'<p class="sub">from the cache (not fetched upstream again) of {human_bytes(total)} served</p>'
            f'{stacked_bar(parts, "bytes served by source")}'
            f'{legend([(s, human_bytes(v)) for s, v in parts])}</section>')


def _store_section(f: Figures) -> str:
    cached, pushed = f.store_bytes.get("cached", 0.0), f.store_bytes.get("pushed", 0.0)
    share = cached / f.store_max_bytes if f.store_max_bytes else None
    return (f'<section id="store"><h2>Store</h2>'
            f'<p class="big">{human_bytes(cached)} <span class="sub">of {human_bytes(f.store_max_bytes)}</span></p>'
            f'<p class="sub">cached content against storage.max_size ({percent(share)} used)</p>'
            f'{gauge(cached, f.store_max_bytes, "cached bytes against the bound")}'
            f'<ul class="legend"><li>cached blobs <b>{human_count(f.store_blobs.get("cached", 0.0))}</b></li>'
            f'<li>pushed (never evicted) <b>{human_bytes(pushed)}</b> in '
            f'<b>{human_count(f.store_blobs.get("pushed", 0.0))}</b> blobs</li></ul></section>')


def _notes(u: UpstreamFigures) -> str:
    """Under the URL: a fallback in use, a rate limit down to its reserve."""
    notes = []
    if u.primary is not None:
        notes.append(f"fallback in use: primary {escape(u.primary)} is skipped after failing")
    if u.saving:
        notes.append("saving its rate limit: cached tags are served without revalidation (ratelimit_reserve)")
    return "".join(f'<br><span class="url">{note}</span>' for note in notes)


def _upstreams_section(f: Figures) -> str:
    rows = []
    for u in f.upstreams:
        remaining = "–" if u.ratelimit_remaining is None else human_count(u.ratelimit_remaining)
        rows.append(
            f'<tr><td><b>{escape(u.name)}</b><br><span class="url">{escape(u.url)}</span>{_notes(u)}</td>'
            f'<td><span class="pill {u.state.replace(" ", "-")}">{escape(u.state)}</span></td>'
            f'<td class="num">{human_count(u.recent.requests)}</td>'
            f'<td class="num">{human_count(u.recent.failures)}</td>'
            f'<td class="num">{human_count(u.recent.throttled)}</td><td class="num">{remaining}</td></tr>')
        if u.last_error is not None:
            rows[-1] = rows[-1].replace("<tr>", '<tr class="has-error">', 1)
            rows.append(f'<tr><td colspan="6" class="last-error">{_last_error(u.last_error, f.now)}</td></tr>')
    body = "".join(rows) or '<tr><td colspan="6" class="empty">no upstreams configured</td></tr>'
    return (f'<section id="upstreams"><h2>Upstreams</h2><table><thead><tr><th>upstream</th><th>health</th>'
            f'<th class="num">requests</th><th class="num">failed</th><th class="num">429</th>'
            f'<th class="num">limit left</th></tr></thead><tbody>{body}</tbody></table>'
            f'<p class="sub">requests in the last {human_duration(max(f.health_window, 1))}; '
            'failed = network errors and 5xx; '
            f'limit left = the upstream\'s ratelimit-remaining</p></section>')


def _last_error(error: LastError, now: float) -> str:
    stamp = datetime.fromtimestamp(error.at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return (f'last error {escape(stamp)} ({human_duration(max(now - error.at, 0))} ago): '
            f'{escape(error.text)}')


def _images_section(f: Figures) -> str:
    most = f.top_images[0][1] if f.top_images else 0
    rows = "".join(
        f'<tr><td>{escape(name)}</td><td style="width:35%">{share_bar(count / most)}</td>'
        f'<td class="num">{human_count(count)}</td></tr>' for name, count in f.top_images)
    body = rows or '<tr><td colspan="3" class="empty">no image pulled yet</td></tr>'
    return (f'<section id="top-images"><h2>Most pulled images</h2><table><thead><tr><th>repository</th><th></th>'
            f'<th class="num">manifest pulls</th></tr></thead><tbody>{body}</tbody></table></section>')


def _cluster_section(f: Figures) -> str:
    view = f.cluster
    state = f"coordination {view.coordination}"
    pill = f'<span class="pill {"healthy" if view.problem is None else "degraded"}">{escape(state)}</span>'
    reason = "" if view.problem is None else f'<p class="sub last-error">{escape(view.problem)}</p>'
    rows = []
    for member in sorted(view.members, key=lambda m: (m.address or m.host, m.pid)):
        seen = human_duration(max(member.seen_ago + f.now - view.at, 0.0))
        rows.append(f'<tr><td><b>{escape(member.address or "not advertised")}</b></td><td>{escape(member.host)}</td>'
                    f'<td>pid {member.pid}</td><td class="num">{seen} ago</td></tr>')
    body = "".join(rows) or '<tr><td colspan="4" class="empty">no member seen yet</td></tr>'
    return (f'<section id="cluster"><h2>Cluster</h2><p class="sub">{pill} {escape(view.kind)} '
            f'<span class="url">{escape(view.where)}</span> · <b>{len(view.members)}</b> members</p>{reason}'
            f'<table><thead><tr><th>address (cluster.advertise)</th><th>host</th><th>process</th>'
            f'<th class="num">last seen</th></tr></thead><tbody>{body}</tbody></table></section>')


def render_page(f: Figures) -> str:
    stamp = datetime.fromtimestamp(f.now, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    facts = (f'<div class="facts"><span>upstream fetches in flight <b>{human_count(f.inflight_fetches)}</b></span>'
             f'<span>evicted <b>{human_count(f.evictions)}</b> blobs, <b>{human_bytes(f.evicted_bytes)}</b></span>'
             f'<span>GC runs <b>{human_count(f.gc_runs)}</b>, '
             f'reclaimed <b>{human_bytes(f.gc_reclaimed_bytes)}</b></span>'
             f'<span>HTTP requests answered <b>{human_count(f.http_requests)}</b></span>'
             f'<span id="pushes">{escape(f.push_policy)}</span></div>')
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        '<meta http-equiv="refresh" content="30"><title>pullcache status</title>'
        f'<style>{STYLE}</style></head><body>'
        f'<header><h1>pullcache</h1><p>registry mirror status · version {escape(__version__)} · '
        f'up {human_duration(f.now - STARTED)} · {stamp}</p></header><main>'
        f'<div class="grid">{_hit_section(f)}{_bytes_section(f)}{_store_section(f)}</div>'
        f'<div class="wide">{_upstreams_section(f)}{_images_section(f)}</div>'
        f'<div class="cluster">{_cluster_section(f)}</div>{facts}'
        '</main></body></html>')
