"""podman (4.3, Debian's) run rootful with every path of its own under one directory.

podman has no daemon: each `run()` is one CLI process. Its image store (vfs, which needs no
mounts), run root, libpod tmp dir (file locks instead of the host-wide /dev/shm lock, event
log), containers.conf, storage.conf, auth file, trust policy and HOME all live under `root`;
the run root is a short temp dir in /tmp, since podman refuses one longer than 50 characters
(conmon's socket paths must fit). The registries.conf is the caller's.

One path has no setting: rootful podman keeps its blob-info cache in
/var/lib/containers/cache. So each command runs in a mount namespace of its own where /var/lib
is an overlay whose writes land in `root` and vanish with the namespace when podman exits.
Neither /etc/containers nor /var/lib/containers changes, and podmans of parallel tests share
nothing. Only the registries.conf.d drop-ins of /etc are still read: podman cannot move them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
from pathlib import Path

from .cleanup import remove_tree
from .procs import clean_env

PODMAN_BIN = "/usr/bin/podman"
UNSHARE_BIN = "/usr/bin/unshare"
# Mount the overlay on /var/lib (inside the new namespace), then become podman.
_OVERLAY_VAR_LIB = ('mount -t overlay overlay -o "lowerdir=/var/lib,upperdir=$1,workdir=$2" /var/lib'
                    ' && shift 2 && exec "$@"')


class Podman:
    """`run("pull", ...)` runs the real CLI with `registries_conf`; `close()` removes `root`."""

    def __init__(self, root: Path, registries_conf: Path) -> None:
        self.root = Path(root)
        self.registries_conf = Path(registries_conf)
        self.graph_root = self.root / "storage"
        self.run_root = Path(tempfile.mkdtemp(prefix="pc-podman-", dir="/tmp"))
        self.tmp_dir = self.root / "libpod"
        self.home = self.root / "home"
        self.containers_conf = self.root / "containers.conf"
        self.storage_conf = self.root / "storage.conf"
        self.policy = self.root / "policy.json"
        self.authfile = self.root / "auth.json"
        self.var_lib_upper = self.root / "var-lib" / "upper"
        self.var_lib_work = self.root / "var-lib" / "work"
        self._write_config()

    def _write_config(self) -> None:
        for directory in (self.graph_root, self.run_root, self.tmp_dir, self.home, self.var_lib_upper,
                          self.var_lib_work):
            directory.mkdir(parents=True, exist_ok=True)
        self.containers_conf.write_text(
            "[engine]\n"
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            f'events_logfile_path = "{self.tmp_dir / "events.log"}"\n'
            # The default "shm" lock is /dev/shm/libpod_lock, shared by every rootful podman.
            'lock_type = "file"\n'
            f'tmp_dir = "{self.tmp_dir}"\n'
            f'static_dir = "{self.graph_root / "libpod"}"\n'
            f'volume_path = "{self.graph_root / "volumes"}"\n'
            "[network]\n"
            f'network_config_dir = "{self.root / "networks"}"\n'
        )
        self.storage_conf.write_text(
            "[storage]\n"
            'driver = "vfs"\n'
            f'graphroot = "{self.graph_root}"\n'
            f'runroot = "{self.run_root}"\n'
        )
        self.policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
        self.authfile.write_text("{}")

    def run(self, *args: str, check: bool = True, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
        """`podman [private globals] ARGS...` over a private /var/lib; raises with the output if `check` fails."""
        env = clean_env(
            HOME=str(self.home),
            XDG_CONFIG_HOME=str(self.home / ".config"),
            CONTAINERS_CONF=str(self.containers_conf),
            CONTAINERS_STORAGE_CONF=str(self.storage_conf),
            CONTAINERS_REGISTRIES_CONF=str(self.registries_conf),
            REGISTRY_AUTH_FILE=str(self.authfile),
            TMPDIR=str(self.tmp_dir),
        )
        argv = [
            UNSHARE_BIN, "--mount", "--propagation", "private", "--", "sh", "-c", _OVERLAY_VAR_LIB, "sh",
            str(self.var_lib_upper), str(self.var_lib_work),
            PODMAN_BIN, "--root", str(self.graph_root), "--runroot", str(self.run_root),
            "--storage-driver", "vfs", "--tmpdir", str(self.tmp_dir),
            "--cgroup-manager", "cgroupfs", "--events-backend", "file", *args,
        ]
        # Its own process group, so a timeout ends podman's helpers (layer untar) with it.
        with subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True) as child:
            try:
                stdout, stderr = child.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                stdout, stderr = child.communicate()
        result = subprocess.CompletedProcess(argv, child.returncode, stdout, stderr)
        if check and result.returncode != 0:
            raise AssertionError(
                f"podman {' '.join(args)} exited {result.returncode}\n"
                f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"
            )
        return result

    def pull(self, image: str) -> subprocess.CompletedProcess[str]:
        """`podman pull IMAGE` under the private trust policy; stdout is the image ID."""
        return self.run("pull", "--signature-policy", str(self.policy), image)

    def close(self) -> None:
        """Delete the image store and everything else podman wrote (no process outlives `run`)."""
        remove_tree(self.run_root)
        remove_tree(self.root)

    def __enter__(self) -> Podman:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
