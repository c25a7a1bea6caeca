"""check-config reports the cluster settings, and check-config and serve refuse replicas on other hosts that
share a Redis but not a storage backend, in one line naming the keys."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_cli import REPO_ROOT, assert_one_config_error_line, write_config

SECRET = "s" * 40


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PULLCACHE_")} | (env or {})
    return subprocess.run([sys.executable, "-m", "pullcache", *args], check=False, capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=60, env=environ)


def cluster_config(tmp_path: Path, cluster: str) -> str:
    return str(write_config(tmp_path, f"storage: {{path: {tmp_path / 'data'}}}\ncluster: {cluster}\n"))


def test_check_config_reports_the_cluster_settings_without_the_redis_password(tmp_path: Path) -> None:
    config = cluster_config(tmp_path, "{redis: 'redis://:hunter2@127.0.0.1:6379/3', "
                                      "advertise: 'http://127.0.0.1:5000', secret_env: PC_TEST_SECRET}")
    result = run_cli("check-config", "-c", config, env={"PC_TEST_SECRET": SECRET})
    assert result.returncode == 0, result.stderr
    assert ("  cluster redis redis://:***@127.0.0.1:6379/3, advertise http://127.0.0.1:5000, "
            "secret from PC_TEST_SECRET (set), 1 worker\n") in result.stdout
    assert "hunter2" not in result.stdout + result.stderr


def test_check_config_reports_the_embedded_coordination(tmp_path: Path) -> None:
    result = run_cli("check-config", "-c", cluster_config(tmp_path, "{}"))
    assert result.returncode == 0, result.stderr
    assert "  cluster embedded (one host, on storage.path), advertise none, no secret, 1 worker\n" in result.stdout


def test_check_config_warns_when_replicas_on_redis_share_no_secret(tmp_path: Path) -> None:
    result = run_cli("check-config", "-c", cluster_config(tmp_path, "{redis: 'redis://127.0.0.1:6379/0'}"))
    assert result.returncode == 0, result.stderr
    assert [line for line in result.stderr.splitlines() if "cluster.secret_env" in line] == [
        "pullcache: warning: cluster.secret_env: null while cluster.redis is set (each replica then signs "
        "/auth/token tokens with a key of its own, which the others refuse)"]


@pytest.mark.parametrize("command", ["check-config", "serve"])
def test_a_secret_env_naming_an_unset_variable_is_one_line(tmp_path: Path, command: str) -> None:
    config = cluster_config(tmp_path, "{redis: 'redis://127.0.0.1:6379/0', secret_env: PC_TEST_UNSET_SECRET}")
    assert_one_config_error_line(run_cli(command, "-c", config), "cluster.secret_env")


@pytest.mark.parametrize("command", ["check-config", "serve"])
def test_redis_replicas_on_other_hosts_with_a_filesystem_backend_are_refused_in_one_line(
        tmp_path: Path, command: str) -> None:
    config = cluster_config(tmp_path, "{redis: 'redis://127.0.0.1:6379/0', advertise: 'http://10.0.0.7:5000'}")
    result = run_cli(command, "-c", config)
    assert_one_config_error_line(result, "cluster.redis")
    assert "storage.backend: filesystem" in result.stderr and "cluster.advertise" in result.stderr
