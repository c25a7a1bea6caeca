"""Repository files of replicas on one bucket (storage.backend s3 with cluster.redis): each read goes
through a Redis cache every replica shares (cluster/read_through.py), each write to the bucket and then
invalidates that cache, so a read on one replica sees a write made on another as soon as the write
returns. Nothing is copied to storage.path.

Cached entries: every file ("f:<key>") and the listing of every folder a repository lists ("l:<key>": tags,
revisions, links, referrers). A write invalidates its file and the listings of the folders above it.

Which local repositories exist is asked on every request for a bare name (the resolver), so it is answered
from memory: the names every replica wrote to, in a Redis set (SADD by the writer). The writer of a new name
also publishes it, and every replica listens, so a pull through another replica right after the push routes
the name locally, not to the default upstream (names_version tells the resolver the set grew). The set is
re-read every NAMES_REFRESH seconds all the same (a message is lost while Redis is unreachable), and rebuilt
from a listing of the bucket when it is missing (Redis lost its data) and at least every NAMES_REBUILD
seconds, so a name it missed is found again.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterable
from pathlib import Path

from redis.exceptions import RedisError

from pullcache.cache.errors import StorageUnavailable
from pullcache.cache.layout import LOCAL_ROOT, Layout
from pullcache.cache.s3 import S3Objects
from pullcache.cluster.read_through import ReadThrough
from pullcache.cluster.redis_pool import SharedRedis

NAMES_REFRESH = 1.0    # seconds between two reads of the set of local repository names
NAMES_REBUILD = 600    # seconds after which the set is rebuilt from the bucket
FAN_OUT = 16           # files of one folder read at once


def repository_of(key: str) -> str | None:
    """`repositories/a/b` for `repositories/a/b/_manifests/tags/x`: the part before the first `_` folder."""
    parts = key.split("/")
    for at, part in enumerate(parts[1:], start=1):
        if part.startswith("_"):  # _manifests, _layers, _referrers: the repository's own folders
            return "/".join(parts[:at]) if at > 1 else None
    return None


class BucketFiles:
    def __init__(self, objects: S3Objects, layout: Layout, redis: SharedRedis) -> None:
        self._objects = objects
        self._root = layout.root
        self._client = redis.client
        self._trouble = redis.trouble
        self._cache = ReadThrough(redis, f"{redis.namespace}repo:")
        self._names_key = f"{redis.namespace}names"
        self._built_key = f"{redis.namespace}names-built"
        self._names_channel = f"{redis.namespace}names-new"
        self._known: set[str] = set()  # local repositories, as keys (`repositories/<name>`)
        self.names_version = 0  # grows with _known
        self._seeded = False  # whether _known was filled once, from Redis or the bucket
        self._limit = asyncio.Semaphore(FAN_OUT)
        self._refresher: asyncio.Task[None] | None = None

    def _key(self, path: Path) -> str:
        return path.relative_to(self._root).as_posix()

    # ------------------------------------------------------------------ life
    async def open(self) -> None:
        await self._refresh_names()
        self._refresher = asyncio.create_task(self._names_loop(), name="pullcache-repository-names")

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            await asyncio.gather(self._refresher, return_exceptions=True)

    # ------------------------------------------------------------------ reads
    async def read(self, path: Path) -> bytes | None:
        key = self._key(path)
        async with self._limit:
            return await self._cache.get(f"f:{key}", lambda: self._objects.get_content(key))

    async def modified(self, path: Path) -> float:
        info = await self._objects.stat(self._key(path))
        return 0.0 if info is None else info.modified

    async def exists(self, path: Path) -> bool:
        return await self.read(path) is not None

    async def existing(self, paths: list[Path]) -> list[bool]:
        return list(await asyncio.gather(*(self.exists(path) for path in paths)))

    async def listing(self, folder: Path) -> list[str]:
        prefix = f"{self._key(folder)}/"

        async def load() -> bytes:
            return json.dumps([info.path[len(prefix):] async for info in self._objects.list(prefix)]).encode()
        data = await self._cache.get(f"l:{prefix}", load)
        return json.loads(data) if data else []

    async def read_folder(self, folder: Path) -> dict[str, bytes]:
        names = await self.listing(folder)
        found = await asyncio.gather(*(self.read(folder / name) for name in names))
        return {name: data for name, data in zip(names, found, strict=True) if data is not None}

    # ------------------------------------------------------------------ writes
    def _affected(self, key: str) -> list[str]:
        """The cache entries a write of `key` changes: the file and the listing of each folder above it."""
        parts = key.split("/")
        return [f"f:{key}", *(f"l:{'/'.join(parts[:depth])}/" for depth in range(1, len(parts)))]

    async def write(self, path: Path, data: bytes) -> None:
        key = self._key(path)
        await self._objects.put_content(key, data)
        await self._cache.invalidate(self._affected(key))
        await self._announce(key)

    async def remove(self, paths: list[Path], *, prune_up_to: Path | None = None) -> list[Path]:
        present = [path for path, there in zip(paths, await self.existing(paths), strict=True) if there]
        keys = [self._key(path) for path in present]
        await asyncio.gather(*(self._objects.delete(key) for key in keys))
        await self._cache.invalidate(sorted({entry for key in keys for entry in self._affected(key)}))
        return present

    # ------------------------------------------------------------------ repository names
    def holds_repository(self, path: Path) -> bool:
        return self._key(path) in self._known

    async def repository_names(self, root: Path) -> list[str]:
        prefix = f"{self._key(root)}/"
        names = {repository_of(info.path) async for info in self._objects.list(prefix)}
        return sorted(name[len(prefix):] for name in names if name is not None)

    async def _announce(self, key: str) -> None:
        """Add a newly written local repository to the shared set of names (once per process)."""
        repository = repository_of(key)
        if repository is None or repository in self._known or not repository.startswith(f"{LOCAL_ROOT}/"):
            return
        self._learn([repository])
        try:
            if await self._client.sadd(self._names_key, repository):
                await self._client.publish(self._names_channel, repository)
        except RedisError as exc:
            self._trouble.failed(exc)

    def _learn(self, names: Iterable[str | bytes]) -> None:
        known = len(self._known)
        self._known.update(name.decode() if isinstance(name, bytes) else name for name in names)
        if len(self._known) > known:
            self.names_version += 1

    async def _listed_names(self) -> set[str]:
        names = {repository_of(info.path) async for info in self._objects.list(f"{LOCAL_ROOT}/")}
        return {name for name in names if name is not None}

    async def _refresh_names(self) -> None:
        """Read the shared set of names; rebuild it from the bucket when Redis lost it (or it is old)."""
        try:
            built = await self._client.exists(self._built_key)
            if not built:
                names = await self._listed_names()
                async with self._client.pipeline(transaction=True) as pipe:
                    if names:
                        pipe.sadd(self._names_key, *names)
                    pipe.set(self._built_key, "1", ex=NAMES_REBUILD)
                    await pipe.execute()
            members = await self._client.smembers(self._names_key)
        except RedisError as exc:
            self._trouble.failed(exc)
            if not self._seeded:  # down at start-up: the bucket says, once
                self._learn(await self._listed_names())
                self._seeded = True
            return
        self._seeded = True
        self._learn(members)

    async def _names_loop(self) -> None:
        """Hear new names as they are published, and re-read the set every NAMES_REFRESH seconds."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                async with self._client.pubsub(ignore_subscribe_messages=True) as channel:
                    await channel.subscribe(self._names_channel)
                    while True:
                        until = loop.time() + NAMES_REFRESH
                        while (left := until - loop.time()) > 0:
                            message = await channel.get_message(timeout=left)
                            if message is not None:
                                self._learn([message["data"]])
                        with contextlib.suppress(StorageUnavailable):  # a bucket down for the rebuild: next time
                            await self._refresh_names()
            except RedisError as exc:
                self._trouble.failed(exc)
                await asyncio.sleep(NAMES_REFRESH)
