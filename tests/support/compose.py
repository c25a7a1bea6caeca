"""deploy/docker-compose.yml run by Debian's docker-compose against a private dockerd.

The private daemons have no bridge network (see dockerd.py), so the stack runs on the host
network with loopback ports: `stack_on_loopback` derives that from the shipped file and
changes only what host networking needs (no `ports:`, the listen addresses, the scrape
targets and, to see a scrape within seconds, the scrape interval). Grafana has no Debian
package and cannot be pulled here, so it is left out. Everything else (images, volumes,
mounts, environment, Prometheus' flags, the alert rules) is the shipped stack's.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from .dockerd import Dockerd
from .procs import clean_env

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
COMPOSE_BIN = "/usr/bin/docker-compose"
SHIPPED_TARGET = "pullcache:5000"
SHIPPED_SELF_TARGET = "localhost:9090"


def stack_on_loopback(workdir: Path, *, proxy_yml: str, pullcache_port: int, prometheus_port: int) -> Path:
    """Write WORKDIR/docker-compose.yml and the files it mounts; return the compose file."""
    compose: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    services = compose["services"]
    del services["grafana"]
    del compose["volumes"]["grafana-data"]
    for service in services.values():
        del service["ports"]
        service["network_mode"] = "host"
    del services["pullcache"]["build"]  # the session's image is tagged as the file's `image:`
    services["pullcache"]["environment"]["PULLCACHE_LISTEN"] = f"127.0.0.1:{pullcache_port}"
    services["prometheus"]["command"].append(f"--web.listen-address=127.0.0.1:{prometheus_port}")

    (workdir / "proxy.yml").write_text(proxy_yml)
    prometheus_dir = workdir / "prometheus"
    prometheus_dir.mkdir(mode=0o755)
    shutil.copy(DEPLOY / "prometheus" / "alerts.yml", prometheus_dir)
    config = (DEPLOY / "prometheus" / "prometheus.yml").read_text()
    assert SHIPPED_TARGET in config and SHIPPED_SELF_TARGET in config
    config = config.replace(SHIPPED_TARGET, f"127.0.0.1:{pullcache_port}")
    config = config.replace(SHIPPED_SELF_TARGET, f"127.0.0.1:{prometheus_port}")
    config = config.replace("scrape_interval: 15s", "scrape_interval: 1s")
    (prometheus_dir / "prometheus.yml").write_text(config)
    for path in (workdir / "proxy.yml", *prometheus_dir.iterdir()):
        path.chmod(0o644)

    path = workdir / "docker-compose.yml"
    path.write_text(yaml.safe_dump(compose, sort_keys=False))
    return path


def compose(daemon: Dockerd, compose_file: Path, project: str, *args: str, env: dict[str, str] | None = None,
            check: bool = True, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
    """`docker-compose -p PROJECT -f FILE ARGS` against `daemon`."""
    result = subprocess.run(
        [COMPOSE_BIN, "-p", project, "-f", str(compose_file), *args],
        env=clean_env(DOCKER_HOST=daemon.host, DOCKER_CONFIG=str(daemon.client_config), **(env or {})),
        capture_output=True, text=True, timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"docker-compose {' '.join(args)} exited {result.returncode}\n"
                             f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}")
    return result
