"""Everything the benchmark runs against, on loopback.

token server -> upstream Distribution (seeded) <- throttle A <- pullcache
                                               <- throttle B <- Distribution (proxy mode)

Both caches get the same upstream, each through its own 50 MB/s-per-connection path,
and both are addressed with the same repository names (`bench/...` goes to pullcache's
default upstream), so one scenario body drives either.
"""

from __future__ import annotations

import shutil
import tempfile
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from tests.support.distribution import Distribution, ProxySettings, start_upstream
from tests.support.images import Image, build_image, push_big_image, push_big_layer, push_image
from tests.support.pullcache_proc import PullcacheProcess, docker_hub_upstream
from tests.support.registry_client import RegistryClient
from tests.support.seed import ADMIN_PASSWORD, ADMIN_USER, AMD64, ARM64, ARMV7
from tests.support.tokenserver import TokenServer

from .throttle import Throttle

MiB = 1024 * 1024


@dataclass(frozen=True)
class Sizes:
    """Layer sizes; `--quick` shrinks them so a smoke run takes a minute or two."""

    cached_layer: int = 200 * MiB
    herd_layer: int = 200 * MiB
    huge_layer: int = 1024 * MiB
    multi_layers: tuple[int, ...] = (2 * MiB, 12 * MiB)

    def __str__(self) -> str:
        return (f"cached {self.cached_layer // MiB} MiB, herd {self.herd_layer // MiB} MiB, "
                f"huge {self.huge_layer // MiB} MiB, multi-platform layers "
                f"{'+'.join(f'{s / MiB:g}' for s in self.multi_layers)} MiB per platform")

    @classmethod
    def quick(cls) -> Sizes:
        return cls(cached_layer=32 * MiB, herd_layer=32 * MiB, huge_layer=128 * MiB,
                   multi_layers=(512 * 1024, 2 * MiB))


@dataclass(frozen=True)
class Layer:
    repo: str
    digest: str
    size: int

    @property
    def path(self) -> str:
        return f"/v2/{self.repo}/blobs/{self.digest}"


@dataclass(frozen=True)
class Seeded:
    """What the upstream holds for the benchmark."""

    multi: Image  # multi-platform image, skopeo and manifest scenarios
    cached: Layer  # the layer every cache serves warm
    herd: tuple[Layer, ...]  # one uncached layer per round
    huge: Layer  # the 1 GiB layer of the memory scenario


def seed(url: str, sizes: Sizes, rounds: int) -> Seeded:
    client = RegistryClient(url, username=ADMIN_USER, password=ADMIN_PASSWORD, timeout=600)
    multi = build_image("bench/multi", "v1", platforms=(AMD64, ARM64, ARMV7),
                        layer_sizes=sizes.multi_layers)
    push_image(client, multi)
    big = push_big_image(client, "bench/big", "v1", sizes.cached_layer, seed="bench-cached")
    cached = big.platforms[AMD64].layers[0]
    herd = tuple(
        push_big_layer(client, "bench/herd", sizes.herd_layer, seed=f"bench-herd-{r}")
        for r in range(rounds)
    )
    huge = push_big_layer(client, "bench/huge", sizes.huge_layer, seed="bench-huge")
    return Seeded(
        multi=multi,
        cached=Layer("bench/big", cached.digest, cached.size),
        herd=tuple(Layer("bench/herd", b.digest, b.size) for b in herd),
        huge=Layer("bench/huge", huge.digest, huge.size),
    )


class Cache(ABC):
    """One of the two contenders: a process with a URL, an upstream path, and a reset."""

    name: str
    throttle: Throttle

    @property
    @abstractmethod
    def url(self) -> str: ...

    @property
    def host(self) -> str:
        return self.url.removeprefix("http://")

    @property
    @abstractmethod
    def pid(self) -> int: ...

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def stop(self) -> None: ...

    @abstractmethod
    def storage(self) -> Path: ...

    @abstractmethod
    def log_tail(self, lines: int = 40) -> str: ...

    def reset(self) -> None:
        """Restart with empty storage: the next request for anything is a miss."""
        self.stop()
        shutil.rmtree(self.storage(), ignore_errors=True)
        self.start()


class PullcacheCache(Cache):
    name = "pullcache"

    def __init__(self, workdir: Path, throttle: Throttle) -> None:
        self.throttle = throttle
        self.process = PullcacheProcess(workdir, {
            "upstreams": [docker_hub_upstream(throttle.url)],
            "log": {"level": "info", "format": "text"},  # the shipped default, not the tests' debug
        })

    @property
    def url(self) -> str:
        return self.process.url

    @property
    def pid(self) -> int:
        return self.process.process.pid

    def start(self) -> None:
        self.process.start()

    def stop(self) -> None:
        self.process.stop()

    def storage(self) -> Path:
        return self.process.data_dir

    def log_tail(self, lines: int = 40) -> str:
        return self.process.process.log_tail(lines)


class DistributionCache(Cache):
    name = "distribution"

    def __init__(self, workdir: Path, throttle: Throttle) -> None:
        self.throttle = throttle
        workdir.mkdir(parents=True, exist_ok=True)
        self.registry = Distribution(proxy=ProxySettings(throttle.url), workdir=workdir)

    @property
    def url(self) -> str:
        return self.registry.url

    @property
    def pid(self) -> int:
        return self.registry.process.pid

    def start(self) -> None:
        self.registry.start()

    def stop(self) -> None:
        self.registry.stop()

    def storage(self) -> Path:
        return self.registry.storage_dir

    def log_tail(self, lines: int = 40) -> str:
        return self.registry.process.log_tail(lines)


class Stack:
    """Starts and stops the whole set-up; `caches` is (pullcache, distribution)."""

    def __init__(self, sizes: Sizes, rounds: int, workdir: Path | None = None) -> None:
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="pc-bench-"))
        self.sizes = sizes
        self.rounds = rounds
        self.tokens: TokenServer | None = None
        self.upstream: Distribution | None = None
        self.throttles: list[Throttle] = []
        self.caches: list[Cache] = []
        self.seeded: Seeded | None = None

    def start(self) -> Stack:
        try:
            self.tokens = TokenServer(self.workdir / "tokens").start()
            self.upstream = start_upstream(self.tokens, workdir=self._dir("upstream"))
            self.seeded = seed(self.upstream.url, self.sizes, self.rounds)
            for cls in (PullcacheCache, DistributionCache):
                throttle = Throttle(self.upstream.host, self.workdir).start()
                self.throttles.append(throttle)
                cache = cls(self._dir(cls.name), throttle)
                self.caches.append(cache)
                cache.start()
        except BaseException:
            self.stop()
            raise
        return self

    def _dir(self, name: str) -> Path:
        path = self.workdir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def stop(self) -> None:
        """Stop every process started here (by PID) and remove the work dir."""
        for cache in self.caches:
            cache.stop()
        for throttle in self.throttles:
            throttle.stop()
        if self.upstream is not None:
            self.upstream.stop()
        if self.tokens is not None:
            self.tokens.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
