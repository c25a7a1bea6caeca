"""Content discovery: /v2/, tags/list and _catalog with n/last paging and Link headers."""
from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from pullcache.api.appkeys import STORE
from pullcache.app import build_app
from pullcache.config import build_config
from pullcache.digests import Digest
from tests.registry_api import OCI_MANIFEST, error_code, push_image, push_manifest, sha256

pytest_plugins = ["tests.registry_api"]


async def tag_all(registry: TestClient, tags: list[str]) -> None:
    image = await push_image(registry, "team/app", tags[0])
    for tag in tags[1:]:
        await push_manifest(registry, "team/app", tag, image.manifest, OCI_MANIFEST)


async def test_base_answers_200_with_the_api_version(registry: TestClient) -> None:
    for path in ("/v2/", "/v2"):
        response = await registry.get(path)
        assert response.status == 200
        assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"


async def test_errors_carry_the_api_version_too(registry: TestClient) -> None:
    response = await registry.get("/v2/team/app/manifests/v1")
    assert response.status == 404
    assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"


async def test_unknown_endpoint_is_404(registry: TestClient) -> None:
    response = await registry.get("/v2/team/app/somewhere")
    assert response.status == 404
    assert await error_code(response) == "NAME_UNKNOWN"


async def test_tags_are_listed_in_case_insensitive_lexical_order(registry: TestClient) -> None:
    await tag_all(registry, ["b", "A", "c", "a1", "B2"])
    response = await registry.get("/v2/team/app/tags/list")
    assert response.status == 200
    assert await response.json() == {"name": "team/app", "tags": ["A", "a1", "b", "B2", "c"]}
    assert "Link" not in response.headers


async def test_n_limits_and_link_points_at_the_next_page(registry: TestClient) -> None:
    await tag_all(registry, ["t1", "t2", "t3", "t4", "t5"])
    first = await registry.get("/v2/team/app/tags/list", params={"n": "2"})
    assert (await first.json())["tags"] == ["t1", "t2"]
    assert first.headers["Link"] == '</v2/team/app/tags/list?n=2&last=t2>; rel="next"'
    second = await registry.get("/v2/team/app/tags/list?n=2&last=t2")
    assert (await second.json())["tags"] == ["t3", "t4"]
    third = await registry.get("/v2/team/app/tags/list?n=2&last=t4")
    assert (await third.json())["tags"] == ["t5"]
    assert "Link" not in third.headers


async def test_last_alone_and_a_last_that_is_no_tag(registry: TestClient) -> None:
    await tag_all(registry, ["t1", "t2", "t3"])
    after = await registry.get("/v2/team/app/tags/list", params={"last": "t1"})
    assert (await after.json())["tags"] == ["t2", "t3"]
    between = await registry.get("/v2/team/app/tags/list", params={"last": "t15", "n": "5"})
    assert (await between.json())["tags"] == ["t2", "t3"]


async def test_n_zero_is_an_empty_list_without_link(registry: TestClient) -> None:
    await tag_all(registry, ["t1", "t2"])
    response = await registry.get("/v2/team/app/tags/list", params={"n": "0"})
    assert (await response.json())["tags"] == []
    assert "Link" not in response.headers


async def test_n_that_is_not_a_number_is_400(registry: TestClient) -> None:
    await tag_all(registry, ["t1"])
    for bad in ("-1", "ten", ""):
        assert (await registry.get("/v2/team/app/tags/list", params={"n": bad})).status == 400, bad


async def test_tags_of_unknown_repository_is_404_name_unknown(registry: TestClient) -> None:
    response = await registry.get("/v2/no/such/tags/list")
    assert response.status == 404
    assert await error_code(response) == "NAME_UNKNOWN"


async def test_catalog_lists_repositories_with_paging(registry: TestClient) -> None:
    for name in ("team/b", "team/a", "other/x"):
        await push_image(registry, name, seed=name)
    everything = await registry.get("/v2/_catalog")
    assert await everything.json() == {"repositories": ["other/x", "team/a", "team/b"]}
    first = await registry.get("/v2/_catalog", params={"n": "2"})
    assert (await first.json())["repositories"] == ["other/x", "team/a"]
    assert first.headers["Link"] == '</v2/_catalog?n=2&last=team%2Fa>; rel="next"'
    rest = await registry.get("/v2/_catalog?n=2&last=team%2Fa")
    assert (await rest.json())["repositories"] == ["team/b"]
    assert "Link" not in rest.headers


async def test_upstream_names_list_what_is_cached(aiohttp_client: Any, storage: dict[str, Any]) -> None:
    """tags/list and _catalog never contact an upstream: they answer from the cache (referrers do ask it:
    tests/test_pullthrough_referrers.py)."""
    config = build_config({"storage": storage,
                           "upstreams": [{"name": "docker.io", "url": "http://127.0.0.1:9"}]})
    app = build_app(config)
    client = await aiohttp_client(app)
    cached = app[STORE].repository("docker.io/library/alpine", cached=True)
    await cached.set_tag("3.19", Digest.parse(sha256(b"a manifest")))
    await cached.set_tag("3.20", Digest.parse(sha256(b"another")))

    tags = await client.get("/v2/docker.io/library/alpine/tags/list")
    assert await tags.json() == {"name": "docker.io/library/alpine", "tags": ["3.19", "3.20"]}
    unknown = await client.get("/v2/docker.io/library/never-pulled/tags/list")
    assert (unknown.status, await error_code(unknown)) == (404, "NAME_UNKNOWN")
    catalog = await client.get("/v2/_catalog")
    assert (await catalog.json())["repositories"] == ["docker.io/library/alpine"]
