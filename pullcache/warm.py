"""`pullcache warm IMAGE... [--platform os/arch]`: pre-fill the cache without a running server.

Each image is resolved like a request for it (path prefix, bare names to the default upstream with
Docker Hub's library/ rule) and read through the same proxied repository (pullthrough/repository.py)
a server's pulls read: the index, the chosen (or every) platform manifest, their configs and layers.
So a warmed cache is exactly what pulls would have left behind.

Safe while a server runs on the same storage: every blob and link is published by an atomic rename
after verification, and the index is SQLite in WAL mode. The two processes do not share their
single-flight maps, so a layer both fetch at the same moment is downloaded twice and stored once.
"""
from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, TextIO

from pullcache.cache.configured import store_for
from pullcache.cache.fill import FillFailed, FillReader
from pullcache.cache.registry import UPSTREAM
from pullcache.cache.store import Store
from pullcache.config import Config
from pullcache.digests import Digest
from pullcache.logs import configure_logging
from pullcache.mediatypes import IMAGE_TYPES, INDEX_TYPES
from pullcache.names import parse_name, parse_reference
from pullcache.pullthrough import PullThrough
from pullcache.pullthrough.repository import ProxiedRepository, proxied_repository
from pullcache.resolver import Resolver
from pullcache.upstream.errors import UpstreamError
from pullcache.upstream.pool import Upstreams

PARALLEL_BLOBS = 4        # blobs of one image fetched at a time
REDRAW_SECONDS = 0.2      # progress bar refresh
BAR_WIDTH = 30
MiB = 1024 * 1024


class WarmError(Exception):
    """This image cannot be warmed; the message says why."""


@dataclass
class Tally:
    """What warming fetched and what the cache already held."""

    fetched_blobs: int = 0
    fetched_bytes: int = 0
    cached_blobs: int = 0
    cached_bytes: int = 0
    fetched_manifests: int = 0
    cached_manifests: int = 0

    def add(self, other: Tally) -> None:
        for name in vars(self):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def summary(self) -> str:
        return (f"fetched {self.fetched_blobs} blobs ({self.fetched_bytes / MiB:.1f} MiB) and "
                f"{self.fetched_manifests} manifests; already cached {self.cached_blobs} blobs "
                f"({self.cached_bytes / MiB:.1f} MiB) and {self.cached_manifests} manifests")


def parse_image(text: str) -> tuple[str, str | Digest]:
    """`alpine`, `alpine:3.20`, `docker.io/library/alpine`, `ghcr.io/org/app@sha256:...` -> (name, reference)."""
    name, _, digest = text.partition("@")
    tag = None
    if ":" in name.rsplit("/", 1)[-1]:
        name, tag = name.rsplit(":", 1)
    try:
        return parse_name(name), parse_reference(digest or tag or "latest")
    except ValueError as exc:  # InvalidName, InvalidTag, DigestError
        raise WarmError(f"not an image reference: {exc}") from exc


_PLATFORM = re.compile(r"^[a-z0-9_.-]+/[a-z0-9_.-]+(/[a-z0-9_.-]+)?$")


def check_platform(text: str) -> None:
    """`--platform` as an index entry's platform can match it: lower-case os/arch[/variant]."""
    if not _PLATFORM.match(text):
        raise WarmError(f"--platform {text!r} is not os/arch[/variant] (expected e.g. linux/amd64 or linux/arm64/v8)")


def names_a_registry(component: str) -> bool:
    """A first name component that is a host, as Docker reads it: a dot, a port, or localhost."""
    return "." in component or ":" in component or component == "localhost"


def platform_matches(wanted: str, platform: dict[str, Any] | None) -> bool:
    """`os/arch[/variant]` against an index entry's platform; a variant counts only when asked for."""
    if not platform:
        return False
    os_name, _, rest = wanted.partition("/")
    arch, _, variant = rest.partition("/")
    return (platform.get("os") == os_name and platform.get("architecture") == arch
            and (not variant or platform.get("variant") == variant))


class ProgressBar:
    """One line per image on stderr: name, bar, percentage and MiB. On a terminal it is redrawn in place
    (`\\r`) as bytes arrive; elsewhere (CI logs, files) it is written once, when the image is done."""

    def __init__(self, label: str, out: TextIO) -> None:
        self.label = label
        self.out = out
        self.live = out.isatty()
        self.total = 0
        self.done = 0
        self.readers: set[FillReader] = set()

    @property
    def current(self) -> int:
        return self.done + sum(reader.fill.written for reader in self.readers)

    def draw(self, final: bool = False) -> None:
        current = min(self.current, self.total)
        share = current / self.total if self.total else 1.0
        filled = int(share * BAR_WIDTH)
        redraw = "\r" if self.live else ""
        self.out.write(f"{redraw}{self.label} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {share:4.0%} "
                       f"{current / MiB:.1f}/{self.total / MiB:.1f} MiB" + ("\n" if final else ""))
        self.out.flush()

    async def redraw_until_cancelled(self) -> None:
        while True:
            self.draw()
            await asyncio.sleep(REDRAW_SECONDS)


@dataclass(frozen=True)
class Manifest:
    media_type: str
    content: dict[str, Any]


class Warmer:
    def __init__(self, store: Store, pullthrough: PullThrough, resolver: Resolver, upstream_names: Sequence[str],
                 platform: str | None, out: TextIO) -> None:
        self.store = store
        self.pullthrough = pullthrough
        self.resolver = resolver
        self.upstream_names = upstream_names
        self.platform = platform
        self.out = out

    async def warm(self, image: str) -> Tally:
        registry, slash, _ = image.partition("/")
        if slash and names_a_registry(registry) and registry not in self.upstream_names:
            # The resolver would send it to the default upstream as a repository named `registry.k8s.io/...`.
            raise WarmError(f"no upstream named {registry!r} is configured "
                            f"(configured: {', '.join(self.upstream_names) or 'none'})")
        name, reference = parse_image(image)
        target = self.resolver.resolve(name)  # without ?ns= every name resolves
        repository = proxied_repository(self.store, self.pullthrough, self.resolver.policy, target)
        if repository is None:
            raise WarmError(f"{name!r} is a local repository (or no upstream is the default); "
                            "warm fills the cache of upstream images")
        tally = Tally()
        top = await self._manifest(repository, reference, tally)
        manifests = [top]
        if top.media_type in INDEX_TYPES:
            manifests = [await self._manifest(repository, Digest.parse(entry["digest"]), tally)
                         for entry in self._chosen(top.content, image)]
        blobs: dict[Digest, int] = {}
        for manifest in manifests:
            if manifest.media_type not in IMAGE_TYPES:
                raise WarmError(f"a manifest of media type {manifest.media_type!r} is not an image manifest")
            for descriptor in [manifest.content["config"], *manifest.content.get("layers", [])]:
                if not descriptor.get("urls"):  # foreign layers live elsewhere and are never pulled from here
                    blobs[Digest.parse(descriptor["digest"])] = int(descriptor["size"])
        await self._blobs(repository, blobs, tally, image)
        return tally

    def _chosen(self, index: dict[str, Any], image: str) -> list[dict[str, Any]]:
        entries = index.get("manifests", [])
        if self.platform is None:
            return entries
        chosen = [entry for entry in entries if platform_matches(self.platform, entry.get("platform"))]
        if not chosen:
            offered = sorted({"/".join(filter(None, (p.get("os"), p.get("architecture"), p.get("variant"))))
                              for p in (entry.get("platform") or {} for entry in entries)} - {""})
            raise WarmError(f"{image} has no manifest for platform {self.platform} (it has: {', '.join(offered)})")
        return chosen

    async def _manifest(self, repository: ProxiedRepository, reference: str | Digest, tally: Tally) -> Manifest:
        answer = await repository.manifest(reference)
        if answer.source == UPSTREAM:
            tally.fetched_manifests += 1
        else:
            tally.cached_manifests += 1
        assert answer.body is not None
        try:
            content = json.loads(answer.body)
        except ValueError as exc:
            raise WarmError(f"manifest {answer.digest} is not JSON") from exc
        if not isinstance(content, dict):
            raise WarmError(f"manifest {answer.digest} is not a JSON object")
        return Manifest(answer.media_type, content)

    async def _blobs(self, repository: ProxiedRepository, blobs: dict[Digest, int], tally: Tally,
                     label: str) -> None:
        bar = ProgressBar(label, self.out)
        bar.total = sum(blobs.values())
        slots = asyncio.Semaphore(PARALLEL_BLOBS)

        async def one(digest: Digest, size: int) -> None:
            async with slots:
                source = await repository.blob(digest)
                assert source is not None, "a proxied repository answers a GET or raises the upstream's error"
                async with source:
                    if source.reader is None:
                        tally.cached_blobs += 1
                        tally.cached_bytes += size
                    else:
                        bar.readers.add(source.reader)
                        try:
                            await source.reader.finished()
                        finally:
                            bar.readers.discard(source.reader)
                        tally.fetched_blobs += 1
                        tally.fetched_bytes += size
                bar.done += size

        redraw = asyncio.ensure_future(bar.redraw_until_cancelled()) if bar.live else None
        try:
            results = await asyncio.gather(*(one(digest, size) for digest, size in blobs.items()),
                                           return_exceptions=True)
            failures = [result for result in results if isinstance(result, BaseException)]
            if failures:
                raise failures[0]  # the others were still worth caching
        finally:
            if redraw is not None:
                redraw.cancel()
            bar.draw(final=True)


async def run_warm_command(config: Config, images: Sequence[str], platform: str | None = None, *,
                           out: TextIO = sys.stdout, progress: TextIO = sys.stderr) -> int:
    """Warm each image; 0 if all were warmed, 1 if any failed (each failure is reported, the rest go on)."""
    configure_logging(replace(config.log, level="warning"))  # progress bars, not debug lines
    store = store_for(config.storage, config.cluster)
    await store.open()
    upstreams = Upstreams(config.upstreams)
    await upstreams.start()
    pullthrough = PullThrough(store, config)
    warmer = Warmer(store, pullthrough, Resolver(config, upstreams, lambda name: store.repository(name).exists()),
                    [upstream.name for upstream in config.upstreams], platform, progress)
    total = Tally()
    failed = 0
    started = time.monotonic()
    try:
        for image in images:
            try:
                tally = await warmer.warm(image)
            except (WarmError, UpstreamError, FillFailed, OSError, KeyError, ValueError, TypeError) as exc:
                # OSError: the store could not write (StoreFullError for a full disk);
                # KeyError, ValueError, TypeError: a manifest without the fields an image manifest has
                failed += 1
                print(f"{image}: failed: {exc}", file=out)
                continue
            total.add(tally)
            print(f"{image}: {tally.summary()}", file=out)
    finally:
        await pullthrough.close()
        await upstreams.close()
        await store.close()
    warmed = len(images) - failed
    print(f"warmed {warmed} of {len(images)} images in {time.monotonic() - started:.1f}s: {total.summary()}",
          file=out)
    return 1 if failed else 0
