"""Everything the benchmark runs against, on loopback.

token server -> upstream Distribution (seeded) <- throttle A <- pullcache
                                               <- throttle B <- Distribution (proxy mode)

Both caches get the same upstream, each through its own 50 MB/s-per-connection path,
and both are addressed with the same repository names (`bench/...` goes to pullcache's
default upstream), so one scenario body drives either.

With `storage="s3"` both keep their content in one SeaweedFS (`weed server -s3`, the tests'
object store), each in its own bucket: pullcache with `storage.backend: s3` (local_cache at
its default), Distribution with `storage.s3` and redirects off. A reset then moves each to a
new key prefix instead of emptying the bucket.
"""

from __future__ import annotations

import shutil
import tempfile
import urllib.request
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tests.support.distribution import Distribution, ProxySettings, start_upstream
from tests.support.images import Image, build_image, push_big_image, push_big_layer, push_image
from tests.support.pullcache_proc import PullcacheProcess, docker_hub_upstream
from tests.support.registry_client import RegistryClient
from tests.support.seaweed import ACCESS_KEY, REGION, SECRET_KEY, SeaweedFS
from tests.support.seed import ADMIN_PASSWORD, ADMIN_USER, AMD64, ARM64, ARMV7
from tests.support.tokenserver import TokenServer

from .throttle import Throttle

MiB = 1024 * 1024
StorageKind = Literal["filesystem", "s3"]
STORAGES: tuple[StorageKind, ...] = ("filesystem", "s3")


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
    """One of the two contenders: a process with a URL, an upstream path, and a reset.

    On S3, `store` is the object store both share; `generation` names the key prefix in use, and
    `redirect` whether cached blob GETs are answered with a redirect to the store."""

    name: str
    throttle: Throttle
    store: SeaweedFS | None = None
    generation = 0
    redirect = False

    @property
    @abstractmethod
    def url(self) -> str: ...

    @property
    def host(self) -> str:
        return self.url.removeprefix("http://")

    @property
    @abstractmethod
    def pid(self) -> int: ...

    @property
    def store_pid(self) -> int | None:
        """The object store's process (S3), whose CPU is part of what serving costs; None on disk."""
        return self.store.pid if self.store is not None else None

    @property
    def prefix(self) -> str:
        return f"gen{self.generation}"

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def stop(self) -> None: ...

    @abstractmethod
    def storage(self) -> Path: ...

    @abstractmethod
    def log_tail(self, lines: int = 40) -> str: ...

    def body_bytes_served(self) -> float | None:
        """Body bytes the cache says it has sent to clients so far, when it keeps such a count."""
        return None

    def reset(self) -> None:
        """Restart with empty storage: the next request for anything is a miss. On S3 the bucket
        keeps what it held, under a prefix the restarted cache no longer reads."""
        self.stop()
        shutil.rmtree(self.storage(), ignore_errors=True)
        self.generation += 1
        self.start()

    def redirecting(self, on: bool) -> None:
        """Restart with cached blob GETs redirected to the object store (on) or served (off)."""
        if self.store is None:
            raise ValueError(f"{self.name} on the filesystem has no object store to redirect to")
        if on != self.redirect:
            self.stop()
            self.redirect = on
            self.start()


class PullcacheCache(Cache):
    name = "pullcache"

    def __init__(self, workdir: Path, throttle: Throttle, store: SeaweedFS | None = None) -> None:
        self.throttle = throttle
        self.store = store
        storage: dict[str, Any] = {}
        if store is not None:
            storage = {"backend": "s3", "s3": store.storage_config(store.create_bucket(self.name))}
        self.process = PullcacheProcess(workdir, {
            "upstreams": [docker_hub_upstream(throttle.url)],
            "log": {"level": "info", "format": "text"},  # the shipped default, not the tests' debug
            "storage": storage,
        })

    @property
    def url(self) -> str:
        return self.process.url

    @property
    def pid(self) -> int:
        return self.process.process.pid

    def start(self) -> None:
        if self.store is not None:
            self.process.config["storage"]["s3"].update(prefix=self.prefix, redirect=self.redirect)
        self.process.start()

    def stop(self) -> None:
        self.process.stop()

    def storage(self) -> Path:
        return self.process.data_dir

    def log_tail(self, lines: int = 40) -> str:
        return self.process.process.log_tail(lines)

    def body_bytes_served(self) -> float:
        """The sum of `pullcache_bytes_served_total` over its sources, from /metrics."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as answer:
            lines = answer.read().decode().splitlines()
        return sum(float(line.rsplit(" ", 1)[1]) for line in lines
                   if line.startswith("pullcache_bytes_served_total"))


class S3Distribution(Distribution):
    """Distribution with `storage.s3` on SeaweedFS instead of the filesystem, under `prefix`, with its
    redirects to presigned URLs off unless `redirect`. Both are read at each start.

    Its environment is `clean_env()`'s, which leaves out the AWS_CA_BUNDLE this machine sets: the
    Go S3 driver fails to start when it cannot load that bundle."""

    def __init__(self, store: SeaweedFS, bucket: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.store = store
        self.bucket = bucket
        self.prefix = "gen0"
        self.redirect = False

    def config(self) -> dict[str, Any]:
        config = super().config()
        config["storage"] = {
            "s3": {"regionendpoint": self.store.url, "region": REGION, "bucket": self.bucket,
                   "accesskey": ACCESS_KEY, "secretkey": SECRET_KEY, "secure": False, "v4auth": True,
                   "rootdirectory": f"/{self.prefix}"},
            "redirect": {"disable": not self.redirect},
            **{k: v for k, v in config["storage"].items() if k != "filesystem"},
        }
        return config


class DistributionCache(Cache):
    name = "distribution"

    def __init__(self, workdir: Path, throttle: Throttle, store: SeaweedFS | None = None) -> None:
        self.throttle = throttle
        self.store = store
        workdir.mkdir(parents=True, exist_ok=True)
        proxy = ProxySettings(throttle.url)
        self.registry = (Distribution(proxy=proxy, workdir=workdir) if store is None else
                         S3Distribution(store, store.create_bucket(self.name), proxy=proxy, workdir=workdir))

    @property
    def url(self) -> str:
        return self.registry.url

    @property
    def pid(self) -> int:
        return self.registry.process.pid

    def start(self) -> None:
        if isinstance(self.registry, S3Distribution):
            self.registry.prefix, self.registry.redirect = self.prefix, self.redirect
        self.registry.start()

    def stop(self) -> None:
        self.registry.stop()

    def storage(self) -> Path:
        return self.registry.storage_dir

    def log_tail(self, lines: int = 40) -> str:
        return self.registry.process.log_tail(lines)


class Stack:
    """Starts and stops the whole set-up; `caches` is (pullcache, distribution)."""

    def __init__(self, sizes: Sizes, rounds: int, workdir: Path | None = None,
                 storage: StorageKind = "filesystem") -> None:
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="pc-bench-"))
        self.sizes = sizes
        self.rounds = rounds
        self.storage: StorageKind = storage
        self.store: SeaweedFS | None = None
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
            if self.storage == "s3":
                self.store = SeaweedFS(self._dir("seaweedfs")).start()
            for cls in (PullcacheCache, DistributionCache):
                throttle = Throttle(self.upstream.host, self.workdir).start()
                self.throttles.append(throttle)
                cache = cls(self._dir(cls.name), throttle, self.store)
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
        if self.store is not None:
            self.store.stop()
        if self.upstream is not None:
            self.upstream.stop()
        if self.tokens is not None:
            self.tokens.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
