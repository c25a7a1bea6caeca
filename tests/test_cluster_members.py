"""Who is in the cluster, and whether coordination works: `pullcache_cluster_members`,
`pullcache_cluster_coordination_up`, `/readyz`'s `coordination`, the status page's replicas, with real
pullcache processes on one SeaweedFS bucket and a real redis-server, and with `workers: 2` (no Redis)."""
from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support import seaweed
from tests.support.pullcache_proc import PullcacheProcess
from tests.support.redis import RedisServer
from tests.support.seaweed import SeaweedFS
from tests.test_metrics_endpoint import Scrape
from tests.test_workers import children, peer_addresses

WAIT = 30.0  # seconds: a member's heartbeat entry lapses within about 6 s; a loaded machine may take longer


def wait_for(condition: Callable[[], object], what: str, seconds: float = WAIT) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"not within {seconds}s: {what}"
        time.sleep(0.2)


def scrape(proc: PullcacheProcess) -> Scrape:
    with urllib.request.urlopen(f"{proc.url}/metrics", timeout=10) as response:
        return Scrape(response.read().decode())


def members(proc: PullcacheProcess) -> float:
    return scrape(proc).value("pullcache_cluster_members")


def readyz(proc: PullcacheProcess) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"{proc.url}/readyz", timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def status_page(proc: PullcacheProcess) -> str:
    with urllib.request.urlopen(f"{proc.url}/", timeout=10) as response:
        return response.read().decode()


SECRET_ENV = "TEST_PULLCACHE_CLUSTER_SECRET"
SECRET = "members-test-secret-0123456789abcdef"


def replica(factory: Callable[..., PullcacheProcess], config: dict[str, Any]) -> PullcacheProcess:
    """A pullcache process advertising its own URL (as a replica behind a balancer would), with the cluster
    secret an advertised process needs, started."""
    proc = factory(config, env={SECRET_ENV: SECRET}, start=False)
    cluster = proc.config.setdefault("cluster", {})
    cluster["advertise"] = proc.url
    cluster.setdefault("secret_env", SECRET_ENV)
    return proc.start()


@pytest.fixture
def bucket_cluster(seaweed_server: SeaweedFS, redis_server: RedisServer) -> dict[str, Any]:
    """The config of replicas on one bucket (a fresh prefix) coordinating through the session's Redis."""
    s3 = seaweed_server.storage_config(seaweed.BUCKET, prefix=f"m{uuid.uuid4().hex[:12]}", timeout="5s")
    return {"storage": {"backend": "s3", "s3": s3}, "cluster": {"redis": redis_server.redis_url}}


def test_replicas_on_one_bucket_count_each_other(
        pullcache_factory: Callable[..., PullcacheProcess], bucket_cluster: dict[str, Any]) -> None:
    a, b = replica(pullcache_factory, bucket_cluster), replica(pullcache_factory, bucket_cluster)
    wait_for(lambda: members(a) == 2 and members(b) == 2, "both replicas counting two members")
    assert scrape(a).value("pullcache_cluster_coordination_up") == 1


def test_a_killed_replica_drops_out_of_the_members(
        pullcache_factory: Callable[..., PullcacheProcess], bucket_cluster: dict[str, Any]) -> None:
    a, b = replica(pullcache_factory, bucket_cluster), replica(pullcache_factory, bucket_cluster)
    wait_for(lambda: members(a) == 2, "two members")
    b.kill()  # SIGKILL: it says goodbye to nobody
    wait_for(lambda: members(a) == 1, "the killed replica gone from the members", seconds=20)
    assert b.url not in status_page(a)


def test_a_stopped_replica_leaves_at_once(
        pullcache_factory: Callable[..., PullcacheProcess], bucket_cluster: dict[str, Any]) -> None:
    a, b = replica(pullcache_factory, bucket_cluster), replica(pullcache_factory, bucket_cluster)
    wait_for(lambda: members(a) == 2, "two members")
    b.stop()
    wait_for(lambda: members(a) == 1, "the stopped replica gone", seconds=5)  # within a heartbeat, no lapse


def test_the_status_page_lists_the_replicas_and_coordination(
        pullcache_factory: Callable[..., PullcacheProcess], bucket_cluster: dict[str, Any]) -> None:
    a, b = replica(pullcache_factory, bucket_cluster), replica(pullcache_factory, bucket_cluster)
    wait_for(lambda: b.url in status_page(a) and a.url in status_page(a), "both replicas on a's page")
    page = status_page(b)
    assert 'id="cluster"' in page and a.url in page and b.url in page
    assert "coordination ok" in page and "redis" in page


def test_readyz_reports_coordination_degraded_while_redis_is_down_and_ok_when_it_is_back(
        pullcache_factory: Callable[..., PullcacheProcess]) -> None:
    redis = RedisServer().start()
    try:
        proc = pullcache_factory({"cluster": {"redis": redis.redis_url}})
        wait_for(lambda: readyz(proc)[1].get("coordination") == "ok", "coordination ok")
        redis.stop()
        wait_for(lambda: readyz(proc)[1].get("coordination") == "degraded", "coordination degraded")
        status, body = readyz(proc)
        assert status == 200 and body["status"] == "ready"
        assert "cluster.redis" in body["coordination_reason"]
        assert scrape(proc).value("pullcache_cluster_coordination_up") == 0
        assert "coordination degraded" in status_page(proc)
        redis.start()  # empty: the member entries are gone too
        wait_for(lambda: readyz(proc)[1].get("coordination") == "ok", "coordination ok again, no restart")
        assert "coordination_reason" not in readyz(proc)[1]
        wait_for(lambda: scrape(proc).value("pullcache_cluster_coordination_up") == 1, "the metric up again")
        wait_for(lambda: members(proc) == 1, "this process announced again to the new Redis")
    finally:
        redis.close()


def test_one_process_without_redis_is_one_member_with_coordination_up(
        pullcache_factory: Callable[..., PullcacheProcess]) -> None:
    proc = pullcache_factory()
    wait_for(lambda: members(proc) == 1, "one member")
    assert scrape(proc).value("pullcache_cluster_coordination_up") == 1
    status, body = readyz(proc)
    assert (status, body["coordination"]) == (200, "ok")


def test_two_workers_without_redis_count_each_other_and_a_killed_one_drops_out(
        pullcache_factory: Callable[..., PullcacheProcess], tmp_path: Path) -> None:
    (tmp_path / "tmp").mkdir()
    proc = pullcache_factory({"workers": 2}, env={"TMPDIR": str(tmp_path / "tmp")})
    wait_for(lambda: len(peer_addresses(proc)) == 2, "two workers")
    wait_for(lambda: members(proc) == 2, "two members")
    page = status_page(proc)  # whichever worker answers lists both
    assert all(f"pid {pid}" in page for pid in children(proc.process.pid))
    victim = next(iter(children(proc.process.pid)))
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: f"pid {victim}" not in status_page(proc), "the killed worker gone from the page")
    wait_for(lambda: len(children(proc.process.pid)) == 2 and members(proc) == 2, "its replacement counted")
