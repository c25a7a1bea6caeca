"""Objects in an S3-compatible bucket (AWS S3, MinIO, Ceph RGW, SeaweedFS, GCS's S3 API), under a key prefix.

A small driver in the manner of Distribution's `storage/driver`: paths are strings relative to
`storage.s3.prefix`, and every operation is one S3 request or a multipart upload. obstore (Rust's
object_store) does the signing, retries of idempotent requests, ranged GETs, multipart uploads
(aborted when they fail, so no half-object is ever visible) and presigned URLs, with no Python-side
checksum cost. Each request is counted and timed by backend and operation.

Failures are of two kinds: `StorageUnavailable` (the store is unreachable or answers 5xx: requests
that need it answer 503 and pullcache heals when it returns) and `StorageMisconfigured` (no such bucket,
credentials refused: stops start-up with one line).
"""
from __future__ import annotations

import contextlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import obstore
from obstore.exceptions import BaseError, NotFoundError, PermissionDeniedError, UnauthenticatedError
from obstore.store import S3Store

from pullcache import metrics
from pullcache.cache.errors import StorageMisconfigured, StorageUnavailable

if TYPE_CHECKING:
    from obstore.store import ClientConfig

BACKEND = "s3"
PART_SIZE = 8 * 1024 * 1024  # multipart part size: S3 wants at least 5 MiB for all parts but the last
PART_CONCURRENCY = 4
READ_CHUNK = 1024 * 1024
PROBE_PATH = "_pullcache/write-probe"
T = TypeVar("T")


@dataclass(frozen=True)
class ObjectInfo:
    path: str  # relative to the prefix
    size: int
    modified: float  # POSIX time


@dataclass(frozen=True)
class S3Settings:
    bucket: str
    prefix: str = ""
    endpoint: str | None = None  # None: AWS S3 in `region`
    region: str = "us-east-1"
    access_key: str | None = None  # None: the usual AWS chain (environment, profile, instance role)
    secret_key: str | None = None
    timeout: float = 30.0  # one request, headers and body
    connect_timeout: float = 5.0


_STATUS = re.compile(r"status code: (\d{3})")


def _status(error: BaseException) -> int | None:
    """The HTTP status an S3 error carried: obstore reports most as GenericError with the status in the text."""
    match = _STATUS.search(str(error))
    return int(match.group(1)) if match else None


def _short(error: BaseException) -> str:
    """obstore's errors carry a multi-line debug dump: keep the first line."""
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


class S3Objects:
    """The bucket under one prefix."""

    def __init__(self, settings: S3Settings) -> None:
        self.settings = settings
        self._prefix = settings.prefix.strip("/")
        client: ClientConfig = {"timeout": timedelta(seconds=settings.timeout),
                                "connect_timeout": timedelta(seconds=settings.connect_timeout)}
        options: dict[str, Any] = {"region": settings.region}
        if settings.endpoint:
            options["endpoint"] = settings.endpoint
            client["allow_http"] = settings.endpoint.startswith("http://")
            options["virtual_hosted_style_request"] = False
        if settings.access_key:
            options["access_key_id"] = settings.access_key
            options["secret_access_key"] = settings.secret_key or ""
        self._store = S3Store(settings.bucket, prefix=self._prefix or None, client_options=client,
                              retry_config={"max_retries": 2, "retry_timeout": timedelta(seconds=settings.timeout)},
                              **options)

    @property
    def where(self) -> str:
        """`s3://bucket/prefix` for logs and check-config."""
        return f"s3://{self.settings.bucket}/{self._prefix}".rstrip("/")

    @contextlib.contextmanager
    def _request(self, op: str) -> Iterator[None]:
        """Count and time one request by outcome. A missing object is FileNotFoundError (obstore raises
        that or its own NotFoundError); anything else that fails is one of this module's errors."""
        started = time.monotonic()
        code = "ok"
        try:
            yield
        except (FileNotFoundError, NotFoundError) as exc:
            code = "not_found"
            raise FileNotFoundError(_short(exc)) from exc
        except (BaseError, OSError) as exc:
            status = _status(exc)
            code = str(status or "error")
            if isinstance(exc, (PermissionDeniedError, UnauthenticatedError)) or status in (401, 403):
                raise StorageMisconfigured(f"{self.where}: {op} refused, check the credentials: "
                                           f"{_short(exc)}") from exc
            if "NoSuchBucket" in str(exc):
                raise StorageMisconfigured(f"{self.where}: the bucket does not exist") from exc
            raise StorageUnavailable(f"{self.where}: {op} failed: {_short(exc)}") from exc
        finally:
            metrics.storage_requests.labels(BACKEND, op, code).inc()
            metrics.storage_request_duration.labels(BACKEND, op).observe(time.monotonic() - started)

    async def _call(self, op: str, request: Awaitable[T]) -> T:
        with self._request(op):
            return await request

    async def stat(self, path: str) -> ObjectInfo | None:
        try:
            meta = await self._call("stat", obstore.head_async(self._store, path))
        except FileNotFoundError:
            return None
        return ObjectInfo(path, meta["size"], meta["last_modified"].timestamp())

    async def get_content(self, path: str) -> bytes | None:
        """A small object's bytes (manifests, tags, links), None when absent."""
        try:
            result = await self._call("get", obstore.get_async(self._store, path))
            return bytes(await self._call("get", result.bytes_async()))
        except FileNotFoundError:
            return None

    async def put_content(self, path: str, data: bytes) -> None:
        """Replace a small object in one PUT: readers see the old bytes or the new, never a mix."""
        await self._call("put", obstore.put_async(self._store, path, data, use_multipart=False))

    async def put_file(self, path: str, source: Path) -> bool:
        """Commit a verified local file as `path`: a multipart upload for large files, aborted on failure.

        Content-addressed callers write each path with one content only, so an object already there is
        the same bytes: returns False (nothing uploaded) and that is a success, not a race lost."""
        if await self.stat(path) is not None:
            return False
        await self._call("upload", obstore.put_async(self._store, path, source, chunk_size=PART_SIZE,
                                                     max_concurrency=PART_CONCURRENCY))
        return True

    async def read(self, path: str, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """`length` bytes of `path` from `offset` (to the end when None), streamed in about 1 MiB chunks.

        Raises FileNotFoundError for a missing object before the first chunk."""
        options: dict[str, Any] = {}
        if offset or length is not None:
            options["range"] = {"offset": offset} if length is None else (offset, offset + length)
        result = await self._call("read", obstore.get_async(self._store, path, options=options))  # type: ignore[arg-type]
        try:
            async for chunk in result.stream(min_chunk_size=READ_CHUNK):
                yield bytes(chunk)
        except BaseError as exc:
            raise StorageUnavailable(f"{self.where}: read of {path} failed mid-object: {_short(exc)}") from exc

    async def delete(self, path: str) -> None:
        """Remove `path`; a path already gone is fine (S3 DELETE is idempotent)."""
        try:
            await self._call("delete", obstore.delete_async(self._store, path))
        except FileNotFoundError:
            pass

    def delete_blocking(self, path: str) -> None:
        """delete() for a worker thread that must finish it before it goes on (eviction's transaction)."""
        with contextlib.suppress(FileNotFoundError), self._request("delete"):
            obstore.delete(self._store, path)

    def get_blocking(self, path: str) -> bytes | None:
        """get_content() for a worker thread (GC reads every local manifest once)."""
        try:
            with self._request("get"):
                return bytes(obstore.get(self._store, path).bytes())
        except FileNotFoundError:
            return None

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        """Every object under `prefix` (recursively), a page at a time."""
        pages = obstore.list(self._store, prefix=prefix or None, chunk_size=1000)
        while True:
            try:
                page = await self._call("list", pages.__anext__())
            except StopAsyncIteration:
                return
            for meta in page:
                yield ObjectInfo(meta["path"], meta["size"], meta["last_modified"].timestamp())

    async def presign(self, path: str, ttl: float) -> str:
        """A GET URL for `path` that works without credentials for `ttl` seconds (redirect mode)."""
        return await self._call("sign", obstore.sign_async(self._store, "GET", path, timedelta(seconds=ttl)))

    async def check_writable(self) -> None:
        """Start-up check: the bucket exists and takes a write. Raises StorageMisconfigured or
        StorageUnavailable with one line saying which."""
        # A listing first: some stores (SeaweedFS) create a missing bucket on the first PUT. One request, not
        # a list stream: a stream left unfinished by a failure aborts the process at exit (obstore 0.x).
        await self._call("list", obstore.list_with_delimiter_async(self._store, PROBE_PATH.split("/")[0]))
        await self.put_content(PROBE_PATH, b"pullcache")
        await self.delete(PROBE_PATH)
