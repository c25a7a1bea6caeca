"""Debian's haproxy as the round-robin balancer in front of pullcache replicas, on a loopback port.

It runs in the foreground (`-db`) with its config, stats socket and log in a temp dir, and is stopped by PID.
Each request is balanced on its own (HTTP mode, no server preference), and a server is taken out after two
failed `GET /readyz` checks 500 ms apart and put back after one good one: the health check an operator would
run. `states()` reads what haproxy thinks of each server from the stats socket, so a test waits for "DOWN"
or "UP" instead of sleeping.
"""
from __future__ import annotations

import csv
import io
import socket
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from .cleanup import remove_tree
from .procs import POLL_INTERVAL, ManagedProcess, OnLoopback, clean_env, free_port, retry_on_taken_port

HAPROXY_BIN = "/usr/sbin/haproxy"
BACKEND = "replicas"


def _config(port: int, stats_socket: Path, servers: Mapping[str, str], check: str) -> str:
    lines = [
        "global",
        f"    stats socket {stats_socket} mode 600 level admin",
        "    maxconn 2000",
        "defaults",
        "    mode http",
        "    timeout connect 2s",
        "    timeout client 300s",
        "    timeout server 300s",
        "    timeout http-request 30s",
        # A /readyz answer may take longer than the 500 ms check interval on a loaded machine (it asks the
        # bucket): a slow good answer is a good one, not a failed check.
        "    timeout check 3s",
        # A request that found a server gone (refused before the check saw it) is tried on another.
        "    retries 2",
        "    option redispatch",
        "frontend registry",
        f"    bind 127.0.0.1:{port}",
        f"    default_backend {BACKEND}",
        f"backend {BACKEND}",
        "    balance roundrobin",
        f"    option httpchk GET {check}",
        "    http-check expect status 200",
        "    default-server inter 500ms fall 2 rise 1",
        *(f"    server {name} {address} check" for name, address in servers.items()),
    ]
    return "\n".join(lines) + "\n"


class Haproxy(OnLoopback):
    """haproxy balancing over `servers` ({name: "127.0.0.1:PORT"}); `url` is its front. `check` is the path the
    health check GETs (the benchmark balances Distribution, which has no /readyz, on its `/`)."""

    def __init__(self, servers: Mapping[str, str], check: str = "/readyz") -> None:
        self.servers = dict(servers)
        self.check = check
        self.workdir = Path(tempfile.mkdtemp(prefix="pc-haproxy-"))
        self.config_path = self.workdir / "haproxy.cfg"
        self.stats_socket = self.workdir / "stats.sock"
        self.port = free_port()
        self.process = ManagedProcess([HAPROXY_BIN, "-db", "-f", str(self.config_path)],
                                      log_path=self.workdir / "haproxy.log", env=clean_env(), name="haproxy")

    def start(self, timeout: float = 20.0) -> Haproxy:
        """Start and wait until every server has passed its health check."""
        def start_once() -> None:
            self.config_path.write_text(_config(self.port, self.stats_socket, self.servers, self.check))
            self.process.start()
            self.process.wait_until(self._all_up, timeout=timeout, what="seeing every server UP")

        def new_port() -> None:
            self.port = free_port()

        retry_on_taken_port(start_once, new_port)
        return self

    def _all_up(self) -> bool:
        try:
            return all(state == "UP" for state in self.states().values())
        except OSError:
            return False  # the stats socket is not there yet

    def states(self) -> dict[str, str]:
        """Each server's state as haproxy sees it: "UP", "DOWN", "UP 1/2" (failing), "DOWN 1/1" (rising)..."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5.0)
            sock.connect(str(self.stats_socket))
            sock.sendall(b"show stat\n")
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        rows = csv.DictReader(io.StringIO(answer.decode().lstrip("# ")))
        return {row["svname"]: row["status"] for row in rows
                if row["pxname"] == BACKEND and row["svname"] in self.servers}

    def wait_for_state(self, server: str, state: str, timeout: float = 15.0) -> None:
        """Until haproxy's health checks have put `server` in `state` ("UP" or "DOWN")."""
        deadline = time.monotonic() + timeout
        while (seen := self.states()[server]) != state:
            if time.monotonic() > deadline:
                raise AssertionError(f"haproxy sees {server} {seen!r}, not {state!r}, after {timeout}s")
            time.sleep(POLL_INTERVAL)

    def stop(self) -> None:
        """Stop by PID (SIGTERM) and remove the temp dir. Safe to call twice."""
        self.process.stop()
        remove_tree(self.workdir)
