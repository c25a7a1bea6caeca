"""Manifest content negotiation, one rule for every repository a manifest is read from (api/manifests.py).

What Distribution does without schema1 (reference/oci-content-negotiation.md):
- no `Accept`, `*/*`, `application/*` or `application/json` accept any manifest (all are JSON);
- a manifest whose type the client accepts is served as stored, with that type as `Content-Type`;
- a tag naming an index or manifest list the client does not accept is answered with the index's
  linux/amd64 manifest when the client accepts that one's type (what Distribution does for
  clients that predate manifest lists), else 404 `MANIFEST_UNKNOWN` saying what was found;
- a digest is never rewritten: it names exactly one document, which is served as stored.
"""
from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol, TypeVar

from pullcache.api.errors import MANIFEST_UNKNOWN
from pullcache.digests import Digest
from pullcache.mediatypes import INDEX_TYPES

DEFAULT_PLATFORM = ("linux", "amd64")
_ANY_MANIFEST = frozenset({"*/*", "application/*", "application/json"})


@dataclass(frozen=True)
class Accepted:
    """The manifest media types a client said it accepts."""

    types: frozenset[str]
    any: bool

    def allows(self, media_type: str) -> bool:
        return self.any or media_type in self.types


def _quality(params: list[str]) -> float:
    for param in params:
        key, _, value = param.partition("=")
        if key.strip().lower() == "q":
            try:
                return float(value)
            except ValueError:
                return 1.0
    return 1.0


def parse_accept(values: list[str]) -> Accepted:
    """All `Accept` headers of a request (clients send one per type or one comma list); q=0 excludes."""
    return _parse_accept(tuple(values))


@lru_cache(maxsize=256)  # a client sends the same Accept with every manifest request
def _parse_accept(values: tuple[str, ...]) -> Accepted:
    types, named = set(), False
    for value in values:
        for item in value.split(","):
            media_type, *params = (part.strip() for part in item.split(";"))
            named = named or bool(media_type)
            if media_type and _quality(params) > 0:
                types.add(media_type.lower())
    return Accepted(frozenset(types), not named or bool(types & _ANY_MANIFEST))


def default_platform_digest(index: bytes, accepted: Accepted) -> Digest | None:
    """The digest of the index's linux/amd64 entry, if the client accepts that entry's type."""
    try:
        entries = json.loads(index).get("manifests") or []
    except (ValueError, AttributeError):
        return None
    for entry in entries if isinstance(entries, list) else []:
        platform = entry.get("platform") if isinstance(entry, dict) else None
        if not isinstance(platform, dict) or (platform.get("os"), platform.get("architecture")) != DEFAULT_PLATFORM:
            continue
        if not accepted.allows(str(entry.get("mediaType"))):
            continue
        try:
            return Digest.parse(str(entry.get("digest")))
        except ValueError:
            continue
    return None


class Manifest(Protocol):
    """A manifest as a handler holds it; body None when only its headers were fetched (a HEAD)."""

    @property
    def digest(self) -> Digest: ...

    @property
    def media_type(self) -> str: ...

    @property
    def body(self) -> bytes | None: ...


M = TypeVar("M", bound=Manifest)


async def negotiate(found: M, reference: str | Digest, accepted: Accepted,
                    load: Callable[[Digest], Awaitable[M | None]]) -> M:
    """What a request for `reference` is answered with, given that it names `found`.

    `load(digest)` fetches another manifest of the same repository with its body (None if there is
    none): the index itself when `found` came without one, and the linux/amd64 manifest it names.
    """
    if isinstance(reference, Digest) or accepted.allows(found.media_type):
        return found
    fallback = None
    if found.media_type in INDEX_TYPES:
        index = found if found.body is not None else await load(found.digest)
        platform = default_platform_digest(index.body, accepted) if index is not None and index.body else None
        fallback = await load(platform) if platform is not None else None
    if fallback is None:
        raise MANIFEST_UNKNOWN.error(f"tag {reference!r} names a {found.media_type} manifest, which "
                                     "the request's Accept header does not include",
                                     detail={"mediaType": found.media_type})
    return fallback
