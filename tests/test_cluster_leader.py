"""Background work in one process at a time: of several pullcache processes on one storage.path, only the
holder of the `eviction` lease runs GC (and eviction passes); when it is killed another takes over."""
from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.procs import http_status
from tests.support.pullcache_proc import PullcacheProcess
from tests.support.redis import RedisServer

# The lease is retried every few seconds; a dead holder's flock is gone at once, its Redis key within 10 s.
TAKEOVER_SECONDS = {"embedded": 10.0, "redis": 20.0}


def _metric(proc: PullcacheProcess, name: str) -> float:
    with urllib.request.urlopen(f"{proc.url}/metrics", timeout=10) as response:
        text = response.read().decode()
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def _gc_runs(proc: PullcacheProcess) -> float:
    return _metric(proc, "pullcache_gc_runs_total")


def _wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"not within {seconds}s: {what}"
        time.sleep(0.2)


@pytest.mark.parametrize("coordination", ["embedded", "redis"])
def test_one_process_of_a_store_runs_gc_and_another_takes_over_when_it_dies(
        coordination: str, pullcache_factory: Callable[..., PullcacheProcess], tmp_path: Path,
        request: pytest.FixtureRequest) -> None:
    shared = {"storage": {"path": str(tmp_path / "shared")}, "gc": {"interval": "1s"}}
    if coordination == "redis":
        shared["cluster"] = {"redis": request.getfixturevalue("redis_server").redis_url}
    a, b = pullcache_factory(shared), pullcache_factory(shared)
    _wait_for(lambda: _gc_runs(a) + _gc_runs(b) >= 3, 20, "three GC runs")
    runs = {a: _gc_runs(a), b: _gc_runs(b)}
    (leader,) = [proc for proc, count in runs.items() if count > 0]
    (other,) = [proc for proc in (a, b) if proc is not leader]
    assert runs[other] == 0
    assert _metric(leader, 'pullcache_cluster_lease_held{lease="eviction"}') == 1
    assert _metric(other, 'pullcache_cluster_lease_held{lease="eviction"}') == 0

    leader.kill()  # SIGKILL: it releases nothing itself

    _wait_for(lambda: _gc_runs(other) > 0, TAKEOVER_SECONDS[coordination], "the other process running GC")
    assert _metric(other, 'pullcache_cluster_lease_held{lease="eviction"}') == 1


def test_a_process_serves_while_redis_is_down_and_leads_once_it_is_back(
        pullcache_factory: Callable[..., PullcacheProcess]) -> None:
    redis = RedisServer().start()
    try:
        redis.stop()
        proc = pullcache_factory({"cluster": {"redis": redis.redis_url}})
        assert http_status(f"{proc.url}/v2/") == 200
        assert _metric(proc, 'pullcache_cluster_lease_held{lease="eviction"}') == 0
        redis.start()
        _wait_for(lambda: _metric(proc, 'pullcache_cluster_lease_held{lease="eviction"}') == 1, 10,
                  "the lease taken once Redis is back")
        proc.wait_for_log("cannot take or renew the 'eviction' lease")
        proc.wait_for_log("took the 'eviction' lease")
    finally:
        redis.close()
