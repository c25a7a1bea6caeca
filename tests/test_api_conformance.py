"""The OCI distribution conformance suite's checks (pull, push, content discovery, content management),
replayed against the in-process registry with the same requests, in the same shapes, as the suite's
Go tests (v1.1.1) send them, and with the statuses they accept. Each test starts from a registry
holding the suite's setup content."""
from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from pullcache.config import Config, build_config
from tests.registry_api import EMPTY_JSON, OCI_CONFIG, OCI_INDEX, OCI_LAYER, OCI_MANIFEST, error_codes, sha256

pytest_plugins = ["tests.registry_api"]

NAME = "conformance/test"
CROSSMOUNT = "conformance/other"
SPEC_CODES = {"BLOB_UNKNOWN", "BLOB_UPLOAD_INVALID", "BLOB_UPLOAD_UNKNOWN", "DIGEST_INVALID",
              "MANIFEST_BLOB_UNKNOWN", "MANIFEST_INVALID", "MANIFEST_UNKNOWN", "NAME_INVALID", "NAME_UNKNOWN",
              "SIZE_INVALID", "UNAUTHORIZED", "DENIED", "UNSUPPORTED", "TOOMANYREQUESTS"}
ARTIFACT_A = "application/vnd.nhl.peanut.butter.bagel"
ARTIFACT_B = "application/vnd.nba.strawberry.jam.croissant"
ARTIFACT_INDEX = "application/vnd.food.stand"
ANNOTATION = "org.opencontainers.conformance.test"
DUMMY_DIGEST = sha256(b"hello world, this blob does not exist")
NONEXISTENT_MANIFEST = ".INVALID_MANIFEST_NAME"  # the suite's name for a manifest that does not exist


@pytest.fixture
def registry_config(storage: dict[str, Any]) -> Config:
    """The suite pushes without credentials (OCI_USERNAME unset)."""
    return build_config({"storage": storage, "local": {"anonymous_push": True}})


def _json(document: Any) -> bytes:
    return json.dumps(document, indent="\t").encode()


def _descriptor(media_type: str, data: bytes) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": sha256(data), "size": len(data)}


@dataclass
class Content:
    """The suite's test data: configs, one layer, manifests naming them, and referrers of manifests[4]."""

    rng: random.Random = field(default_factory=lambda: random.Random(1))

    def __post_init__(self) -> None:
        self.layer = bytes(self.rng.getrandbits(8) for _ in range(2048))
        self.configs = [_json({"architecture": "amd64", "os": "linux", "author": f"conformance {i}",
                               "rootfs": {"type": "layers", "diff_ids": []}}) for i in range(5)]
        self.manifests = [_json({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                                 "config": _descriptor(OCI_CONFIG, config),
                                 "layers": [_descriptor(OCI_LAYER, self.layer)]}) for config in self.configs]
        self.empty_json = b"{}"
        self.blob_a = b"blob A of the streamed and chunked uploads" * 31
        self.blob_b = bytes(self.rng.getrandbits(8) for _ in range(1500))
        self.ref_blob_a = b"NHL Peanut Butter on my NHL bagel"
        self.ref_blob_b = b"NBA Strawberry Jam on my NBA croissant"
        self.ref_blob_c = b"NFL Hot Dog on my NFL bun"
        subject = _descriptor(OCI_MANIFEST, self.manifests[4])
        self.refs_a_config = self._artifact(ARTIFACT_A, None, self.ref_blob_a, subject, "A config")
        self.refs_a_layer = self._artifact(EMPTY_JSON, ARTIFACT_A, self.ref_blob_a, subject, "A layer")
        self.refs_b_config = self._artifact(ARTIFACT_B, None, self.ref_blob_b, subject, "B config")
        self.refs_b_layer = self._artifact(EMPTY_JSON, ARTIFACT_B, self.ref_blob_b, subject, "B layer")
        self.refs_c_layer = self._artifact(EMPTY_JSON, ARTIFACT_A, self.ref_blob_c,
                                           _descriptor(OCI_MANIFEST, self.manifests[3]), "C layer")
        self.refs_index = _json({"schemaVersion": 2, "mediaType": OCI_INDEX, "artifactType": ARTIFACT_INDEX,
                                 "manifests": [_descriptor(OCI_MANIFEST, self.refs_a_config),
                                               _descriptor(OCI_MANIFEST, self.refs_a_layer)],
                                 "subject": subject, "annotations": {ANNOTATION: "index"}})

    def _artifact(self, config_type: str, artifact_type: str | None, layer: bytes, subject: dict[str, Any],
                  note: str) -> bytes:
        document: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_MANIFEST}
        if artifact_type:
            document["artifactType"] = artifact_type
        document.update({"config": {"mediaType": config_type, "digest": sha256(self.empty_json), "size": 2},
                         "layers": [_descriptor("application/octet-stream", layer)], "subject": subject,
                         "annotations": {ANNOTATION: note}})
        return _json(document)


async def post_put(client: TestClient, data: bytes, name: str = NAME) -> int:
    started = await client.post(f"/v2/{name}/blobs/uploads/")
    done = await client.put(started.headers["Location"], params={"digest": sha256(data)}, data=data,
                            headers={"Content-Type": "application/octet-stream"})
    return done.status


async def put_manifest(client: TestClient, reference: str, data: bytes, media_type: str = OCI_MANIFEST) -> Any:
    return await client.put(f"/v2/{NAME}/manifests/{reference}", data=data, headers={"Content-Type": media_type})


@pytest.fixture
def content() -> Content:
    return Content()


@pytest.fixture
async def seeded(registry: TestClient, content: Content) -> TestClient:
    """The setup steps of the suite's pull, discovery and management workflows."""
    for blob in (*content.configs, content.layer, content.empty_json, content.ref_blob_a, content.ref_blob_c):
        assert await post_put(registry, blob) == 201
    assert (await put_manifest(registry, "tagtest0", content.manifests[0])).status == 201
    assert (await put_manifest(registry, sha256(content.manifests[1]), content.manifests[1])).status == 201
    for i in range(4):
        assert (await put_manifest(registry, f"test{i}", content.manifests[2])).status == 201
    for manifest in (content.refs_a_config, content.refs_a_layer):  # before their subject exists
        assert (await put_manifest(registry, sha256(manifest), manifest)).status == 201
    assert (await put_manifest(registry, sha256(content.refs_index), content.refs_index, OCI_INDEX)).status == 201
    assert (await put_manifest(registry, "subject", content.manifests[4])).status == 201
    assert await post_put(registry, content.ref_blob_b) == 201  # after the subject
    for manifest in (content.refs_b_config, content.refs_b_layer, content.refs_c_layer):
        assert (await put_manifest(registry, sha256(manifest), manifest)).status == 201
    return registry


# ====================================================================== pull

async def test_pull_head_nonexistent_blob_is_404(seeded: TestClient) -> None:
    assert (await seeded.head(f"/v2/{NAME}/blobs/{DUMMY_DIGEST}")).status == 404


async def test_pull_head_existing_blob_is_200_with_digest(seeded: TestClient, content: Content) -> None:
    response = await seeded.head(f"/v2/{NAME}/blobs/{sha256(content.configs[0])}")
    assert response.status == 200
    assert response.headers["Docker-Content-Digest"] == sha256(content.configs[0])


async def test_pull_get_nonexistent_blob_is_404(seeded: TestClient) -> None:
    assert (await seeded.get(f"/v2/{NAME}/blobs/{DUMMY_DIGEST}")).status == 404


async def test_pull_get_existing_blob_is_200(seeded: TestClient, content: Content) -> None:
    response = await seeded.get(f"/v2/{NAME}/blobs/{sha256(content.configs[0])}")
    assert (response.status, await response.read()) == (200, content.configs[0])


async def test_pull_head_nonexistent_manifest_is_404(seeded: TestClient) -> None:
    """The suite names the missing manifest with a reference outside the tag grammar and accepts only 404."""
    assert (await seeded.head(f"/v2/{NAME}/manifests/{NONEXISTENT_MANIFEST}")).status == 404
    assert (await seeded.head(f"/v2/{NAME}/manifests/nonexistent")).status == 404


@pytest.mark.parametrize("index", [0, 1])
async def test_pull_head_manifest_by_digest_is_200_with_digest(seeded: TestClient, content: Content,
                                                               index: int) -> None:
    digest = sha256(content.manifests[index])
    response = await seeded.head(f"/v2/{NAME}/manifests/{digest}", headers={"Accept": OCI_MANIFEST})
    assert response.status == 200
    assert response.headers["Docker-Content-Digest"] == digest


async def test_pull_head_manifest_by_tag_is_200_with_digest(seeded: TestClient, content: Content) -> None:
    response = await seeded.head(f"/v2/{NAME}/manifests/tagtest0", headers={"Accept": OCI_MANIFEST})
    assert response.status == 200
    assert response.headers["Docker-Content-Digest"] == sha256(content.manifests[0])


async def test_pull_get_nonexistent_manifest_is_404(seeded: TestClient) -> None:
    response = await seeded.get(f"/v2/{NAME}/manifests/{NONEXISTENT_MANIFEST}")
    assert response.status == 404
    assert error_codes(await response.json()) == ["MANIFEST_UNKNOWN"]
    assert (await seeded.get(f"/v2/{NAME}/manifests/nonexistent")).status == 404


@pytest.mark.parametrize("index", [0, 1])
async def test_pull_get_manifest_by_digest_is_200(seeded: TestClient, content: Content, index: int) -> None:
    response = await seeded.get(f"/v2/{NAME}/manifests/{sha256(content.manifests[index])}",
                                headers={"Accept": OCI_MANIFEST})
    assert (response.status, await response.read()) == (200, content.manifests[index])


async def test_pull_get_manifest_by_tag_is_200(seeded: TestClient, content: Content) -> None:
    response = await seeded.get(f"/v2/{NAME}/manifests/tagtest0", headers={"Accept": OCI_MANIFEST})
    assert (response.status, await response.read()) == (200, content.manifests[0])


async def test_pull_400_body_is_oci_error_json(seeded: TestClient) -> None:
    """The suite accepts 400 with a spec code or 404; a malformed digest is the client's error: 400."""
    response = await seeded.get(f"/v2/{NAME}/manifests/sha256:totallywrong",
                                headers={"Content-Type": OCI_MANIFEST}, data=b"blablabla")
    assert response.status == 400
    codes = error_codes(await response.json())
    assert codes and codes[0] in SPEC_CODES


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_pull_blob_with_a_malformed_digest_is_400_digest_invalid(seeded: TestClient, method: str) -> None:
    """Not among the suite's checks; answered like a malformed manifest digest, which the suite accepts."""
    response = await seeded.request(method, f"/v2/{NAME}/blobs/sha256:totallywrong")
    assert response.status == 400
    if method == "GET":
        assert error_codes(await response.json()) == ["DIGEST_INVALID"]


# ====================================================================== push

async def test_push_streamed_patch_then_put(registry: TestClient, content: Content) -> None:
    started = await registry.post(f"/v2/{NAME}/blobs/uploads/")
    assert started.headers["Location"]
    patched = await registry.patch(started.headers["Location"], data=content.blob_a,
                                   headers={"Content-Type": "application/octet-stream"})
    assert patched.status == 202
    done = await registry.put(patched.headers["Location"], params={"digest": sha256(content.blob_a)},
                              headers={"Content-Type": "application/octet-stream"})
    assert done.status == 201
    assert done.headers["Location"]


async def test_push_monolithic_single_post_then_get(registry: TestClient, content: Content) -> None:
    digest = sha256(content.configs[1])
    posted = await registry.post(f"/v2/{NAME}/blobs/uploads/", params={"digest": digest}, data=content.configs[1],
                                 headers={"Content-Type": "application/octet-stream"})
    assert posted.status in (201, 202)
    assert posted.headers["Location"]
    expected = 200 if posted.status == 201 else 404
    assert (await registry.get(f"/v2/{NAME}/blobs/{digest}")).status == expected


async def test_push_monolithic_post_then_put_then_get(registry: TestClient, content: Content) -> None:
    started = await registry.post(f"/v2/{NAME}/blobs/uploads/")
    assert started.status == 202
    done = await registry.put(started.headers["Location"], params={"digest": sha256(content.layer)},
                              data=content.layer, headers={"Content-Type": "application/octet-stream"})
    assert done.status == 201 and done.headers["Location"]
    assert (await registry.get(f"/v2/{NAME}/blobs/{sha256(content.layer)}")).status == 200


class TestChunkedUpload:
    """The suite's chunked sequence: out of order, first chunk, retry, status, second chunk, close."""

    @staticmethod
    def chunks(content: Content) -> tuple[bytes, str, bytes, str]:
        half = len(content.blob_b) // 2
        first, second = content.blob_b[:half], content.blob_b[half:]
        return first, f"0-{half - 1}", second, f"{half}-{len(content.blob_b) - 1}"

    async def test_out_of_order_chunk_is_416(self, registry: TestClient, content: Content) -> None:
        _, _, second, second_range = self.chunks(content)
        started = await registry.post(f"/v2/{NAME}/blobs/uploads/", headers={"Content-Length": "0"})
        response = await registry.patch(started.headers["Location"], data=second, headers={
            "Content-Type": "application/octet-stream", "Content-Range": second_range})
        assert response.status == 416

    async def test_whole_sequence(self, registry: TestClient, content: Content) -> None:
        first, first_range, second, second_range = self.chunks(content)
        started = await registry.post(f"/v2/{NAME}/blobs/uploads/", headers={"Content-Length": "0"})
        location = started.headers["Location"]
        headers = {"Content-Type": "application/octet-stream"}
        one = await registry.patch(location, data=first, headers={**headers, "Content-Range": first_range})
        assert (one.status, one.headers["Range"]) == (202, first_range)
        retry = await registry.patch(location, data=first, headers={**headers, "Content-Range": first_range})
        assert retry.status == 416
        status = await registry.get(location)
        assert (status.status, status.headers["Range"]) == (204, first_range)
        assert status.headers["Location"]
        two = await registry.patch(status.headers["Location"], data=second,
                                   headers={**headers, "Content-Range": second_range})
        assert (two.status, two.headers["Range"]) == (202, f"0-{len(content.blob_b) - 1}")
        done = await registry.put(two.headers["Location"], params={"digest": sha256(content.blob_b)},
                                  headers={**headers, "Content-Length": "0"})
        assert done.status == 201 and done.headers["Location"]

    async def test_final_chunk_in_the_put(self, registry: TestClient, content: Content) -> None:
        first, first_range, second, second_range = self.chunks(content)
        started = await registry.post(f"/v2/{NAME}/blobs/uploads/", headers={"Content-Length": "0"})
        one = await registry.patch(started.headers["Location"], data=first, headers={"Content-Range": first_range})
        done = await registry.put(one.headers["Location"], params={"digest": sha256(content.blob_b)}, data=second,
                                  headers={"Content-Range": second_range, "Content-Type": "application/octet-stream"})
        assert done.status == 201 and done.headers["Location"]


async def test_push_mount_without_from_of_unknown_blob_yields_a_session(registry: TestClient) -> None:
    response = await registry.post(f"/v2/{CROSSMOUNT}/blobs/uploads/", params={"mount": DUMMY_DIGEST})
    assert response.status == 202
    assert response.headers["Location"].startswith(f"/v2/{CROSSMOUNT}/blobs/uploads/")


async def test_push_mount_from_another_repository_then_get(registry: TestClient, content: Content) -> None:
    assert await post_put(registry, content.blob_a) == 201
    digest = sha256(content.blob_a)
    mounted = await registry.post(f"/v2/{CROSSMOUNT}/blobs/uploads/", params={"mount": digest, "from": NAME})
    assert mounted.status == 201
    assert mounted.headers["Location"] == f"/v2/{CROSSMOUNT}/blobs/{digest}"
    assert (await registry.get(mounted.headers["Location"])).status == 200


async def test_push_mount_without_from_with_automatic_discovery_is_201(registry: TestClient,
                                                                      content: Content) -> None:
    assert await post_put(registry, content.blob_a) == 201
    response = await registry.post(f"/v2/{CROSSMOUNT}/blobs/uploads/", params={"mount": sha256(content.blob_a)})
    assert response.status == 201


async def test_push_manifest_to_four_tags(registry: TestClient, content: Content) -> None:
    assert (await registry.get(f"/v2/{NAME}/manifests/{NONEXISTENT_MANIFEST}")).status == 404
    for blob in (content.configs[1], content.layer):
        await post_put(registry, blob)
    for i in range(4):
        response = await put_manifest(registry, f"test{i}", content.manifests[1])
        assert response.status == 201 and response.headers["Location"]
    response = await registry.get(f"/v2/{NAME}/manifests/{sha256(content.manifests[1])}",
                                  headers={"Accept": OCI_MANIFEST})
    assert response.status == 200


async def test_push_manifest_with_no_layers(registry: TestClient, content: Content) -> None:
    await post_put(registry, content.configs[0])
    empty = _json({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                   "config": _descriptor(OCI_CONFIG, content.configs[0]), "layers": []})
    response = await put_manifest(registry, "emptylayer", empty)
    assert response.status == 201 and response.headers["Location"]


async def test_push_artifacts_by_config_type_and_by_artifact_type(registry: TestClient, content: Content) -> None:
    for blob in (content.empty_json, content.ref_blob_a):
        await post_put(registry, blob)
    for manifest in (content.refs_a_config, content.refs_a_layer):
        assert (await put_manifest(registry, sha256(manifest), manifest)).status == 201


async def test_push_index_and_nested_index(seeded: TestClient, content: Content) -> None:
    nested = _json({"schemaVersion": 2, "mediaType": OCI_INDEX, "artifactType": ARTIFACT_INDEX,
                    "manifests": [_descriptor(OCI_INDEX, content.refs_index)], "annotations": {ANNOTATION: "x"}})
    assert (await put_manifest(seeded, sha256(nested), nested, OCI_INDEX)).status == 201


async def test_push_dangling_subject_is_accepted_with_oci_subject(registry: TestClient, content: Content) -> None:
    for blob in (content.empty_json, content.ref_blob_c):
        await post_put(registry, blob)
    response = await put_manifest(registry, sha256(content.refs_c_layer), content.refs_c_layer)
    assert response.status == 201
    assert re.match(r"^[a-z0-9]+:[a-f0-9]+$", response.headers["OCI-Subject"])
    assert response.headers["OCI-Subject"] == sha256(content.manifests[3])


async def test_push_teardown_deletes(seeded: TestClient, content: Content) -> None:
    for path in (f"/v2/{NAME}/manifests/{sha256(content.manifests[1])}",
                 f"/v2/{NAME}/blobs/{sha256(content.configs[1])}", f"/v2/{NAME}/blobs/{sha256(content.layer)}"):
        assert (await seeded.delete(path)).status == 202, path


# ====================================================================== content discovery

async def tag_list(client: TestClient, **params: str) -> list[str]:
    response = await client.get(f"/v2/{NAME}/tags/list", params=params)
    assert response.status == 200
    return (await response.json())["tags"]


async def test_discovery_tags_list(seeded: TestClient) -> None:
    assert await tag_list(seeded) == ["subject", "tagtest0", "test0", "test1", "test2", "test3"]


async def test_discovery_n_limits_tags(seeded: TestClient) -> None:
    assert len(await tag_list(seeded, n="3")) == 3


async def test_discovery_last_sets_the_start(seeded: TestClient) -> None:
    first = await tag_list(seeded, n="3")
    after = await tag_list(seeded, n="3", last=first[-1])
    assert len(after) <= 3
    assert first[-1] not in after and after == ["test1", "test2", "test3"]


async def referrers(client: TestClient, subject: str, **params: str) -> tuple[list[dict[str, Any]], Any]:
    response = await client.get(f"/v2/{NAME}/referrers/{subject}", params=params)
    assert response.status == 200
    assert response.headers["Content-Type"] == OCI_INDEX
    return (await response.json())["manifests"], response.headers


async def test_discovery_referrers_of_nonexistent_digest_is_empty_200(seeded: TestClient) -> None:
    manifests, _ = await referrers(seeded, DUMMY_DIGEST)
    assert manifests == []


async def test_discovery_referrers_lists_all_five_with_annotations(seeded: TestClient, content: Content) -> None:
    manifests, _ = await referrers(seeded, sha256(content.manifests[4]))
    assert len(manifests) == 5
    assert len({entry["digest"] for entry in manifests}) == 5
    assert all(len(entry["annotations"]) == 1 and ANNOTATION in entry["annotations"] for entry in manifests)


async def test_discovery_referrers_filtered_by_artifact_type(seeded: TestClient, content: Content) -> None:
    manifests, headers = await referrers(seeded, sha256(content.manifests[4]), artifactType=ARTIFACT_A)
    assert headers["OCI-Filters-Applied"] == "artifactType"
    assert sorted(entry["digest"] for entry in manifests) == sorted(
        [sha256(content.refs_a_config), sha256(content.refs_a_layer)])


async def test_discovery_referrers_of_a_missing_manifest(seeded: TestClient, content: Content) -> None:
    manifests, _ = await referrers(seeded, sha256(content.manifests[3]))
    assert [entry["digest"] for entry in manifests] == [sha256(content.refs_c_layer)]


# ====================================================================== content management

async def test_management_delete_tag_then_digest(seeded: TestClient, content: Content) -> None:
    before = await tag_list(seeded)
    assert (await seeded.delete(f"/v2/{NAME}/manifests/tagtest0")).status == 202
    assert (await seeded.get(f"/v2/{NAME}/manifests/tagtest0")).status == 404
    digest = sha256(content.manifests[0])
    assert (await seeded.delete(f"/v2/{NAME}/manifests/{digest}")).status == 202
    assert (await seeded.get(f"/v2/{NAME}/manifests/{digest}")).status == 404
    assert len(await tag_list(seeded)) < len(before)


async def test_management_delete_blobs_then_get_is_404(seeded: TestClient, content: Content) -> None:
    for blob in (content.configs[3], content.layer):
        assert (await seeded.delete(f"/v2/{NAME}/blobs/{sha256(blob)}")).status == 202
    assert (await seeded.get(f"/v2/{NAME}/blobs/{sha256(content.configs[3])}")).status == 404
