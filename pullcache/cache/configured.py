"""The Store that storage.backend names: the filesystem under storage.path, or an S3 bucket beside it; with
cluster.redis, one whose repository files, pull-through state and blob index every replica on the bucket
shares (processes on one storage.path share its SQLite index already)."""
from __future__ import annotations

import asyncio
from pathlib import Path

from pullcache.cache.bucket_files import BucketFiles
from pullcache.cache.layout import Layout
from pullcache.cache.redis_index import redis_index
from pullcache.cache.repo_files import LocalFiles
from pullcache.cache.s3 import S3Objects, S3Settings
from pullcache.cache.s3_backend import BucketMirror, S3Blobs
from pullcache.cache.store import Store
from pullcache.cluster.redis_pool import shared_redis
from pullcache.cluster.shared_state import RedisState
from pullcache.config import ClusterConfig, S3Config, StorageConfig

SETTLE = 0.1  # seconds for obstore to wind down a failed request before the process exits


def where(s3: S3Config) -> str:
    """`s3://bucket/prefix`, as S3Objects.where names it."""
    return f"s3://{s3.bucket}/{s3.prefix.strip('/')}".rstrip("/")


def objects_for(s3: S3Config) -> S3Objects:
    return S3Objects(S3Settings(bucket=s3.bucket, prefix=s3.prefix, endpoint=s3.endpoint, region=s3.region,
                                access_key=s3.access_key, secret_key=s3.secret(), timeout=s3.timeout))


async def check_bucket(s3: S3Config) -> str:
    """Start-up's check that the bucket exists and takes a write; returns where it is. Raises
    StorageMisconfigured or StorageUnavailable with one line."""
    objects = objects_for(s3)
    try:
        await objects.check_writable()
    except BaseException:
        # obstore's runtime finishes a failed request's connection after the error reached us; a process
        # that exits at once (a refused start) would abort in that thread. Let it finish first.
        await asyncio.sleep(SETTLE)
        raise
    return objects.where


def store_for(storage: StorageConfig, cluster: ClusterConfig | None = None) -> Store:
    """The store; `cluster` (its redis) only for a process that shares the store with others."""
    redis_url = cluster.redis if cluster is not None else None
    if storage.backend == "filesystem":
        if redis_url is None:
            return Store(storage.path)
        namespace = f"pullcache:{Path(storage.path).resolve()}:"
        return Store(storage.path, state=RedisState(shared_redis(redis_url, namespace)))
    s3 = storage.s3
    objects = objects_for(s3)
    redirect_ttl = s3.redirect_ttl if s3.redirect else None

    def blobs(layout: Layout) -> S3Blobs:
        return S3Blobs(objects, layout, local_cache=s3.local_cache, redirect_ttl=redirect_ttl)
    if redis_url is None:
        return Store(storage.path, backend=blobs,
                     files=lambda layout: LocalFiles(layout, BucketMirror(objects, layout)))
    redis = shared_redis(redis_url, f"pullcache:{objects.where}:")
    return Store(storage.path, backend=blobs, files=lambda layout: BucketFiles(objects, layout, redis),
                 state=RedisState(redis), index=redis_index(redis))
