"""deploy/systemd/pullcache.service's host install, in a private mount namespace.

The unit names absolute paths (/opt/pullcache/.venv, /etc/pullcache/proxy.yml,
/var/lib/pullcache) that the tests must not create on the machine. Each command here runs
under `unshare --mount` with /opt, /etc and /var/lib overlaid by directories of a temp dir:
the namespace sees the machine's files plus the install, the machine sees nothing of it, and
the install persists in the temp dir from one namespace to the next. The install follows
deploy/README.md: `python3.11 -m venv /opt/pullcache/.venv`, `pip install` of a checkout,
proxy.yml and the unit under /etc.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from .cleanup import remove_tree
from .procs import ManagedProcess, clean_env

REPO_ROOT = Path(__file__).resolve().parents[2]
UNIT = REPO_ROOT / "deploy" / "systemd" / "pullcache.service"
OVERLAID = ("/opt", "/etc", "/var/lib")
# systemd's range for DynamicUser= uids (61184-65519); the test takes one, as systemd would.
DYNAMIC_UID = 61184 + 4242
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def parse_unit(path: Path = UNIT) -> dict[str, dict[str, list[str]]]:
    """{section: {key: [values in order]}} of a unit file (no line continuations are used)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"not a unit file line: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


class HostInstall:
    """/opt, /etc and /var/lib as seen by the unit, kept in a temp dir."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="pc-hostinstall-", dir="/tmp"))
        for target in OVERLAID:
            for part in ("upper", "work"):
                (self.root / part / target.strip("/").replace("/", "-")).mkdir(parents=True)

    def path(self, inside: str) -> Path:
        """Where a file the namespace sees at `inside` (under an overlaid dir) is kept."""
        for target in OVERLAID:
            if inside.startswith(target + "/"):
                return self.root / "upper" / target.strip("/").replace("/", "-") / inside[len(target) + 1:]
        raise ValueError(f"{inside} is not under {OVERLAID}")

    def _mounts(self) -> str:
        lines = []
        for target in OVERLAID:
            name = target.strip("/").replace("/", "-")
            options = f"lowerdir={target},upperdir={self.root / 'upper' / name},workdir={self.root / 'work' / name}"
            lines.append(f"mount -t overlay overlay -o {options} {target}")
        return " && ".join(lines)

    def argv(self, script: str) -> list[str]:
        """Run `script` with sh in a new mount namespace that sees the install."""
        return ["unshare", "--mount", "--propagation", "private", "sh", "-ec", f"{self._mounts()}\n{script}"]

    def run(self, script: str, *, timeout: float = 600.0) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(self.argv(script), env=clean_env(), capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise AssertionError(f"exited {result.returncode}: {script}\nstdout:\n{result.stdout[-4000:]}\n"
                                 f"stderr:\n{result.stderr[-4000:]}")
        return result

    def install(self, proxy_yml: str) -> None:
        """deploy/README.md's systemd steps, except systemctl (no systemd runs as PID 1 here)."""
        checkout = self.root / "checkout"
        shutil.copytree(REPO_ROOT, checkout, ignore=shutil.ignore_patterns(
            ".git", ".venv", "data", "build", "__pycache__", ".pytest_cache", "*.egg-info"))
        (self.root / "proxy.yml").write_text(proxy_yml)
        self.run(
            "python3.11 -m venv /opt/pullcache/.venv\n"
            f"/opt/pullcache/.venv/bin/pip install -q {checkout}\n"
            f"install -D -m 0644 {self.root / 'proxy.yml'} /etc/pullcache/proxy.yml\n"
            f"install -m 0644 {UNIT} /etc/systemd/system/\n"
        )
        shutil.rmtree(checkout)

    def service_process(self, log_path: Path) -> ManagedProcess:
        """The unit's ExecStart as written, started as systemd would for this unit: its dynamic
        user, StateDirectory, WorkingDirectory, UMask and Environment, no new privileges and no
        capabilities. The sandboxing options (ProtectSystem=, SystemCallFilter=, ...) need
        systemd itself and are left out."""
        service = parse_unit()["Service"]
        (exec_start,) = service["ExecStart"]
        (state_dir,) = service["StateDirectory"]
        (mode,) = service.get("StateDirectoryMode", ["0755"])
        (workdir,) = service["WorkingDirectory"]
        (umask,) = service.get("UMask", ["0022"])
        assert service["DynamicUser"] == ["yes"]
        env = _environment(service.get("Environment", []))
        state = f"/var/lib/{state_dir}"
        script = (
            f"install -d -o {DYNAMIC_UID} -g {DYNAMIC_UID} -m {mode} {state}\n"
            f"cd {shlex.quote(workdir)}\n"
            f"umask {umask}\n"
            f"exec env -i {' '.join(shlex.quote(f'{k}={v}') for k, v in env.items())} "
            f"setpriv --reuid={DYNAMIC_UID} --regid={DYNAMIC_UID} --clear-groups --no-new-privs "
            f"--inh-caps=-all --bounding-set=-all -- {exec_start}\n"
        )
        return ManagedProcess(self.argv(script), log_path=log_path, env=clean_env(), name="pullcache.service")

    def remove(self) -> None:
        remove_tree(self.root)


def _environment(assignments: Sequence[str]) -> Mapping[str, str]:
    """The environment systemd gives a system service: PATH, LANG, then the unit's Environment=."""
    env = {"PATH": SYSTEMD_PATH, "LANG": "C.UTF-8"}
    for assignment in assignments:
        for word in shlex.split(assignment):
            key, _, value = word.partition("=")
            env[key] = value
    return env
