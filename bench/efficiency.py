"""Per-process efficiency: a cached tag manifest from pullcache against the same bytes from a bare aiohttp
handler (bench/bare_manifest.py) and from nginx serving them as a static file.

wrk -t1 -c16 drives each in turn, on the same path, with the same Accept header. The bare handler sends
the headers pullcache sent and does nothing else, so pullcache ÷ bare is what pullcache's own work per
request (routing, resolving, the tag cache, metrics, the access log) costs; the goal is at least 0.6.
nginx runs one worker process, so all three are one process; it shows the ceiling of a static file.

Run inside the benchmark (`python -m bench --only efficiency`), where it uses the stack's pullcache and
the seeded multi-platform tag, or alone, which starts a small stack of its own (token server, upstream
Distribution with one image, pullcache) in a minute instead of the full seeding:

    .venv/bin/python -m bench.efficiency --rounds 3 --seconds 10
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.procs import ManagedProcess, free_port, http_status

from . import loadgen
from .procstat import cpu_seconds
from .results import Results
from .scenarios import ACCEPT, ScenarioError, Settings, warm_manifests
from .stack import Cache, Seeded

NGINX = "/usr/sbin/nginx"
GOAL = 0.6  # pullcache ÷ bare aiohttp
SERVERS = ("pullcache", "bare", "nginx")
# Per-connection or per-server headers each server sets itself; everything else pullcache sent is copied.
_OWN_HEADERS = frozenset({"date", "server", "content-length", "connection", "keep-alive", "transfer-encoding"})
EXTRA_KEY = "efficiency"


@dataclass(frozen=True)
class Manifest:
    """What pullcache answered for the tag: the body, and the headers a copy of it must carry."""

    path: str
    body: bytes
    headers: dict[str, str]


def fetch(base: str, path: str) -> Manifest:
    name, value = ACCEPT.split(": ", 1)
    request = urllib.request.Request(base + path, headers={name: value})
    with urllib.request.urlopen(request, timeout=30) as response:
        body = response.read()
        headers = {k: v for k, v in response.headers.items() if k.lower() not in _OWN_HEADERS}
    return Manifest(path, body, headers)


@contextmanager
def bare_server(workdir: Path, manifest: Manifest) -> Iterator[tuple[str, int]]:
    """bench/bare_manifest.py on a free port: (url, pid)."""
    body = workdir / "manifest"
    body.write_bytes(manifest.body)
    port = free_port()
    process = ManagedProcess(
        [sys.executable, "-m", "bench.bare_manifest", str(port), str(body),
         *(f"{k}: {v}" for k, v in manifest.headers.items())],
        log_path=workdir / "bare.log", cwd=Path(__file__).resolve().parents[1], name="bare aiohttp")
    url = f"http://127.0.0.1:{port}"
    yield from _running(process, url + manifest.path)


def nginx_config(root: Path, port: int, manifest: Manifest, workers: int = 1) -> str:
    """`workers` worker processes (one beside one pullcache process), no access log (the bare handler keeps
    none either), every path answered with the file."""
    content_type = manifest.headers.get("Content-Type", "application/octet-stream")
    add = "".join(f"      add_header {k} '{v}' always;\n" for k, v in manifest.headers.items()
                  if k.lower() != "content-type")
    user = "user root root;\n" if os.geteuid() == 0 else ""  # its workers must read the files in `root`
    return (
        f"{user}worker_processes {workers};\npid {root}/nginx.pid;\nerror_log {root}/error.log;\n"
        "events { worker_connections 1024; }\n"
        "http {\n"
        f"  access_log off;\n  client_body_temp_path {root}/tmp;\n  proxy_temp_path {root}/tmp;\n"
        f"  fastcgi_temp_path {root}/tmp;\n  uwsgi_temp_path {root}/tmp;\n  scgi_temp_path {root}/tmp;\n"
        "  sendfile on;\n  tcp_nopush on;\n  keepalive_requests 1000000;\n  etag off;\n"
        f"  server {{\n    listen 127.0.0.1:{port};\n    root {root};\n"
        f"    location / {{\n      types {{ }}\n      default_type '{content_type}';\n{add}"
        "      try_files /manifest =404;\n    }\n  }\n}\n"
    )


@contextmanager
def nginx_server(workdir: Path, manifest: Manifest, workers: int = 1) -> Iterator[tuple[str, int]]:
    """Debian's nginx serving the manifest as a static file with `workers` worker processes: (url, pid of its
    worker-owning master)."""
    if not Path(NGINX).exists():
        raise ScenarioError(f"{NGINX} is missing: scripts/setup-system.sh installs nginx")
    root = workdir / "nginx"
    (root / "tmp").mkdir(parents=True, exist_ok=True)
    (root / "manifest").write_bytes(manifest.body)
    port = free_port()
    conf = root / "nginx.conf"
    conf.write_text(nginx_config(root, port, manifest, workers))
    process = ManagedProcess([NGINX, "-p", str(root), "-c", str(conf), "-e", str(root / "error.log"),
                              "-g", "daemon off;"], log_path=workdir / "nginx.log", name="nginx")
    yield from _running(process, f"http://127.0.0.1:{port}{manifest.path}")


def _running(process: ManagedProcess, probe: str) -> Iterator[tuple[str, int]]:
    process.start()
    try:
        process.wait_until(lambda: http_status(probe) == 200, timeout=20, what=f"answering {probe}")
        yield probe.split("/v2/", 1)[0], process.pid
    finally:
        process.stop()


def _wrk(url: str, pid: int, settings: Settings) -> tuple[float, float]:
    """req/s, and the server's CPU time per request in µs (with its children: nginx's worker).

    On a shared machine req/s falls with whatever else runs; CPU per request much less so, and between
    servers that are each CPU-bound its ratio is the req/s ratio an idle machine would show."""
    before = cpu_seconds(pid)
    result = loadgen.wrk(url, seconds=settings.wrk_seconds, headers=[ACCEPT])
    used = cpu_seconds(pid) - before
    if result.failure():
        raise ScenarioError(f"{url}: {result.failure()}")
    return result.requests_per_second, used / max(result.requests, 1) * 1e6


def measure(base: str, pid: int, path: str, settings: Settings, workdir: Path) -> dict[str, float]:
    """One round: pullcache at `base` (process `pid`, tag `path` warm), then the bare handler, then nginx."""
    manifest = fetch(base, path)
    figures: dict[str, float] = {}
    servers: dict[str, Callable[[], AbstractContextManager[tuple[str, int]]]] = {
        "bare": lambda: bare_server(workdir, manifest), "nginx": lambda: nginx_server(workdir, manifest)}
    figures["pullcache"], figures["us_pullcache"] = _wrk(base + path, pid, settings)
    for name, server in servers.items():
        with server() as (url, server_pid):
            figures[name], figures[f"us_{name}"] = _wrk(url + path, server_pid, settings)
    return figures


def run_round(cache: Cache, seeded: Seeded, settings: Settings, results: Results, workdir: Path) -> None:
    """The benchmark's round: figures into results.extra["efficiency"], or a note saying why there are none."""
    log = results.extra.setdefault("notes", [])
    try:
        warm_manifests(cache, seeded)
        scratch = Path(tempfile.mkdtemp(prefix="efficiency-", dir=workdir))
        try:
            figures = measure(cache.url, cache.pid, f"/v2/{seeded.multi.repo}/manifests/v1", settings, scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    except (ScenarioError, OSError, subprocess.SubprocessError, RuntimeError) as err:
        assert isinstance(log, list)
        log.append(f"efficiency: a round failed: {str(err).splitlines()[0][:200]}")
        return
    record(results, figures)


def record(results: Results, figures: dict[str, float]) -> None:
    rounds = results.extra.setdefault(EXTRA_KEY, {})
    assert isinstance(rounds, dict)
    for key, value in figures.items():
        rounds.setdefault(key, []).append(value)


def _rounds(results: Results, key: str) -> list[float]:
    rounds = results.extra.get(EXTRA_KEY)
    values = rounds.get(key) if isinstance(rounds, dict) else None
    return list(values) if isinstance(values, list) else []


def _ratio(results: Results, over: str, under: str) -> float | None:
    """The median of the rounds' ratios: each round measures the servers back to back, so the load that
    other work puts on a shared machine, which drifts over minutes, cancels out better than in a ratio of
    medians."""
    pairs = list(zip(_rounds(results, over), _rounds(results, under), strict=True))
    return statistics.median(a / b for a, b in pairs if b) if pairs else None


def rows(results: Results) -> list[str]:
    """The benchmark table's efficiency row (nothing when the scenario did not run)."""
    rps = [statistics.median(values) if (values := _rounds(results, name)) else None for name in SERVERS]
    by_bare, by_nginx = _ratio(results, "pullcache", "bare"), _ratio(results, "pullcache", "nginx")
    by_cpu = _ratio(results, "us_bare", "us_pullcache")
    if by_bare is None or by_nginx is None or by_cpu is None or None in rps:
        return []
    cpu = [statistics.median(_rounds(results, f"us_{name}")) for name in SERVERS]
    return [
        f"| efficiency: cached tag manifest, wrk -t1 -c16 (req/s): pullcache / bare aiohttp / nginx (1 worker); "
        f"server CPU per request {' / '.join(f'{us:.0f}' for us in cpu)} µs | "
        f"{' / '.join(f'{value:.0f}' for value in rps if value is not None)} | n/a | {by_bare:.2f}× of bare "
        f"(by CPU per request {by_cpu:.2f}×), {by_nginx:.2f}× of nginx | pullcache ≥ {GOAL:g}× bare | "
        f"{'met' if by_bare >= GOAL else '**SHORT**'} |"
    ]


# --- standalone ---------------------------------------------------------------------------------


@contextmanager
def small_stack(workdir: Path, log_level: str = "info") -> Iterator[tuple[str, int, str]]:
    """Token server, upstream Distribution with one multi-platform image, pullcache proxying it as docker.io
    (the shipped log level): (pullcache url, pid, tag path)."""
    from tests.support.distribution import start_upstream
    from tests.support.images import build_image, push_image
    from tests.support.pullcache_proc import PullcacheProcess, docker_hub_upstream
    from tests.support.registry_client import RegistryClient
    from tests.support.seed import ADMIN_PASSWORD, ADMIN_USER, AMD64, ARM64, ARMV7
    from tests.support.tokenserver import TokenServer

    tokens = TokenServer(workdir / "tokens").start()
    try:
        upstream = start_upstream(tokens, workdir=workdir / "upstream")
        try:
            image = build_image("bench/multi", "v1", platforms=(AMD64, ARM64, ARMV7), layer_sizes=(1024, 2048))
            push_image(RegistryClient(upstream.url, username=ADMIN_USER, password=ADMIN_PASSWORD), image)
            with PullcacheProcess(workdir / "pullcache", {
                "upstreams": [docker_hub_upstream(upstream.url)],
                "log": {"level": log_level, "format": "text"},
            }) as pullcache:
                path = f"/v2/{image.repo}/manifests/v1"
                fetch(pullcache.url, path)  # cached from now on
                yield pullcache.url, pullcache.process.pid, path
        finally:
            upstream.stop()
    finally:
        tokens.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.efficiency", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10, help="wrk duration per server")
    parser.add_argument("--log-level", default="info",
                        help="pullcache's log.level (info, the default, writes an access line per request)")
    parser.add_argument("--hold", type=float, default=0, metavar="SECONDS",
                        help="print pullcache's URL and PID, then wait this long before measuring (to profile it)")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="pc-efficiency-"))
    results = Results()
    try:
        with small_stack(workdir, args.log_level) as (url, pid, path):
            if args.hold:
                print(f"pullcache {url}{path} pid {pid}; measuring in {args.hold:g} s", flush=True)
                time.sleep(args.hold)
            for r in range(args.rounds):
                figures = measure(url, pid, path, Settings(wrk_seconds=args.seconds), workdir)
                print(f"round {r + 1}: " + ", ".join(f"{k}={v:.3g}" for k, v in figures.items()), flush=True)
                record(results, figures)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print("\n".join(rows(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
