"""The media types and limits of registry content, in one place for api/, upstream/ and warm.

Pure constants: no HTTP, no disk, so every layer may import them.
"""
from __future__ import annotations

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
