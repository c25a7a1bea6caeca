"""The benchmark's cluster rows (`python -m bench --only replicas-herd,workers,aggregate`): each scenario runs on
small layers and short wrk runs against the real parts (3 pullcache replicas with Redis on SeaweedFS behind
haproxy, 3 Distribution proxies on one bucket behind haproxy, `workers: 1`/`2`, nginx), and its figures reach
the table. Only their shape and pullcache's fetch count are checked, never a speed."""
from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import cluster, report
from bench.results import Results
from bench.run import parse
from bench.scenarios import Settings
from bench.stack import Layer
from bench.throttle import Throttle
from tests.support.images import build_image, push_big_layer, push_image
from tests.support.registry_client import RegistryClient
from tests.support.seaweed import SeaweedFS
from tests.support.seed import ADMIN_PASSWORD, ADMIN_USER, Upstream

LAYER = 3 * 1024 * 1024 + 11
SMALL = Settings(wrk_seconds=1, herd=4, repeats=1)


def _layer(upstream: Upstream, repo: str) -> Layer:
    client = RegistryClient(upstream.url, username=ADMIN_USER, password=ADMIN_PASSWORD)
    blob = push_big_layer(client, repo, LAYER, seed=uuid.uuid4().hex)
    return Layer(repo, blob.digest, blob.size)


@pytest.fixture(scope="module")
def throttles(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Throttle]]:
    """One upstream path per contender, as the bench gives them."""
    started = [Throttle(upstream.host, tmp_path_factory.mktemp("throttle")).start() for _ in range(2)]
    yield started
    for throttle in started:
        throttle.stop()


@pytest.fixture(scope="module")
def pullcache_cluster(throttles: list[Throttle], seaweed_server: SeaweedFS,
                      tmp_path_factory: pytest.TempPathFactory) -> Iterator[cluster.PullcacheCluster]:
    started = cluster.PullcacheCluster(tmp_path_factory.mktemp("replicas"), throttles[0], seaweed_server)
    try:
        yield started.start()
    finally:
        started.stop()


def test_replicas_herd_measures_both_clusters(
        upstream: Upstream, throttles: list[Throttle], seaweed_server: SeaweedFS,
        pullcache_cluster: cluster.PullcacheCluster, tmp_path: Path) -> None:
    layer = _layer(upstream, f"benchcluster/herd-{uuid.uuid4().hex[:8]}")
    distribution = cluster.DistributionCluster(tmp_path / "distribution", throttles[1], seaweed_server)
    try:
        distribution.start()
        figures = {c.name: cluster.replicas_herd(c, layer, SMALL) for c in (pullcache_cluster, distribution)}
    finally:
        distribution.stop()

    assert figures["pullcache"]["replicas_herd_fetches"] == 1
    assert figures["pullcache"]["replicas_herd_upstream_mib"] == pytest.approx(LAYER / 2**20, rel=0.01)
    assert figures["distribution"]["replicas_herd_fetches"] >= 1
    assert set(figures["pullcache"]) == set(figures["distribution"]) == set(cluster.HERD_KEYS)
    results = Results()
    for name, values in figures.items():
        for key, value in values.items():
            results.add(key, name, value)
    assert "cold herd over 3 replicas behind haproxy: upstream fetches" in report.table(results)


def test_aggregate_measures_three_replicas_one_replica_and_direct(
        upstream: Upstream, pullcache_cluster: cluster.PullcacheCluster) -> None:
    layer = _layer(upstream, f"benchcluster/cached-{uuid.uuid4().hex[:8]}")
    results = Results()

    cluster.aggregate_round(pullcache_cluster, layer, SMALL, results, clients=(2,))

    rows = cluster.aggregate_rows(results)
    assert [row.split("|")[1].strip().split(":")[0] for row in rows] == [
        "aggregate, 2 clients, 3 replicas behind haproxy", "aggregate, 2 clients, 1 replica behind haproxy",
        "aggregate, 2 clients, 1 replica direct"]
    assert all("haproxy" in row and "weed" in row and "blobget" in row for row in rows)
    assert "\n".join(rows) in report.table(results)


def test_workers_measures_one_and_two_workers_and_nginx(upstream: Upstream, throttles: list[Throttle],
                                                        tmp_path: Path) -> None:
    image = build_image(f"benchcluster/multi-{uuid.uuid4().hex[:8]}", "v1", multi=False)
    push_image(RegistryClient(upstream.url, username=ADMIN_USER, password=ADMIN_PASSWORD), image)
    results = Results()

    cluster.workers_round(throttles[0], image, SMALL, results, tmp_path)

    figures = results.extra[cluster.WORKERS_KEY]
    assert isinstance(figures, dict)
    assert set(figures) == set(cluster.WORKERS_FIGURES)
    rows = cluster.workers_rows(results)
    assert len(rows) == 2 and "workers: 2 ÷ workers: 1" in rows[0]
    assert "\n".join(rows) in report.table(results)


@pytest.mark.parametrize(("argv", "latest"), [
    (["--only", "workers"], "cluster-latest"),
    (["--storage", "s3", "--only", "replicas-herd,aggregate"], "s3-cluster-latest"),
    (["--storage", "s3", "--only", "herd,replicas-herd"], "s3-latest"),
    (["--storage", "s3"], "s3-latest"),
])
def test_a_run_of_cluster_scenarios_only_keeps_the_full_tables(argv: list[str], latest: str) -> None:
    assert parse(argv).latest == latest


@pytest.mark.parametrize("argv", [["--only", "replicas-herd"], ["--only", "aggregate"],
                                  ["--storage", "s3", "--only", "workers"]])
def test_a_cluster_scenario_the_storage_cannot_run_is_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        parse(argv)
