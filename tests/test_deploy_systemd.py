"""deploy/systemd/pullcache.service, installed as deploy/README.md says, verified and run.

No systemd runs as PID 1 here, so `systemctl start` cannot be used: `systemd-analyze verify`
(which needs none) checks the unit where it is installed, with its ExecStart binary present, and
the ExecStart line runs exactly as written under the unit's dynamic user, state directory,
working directory, umask and environment (tests/support/host_install.py). All of it happens in
a private mount namespace: the machine's /opt, /etc and /var/lib are left as they were.
"""
from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.support.host_install import DYNAMIC_UID, HostInstall, parse_unit
from tests.support.images import DOCKER_LIST
from tests.support.procs import free_port, http_status
from tests.support.pullcache_proc import docker_hub_upstream
from tests.support.seed import Upstream

STATE = "/var/lib/pullcache"


@pytest.fixture(scope="module")
def installed(upstream: Upstream) -> Iterator[tuple[HostInstall, int]]:
    port = free_port()
    config = {
        "listen": f"127.0.0.1:{port}",
        # The unit's Environment= moves the store to its state directory whatever this says.
        "storage": {"path": "/srv/not-the-state-directory"},
        "upstreams": [docker_hub_upstream(upstream.url)],
    }
    install = HostInstall()
    try:
        install.install(yaml.safe_dump(config))
        yield install, port
    finally:
        install.remove()


def test_systemd_analyze_verify_accepts_the_installed_unit(installed: tuple[HostInstall, int]) -> None:
    install, _ = installed
    result = install.run("systemd-analyze verify /etc/systemd/system/pullcache.service 2>&1")
    assert result.stdout.strip() == ""


def test_systemd_analyze_verify_rejects_a_missing_exec_start_binary(installed: tuple[HostInstall, int]) -> None:
    """The check above is real: without the install, verify fails on the unit's ExecStart."""
    install, _ = installed
    result = install.run("mv /opt/pullcache/.venv/bin/pullcache /tmp/moved\n"
                         "systemd-analyze verify /etc/systemd/system/pullcache.service 2>&1 || echo failed\n"
                         "mv /tmp/moved /opt/pullcache/.venv/bin/pullcache")
    assert "/opt/pullcache/.venv/bin/pullcache is not executable" in result.stdout
    assert result.stdout.strip().endswith("failed")


def test_exec_start_serves_v2_as_the_units_user_from_its_state_directory(
        installed: tuple[HostInstall, int], upstream: Upstream, tmp_path: Path) -> None:
    install, port = installed
    service = install.service_process(tmp_path / "service.log")
    service.start()
    try:
        service.wait_until(lambda: http_status(f"http://127.0.0.1:{port}/v2/") == 200, timeout=30,
                           what="answering /v2/")
        uids = Path(f"/proc/{service.pid}/status").read_text().split("Uid:", 1)[1].split()[:4]
        assert uids == [str(DYNAMIC_UID)] * 4
        assert Path(f"/proc/{service.pid}/cwd").resolve() == Path(STATE)

        request = urllib.request.Request(f"http://127.0.0.1:{port}/v2/library/alpine/manifests/latest",
                                         headers={"Accept": DOCKER_LIST})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.headers["Docker-Content-Digest"] == upstream.seed.alpine.digest
            json.loads(response.read())
    finally:
        service.stop()
    state = install.path(STATE)
    assert state.stat().st_uid == DYNAMIC_UID
    assert oct(state.stat().st_mode & 0o777) == "0o" + parse_unit()["Service"]["StateDirectoryMode"][0].lstrip("0")
    stored = [p for p in state.rglob("*") if p.is_file()]
    assert stored and all(p.stat().st_uid == DYNAMIC_UID for p in stored)
    assert all(p.stat().st_mode & 0o007 == 0 for p in stored)  # UMask=0027: nothing for others
    assert not os.path.exists("/opt/pullcache") and not os.path.exists("/etc/pullcache")
