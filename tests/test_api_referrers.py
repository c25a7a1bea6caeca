"""The referrers API and `OCI-Subject`: manifests with a subject, listed per subject digest."""
from __future__ import annotations

from aiohttp.test_utils import TestClient

from tests.registry_api import (
    EMPTY_JSON,
    OCI_INDEX,
    OCI_MANIFEST,
    descriptor,
    error_code,
    manifest_bytes,
    push_blob,
    push_image,
    push_manifest,
    sha256,
)

pytest_plugins = ["tests.registry_api"]

SBOM = "application/vnd.example.sbom.v1"
SIGNATURE = "application/vnd.example.signature.v1"
BUNDLE = "application/vnd.example.bundle.v1"


async def push_artifact(registry: TestClient, subject: str, *, artifact_type: str | None = None,
                        config_type: str = EMPTY_JSON, note: str = "") -> tuple[str, bytes]:
    """An artifact manifest about `subject`: artifactType set, or carried by the config's media type."""
    config = b"{}"
    layer = f"artifact {note}".encode()
    await push_blob(registry, "team/app", config)
    await push_blob(registry, "team/app", layer)
    document = {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": config_type, "digest": sha256(config), "size": len(config)},
        "layers": [descriptor("application/octet-stream", layer)],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": 123},
        "annotations": {"note": note},
    }
    if artifact_type:
        document["artifactType"] = artifact_type
    data = manifest_bytes(document)
    response = await registry.put(f"/v2/team/app/manifests/{sha256(data)}", data=data,
                                  headers={"Content-Type": OCI_MANIFEST})
    assert response.status == 201, await response.text()
    assert response.headers["OCI-Subject"] == subject
    return sha256(data), data


async def referrers(registry: TestClient, subject: str, **params: str) -> tuple[dict, dict]:
    response = await registry.get(f"/v2/team/app/referrers/{subject}", params=params)
    assert response.status == 200
    assert response.headers["Content-Type"] == OCI_INDEX
    return await response.json(), dict(response.headers)


async def test_referrers_list_descriptors_with_artifact_type_and_annotations(registry: TestClient) -> None:
    image = await push_image(registry, "team/app")
    sbom, sbom_bytes = await push_artifact(registry, image.digest, artifact_type=SBOM, note="sbom")
    signature, _ = await push_artifact(registry, image.digest, config_type=SIGNATURE, note="sig")
    index, headers = await referrers(registry, image.digest)
    assert index["schemaVersion"] == 2 and index["mediaType"] == OCI_INDEX
    by_digest = {entry["digest"]: entry for entry in index["manifests"]}
    assert by_digest[sbom] == {"mediaType": OCI_MANIFEST, "digest": sbom, "size": len(sbom_bytes),
                               "artifactType": SBOM, "annotations": {"note": "sbom"}}
    assert by_digest[signature]["artifactType"] == SIGNATURE  # from config.mediaType
    assert "OCI-Filters-Applied" not in headers


async def test_artifact_type_filter(registry: TestClient) -> None:
    image = await push_image(registry, "team/app")
    sbom, _ = await push_artifact(registry, image.digest, artifact_type=SBOM, note="sbom")
    await push_artifact(registry, image.digest, artifact_type=SIGNATURE, note="sig")
    index, headers = await referrers(registry, image.digest, artifactType=SBOM)
    assert [entry["digest"] for entry in index["manifests"]] == [sbom]
    assert headers["OCI-Filters-Applied"] == "artifactType"


async def test_subject_may_be_pushed_after_its_referrer(registry: TestClient) -> None:
    future_subject = sha256(b"not pushed yet")
    referrer, _ = await push_artifact(registry, future_subject, artifact_type=SBOM)
    index, _ = await referrers(registry, future_subject)
    assert [entry["digest"] for entry in index["manifests"]] == [referrer]


async def test_index_with_subject_is_listed_and_keeps_its_own_artifact_type(registry: TestClient) -> None:
    image = await push_image(registry, "team/app")
    member = await push_image(registry, "team/app", "member", seed="member")
    with_type = manifest_bytes({"schemaVersion": 2, "mediaType": OCI_INDEX, "artifactType": BUNDLE,
                                "manifests": [descriptor(OCI_MANIFEST, member.manifest)],
                                "subject": descriptor(OCI_MANIFEST, image.manifest)})
    without_type = manifest_bytes({"schemaVersion": 2, "mediaType": OCI_INDEX,
                                   "manifests": [descriptor(OCI_MANIFEST, member.manifest)],
                                   "subject": descriptor(OCI_MANIFEST, image.manifest)})
    await push_manifest(registry, "team/app", sha256(with_type), with_type, OCI_INDEX)
    await push_manifest(registry, "team/app", sha256(without_type), without_type, OCI_INDEX)
    index, _ = await referrers(registry, image.digest)
    by_digest = {entry["digest"]: entry for entry in index["manifests"]}
    assert by_digest[sha256(with_type)]["artifactType"] == BUNDLE
    assert by_digest[sha256(with_type)]["mediaType"] == OCI_INDEX
    assert "artifactType" not in by_digest[sha256(without_type)]


async def test_unknown_digest_has_an_empty_index(registry: TestClient) -> None:
    await push_image(registry, "team/app")
    index, _ = await referrers(registry, sha256(b"no such manifest"))
    assert index == {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}


async def test_unknown_repository_has_an_empty_index_too(registry: TestClient) -> None:
    response = await registry.get(f"/v2/no/such/referrers/{sha256(b'x')}")
    assert response.status == 200
    assert (await response.json())["manifests"] == []


async def test_malformed_digest_is_400(registry: TestClient) -> None:
    response = await registry.get("/v2/team/app/referrers/sha256:nope")
    assert response.status == 400
    assert await error_code(response) == "DIGEST_INVALID"


async def test_deleting_a_referrer_removes_it_from_the_list(registry: TestClient) -> None:
    image = await push_image(registry, "team/app")
    sbom, _ = await push_artifact(registry, image.digest, artifact_type=SBOM, note="sbom")
    signature, _ = await push_artifact(registry, image.digest, artifact_type=SIGNATURE, note="sig")
    assert (await registry.delete(f"/v2/team/app/manifests/{sbom}")).status == 202
    index, _ = await referrers(registry, image.digest)
    assert [entry["digest"] for entry in index["manifests"]] == [signature]


async def test_manifest_without_subject_sends_no_oci_subject(registry: TestClient) -> None:
    image = await push_image(registry, "team/app")
    response = await registry.put("/v2/team/app/manifests/again", data=image.manifest,
                                  headers={"Content-Type": OCI_MANIFEST})
    assert "OCI-Subject" not in response.headers
