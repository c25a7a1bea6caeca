"""The shipped client files, used by the real clients as an operator installs them.

Each deploy/clients/containerd/certs.d/<registry>/hosts.toml is copied with the test pullcache's
address in place of pullcache.internal:5000, and `ctr images pull --hosts-dir` pulls an image of
that registry through it. pullcache has the three upstreams the files name, all served by the
tests' Distribution. deploy/clients/podman/registries.conf, with the same substitution, is the
CONTAINERS_REGISTRIES_CONF of Debian's podman 4.3 (private storage, see tests/support/podman.py),
which pulls each registry's image and a short name through it, leaving the machine's podman
state alone. (The Docker daemon.json is used by tests/test_deploy_image.py's dockerd.)
"""
from __future__ import annotations

import os
import re
import tomllib
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.containerd import Containerd
from tests.support.images import DOCKER_LIST
from tests.support.podman import Podman
from tests.support.pullcache_proc import PullcacheProcess, docker_hub_upstream
from tests.support.seed import Upstream

ROOT = Path(__file__).resolve().parents[1]
CERTS_D = ROOT / "deploy" / "clients" / "containerd" / "certs.d"
REGISTRIES_CONF = ROOT / "deploy" / "clients" / "podman" / "registries.conf"
PODMAN_CONF = tomllib.loads(REGISTRIES_CONF.read_text())
PODMAN_REGISTRIES = [registry["prefix"] for registry in PODMAN_CONF["registry"]]
SHIPPED_MIRROR_HOST = "pullcache.internal:5000"
# Where a rootful podman keeps state unless told otherwise (storage, run root, libpod tmp dir,
# shm lock, networks); /etc/containers is watched file by file.
MACHINE_PODMAN_DIRS = ("/var/lib/containers/storage", "/run/containers", "/run/libpod", "/dev/shm/libpod_lock",
                       "/etc/cni", "/var/lib/cni")


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

    config = yaml.safe_load((ROOT / "proxy.yml").read_text())
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
    server.wait_for_log(re.escape(f"/v2/library/alpine/manifests/latest?ns={registry}"))


def installed_registries_conf(path: Path, mirror_host: str) -> Path:
    """The shipped registries.conf as installed on a host, `mirror_host` for pullcache.internal:5000."""
    text = REGISTRIES_CONF.read_text()
    assert SHIPPED_MIRROR_HOST in text
    path.write_text(text.replace(SHIPPED_MIRROR_HOST, mirror_host))
    return path


def _cache_requests(metrics_url: str, upstream_name: str) -> float:
    """pullcache_cache_requests_total summed over kind and result, for one upstream."""
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        metrics_text = response.read().decode()
    return sum(sample.value for family in text_string_to_metric_families(metrics_text)
               for sample in family.samples
               if sample.name == "pullcache_cache_requests_total" and sample.labels["upstream"] == upstream_name)


def _pulled(podman: Podman, image: str) -> tuple[str, str]:
    """`podman pull IMAGE`, then the pulled image's (manifest digest, ID); the ID is its config's digest."""
    podman.pull(image)
    digest, image_id = podman.run("image", "inspect", "--format", "{{.Digest}} {{.Id}}", image).stdout.split()
    return digest, f"sha256:{image_id}"


@pytest.mark.parametrize("registry", sorted(PODMAN_REGISTRIES))
def test_podman_pulls_through_the_shipped_registries_conf(
        registry: str, pullcache_factory: Callable[..., PullcacheProcess],
        upstream_factory: Callable[[], Upstream], upstream: Upstream, tmp_path: Path) -> None:
    # The registry under test has an upstream of its own, so that upstream's log shows it was the one asked.
    mapped = upstream_factory()
    upstreams = [docker_hub_upstream(mapped.url if name == registry else upstream.url, name=name,
                                     default=name == "docker.io") for name in PODMAN_REGISTRIES]
    server = pullcache_factory({"upstreams": upstreams})
    conf = installed_registries_conf(tmp_path / "registries.conf", server.host)
    with Podman(tmp_path / "podman", conf) as podman:
        digest, image_id = _pulled(podman, f"{registry}/library/alpine:latest")
    alpine = mapped.seed.alpine
    assert (digest, image_id) == (alpine.digest, alpine.platforms["linux/amd64"].config.digest)
    server.wait_for_log(re.escape(f"GET /v2/{registry}/library/alpine/manifests/latest 200"))
    assert any(r.uri == "/v2/library/alpine/manifests/latest" for r in mapped.distribution.requests())
    assert _cache_requests(f"{server.url}/metrics", registry) > 0


def test_podman_resolves_a_short_name_through_the_mirror_of_the_search_registry(
        pullcache_factory: Callable[..., PullcacheProcess], upstream: Upstream, tmp_path: Path) -> None:
    # team/app has no alias in any shortnames.conf, so only unqualified-search-registries can resolve it.
    (search,) = PODMAN_CONF["unqualified-search-registries"]
    server = pullcache_factory({"upstreams": [docker_hub_upstream(upstream.url, name=search)]})
    conf = installed_registries_conf(tmp_path / "registries.conf", server.host)
    with Podman(tmp_path / "podman", conf) as podman:
        digest, _ = _pulled(podman, "team/app:v1")
    assert digest == upstream["team/app:v1"].digest
    server.wait_for_log(re.escape(f"GET /v2/{search}/team/app/manifests/v1 200"))



def _machine_podman_state() -> dict[str, tuple[int, int] | None]:
    """(mtime, size) of every file under /etc/containers and of the dirs rootful podman writes by default."""
    paths = [str(p) for p in Path("/etc/containers").rglob("*")] + list(MACHINE_PODMAN_DIRS)
    state: dict[str, tuple[int, int] | None] = {}
    for path in paths:
        try:
            stat = os.stat(path)
            state[path] = (stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            state[path] = None
    return state


def test_podman_leaves_the_machines_podman_state_alone(
        pullcache_factory: Callable[..., PullcacheProcess], tmp_path: Path) -> None:
    server = pullcache_factory()
    conf = installed_registries_conf(tmp_path / "registries.conf", server.host)
    before = _machine_podman_state()
    with Podman(tmp_path / "podman", conf) as podman:
        _pulled(podman, "docker.io/library/alpine:latest")
        # The one write with no setting to move it went to the private /var/lib overlay.
        assert (podman.var_lib_upper / "containers" / "cache" / "blob-info-cache-v1.boltdb").is_file()
    assert _machine_podman_state() == before
    assert not (tmp_path / "podman").exists()

def test_readme_podman_row_names_the_short_name_search_registries() -> None:
    (row,) = [line for line in (ROOT / "README.md").read_text().splitlines()
              if line.startswith("| podman / skopeo / CRI-O |")]
    searched = ", ".join(f'"{name}"' for name in PODMAN_CONF["unqualified-search-registries"])
    assert f"`unqualified-search-registries = [{searched}]`" in row
