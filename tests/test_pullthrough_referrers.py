"""Referrers of upstream repositories come from the upstream: its referrers API, or, when it has none (a 404,
as CNCF Distribution 2.8 answers), the image index under the referrers tag schema `<alg>-<hex>`."""
from __future__ import annotations

import json
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.fault_upstream import FakeRegistry, answer, sha256
from tests.support.images import OCI_INDEX, OCI_MANIFEST, build_image, push_image
from tests.support.pullcache_proc import PullcacheProcess
from tests.support.registry_client import RegistryClient
from tests.support.seed import ADMIN_PASSWORD, ADMIN_USER, Upstream
from tests.support_faults import Proxy, start_proxy

SBOM = "application/vnd.example.sbom.v1"
SIGNATURE = "application/vnd.example.signature.v1"
SUBJECT = sha256(b"the image the artifacts are about")


def referrer(artifact_type: str, note: str) -> dict[str, Any]:
    body = f"artifact {note}".encode()
    return {"mediaType": OCI_MANIFEST, "digest": sha256(body), "size": len(body), "artifactType": artifact_type,
            "annotations": {"note": note}}


def tag_schema(digest: str) -> str:
    return digest.replace(":", "-")


@pytest.fixture
async def proxy(aiohttp_client: Any, fake: FakeRegistry, tmp_path: Path) -> Proxy:
    return await start_proxy(aiohttp_client, fake, tmp_path / "data")


async def referrers(proxy: Proxy, subject: str = SUBJECT, **params: str) -> tuple[int, Any, Any]:
    async with proxy.client.get(f"/v2/team/app/referrers/{subject}", params=params) as response:
        return response.status, await response.json(content_type=None), response.headers


async def test_the_upstreams_referrers_api_is_what_a_client_sees(proxy: Proxy) -> None:
    listed = [referrer(SBOM, "sbom"), referrer(SIGNATURE, "sig")]
    proxy.fake.referrers = {("team/app", SUBJECT): listed}

    status, index, headers = await referrers(proxy)

    assert (status, headers["Content-Type"]) == (200, OCI_INDEX)
    assert index == {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": listed}


async def test_an_artifact_type_filter_is_applied_to_the_upstreams_list(proxy: Proxy) -> None:
    sbom = referrer(SBOM, "sbom")
    proxy.fake.referrers = {("team/app", SUBJECT): [sbom, referrer(SIGNATURE, "sig")]}

    status, index, headers = await referrers(proxy, artifactType=SBOM)

    assert (status, index["manifests"], headers["OCI-Filters-Applied"]) == (200, [sbom], "artifactType")


async def test_without_a_referrers_api_the_tag_schema_index_is_listed(proxy: Proxy) -> None:
    listed = [referrer(SBOM, "sbom")]
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": listed}).encode()
    proxy.fake.add_manifest("team/app", tag_schema(SUBJECT), index, OCI_INDEX)

    status, answered, _ = await referrers(proxy)

    assert (status, answered["manifests"]) == (200, listed)
    assert proxy.upstream_requests("GET", f"/referrers/{SUBJECT}") == 1  # asked the API first


async def test_without_a_referrers_api_or_a_tag_there_are_none(proxy: Proxy) -> None:
    status, index, _ = await referrers(proxy)

    assert (status, index["manifests"]) == (200, [])


async def test_an_unavailable_upstream_is_a_503_not_an_empty_list(proxy: Proxy) -> None:
    proxy.fake.faults[f"/v2/team/app/referrers/{SUBJECT}"] = answer(503, b"down for maintenance")

    status, body, _ = await referrers(proxy)

    assert (status, body["errors"][0]["code"]) == (503, "UNAVAILABLE")


async def test_nothing_is_cached_so_a_new_referrer_is_listed_at_once(proxy: Proxy) -> None:
    proxy.fake.referrers = {("team/app", SUBJECT): []}
    assert (await referrers(proxy))[1]["manifests"] == []
    attached = referrer(SIGNATURE, "signed later")
    proxy.fake.referrers[("team/app", SUBJECT)] = [attached]

    assert (await referrers(proxy))[1]["manifests"] == [attached]


# ---------------------------------------------------------------------- a real Distribution 2.8 upstream

def push_artifact_with_tag_schema(client: RegistryClient, repo: str, subject: dict[str, Any]) -> dict[str, Any]:
    """What oras and cosign do against a registry without the referrers API: push the artifact manifest,
    then the index under `<alg>-<hex>` that lists it. Returns the artifact's descriptor."""
    config, layer = b"{}", b"an sbom"
    for blob in (config, layer):
        client.upload_blob(repo, blob)
    artifact = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": SBOM,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha256(config), "size": len(config)},
        "layers": [{"mediaType": "application/spdx+json", "digest": sha256(layer), "size": len(layer)}],
        "subject": subject,
    }).encode()
    digest = client.put_manifest(repo, sha256(artifact), artifact, OCI_MANIFEST)
    descriptor = {"mediaType": OCI_MANIFEST, "digest": digest, "size": len(artifact), "artifactType": SBOM}
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [descriptor]}).encode()
    client.put_manifest(repo, tag_schema(subject["digest"]), index, OCI_INDEX)
    return descriptor


def get_referrers(proc: PullcacheProcess, repo: str, subject: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{proc.url}/v2/{repo}/referrers/{subject}", timeout=30) as response:
        assert response.headers["Content-Type"] == OCI_INDEX
        return json.load(response)


def test_distribution_2_8_has_no_referrers_api_so_its_tag_schema_index_is_listed(
        pullcache_factory: Callable[..., PullcacheProcess], upstream: Upstream) -> None:
    client = RegistryClient(upstream.url, username=ADMIN_USER, password=ADMIN_PASSWORD)
    image = build_image(f"refs/i{uuid.uuid4().hex[:10]}", "v1", oci=True, multi=False)
    push_image(client, image)
    subject = {"mediaType": image.top.media_type, "digest": image.digest, "size": len(image.top.data)}
    descriptor = push_artifact_with_tag_schema(client, image.repo, subject)
    proc = pullcache_factory()

    assert get_referrers(proc, image.repo, image.digest)["manifests"] == [descriptor]


def test_distribution_2_8_without_a_tag_schema_index_lists_no_referrers(
        pullcache_factory: Callable[..., PullcacheProcess], upstream: Upstream) -> None:
    alpine = upstream["library/alpine:latest"]
    proc = pullcache_factory()

    assert get_referrers(proc, "library/alpine", alpine.digest)["manifests"] == []
