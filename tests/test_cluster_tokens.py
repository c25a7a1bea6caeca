"""/auth/token tokens signed with a key derived from the cluster secret: any pullcache process that shares
the secret accepts a token another one issued (two real processes, as two replicas)."""
from __future__ import annotations

import base64
import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pullcache.cluster.secret import TOKEN_KEY_LABEL, cluster_secret, derive_key
from pullcache.config import ClusterConfig, ConfigError
from tests.support.htpasswd import write_htpasswd
from tests.support.pullcache_proc import REPO_ROOT, PullcacheProcess

SECRET = {"PC_CLUSTER_SECRET": "4f1c0e9d2b7a6c5e8f3a1b0d9c8e7f6a5b4c3d2e"}
SCOPE = "repository:library/alpine:pull"


def _status(url: str, headers: dict[str, str]) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _token(proc: PullcacheProcess) -> str:
    basic = "Basic " + base64.b64encode(b"alice:alice-password").decode()
    status, body = _status(f"{proc.url}/auth/token?service=pullcache&scope={SCOPE}", {"Authorization": basic})
    assert status == 200, body
    return str(json.loads(body)["token"])


def _pull_status(proc: PullcacheProcess, token: str) -> int:
    return _status(f"{proc.url}/v2/library/alpine/manifests/latest", {"Authorization": f"Bearer {token}"})[0]


def _config(tmp_path: Path, secret_env: str | None) -> dict[str, Any]:
    htpasswd = write_htpasswd(tmp_path / "htpasswd", {"alice": "alice-password"})
    return {"auth": {"htpasswd": str(htpasswd), "pull": "authenticated"}, "cluster": {"secret_env": secret_env},
            "local": {"anonymous_push": False}}  # anyone who may push a bare name may also read it


def test_a_token_from_one_process_is_accepted_by_another_sharing_the_secret(
        pullcache_factory: Callable[..., PullcacheProcess], tmp_path: Path) -> None:
    a = pullcache_factory(_config(tmp_path, "PC_CLUSTER_SECRET"), env=SECRET)
    b = pullcache_factory(_config(tmp_path, "PC_CLUSTER_SECRET"), env=SECRET)
    token = _token(a)
    assert _pull_status(a, token) == 200
    assert _pull_status(b, token) == 200
    b.restart()
    assert _pull_status(b, token) == 200, "a restart keeps the key"


def test_without_the_secret_each_process_signs_with_its_own_key(
        pullcache_factory: Callable[..., PullcacheProcess], tmp_path: Path) -> None:
    a = pullcache_factory(_config(tmp_path, None))
    b = pullcache_factory(_config(tmp_path, None))
    token = _token(a)
    assert _pull_status(a, token) == 200
    assert _pull_status(b, token) == 401


def test_a_secret_variable_that_is_not_set_stops_serve_naming_the_key(
        pullcache_factory: Callable[..., PullcacheProcess], tmp_path: Path) -> None:
    proc = pullcache_factory(_config(tmp_path, "PC_CLUSTER_SECRET"), start=False)
    proc.write_config()
    result = subprocess.run([sys.executable, "-m", "pullcache", "serve", "-c", str(proc.config_path)],
                            env=proc.process.env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith("pullcache: config error: cluster.secret_env: the environment variable "
                                    "PC_CLUSTER_SECRET is not set"), result.stderr


def test_a_short_secret_is_refused_and_the_key_depends_on_the_secret_alone() -> None:
    cluster = ClusterConfig(secret_env="PC_CLUSTER_SECRET")
    with pytest.raises(ConfigError, match=r"^cluster\.secret_env: the environment variable PC_CLUSTER_SECRET "
                                          r"holds only 5 characters"):
        cluster_secret(cluster, {"PC_CLUSTER_SECRET": "short"})
    secret = cluster_secret(cluster, SECRET)
    assert secret is not None
    assert derive_key(secret, TOKEN_KEY_LABEL) == derive_key(SECRET["PC_CLUSTER_SECRET"].encode(), TOKEN_KEY_LABEL)
    assert derive_key(secret, TOKEN_KEY_LABEL) != derive_key(secret, b"another use")
    assert cluster_secret(ClusterConfig(), SECRET) is None
