"""A private containerd (1.6) plus `ctr`, and containerd's hosts.toml mirror files.

containerd reaches a mirror through `DIR/<registry>/hosts.toml` and adds `?ns=<registry>`
to every request it sends there; that is the path pullcache's `ns` routing serves. The
daemon gets its own root, state, sockets and opt dir under one temp dir, and no CRI plugin
(nothing here runs Kubernetes), so it never meets a system containerd.
"""

from __future__ import annotations

import socket
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .cleanup import remove_tree
from .procs import ManagedProcess, clean_env

CONTAINERD_BIN = "/usr/bin/containerd"
CTR_BIN = "/usr/bin/ctr"

# Plugins that cannot work in a test VM (no btrfs/zfs/devmapper/aufs) or are not wanted.
_DISABLED_PLUGINS = (
    "io.containerd.grpc.v1.cri",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
)


def write_hosts_toml(
    hosts_dir: Path,
    mirror_url: str,
    *,
    registry: str = "docker.io",
    capabilities: Sequence[str] = ("pull", "resolve"),
) -> Path:
    """Write `hosts_dir/<registry>/hosts.toml` naming `mirror_url` as a mirror.

    No `server` line: like an operator's file, the registry itself stays the fallback.
    `skip_verify` only matters for an https mirror with a test certificate.
    """
    path = Path(hosts_dir) / registry / "hosts.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    caps = ", ".join(f'"{c}"' for c in capabilities)
    path.write_text(
        f'[host."{mirror_url.rstrip("/")}"]\n'
        f"  capabilities = [{caps}]\n"
        f"  skip_verify = true\n"
    )
    return path


class Containerd:
    """containerd on a unix socket in its own temp dir; `ctr()` runs the CLI against it."""

    def __init__(self, *, snapshotter: str = "overlayfs", namespace: str = "pullcache-test") -> None:
        """`snapshotter` unpacks pulls: overlayfs here; "native" where overlay cannot nest."""
        self.root = Path(tempfile.mkdtemp(prefix="pc-containerd-", dir="/tmp"))
        self.address = self.root / "containerd.sock"
        self.config_path = self.root / "config.toml"
        self.hosts_dir = self.root / "hosts.d"
        self.snapshotter = snapshotter
        self.namespace = namespace
        self.process = ManagedProcess(
            [CONTAINERD_BIN, "--config", str(self.config_path)],
            log_path=self.root / "containerd.log",
            env=clean_env(),
            name="containerd",
        )

    def config_toml(self) -> str:
        disabled = ", ".join(f'"{p}"' for p in _DISABLED_PLUGINS)
        return (
            "version = 2\n"
            f'root = "{self.root / "root"}"\n'
            f'state = "{self.root / "state"}"\n'
            f"disabled_plugins = [{disabled}]\n"
            "[grpc]\n"
            f'  address = "{self.address}"\n'
            "[ttrpc]\n"
            f'  address = "{self.address}.ttrpc"\n'
            "[debug]\n"
            '  address = ""\n'
            "[metrics]\n"
            '  address = ""\n'
            '[plugins."io.containerd.internal.v1.opt"]\n'
            # default is /opt/containerd on the host
            f'  path = "{self.root / "opt"}"\n'
        )

    def start(self, timeout: float = 30.0) -> Containerd:
        """Write config.toml, spawn, and wait until the gRPC socket accepts connections."""
        self.config_path.write_text(self.config_toml())
        self.process.start()
        self.process.wait_until(self._accepts, timeout=timeout, what="listening on its socket")
        return self

    def _accepts(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.connect(str(self.address))
            return True
        except OSError:
            return False

    def ctr(self, *args: str, check: bool = True, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
        """Run `ctr --address SOCK --namespace NS ARGS...`; raises with output if `check` fails."""
        result = subprocess.run(
            [CTR_BIN, "--address", str(self.address), "--namespace", self.namespace, *args],
            env=clean_env(), capture_output=True, text=True, timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"ctr {' '.join(args)} exited {result.returncode}\nstdout:\n{result.stdout}\n"
                f"stderr:\n{result.stderr}\ncontainerd log tail:\n{self.process.log_tail(40)}"
            )
        return result

    def pull_via_mirror(
        self,
        mirror_url: str,
        image: str,
        *,
        platform: str | None = "linux/amd64",
        user: str | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """`ctr images pull --hosts-dir` of e.g. `docker.io/library/alpine:latest` with
        `mirror_url` written as that registry's mirror; `user` is "name:password"."""
        write_hosts_toml(self.hosts_dir, mirror_url, registry=image.split("/", 1)[0])
        args = ["images", "pull", "--hosts-dir", str(self.hosts_dir), "--snapshotter", self.snapshotter]
        args += ["--platform", platform] if platform else ["--all-platforms"]
        if user is not None:
            args += ["--user", user]
        return self.ctr(*args, image, check=check)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM, then unmount and delete the temp dir. Safe to call twice."""
        self.process.stop(timeout)
        remove_tree(self.root)

    def __enter__(self) -> Containerd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
