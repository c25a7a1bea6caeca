"""The media types and limits of registry content, in one place for api/, upstream/ and warm.

Pure constants and the media type grammar: no HTTP, no disk, so every layer may import them.
"""
from __future__ import annotations

import re

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
SCHEMA1_TYPES = frozenset({"application/vnd.docker.distribution.manifest.v1+json",
                           "application/vnd.docker.distribution.manifest.v1+prettyjws"})

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
IMAGE_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
# Asked of an upstream for every manifest, so whatever is cached can serve every kind of client.
MANIFEST_TYPES = (OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST)

OCTET_STREAM = "application/octet-stream"  # how blobs go out: their bytes, whatever they hold

MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # what CNCF Distribution accepts; anything larger is not a manifest

# RFC 6838 section 4.2: type "/" subtype, each a letter or digit then up to 126 of these (255 in all).
_RESTRICTED_NAME = r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
_MEDIA_TYPE = re.compile(f"{_RESTRICTED_NAME}/{_RESTRICTED_NAME}")


def is_media_type(value: object) -> bool:
    """Whether value is a bare media type (no parameters, no whitespace or control characters), and so
    safe to send back as a Content-Type."""
    return isinstance(value, str) and _MEDIA_TYPE.fullmatch(value) is not None
