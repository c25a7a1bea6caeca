"""Debian's tinyproxy as the outbound HTTP proxy of the upstream-proxy tests, on a loopback port with a
config of its own (no system config, no service), stopped by its PID. Its log lists every request it
relayed, which is how a test proves what went through it."""
from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

from .procs import ManagedProcess, OnLoopback, clean_env, free_port, retry_on_taken_port

TINYPROXY_BIN = "/usr/bin/tinyproxy"
# CONNECT   Dec 01 15:26:49.246 [17652]: Request (file descriptor 5): GET http://127.0.0.1:38124/foo HTTP/1.1
_REQUEST = re.compile(r"Request \(file descriptor \d+\): (\S+) (\S+) HTTP/")


class Tinyproxy(OnLoopback):
    def __init__(self, *, basic_auth: tuple[str, str] | None = None) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="pc-tinyproxy-"))
        self.port = free_port()
        self.basic_auth = basic_auth
        self.config_path = self.workdir / "tinyproxy.conf"
        self.log_path = self.workdir / "tinyproxy.log"
        self.process = ManagedProcess([TINYPROXY_BIN, "-d", "-c", str(self.config_path)],
                                      log_path=self.workdir / "stdout.log", env=clean_env(), name="tinyproxy")

    def config(self) -> str:
        lines = [f"Port {self.port}", "Listen 127.0.0.1", "Timeout 60", f'LogFile "{self.log_path}"',
                 "LogLevel Info", f'PidFile "{self.workdir / "tinyproxy.pid"}"', "MaxClients 100",
                 "Allow 127.0.0.1", "DisableViaHeader Yes"]
        if self.basic_auth is not None:
            lines.append(f"BasicAuth {self.basic_auth[0]} {self.basic_auth[1]}")
        return "\n".join(lines) + "\n"

    def start(self) -> Tinyproxy:
        retry_on_taken_port(self._start_once, self._new_port)
        return self

    def _start_once(self) -> None:
        self.config_path.write_text(self.config())
        self.process.start()
        self.process.wait_until(lambda: "Accepting connections" in self._log(), timeout=10,
                                what="accepting connections")

    def _new_port(self) -> None:
        self.port = free_port()

    def _log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace") + self.process.log_text()
        except FileNotFoundError:
            return self.process.log_text()

    def requests(self) -> list[tuple[str, str]]:
        """(method, absolute URL) of every request relayed so far, oldest first."""
        return [(m[1], m[2]) for m in _REQUEST.finditer(self._log())]

    def stop(self) -> None:
        self.process.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
