"""Debian's redis-server on a loopback port, in memory only (no RDB, no AOF), stopped by its PID.

`redis_server` is the session's shared one (import it into a conftest); a test that stops Redis to see
what a Redis outage does starts its own `RedisServer`, which `start()` brings back on the same port.
"""
from __future__ import annotations

import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .cleanup import remove_tree
from .procs import ManagedProcess, OnLoopback, clean_env, free_port, retry_on_taken_port

REDIS_BIN = "/usr/bin/redis-server"


def _pongs(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer(OnLoopback):
    def __init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="pc-redis-"))
        self.port = free_port()
        self._started_once = False
        self.process = self._process()

    def _process(self) -> ManagedProcess:
        argv = [REDIS_BIN, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.workdir)]
        return ManagedProcess(argv, log_path=self.workdir / "redis.log", env=clean_env(), name="redis-server")

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start; the first start moves to another port if the chosen one was taken, later ones keep it."""
        if self._started_once:
            self._start_once()
        else:
            retry_on_taken_port(self._start_once, self._new_port)
            self._started_once = True
        return self

    def _start_once(self) -> None:
        self.process.start()
        self.process.wait_until(lambda: _pongs(self.port), timeout=10, what="answering PING")

    def _new_port(self) -> None:
        self.port = free_port()
        self.process = self._process()

    def stop(self) -> None:
        """Stop it (its data is gone: nothing is saved)."""
        self.process.stop()

    def close(self) -> None:
        self.stop()
        remove_tree(self.workdir)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """The session's Redis: tests use keys of their own and never stop it."""
    server = RedisServer().start()
    yield server
    server.close()
