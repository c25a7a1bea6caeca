"""Multiprocess metric values (workers: N) are kept in memory and written to the worker's file when flushed.

Each case runs in a process of its own: the value class is chosen when pullcache.metrics is first imported,
with PROMETHEUS_MULTIPROC_DIR set, and this test process imported it without. The periodic flush is set to an
hour in the cases where only an explicit flush may write, so a thread that happens to wake cannot pass them.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest, multiprocess

from tests.test_metrics_endpoint import Scrape

PRELUDE = """
import os
from pullcache import metric_files
metric_files.FLUSH_SECONDS = {flush_seconds}
from pullcache import metrics
from pullcache.metric_children import child
from prometheus_client import CollectorRegistry, generate_latest, multiprocess

def on_disk():
    # the manifest requests counted in the files of every process so far
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    text = generate_latest(registry).decode()
    lines = [line for line in text.splitlines() if line.startswith("pullcache_http_requests_total{{")]
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if 'route="manifest"' in line)

requests = child(metrics.http_requests, "GET", "manifest", "200")
"""


def run(directory: Path, body: str, flush_seconds: float = 3600) -> str:
    """Run `body` after PRELUDE in a fresh interpreter whose metrics live in `directory`; its stdout."""
    source = PRELUDE.format(flush_seconds=flush_seconds) + textwrap.dedent(body)
    done = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)})
    assert done.returncode == 0, done.stderr
    return done.stdout


def on_disk(directory: Path) -> Scrape:
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(directory))
    return Scrape(generate_latest(registry).decode())


def test_an_increment_reaches_the_file_when_flushed(tmp_path: Path) -> None:
    out = run(tmp_path, """
        requests.inc(3)
        print(on_disk())
        metric_files.flush()
        print(on_disk())
    """)
    assert out.split() == ["0.0", "3.0"]


def test_the_exposition_shows_this_process_s_latest_counts(tmp_path: Path) -> None:
    out = run(tmp_path, """
        requests.inc(2)
        text = metrics.exposition().decode()
        print([line for line in text.splitlines() if line.startswith("pullcache_http_requests_total{")])
    """)
    assert 'route="manifest"} 2.0' in out


def test_changes_are_written_by_the_flushing_thread(tmp_path: Path) -> None:
    out = run(tmp_path, """
        import time
        requests.inc(4)
        child(metrics.http_request_duration, "manifest").observe(0.25)
        deadline = time.monotonic() + 10
        while on_disk() != 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        print(on_disk())
    """, flush_seconds=0.05)
    assert out.split() == ["4.0"]
    histogram = on_disk(tmp_path)
    assert histogram.value("pullcache_http_request_duration_seconds_count", route="manifest") == 1
    assert histogram.value("pullcache_http_request_duration_seconds_sum", route="manifest") == 0.25


def test_counts_are_written_at_exit(tmp_path: Path) -> None:
    run(tmp_path, "requests.inc(7)")
    assert on_disk(tmp_path).value("pullcache_http_requests_total", route="manifest") == 7


def test_a_gauge_set_is_written_at_once(tmp_path: Path) -> None:
    out = run(tmp_path, """
        metrics.store_max_bytes.set(1234)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        print([line for line in generate_latest(registry).decode().splitlines()
               if line.startswith("pullcache_store_max_bytes ")])
    """)
    assert "pullcache_store_max_bytes 1234.0" in out


def test_a_forked_child_counts_in_a_file_of_its_own(tmp_path: Path) -> None:
    out = run(tmp_path, """
        requests.inc(10)
        pid = os.fork()
        if pid == 0:
            requests.inc(1)   # the parent's unwritten 10 are not the child's to write
            metric_files.flush()
            os._exit(0)
        os.waitpid(pid, 0)
        print(on_disk())
        metric_files.flush()
        print(on_disk())
    """)
    assert out.split() == ["1.0", "11.0"]
    assert len(list(tmp_path.glob("counter_*.db"))) == 2


def test_a_process_writes_and_flushes_only_once_it_changes_a_value(tmp_path: Path) -> None:
    """The supervisor makes the metrics (importing the app) but serves nothing: no thread of its own, and a
    forked worker that has counted nothing yet has no file."""
    out = run(tmp_path, """
        import threading
        def flushing():
            return any(thread.name == "pullcache-metric-files" for thread in threading.enumerate())
        print(flushing())
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        requests.inc()
        print(flushing())
    """)
    assert out.split() == ["False", "True"]
    assert len(list(tmp_path.glob("counter_*.db"))) == 1  # the parent's; none of the child's


def test_a_second_install_changes_nothing(tmp_path: Path) -> None:
    out = run(tmp_path, """
        from prometheus_client import values
        before = values.ValueClass
        metric_files.install()
        pid = os.fork()  # a second fork hook holding the lock would hang here
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        print(values.ValueClass is before)
    """)
    assert out.split() == ["True"]
