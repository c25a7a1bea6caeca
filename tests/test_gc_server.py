"""`pullcache gc` run beside a live server: DELETE a local manifest, then reclaim exactly its blobs."""
from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Callable

from tests.support.images import Image, build_image, push_image
from tests.support.pullcache_proc import PullcacheProcess
from tests.support.registry_client import RegistryClient, sha256_digest
from tests.support.store_view import store_contents

ACCEPT = ["application/vnd.docker.distribution.manifest.v2+json"]
# A push idle for gc.upload_ttl is abandoned, so the sweep's grace is at most that: 1s here.
SHORT_GRACE = {"gc": {"upload_ttl": "1s"}}


def two_tags(client: RegistryClient) -> tuple[Image, Image]:
    """Two pushed tags of one local repository; they share its OS layer, nothing else."""
    repo = f"team/gc{uuid.uuid4().hex[:8]}"
    kept = build_image(repo, "kept", multi=False, layer_sizes=(200 * 1024,))
    deleted = build_image(repo, "deleted", multi=False, layer_sizes=(300 * 1024,))
    push_image(client, kept)
    push_image(client, deleted)
    return kept, deleted


def delete_and_age(client: RegistryClient, image: Image) -> None:
    response = client.request("DELETE", f"/v2/{image.repo}/manifests/{image.top.digest}", repo=image.repo)
    assert response.status == 202
    time.sleep(1.2)  # let the grace period pass: the sweep's safety is time-based by design


def blobs_of(image: Image) -> dict[str, int]:
    sizes = {blob.digest: blob.size for blob in image.blobs()}
    sizes[image.top.digest] = image.top.size
    return sizes


def store_contents_of(pullcache: PullcacheProcess) -> dict[str, object]:
    """The process's store as its Store interface shows it (blobs, temps, repositories), whatever the backend."""
    async def read() -> dict[str, object]:
        async with pullcache.store() as store:
            return await store_contents(store)
    return asyncio.run(read())


def pushed_bytes_gauge(pullcache: PullcacheProcess) -> float:
    text = RegistryClient(pullcache.url).request("GET", "/metrics").body.decode()
    return float(re.search(r'^pullcache_store_bytes\{origin="pushed"\} (\S+)$', text, re.MULTILINE).group(1))


def removed_blobs(output: str, verb: str) -> dict[str, int]:
    pattern = rf"^{verb} blob (\S+) \((\d+) bytes\)"
    return {m.group(1): int(m.group(2)) for m in re.finditer(pattern, output, re.MULTILINE)}


def test_delete_then_gc_reclaims_exactly_the_unshared_blobs(
        pullcache_factory: Callable[..., PullcacheProcess]) -> None:
    pullcache = pullcache_factory(SHORT_GRACE)
    client = RegistryClient(pullcache.url)
    kept, deleted = two_tags(client)
    delete_and_age(client, deleted)

    done = pullcache.cli("gc")

    assert done.returncode == 0, done.stderr
    unshared = {d: size for d, size in blobs_of(deleted).items() if d not in blobs_of(kept)}
    assert removed_blobs(done.stdout, "removed") == unshared
    assert f"gc: reclaimed {sum(unshared.values())} bytes" in done.stdout
    remaining = sum(blobs_of(kept).values())
    deadline = time.monotonic() + 15  # the server re-reads the index totals on its next tick (5 s)
    while pushed_bytes_gauge(pullcache) != remaining and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pushed_bytes_gauge(pullcache) == remaining
    manifest = client.get_manifest(kept.repo, kept.tag, ACCEPT)  # the server still serves the rest
    assert sha256_digest(manifest.body) == kept.top.digest
    for blob in kept.blobs():
        assert sha256_digest(client.get_blob(kept.repo, blob.digest)) == blob.digest


def test_dry_run_prints_what_it_would_remove_and_changes_nothing(
        pullcache_factory: Callable[..., PullcacheProcess]) -> None:
    pullcache = pullcache_factory(SHORT_GRACE)
    client = RegistryClient(pullcache.url)
    kept, deleted = two_tags(client)
    delete_and_age(client, deleted)
    before = store_contents_of(pullcache)

    dry = pullcache.cli("gc", "--dry-run")

    assert dry.returncode == 0, dry.stderr
    unshared = {d: size for d, size in blobs_of(deleted).items() if d not in blobs_of(kept)}
    assert removed_blobs(dry.stdout, "would remove") == unshared
    assert f"gc (dry run): would reclaim {sum(unshared.values())} bytes" in dry.stdout
    assert store_contents_of(pullcache) == before
    assert removed_blobs(pullcache.cli("gc").stdout, "removed") == unshared  # and a real run agrees
