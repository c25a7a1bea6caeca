"""The blob index of replicas on one bucket (storage.backend s3 with cluster.redis), in Redis: every replica
sees every blob's size, origin and recency, and the totals behind the pullcache_store_* gauges, so the eviction
leader bounds the whole bucket's cached content.

Keys, under the store's namespace (clusters on other buckets may share the Redis):
- `index:b:<digest>`: a hash per blob: s (size), o (origin), a (last access, the float's text), v (version,
  bumped by every change), and e/x (the token and deadline of an eviction in flight, see below);
- `index:r:<origin>`: a sorted set per origin, digest by last access (least_recent reads it);
- `index:totals`: bytes and blobs per origin; `index:meta`: the store's meta values;
- `index:built`: written once the index was built from the bucket, so a Redis that lost its data says so.

Every write is one Lua script that changes row, recency and totals together and returns the new totals,
which this process keeps in memory (totals() is sync); refresh_if_changed() re-reads them, so every replica
shows the cluster's totals within one eviction tick.

An eviction (remove_unchanged) marks each row that is still exactly as chosen (e: its token, x: a deadline),
deletes the object, then deletes each row still carrying its token. A commit (add) of a marked digest waits
until the mark is gone (or its deadline passed: the evictor died), as SQLite's writer waits for the lock, and
only then writes its row; Store._keep publishes after add, so its bytes land after the evictor's delete.
Blobs are evicted one at a time, so a mark lasts one delete, and an eviction cancelled mid-blob (stop())
finishes that blob; a mark whose evictor died lapses after MARK_TTL. A mark's deadline and every check of it
are taken from Redis's clock (TIME in the scripts), so a replica whose clock is off cannot take a live mark
for a lapsed one; recency (last access) is the replica's own clock.

Redis holds derived state only: the bucket is the truth. Redis down: a commit, a hit or a meta write is not
recorded (said once, by the store's RedisTrouble) and goes on; reads for eviction and GC raise, so nothing is
evicted without the index. Some misses would do harm later, so this process keeps them and writes them before
it next trusts the index (the tick's refresh, its next commit, or its eviction's candidates): a pushed commit
or mount (a cached row would stay evictable: it is promoted), and the end of an eviction's mark: the drop of a
row whose object went (it would promise bytes that are gone), the unmark of one whose object could not go
(commits of it would wait out MARK_TTL). Redis data lost: needs_rebuild() turns true and the eviction
leader rebuilds the rows from the bucket (eviction/reconcile.py) while every replica goes on serving.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from redis.exceptions import RedisError

from pullcache.cache.index import CACHED, ORIGINS, PUSHED, BlobRow, Index, OriginTotals, Totals
from pullcache.cache.layout import Layout
from pullcache.cluster.redis_pool import SharedRedis

log = logging.getLogger("pullcache.store")

MARK_TTL = 60.0     # seconds an eviction's mark holds off a commit of its digest if the evictor died meanwhile
MARK_WAIT = 0.05    # seconds between two looks of a commit waiting for an eviction of its digest
SCAN_BATCH = 1000   # rows read per round trip (rows(), least_recent())

# Shared by every script: ARGV[1] is the key prefix (`<namespace>index:`).
_LIB = """
local p = ARGV[1]
local function account(origin, size, sign)
  redis.call('HINCRBY', p..'totals', origin..':bytes', sign * size)
  redis.call('HINCRBY', p..'totals', origin..':blobs', sign)
end
-- Redis's clock, not a replica's: marks' deadlines must mean the same on every replica
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function live(mark, deadline)
  return mark and tonumber(deadline) > now()
end
local function drop(d, row_origin, size)
  account(row_origin, size, -1)
  redis.call('ZREM', p..'r:'..row_origin, d)
  redis.call('DEL', p..'b:'..d)
end
-- 1: written, 0: an eviction of the digest is in flight (its mark's deadline not passed)
local function upsert(d, size, origin, at)
  local key = p..'b:'..d
  local old = redis.call('HMGET', key, 's', 'o', 'a', 'e', 'x')
  if live(old[4], old[5]) then return 0 end
  local new_origin, new_at = origin, at
  if old[1] then
    if old[2] == 'pushed' then new_origin = 'pushed' end
    if tonumber(old[3]) > tonumber(at) then new_at = old[3] end
    account(old[2], tonumber(old[1]), -1)
    if old[2] ~= new_origin then redis.call('ZREM', p..'r:'..old[2], d) end
  end
  redis.call('HSET', key, 's', size, 'o', new_origin, 'a', new_at)
  redis.call('HDEL', key, 'e', 'x')
  redis.call('HINCRBY', key, 'v', 1)
  redis.call('ZADD', p..'r:'..new_origin, new_at, d)
  account(new_origin, tonumber(size), 1)
  return 1
end
local function finish(result)
  return {result, redis.call('HGETALL', p..'totals')}
end
"""

# ARGV: prefix, then (digest, size, origin, last access) per row -> 1/0 per row
_UPSERT = _LIB + """
local done = {}
for i = 2, #ARGV, 4 do
  done[#done + 1] = upsert(ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3])
end
return finish(done)
"""

# ARGV: prefix, then (digest, time) per access. Recency only moves forward (ZADD GT); a missing row stays so.
_TOUCH = _LIB + """
for i = 2, #ARGV, 2 do
  local key = p..'b:'..ARGV[i]
  local row = redis.call('HMGET', key, 'o', 'a')
  if row[1] and tonumber(ARGV[i + 1]) > tonumber(row[2]) then
    redis.call('HSET', key, 'a', ARGV[i + 1])
    redis.call('ZADD', p..'r:'..row[1], 'GT', ARGV[i + 1], ARGV[i])
  end
end
return 1
"""

# ARGV: prefix, token, seconds the mark lasts, then (digest, size, origin, last access) per row -> the digests marked
_MARK = _LIB + """
local marked = {}
for i = 4, #ARGV, 4 do
  local key = p..'b:'..ARGV[i]
  local row = redis.call('HMGET', key, 's', 'o', 'a', 'e', 'x')
  if row[1] == ARGV[i + 1] and row[2] == ARGV[i + 2] and row[3] == ARGV[i + 3] and not live(row[4], row[5]) then
    redis.call('HSET', key, 'e', ARGV[2], 'x', now() + tonumber(ARGV[3]))
    marked[#marked + 1] = ARGV[i]
  end
end
return marked
"""

# ARGV: prefix, then (digest, token) per object gone -> the digests whose rows went (those still so marked)
_DROP_MARKED = _LIB + """
local dropped = {}
for i = 2, #ARGV, 2 do
  local row = redis.call('HMGET', p..'b:'..ARGV[i], 's', 'o', 'e')
  if row[3] == ARGV[i + 1] then
    drop(ARGV[i], row[2], tonumber(row[1]))
    dropped[#dropped + 1] = ARGV[i]
  end
end
return finish(dropped)
"""

# ARGV: prefix, then (digest, token) per object that could not go
_UNMARK = _LIB + """
for i = 2, #ARGV, 2 do
  local key = p..'b:'..ARGV[i]
  if redis.call('HGET', key, 'e') == ARGV[i + 1] then redis.call('HDEL', key, 'e', 'x') end
end
return 1
"""

# ARGV: prefix, then (digest, version) per row found missing -> the digests whose rows went: those unchanged
# since and not being evicted (their evictor drops them, and counts them)
_DROP_UNCHANGED = _LIB + """
local dropped = {}
for i = 2, #ARGV, 2 do
  local row = redis.call('HMGET', p..'b:'..ARGV[i], 's', 'o', 'v', 'e', 'x')
  if row[1] and row[3] == ARGV[i + 1] and not live(row[4], row[5]) then
    drop(ARGV[i], row[2], tonumber(row[1]))
    dropped[#dropped + 1] = ARGV[i]
  end
end
return finish(dropped)
"""

# ARGV: prefix, then digests -> those moved from cached to pushed
_PROMOTE = _LIB + """
local promoted = {}
for i = 2, #ARGV do
  local d = ARGV[i]
  local key = p..'b:'..d
  local row = redis.call('HMGET', key, 's', 'o', 'a')
  if row[2] == 'cached' then
    account('cached', tonumber(row[1]), -1)
    account('pushed', tonumber(row[1]), 1)
    redis.call('ZREM', p..'r:cached', d)
    redis.call('ZADD', p..'r:pushed', row[3], d)
    redis.call('HSET', key, 'o', 'pushed')
    redis.call('HINCRBY', key, 'v', 1)
    promoted[#promoted + 1] = d
  end
end
return finish(promoted)
"""

# ARGV: prefix, origin, first rank, last rank -> (digest, size, origin, last access) of each row in that range
_PAGE = """
local p = ARGV[1]
local found = {}
for _, d in ipairs(redis.call('ZRANGE', p..'r:'..ARGV[2], ARGV[3], ARGV[4])) do
  local row = redis.call('HMGET', p..'b:'..d, 's', 'o', 'a')
  if row[1] then
    found[#found + 1] = d
    found[#found + 1] = row[1]
    found[#found + 1] = row[2]
    found[#found + 1] = row[3]
  end
end
return found
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _time(value: float) -> str:
    """A last access as text that reads back as the same float (Redis and Lua compare it as text)."""
    return repr(float(value))


def _pairs(tokens: dict[str, str]) -> list[str]:
    """digest -> token as a script's (digest, token) ARGV pairs."""
    return [item for pair in tokens.items() for item in pair]


def _forget(missed: dict[str, str], replayed: dict[str, str]) -> None:
    """Drop the replayed entries from missed, unless one was replaced meanwhile (a later eviction's token)."""
    for digest, token in replayed.items():
        if missed.get(digest) == token:
            del missed[digest]


def _parse_totals(found: Sequence[Any] | dict[Any, Any]) -> Totals:
    """Totals from the totals hash: HGETALL's dict, or the flat list a script returns."""
    pairs = found.items() if isinstance(found, dict) else zip(found[::2], found[1::2], strict=True)
    values = {_text(field): int(value) for field, value in pairs}
    return {origin: OriginTotals(values.get(f"{origin}:bytes", 0), values.get(f"{origin}:blobs", 0))
            for origin in ORIGINS}


class RedisIndex(Index):
    shared = True

    def __init__(self, redis: SharedRedis) -> None:
        super().__init__()
        self._client = redis.client
        self._trouble = redis.trouble
        self._prefix = f"{redis.namespace}index:"
        self._built_key = f"{self._prefix}built"
        self._lost = False
        # What Redis missed that must not be lost (replayed by _replay_missed): pushed adds, as digests to
        # promote, and the end of an eviction's mark, as digest -> its token: the row's drop once the object
        # went, its unmark when the object could not go.
        self._missed_pushes: set[str] = set()
        self._missed_drops: dict[str, str] = {}
        self._missed_unmarks: dict[str, str] = {}
        client = redis.client
        self._upsert = client.register_script(_UPSERT)
        self._touch = client.register_script(_TOUCH)
        self._mark = client.register_script(_MARK)
        self._drop_marked = client.register_script(_DROP_MARKED)
        self._unmark = client.register_script(_UNMARK)
        self._drop_unchanged = client.register_script(_DROP_UNCHANGED)
        self._promote = client.register_script(_PROMOTE)
        self._page = client.register_script(_PAGE)

    def _key(self, digest: str) -> str:
        return f"{self._prefix}b:{digest}"

    # ------------------------------------------------------------------ life
    async def open(self) -> bool:
        """Read the totals; always False: an index never built, or lost, is not rebuilt by every replica's
        start-up but by the eviction leader (needs_rebuild), and a Redis down at start-up keeps no replica
        from serving."""
        await self.refresh_if_changed()
        return False

    async def close(self) -> None:
        """The store's Redis client is closed by its shared state (RedisState.close)."""

    def needs_rebuild(self) -> bool:
        return self._lost

    async def rebuilt(self) -> None:
        try:
            await self._client.set(self._built_key, str(time.time()))
        except RedisError as exc:
            self._trouble.failed(exc)
            return
        self._lost = False

    # ------------------------------------------------------------------ totals
    def _took(self, flat: Sequence[Any]) -> None:
        self._totals = _parse_totals(flat)
        self._notify()

    async def _replay_missed(self) -> None:
        """Write what Redis missed while down, before this process trusts the index again: a push or mount
        of a blob cached before makes its row pushed (promote: a row evicted meanwhile is not brought back
        for bytes that are gone), and an eviction's mark still there ends: the row goes if its object did,
        else it is unmarked. Raises RedisError while Redis is still down (the caller decides whether that
        matters)."""
        if self._missed_drops:
            drops = dict(self._missed_drops)
            _, totals = await self._drop_marked(args=[self._prefix, *_pairs(drops)])
            self._took(totals)
            _forget(self._missed_drops, drops)
        if self._missed_unmarks:
            unmarks = dict(self._missed_unmarks)
            await self._unmark(args=[self._prefix, *_pairs(unmarks)])
            _forget(self._missed_unmarks, unmarks)
        if self._missed_pushes:
            pushes = set(self._missed_pushes)
            _, totals = await self._promote(args=[self._prefix, *pushes])
            self._took(totals)
            self._missed_pushes -= pushes

    async def refresh_if_changed(self) -> None:
        """Re-read the cluster's totals, and notice a Redis that lost the index (no `built` marker), after
        writing what Redis missed (_replay_missed)."""
        try:
            await self._replay_missed()
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.hgetall(f"{self._prefix}totals")
                pipe.exists(self._built_key)
                found, built = await pipe.execute()
        except RedisError as exc:
            self._trouble.failed(exc)  # the totals stay as last read
            return
        self._trouble.answered()
        self._lost = not built
        totals = _parse_totals(found)
        if totals != self._totals:
            self._totals = totals
            self._notify()

    # ------------------------------------------------------------------ writes a request makes: never fail
    async def add(self, digest: str, size: int, origin: str) -> None:
        """Index a committed blob as used now, once no eviction of it is in flight (see the module's doc).
        Redis down: not indexed (the leader's next rebuild or GC finds it in the bucket), but a pushed row is
        kept to be replayed (_replay_missed): the blob may have a cached row, which eviction could take."""
        while True:
            try:
                await self._replay_missed()
                done, totals = await self._upsert(args=[self._prefix, digest, size, origin, _time(time.time())])
            except RedisError as exc:
                self._trouble.failed(exc)
                if origin == PUSHED:
                    self._missed_pushes.add(digest)
                return
            self._trouble.answered()
            if done[0]:
                self._took(totals)
                return
            await asyncio.sleep(MARK_WAIT)

    async def touch_many(self, accesses: dict[str, float]) -> None:
        if not accesses:
            return
        args: list[Any] = [self._prefix]
        for digest, at in accesses.items():
            args += [digest, _time(at)]
        try:
            await self._touch(args=args)
        except RedisError as exc:
            self._trouble.failed(exc)  # recency only: the hits are lost

    async def set_meta(self, key: str, value: str) -> None:
        try:
            await self._client.hset(f"{self._prefix}meta", key, value)
        except RedisError as exc:
            self._trouble.failed(exc)

    async def remove_missing(self, digests: Iterable[str], still_missing: Callable[[str], bool]) -> list[BlobRow]:
        """Drop each row whose blob still_missing() says is gone, unless the row changed (a commit) since it
        was read; Redis down: nothing is dropped (the next GC does it)."""
        try:
            found = await self._read_rows(list(digests))
            gone = [(row, version) for row, version in found if still_missing(row.digest)]
            if not gone:
                return []
            args: list[Any] = [self._prefix]
            for row, version in gone:
                args += [row.digest, version]
            dropped, totals = await self._drop_unchanged(args=args)
        except RedisError as exc:
            self._trouble.failed(exc)
            return []
        self._took(totals)
        dropped_digests = {_text(digest) for digest in dropped}
        return [row for row, _ in gone if row.digest in dropped_digests]

    # ------------------------------------------------------------------ writes of eviction, GC and reconcile
    async def add_many(self, rows: Iterable[BlobRow], still_there: Callable[[str], bool]) -> list[BlobRow]:
        """Index blobs found in the bucket; a digest being evicted meanwhile is left to its evictor."""
        rows = [row for row in rows if still_there(row.digest)]
        added: list[BlobRow] = []
        for start in range(0, len(rows), SCAN_BATCH):
            batch = rows[start:start + SCAN_BATCH]
            args: list[Any] = [self._prefix]
            for row in batch:
                args += [row.digest, row.size, row.origin, _time(row.last_access)]
            done, totals = await self._upsert(args=args)
            self._took(totals)
            added += [row for row, ok in zip(batch, done, strict=True) if ok]
        return added

    async def remove_unchanged(self, rows: Iterable[BlobRow], remove_file: Callable[[str], None]) -> list[BlobRow]:
        """For each row: mark it if still as given, delete its object (remove_file, in a thread), then drop the
        row if still marked; an object that could not go keeps its row (unmarked). One blob at a time, so a
        mark lasts one delete, not a batch's. A blob begun is finished even if the caller is cancelled (its
        delete runs on in its thread: its row must not stay marked). Redis down: raises before anything is
        evicted (nothing goes blind), or returns the rows removed before it went down."""
        removed: list[BlobRow] = []
        for row in rows:
            step = asyncio.ensure_future(self._evict_one(row, remove_file))
            try:
                gone = await asyncio.shield(step)
            except asyncio.CancelledError:
                await asyncio.wait([step])
                if not step.cancelled() and step.exception() is not None:
                    log.warning("evicting %s after a cancel: %s", row.digest, step.exception())
                raise
            except RedisError:
                if removed:
                    return removed
                raise
            if gone:
                removed.append(row)
        return removed

    async def _evict_one(self, row: BlobRow, remove_file: Callable[[str], None]) -> bool:
        """Mark, delete, drop one blob; True once its object is gone and its row went (or will: a drop Redis
        refused is replayed, _replay_missed)."""
        token = secrets.token_hex(8)
        if not await self._mark(args=[self._prefix, token, MARK_TTL, row.digest, row.size, row.origin,
                                      _time(row.last_access)]):
            return False  # used, re-added or promoted since it was chosen (or being evicted already)
        try:
            await asyncio.to_thread(remove_file, row.digest)
        except OSError:
            try:
                await self._unmark(args=[self._prefix, row.digest, token])
            except RedisError as exc:
                self._trouble.failed(exc)
                self._missed_unmarks[row.digest] = token
            return False
        try:
            dropped, totals = await self._drop_marked(args=[self._prefix, row.digest, token])
        except RedisError as exc:
            self._trouble.failed(exc)
            self._missed_drops[row.digest] = token
            return True
        self._took(totals)
        return bool(dropped)

    async def promote(self, digests: Iterable[str]) -> list[str]:
        digests = list(digests)
        if not digests:
            return []
        promoted, totals = await self._promote(args=[self._prefix, *digests])
        self._took(totals)
        return [_text(digest) for digest in promoted]

    # ------------------------------------------------------------------ reads
    async def _read_rows(self, digests: list[str]) -> list[tuple[BlobRow, str]]:
        """The rows of those digests that have one, each with its version."""
        found: list[tuple[BlobRow, str]] = []
        for start in range(0, len(digests), SCAN_BATCH):
            batch = digests[start:start + SCAN_BATCH]
            async with self._client.pipeline(transaction=False) as pipe:
                for digest in batch:
                    pipe.hmget(self._key(digest), "s", "o", "a", "v")
                answers = await pipe.execute()
            for digest, (size, origin, at, version) in zip(batch, answers, strict=True):
                if size is not None:
                    found.append((BlobRow(digest, int(size), _text(origin), float(at)), _text(version)))
        return found

    async def get(self, digest: str) -> BlobRow | None:
        """The row, None if there is none, or if Redis is down (a commit checking on its row goes on)."""
        try:
            found = await self._read_rows([digest])
        except RedisError as exc:
            self._trouble.failed(exc)
            return None
        return found[0][0] if found else None

    async def get_meta(self, key: str) -> str | None:
        try:
            value = await self._client.hget(f"{self._prefix}meta", key)
        except RedisError as exc:
            self._trouble.failed(exc)
            return None
        return None if value is None else _text(value)

    async def _ranked(self, origin: str, start: int, stop: int) -> list[BlobRow]:
        """The rows ranked start..stop (inclusive) by last access in an origin's sorted set, in one script."""
        flat = await self._page(args=[self._prefix, origin, start, stop])
        return [BlobRow(_text(flat[i]), int(flat[i + 1]), _text(flat[i + 2]), float(flat[i + 3]))
                for i in range(0, len(flat), 4)]

    async def rows(self, origin: str | None = None) -> list[BlobRow]:
        rows: list[BlobRow] = []
        for each in (origin,) if origin else ORIGINS:
            start = 0
            while page := await self._ranked(each, start, start + SCAN_BATCH - 1):
                rows += page
                start += SCAN_BATCH
        return rows

    async def least_recent(self, limit: int) -> list[BlobRow]:
        """Eviction's candidates, after what Redis missed from this process was written (_replay_missed)."""
        await self._replay_missed()
        return await self._ranked(CACHED, 0, limit - 1) if limit > 0 else []


def redis_index(redis: SharedRedis) -> Callable[[Layout], Index]:
    """Store's `index` factory for replicas on one bucket (the layout is not used: nothing is kept locally)."""
    return lambda _layout: RedisIndex(redis)

