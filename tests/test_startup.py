"""`pullcache serve` start-up: it listens on IPv4, IPv6 and dual-stack addresses, says in one line what it
serves, warns when anyone may push, and a port it cannot have is one line naming the address."""
from __future__ import annotations

import re
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.htpasswd import write_htpasswd
from tests.support.procs import free_port, http_status
from tests.support.pullcache_proc import PullcacheProcess, docker_hub_upstream
from tests.support.seed import Upstream

REPO_ROOT = Path(__file__).resolve().parents[1]


class PullcacheOnIPv6(PullcacheProcess):
    """pullcache listening on `[address]:port`; it is asked (and waited for) on [::1]."""

    def __init__(self, workdir: Path, address: str, config: dict[str, Any]) -> None:
        super().__init__(workdir, config)
        self.address = address
        self.config["listen"] = f"[{address}]:{self.port}"

    def _new_port(self) -> None:
        super()._new_port()
        self.config["listen"] = f"[{self.address}]:{self.port}"

    @property
    def url(self) -> str:
        return f"http://[::1]:{self.port}"


@pytest.fixture
def ipv6_pullcache(upstream: Upstream, tmp_path: Path) -> Iterator[Callable[[str], PullcacheOnIPv6]]:
    started: list[PullcacheOnIPv6] = []

    def start(address: str) -> PullcacheOnIPv6:
        proc = PullcacheOnIPv6(tmp_path / f"pullcache{len(started)}", address,
                               {"upstreams": [docker_hub_upstream(upstream.url)]})
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        proc.stop()


def test_serve_listens_on_the_ipv6_loopback(ipv6_pullcache: Callable[[str], PullcacheOnIPv6]) -> None:
    server = ipv6_pullcache("::1")
    assert http_status(f"http://[::1]:{server.port}/healthz") == 200
    assert f"listening on http://[::1]:{server.port}" in server.log_text()


def test_serve_on_every_address_answers_ipv6_and_ipv4(ipv6_pullcache: Callable[[str], PullcacheOnIPv6]) -> None:
    server = ipv6_pullcache("::")
    assert http_status(f"http://[::1]:{server.port}/healthz") == 200
    assert http_status(f"http://127.0.0.1:{server.port}/healthz") == 200


def test_a_taken_port_is_one_line_naming_the_address(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        config = tmp_path / "proxy.yml"
        config.write_text(f"listen: 127.0.0.1:{port}\nstorage: {{path: {tmp_path / 'data'}}}\n")
        result = subprocess.run([sys.executable, "-m", "pullcache", "serve", "-c", str(config)], cwd=REPO_ROOT,
                                capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == f"pullcache: cannot listen on 127.0.0.1:{port}: address already in use"


def startup_line(server: PullcacheProcess) -> str:
    (line,) = [line for line in server.log_text().splitlines() if " listening on " in line]
    return line


def test_startup_says_where_it_listens_what_it_uses_and_that_pushes_are_refused(
        pullcache_factory: Callable[..., PullcacheProcess], upstream: Upstream) -> None:
    server = pullcache_factory({"local": {"anonymous_push": False}})  # proxy.yml's default
    line = startup_line(server)
    assert re.search(r" INFO pullcache\.startup: pullcache \S+ listening on ", line), line
    assert f"listening on http://127.0.0.1:{server.port}; " in line
    assert f"; storage {server.data_dir} (cached content up to 50.0 GiB); " in line
    assert f"; upstreams docker.io -> {upstream.url} (default); " in line
    assert line.endswith("; pushes refused: no users (set auth.htpasswd, or local.anonymous_push: true)")
    assert " WARNING " not in server.log_text()


def test_startup_names_every_url_of_an_upstream(
        pullcache_factory: Callable[..., PullcacheProcess], upstream: Upstream) -> None:
    fallback = f"http://127.0.0.1:{free_port()}"
    entry = {key: value for key, value in docker_hub_upstream(upstream.url).items() if key != "url"}
    server = pullcache_factory({"upstreams": [{**entry, "urls": [upstream.url, fallback]}]})
    assert f"; upstreams docker.io -> {upstream.url} (default), fallback {fallback}; " in startup_line(server)


def test_startup_says_pushes_are_allowed_for_htpasswd_users(
        pullcache_factory: Callable[..., PullcacheProcess], tmp_path: Path) -> None:
    htpasswd = write_htpasswd(tmp_path / "htpasswd", {"alice": "secret"})
    server = pullcache_factory({"auth": {"htpasswd": str(htpasswd)},
                                "local": {"allow_push": ["team/*"], "anonymous_push": False}})
    assert startup_line(server).endswith("; pushes allowed for the users in auth.htpasswd, to team/*")


def test_anonymous_push_is_announced_with_a_warning(pullcache_factory: Callable[..., PullcacheProcess]) -> None:
    server = pullcache_factory({"local": {"anonymous_push": True}})
    assert startup_line(server).endswith("; pushes allowed for anyone (local.anonymous_push: true)")
    (warning,) = [line for line in server.log_text().splitlines() if " WARNING " in line]
    assert (f"local.anonymous_push is true: anyone who can reach 127.0.0.1:{server.port} may push and delete "
            "images, and a pushed bare name (such as team/app) hides the default upstream's image of that name"
            ) in warning


def test_without_dual_stack_sockets_every_address_also_binds_ipv4(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel without IPV6_V6ONLY=0 still gets IPv4 clients on [::]: a second socket on 0.0.0.0."""
    from pullcache.startup import bind

    monkeypatch.setattr(socket, "has_dualstack_ipv6", lambda: False)
    sockets = bind("::", 0)
    try:
        assert [(sock.family, sock.getsockname()[0]) for sock in sockets] == [
            (socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")]
        (port,) = {sock.getsockname()[1] for sock in sockets}
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    finally:
        for sock in sockets:
            sock.close()
