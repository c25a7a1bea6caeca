"""pullcache as a real subprocess: `python -m pullcache serve -c proxy.yml`.

Tests that need restarts, crashes (SIGKILL) or real clients talk to this rather than to an
in-process app, so they see exactly what an operator would run.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from pullcache.cache.configured import store_for
from pullcache.cache.store import Store
from pullcache.config import load_config
from pullcache.digests import Digest

from .procs import ManagedProcess, OnLoopback, free_port, http_status, retry_on_taken_port

REPO_ROOT = Path(__file__).resolve().parents[2]


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """`override` over `base`, recursing into mappings; lists and scalars are replaced."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def docker_hub_upstream(url: str, **extra: Any) -> dict[str, Any]:
    """An `upstreams:` entry named docker.io (the default) pointing at a local registry."""
    return {
        "name": "docker.io",
        "url": url,
        "default": True,
        "manifest_ttl": "5m",
        "token_hosts": ["127.0.0.1"],
        **extra,
    }


class PullcacheProcess(OnLoopback):
    """One pullcache server on 127.0.0.1 with its config, data dir and log under `workdir`.

    The listen port is chosen once, so `restart()` comes back on the same URL.
    """

    def __init__(
        self,
        workdir: Path,
        config: Mapping[str, Any] | None = None,
        *,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.port = free_port()
        self.data_dir = self.workdir / "data"
        self.config_path = self.workdir / "proxy.yml"
        self.log_path = self.workdir / "pullcache.log"
        base = {
            "listen": f"127.0.0.1:{self.port}",
            "storage": {"path": str(self.data_dir)},
            "log": {"level": "debug", "format": "text"},
            # Most tests push without users: they opt in as an operator would. Tests of the
            # default (pushes need a user) set anonymous_push: false.
            "local": {"anonymous_push": True},
        }
        self.config = deep_merge(base, config or {})
        self._started_once = False
        self.process = ManagedProcess(
            [sys.executable, "-m", "pullcache", "serve", "-c", str(self.config_path)],
            log_path=self.log_path,
            env=self._environment(env or {}),
            cwd=REPO_ROOT,
            name="pullcache",
        )

    @staticmethod
    def _environment(extra: Mapping[str, str]) -> dict[str, str]:
        # The host's own PULLCACHE_* overrides must not change what a test configured.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PULLCACHE_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        env.update(extra)
        return env

    def write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))

    def start(self, timeout: float = 20.0) -> PullcacheProcess:
        """Write proxy.yml, spawn, and wait until it answers HTTP (`/healthz` or `/v2/`).

        The first start moves to another port if the chosen one was taken meanwhile;
        later starts keep the port, as a restarted server would.
        """
        if self._started_once:
            self._start_once(timeout)
        else:
            retry_on_taken_port(lambda: self._start_once(timeout), self._new_port)
            self._started_once = True
        return self

    def _start_once(self, timeout: float) -> None:
        self.write_config()
        self.process.start()
        self.process.wait_until(self._answers, timeout=timeout, what="answering HTTP")

    def _new_port(self) -> None:
        self.port = free_port()
        self.config["listen"] = f"127.0.0.1:{self.port}"

    def _answers(self) -> bool:
        return http_status(f"{self.url}/healthz") == 200 or http_status(f"{self.url}/v2/") is not None

    def stop(self, timeout: float = 15.0) -> None:
        """Graceful stop (SIGTERM, then SIGKILL after `timeout`)."""
        self.process.stop(timeout)

    def kill(self) -> None:
        """SIGKILL: a crash, leaving whatever was half-written on disk."""
        self.process.kill()

    def start_advertising_itself(self) -> PullcacheProcess:
        """Start with cluster.advertise set to this process's own URL (how peers reach it), started again
        under the URL it ends up with if its port was taken meanwhile and another chosen."""
        self.config["cluster"]["advertise"] = self.url
        self.start()
        if self.config["cluster"]["advertise"] != self.url:
            self.config["cluster"]["advertise"] = self.url
            self.restart()
        return self

    def restart(self, timeout: float = 20.0) -> PullcacheProcess:
        """Stop if running, then start again on the same port and data dir.

        proxy.yml is rewritten from `.config`, so a test may change it in between.
        """
        self.stop()
        return self.start(timeout)

    def cli(self, command: str, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run `pullcache COMMAND -c proxy.yml ARGS...` (gc, warm, check-config) to completion."""
        self.write_config()
        return subprocess.run(
            [sys.executable, "-m", "pullcache", command, "-c", str(self.config_path), *args],
            env=self.process.env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
        )

    @contextlib.asynccontextmanager
    async def store(self) -> AsyncIterator[Store]:
        """An open Store on this process's storage, beside the server (as `pullcache gc` opens it): tests look
        at what is stored through it, whatever the backend."""
        store = store_for(load_config(self.config_path, self.process.env).storage)
        await store.open()
        try:
            yield store
        finally:
            await store.close()

    def blob_size(self, digest: str) -> int | None:
        """A committed blob's size in this process's store, or None. Runs its own event loop: call it from
        synchronous tests (async ones use `store()`)."""
        async def ask() -> int | None:
            async with self.store() as store:
                return store.blob_size(Digest.parse(digest))
        return asyncio.run(ask())

    @property
    def alive(self) -> bool:
        return self.process.alive

    def log_text(self) -> str:
        return self.process.log_text()

    def wait_for_log(self, pattern: str, *, count: int = 1, timeout: float = 15.0) -> str:
        """The log once `pattern` (a regular expression) is in it `count` times. pullcache writes its lines
        from a thread of its own, soon after they are logged rather than at once: a line about what a
        response just showed may not be written yet when the response arrives."""
        self.process.wait_until(lambda: len(re.findall(pattern, self.log_text())) >= count, timeout=timeout,
                                what=f"{pattern!r} in the log")
        return self.log_text()

    def __enter__(self) -> PullcacheProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
