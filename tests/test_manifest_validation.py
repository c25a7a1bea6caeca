"""What a pushed manifest must be: a JSON object of bounded depth whose media type (Content-Type or
`mediaType`) is an RFC 6838 type/subtype, with the structure its type requires (schemaVersion 2,
config and layers, or manifests; descriptors with a media type, a digest and a size). Anything else is
400 MANIFEST_INVALID and leaves the store as it was; what was accepted before still is. On both backends
(registry_api's `registry`)."""
from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from pullcache.config import Config
from pullcache.mediatypes import is_media_type
from tests.registry_api import (
    DOCKER_CONFIG,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    EMPTY_JSON,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    descriptor,
    error_code,
    image_manifest,
    manifest_bytes,
    push_blob,
    push_manifest,
    store_snapshot,
)

pytest_plugins = ["tests.registry_api"]

NAME = "team/app"
CONFIG = b'{"architecture":"amd64","os":"linux"}'
LAYER = b"layer bytes" * 50
OCTET_STREAM = "application/octet-stream"


@pytest.fixture
async def pushed(registry: TestClient) -> TestClient:
    """A registry holding CONFIG and LAYER in NAME, so only the manifest itself can be wrong."""
    await push_blob(registry, NAME, CONFIG)
    await push_blob(registry, NAME, LAYER)
    return registry


def good_manifest(**changes: Any) -> dict[str, Any]:
    document = json.loads(image_manifest(CONFIG, [LAYER]))
    document.update(changes)
    return {key: value for key, value in document.items() if value is not None}


def with_layer(**changes: Any) -> dict[str, Any]:
    document = good_manifest()
    document["layers"][0].update(changes)
    return document


async def assert_refused(registry: TestClient, config: Config, data: bytes | dict[str, Any], *,
                         content_type: str = OCI_MANIFEST, reference: str = "v1") -> str:
    """PUT is 400 MANIFEST_INVALID and the store is byte-for-byte what it was; returns the message."""
    body = manifest_bytes(data) if isinstance(data, dict) else data
    before = await store_snapshot(registry)
    response = await registry.put(f"/v2/{NAME}/manifests/{reference}", data=body,
                                  headers={"Content-Type": content_type})
    assert response.status == 400, await response.text()
    assert await error_code(response) == "MANIFEST_INVALID"
    assert await store_snapshot(registry) == before
    return (await response.json())["errors"][0]["message"]


# ------------------------------------------------------------------ media types

@pytest.mark.parametrize("media_type", [
    OCI_MANIFEST + "\r\nX-Injected: yes", OCI_MANIFEST + "\n", "application/vnd.oci\x00.manifest",
    "application/" + "x" * 128, "t" * 128 + "/json", "not-a-media-type", "application/", "/json", "application/x/y",
    "application/vnd oci", OCI_MANIFEST + "; charset=utf-8", "(application)/json", "",
])
async def test_invalid_media_type_in_the_body_is_refused(pushed: TestClient, registry_config: Config,
                                                         media_type: str) -> None:
    await assert_refused(pushed, registry_config, good_manifest(mediaType=media_type), content_type=OCTET_STREAM)
    assert (await pushed.get(f"/v2/{NAME}/manifests/v1")).status == 404


@pytest.mark.parametrize("content_type", ["not-a-media-type", "application/" + "x" * 250, "application/x/y",
                                          "text/(plain)"])
async def test_invalid_content_type_is_refused(pushed: TestClient, registry_config: Config,
                                               content_type: str) -> None:
    await assert_refused(pushed, registry_config, good_manifest(mediaType=None), content_type=content_type)


async def test_media_type_of_255_characters_is_accepted(pushed: TestClient) -> None:
    """RFC 6838 allows 127 characters on each side of the slash."""
    long_type = "t" * 127 + "/vnd." + "x" * (127 - len("vnd.+json")) + "+json"
    assert len(long_type) == 255
    document = good_manifest(mediaType=long_type)
    await push_manifest(pushed, NAME, "long", manifest_bytes(document), long_type)
    pulled = await pushed.get(f"/v2/{NAME}/manifests/long")
    assert (pulled.status, pulled.headers["Content-Type"]) == (200, long_type)


@pytest.mark.parametrize("media_type", ["bad type", "application/" + "y" * 250, "", 7, None])
async def test_invalid_descriptor_media_type_is_refused(pushed: TestClient, registry_config: Config,
                                                        media_type: Any) -> None:
    await assert_refused(pushed, registry_config, with_layer(mediaType=media_type))


@pytest.mark.parametrize("artifact_type", ["not a type", 3, ""])
async def test_invalid_artifact_type_is_refused(pushed: TestClient, registry_config: Config,
                                                artifact_type: Any) -> None:
    await assert_refused(pushed, registry_config, good_manifest(artifactType=artifact_type))


@pytest.mark.parametrize("media_type", [OCI_MANIFEST, DOCKER_LIST, EMPTY_JSON, "text/plain",
                                        "application/vnd.in-toto+json", "application/vnd.cncf.helm.config.v1+json",
                                        "application/x.a!b#c$d&e^f_g-h"])
def test_media_types_clients_use_are_valid(media_type: str) -> None:
    assert is_media_type(media_type)


# ------------------------------------------------------------------ structure

async def test_json_extensions_nan_and_infinity_are_not_json(pushed: TestClient, registry_config: Config) -> None:
    for constant in (b"NaN", b"Infinity", b"-Infinity"):
        body = manifest_bytes(good_manifest())[:-1] + b', "extension": ' + constant + b"}"
        assert "not JSON" in await assert_refused(pushed, registry_config, body)


@pytest.mark.parametrize("version", [None, "2", 3, 2.5, True])
async def test_schema_version_must_be_2(pushed: TestClient, registry_config: Config, version: Any) -> None:
    message = await assert_refused(pushed, registry_config, good_manifest(schemaVersion=version))
    assert "schemaVersion" in message


@pytest.mark.parametrize("change", [{"size": True}, {"size": 1.5}, {"size": 2 ** 63}, {"size": None},
                                    {"digest": None}, {"digest": 42}, {"urls": "https://example.invalid/x"},
                                    {"urls": [1]}, {"annotations": {"a": 1}}, {"annotations": ["a"]}])
async def test_malformed_layer_descriptor_is_refused(pushed: TestClient, registry_config: Config,
                                                     change: dict[str, Any]) -> None:
    document = good_manifest()
    layer = document["layers"][0]
    layer.update(change)
    document["layers"][0] = {key: value for key, value in layer.items() if value is not None}
    message = await assert_refused(pushed, registry_config, document)
    assert "layers[0]" in message


@pytest.mark.parametrize("config", [None, "sha256:abc", [], {"mediaType": OCI_CONFIG, "size": 2}])
async def test_missing_or_malformed_config_is_refused(pushed: TestClient, registry_config: Config,
                                                      config: Any) -> None:
    await assert_refused(pushed, registry_config, good_manifest(config=config))


@pytest.mark.parametrize("annotations", [{"key": 1}, {"key": None}, ["key"], "key=value"])
async def test_annotations_must_map_strings_to_strings(pushed: TestClient, registry_config: Config,
                                                       annotations: Any) -> None:
    await assert_refused(pushed, registry_config, good_manifest(annotations=annotations))


async def test_a_manifest_with_a_manifests_list_is_refused(pushed: TestClient, registry_config: Config) -> None:
    await assert_refused(pushed, registry_config, good_manifest(manifests=[]))


async def test_docker_manifest_needs_its_structure_too(pushed: TestClient, registry_config: Config) -> None:
    document = json.loads(image_manifest(CONFIG, [LAYER], media_type=DOCKER_MANIFEST, config_type=DOCKER_CONFIG))
    del document["layers"]
    await assert_refused(pushed, registry_config, document, content_type=DOCKER_MANIFEST)


async def image_index(registry: TestClient, media_type: str = OCI_INDEX, **changes: Any) -> dict[str, Any]:
    digest = await push_manifest(registry, NAME, "base", image_manifest(CONFIG, [LAYER]), OCI_MANIFEST)
    entry = {**descriptor(OCI_MANIFEST, image_manifest(CONFIG, [LAYER])),
             "platform": {"os": "linux", "architecture": "amd64"}}
    assert entry["digest"] == digest
    document = {"schemaVersion": 2, "mediaType": media_type, "manifests": [entry], **changes}
    return {key: value for key, value in document.items() if value is not None}


@pytest.mark.parametrize("change", [{"manifests": None}, {"manifests": {}}, {"config": descriptor(OCI_CONFIG, CONFIG)},
                                    {"layers": []}, {"schemaVersion": 1}])
async def test_malformed_index_is_refused(pushed: TestClient, registry_config: Config,
                                          change: dict[str, Any]) -> None:
    document = await image_index(pushed, **change)
    await assert_refused(pushed, registry_config, document, content_type=OCI_INDEX, reference="multi")


@pytest.mark.parametrize("platform", ["linux/amd64", {"os": "linux"}, {"os": "linux", "architecture": 64}])
async def test_malformed_platform_is_refused(pushed: TestClient, registry_config: Config, platform: Any) -> None:
    document = await image_index(pushed, DOCKER_LIST)
    document["manifests"][0]["platform"] = platform
    await assert_refused(pushed, registry_config, document, content_type=DOCKER_LIST, reference="multi")


async def test_malformed_subject_is_refused(pushed: TestClient, registry_config: Config) -> None:
    await assert_refused(pushed, registry_config, good_manifest(subject={"digest": "sha256:short", "size": 1,
                                                                         "mediaType": OCI_MANIFEST}))


# ------------------------------------------------------------------ depth

@pytest.mark.parametrize("depth", [1000, 100_000])  # in the event loop (< 64 KiB) and in a thread
async def test_deeply_nested_json_is_manifest_invalid(pushed: TestClient, registry_config: Config,
                                                      depth: int) -> None:
    message = await assert_refused(pushed, registry_config, b"[" * depth)
    assert "deep" in message


async def test_a_well_formed_manifest_nested_too_deep_is_refused(pushed: TestClient,
                                                                 registry_config: Config) -> None:
    """Parsed without a RecursionError, yet deep enough that reading it again could hit one."""
    nested: Any = "bottom"
    for _ in range(500):
        nested = {"x": nested}
    await assert_refused(pushed, registry_config, good_manifest(extension=nested))


async def test_ordinary_nesting_is_accepted(pushed: TestClient) -> None:
    nested: Any = "bottom"
    for _ in range(20):
        nested = [nested]
    await push_manifest(pushed, NAME, "nested", manifest_bytes(good_manifest(extension=nested)), OCI_MANIFEST)


# ------------------------------------------------------------------ still accepted

async def test_artifact_with_empty_config_artifact_type_and_subject_is_accepted(pushed: TestClient) -> None:
    subject = await push_manifest(pushed, NAME, "v1", image_manifest(CONFIG, [LAYER]), OCI_MANIFEST)
    await push_blob(pushed, NAME, b"{}")
    artifact = manifest_bytes({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/vnd.example.sbom+json",
        "config": {"mediaType": EMPTY_JSON, "digest": descriptor(EMPTY_JSON, b"{}")["digest"], "size": 2,
                   "data": "e30="},
        "layers": [descriptor("application/vnd.example.sbom.layer+json", LAYER, annotations={"a": "b"})],
        "subject": descriptor(OCI_MANIFEST, image_manifest(CONFIG, [LAYER])),
        "annotations": {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"}})
    response = await pushed.put(f"/v2/{NAME}/manifests/sbom", data=artifact, headers={"Content-Type": OCI_MANIFEST})
    assert response.status == 201, await response.text()
    assert response.headers["OCI-Subject"] == subject


async def test_docker_list_and_unknown_fields_are_accepted(pushed: TestClient) -> None:
    document = await image_index(pushed, DOCKER_LIST, annotations={"k": "v"}, extra={"any": ["thing", 1]})
    document["manifests"][0]["platform"].update({"variant": "v8", "os.features": ["x"]})
    await push_manifest(pushed, NAME, "multi", manifest_bytes(document), DOCKER_LIST)
