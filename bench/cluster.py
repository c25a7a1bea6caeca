"""The scale-out rows (issue "Replicas and workers"): many pullcache processes on one cache.

- `replicas-herd` (S3): a cold herd through haproxy in front of 3 pullcache replicas (one SeaweedFS bucket, one
  redis-server: tests/support/replicas.py's cluster) beside the same through haproxy in front of 3 Distribution
  proxies on one bucket and prefix. Each side has its own throttle, so upstream fetches are read off the wire.
- `aggregate` (S3): a cached layer through haproxy in front of the 3 replicas, in front of 1 replica, and
  straight to that replica, with the CPU of every process on the path, so the bottleneck can be named.
- `workers` (filesystem): manifests with wrk against `workers: 1` and `workers: 2`, and nginx (1 and 2
  worker processes) serving the same bytes as a static file.
"""

from __future__ import annotations

import os
import statistics
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Protocol

from tests.support.distribution import ProxySettings
from tests.support.haproxy import Haproxy
from tests.support.images import Image
from tests.support.pullcache_proc import PullcacheProcess, docker_hub_upstream
from tests.support.replicas import Cluster
from tests.support.seaweed import SeaweedFS

from . import efficiency, loadgen, scenarios
from .procstat import cpu_seconds, machine_busy_seconds, machine_steal_seconds, tree
from .results import Results
from .scenarios import ACCEPT, ScenarioError, Settings, checked
from .stack import Layer, S3Distribution, Stack
from .throttle import Throttle

SCENARIOS = ("replicas-herd", "workers", "aggregate")
REPLICAS = 3
LOG = {"log": {"level": "info", "format": "text"}}  # the shipped default, not the tests' debug
HERD_KEYS = ("replicas_herd_fetches", "replicas_herd_upstream_mib", "replicas_herd_ttfb_median",
             "replicas_herd_ttfb_worst", "replicas_herd_done", "cpu_replicas_herd")
AGGREGATE_KEY = "aggregate"
AGGREGATE_CLIENTS = (8, 16)
GROUPS = ("replicas", "haproxy", "weed", "blobget")  # the processes on the path of an aggregate run
SETUPS = ("3 replicas behind haproxy", "1 replica behind haproxy", "1 replica direct")
WORKERS_KEY = "workers"
WORKERS_GOAL = 1.6  # workers: 2 ÷ workers: 1 on 2 cores
WRK_FIGURES = ("rps", "cpu", "wrk", "machine", "steal")  # what _wrk measures of each server
WORKERS_FIGURES = tuple(
    f"{figure}_{who}_{path}" for who in ("w1", "w2") for path in ("tag", "digest") for figure in WRK_FIGURES) + tuple(
    f"{figure}_nginx{n}" for n in (1, 2) for figure in WRK_FIGURES) + ("split_w2_tag",)


class Contender(Protocol):
    """What the cold herd needs of a cluster: a front URL, its upstream path, and the servers' processes."""

    name: str
    throttle: Throttle

    @property
    def url(self) -> str: ...

    def server_pids(self) -> list[int]: ...

    def log_tail(self, lines: int = 40) -> str: ...


class PullcacheCluster:
    """3 replicas, their redis-server and haproxy (tests/support/replicas.py), upstream through `throttle`."""

    name = "pullcache"

    def __init__(self, workdir: Path, throttle: Throttle, store: SeaweedFS, count: int = REPLICAS) -> None:
        self.throttle = throttle
        self.store = store
        self.cluster = Cluster(workdir, upstream_url=throttle.url, seaweed_server=store, config=LOG, count=count)

    @property
    def url(self) -> str:
        return self.cluster.url

    @property
    def replicas(self) -> list[PullcacheProcess]:
        return self.cluster.replicas

    @property
    def balancer(self) -> Haproxy:
        assert self.cluster.balancer is not None, "the cluster was not started"
        return self.cluster.balancer

    def server_pids(self) -> list[int]:
        return [replica.process.pid for replica in self.replicas]

    def start(self) -> PullcacheCluster:
        self.cluster.start()
        return self

    def stop(self) -> None:
        self.cluster.stop()

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(replica.process.log_tail(lines // len(self.replicas)) for replica in self.replicas)


class DistributionCluster:
    """3 Distribution proxies on one bucket and prefix (each its own config), behind haproxy checking `/`."""

    name = "distribution"

    def __init__(self, workdir: Path, throttle: Throttle, store: SeaweedFS, count: int = REPLICAS) -> None:
        self.throttle = throttle
        bucket = store.create_bucket(f"distribution-replicas-{uuid.uuid4().hex[:8]}")
        self.registries = [S3Distribution(store, bucket, proxy=ProxySettings(throttle.url), workdir=workdir / f"d{n}")
                           for n in range(count)]
        self.balancer: Haproxy | None = None

    @property
    def url(self) -> str:
        assert self.balancer is not None, "the cluster was not started"
        return self.balancer.url

    def server_pids(self) -> list[int]:
        return [registry.process.pid for registry in self.registries]

    def start(self) -> DistributionCluster:
        with ThreadPoolExecutor(len(self.registries)) as pool:
            list(pool.map(S3Distribution.start, self.registries))
        self.balancer = Haproxy({f"d{n}": r.host for n, r in enumerate(self.registries)}, check="/").start()
        return self

    def stop(self) -> None:
        if self.balancer is not None:
            self.balancer.stop()
        for registry in self.registries:
            registry.stop()

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(r.process.log_tail(lines // len(self.registries)) for r in self.registries)


@contextmanager
def clusters(stack: Stack, *, distribution: bool) -> Iterator[list[PullcacheCluster | DistributionCluster]]:
    """The pullcache cluster (and, for the herd, the Distribution one) on the stack's object store, each with
    a throttle of its own to the stack's upstream; everything stopped by PID when the block ends."""
    assert stack.store is not None and stack.upstream is not None, "the clusters need the S3 stack"
    throttles: list[Throttle] = []
    started: list[PullcacheCluster | DistributionCluster] = []
    kinds: list[type[PullcacheCluster] | type[DistributionCluster]] = [PullcacheCluster]
    kinds += [DistributionCluster] if distribution else []
    try:
        for kind in kinds:
            throttles.append(Throttle(stack.upstream.host, stack.workdir).start())
            contender = kind(stack.workdir / f"{kind.name}-replicas", throttles[-1], stack.store)
            started.append(contender)
            contender.start()
        yield started
    finally:
        for contender in started:
            contender.stop()
        for throttle in throttles:
            throttle.stop()


def _cores(pids: Sequence[int], body: Callable[[], Any]) -> tuple[Any, list[float]]:
    """Run `body`; also return the cores each of `pids` (with its children) kept busy meanwhile."""
    start, before = time.monotonic(), [cpu_seconds(pid) for pid in pids]
    result = body()
    wall = time.monotonic() - start
    return result, [(cpu_seconds(pid) - b) / wall for pid, b in zip(pids, before, strict=True)]


# --- replicas-herd ------------------------------------------------------------------------------


def replicas_herd(contender: Contender, layer: Layer, settings: Settings) -> dict[str, float]:
    """`settings.herd` clients released together through the balancer on a layer no replica has."""
    pids = contender.server_pids()
    figures, cores = scenarios.herd(contender.throttle, contender.url + layer.path, layer, settings,
                                    "replicas_herd", lambda body: _cores(pids, body))
    return {**figures, "cpu_replicas_herd": sum(cores)}


# --- aggregate ----------------------------------------------------------------------------------


def warm_replicas(cluster: PullcacheCluster, layer: Layer, passes: int = 10) -> None:
    """GET `layer` from each replica directly until a pass over them all no longer reaches the upstream: then
    it is in the bucket and in each replica's local cache."""
    for _ in range(passes):
        before = cluster.throttle.blob_gets(layer.digest)
        for replica in cluster.replicas:
            checked(loadgen.herd(replica.url + layer.path, 1), layer, f"warming {replica.url}")
        if cluster.throttle.blob_gets(layer.digest) == before:
            return
    raise ScenarioError(f"{layer.digest[:19]} still fetched upstream after {passes} passes")


def _measure(url: str, layer: Layer, clients: int, settings: Settings,
             pids: dict[str, list[int]]) -> dict[str, float]:
    """Best throughput of `settings.repeats` herds of `clients` on the cached `layer`, and the median cores
    each group of processes kept busy (the load generator's from its own rusage)."""
    groups = list(pids)
    runs = []
    for _ in range(settings.repeats):
        flat = [pid for group in groups for pid in pids[group]]
        start, busy = time.monotonic(), machine_busy_seconds()
        herd, cores = _cores(flat, lambda: checked(loadgen.herd(url + layer.path, clients), layer,
                                                    f"{clients} clients"))
        per_group, at = {"machine": (machine_busy_seconds() - busy) / (time.monotonic() - start)}, 0
        for group in groups:
            per_group[group] = sum(cores[at:at + len(pids[group])])
            at += len(pids[group])
        runs.append((herd, per_group))
    figures = {"mbps": max(h.throughput for h, _ in runs),
               "blobget": statistics.median(h.client_cpu / h.wall for h, _ in runs)}
    for group in [*groups, "machine"]:
        figures[group] = statistics.median(cores[group] for _, cores in runs)
    return figures


def aggregate_round(cluster: PullcacheCluster, layer: Layer, settings: Settings, results: Results,
                    clients: Sequence[int] = AGGREGATE_CLIENTS) -> None:
    """One round: the cached layer to each number of `clients` through the cluster's haproxy (3 replicas), through
    a haproxy of its own in front of replica 0, and straight to replica 0. Figures into results.extra."""
    warm_replicas(cluster, layer)
    first = cluster.replicas[0]
    single = Haproxy({"r0": first.host}).start()
    try:
        fronts = {
            SETUPS[0]: (cluster.url, {"replicas": cluster.server_pids(), "haproxy": [cluster.balancer.process.pid]}),
            SETUPS[1]: (single.url, {"replicas": [first.process.pid], "haproxy": [single.process.pid]}),
            SETUPS[2]: (first.url, {"replicas": [first.process.pid], "haproxy": []}),
        }
        store = {"weed": [cluster.store.pid]}
        rounds = results.extra.setdefault(AGGREGATE_KEY, {})
        assert isinstance(rounds, dict)
        for n in clients:
            for setup, (url, pids) in fronts.items():
                figures = _measure(url, layer, n, settings, {**pids, **store})
                per_setup = rounds.setdefault(f"{n}|{setup}", {})
                for key, value in figures.items():
                    per_setup.setdefault(key, []).append(value)
    finally:
        single.stop()


def _aggregate(results: Results) -> dict[str, dict[str, list[float]]]:
    found = results.extra.get(AGGREGATE_KEY)
    return found if isinstance(found, dict) else {}


def _median(values: list[float]) -> float:
    return statistics.median(values)


def aggregate_rows(results: Results) -> list[str]:
    """The table's aggregate rows: per number of clients, the three set-ups, with each process's cores."""
    from .report import _number

    measured = _aggregate(results)
    rows = []
    for n in sorted({int(key.split("|")[0]) for key in measured}):
        per = {setup: measured[f"{n}|{setup}"] for setup in SETUPS if f"{n}|{setup}" in measured}
        for setup, figures in per.items():
            mbps = figures["mbps"]
            cell = _number(_median(mbps)) + (f" ({_number(min(mbps))}–{_number(max(mbps))})" if len(mbps) > 1 else "")
            against = {SETUPS[0]: SETUPS[1], SETUPS[1]: SETUPS[2]}.get(setup)
            ratio = ""
            if against in per:
                ratio = f"{_median(mbps) / _median(per[against]['mbps']):.2f}× of {against}"
            cpu = ", ".join(f"{group} {_median(figures[group]):.2f}" for group in GROUPS)
            cpu += f"; the whole machine {_median(figures['machine']):.2f}"
            rows.append(f"| aggregate, {n} clients, {setup}: cached layer (MB/s); CPU (cores): {cpu} | {cell} | "
                        f"n/a | {ratio} | | |")
    return rows


def aggregate_notes(results: Results) -> list[str]:
    """Names the bottleneck of each run through haproxy: whether the machine's cores were all busy (with other
    work, on a shared machine), and which process on the path took the largest share of them."""
    cores = os.cpu_count() or 1
    notes = []
    for key, figures in sorted(_aggregate(results).items(), key=lambda item: int(item[0].split("|")[0])):
        n, setup = key.split("|")
        if setup == SETUPS[2]:
            continue
        busy = {group: _median(figures[group]) for group in GROUPS}
        ours, machine = sum(busy.values()), _median(figures["machine"])
        top = max(busy, key=lambda group: busy[group])
        limit = (f"the machine's {cores} cores were busy ({machine:.2f}, {machine - ours:.2f} of it other work): "
                 "CPU is the limit" if machine >= 0.9 * cores else
                 f"the machine's cores were not all busy ({machine:.2f} of {cores}): the limit is not CPU")
        notes.append(f"aggregate, {n} clients, {setup}: {limit}; of the processes on the path, {top} took the "
                     f"largest share ({busy[top]:.2f} cores of their {ours:.2f}).")
    return notes


# --- workers ------------------------------------------------------------------------------------


def _workers(throttle: Throttle, count: int, workdir: Path) -> PullcacheProcess:
    """pullcache with `workers: count` on the filesystem, upstream through `throttle`, every worker serving."""
    process = PullcacheProcess(workdir / f"workers{count}", {
        "workers": count, "upstreams": [docker_hub_upstream(throttle.url)], **LOG})
    process.start()
    deadline = time.monotonic() + 30
    while count > 1 and len(tree(process.process.pid)) < count + 1:
        if time.monotonic() > deadline:
            process.stop()
            raise ScenarioError(f"workers: {count} did not fork {count} workers within 30 s")
        time.sleep(0.1)
    return process


def _wrk(url: str, pid: int, settings: Settings, suffix: str) -> tuple[dict[str, float], list[float]]:
    """{rps, the server's cores (with its children), wrk's cores, the whole machine's busy cores, the host's
    steal}_`suffix` (WRK_FIGURES), and each child's cores."""
    children = tree(pid)[1:]
    start, busy, stolen = time.monotonic(), machine_busy_seconds(), machine_steal_seconds()
    result, cores = _cores([pid, *children], lambda: loadgen.wrk(url, seconds=settings.wrk_seconds, headers=[ACCEPT]))
    elapsed = time.monotonic() - start
    machine, steal = (machine_busy_seconds() - busy) / elapsed, (machine_steal_seconds() - stolen) / elapsed
    if result.failure():
        raise ScenarioError(f"{url}: {result.failure()}")
    return {f"rps_{suffix}": result.requests_per_second, f"cpu_{suffix}": cores[0],
            f"wrk_{suffix}": result.client_cpu / settings.wrk_seconds, f"machine_{suffix}": machine,
            f"steal_{suffix}": steal}, cores[1:]


def workers_round(throttle: Throttle, image: Image, settings: Settings, results: Results, workdir: Path) -> None:
    """One round: wrk on the tag and on the digest against `workers: 1` and `workers: 2`, then nginx with 1
    and 2 worker processes serving the same manifest as a static file.

    Both pullcache servers run for the whole round (the one wrk is not on is idle) and are measured in the
    order 1, 2, 2, 1 (tag, tag, digest, digest): the speed of a shared machine drifts over minutes, and a
    drift that is linear over the round then slows both servers alike instead of whichever ran last."""
    figures: dict[str, float] = {}
    paths = {"tag": f"/v2/{image.repo}/manifests/{image.tag}", "digest": f"/v2/{image.repo}/manifests/{image.digest}"}
    with ExitStack() as running:
        servers: dict[int, PullcacheProcess] = {}
        for count in (1, 2):
            servers[count] = _workers(throttle, count, workdir)
            running.callback(servers[count].stop)
        for count, process in servers.items():
            for path in paths.values():  # cached (and the tag confirmed) in the shared store before wrk runs
                for _ in range(2):
                    warmed = loadgen.herd(process.url + path, 4, headers=[ACCEPT])
                    if warmed.failure():
                        raise ScenarioError(f"warming {path} on workers: {count}: {warmed.failure()}")
        manifest = efficiency.fetch(servers[1].url, paths["tag"])
        for name, count in (("tag", 1), ("tag", 2), ("digest", 2), ("digest", 1)):
            process = servers[count]
            measured, split = _wrk(process.url + paths[name], process.process.pid, settings, f"w{count}_{name}")
            figures.update(measured)
            if count == 2 and name == "tag":
                figures["split_w2_tag"] = min(split) / max(max(split), 1e-9)
    for n in (1, 2):
        with efficiency.nginx_server(workdir / f"nginx{n}", manifest, workers=n) as (url, pid):
            figures.update(_wrk(url + paths["tag"], pid, settings, f"nginx{n}")[0])
    rounds = results.extra.setdefault(WORKERS_KEY, {})
    assert isinstance(rounds, dict)
    for key, value in figures.items():
        rounds.setdefault(key, []).append(value)


def _workers_rounds(results: Results) -> dict[str, list[float]]:
    found = results.extra.get(WORKERS_KEY)
    return found if isinstance(found, dict) else {}


def _ratio(rounds: dict[str, list[float]], over: str, under: str) -> float:
    """The median of the rounds' ratios (each round measures both back to back; see efficiency._ratio)."""
    return statistics.median(a / b for a, b in zip(rounds[over], rounds[under], strict=True) if b)


def _per_request(rounds: dict[str, list[float]], suffix: str) -> float:
    """The server's CPU per request in µs (the median of the rounds'): it moves much less with a shared machine's
    load than req/s does."""
    return statistics.median(cpu / rps * 1e6 for cpu, rps in zip(rounds[f"cpu_{suffix}"], rounds[f"rps_{suffix}"],
                                                                 strict=True) if rps)


def workers_rows(results: Results) -> list[str]:
    """The table's workers rows, by tag and by digest (nothing when the scenario did not run)."""
    rounds = _workers_rounds(results)
    if not all(key in rounds for key in WORKERS_FIGURES):
        return []
    rows = []
    for path in ("tag", "digest"):
        servers = (f"w1_{path}", f"w2_{path}", "nginx1", "nginx2")
        rps, cpu, wrk, machine, steal = ([_median(rounds[f"{figure}_{server}"]) for server in servers]
                                         for figure in WRK_FIGURES)
        per_request = [_per_request(rounds, server) for server in servers]
        by_one = _ratio(rounds, f"rps_w2_{path}", f"rps_w1_{path}")
        # With a free core per worker (no other work, the load generator elsewhere), req/s is cores ÷ CPU per request
        projected = 2 * per_request[0] / per_request[1]
        by_nginx = _ratio(rounds, f"rps_w2_{path}", "rps_nginx2")
        by_nginx1 = _ratio(rounds, f"rps_w1_{path}", "rps_nginx1")
        rows.append(
            f"| workers: manifest by {path}, wrk -t1 -c16 (req/s): workers: 1 / workers: 2 / nginx 1 worker / "
            f"nginx 2 workers; server CPU {' / '.join(f'{c:.2f}' for c in cpu)} cores, per request "
            f"{' / '.join(f'{us:.0f}' for us in per_request)} µs; wrk CPU {' / '.join(f'{c:.2f}' for c in wrk)} "
            f"cores; whole machine busy {' / '.join(f'{c:.2f}' for c in machine)} cores, of which the host took "
            f"(steal) {' / '.join(f'{c:.2f}' for c in steal)} | "
            f"{' / '.join(f'{r:.0f}' for r in rps)} | n/a | workers: 2 ÷ workers: 1 = {by_one:.2f}× (with a free "
            f"core per worker, by CPU per request: {projected:.2f}×); "
            f"workers: 2 ÷ nginx (2 workers) = {by_nginx:.2f}×, "
            f"workers: 1 ÷ nginx (1 worker) = {by_nginx1:.2f}× | workers: 2 ≥ {WORKERS_GOAL:g}× workers: 1 | "
            f"{'met' if by_one >= WORKERS_GOAL else '**SHORT**'} |")
    return rows


def workers_notes(results: Results) -> list[str]:
    rounds = _workers_rounds(results)
    if "split_w2_tag" not in rounds:
        return []
    return [f"workers: the two workers' CPU during wrk on the tag, the less busy one ÷ the busier one: "
            f"{_median(rounds['split_w2_tag']):.2f} (1 = even; the kernel's SO_REUSEPORT spreads wrk's 16 "
            "connections by their addresses). nginx serves the same bytes for the tag and the digest: both rows "
            "show the tag's nginx figures."]
