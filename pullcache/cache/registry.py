"""What the HTTP handlers read a repository through, whoever holds its content.

As in CNCF Distribution, where `registry/proxy` wraps the local blob and manifest stores behind the
interfaces the handlers already use, a handler here asks a RegistryRepository for a blob, a manifest,
its tags or its referrers and never learns whether the repository was pushed here (cache/local.py) or is
an upstream's seen through the pull-through cache (pullthrough/repository.py). The answers say where
their bytes come from (`source`), which is all the access log and metrics need.

Nothing here speaks HTTP: "not here" is None (or RepositoryUnknown for a whole repository), and an
upstream that failed with nothing cached to answer raises its UpstreamError; api/ says both in OCI terms.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, Self

from pullcache.cache.backends import OpenedBlob
from pullcache.cache.fill import FillReader
from pullcache.digests import Digest

# Where the body bytes of an answer come from: the label of pullcache_bytes_served_total.
LOCAL = "local"        # a pushed repository's content
CACHE = "cache"        # content cached from an upstream, already committed
UPSTREAM = "upstream"  # streamed from a fill, or a manifest just fetched


class RepositoryUnknown(LookupError):
    """The registry knows nothing of the repository; the message says so in the implementation's words."""


@dataclass(frozen=True)
class BlobBody:
    """A blob a repository answers with: committed and open (blob), still arriving (reader), or for a HEAD
    answered without opening anything, only its size. Use `async with`: leaving it closes what it holds."""

    source: str                 # LOCAL, CACHE or UPSTREAM
    result: str | None = None   # how pull-through counted the request (hit, miss, ...); None for local content
    blob: OpenedBlob | None = None
    reader: FillReader | None = None
    size: int | None = None     # set when neither blob nor reader is

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.reader is not None:
            self.reader.close()
        if self.blob is not None:
            await self.blob.close()


@dataclass(frozen=True)
class ManifestBody:
    """A manifest a repository answers with; body None only for a HEAD answered without fetching it."""

    digest: Digest
    media_type: str
    size: int
    body: bytes | None
    source: str                 # LOCAL, CACHE or UPSTREAM
    result: str | None = None   # how pull-through counted the request; None for local content


class RegistryRepository(Protocol):
    """One repository as the read endpoints see it."""

    async def blob(self, digest: Digest, *, head: bool = False) -> BlobBody | None:
        """The blob, opened for sending (head: only what a HEAD answers needs); None if the repository
        does not serve it."""
        ...

    async def holds_blob(self, digest: Digest) -> bool:
        """Whether a cross-repository mount from this repository may link the blob (the store has it)."""
        ...

    async def manifest(self, reference: str | Digest, accept: Sequence[str] = (), *, head: bool = False,
                       count: bool = True) -> ManifestBody | None:
        """The manifest a tag or digest names; None if the repository has none. `accept` is the client's
        Accept headers (an upstream is asked with them); head: the body may be left unfetched; count=False:
        a further manifest loaded for a request already counted (content negotiation)."""
        ...

    def answered(self, manifest: ManifestBody, *, head: bool) -> None:
        """The request was answered with `manifest` (after negotiation): note its use."""
        ...

    async def tags(self) -> list[str]:
        """Every tag; RepositoryUnknown if the repository is not known here."""
        ...

    async def referrers(self, subject: Digest) -> list[dict[str, Any]]:
        """Descriptors of the manifests whose subject is `subject` (none is an empty list)."""
        ...
