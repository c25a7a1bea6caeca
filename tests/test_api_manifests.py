"""Manifests of local repositories: push by tag and digest, pull with content negotiation, validation
errors (each leaves the store unchanged), deletion by digest and by tag."""
from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from pullcache.config import Config, build_config
from tests.registry_api import (
    DOCKER_CONFIG,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    descriptor,
    error_code,
    image_manifest,
    manifest_bytes,
    push_blob,
    push_image,
    push_manifest,
    sha256,
    sha512,
    store_snapshot,
)

pytest_plugins = ["tests.registry_api"]


@pytest.fixture
def registry_config(storage: dict[str, Any]) -> Config:
    """Every name is local and anyone may push: these tests are about manifests, not who pushes them."""
    return build_config({"storage": storage, "local": {"anonymous_push": True}})

CONFIG = b'{"architecture":"amd64","os":"linux"}'
LAYER = b"layer bytes" * 50


async def push_parts(registry: TestClient, name: str = "team/app") -> bytes:
    """Config and layer pushed; returns the OCI manifest naming them."""
    await push_blob(registry, name, CONFIG)
    await push_blob(registry, name, LAYER)
    return image_manifest(CONFIG, [LAYER])


# ------------------------------------------------------------------ push and pull

async def test_put_by_tag_then_get_returns_exact_bytes_and_type(registry: TestClient) -> None:
    manifest = await push_parts(registry)
    response = await registry.put("/v2/team/app/manifests/v1", data=manifest,
                                  headers={"Content-Type": OCI_MANIFEST})
    assert response.status == 201
    assert response.headers["Docker-Content-Digest"] == sha256(manifest)
    assert response.headers["Location"] == f"/v2/team/app/manifests/{sha256(manifest)}"
    pulled = await registry.get("/v2/team/app/manifests/v1", headers={"Accept": OCI_MANIFEST})
    assert pulled.status == 200
    assert await pulled.read() == manifest
    assert pulled.headers["Content-Type"] == OCI_MANIFEST
    assert pulled.headers["Docker-Content-Digest"] == sha256(manifest)


async def test_get_by_digest_and_head_by_tag_and_digest(registry: TestClient) -> None:
    image = await push_image(registry, "team/app")
    by_digest = await registry.get(f"/v2/team/app/manifests/{image.digest}", headers={"Accept": OCI_MANIFEST})
    assert await by_digest.read() == image.manifest
    for reference in ("v1", image.digest):
        head = await registry.head(f"/v2/team/app/manifests/{reference}", headers={"Accept": OCI_MANIFEST})
        assert head.status == 200
        assert head.headers["Content-Length"] == str(len(image.manifest))
        assert head.headers["Docker-Content-Digest"] == image.digest
        assert head.headers["Content-Type"] == OCI_MANIFEST
        assert await head.read() == b""


async def test_put_by_digest(registry: TestClient) -> None:
    manifest = await push_parts(registry)
    response = await registry.put(f"/v2/team/app/manifests/{sha256(manifest)}", data=manifest,
                                  headers={"Content-Type": OCI_MANIFEST})
    assert response.status == 201
    assert (await registry.get(f"/v2/team/app/manifests/{sha256(manifest)}")).status == 200
    tags = await (await registry.get("/v2/team/app/tags/list")).json()
    assert tags["tags"] == []


async def test_put_by_sha512_digest(registry: TestClient) -> None:
    manifest = await push_parts(registry)
    response = await registry.put(f"/v2/team/app/manifests/{sha512(manifest)}", data=manifest,
                                  headers={"Content-Type": OCI_MANIFEST})
    assert response.status == 201
    assert response.headers["Docker-Content-Digest"] == sha512(manifest)
    pulled = await registry.get(f"/v2/team/app/manifests/{sha512(manifest)}")
    assert await pulled.read() == manifest


async def test_retagging_moves_the_tag(registry: TestClient) -> None:
    first = await push_image(registry, "team/app", "latest", seed="one")
    second = await push_image(registry, "team/app", "latest", seed="two")
    pulled = await registry.get("/v2/team/app/manifests/latest")
    assert pulled.headers["Docker-Content-Digest"] == second.digest != first.digest
    assert (await registry.get(f"/v2/team/app/manifests/{first.digest}")).status == 200


async def test_media_type_falls_back_to_the_manifest_field(registry: TestClient) -> None:
    manifest = await push_parts(registry)
    response = await registry.put("/v2/team/app/manifests/v1", data=manifest,
                                  headers={"Content-Type": "application/octet-stream"})
    assert response.status == 201
    pulled = await registry.get("/v2/team/app/manifests/v1")
    assert pulled.headers["Content-Type"] == OCI_MANIFEST


async def test_index_of_pushed_manifests(registry: TestClient) -> None:
    amd = await push_image(registry, "team/app", "amd64", seed="amd")
    arm = await push_image(registry, "team/app", "arm64", seed="arm")
    index = manifest_bytes({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        descriptor(OCI_MANIFEST, amd.manifest, platform={"os": "linux", "architecture": "amd64"}),
        descriptor(OCI_MANIFEST, arm.manifest, platform={"os": "linux", "architecture": "arm64"}),
    ]})
    digest = await push_manifest(registry, "team/app", "multi", index, OCI_INDEX)
    pulled = await registry.get("/v2/team/app/manifests/multi", headers={"Accept": OCI_INDEX})
    assert (await pulled.read(), pulled.headers["Content-Type"]) == (index, OCI_INDEX)
    assert pulled.headers["Docker-Content-Digest"] == digest


# ------------------------------------------------------------------ negotiation

async def push_docker_list(registry: TestClient) -> tuple[bytes, str]:
    amd = await push_image(registry, "team/app", "amd64", seed="amd", media_type=DOCKER_MANIFEST)
    arm = await push_image(registry, "team/app", "arm64", seed="arm", media_type=DOCKER_MANIFEST)
    listing = manifest_bytes({"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": [
        descriptor(DOCKER_MANIFEST, arm.manifest, platform={"os": "linux", "architecture": "arm64"}),
        descriptor(DOCKER_MANIFEST, amd.manifest, platform={"os": "linux", "architecture": "amd64"}),
    ]})
    await push_manifest(registry, "team/app", "multi", listing, DOCKER_LIST)
    return listing, amd.digest


async def test_accept_listing_several_types_gets_the_stored_one(registry: TestClient) -> None:
    listing, _ = await push_docker_list(registry)
    response = await registry.get("/v2/team/app/manifests/multi", headers={
        "Accept": f"{OCI_MANIFEST}, {DOCKER_MANIFEST}, {DOCKER_LIST};q=0.9"})
    assert await response.read() == listing
    assert response.headers["Content-Type"] == DOCKER_LIST


async def test_no_accept_or_wildcard_gets_the_stored_manifest(registry: TestClient) -> None:
    listing, _ = await push_docker_list(registry)
    for headers in ({}, {"Accept": "*/*"}, {"Accept": "application/json"}):
        response = await registry.get("/v2/team/app/manifests/multi", headers=headers)
        assert await response.read() == listing, headers


async def test_list_not_accepted_by_tag_gets_the_linux_amd64_manifest(registry: TestClient) -> None:
    _, amd64_digest = await push_docker_list(registry)
    response = await registry.get("/v2/team/app/manifests/multi", headers={"Accept": DOCKER_MANIFEST})
    assert response.status == 200
    assert response.headers["Content-Type"] == DOCKER_MANIFEST
    assert response.headers["Docker-Content-Digest"] == amd64_digest


async def test_manifest_type_not_accepted_by_tag_is_manifest_unknown(registry: TestClient) -> None:
    await push_image(registry, "team/app", "v1", media_type=OCI_MANIFEST)
    response = await registry.get("/v2/team/app/manifests/v1", headers={"Accept": DOCKER_MANIFEST})
    assert response.status == 404
    assert await error_code(response) == "MANIFEST_UNKNOWN"


async def test_q_zero_excludes_a_type(registry: TestClient) -> None:
    await push_image(registry, "team/app", "v1", media_type=OCI_MANIFEST)
    response = await registry.get("/v2/team/app/manifests/v1", headers={"Accept": f"{OCI_MANIFEST};q=0"})
    assert response.status == 404


async def test_by_digest_the_stored_manifest_is_always_served(registry: TestClient) -> None:
    listing, _ = await push_docker_list(registry)
    response = await registry.get(f"/v2/team/app/manifests/{sha256(listing)}",
                                  headers={"Accept": DOCKER_MANIFEST})
    assert (response.status, await response.read()) == (200, listing)


# ------------------------------------------------------------------ not found

async def test_unknown_tag_and_digest_are_404_manifest_unknown(registry: TestClient) -> None:
    await push_image(registry, "team/app")
    for reference in ("nope", sha256(b"nothing")):
        for method in ("GET", "HEAD"):
            response = await registry.request(method, f"/v2/team/app/manifests/{reference}")
            assert response.status == 404, (method, reference)
        assert await error_code(await registry.get(f"/v2/team/app/manifests/{reference}")) == "MANIFEST_UNKNOWN"


async def test_manifest_of_another_repository_is_unknown(registry: TestClient) -> None:
    image = await push_image(registry, "team/app")
    await push_image(registry, "team/other", seed="other")
    assert (await registry.get(f"/v2/team/other/manifests/{image.digest}")).status == 404


async def test_malformed_digest_reference_is_400_with_a_spec_code(registry: TestClient) -> None:
    response = await registry.get("/v2/team/app/manifests/sha256:totallywrong")
    assert response.status == 400
    assert await error_code(response) == "DIGEST_INVALID"


NOT_A_TAG = ("-leading-dash", ".INVALID_MANIFEST_NAME", "x" * 129)


async def test_get_and_head_of_a_reference_outside_the_tag_grammar_are_manifest_unknown(registry: TestClient) -> None:
    """No manifest can have such a name: 404 MANIFEST_UNKNOWN, as the conformance suite expects and zot answers."""
    await push_image(registry, "team/app")
    for bad in NOT_A_TAG:
        for method in ("GET", "HEAD"):
            response = await registry.request(method, f"/v2/team/app/manifests/{bad}")
            assert response.status == 404, (method, bad)
        assert await error_code(await registry.get(f"/v2/team/app/manifests/{bad}")) == "MANIFEST_UNKNOWN"


async def test_put_to_a_reference_outside_the_tag_grammar_is_tag_invalid(registry: TestClient,
                                                                         registry_config: Config) -> None:
    manifest = await push_parts(registry)
    for bad in NOT_A_TAG:
        await assert_rejected(registry, registry_config, manifest, "TAG_INVALID", reference=bad)


async def test_delete_of_a_reference_outside_the_tag_grammar_is_manifest_unknown(registry: TestClient,
                                                                                 registry_config: Config) -> None:
    await push_image(registry, "team/app")
    before = await store_snapshot(registry)
    for bad in NOT_A_TAG:
        response = await registry.delete(f"/v2/team/app/manifests/{bad}")
        assert response.status == 404, bad
        assert await error_code(response) == "MANIFEST_UNKNOWN"
    assert await store_snapshot(registry) == before


async def test_delete_of_a_malformed_digest_is_400_digest_invalid(registry: TestClient) -> None:
    response = await registry.delete("/v2/team/app/manifests/sha256:totallywrong")
    assert response.status == 400
    assert await error_code(response) == "DIGEST_INVALID"


# ------------------------------------------------------------------ validation

async def assert_rejected(registry: TestClient, config: Config, data: bytes, code: str, *, status: int = 400,
                          reference: str = "v1", content_type: str = OCI_MANIFEST) -> None:
    before = await store_snapshot(registry)
    response = await registry.put(f"/v2/team/app/manifests/{reference}", data=data,
                                  headers={"Content-Type": content_type})
    assert response.status == status, await response.text()
    assert await error_code(response) == code
    assert await store_snapshot(registry) == before


async def test_not_json_is_manifest_invalid(registry: TestClient, registry_config: Config) -> None:
    await push_parts(registry)
    await assert_rejected(registry, registry_config, b"{not json", "MANIFEST_INVALID")
    await assert_rejected(registry, registry_config, b'["a list"]', "MANIFEST_INVALID")
    await assert_rejected(registry, registry_config, b"\xff\xfe", "MANIFEST_INVALID")


async def test_over_4_mib_is_413(registry: TestClient, registry_config: Config) -> None:
    await push_parts(registry)
    padding = "x" * (4 * 1024 * 1024)
    big = image_manifest(CONFIG, [LAYER], annotations={"pad": padding})
    await assert_rejected(registry, registry_config, big, "MANIFEST_INVALID", status=413)


async def test_just_under_4_mib_is_accepted(registry: TestClient) -> None:
    manifest = await push_parts(registry)
    padding = "x" * (4 * 1024 * 1024 - len(manifest) - 100)
    big = image_manifest(CONFIG, [LAYER], annotations={"pad": padding})
    assert len(big) <= 4 * 1024 * 1024
    await push_manifest(registry, "team/app", "big", big, OCI_MANIFEST)


async def test_unknown_layer_is_manifest_blob_unknown(registry: TestClient, registry_config: Config) -> None:
    await push_parts(registry)
    manifest = image_manifest(CONFIG, [LAYER, b"never pushed"])
    await assert_rejected(registry, registry_config, manifest, "MANIFEST_BLOB_UNKNOWN")


async def test_unknown_config_is_manifest_blob_unknown(registry: TestClient, registry_config: Config) -> None:
    await push_blob(registry, "team/app", LAYER)
    await assert_rejected(registry, registry_config, image_manifest(CONFIG, [LAYER]), "MANIFEST_BLOB_UNKNOWN")


async def test_blobs_the_registry_holds_elsewhere_are_linked_in(registry: TestClient) -> None:
    """A client whose HEAD was answered by another repository's copy skips the upload; the push works."""
    manifest = await push_parts(registry, "team/other")
    await push_manifest(registry, "team/app", "v1", manifest, OCI_MANIFEST)
    pulled = await registry.get(f"/v2/team/app/blobs/{sha256(LAYER)}")
    assert (pulled.status, await pulled.read()) == (200, LAYER)


async def test_nothing_is_linked_when_any_blob_is_missing(registry: TestClient, registry_config: Config) -> None:
    await push_parts(registry, "team/other")
    await assert_rejected(registry, registry_config, image_manifest(CONFIG, [LAYER, b"nowhere"]),
                          "MANIFEST_BLOB_UNKNOWN")
    assert (await registry.get(f"/v2/team/app/blobs/{sha256(LAYER)}")).status == 404


async def test_index_naming_unknown_manifest_is_manifest_blob_unknown(registry: TestClient,
                                                                     registry_config: Config) -> None:
    index = manifest_bytes({"schemaVersion": 2, "mediaType": OCI_INDEX,
                            "manifests": [descriptor(OCI_MANIFEST, b"{}")]})
    await assert_rejected(registry, registry_config, index, "MANIFEST_BLOB_UNKNOWN", content_type=OCI_INDEX)


async def test_put_by_digest_that_does_not_match_is_digest_invalid(registry: TestClient,
                                                                   registry_config: Config) -> None:
    manifest = await push_parts(registry)
    await assert_rejected(registry, registry_config, manifest, "DIGEST_INVALID", reference=sha256(b"other"))


async def test_content_type_disagreeing_with_media_type_is_manifest_invalid(
        registry: TestClient, registry_config: Config) -> None:
    manifest = await push_parts(registry)
    await assert_rejected(registry, registry_config, manifest, "MANIFEST_INVALID", content_type=DOCKER_MANIFEST)


async def test_malformed_descriptors_are_manifest_invalid(registry: TestClient, registry_config: Config) -> None:
    await push_parts(registry)
    good = json.loads(image_manifest(CONFIG, [LAYER]))
    for broken in ({"digest": "sha256:short"}, {"size": -1}, {"size": "12"}, {"mediaType": None}):
        document = json.loads(json.dumps(good))
        document["layers"][0].update(broken)
        await assert_rejected(registry, registry_config, manifest_bytes(document), "MANIFEST_INVALID")
    document = dict(good, layers="not a list")
    await assert_rejected(registry, registry_config, manifest_bytes(document), "MANIFEST_INVALID")
    document = {k: v for k, v in good.items() if k != "config"}
    await assert_rejected(registry, registry_config, manifest_bytes(document), "MANIFEST_INVALID")


async def test_schema1_is_refused(registry: TestClient, registry_config: Config) -> None:
    schema1 = manifest_bytes({"schemaVersion": 1, "name": "team/app", "tag": "v1", "fsLayers": []})
    await assert_rejected(registry, registry_config, schema1, "MANIFEST_INVALID",
                          content_type="application/vnd.docker.distribution.manifest.v1+prettyjws")


async def test_foreign_layers_need_not_be_pushed(registry: TestClient) -> None:
    await push_blob(registry, "team/app", CONFIG)
    foreign = descriptor("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", b"windows base",
                         urls=["https://example.invalid/layer"])
    manifest = manifest_bytes({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
                               "config": descriptor(DOCKER_CONFIG, CONFIG), "layers": [foreign]})
    await push_manifest(registry, "team/app", "win", manifest, DOCKER_MANIFEST)


async def test_manifest_with_no_layers_is_accepted(registry: TestClient) -> None:
    await push_blob(registry, "team/app", CONFIG)
    await push_manifest(registry, "team/app", "empty", image_manifest(CONFIG, []), OCI_MANIFEST)


# ------------------------------------------------------------------ deletion

async def test_delete_by_digest_removes_manifest_and_its_tags(registry: TestClient) -> None:
    image = await push_image(registry, "team/app", "v1")
    await push_manifest(registry, "team/app", "also", image.manifest, OCI_MANIFEST)
    response = await registry.delete(f"/v2/team/app/manifests/{image.digest}")
    assert response.status == 202
    assert response.headers["Docker-Content-Digest"] == image.digest
    for reference in (image.digest, "v1", "also"):
        assert (await registry.get(f"/v2/team/app/manifests/{reference}")).status == 404
    assert (await (await registry.get("/v2/team/app/tags/list")).json())["tags"] == []


async def test_delete_by_tag_removes_only_the_tag(registry: TestClient) -> None:
    image = await push_image(registry, "team/app", "v1")
    await push_manifest(registry, "team/app", "also", image.manifest, OCI_MANIFEST)
    deleted = await registry.delete("/v2/team/app/manifests/v1")
    assert deleted.status == 202
    assert deleted.headers["Docker-Content-Digest"] == image.digest
    assert (await registry.get("/v2/team/app/manifests/v1")).status == 404
    assert (await registry.get("/v2/team/app/manifests/also")).status == 200
    assert (await registry.get(f"/v2/team/app/manifests/{image.digest}")).status == 200


async def test_delete_of_unknown_manifest_or_repository_is_404(registry: TestClient) -> None:
    await push_image(registry, "team/app")
    for path in ("/v2/team/app/manifests/nope", f"/v2/team/app/manifests/{sha256(b'x')}",
                 "/v2/no/such/manifests/v1"):
        response = await registry.delete(path)
        assert response.status == 404, path
        assert await error_code(response) == "MANIFEST_UNKNOWN"
