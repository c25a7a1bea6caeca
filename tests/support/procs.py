"""Child processes with a log file, readiness polling and stop-by-PID.

Every component the harness starts goes through `ManagedProcess`, so a failed start
always shows the child's own output and nothing outlives the test that started it.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

POLL_INTERVAL = 0.05
BIND_ATTEMPTS = 3  # fresh ports to try when the chosen one was taken before the child bound it


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now.

    For programs that take a port in their config (Distribution, pullcache); the small
    window until they bind it is accepted.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_status(url: str, timeout: float = 1.0) -> int | None:
    """Status code of a GET, or None if nothing answered (refused, reset, timeout)."""
    request = urllib.request.Request(url, method="GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code
    except (OSError, http.client.HTTPException):  # URLError is an OSError
        return None


class OnLoopback:
    """The addresses of a server listening on 127.0.0.1:`port`."""

    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        """`127.0.0.1:PORT`, the registry part of an image reference."""
        return f"127.0.0.1:{self.port}"


class StartError(RuntimeError):
    """A component did not become ready; the message carries its log tail."""

    @property
    def port_taken(self) -> bool:
        """The child could not bind: another process took the port `free_port` chose."""
        return "address already in use" in str(self).lower()


class ManagedProcess:
    """One child process whose stdout+stderr go to `log_path`."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        name: str | None = None,
    ) -> None:
        self.argv = list(argv)
        self.log_path = Path(log_path)
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.name = name or Path(argv[0]).name
        self._popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Spawn the child in its own session so a terminal ^C reaches only pytest."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"--- start: {' '.join(self.argv)}\n".encode())
            log.flush()
            self._popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        if self._popen is None:
            raise RuntimeError(f"{self.name} was never started")
        return self._popen.pid

    @property
    def alive(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self._popen is None else self._popen.poll()

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, wait up to `timeout`, then SIGKILL. Safe to call twice."""
        if not self.alive:
            self._reap()
            return
        assert self._popen is not None
        self._popen.send_signal(signal.SIGTERM)
        try:
            self._popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL the child (crash simulation) and reap it."""
        if self.alive:
            assert self._popen is not None
            self._popen.kill()
        self._reap()

    def _reap(self) -> None:
        if self._popen is not None:
            self._popen.wait()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def wait_until(self, ready: Callable[[], bool], *, timeout: float, what: str) -> None:
        """Poll `ready` until true; fail fast with the log if the child exits first."""
        deadline = time.monotonic() + timeout
        while True:
            # Alive is checked after ready too: an answer from a stranger that took our
            # port while our child died binding it must not count.
            if ready() and self.alive:
                return
            if not self.alive:
                raise StartError(
                    f"{self.name} exited with {self.returncode} before {what}; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise StartError(
                    f"{self.name} not {what} after {timeout}s; log {self.log_path}:\n"
                    f"{self.log_tail()}"
                )
            time.sleep(POLL_INTERVAL)


def retry_on_taken_port(start_once: Callable[[], None], pick_new_port: Callable[[], None]) -> None:
    """Run `start_once`; if the child could not bind, pick another port and try again."""
    for attempt in range(BIND_ATTEMPTS):
        try:
            start_once()
            return
        except StartError as err:
            if not err.port_taken or attempt == BIND_ATTEMPTS - 1:
                raise
            pick_new_port()


def clean_env(**extra: str) -> dict[str, str]:
    """A minimal environment so host settings (proxies, REGISTRY_*, DOCKER_*) do not leak in."""
    env = {
        # /usr/local/bin holds a newer docker client; the Debian binaries are the ones tested.
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
    }
    env.update(extra)
    return env
