"""Manifests an upstream serves pass the checks a push passes (pullcache/manifest_check.py) before they are
cached: one that fails is answered 502 naming the upstream by its configured name (never its URL), nothing
of it is stored, and the next request asks the upstream again."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pullcache.api.appkeys import STORE
from tests.fault_upstream import FakeRegistry, sha256
from tests.support.store_view import store_contents
from tests.support_faults import Proxy, start_proxy

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCTET_STREAM = "application/octet-stream"
REPO = "team/app"


def manifest(**changes: Any) -> bytes:
    document = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": sha256(b"{}"), "size": 2}, "layers": [], **changes}
    return json.dumps({key: value for key, value in document.items() if value is not None}).encode()


@pytest.fixture
async def proxy(aiohttp_client: Any, fake: FakeRegistry, tmp_path: Path) -> Proxy:
    return await start_proxy(aiohttp_client, fake, tmp_path / "data")


async def assert_refused_and_not_cached(proxy: Proxy, reference: str) -> None:
    before = await store_contents(proxy.client.app[STORE])
    for attempt in (1, 2):
        response = await proxy.client.get(f"/v2/{REPO}/manifests/{reference}")
        assert response.status == 502, await response.text()
        error = (await response.json())["errors"][0]
        assert error["code"] == "UNAVAILABLE"
        assert f"upstream {proxy.upstream} " in error["message"] and "invalid manifest" in error["message"]
        assert proxy.fake.url.split("//")[1] not in error["message"]  # the upstream's address stays in the log
        assert proxy.upstream_requests("GET", f"/manifests/{reference}") == attempt  # nothing cached meanwhile
    assert await store_contents(proxy.client.app[STORE]) == before


@pytest.mark.parametrize("media_type", [OCI_MANIFEST + "\r\nX-Injected: yes", "application/vnd.oci\x00x",
                                        "application/" + "x" * 300, "not a media type"])
async def test_an_invalid_media_type_in_the_body_is_502_and_not_cached(fake: FakeRegistry, proxy: Proxy,
                                                                       media_type: str) -> None:
    fake.add_manifest(REPO, "v1", manifest(mediaType=media_type), OCTET_STREAM)
    await assert_refused_and_not_cached(proxy, "v1")


@pytest.mark.parametrize("content_type", ["not-a-media-type", "application/" + "x" * 300, "text/(html)"])
async def test_an_invalid_content_type_is_502_and_not_cached(fake: FakeRegistry, proxy: Proxy,
                                                             content_type: str) -> None:
    fake.add_manifest(REPO, "v1", manifest(mediaType=None), content_type)
    await assert_refused_and_not_cached(proxy, "v1")


@pytest.mark.parametrize("body", [manifest(config=None), manifest(layers={"not": "a list"}),
                                  manifest(schemaVersion=1), manifest(layers=[{"digest": "sha256:nothex"}]),
                                  b"[" * 100_000, b"not json"])
async def test_a_malformed_manifest_is_502_and_not_cached(fake: FakeRegistry, proxy: Proxy, body: bytes) -> None:
    fake.add_manifest(REPO, "v1", body, OCI_MANIFEST)
    await assert_refused_and_not_cached(proxy, "v1")


async def test_a_malformed_manifest_by_digest_is_502_and_not_cached(fake: FakeRegistry, proxy: Proxy) -> None:
    digest = fake.add_manifest(REPO, "v1", manifest(config=None), OCI_MANIFEST)
    await assert_refused_and_not_cached(proxy, digest)


async def test_a_generic_content_type_is_stored_as_the_manifest_s_own_media_type(fake: FakeRegistry,
                                                                                 proxy: Proxy) -> None:
    body = manifest()
    fake.add_manifest(REPO, "v1", body, OCTET_STREAM)
    for _ in range(2):  # from the upstream, then from the cache
        response = await proxy.client.get(f"/v2/{REPO}/manifests/v1")
        assert (response.status, await response.read()) == (200, body)
        assert response.headers["Content-Type"] == OCI_MANIFEST
    assert proxy.upstream_requests("GET", "/manifests/") == 1


async def test_a_reference_outside_the_tag_grammar_is_404_without_asking_the_upstream(fake: FakeRegistry,
                                                                                      proxy: Proxy) -> None:
    for method in ("GET", "HEAD"):
        response = await proxy.client.request(method, f"/v2/{REPO}/manifests/.INVALID_MANIFEST_NAME")
        assert response.status == 404, method
    assert fake.seen == []


@pytest.mark.parametrize("content_type", [OCTET_STREAM, ""])
async def test_a_deeply_nested_manifest_without_a_manifest_content_type_is_502(
        fake: FakeRegistry, proxy: Proxy, content_type: str) -> None:
    """The upstream client reads mediaType from a body with no useful Content-Type: nesting past the
    parser's stack there is a refusal too, not a 500."""
    fake.add_manifest(REPO, "v1", b"[" * 100_000 + b"]" * 100_000, content_type)
    before = await store_contents(proxy.client.app[STORE])
    response = await proxy.client.get(f"/v2/{REPO}/manifests/v1")
    assert response.status == 502, await response.text()
    assert f"upstream {proxy.upstream} " in (await response.json())["errors"][0]["message"]
    assert await store_contents(proxy.client.app[STORE]) == before
