"""In-process registry for the API tests: `build_app` on a temp store behind aiohttp's test client,
plus small helpers that push blobs, manifests and whole images the way clients do.

Test modules import the fixtures they use (`registry`, `registry_config`) and may override
`registry_config` to change auth or push policy.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from pullcache.api.appkeys import STORE
from pullcache.app import build_app
from pullcache.config import Config, build_config
from tests.support.store_view import store_contents

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
EMPTY_JSON = "application/vnd.oci.empty.v1+json"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha512(data: bytes) -> str:
    return "sha512:" + hashlib.sha512(data).hexdigest()


@pytest.fixture
def storage(storage_backend: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """The `storage` section of an in-process registry, once per backend (conftest's storage_backend): the
    filesystem under tmp_path, or S3 with storage.path holding spool and local cache."""
    return {"path": str(tmp_path / "data"), **storage_backend}


async def blob_files(registry: TestClient) -> set[str]:
    """Digests of every committed blob in the registry's store, listed through the Store."""
    return set(await registry.app[STORE].stored_blobs())


async def store_snapshot(registry: TestClient) -> dict[str, object]:
    """The registry's store as the Store shows it (blobs, temps, repositories with tags, manifests and blob
    links): equal snapshots mean an unchanged store, whatever the backend."""
    return await store_contents(registry.app[STORE])


def descriptor(media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": sha256(data), "size": len(data), **extra}


def manifest_bytes(document: dict[str, Any]) -> bytes:
    return json.dumps(document, indent=2).encode()


def image_manifest(config: bytes, layers: list[bytes], *, media_type: str = OCI_MANIFEST,
                   config_type: str = OCI_CONFIG, layer_type: str = OCI_LAYER, **extra: Any) -> bytes:
    return manifest_bytes({
        "schemaVersion": 2, "mediaType": media_type,
        "config": descriptor(config_type, config),
        "layers": [descriptor(layer_type, layer) for layer in layers], **extra,
    })


async def push_blob(client: TestClient, name: str, data: bytes, **headers: str) -> str:
    """POST then PUT, as most clients do; returns the digest."""
    digest = sha256(data)
    started = await client.post(f"/v2/{name}/blobs/uploads/", headers=headers)
    assert started.status == 202, await started.text()
    done = await client.put(started.headers["Location"], params={"digest": digest}, data=data, headers=headers)
    assert done.status == 201, await done.text()
    return digest


async def push_manifest(client: TestClient, name: str, reference: str, data: bytes, media_type: str,
                        **headers: str) -> str:
    response = await client.put(f"/v2/{name}/manifests/{reference}", data=data,
                                headers={"Content-Type": media_type, **headers})
    assert response.status == 201, await response.text()
    return response.headers["Docker-Content-Digest"]


@dataclass(frozen=True)
class PushedImage:
    name: str
    tag: str
    digest: str
    manifest: bytes
    config: bytes
    layers: list[bytes]


async def push_image(client: TestClient, name: str, tag: str = "v1", *, seed: str = "a",
                     media_type: str = OCI_MANIFEST) -> PushedImage:
    """A one-layer image: its blobs, then its manifest under `tag`."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed}).encode()
    layers = [f"layer of {seed}".encode() * 100]
    for blob in (config, *layers):
        await push_blob(client, name, blob)
    config_type = DOCKER_CONFIG if media_type == DOCKER_MANIFEST else OCI_CONFIG
    manifest = image_manifest(config, layers, media_type=media_type, config_type=config_type)
    digest = await push_manifest(client, name, tag, manifest, media_type)
    return PushedImage(name, tag, digest, manifest, config, layers)


def error_codes(body: dict[str, Any]) -> list[str]:
    return [error["code"] for error in body["errors"]]


async def error_code(response: Any) -> str:
    """The first OCI error code of a JSON error body."""
    return error_codes(await response.json(content_type=None))[0]


@pytest.fixture
def registry_config(storage: dict[str, Any]) -> Config:
    """A registry with no upstreams on each backend: every name is local, and pushes are opted into without
    users (`local.anonymous_push`; tests of push authentication override this fixture)."""
    return build_config({"storage": storage, "local": {"anonymous_push": True}})


@pytest.fixture
async def registry(aiohttp_client: Any, registry_config: Config) -> TestClient:
    return await aiohttp_client(build_app(registry_config))


class SignedIn:
    """A TestClient that sends one user's credentials on every request (what docker does after a login);
    `push_image(SignedIn(client, headers), ...)` pushes as that user."""

    def __init__(self, client: TestClient, headers: dict[str, str]) -> None:
        self._client, self._headers = client, headers

    def __getattr__(self, method: str) -> Any:
        call = getattr(self._client, method)
        return lambda path, **kwargs: call(path, headers={**self._headers, **kwargs.pop("headers", {})}, **kwargs)
