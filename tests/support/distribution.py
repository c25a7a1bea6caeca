"""CNCF Distribution 2.8 (`/usr/bin/docker-registry`) on 127.0.0.1.

Two roles: the token-protected *upstream* that stands in for Docker Hub, and a plain
pull-through *proxy* the benchmark compares pullcache against. Distribution only reads
the token root certificate at start; it never calls the realm itself, the clients do.
"""

from __future__ import annotations

import re
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .procs import ManagedProcess, OnLoopback, clean_env, free_port, http_status, retry_on_taken_port
from .tokenserver import TokenServer

REGISTRY_BIN = "/usr/bin/docker-registry"
# One combined-log-format access line: 127.0.0.1 - - [date] "GET /v2/... HTTP/1.1" 200 ...
_ACCESS_LINE = re.compile(r'^\S+ - \S+ \[[^\]]+\] "(\w+) (\S+) HTTP/[\d.]+" (\d{3}) ')


@dataclass(frozen=True)
class AccessRecord:
    """One request Distribution served, from its access log."""

    method: str
    uri: str  # path and query, e.g. /v2/library/alpine/manifests/latest?ns=docker.io
    status: int


@dataclass(frozen=True)
class ProxySettings:
    """`proxy:` section: pull-through from `remote_url`, with optional credentials."""

    remote_url: str
    username: str | None = None
    password: str | None = None


class Distribution(OnLoopback):
    """A running Distribution; storage and config live in a temp dir removed by `stop()`."""

    def __init__(
        self,
        *,
        token_server: TokenServer | None = None,
        proxy: ProxySettings | None = None,
        log_level: str = "info",
        workdir: Path | None = None,
    ) -> None:
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="pc-distribution-"))
        self._owns_workdir = workdir is None
        self.storage_dir = self.workdir / "storage"
        self.config_path = self.workdir / "config.yml"
        self.port = free_port()
        self.token_server = token_server
        self.proxy = proxy
        self.log_level = log_level
        self.process = ManagedProcess(
            [REGISTRY_BIN, "serve", str(self.config_path)],
            log_path=self.workdir / "registry.log",
            env=clean_env(),
            name="docker-registry",
        )

    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": self.log_level, "formatter": "text",
                    "accesslog": {"disabled": False}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage_dir)},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {"addr": self.host, "secret": secrets.token_hex(16)},
        }
        if self.token_server is not None:
            config["auth"] = {"token": {
                "realm": self.token_server.realm,
                "service": self.token_server.service,
                "issuer": self.token_server.issuer,
                "rootcertbundle": str(self.token_server.cert_path),
            }}
        if self.proxy is not None:
            proxy: dict[str, str] = {"remoteurl": self.proxy.remote_url}
            if self.proxy.username is not None:
                proxy["username"] = self.proxy.username
                proxy["password"] = self.proxy.password or ""
            config["proxy"] = proxy
        return config

    def start(self, timeout: float = 20.0) -> Distribution:
        """Write the config, spawn, and wait until `/v2/` answers (401 with token auth)."""
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        retry_on_taken_port(lambda: self._start_once(timeout), self._new_port)
        return self

    def _start_once(self, timeout: float) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        self.process.start()
        self.process.wait_until(
            lambda: http_status(f"{self.url}/v2/") in (200, 401),
            timeout=timeout, what="answering /v2/",
        )

    def _new_port(self) -> None:
        self.port = free_port()

    def requests(self) -> list[AccessRecord]:
        """Every request served so far, oldest first: what clients (or pullcache) asked."""
        found = (_ACCESS_LINE.match(line) for line in self.process.log_text().splitlines())
        return [AccessRecord(m[1], m[2], int(m[3])) for m in found if m]

    def halt(self) -> None:
        """Stop the process but keep storage and port: an upstream outage that `start()`
        ends with the same content on the same URL."""
        self.process.stop()

    def stop(self) -> None:
        """Stop and remove the temp dir (when it was made here). Safe to call twice."""
        self.process.stop()
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Distribution:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_upstream(token_server: TokenServer, **kwargs: Any) -> Distribution:
    """A token-protected Distribution standing in for Docker Hub."""
    return Distribution(token_server=token_server, **kwargs).start()


def start_proxy(
    remote_url: str, *, username: str | None = None, password: str | None = None, **kwargs: Any
) -> Distribution:
    """A Distribution pull-through cache of `remote_url`, open to anonymous clients."""
    return Distribution(proxy=ProxySettings(remote_url, username, password), **kwargs).start()
