"""The benchmark's S3 side (`python -m bench --storage s3`): its blob client following a redirect to the
object store, Distribution on SeaweedFS as the bench configures it, and the options that keep its
results apart from the filesystem table."""
from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bench import blobget, loadgen
from bench.run import parse
from bench.stack import S3Distribution
from tests.support import seaweed
from tests.support.pullcache_proc import PullcacheProcess
from tests.support.registry_client import RegistryClient
from tests.support.seaweed import SeaweedFS

BODY = os.urandom(300 * 1024)
PUSHED = "bench/s3"


@pytest.fixture
def s3_distribution(seaweed_server: SeaweedFS, tmp_path: Path,
                    monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Distribution]:
    """The bench's Distribution on its own bucket, started while the host sets a CA bundle it cannot load."""
    monkeypatch.setenv("AWS_CA_BUNDLE", str(tmp_path / "no-such-bundle.pem"))
    registry = S3Distribution(seaweed_server, seaweed_server.create_bucket(f"dist-{uuid.uuid4().hex[:8]}"),
                              workdir=tmp_path / "distribution")
    yield registry
    registry.stop()


def test_blobget_follows_the_307_and_counts_what_the_cache_port_sent(
        pullcache_factory: Callable[..., PullcacheProcess], seaweed_server: SeaweedFS) -> None:
    storage = {"backend": "s3", "s3": seaweed_server.storage_config(
        seaweed.BUCKET, prefix=f"bench{uuid.uuid4().hex[:8]}", redirect=True)}
    server = pullcache_factory({"storage": storage})
    url = f"{server.url}/v2/{PUSHED}/blobs/{RegistryClient(server.url).upload_blob(PUSHED, BODY)}"

    result = loadgen.herd(url, 2, follow=True)

    assert [(f.status, f.size, f.redirects) for f in result.fetches] == [(200, len(BODY), 1)] * 2
    assert all(0 < f.from_origin < 4096 for f in result.fetches)  # the 307's head and body, no layer bytes


def test_s3_distribution_keeps_blobs_in_its_bucket_and_serves_them_itself(
        s3_distribution: S3Distribution) -> None:
    s3_distribution.start()
    digest = RegistryClient(s3_distribution.url).upload_blob(PUSHED, BODY)

    status, _, _, size, _, redirects = blobget.get(f"{s3_distribution.url}/v2/{PUSHED}/blobs/{digest}", [])

    assert (status, size, redirects) == (200, len(BODY), 0)
    assert "AWS_CA_BUNDLE" not in (s3_distribution.process.env or {})
    listed = seaweed.client(s3_distribution.store.url).list_objects_v2(Bucket=s3_distribution.bucket,
                                                                      Prefix="gen0/docker/registry/v2/blobs/")
    assert [item["Size"] for item in listed.get("Contents", [])] == [len(BODY)]


def test_s3_distribution_with_redirects_on_answers_307_to_the_store(s3_distribution: S3Distribution) -> None:
    s3_distribution.redirect = True
    s3_distribution.start()
    digest = RegistryClient(s3_distribution.url).upload_blob(PUSHED, BODY)

    status, _, _, size, _, redirects = blobget.get(f"{s3_distribution.url}/v2/{PUSHED}/blobs/{digest}", [],
                                                   follow=True)

    assert (status, size, redirects) == (200, len(BODY), 1)


def test_s3_results_are_kept_apart_from_the_filesystem_table() -> None:
    assert parse(["--storage", "s3", "--only", "cached,redirect,herd"]).latest == "s3-latest"
    assert parse(["--only", "cached,herd"]).latest == "latest"


@pytest.mark.parametrize("argv", [["--only", "redirect"], ["--storage", "s3", "--only", "scale"]])
def test_a_scenario_the_storage_cannot_run_is_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        parse(argv)
