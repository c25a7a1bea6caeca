"""Drives one benchmark run: start the stack, run the scenarios interleaved, report."""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Protocol, TypeVar

from tests.support.images import BigLayer

from . import cluster, efficiency, loadgen, report, scenarios
from .results import Results
from .stack import STORAGES, Cache, Seeded, Sizes, Stack, StorageKind

REPO_ROOT = Path(__file__).resolve().parents[1]


class Contender(Protocol):
    """A single cache or a cluster of them: what a failed scenario names and shows."""

    name: str

    def log_tail(self, lines: int = 40) -> str: ...


C = TypeVar("C", bound=Contender)
RESULTS_DIR = REPO_ROOT / "bench" / "results"
CEILING_TRIES = 3  # the machine is shared: the best of a few runs is the ceiling
SCENARIOS = ("ceiling", "skopeo", "cached", "redirect", "manifests", "efficiency", "herd", "memory", "scale",
             *cluster.SCENARIOS)
# redirect needs an object store to redirect to; so do replicas (one bucket); scale is bench/scale.py's, on disk
# only, and workers are measured on disk (what a single host runs)
NOT_ON = {"filesystem": frozenset({"redirect", "replicas-herd", "aggregate"}), "s3": frozenset({"scale", "workers"})}
S3_NOTE = ("Storage: S3, both caches on one SeaweedFS 4.48 (`weed server -s3`, GOMEMLIMIT=512MiB) on loopback, "
           "each in its own bucket. pullcache: `storage.backend: s3`, `local_cache` at its default (10GiB). "
           "Distribution: `storage.s3` (regionendpoint, secure: false, v4auth: true) with "
           "`storage.redirect.disable: true`, started without AWS_CA_BUNDLE. In the redirect rows both run with "
           "redirects on (pullcache `storage.s3.redirect: true`; Distribution's default), and the client follows "
           "the 307 to SeaweedFS. \"object store CPU\" is the weed process's.")


@dataclass(frozen=True)
class Options:
    rounds: int
    quick: bool
    only: frozenset[str]
    out: Path
    profile: bool
    storage: StorageKind = "filesystem"

    @property
    def cluster_only(self) -> bool:
        """Only scale-out scenarios: their rows go to a table of their own, not over the full one."""
        return bool(self.only) and self.only <= set(cluster.SCENARIOS)

    @property
    def latest(self) -> str:
        """The name of the results kept in git: latest.* (filesystem) or s3-latest.*; a run of scale-out
        scenarios only, cluster-latest.* or s3-cluster-latest.*."""
        name = "cluster-latest" if self.cluster_only else "latest"
        return name if self.storage == "filesystem" else f"{self.storage}-{name}"


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def machine() -> dict[str, str]:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    mem_kib = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                       if line.startswith("MemTotal:")))
    registry = subprocess.run(["/usr/bin/docker-registry", "--version"], capture_output=True, text=True)
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "ram": f"{mem_kib / 1024 / 1024:.0f} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "distribution": registry.stdout.split()[-1] if registry.returncode == 0 else "?",
    }


class Runner:
    def __init__(self, options: Options) -> None:
        self.options = options
        self.sizes = Sizes.quick() if options.quick else Sizes()
        self.settings = scenarios.Settings(wrk_seconds=3 if options.quick else 10)
        self.results = Results()
        self.results.extra.update(rounds=options.rounds, quick=options.quick, machine=machine(),
                                  storage=options.storage, notes=[])
        if options.storage == "s3":
            self.results.extra["notes"].append(S3_NOTE)
        if options.quick:
            self.results.extra["notes"].append(
                f"--quick: layers shrunk to {self.sizes}, wrk {self.settings.wrk_seconds:g} s; "
                "a smoke run whose figures are not comparable to the targets.")

    def wanted(self, scenario: str) -> bool:
        if scenario in NOT_ON[self.options.storage]:
            return False
        return not self.options.only or scenario in self.options.only

    def run(self) -> Results:
        rounds = self.options.rounds
        self.results.extra["load_average"] = {"start": os.getloadavg()[0]}
        log(f"starting upstream, seeding ({self.sizes}), throttles and both caches on {self.options.storage}")
        stack = Stack(self.sizes, rounds, storage=self.options.storage)
        stack.start()
        try:
            seeded = stack.seeded
            assert seeded is not None
            self._check_pulls(stack)
            replicas: list[cluster.PullcacheCluster | cluster.DistributionCluster] = []
            with ExitStack() as later:
                if self.wanted("replicas-herd") or self.wanted("aggregate"):
                    log(f"starting {cluster.REPLICAS} pullcache replicas (redis-server, haproxy)"
                        + (f" and {cluster.REPLICAS} Distribution proxies (haproxy)"
                           if self.wanted("replicas-herd") else ""))
                    replicas = later.enter_context(cluster.clusters(stack, distribution=self.wanted("replicas-herd")))
                self._rounds(stack, seeded, replicas)
        finally:
            self.results.extra["load_average"]["end"] = os.getloadavg()[0]
            log("stopping everything")
            stack.stop()
        if self.wanted("scale"):
            self._scale()
        return self.results

    def _rounds(self, stack: Stack, seeded: Seeded,
                replicas: list[cluster.PullcacheCluster | cluster.DistributionCluster]) -> None:
        rounds = self.options.rounds
        pullcache_replicas = next((c for c in replicas if isinstance(c, cluster.PullcacheCluster)), None)
        if self.wanted("ceiling"):
            self._ceiling(stack.workdir)
        for r in range(rounds):
            log(f"round {r + 1}/{rounds}")
            if self.wanted("skopeo"):
                self._each(stack.caches, "skopeo", lambda c: scenarios.skopeo_pull(c, seeded, self.settings))
            if self.wanted("cached"):
                self._each(stack.caches, "cached", lambda c: scenarios.cached_layer(c, seeded, self.settings))
            if self.wanted("redirect"):
                self._each(stack.caches, "redirect", lambda c: scenarios.redirected_layer(c, seeded, self.settings))
            if self.wanted("manifests"):
                self._each(stack.caches, "manifests", lambda c: scenarios.manifests(c, seeded, self.settings))
            if self.wanted("efficiency"):
                efficiency.run_round(stack.caches[0], seeded, self.settings, self.results, stack.workdir)
            if self.wanted("herd"):
                layer = seeded.herd[r]
                self._each(stack.caches, "herd", partial(scenarios.cold_herd, layer=layer, settings=self.settings))
            if self.wanted("replicas-herd"):
                layer = seeded.herd[r]
                self._each(replicas, "replicas-herd",
                           partial(cluster.replicas_herd, layer=layer, settings=self.settings))
            if self.wanted("aggregate"):
                assert pullcache_replicas is not None
                self._extra("aggregate", lambda: cluster.aggregate_round(
                    pullcache_replicas, seeded.cached, self.settings, self.results))
            if self.wanted("workers"):
                self._extra("workers", lambda: cluster.workers_round(
                    stack.caches[0].throttle, seeded.multi, self.settings, self.results, stack.workdir))
        if self.wanted("memory"):
            self._each(stack.caches, "memory", lambda c: scenarios.memory(c, seeded.huge, self.settings))

    def _check_pulls(self, stack: Stack) -> None:
        for cache in stack.caches:
            url = f"{cache.url}/v2/{stack.seeded.multi.repo}/manifests/v1"
            result = loadgen.herd(url, 1, headers=[scenarios.ACCEPT])
            if result.failure():
                note = f"{cache.name} could not serve a pull at start ({url}: {result.failure()})"
                self.results.extra["notes"].append(note)
                log("WARNING: " + note)

    def _each(self, contenders: Sequence[C], scenario: str, body: Callable[[C], dict[str, float]]) -> None:
        """Run `body` on pullcache, then on Distribution (single caches or clusters); record figures or the
        failure."""
        for cache in contenders:
            profiler = self._profiler(cache, scenario)
            try:
                figures = body(cache)
            except (scenarios.ScenarioError, AssertionError, subprocess.SubprocessError, OSError) as err:
                reason = str(err).splitlines()[0][:200]
                log(f"  {scenario} on {cache.name} FAILED: {reason}\n{cache.log_tail(5)}")
                for key in _keys_of(scenario):
                    self.results.fail(key, cache.name, reason)
                continue
            finally:
                if profiler is not None:
                    profiler.send_signal(signal.SIGINT)
                    profiler.wait(timeout=60)
            for key, value in figures.items():
                self.results.add(key, cache.name, value)
            log(f"  {scenario} on {cache.name}: " + ", ".join(f"{k}={v:.3g}" for k, v in figures.items()))

    def _extra(self, scenario: str, body: Callable[[], None]) -> None:
        """Run a scenario that records its own figures (results.extra); a failure becomes a note."""
        try:
            body()
        except (scenarios.ScenarioError, AssertionError, subprocess.SubprocessError, OSError, RuntimeError) as err:
            reason = f"{scenario}: a round failed: {str(err).splitlines()[0][:200]}"
            log(reason)
            notes = self.results.extra["notes"]
            assert isinstance(notes, list)
            notes.append(reason)
            return
        log(f"  {scenario}: measured")

    def _profiler(self, cache: object, scenario: str) -> subprocess.Popen[bytes] | None:
        """py-spy on pullcache for the scenarios that keep its process (first round only)."""
        if (not self.options.profile or not isinstance(cache, Cache) or cache.name != "pullcache"
                or scenario in ("skopeo", "redirect", "memory")):
            return None
        out = self.options.out / f"profile-{scenario}.svg"
        if out.exists():
            return None
        self.options.out.mkdir(parents=True, exist_ok=True)
        return subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(cache.pid),
                                 "-o", str(out), "--rate", "200", "--nonblocking"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def _ceiling(self, workdir: Path) -> None:
        """Each blob client against a sendfile server of a file the size of the cached layer."""
        path = workdir / "ceiling.bin"
        with open(path, "wb") as out:
            for chunk in BigLayer(self.sizes.cached_layer, seed="ceiling"):
                out.write(chunk)
        ceiling: dict[str, dict[str, dict[str, object]]] = {}
        for client in loadgen.CLIENTS:
            tries = [loadgen.ceiling(path, (1, 8), client) for _ in range(CEILING_TRIES)]
            best = {n: max((t[n] for t in tries), key=lambda h: h.throughput) for n in tries[0]}
            ceiling[client] = {
                str(n): {"throughput": h.throughput, "client_cpu_per_s": h.client_cpu / h.wall,
                         "tries": [t[n].throughput for t in tries]}
                for n, h in best.items()
            }
            log(f"  {client} ceiling (best of {CEILING_TRIES}): "
                + ", ".join(f"{n} clients {h.throughput:.0f} MB/s" for n, h in best.items()))
        path.unlink()
        self.results.extra["loadgen_ceiling"] = ceiling

    def _scale(self) -> None:
        """bench/scale.py (the eviction engineer's) prints one JSON object; include it as is."""
        if not (REPO_ROOT / "bench" / "scale.py").exists():
            self.results.extra["notes"].append("scale: bench/scale.py is not there yet; not measured.")
            return
        log("scale: python -m bench.scale")
        argv = [sys.executable, "-m", "bench.scale"] + (["--quick"] if self.options.quick else [])
        done = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=1200)
        if done.returncode != 0:
            self.results.extra["notes"].append(f"scale: bench/scale.py exited {done.returncode}: "
                                               f"{done.stderr.strip().splitlines()[-1:]}")
            return
        self.results.extra["scale"] = json.loads(done.stdout)


def _keys_of(scenario: str) -> tuple[str, ...]:
    return {
        "cached": ("cached_1", "cached_8"),
        "redirect": ("redirect_1", "redirect_8", "redirect_body_bytes_served"),
        "manifests": ("manifest_tag", "manifest_digest"),
        "herd": ("herd_fetches", "herd_ttfb_median", "herd_ttfb_worst", "herd_done"),
        "skopeo": ("skopeo_cold", "skopeo_warm"),
        "memory": ("rss_peak", "rss_herd_fetches", "rss_herd_done"),
        "replicas-herd": cluster.HERD_KEYS,
    }[scenario]


def main(options: Options) -> int:
    try:
        import matplotlib  # noqa: F401  (fail before a 20-minute run, not after)
    except ImportError:
        log("matplotlib is missing: .venv/bin/pip install matplotlib (the bench extra)")
        return 2
    results = Runner(options).run()
    stamp = options.latest.replace("latest", time.strftime("%Y%m%d-%H%M%S"))  # s3-cluster-<time>, ...
    written = report.write(results, options.out, stamp, options.latest, with_chart=not options.cluster_only)
    print(report.table(results))
    print()
    print(report.notes(results))
    log(f"wrote {written[options.latest].with_suffix('.*')} and {written[stamp].with_suffix('.*')}")
    return 0


def parse(argv: Sequence[str] | None = None) -> Options:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--rounds", type=int, default=7, help="rounds of each scenario (default 7, ~10 minutes)")
    parser.add_argument("--quick", action="store_true",
                        help="small layers and 3 s wrk runs: a smoke run, figures not comparable")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {', '.join(SCENARIOS)}")
    parser.add_argument("--storage", choices=STORAGES, default="filesystem",
                        help="where both caches keep content: filesystem (default; results in latest.*) or s3 "
                             "(one SeaweedFS; results in s3-latest.*)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="where results go (bench/results)")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy flame graphs of pullcache per scenario (first round) into --out; "
                             "sampling costs the server CPU, so keep such a run's figures out of the README")
    args = parser.parse_args(argv)
    only = frozenset(s for s in args.only.split(",") if s)
    if unknown := only - set(SCENARIOS):
        parser.error(f"unknown scenario(s) {', '.join(sorted(unknown))}; choose from {', '.join(SCENARIOS)}")
    if unavailable := only & NOT_ON[args.storage]:
        parser.error(f"{', '.join(sorted(unavailable))} not available with --storage {args.storage}")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return Options(args.rounds, args.quick, only, args.out, args.profile, args.storage)

