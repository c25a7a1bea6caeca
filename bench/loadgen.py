"""Load generators: one client process per blob client, wrk for manifests, and their ceiling.

The blob client is `bench.blobget` (or curl, for comparison): each process reports its own
time to first byte and total time, so the driver only starts and waits. `ceiling()`
measures what a client reaches against a server that costs almost nothing (one file via
sendfile(2)): the proof that the client is not what limits the caches. The CPU time the
clients used is reported with every run for the same reason.
"""

from __future__ import annotations

import re
import resource
import socket
import socketserver
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

CURL = "/usr/bin/curl"
WRK = "/usr/bin/wrk"
CLIENTS = ("blobget", "curl")  # the first one is the benchmark's; curl is shown for comparison
REPO_ROOT = Path(__file__).resolve().parents[1]
_CURL_FORMAT = "%{http_code} %{time_starttransfer} %{time_total} %{size_download}"


@dataclass(frozen=True)
class Fetch:
    status: int
    ttfb: float
    total: float
    size: int
    from_origin: int = 0  # bytes received from the URL's own host, heads included (blobget only)
    redirects: int = 0  # redirects followed (blobget --follow)


@dataclass(frozen=True)
class Herd:
    """`clients` concurrent GETs of one URL, started together."""

    fetches: tuple[Fetch, ...]
    wall: float  # first start to last finish
    client_cpu: float  # user+sys seconds the curl processes used

    @property
    def ok(self) -> bool:
        return all(f.status == 200 for f in self.fetches)

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.fetches)

    @property
    def throughput(self) -> float:
        """Aggregate MB/s (10^6 bytes) until the last client finished, by the clients' clocks
        (process start-up is not transfer time)."""
        return self.bytes / max(f.total for f in self.fetches) / 1e6

    @property
    def ttfb_median(self) -> float:
        return statistics.median(f.ttfb for f in self.fetches)

    @property
    def ttfb_worst(self) -> float:
        return max(f.ttfb for f in self.fetches)

    def failure(self) -> str | None:
        bad = [f.status for f in self.fetches if f.status != 200]
        return f"{len(bad)} of {len(self.fetches)} GETs answered {sorted(set(bad))}" if bad else None


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def herd(url: str, clients: int, *, headers: Sequence[str] = (), client: str = "blobget",
         timeout: float = 600, follow: bool = False) -> Herd:
    """`clients` concurrent GETs of `url`, started together: blobget threads in one
    process, or (`client="curl"`) one curl process each. `follow`: follow redirects."""
    if client == "blobget":
        argv = [sys.executable, "-m", "bench.blobget", "--clients", str(clients)]
        argv += ["--follow"] if follow else []
        argv += [arg for header in headers for arg in ("-H", header)]
        commands = [[*argv, url]]
    else:
        argv = [CURL, "-s", "-o", "/dev/null", "-w", _CURL_FORMAT + "\n", "--max-time", str(timeout)]
        argv += ["-L"] if follow else []
        argv += [arg for header in headers for arg in ("-H", header)]
        commands = [[*argv, url]] * clients
    cpu_before = _children_cpu()
    start = time.monotonic()
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=REPO_ROOT)
             for command in commands]
    lines = [line for p in procs for line in p.communicate(timeout=timeout)[0].decode().splitlines()]
    wall = time.monotonic() - start
    fetches = []
    for line in lines:
        code, ttfb, total, size, from_origin, redirects = (line.split() + ["0"] * 6)[:6]
        fetches.append(Fetch(int(code), float(ttfb), float(total), int(float(size)), int(from_origin),
                             int(redirects)))
    return Herd(tuple(fetches), wall, _children_cpu() - cpu_before)


# --- manifests -----------------------------------------------------------------------


@dataclass(frozen=True)
class WrkResult:
    requests_per_second: float
    requests: int
    errors: int  # non-2xx/3xx answers plus socket errors
    client_cpu: float

    def failure(self) -> str | None:
        return f"{self.errors} of {self.requests} requests failed" if self.errors else None


def wrk(url: str, *, connections: int = 16, threads: int = 1, seconds: float = 10,
        headers: Sequence[str] = ()) -> WrkResult:
    """wrk with keep-alive connections. One thread: on 2 cores the other core is the server's."""
    argv = [WRK, f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s"]
    for header in headers:
        argv += ["-H", header]
    cpu_before = _children_cpu()
    out = subprocess.run([*argv, url], capture_output=True, text=True, check=True,
                         timeout=seconds + 60).stdout
    rps = float(_field(out, r"Requests/sec:\s+([\d.]+)"))
    total = int(_field(out, r"(\d+) requests in"))
    non_2xx = int(_field(out, r"Non-2xx or 3xx responses:\s+(\d+)", "0"))
    socket_errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    return WrkResult(rps, total, non_2xx + socket_errors, _children_cpu() - cpu_before)


def _field(text: str, pattern: str, default: str | None = None) -> str:
    match = re.search(pattern, text)
    if match:
        return match.group(1)
    if default is None:
        raise RuntimeError(f"wrk output has no {pattern!r}:\n{text}")
    return default


# --- the load generator's own ceiling -------------------------------------------------


class _SendfileHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        head = b""
        while b"\r\n\r\n" not in head:
            data = sock.recv(65536)
            if not data:
                return
            head += data
        path: Path = self.server.file  # type: ignore[attr-defined]
        with open(path, "rb") as body:
            size = path.stat().st_size
            sock.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n"
                         "Content-Type: application/octet-stream\r\nConnection: close\r\n\r\n".encode())
            sock.sendfile(body)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def ceiling(file: Path, clients: Sequence[int], client: str) -> dict[int, Herd]:
    """`client` against a sendfile(2) server of `file`: the most that load generator takes."""
    server = _Server(("127.0.0.1", 0), _SendfileHandler)
    server.file = file  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, name="sendfile-server", daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/file"
        return {n: herd(url, n, client=client) for n in clients}
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
