"""What a manifest must be before it is stored, whether a client pushed it or an upstream served it.

Pure (no HTTP, no disk): api/manifests.py answers a ManifestInvalid with 400 MANIFEST_INVALID,
pullthrough/manifests.py with 502 naming the upstream; neither stores anything then. The checks follow
Distribution (manifest/ocischema, schema2, manifestlist and its storage handlers) and zot (the
image-spec JSON schemas):

- a JSON object nested at most MAX_DEPTH levels: no manifest comes near, and reading a deeper one
  again (content negotiation, referrers) could exhaust the interpreter's recursion limit;
- its media type (Content-Type unless generic, else `mediaType`, else inferred from the fields) is an
  RFC 6838 type/subtype: it goes back out as the Content-Type of every pull of the manifest; a
  Content-Type and a `mediaType` that are both given must agree;
- image manifests (OCI, Docker schema2): schemaVersion 2, a config descriptor, a list of layer
  descriptors, no `manifests`; indexes (OCI index, Docker manifest list): schemaVersion 2, a list of
  manifest descriptors whose platform, if given, names os and architecture, no config or layers;
- every descriptor (subject included): a media type, a digest pullcache can verify, a size from 0 to
  2^63-1, `urls` a list of strings, `annotations` strings to strings; `artifactType` a media type;
- other media types (schema1 from an old upstream, pre-1.1 artifacts): a valid media type, and well
  formed config, layers, manifests and subject where present. Whether to accept them is the caller's
  policy (pushes refuse schema1).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, NoReturn

from pullcache.digests import Digest, DigestError
from pullcache.mediatypes import (
    IMAGE_TYPES,
    INDEX_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
    OCTET_STREAM,
    is_media_type,
)

MAX_DEPTH = 100
CHECK_INLINE_BYTES = 64 * 1024  # callers check bigger manifests (up to 4 MiB of JSON) off the event loop
MAX_SIZE = 2 ** 63 - 1  # what an int64 holds, as every registry and client in Go reads sizes
GENERIC_CONTENT_TYPES = frozenset({OCTET_STREAM, "application/json"})  # say nothing of the manifest's type


class ManifestInvalid(ValueError):
    """The manifest fails a check; the message says which, `detail` names the field when there is one."""

    def __init__(self, message: str, detail: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


@dataclass(frozen=True)
class ParsedManifest:
    document: dict[str, Any]
    media_type: str
    blobs: list[Digest]        # config and layers (foreign layers, which carry urls, excepted)
    manifests: list[Digest]    # index entries
    subject: Digest | None


def _media_type_of(content_type: str | None) -> str | None:
    """A Content-Type header without its parameters, lowercased; None when absent or empty."""
    if content_type is None:
        return None
    return content_type.split(";", 1)[0].strip().lower() or None


def check_manifest(data: bytes, content_type: str | None) -> ParsedManifest:
    """The manifest `data` served or sent with `content_type`, checked; ManifestInvalid if it is not one."""
    document = _load(data)
    media_type = _media_type(document, content_type)
    if media_type in IMAGE_TYPES:
        _require_schema_version_2(document, media_type)
        _forbid(document, media_type, "manifests")
        if "config" not in document or not isinstance(document.get("layers"), list):
            _fail(f"a {media_type} needs a config descriptor and a layers list")
    elif media_type in INDEX_TYPES:
        _require_schema_version_2(document, media_type)
        _forbid(document, media_type, "config", "layers")
        if not isinstance(document.get("manifests"), list):
            _fail(f"a {media_type} needs a manifests list")
    if "artifactType" in document:
        _check_media_type(document["artifactType"], "artifactType")
    _check_annotations(document, "manifest")

    blobs: list[Digest] = []
    if "config" in document:
        blobs.append(_descriptor(document["config"], "config"))
    for i, layer in enumerate(_list(document, "layers")):
        digest = _descriptor(layer, f"layers[{i}]")
        if not layer.get("urls"):  # foreign layers live elsewhere and are never pushed
            blobs.append(digest)
    manifests = [_index_entry(entry, f"manifests[{i}]") for i, entry in enumerate(_list(document, "manifests"))]
    subject = _descriptor(document["subject"], "subject") if "subject" in document else None
    return ParsedManifest(document, media_type, blobs, manifests, subject)


def _fail(message: str, field: str | None = None) -> NoReturn:
    raise ManifestInvalid(message, {"field": field} if field else None)


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def _load(data: bytes) -> dict[str, Any]:
    try:
        document = json.loads(data, parse_constant=_refuse_constant)
    except RecursionError:
        _fail(f"manifest is nested more than {MAX_DEPTH} levels deep")
    except ValueError as exc:  # UnicodeDecodeError included
        _fail(f"manifest is not JSON: {exc}")
    if not isinstance(document, dict):
        _fail("manifest is not a JSON object")
    if _deeper_than(document, MAX_DEPTH):
        _fail(f"manifest is nested more than {MAX_DEPTH} levels deep")
    return document


def _deeper_than(document: dict[str, Any], limit: int) -> bool:
    """Whether objects and arrays nest more than `limit` levels, found without recursion."""
    pending: list[tuple[Any, int]] = [(document, 1)]
    while pending:
        node, depth = pending.pop()
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, (dict, list)):
                if depth == limit:
                    return True
                pending.append((child, depth + 1))
    return False


def _media_type(document: dict[str, Any], content_type: str | None) -> str:
    """The manifest's media type: Content-Type unless generic, else mediaType, else inferred."""
    declared = document.get("mediaType")
    if declared is not None:
        _check_media_type(declared, "mediaType")
    header = _media_type_of(content_type)
    if header is not None and header not in GENERIC_CONTENT_TYPES:
        if not is_media_type(header):
            _fail(f"Content-Type {header[:300]!r} is not a media type (expected type/subtype as in RFC 6838)")
        if declared is not None and declared != header:
            raise ManifestInvalid(f"Content-Type {header!r} differs from the manifest's mediaType {declared!r}",
                                  {"contentType": header, "mediaType": declared})
        return header
    if declared is not None:
        return str(declared)
    if "manifests" in document:
        return OCI_INDEX
    if "config" in document:
        return OCI_MANIFEST
    _fail("manifest has no media type: set Content-Type or mediaType")


def _check_media_type(value: Any, field: str) -> None:
    if not is_media_type(value):
        shown = value[:300] if isinstance(value, str) else value
        _fail(f"{field} {shown!r} is not a media type (expected type/subtype as in RFC 6838, at most 255 "
              "characters)", field)


def _require_schema_version_2(document: dict[str, Any], media_type: str) -> None:
    version = document.get("schemaVersion")
    if not isinstance(version, int) or isinstance(version, bool) or version != 2:
        _fail(f"a {media_type} needs schemaVersion 2, not {version!r}", "schemaVersion")


def _forbid(document: dict[str, Any], media_type: str, *fields: str) -> None:
    for field in fields:
        if field in document:
            _fail(f"a {media_type} has no {field} field (is it another kind of manifest?)", field)


def _list(document: dict[str, Any], field: str) -> list[Any]:
    value = document.get(field)
    if value is None:
        return []
    if not isinstance(value, list):
        _fail(f"{field} is not a list", field)
    return value


def _check_annotations(holder: dict[str, Any], where: str) -> None:
    annotations = holder.get("annotations")
    if annotations is None:
        return
    if not isinstance(annotations, dict) or not all(isinstance(v, str) for v in annotations.values()):
        _fail(f"the annotations of {where} are not a map of strings to strings", f"{where}.annotations")


def _descriptor(descriptor: Any, field: str) -> Digest:
    """The digest of a well-formed descriptor; ManifestInvalid naming the field otherwise."""
    if not isinstance(descriptor, dict):
        _fail(f"{field} is not a descriptor object", field)
    _check_media_type(descriptor.get("mediaType"), f"{field}.mediaType")
    size = descriptor.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_SIZE:
        _fail(f"{field} has no valid size (expected an integer from 0 to {MAX_SIZE})", field)
    urls = descriptor.get("urls")
    if urls is not None and not (isinstance(urls, list) and all(isinstance(url, str) for url in urls)):
        _fail(f"{field}.urls is not a list of strings", field)
    if "artifactType" in descriptor:
        _check_media_type(descriptor["artifactType"], f"{field}.artifactType")
    _check_annotations(descriptor, field)
    digest = descriptor.get("digest")
    try:
        return Digest.parse(digest if isinstance(digest, str) else "")
    except DigestError as exc:
        _fail(f"{field}.digest {str(digest)[:200]!r} {exc.reason}", field)


def _index_entry(entry: Any, field: str) -> Digest:
    digest = _descriptor(entry, field)
    platform = entry.get("platform")
    if platform is not None and not (isinstance(platform, dict) and isinstance(platform.get("os"), str)
                                     and isinstance(platform.get("architecture"), str)):
        _fail(f"{field}.platform is not an object naming os and architecture", field)
    return digest
