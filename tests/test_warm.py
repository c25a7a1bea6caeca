"""`pullcache warm`: pre-fills the cache (index, platform manifests, configs, layers) through the pull-through
code, with a progress bar per image and a report of what was fetched and what was already cached."""
from __future__ import annotations

import errno
import io
import json
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pullcache.cache.configured import store_for
from pullcache.cache.files import StoreFullError
from pullcache.cache.store import Store
from pullcache.config import Config, build_config
from pullcache.warm import parse_image, platform_matches, run_warm_command
from tests.fault_upstream import FakeRegistry
from tests.support.images import Image, build_image
from tests.support.pullcache_proc import PullcacheProcess
from tests.support.seed import Upstream

AMD64, ARM64 = "linux/amd64", "linux/arm64/v8"


def add_image(fake: FakeRegistry, image: Image) -> None:
    """Put a built image (index, manifests, configs, layers) into the fake upstream."""
    for platform in image.platforms.values():
        fake.add_manifest(image.repo, platform.manifest.digest, platform.manifest.data, platform.manifest.media_type)
        for blob in (platform.config, *platform.layers):
            assert blob.data is not None
            fake.add_blob(blob.data)
    top = image.top
    fake.add_manifest(image.repo, image.tag, top.data, top.media_type)


@pytest.fixture
def config(fake: FakeRegistry, tmp_path: Path) -> Config:
    return build_config({"storage": {"path": str(tmp_path / "data")},
                         "upstreams": [{"name": "docker.io", "url": fake.url, "default": True}]})


async def cached_blobs(config: Config) -> set[str]:
    """Digests of every blob the store holds, read through a Store on the configured storage."""
    store = store_for(config.storage)
    await store.open()
    try:
        return set(await store.stored_blobs())
    finally:
        await store.close()


class Terminal(io.StringIO):
    """A progress stream that says it is a terminal, as stderr does in an interactive shell."""

    def isatty(self) -> bool:
        return True


async def warm(config: Config, *images: str, platform: str | None = None,
               terminal: bool = False) -> tuple[int, str, str]:
    out, progress = io.StringIO(), Terminal() if terminal else io.StringIO()
    code = await run_warm_command(config, list(images), platform, out=out, progress=progress)
    return code, out.getvalue(), progress.getvalue()


def blob_digests(image: Image, *platforms: str) -> set[str]:
    chosen = [image.platforms[p] for p in platforms] if platforms else list(image.platforms.values())
    return {blob.digest for platform in chosen for blob in (platform.config, *platform.layers)}


def manifest_digests(image: Image, *platforms: str) -> set[str]:
    chosen = [image.platforms[p] for p in platforms] if platforms else list(image.platforms.values())
    return {platform.manifest.digest for platform in chosen} | {image.digest}


async def test_warm_fills_every_platform_of_an_index(fake: FakeRegistry, config: Config) -> None:
    image = build_image("library/alpine", "3.20", platforms=(AMD64, ARM64), layer_sizes=(300 * 1024, 70 * 1024))
    add_image(fake, image)
    code, out, progress = await warm(config, "alpine:3.20", terminal=True)
    assert code == 0
    assert await cached_blobs(config) == blob_digests(image) | manifest_digests(image)
    assert f"alpine:3.20: fetched {len(blob_digests(image))} blobs" in out
    assert "and 3 manifests; already cached 0 blobs" in out
    assert progress.count("\r") >= 1 and progress.rstrip().endswith(
        f"{sum(b.size for b in image.blobs()) / 2**20:.1f} MiB")
    assert "100%" in progress


async def test_a_second_warm_reports_everything_as_already_cached(fake: FakeRegistry, config: Config) -> None:
    image = build_image("library/alpine", "3.20", platforms=(AMD64, ARM64))
    add_image(fake, image)
    await warm(config, "docker.io/library/alpine:3.20")
    fake.seen.clear()
    code, out, _ = await warm(config, "docker.io/library/alpine:3.20")
    assert code == 0
    assert f"fetched 0 blobs (0.0 MiB) and 0 manifests; already cached {len(blob_digests(image))} blobs" in out
    assert not any("/blobs/" in seen.path for seen in fake.seen)


async def test_a_platform_limits_what_is_fetched(fake: FakeRegistry, config: Config) -> None:
    image = build_image("team/app", "v1", oci=True, platforms=(AMD64, ARM64))
    add_image(fake, image)
    code, _, _ = await warm(config, "team/app:v1", platform="linux/arm64")
    assert code == 0
    assert await cached_blobs(config) == blob_digests(image, ARM64) | manifest_digests(image, ARM64)


async def test_an_image_by_digest_without_an_index(fake: FakeRegistry, config: Config) -> None:
    image = build_image("team/single", "v1", multi=False)
    add_image(fake, image)
    fake.add_manifest(image.repo, image.digest, image.top.data, image.top.media_type)
    code, out, _ = await warm(config, f"docker.io/team/single@{image.digest}")
    assert code == 0, out
    assert await cached_blobs(config) == blob_digests(image) | {image.digest}


async def test_failures_are_reported_and_the_other_images_still_warm(fake: FakeRegistry, config: Config) -> None:
    image = build_image("library/alpine", "3.20", platforms=(AMD64,))
    add_image(fake, image)
    code, out, _ = await warm(config, "nosuch:1", "alpine:3.20", platform="linux/s390x")
    assert code == 1
    lines = out.splitlines()
    assert lines[0].startswith("nosuch:1: failed:") and "not known" not in lines[0] and "404" in lines[0]
    assert lines[1] == "alpine:3.20: failed: alpine:3.20 has no manifest for platform linux/s390x (it has: linux/amd64)"
    assert lines[2].startswith("warmed 0 of 2 images")


async def test_a_full_disk_fails_that_image_and_the_others_still_warm(
        fake: FakeRegistry, config: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    doomed = build_image("library/alpine", "3.20", platforms=(AMD64,))
    fine = build_image("team/app", "v1", platforms=(AMD64,))
    add_image(fake, doomed)
    add_image(fake, fine)
    put_small = Store.put_small

    async def full_for_doomed(store: Store, data: bytes, **kwargs: Any) -> Any:
        if data == doomed.top.data:
            raise StoreFullError(errno.ENOSPC, "no space left writing the manifest")
        return await put_small(store, data, **kwargs)
    monkeypatch.setattr(Store, "put_small", full_for_doomed)

    code, out, _ = await warm(config, "alpine:3.20", "team/app:v1")

    assert code == 1
    lines = out.splitlines()
    assert lines[0].startswith("alpine:3.20: failed:") and "no space left" in lines[0]
    assert lines[1].startswith("team/app:v1: fetched ")
    assert blob_digests(fine) <= await cached_blobs(config)


async def test_off_a_terminal_progress_is_one_line_per_image(fake: FakeRegistry, config: Config) -> None:
    add_image(fake, build_image("library/alpine", "3.20", platforms=(AMD64,), layer_sizes=(300 * 1024,)))
    add_image(fake, build_image("team/app", "v1", platforms=(AMD64,)))
    code, _, progress = await warm(config, "alpine:3.20", "team/app:v1")
    assert code == 0
    assert "\r" not in progress
    lines = progress.splitlines()
    assert [line.split(" [")[0] for line in lines] == ["alpine:3.20", "team/app:v1"]
    assert all(" 100% " in line and line.endswith(" MiB") for line in lines), lines


@pytest.mark.parametrize(("image", "registry"), [("registry.k8s.io/pause:3.9", "registry.k8s.io"),
                                                 ("localhost/team/app:v1", "localhost"),
                                                 ("127.0.0.1:5000/team/app", "127.0.0.1:5000")])
async def test_an_image_of_a_registry_that_is_no_upstream_is_refused_without_asking_any(
        fake: FakeRegistry, config: Config, image: str, registry: str) -> None:
    code, out, _ = await warm(config, image)
    assert code == 1
    assert out.splitlines()[0] == (f"{image}: failed: no upstream named {registry!r} is configured "
                                   "(configured: docker.io)")
    assert not fake.seen


def test_image_references_parse_like_docker_does() -> None:
    assert parse_image("alpine") == ("alpine", "latest")
    assert parse_image("alpine:3.20") == ("alpine", "3.20")
    assert parse_image("docker.io/library/alpine") == ("docker.io/library/alpine", "latest")
    name, reference = parse_image("ghcr.io/org/app@sha256:" + "a" * 64)
    assert (name, str(reference)) == ("ghcr.io/org/app", "sha256:" + "a" * 64)


def test_platforms_match_on_os_and_arch_and_variant_only_when_asked() -> None:
    arm = {"os": "linux", "architecture": "arm64", "variant": "v8"}
    assert platform_matches("linux/arm64", arm)
    assert platform_matches("linux/arm64/v8", arm)
    assert not platform_matches("linux/arm64/v7", arm)
    assert not platform_matches("linux/amd64", arm)


# ---------------------------------------------------------------------- the real command, a real upstream

def metric(url: str, name: str, **labels: str) -> float:
    text = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
    wanted = name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
    for line in text.splitlines():
        if line.startswith(wanted):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def fetch(url: str) -> bytes:
    return urllib.request.urlopen(url, timeout=30).read()


def test_the_cli_warms_while_a_server_runs_and_the_server_then_serves_hits(
        pullcache_factory: Callable[..., PullcacheProcess], upstream: Upstream) -> None:
    server = pullcache_factory()
    busybox = upstream["library/busybox:1.36"]
    result = server.cli("warm", "busybox:1.36", "--platform", "linux/arm64")
    assert result.returncode == 0, result.stdout + result.stderr
    wanted = busybox.platforms[ARM64]
    assert f"busybox:1.36: fetched {1 + len(wanted.layers)} blobs" in result.stdout
    assert f"busybox:1.36 [{'#' * 30}] 100%" in result.stderr  # the bar: one line per image off a terminal
    manifest = json.loads(fetch(f"{server.url}/v2/library/busybox/manifests/{wanted.manifest.digest}"))
    for descriptor in [manifest["config"], *manifest["layers"]]:
        assert len(fetch(f"{server.url}/v2/busybox/blobs/{descriptor['digest']}")) == descriptor["size"]
    upstream_name = "docker.io"
    assert metric(server.url, "pullcache_cache_requests_total", kind="blob", result="hit",
                  upstream=upstream_name) == 1 + len(wanted.layers)
    assert metric(server.url, "pullcache_cache_requests_total", kind="blob", result="miss",
                  upstream=upstream_name) == 0
