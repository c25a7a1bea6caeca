"""A private dockerd (20.10, Debian's docker.io) for end-to-end pulls through a mirror.

Everything it owns lives in one temp dir under /tmp (short, because the API socket path
must fit in 108 bytes): data root (vfs, which works on any filesystem), exec root, pid
file, daemon.json and the client's DOCKER_CONFIG. It runs on a harness-started containerd
(`--containerd`) instead of spawning its own, whose config would create /opt/containerd
and which outlives a killed dockerd. No bridge and no iptables: pulls need neither, and
the host's network stays as it was.
"""

from __future__ import annotations

import json
import socket
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .cleanup import remove_tree
from .containerd import Containerd
from .procs import ManagedProcess, clean_env

DOCKERD_BIN = "/usr/sbin/dockerd"
DOCKER_BIN = "/usr/bin/docker"  # /usr/local/bin/docker is a newer, different client


class Dockerd:
    """dockerd with `registry-mirrors` (and optionally insecure registries) set."""

    def __init__(
        self,
        *,
        mirrors: Sequence[str] = (),
        insecure_registries: Sequence[str] = (),
        extra_config: Mapping[str, Any] | None = None,
    ) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="pc-dockerd-", dir="/tmp"))
        self.data_root = self.root / "data"
        self.exec_root = self.root / "exec"
        self.socket_path = self.root / "docker.sock"
        self.pidfile = self.root / "dockerd.pid"
        self.config_path = self.root / "daemon.json"
        self.client_config = self.root / "client"
        self.containerd = Containerd()
        self.daemon_config: dict[str, Any] = {
            "registry-mirrors": list(mirrors),
            "insecure-registries": list(insecure_registries),
            # The legacy trust key would otherwise be written to /etc/docker/key.json.
            "deprecated-key-path": str(self.root / "key.json"),
            **(extra_config or {}),
        }
        self.process = ManagedProcess(
            [
                DOCKERD_BIN,
                "--storage-driver=vfs",
                "--iptables=false",
                "--ip6tables=false",
                "--bridge=none",
                f"--data-root={self.data_root}",
                f"--exec-root={self.exec_root}",
                f"--pidfile={self.pidfile}",
                f"--host=unix://{self.socket_path}",
                f"--config-file={self.config_path}",
                f"--containerd={self.containerd.address}",
            ],
            log_path=self.root / "dockerd.log",
            env=clean_env(),
            name="dockerd",
        )

    @property
    def host(self) -> str:
        """The value for `docker -H`."""
        return f"unix://{self.socket_path}"

    def start(self, timeout: float = 60.0) -> Dockerd:
        """Write daemon.json, spawn, and wait until the API answers `/_ping`."""
        self.client_config.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.daemon_config, indent=2))
        self.containerd.start()
        self.process.start()
        self.process.wait_until(self._pings, timeout=timeout, what="answering /_ping")
        return self

    def _pings(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(1.0)
                sock.connect(str(self.socket_path))
                sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
                status_line = sock.recv(64).split(b"\r\n", 1)[0]
                return b" 200 " in status_line + b" "
        except OSError:
            return False

    def docker(
        self, *args: str, check: bool = True, timeout: float = 300.0, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run `/usr/bin/docker -H unix://SOCK ARGS...`; raises with output if `check` fails."""
        env = clean_env(DOCKER_CONFIG=str(self.client_config))
        result = subprocess.run(
            [DOCKER_BIN, "-H", self.host, *args],
            env=env, capture_output=True, text=True, timeout=timeout, input=input,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"docker {' '.join(args)} exited {result.returncode}\nstdout:\n{result.stdout}\n"
                f"stderr:\n{result.stderr}\ndockerd log tail:\n{self.process.log_tail(40)}"
            )
        return result

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM dockerd, stop its containerd, unmount and delete the temp dirs.
        Safe to call twice."""
        self.process.stop(timeout)
        self.containerd.stop()
        remove_tree(self.root)

    def __enter__(self) -> Dockerd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
