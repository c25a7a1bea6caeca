"""The read handlers speak to one repository interface (cache/registry.py), pushed or proxied alike.

A stub repository behind it serves every read endpoint with no store content and no upstream; and the
api/ package neither asks whether a repository is local nor reaches into the pull-through internals.
"""
from __future__ import annotations

import ast
import hashlib
import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

import pullcache
from pullcache.app import build_app
from pullcache.cache.backends import OpenedBlob
from pullcache.cache.registry import LOCAL, BlobBody, ManifestBody, RegistryRepository, RepositoryUnknown
from pullcache.config import build_config
from pullcache.digests import Digest
from pullcache.upstream.errors import UpstreamRateLimited
from tests.support.pullcache_proc import docker_hub_upstream
from tests.support.seed import Upstream

API = Path(pullcache.__file__).parent / "api"
DATA = bytes(range(256)) * 8
BLOB = Digest.parse("sha256:" + hashlib.sha256(DATA).hexdigest())
MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "config": {"mediaType": "application/vnd.oci.empty.v1+json", "size": 2,
                                  "digest": "sha256:" + hashlib.sha256(b"{}").hexdigest()},
                       "layers": []}).encode()
MANIFEST_DIGEST = Digest.parse("sha256:" + hashlib.sha256(MANIFEST).hexdigest())
REFERRER = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": str(MANIFEST_DIGEST),
            "size": len(MANIFEST), "artifactType": "application/example"}


class StubRepository:
    """Serves one blob, one manifest (tag v1), two tags and one referrer from memory; `throttled` makes every
    read fail as an upstream that rate-limits would."""

    def __init__(self, *, throttled: bool = False) -> None:
        self.throttled = throttled
        self.answered_with: list[Digest] = []

    def _check(self) -> None:
        if self.throttled:
            raise UpstreamRateLimited("stub-upstream", "slow down", 429, retry_after="7")

    async def blob(self, digest: Digest, *, head: bool = False) -> BlobBody | None:
        self._check()
        if digest != BLOB:
            return None

        async def read(offset: int, length: int) -> AsyncIterator[bytes]:
            yield DATA[offset:offset + length]

        return BlobBody(LOCAL, blob=OpenedBlob(len(DATA), read=read))

    def holds_blob(self, digest: Digest) -> bool:
        return digest == BLOB

    async def manifest(self, reference: str | Digest, accept: Sequence[str] = (), *, head: bool = False,
                       count: bool = True) -> ManifestBody | None:
        self._check()
        if reference not in ("v1", MANIFEST_DIGEST):
            return None
        return ManifestBody(MANIFEST_DIGEST, "application/vnd.oci.image.manifest.v1+json", len(MANIFEST),
                            MANIFEST, LOCAL)

    def answered(self, manifest: ManifestBody, *, head: bool) -> None:
        self.answered_with.append(manifest.digest)

    async def tags(self) -> list[str]:
        self._check()
        return ["v2", "v1"]

    async def referrers(self, subject: Digest) -> list[dict[str, Any]]:
        self._check()
        return [REFERRER] if subject == MANIFEST_DIGEST else []


async def _served_by(aiohttp_client: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                     stub: StubRepository) -> TestClient:
    def factory(*_: object) -> RegistryRepository:
        return stub

    monkeypatch.setattr("pullcache.api.targets.repository_for", factory)
    config = build_config({"storage": {"path": str(tmp_path / "data")}, "local": {"anonymous_push": True}})
    client: TestClient = await aiohttp_client(build_app(config))
    return client


async def test_every_read_endpoint_is_served_by_whatever_repository_the_name_gets(
        aiohttp_client: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    stub = StubRepository()
    client = await _served_by(aiohttp_client, monkeypatch, tmp_path, stub)

    blob = await client.get(f"/v2/any/name/blobs/{BLOB}", headers={"Range": "bytes=10-19"})
    assert (blob.status, await blob.read()) == (206, DATA[10:20])
    assert blob.headers["Docker-Content-Digest"] == str(BLOB)
    missing = await client.get(f"/v2/any/name/blobs/sha256:{'0' * 64}")
    assert missing.status == 404

    manifest = await client.get("/v2/any/name/manifests/v1")
    assert (manifest.status, await manifest.read()) == (200, MANIFEST)
    assert manifest.headers["Docker-Content-Digest"] == str(MANIFEST_DIGEST)
    assert stub.answered_with == [MANIFEST_DIGEST]

    tags = await client.get("/v2/any/name/tags/list")
    assert await tags.json() == {"name": "any/name", "tags": ["v1", "v2"]}

    referrers = await client.get(f"/v2/any/name/referrers/{MANIFEST_DIGEST}")
    assert (await referrers.json())["manifests"] == [REFERRER]


async def test_an_upstream_failure_behind_any_repository_is_answered_the_same_way(
        aiohttp_client: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    client = await _served_by(aiohttp_client, monkeypatch, tmp_path, StubRepository(throttled=True))
    for path in (f"/v2/any/name/blobs/{BLOB}", "/v2/any/name/manifests/v1", f"/v2/any/name/referrers/{BLOB}"):
        response = await client.get(path)
        assert (response.status, response.headers.get("Retry-After")) == (429, "7"), path
        assert (await response.json())["errors"][0]["code"] == "TOOMANYREQUESTS"


async def test_an_unknown_repository_says_so_in_its_own_words(
        aiohttp_client: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    stub = StubRepository()

    async def unknown() -> list[str]:
        raise RepositoryUnknown("is nowhere to be seen")

    monkeypatch.setattr(stub, "tags", unknown)
    client = await _served_by(aiohttp_client, monkeypatch, tmp_path, stub)
    response = await client.get("/v2/any/name/tags/list")
    assert response.status == 404
    error = (await response.json())["errors"][0]
    assert (error["code"], error["message"]) == ("NAME_UNKNOWN", "repository 'any/name' is nowhere to be seen")


async def test_a_blob_cached_from_an_upstream_mounts_into_a_pushed_repository(
        aiohttp_client: Any, tmp_path: Path, upstream: Upstream) -> None:
    """The proxied repository holds what the cache holds (a cached blob is linked to no repository), and a
    mount from it asks it, not the pushed repository of the same name that does not exist."""
    config = build_config({"storage": {"path": str(tmp_path / "data")}, "local": {"anonymous_push": True},
                           "upstreams": [docker_hub_upstream(upstream.url)]})
    client = await aiohttp_client(build_app(config))
    cached, uncached = upstream.seed.alpine.blobs()[:2]
    pulled = await client.get(f"/v2/docker.io/library/alpine/blobs/{cached.digest}")
    assert (pulled.status, await pulled.read()) == (200, cached.data)

    source = {"from": "docker.io/library/alpine"}
    mounted = await client.post("/v2/team/app/blobs/uploads/", params={"mount": cached.digest, **source})
    assert (mounted.status, mounted.headers["Docker-Content-Digest"]) == (201, cached.digest)
    not_cached = await client.post("/v2/team/app/blobs/uploads/", params={"mount": uncached.digest, **source})
    assert not_cached.status == 202  # an ordinary upload starts
    served = await client.get(f"/v2/team/app/blobs/{cached.digest}")
    assert (served.status, await served.read()) == (200, cached.data)


def _api_modules() -> dict[str, ast.Module]:
    return {path.stem: ast.parse(path.read_text(), str(path)) for path in sorted(API.glob("*.py"))}


def test_no_api_module_asks_whether_a_repository_is_local() -> None:
    asking = [name for name, tree in _api_modules().items()
              if any(isinstance(node, ast.Attribute) and node.attr == "is_local" for node in ast.walk(tree))]
    assert asking == []


def _imports(tree: ast.Module) -> list[tuple[str, list[str]]]:
    """(module, names) of every import; names empty for a plain `import module`."""
    found: list[tuple[str, list[str]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
    return found


def test_api_sees_of_the_pull_through_cache_only_its_repository_and_public_names() -> None:
    """The package's own exports (PullThrough for the app key, BlobTooLarge to answer 507, a hit and its
    counter for a replayed hit), the repository factory, and the push-shadowing warnings a push starts;
    never blobs.py, manifests.py or stats.py."""
    allowed = {"pullcache.pullthrough.repository", "pullcache.pullthrough.shadowing"}
    exports = {"PullThrough", "BlobTooLarge", "HIT", "manifest_hits"}
    reaching = []
    for name, tree in _api_modules().items():
        for module, names in _imports(tree):
            if module == "pullcache.pullthrough":
                reaching += [f"{name}: {module}.{n}" for n in names if n not in exports]
            elif module == "pullcache" and "pullthrough" in names:
                reaching.append(f"{name}: pullcache.pullthrough")
            elif module.startswith("pullcache.pullthrough") and module not in allowed | {"pullcache.pullthrough"}:
                reaching.append(f"{name}: {module}")
    assert reaching == []


def test_api_modules_import_each_other_without_a_cycle() -> None:
    modules = _api_modules()
    edges = {name: {module.removeprefix("pullcache.api.") for module, _ in _imports(tree)
                    if module.startswith("pullcache.api.")} & modules.keys()
             for name, tree in modules.items()}
    edges = {name: targets | {n for module, names in _imports(modules[name]) if module == "pullcache.api"
                              for n in names if n in modules}
             for name, targets in edges.items()}
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        assert name not in path, f"import cycle: {' -> '.join([*path, name])}"
        if name in done:
            return
        for target in sorted(edges[name]):
            visit(target, [*path, name])
        done.add(name)

    for name in sorted(modules):
        visit(name, [])
