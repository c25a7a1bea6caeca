"""The shipped containerd hosts.toml files, used by a real containerd as an operator installs them.

Each deploy/clients/containerd/certs.d/<registry>/hosts.toml is copied with the test pullcache's
address in place of pullcache.internal:5000, and `ctr images pull --hosts-dir` pulls an image of
that registry through it. pullcache has the three upstreams the files name, all served by the
tests' Distribution. (The Docker daemon.json is used by tests/test_deploy_image.py's dockerd.)
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.containerd import Containerd
from tests.support.images import DOCKER_LIST
from tests.support.pullcache_proc import PullcacheProcess, docker_hub_upstream
from tests.support.seed import Upstream

CERTS_D = Path(__file__).resolve().parents[1] / "deploy" / "clients" / "containerd" / "certs.d"
SHIPPED_MIRROR_HOST = "pullcache.internal:5000"


def installed_certs_d(directory: Path, mirror_host: str) -> Path:
    """The shipped certs.d tree as installed on a node, `mirror_host` for pullcache.internal:5000."""
    for shipped in CERTS_D.glob("*/hosts.toml"):
        text = shipped.read_text()
        assert SHIPPED_MIRROR_HOST in text, shipped
        target = directory / shipped.parent.name / "hosts.toml"
        target.parent.mkdir(parents=True)
        target.write_text(text.replace(SHIPPED_MIRROR_HOST, mirror_host))
    return directory


def test_a_hosts_toml_ships_for_each_upstream_of_the_shipped_config() -> None:
    import yaml

    config = yaml.safe_load((CERTS_D.parents[2] / "proxy.yml").read_text())
    assert {p.parent.name for p in CERTS_D.glob("*/hosts.toml")} == {u["name"] for u in config["upstreams"]}


@pytest.mark.parametrize("registry", sorted(p.parent.name for p in CERTS_D.glob("*/hosts.toml")))
def test_containerd_pulls_through_the_shipped_hosts_toml(
        registry: str, pullcache_factory: Callable[..., PullcacheProcess],
        containerd_factory: Callable[..., Containerd], upstream: Upstream, tmp_path: Path) -> None:
    upstreams = [docker_hub_upstream(upstream.url)]
    upstreams += [docker_hub_upstream(upstream.url, name=name, default=False) for name in ("ghcr.io", "quay.io")]
    server = pullcache_factory({"upstreams": upstreams})
    certs_d = installed_certs_d(tmp_path / "certs.d", server.host)
    node = containerd_factory()
    image = f"{registry}/library/alpine:latest"
    node.ctr("images", "pull", "--hosts-dir", str(certs_d), "--snapshotter", node.snapshotter,
             "--platform", "linux/amd64", image)
    listing = " ".join(node.ctr("images", "ls").stdout.split())
    assert f"{image} {DOCKER_LIST} {upstream.seed.alpine.digest}" in listing
    assert f"/v2/library/alpine/manifests/latest?ns={registry}" in server.log_text()
