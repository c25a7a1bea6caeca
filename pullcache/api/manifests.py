"""Manifest endpoints: GET/HEAD with content negotiation, of whichever repository a name reads from
(api/targets.py); PUT with validation and DELETE of pushed ones.

Content negotiation is api/negotiation.py's, one rule for every repository. What a manifest must be is
pullcache/manifest_check.py's, the same for upstream manifests; a push is refused with 400
MANIFEST_INVALID before anything is written. Schema1 manifests are neither converted to nor accepted.
"""
from __future__ import annotations

import asyncio
from functools import lru_cache, partial
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from pullcache.api import hot
from pullcache.api.appkeys import CACHE_RESULT, SHADOW_WARNINGS, STORE
from pullcache.api.audited import audit
from pullcache.api.blob_response import digest_headers, note_served
from pullcache.api.errors import (
    DIGEST_INVALID,
    MANIFEST_BLOB_UNKNOWN,
    MANIFEST_INVALID,
    MANIFEST_TOO_LARGE,
    MANIFEST_UNKNOWN,
    TAG_INVALID,
    RegistryError,
)
from pullcache.api.names import check_reference
from pullcache.api.negotiation import negotiate, parse_accept
from pullcache.api.notify import notify
from pullcache.api.targets import push_target, read_repository
from pullcache.api.upstream_errors import upstream_error
from pullcache.cache.index import PUSHED
from pullcache.cache.repos import Repository
from pullcache.cache.store import Store
from pullcache.digests import Digest
from pullcache.manifest_check import (
    CHECK_INLINE_BYTES,
    ManifestInvalid,
    ParsedManifest,
    check_manifest,
)
from pullcache.mediatypes import INDEX_TYPES, MAX_MANIFEST_BYTES, SCHEMA1_TYPES
from pullcache.upstream.errors import UpstreamError

# ---------------------------------------------------------------------- reading

def _unknown(name: str, reference: str, why: str = "") -> RegistryError:
    return MANIFEST_UNKNOWN.error(f"manifest {reference!r} is not in repository {name!r}{why}",
                                  detail={"name": name, "reference": reference})


def _existing_reference(name: str, reference: str) -> str | Digest:
    """The tag or digest a GET, HEAD or DELETE names.

    A reference outside the tag grammar names no manifest that could exist: 404 MANIFEST_UNKNOWN, as the
    conformance suite expects and zot answers (a PUT to one is 400 TAG_INVALID: it would create it). A
    malformed digest stays 400 DIGEST_INVALID, which the suite accepts: the client sent a broken digest.
    """
    try:
        return check_reference(reference)
    except RegistryError as exc:
        if exc.kind is not TAG_INVALID:
            raise
        raise _unknown(name, reference, f" (no tag can have that name: {exc.message})") from exc


async def get_manifest(request: web.Request, name: str, reference: str) -> web.StreamResponse:
    """GET/HEAD /v2/<name>/manifests/<tag or digest>.

    A tag naming an index the client does not accept is answered with the index's linux/amd64 manifest
    (api/negotiation.py), which an upstream's repository fetches through the cache like any other.
    """
    ref = _existing_reference(name, reference)
    target, repository = read_repository(request, name)
    head = request.method == "HEAD"
    accept = request.headers.getall("Accept", [])
    try:
        found = await repository.manifest(ref, accept, head=head)
        if found is None:
            raise _unknown(name, reference)
        if found.result is not None:
            request[CACHE_RESULT] = found.result  # what was counted: the request, not each manifest negotiation loads
        manifest = await negotiate(found, ref, parse_accept(accept),
                                   partial(repository.manifest, accept=accept, count=False))
    except UpstreamError as exc:
        raise upstream_error(exc, MANIFEST_UNKNOWN, f"manifest {reference} of {target.repository}") from exc
    answered = partial(repository.answered, manifest, head=head)
    answered()
    headers = CIMultiDict(_manifest_headers(manifest.digest, manifest.media_type))  # a Response keeps this copy
    if head:
        headers["Content-Length"] = str(manifest.size)
        hot.offer(request, ref, found, manifest, answered, headers, None)
        return web.Response(headers=headers)
    assert manifest.body is not None, "a GET loads the body"
    note_served(request, manifest.source, len(manifest.body))
    hot.offer(request, ref, found, manifest, answered, headers, manifest.body)
    return web.Response(body=manifest.body, headers=headers)


@lru_cache(maxsize=1024)  # the same few manifests are asked for over and over
def _manifest_headers(digest: Digest, media_type: str) -> CIMultiDict[str]:
    """The headers a manifest goes out with, built once; each response copies them."""
    return CIMultiDict({**digest_headers(digest), "Content-Type": media_type})


# ---------------------------------------------------------------------- writing

def _invalid(message: str, detail: Any = None) -> RegistryError:
    return MANIFEST_INVALID.error(message, detail=detail)


async def _read_body(request: web.Request) -> bytes:
    """The request body, refused with 413 beyond MAX_MANIFEST_BYTES before or while reading it."""
    too_large = MANIFEST_TOO_LARGE.error(f"manifest exceeds the {MAX_MANIFEST_BYTES} byte limit",
                                         detail={"limit": MAX_MANIFEST_BYTES})
    if request.content_length is not None and request.content_length > MAX_MANIFEST_BYTES:
        raise too_large
    parts, size = [], 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > MAX_MANIFEST_BYTES:
            raise too_large
        parts.append(chunk)
    return b"".join(parts)


def parse_manifest(data: bytes, content_type: str | None) -> ParsedManifest:
    """A pushed manifest checked (pullcache/manifest_check.py) and of a type pushes may store."""
    try:
        parsed = check_manifest(data, content_type)
    except ManifestInvalid as exc:
        raise _invalid(exc.message, exc.detail) from exc
    if parsed.media_type in SCHEMA1_TYPES or parsed.document.get("schemaVersion") == 1:
        raise _invalid("schema1 manifests are not supported; push schema2 or OCI manifests")
    return parsed


def _parse_and_hash(data: bytes, content_type: str | None, algorithm: str) -> tuple[ParsedManifest, Digest]:
    return parse_manifest(data, content_type), Digest.of(data, algorithm)


def referrer_descriptor(parsed: ParsedManifest, digest: Digest, size: int) -> dict[str, Any]:
    """The descriptor the referrers API lists for a manifest with a subject (spec: Listing Referrers)."""
    descriptor: dict[str, Any] = {"mediaType": parsed.media_type, "digest": str(digest), "size": size}
    artifact_type = parsed.document.get("artifactType")
    config = parsed.document.get("config")
    if not artifact_type and parsed.media_type not in INDEX_TYPES and isinstance(config, dict):
        artifact_type = config.get("mediaType")
    if artifact_type:
        descriptor["artifactType"] = artifact_type
    annotations = parsed.document.get("annotations")
    if isinstance(annotations, dict) and annotations:
        descriptor["annotations"] = annotations
    return descriptor


async def _link_references(store: Store, repo: Repository, parsed: ParsedManifest) -> None:
    """Make sure every blob and manifest the manifest names is in the repository.

    A blob the registry holds under another name (pushed there, or cached from an upstream) is linked
    in: a client whose existence check was answered by another repository's copy or by the cache
    rightly skipped uploading it, and the spec only asks that referenced blobs exist in the registry.
    Anything the registry lacks is MANIFEST_BLOB_UNKNOWN, listing every such digest, and then nothing
    is linked.
    """
    def blob_unknown(unknown: list[str]) -> RegistryError:
        return MANIFEST_BLOB_UNKNOWN.error(f"manifest references {len(unknown)} blob(s) or manifest(s) "
                                           f"repository {repo.name!r} does not have: {', '.join(unknown[:5])}",
                                           detail={"digests": unknown})
    wanted = list(dict.fromkeys(parsed.blobs))
    sizes = await asyncio.gather(*(store.find_blob_size(d) for d in wanted))
    held = [d for d, size in zip(wanted, sizes, strict=True) if size is not None]
    to_link = await repo.unlinked_blobs(held)
    lost = [d for d in parsed.blobs if d not in held] + await repo.absent_manifests(parsed.manifests)
    unknown = [str(d) for d in dict.fromkeys(lost)]
    if unknown:
        raise blob_unknown(unknown)
    for digest in to_link:
        if not await store.mount_blob(repo.name, digest):
            raise blob_unknown([str(digest)])  # evicted since the check


async def put_manifest(request: web.Request, name: str, reference: str) -> web.StreamResponse:
    """PUT /v2/<name>/manifests/<tag or digest>: store the exact bytes, link them, tag them."""
    ref = check_reference(reference)
    target = push_target(request, name)
    data = await _read_body(request)
    content_type = request.headers.get("Content-Type")
    algorithm = ref.algorithm if isinstance(ref, Digest) else "sha256"
    if len(data) > CHECK_INLINE_BYTES:  # up to 4 MiB of JSON and its hash: one thread hop for both
        parsed, digest = await asyncio.to_thread(_parse_and_hash, data, content_type, algorithm)
    else:
        parsed, digest = _parse_and_hash(data, content_type, algorithm)
    if isinstance(ref, Digest) and digest != ref:
        raise DIGEST_INVALID.error(f"manifest content hashes to {digest}, not {ref}",
                                   detail={"expected": str(ref), "actual": str(digest)})
    store = request.app[STORE]
    repo = store.repository(target.store_name)
    await _link_references(store, repo, parsed)
    # Order matters for crash safety: bytes, then the revision link, then the tag and referrer entry.
    await store.put_small(data, origin=PUSHED, algorithm=algorithm)
    await repo.link_manifest(digest, parsed.media_type)
    previous = None
    if not isinstance(ref, Digest):
        if not await repo.tags():
            request.app[SHADOW_WARNINGS].first_tag_pushed(target.name, ref)
        previous = await repo.get_tag(ref)
        await repo.set_tag(ref, digest)
    audit(request, "push", "success", repository=name, reference=reference, digest=str(digest))
    notify(request, "push", name, str(digest), tag=None if isinstance(ref, Digest) else ref,
           media_type=parsed.media_type, size=len(data))
    if previous is not None and previous.digest != digest:
        audit(request, "tag_overwrite", "success", repository=name, reference=reference, digest=str(digest),
              previous=str(previous.digest))
    headers = {"Location": f"/v2/{target.name}/manifests/{digest}", "Docker-Content-Digest": str(digest)}
    if parsed.subject is not None:
        await repo.add_referrer(parsed.subject, referrer_descriptor(parsed, digest, len(data)))
        headers["OCI-Subject"] = str(parsed.subject)
    return web.Response(status=201, headers=headers)


async def delete_manifest(request: web.Request, name: str, reference: str) -> web.StreamResponse:
    """DELETE /v2/<name>/manifests/<digest> removes the manifest and its tags; by tag, only the tag."""
    target = push_target(request, name)
    ref = _existing_reference(name, reference)
    repo = request.app[STORE].repository(target.store_name)
    if isinstance(ref, Digest):
        digest: Digest | None = ref if await repo.unlink_manifest(ref) else None
    else:
        tag = await repo.get_tag(ref)
        digest = tag.digest if tag is not None and await repo.delete_tag(ref) else None
    if digest is None:
        raise _unknown(name, reference)
    audit(request, "delete", "success", repository=name, reference=reference, digest=str(digest))
    notify(request, "delete", name, str(digest), tag=None if isinstance(ref, Digest) else ref)
    return web.Response(status=202, headers={"Docker-Content-Digest": str(digest)})
