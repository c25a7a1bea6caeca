"""Real clients pulling through a real pullcache from a real upstream (CNCF Distribution behind a token
server): dockerd's registry-mirrors with bare names, containerd's hosts.toml (?ns=docker.io), skopeo by
path prefix (every platform of multi-platform images) and from a credentialed upstream. Digests always
equal the upstream's. Every test that stores what it pulls runs on both backends (`storage_backend`);
the credentialed-upstream one is about upstream auth alone and runs on the filesystem."""
from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support.containerd import Containerd
from tests.support.dockerd import Dockerd
from tests.support.images import DOCKER_LIST, OCI_INDEX
from tests.support.pullcache_proc import PullcacheProcess, docker_hub_upstream
from tests.support.seed import PULL_PASSWORD, PULL_USER, Upstream
from tests.support.skopeo import Skopeo

AMD64 = "linux/amd64"


def cache_requests(server: PullcacheProcess, kind: str, result: str) -> float:
    text = urllib.request.urlopen(f"{server.url}/metrics", timeout=10).read().decode()
    prefix = f'pullcache_cache_requests_total{{kind="{kind}",result="{result}",upstream="docker.io"}} '
    return sum(float(line[len(prefix):]) for line in text.splitlines() if line.startswith(prefix))


def test_dockerd_pulls_a_bare_name_through_registry_mirrors(
        pullcache_factory: Callable[..., PullcacheProcess], dockerd_factory: Callable[..., Dockerd],
        upstream: Upstream, storage_backend: dict[str, Any]) -> None:
    server = pullcache_factory({"storage": storage_backend})
    daemon = dockerd_factory(mirrors=[server.url])
    daemon.docker("pull", "alpine")  # bare name: only the mirror can answer (no internet)
    inspected = json.loads(daemon.docker("image", "inspect", "alpine").stdout)[0]
    alpine = upstream.seed.alpine
    amd64 = alpine.platforms[AMD64]
    assert inspected["RepoDigests"] == [f"alpine@{alpine.digest}"]
    assert inspected["Id"] == amd64.config.digest
    assert inspected["RootFS"]["Layers"] == [layer.diff_id for layer in amd64.layers]
    assert cache_requests(server, "blob", "miss") == 1 + len(amd64.layers)

    # A second daemon pulling the same image finds everything cached.
    other = dockerd_factory(mirrors=[server.url])
    other.docker("pull", "alpine")
    assert cache_requests(server, "blob", "miss") == 1 + len(amd64.layers)
    assert cache_requests(server, "blob", "hit") == 1 + len(amd64.layers)


def test_containerd_pulls_through_a_hosts_toml_mirror_with_ns(
        pullcache_factory: Callable[..., PullcacheProcess], containerd_factory: Callable[..., Containerd],
        upstream: Upstream, storage_backend: dict[str, Any]) -> None:
    server = pullcache_factory({"storage": storage_backend})
    daemon = containerd_factory()
    daemon.pull_via_mirror(server.url, "docker.io/library/alpine:latest")
    daemon.pull_via_mirror(server.url, "docker.io/library/ocitest:v1", platform=None)
    listing = " ".join(daemon.ctr("images", "ls").stdout.split())
    assert f"docker.io/library/alpine:latest {DOCKER_LIST} {upstream.seed.alpine.digest}" in listing
    assert f"docker.io/library/ocitest:v1 {OCI_INDEX} {upstream.seed.ocitest.digest}" in listing
    server.wait_for_log(re.escape("/v2/library/alpine/manifests/latest?ns=docker.io"))


def test_skopeo_pulls_by_path_prefix_in_docker_and_oci_types(
        pullcache_factory: Callable[..., PullcacheProcess], skopeo: Skopeo, upstream: Upstream,
        tmp_path: Path, storage_backend: dict[str, Any]) -> None:
    server = pullcache_factory({"storage": storage_backend})
    for image in (upstream.seed.alpine, upstream.seed.busybox, upstream.seed.ocitest, upstream["library/single:oci"]):
        reference = f"docker://{server.host}/docker.io/{image.ref}"
        assert skopeo.inspect_raw(reference) == image.top.data  # byte-for-byte, so the digest is the upstream's
        copied = tmp_path / image.ref.replace("/", "_").replace(":", "_")
        skopeo.copy(reference, f"dir:{copied}", all_platforms=True)  # dir: keeps manifests as they came
        assert (copied / "manifest.json").read_bytes() == image.top.data
        for platform in image.platforms.values():
            for blob in (platform.config, *platform.layers):
                assert (copied / blob.digest.split(":")[1]).stat().st_size == blob.size


def test_skopeo_pulls_a_private_repository_from_a_credentialed_upstream(
        pullcache_factory: Callable[..., PullcacheProcess], skopeo: Skopeo, upstream: Upstream,
        tmp_path: Path) -> None:
    secret = upstream.seed.secret
    reference = f"docker.io/{secret.ref}"
    anonymous = pullcache_factory()
    refused = skopeo.run("inspect", "--tls-verify=false", "--raw", f"docker://{anonymous.host}/{reference}",
                         check=False)
    assert refused.returncode != 0 and b"denied" in refused.stderr.lower()

    server = pullcache_factory({"upstreams": [docker_hub_upstream(
        upstream.url, username=PULL_USER, password_env="PC_TEST_PULL_PASSWORD")]},
        env={"PC_TEST_PULL_PASSWORD": PULL_PASSWORD})
    assert skopeo.inspect_raw(f"docker://{server.host}/{reference}") == secret.top.data
    skopeo.copy(f"docker://{server.host}/{reference}", f"dir:{tmp_path / 'secret'}")
    amd64 = secret.platforms[AMD64]
    assert (tmp_path / "secret" / "manifest.json").read_bytes() == amd64.manifest.data
    for blob in (amd64.config, *amd64.layers):
        assert (tmp_path / "secret" / blob.digest.split(":")[1]).read_bytes() == blob.data


def test_cached_images_are_still_pulled_while_the_upstream_is_down(
        pullcache_factory: Callable[..., PullcacheProcess], upstream_factory: Callable[[], Upstream],
        skopeo: Skopeo, tmp_path: Path, storage_backend: dict[str, Any]) -> None:
    own = upstream_factory()
    server = pullcache_factory({"upstreams": [docker_hub_upstream(own.url, manifest_ttl="0s")],
                                "storage": storage_backend}, upstream=own)
    reference = f"docker://{server.host}/docker.io/{own.seed.busybox.ref}"
    skopeo.copy(reference, f"dir:{tmp_path / 'first'}")
    own.distribution.halt()
    skopeo.copy(reference, f"dir:{tmp_path / 'second'}")  # the tag is served stale, blobs from the cache
    assert (tmp_path / "first" / "manifest.json").read_bytes() == (tmp_path / "second" / "manifest.json").read_bytes()
    assert cache_requests(server, "manifest", "stale") >= 1
