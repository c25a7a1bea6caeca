"""Names and references from the path: the spec's grammar, traversal attempts, and the push policy.
Every rejected request leaves the store unchanged."""
from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from yarl import URL

from pullcache.config import Config, build_config
from tests.registry_api import OCI_MANIFEST, error_code, push_image, sha256, store_snapshot

pytest_plugins = ["tests.registry_api"]


@pytest.fixture
def registry_config(storage: dict[str, Any]) -> Config:
    """An upstream named docker.io exists, so names under it are proxied and read-only."""
    return build_config({
        "storage": storage,
        "upstreams": [{"name": "docker.io", "url": "http://127.0.0.1:9", "default": False}],
        "local": {"anonymous_push": True},
    })


def raw(registry: TestClient, path: str) -> URL:
    """A URL sent exactly as written: no client-side normalisation of `..` or percent-escapes."""
    return URL(str(registry.make_url("/")).rstrip("/") + path, encoded=True)


BAD_NAMES = [
    "/v2/team/../app/manifests/v1",
    "/v2/team/%2e%2e/app/manifests/v1",
    "/v2/team%2fapp/manifests/v1",
    "/v2/team%2Fapp/manifests/v1",
    "/v2//etc/manifests/v1",
    "/v2/team//app/manifests/v1",
    "/v2/Team/App/manifests/v1",
    "/v2/team/app./manifests/v1",
    "/v2/-team/manifests/v1",
    "/v2/team/app%00/manifests/v1",
    "/v2/" + "a" * 256 + "/manifests/v1",
]


@pytest.mark.parametrize("path", BAD_NAMES)
async def test_names_outside_the_grammar_are_name_invalid(registry: TestClient, registry_config: Config,
                                                          path: str) -> None:
    await push_image(registry, "team/app")
    before = await store_snapshot(registry)
    for method in ("GET", "PUT", "DELETE"):
        response = await registry.session.request(method, raw(registry, path), data=b"{}",
                                                  headers={"Content-Type": OCI_MANIFEST})
        assert response.status == 400, (method, path, await response.text())
        assert await error_code(response) == "NAME_INVALID"
    assert await store_snapshot(registry) == before


@pytest.mark.parametrize("path", [
    "/v2/team/app/manifests/..%2f..%2f..%2fetc%2fpasswd",
    "/v2/team/app/manifests/%2e%2e",
    "/v2/team/app/blobs/sha256:..%2f..%2findex.sqlite",
    "/v2/team/app/blobs/..%2f..%2findex.sqlite",
    "/v2/team/app/referrers/..%2fx",
])
async def test_traversal_in_references_is_rejected(registry: TestClient, registry_config: Config,
                                                   path: str) -> None:
    await push_image(registry, "team/app")
    before = await store_snapshot(registry)
    for method in ("GET", "PUT", "DELETE"):
        response = await registry.session.request(method, raw(registry, path), data=b"{}")
        assert 400 <= response.status < 500 and response.status != 401, (method, path)
        assert response.status != 200
    assert await store_snapshot(registry) == before


async def test_upload_id_traversal_is_an_unknown_upload(registry: TestClient) -> None:
    response = await registry.session.patch(raw(registry, "/v2/team/app/blobs/uploads/..%2f..%2ftmp"), data=b"x")
    assert response.status == 404
    assert await error_code(response) == "BLOB_UPLOAD_UNKNOWN"


async def test_longest_valid_name_works(registry: TestClient) -> None:
    name = "/".join(["a" * 63] * 4)  # 255 characters
    assert len(name) == 255
    image = await push_image(registry, name)
    assert (await registry.get(f"/v2/{name}/manifests/{image.digest}")).status == 200


# ------------------------------------------------------------------ push policy


@pytest.mark.parametrize("name", ["docker.io/library/alpine", "library/alpine", "alpine"])
async def test_pushes_to_upstream_or_denied_names_are_denied(registry: TestClient, registry_config: Config,
                                                             name: str) -> None:
    before = await store_snapshot(registry)
    requests = [
        ("POST", f"/v2/{name}/blobs/uploads/"),
        ("PUT", f"/v2/{name}/manifests/v1"),
        ("DELETE", f"/v2/{name}/manifests/v1"),
        ("DELETE", f"/v2/{name}/blobs/{sha256(b'x')}"),
    ]
    for method, path in requests:
        response = await registry.request(method, path, data=b"{}")
        assert response.status == 403, (method, path)
        assert await error_code(response) == "DENIED"
    assert await store_snapshot(registry) == before


async def test_push_with_ns_is_denied(registry: TestClient) -> None:
    response = await registry.post("/v2/team/app/blobs/uploads/", params={"ns": "docker.io"})
    assert response.status == 403
    assert await error_code(response) == "DENIED"


async def test_an_ns_naming_no_configured_upstream_is_name_unknown(registry: TestClient) -> None:
    response = await registry.get("/v2/library/alpine/manifests/latest", params={"ns": "evil.example.com"})
    assert response.status == 404
    assert await error_code(response) == "NAME_UNKNOWN"
