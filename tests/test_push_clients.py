"""Real clients push to pullcache and pull back what they pushed, digests unchanged.

- skopeo 1.9 copies multi-platform images (an OCI index, a Docker manifest list) from a `dir:`
  layout on disk into pullcache with `--all`, then copies them back out;
- dockerd 20.10 logs in with htpasswd credentials, pushes an image it pulled from the seeded
  upstream, forgets it, and pulls it back from pullcache.
pullcache runs as a real process with htpasswd auth and the default (docker.io) upstream, the
configuration of a mirror that also takes internal images. The pushes that are pulled back and compared
run on both backends (`pullcache_on_each_backend`); the tests of who may push run on the filesystem.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.htpasswd import write_htpasswd
from tests.support.images import Image, build_image
from tests.support.pullcache_proc import PullcacheProcess
from tests.support.seed import Upstream
from tests.support.skopeo import Skopeo

USER, PASSWORD = "ci-pusher", "push me"
CREDS = f"{USER}:{PASSWORD}"


@pytest.fixture
def pullcache(pullcache_factory: Callable[..., PullcacheProcess], tmp_path: Path) -> PullcacheProcess:
    htpasswd = write_htpasswd(tmp_path / "htpasswd", {USER: PASSWORD})
    return pullcache_factory({"auth": {"htpasswd": str(htpasswd)}, "local": {"anonymous_push": False}})


@pytest.fixture
def pullcache_on_each_backend(pullcache_factory: Callable[..., PullcacheProcess], tmp_path: Path,
                              storage_backend: dict[str, Any]) -> PullcacheProcess:
    """`pullcache`, once on the filesystem and once on S3."""
    htpasswd = write_htpasswd(tmp_path / "htpasswd", {USER: PASSWORD})
    return pullcache_factory({"auth": {"htpasswd": str(htpasswd)}, "local": {"anonymous_push": False},
                              "storage": storage_backend})


def write_dir_layout(directory: Path, image: Image) -> Path:
    """containers/image's `dir:` layout of `image` with every platform: manifest.json is the index or
    list, `<hex>.manifest.json` each platform's manifest, `<hex>` each config and layer."""
    directory.mkdir()
    (directory / "version").write_text("Directory Transport Version: 1.1\n")
    (directory / "manifest.json").write_bytes(image.top.data)
    for platform in image.platforms.values():
        (directory / f"{platform.manifest.digest.split(':')[1]}.manifest.json").write_bytes(platform.manifest.data)
    for blob in image.blobs():
        assert blob.data is not None
        (directory / blob.digest.split(":")[1]).write_bytes(blob.data)
    return directory


def dir_layout_digests(directory: Path) -> set[str]:
    """Every manifest and blob of a `dir:` layout by the digest of its bytes, each checked against its name."""
    digests = set()
    for path in directory.iterdir():
        if path.name in ("version", "manifest.json"):
            continue
        actual = hashlib.sha256(path.read_bytes()).hexdigest()
        assert actual == path.name.removesuffix(".manifest.json"), f"{path.name} does not hold its digest"
        digests.add(f"sha256:{actual}")
    return digests | {"sha256:" + hashlib.sha256((directory / "manifest.json").read_bytes()).hexdigest()}


def expected_digests(image: Image) -> set[str]:
    digests = {blob.digest for blob in image.blobs()}
    digests |= {platform.manifest.digest for platform in image.platforms.values()}
    return digests | {image.digest}


@pytest.mark.parametrize("oci", [True, False], ids=["oci-index", "docker-manifest-list"])
def test_skopeo_pushes_a_multi_platform_image_and_pulls_it_back_unchanged(
        pullcache_on_each_backend: PullcacheProcess, skopeo: Skopeo, tmp_path: Path, oci: bool) -> None:
    pullcache = pullcache_on_each_backend
    # Content seeded under a name the upstream does not have, so no layer is known there.
    image = build_image("internal/app", "v1", oci=oci, platforms=("linux/amd64", "linux/arm64/v8", "linux/arm/v7"))
    source = write_dir_layout(tmp_path / "source", image)
    target = f"docker://{pullcache.host}/team/app:v1"

    skopeo.copy(f"dir:{source}", target, all_platforms=True, dest_creds=CREDS, extra=("--preserve-digests",))

    assert skopeo.inspect_raw(target) == image.top.data
    for platform in image.platforms.values():
        pinned = f"docker://{pullcache.host}/team/app@{platform.manifest.digest}"
        assert skopeo.inspect_raw(pinned) == platform.manifest.data
    back = tmp_path / "back"
    skopeo.copy(target, f"dir:{back}", all_platforms=True, extra=("--preserve-digests",))
    assert (back / "manifest.json").read_bytes() == image.top.data
    assert dir_layout_digests(back) == expected_digests(image)


def test_skopeo_pushes_images_sharing_layers_to_new_repositories(
        pullcache_on_each_backend: PullcacheProcess, skopeo: Skopeo, tmp_path: Path) -> None:
    """The second push finds the shared layer already in the registry (its HEAD is answered 200 by
    the store) and skips it; the manifest push must still succeed and the layer be served."""
    pullcache = pullcache_on_each_backend
    first = build_image("internal/app", "v1")
    second = build_image("internal/app", "v2")  # same OS layer per platform, new data layers
    shared = {b.digest for b in first.blobs()} & {b.digest for b in second.blobs()}
    assert shared
    for image, repo in ((first, "team/one"), (second, "team/two")):
        source = write_dir_layout(tmp_path / repo.replace("/", "-"), image)
        skopeo.copy(f"dir:{source}", f"docker://{pullcache.host}/{repo}:{image.tag}", all_platforms=True,
                    dest_creds=CREDS, extra=("--preserve-digests",))
    back = tmp_path / "back"
    skopeo.copy(f"docker://{pullcache.host}/team/two:v2", f"dir:{back}", all_platforms=True,
                extra=("--preserve-digests",))
    assert dir_layout_digests(back) == expected_digests(second)


def test_skopeo_push_without_credentials_is_refused(pullcache: PullcacheProcess, skopeo: Skopeo,
                                                    tmp_path: Path) -> None:
    image = build_image("internal/app", "v1", oci=True)
    source = write_dir_layout(tmp_path / "source", image)
    result = skopeo.copy(f"dir:{source}", f"docker://{pullcache.host}/team/app:v1", all_platforms=True,
                         check=False)
    assert result.returncode != 0
    assert b"unauthorized" in result.stderr.lower() or b"401" in result.stderr


def test_the_default_config_refuses_a_skopeo_push_saying_how_to_allow_pushes(
        pullcache_factory: Callable[..., PullcacheProcess], skopeo: Skopeo, tmp_path: Path) -> None:
    server = pullcache_factory({"local": {"anonymous_push": False}})  # proxy.yml's default: no users
    source = write_dir_layout(tmp_path / "source", build_image("internal/app", "v1", oci=True))
    result = skopeo.copy(f"dir:{source}", f"docker://{server.host}/team/app:v1", all_platforms=True, check=False)
    assert result.returncode != 0
    assert b"auth.htpasswd" in result.stderr


def test_docker_push_to_the_default_config_is_refused_saying_how_to_allow_pushes(
        pullcache_factory: Callable[..., PullcacheProcess], upstream: Upstream,
        dockerd_factory: Callable[..., Any]) -> None:
    server = pullcache_factory({"local": {"anonymous_push": False}})
    daemon = dockerd_factory()
    source = f"{upstream.host}/library/single:v1"
    daemon.docker("pull", source)
    daemon.docker("tag", source, f"{server.host}/team/app:v1")
    push = daemon.docker("push", f"{server.host}/team/app:v1", check=False)
    assert push.returncode != 0
    assert "auth.htpasswd" in push.stderr


def test_dockerd_logs_in_pushes_and_pulls_back(pullcache_on_each_backend: PullcacheProcess, upstream: Upstream,
                                               dockerd_factory: Callable[..., Any]) -> None:
    pullcache = pullcache_on_each_backend
    daemon = dockerd_factory()
    source = f"{upstream.host}/library/alpine:latest"
    daemon.docker("pull", source)  # 127.0.0.0/8 registries are insecure (plain HTTP) by default
    original = json.loads(daemon.docker("image", "inspect", source).stdout)[0]

    wrong = daemon.docker("login", "-u", USER, "--password-stdin", pullcache.host, input="wrong\n", check=False)
    assert wrong.returncode != 0
    assert "unauthorized" in (wrong.stderr + wrong.stdout).lower()
    daemon.docker("login", "-u", USER, "--password-stdin", pullcache.host, input=PASSWORD + "\n")

    pushed_ref = f"{pullcache.host}/team/app:v1"
    daemon.docker("tag", source, pushed_ref)
    push = daemon.docker("push", pushed_ref)
    pushed_digest = next(word for word in push.stdout.split() if word.startswith("sha256:"))

    daemon.docker("rmi", pushed_ref, source)
    assert daemon.docker("image", "inspect", pushed_ref, check=False).returncode != 0
    daemon.docker("pull", pushed_ref)
    pulled = json.loads(daemon.docker("image", "inspect", pushed_ref).stdout)[0]
    assert pulled["Id"] == original["Id"]
    assert pulled["RootFS"]["Layers"] == original["RootFS"]["Layers"]
    assert pulled["RepoDigests"] == [f"{pullcache.host}/team/app@{pushed_digest}"]


def test_docker_push_without_login_is_refused(pullcache: PullcacheProcess, upstream: Upstream,
                                              dockerd_factory: Callable[..., Any]) -> None:
    daemon = dockerd_factory()
    source = f"{upstream.host}/library/single:v1"
    daemon.docker("pull", source)
    daemon.docker("tag", source, f"{pullcache.host}/team/app:v1")
    push = daemon.docker("push", f"{pullcache.host}/team/app:v1", check=False)
    assert push.returncode != 0
    assert "no basic auth credentials" in push.stderr.lower() or "unauthorized" in push.stderr.lower()


def test_docker_pulls_anonymously_when_only_pushes_need_login(pullcache: PullcacheProcess, upstream: Upstream,
                                                               dockerd_factory: Callable[..., Any]) -> None:
    """/v2/ challenges every client (so docker login checks passwords), yet a client without
    credentials still pulls: only pushes need them unless auth.pull is `authenticated`."""
    daemon = dockerd_factory()
    source = f"{upstream.host}/library/single:v1"
    daemon.docker("pull", source)
    pushed_ref = f"{pullcache.host}/team/app:anon"
    daemon.docker("tag", source, pushed_ref)
    daemon.docker("login", "-u", USER, "--password-stdin", pullcache.host, input=PASSWORD + "\n")
    daemon.docker("push", pushed_ref)
    daemon.docker("logout", pullcache.host)
    daemon.docker("rmi", pushed_ref, source)
    daemon.docker("pull", pushed_ref)
    assert daemon.docker("image", "inspect", pushed_ref).returncode == 0
