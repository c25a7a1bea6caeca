"""The standard test image set pushed to the Distribution upstream.

Test modules assert against what this returns (digests, sizes, raw bytes) rather than
against constants, so the set can grow without touching them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from .distribution import Distribution, start_upstream
from .images import Image, build_image, push_big_image, push_image
from .registry_client import RegistryClient
from .tokenserver import ADMIN_PASSWORD, ADMIN_USER, PULL_PASSWORD, PULL_USER, TokenServer

__all__ = [
    "ADMIN_PASSWORD",
    "ADMIN_USER",
    "PULL_PASSWORD",
    "PULL_USER",
    "SeedInfo",
    "Upstream",
    "seed_upstream",
    "standard_images",
    "start_seeded_upstream",
]
LARGE_LAYER_SIZE = 8 * 1024 * 1024

AMD64, ARM64, ARMV7 = "linux/amd64", "linux/arm64/v8", "linux/arm/v7"


@dataclass(frozen=True)
class SeedInfo:
    """What `seed_upstream` pushed, keyed by "repo:tag".

    Keys and shapes:
      - ``library/alpine:latest``  Docker manifest list, amd64 + arm64/v8; also tagged
        ``3.19`` (same digest, see `extra_tags`).
      - ``library/busybox:1.36``   Docker manifest list, amd64 + arm64/v8 + arm/v7, two
        data layers per platform.
      - ``library/ocitest:v1``     OCI image index, amd64 + arm64/v8, OCI manifests.
      - ``library/single:v1``      one Docker schema-2 manifest (no list), amd64.
      - ``library/single:oci``     one OCI manifest (no index), amd64.
      - ``team/app:v1``            Docker list, a two-component (non-library) name.
      - ``private/secret:v1``      Docker list; only `PULL_USER`/`PULL_PASSWORD` may pull.
      - ``library/large:v1``       amd64 only, one `LARGE_LAYER_SIZE` file layer
        (blob data not kept: `Blob.data` is None).
    Each value is an `images.Image`: `.digest` (what the tag resolves to), `.index`,
    `.platforms["linux/amd64"].manifest/config/layers` with digests, sizes and bytes.
    """

    images: Mapping[str, Image]
    extra_tags: Mapping[str, tuple[str, ...]]

    def __getitem__(self, ref: str) -> Image:
        return self.images[ref]

    def __iter__(self) -> Iterator[Image]:
        return iter(self.images.values())

    @property
    def alpine(self) -> Image:
        return self.images["library/alpine:latest"]

    @property
    def busybox(self) -> Image:
        return self.images["library/busybox:1.36"]

    @property
    def ocitest(self) -> Image:
        return self.images["library/ocitest:v1"]

    @property
    def secret(self) -> Image:
        return self.images["private/secret:v1"]


def standard_images() -> list[tuple[Image, tuple[str, ...]]]:
    """The small images of the standard set with their extra tags (built, not pushed)."""
    return [
        (build_image("library/alpine", "latest", platforms=(AMD64, ARM64),
                     layer_sizes=(64 * 1024,)), ("3.19",)),
        (build_image("library/busybox", "1.36", platforms=(AMD64, ARM64, ARMV7),
                     layer_sizes=(32 * 1024, 128 * 1024)), ()),
        (build_image("library/ocitest", "v1", oci=True, platforms=(AMD64, ARM64)), ()),
        (build_image("library/single", "v1", multi=False), ()),
        (build_image("library/single", "oci", oci=True, multi=False), ()),
        (build_image("team/app", "v1", platforms=(AMD64, ARM64)), ()),
        (build_image("private/secret", "v1", platforms=(AMD64, ARM64)), ()),
    ]


def seed_upstream(url: str, *, username: str = ADMIN_USER, password: str = ADMIN_PASSWORD) -> SeedInfo:
    """Push the standard set to the registry at `url` with push credentials."""
    client = RegistryClient(url, username=username, password=password)
    pushed: dict[str, Image] = {}
    extra: dict[str, tuple[str, ...]] = {}
    for image, tags in standard_images():
        push_image(client, image, extra_tags=tags)
        pushed[image.ref] = image
        extra[image.ref] = tags
    large = push_big_image(client, "library/large", "v1", LARGE_LAYER_SIZE, seed="library-large")
    pushed[large.ref] = large
    extra[large.ref] = ()
    return SeedInfo(pushed, extra)


@dataclass
class Upstream:
    """A seeded, token-protected Distribution: the harness's stand-in for Docker Hub.

    `stop()` stops the Distribution, and the token server too when it was started for
    this upstream alone (`owns_token_server`).
    """

    token_server: TokenServer
    distribution: Distribution
    seed: SeedInfo
    owns_token_server: bool = False

    @property
    def url(self) -> str:
        return self.distribution.url

    @property
    def host(self) -> str:
        return self.distribution.host

    def __getitem__(self, ref: str) -> Image:
        return self.seed[ref]

    def stop(self) -> None:
        self.distribution.stop()
        if self.owns_token_server:
            self.token_server.stop()


def start_seeded_upstream(workdir: Path, token_server: TokenServer | None = None) -> Upstream:
    """Distribution behind `token_server` (a new one in `workdir` if None), seeded with
    the standard set. Everything started here is stopped by `Upstream.stop()`."""
    own = token_server is None
    tokens = TokenServer(workdir / "tokens").start() if token_server is None else token_server
    try:
        distribution = start_upstream(tokens)
        try:
            return Upstream(tokens, distribution, seed_upstream(distribution.url), own)
        except BaseException:
            distribution.stop()
            raise
    except BaseException:
        if own:
            tokens.stop()
        raise
