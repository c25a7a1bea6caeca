"""Logs: text or one JSON object per line, an access line per request with what an operator greps for,
and an upstream failure logged once with its cause however many clients were waiting on it."""
from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from pullcache.app import build_app
from pullcache.config import LogConfig, build_config
from pullcache.logs import HANDLER_NAME, TEXT_FORMAT, TextFormatter, configure_logging, emit, flush_logs
from tests.fault_upstream import FakeRegistry, Stall
from tests.registry_api import push_image
from tests.support.pullcache_proc import PullcacheProcess
from tests.support_faults import Held

ACCESS_FIELDS = {"method", "path", "route", "status", "bytes", "aborted", "duration_ms", "cache", "upstream",
                 "remote", "user_agent"}


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """configure_logging() replaces the root logger's handlers; give pytest its own back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)


class AccessLines(logging.Handler):
    """Hears pullcache.access records, so a test can await a line the server writes after the client has
    its last byte (a request ends on the server only after its response went out)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self._changed = asyncio.Event()

    @property
    def count(self) -> int:
        return len(self.records)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self._changed.set()

    async def wait_for(self, count: int) -> None:
        await self.wait_until(lambda: self.count >= count)

    async def wait_until(self, done: Callable[[], bool]) -> None:
        while not done():
            self._changed.clear()
            await asyncio.wait_for(self._changed.wait(), 10)

    def logged(self, method: str, path: str) -> bool:
        return any((record.method, record.path) == (method, path) for record in self.records)  # type: ignore[attr-defined]


@pytest.fixture
def access_lines() -> Iterator[AccessLines]:
    handler = AccessLines()
    logger = logging.getLogger("pullcache.access")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line parsed; any line that is not a JSON object fails the test."""
    entries = [json.loads(line) for line in text.splitlines()]
    assert all(isinstance(entry, dict) for entry in entries)
    return entries


def access_entries(text: str) -> list[dict[str, Any]]:
    return [entry for entry in json_lines(text) if entry["logger"] == "pullcache.access"]


@pytest.fixture
async def client(aiohttp_client: Any, tmp_path: Path) -> TestClient:
    config = build_config({"storage": {"path": str(tmp_path / "data")}, "log": {"format": "json"},
                           "upstreams": [{"name": "docker.io", "url": "http://127.0.0.1:9", "default": True}]})
    return await aiohttp_client(build_app(config))


def test_json_line_has_ts_level_logger_msg_and_the_extra_fields(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LogConfig(level="info", format="json"))
    logging.getLogger("pullcache.test").info("fetched %s", "alpine", extra={"upstream": "docker.io", "bytes": 42})
    flush_logs()
    [entry] = json_lines(capsys.readouterr().err)
    assert entry["level"] == "info"
    assert entry["logger"] == "pullcache.test"
    assert entry["msg"] == "fetched alpine"
    assert entry["upstream"] == "docker.io"
    assert entry["bytes"] == 42
    assert entry["ts"].endswith("Z") and "T" in entry["ts"]


def test_json_traceback_stays_inside_its_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LogConfig(level="info", format="json"))
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        logging.getLogger("pullcache.test").exception("it broke")
    flush_logs()
    [entry] = json_lines(capsys.readouterr().err)
    assert entry["level"] == "error"
    assert entry["msg"] == "it broke"
    assert "Traceback" in entry["exc"] and "ValueError: bad" in entry["exc"]


def test_python_warnings_become_json_lines_too(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LogConfig(level="info", format="json"))
    warnings.warn("something looks wrong", UserWarning, stacklevel=1)
    flush_logs()
    [entry] = json_lines(capsys.readouterr().err)
    assert entry["logger"] == "py.warnings"
    assert "something looks wrong" in entry["msg"]


def test_text_format_is_one_readable_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LogConfig(level="info", format="text"))
    logging.getLogger("pullcache.test").warning("upstream %s is slow", "docker.io")
    flush_logs()
    [line] = capsys.readouterr().err.splitlines()
    assert line.endswith(" WARNING pullcache.test: upstream docker.io is slow")


def test_level_comes_from_the_config(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LogConfig(level="warning", format="text"))
    logging.getLogger("pullcache.test").info("not shown")
    logging.getLogger("pullcache.test").warning("shown")
    flush_logs()
    assert [line.split(": ", 1)[1] for line in capsys.readouterr().err.splitlines()] == ["shown"]


def test_configuring_twice_does_not_print_twice(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LogConfig(level="info", format="text"))
    configure_logging(LogConfig(level="info", format="json"))
    logging.getLogger("pullcache.test").info("once")
    flush_logs()
    assert len(json_lines(capsys.readouterr().err)) == 1


async def test_each_request_gets_one_access_line_with_its_fields(
        client: TestClient, capsys: pytest.CaptureFixture[str], access_lines: AccessLines) -> None:
    configure_logging(LogConfig(level="debug", format="json"))  # here: capsys' stderr of this phase
    status_page = await client.get("/", headers={"User-Agent": "curl/8.0"})
    page = await status_page.read()
    await client.get("/no/such/page?x=1")
    await client.head("/healthz")
    await client.get("/v2/library/alpine/manifests/latest?ns=docker.io")
    await access_lines.wait_for(4)
    flush_logs()
    entries = access_entries(capsys.readouterr().err)
    assert [(e["method"], e["path"], e["route"]) for e in entries] == [
        ("GET", "/", "status"), ("GET", "/no/such/page?x=1", "other"), ("HEAD", "/healthz", "healthz"),
        ("GET", "/v2/library/alpine/manifests/latest?ns=docker.io", "manifest")]
    for entry in entries:
        assert entry.keys() >= ACCESS_FIELDS
        assert entry["remote"] == "127.0.0.1"
        assert entry["duration_ms"] > 0
    page_line, missing, head, proxied = entries
    assert (page_line["status"], page_line["bytes"], page_line["user_agent"]) == (200, len(page), "curl/8.0")
    assert page_line["upstream"] is None and page_line["cache"] is None
    assert page_line["level"] == "info"
    assert (missing["status"], missing["level"]) == (404, "info")
    assert (head["status"], head["bytes"], head["level"]) == (200, 0, "debug")  # probes are debug lines
    assert proxied["upstream"] == "docker.io"
    assert f'GET / 200 {len(page)}B' in page_line["msg"] and 'ua="curl/8.0"' in page_line["msg"]


async def test_access_lines_of_proxied_pulls_name_the_upstream_and_cache_result(
        aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        access_lines: AccessLines) -> None:
    registry = await FakeRegistry().start(aiohttp_server)
    data = os.urandom(100 * 1024)
    digest = registry.add_blob(data)
    config = build_config({"storage": {"path": str(tmp_path / "data")},
                           "upstreams": [{"name": "docker.io", "url": registry.url, "default": True}]})
    client = await aiohttp_client(build_app(config))
    configure_logging(LogConfig(level="info", format="json"))
    for _ in range(2):
        async with client.get(f"/v2/library/app/blobs/{digest}") as response:
            assert await response.read() == data
    await access_lines.wait_for(2)
    flush_logs()
    lines = [entry for entry in access_entries(capsys.readouterr().err) if entry["route"] == "blob"]
    assert [(e["cache"], e["upstream"], e["status"], e["bytes"], e["aborted"]) for e in lines] == [
        ("miss", "docker.io", 200, len(data), False), ("hit", "docker.io", 200, len(data), False)]
    assert "cache=miss upstream=docker.io" in lines[0]["msg"]


async def test_the_access_line_names_the_upstream_the_handler_used_though_a_push_made_the_name_local_meanwhile(
        aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        access_lines: AccessLines) -> None:
    registry = await FakeRegistry().start(aiohttp_server)
    registry.add_manifest("team/app", "v1", b'{"schemaVersion": 2, "config": {"mediaType": "application/vnd.oci.'
                          b'image.config.v1+json", "digest": "sha256:' + b"0" * 64 + b'", "size": 2}, "layers": []}')
    held = Held(registry, "/v2/team/app/manifests/v1")
    registry.faults[held.path] = held
    config = build_config({"storage": {"path": str(tmp_path / "data")},
                           "upstreams": [{"name": "docker.io", "url": registry.url, "default": True}],
                           "local": {"anonymous_push": True}})
    client = await aiohttp_client(build_app(config))
    configure_logging(LogConfig(level="info", format="json"))
    pulling = asyncio.ensure_future(client.get("/v2/team/app/manifests/v1"))  # bare name: the default upstream
    await held.arrived.wait()
    await push_image(client, "team/app", "v2")  # from now on team/app is a local repository
    held.release.set()
    async with await pulling as response:
        assert response.status == 200
    await access_lines.wait_until(lambda: access_lines.logged("GET", "/v2/team/app/manifests/v1"))
    flush_logs()
    [pull] = [entry for entry in access_entries(capsys.readouterr().err)
              if entry["method"] == "GET" and entry["path"] == "/v2/team/app/manifests/v1"]
    assert (pull["upstream"], pull["cache"]) == ("docker.io", "miss")


def test_a_server_configured_for_json_writes_only_json_lines(
        pullcache_factory: Callable[..., PullcacheProcess]) -> None:
    proc = pullcache_factory({"log": {"format": "json", "level": "debug"}})
    for path in ("/healthz", "/v2/", "/no/such/page", "/metrics", "/"):
        try:
            urllib.request.urlopen(proc.url + path, timeout=10).read()
        except urllib.error.HTTPError as error:
            assert error.code == 404
    proc.stop()
    lines = [line for line in proc.log_text().splitlines() if not line.startswith("--- start: ")]
    entries = json_lines("\n".join(lines))
    routes = [entry["route"] for entry in entries if entry["logger"] == "pullcache.access"]
    assert routes[-5:] == ["healthz", "base", "other", "metrics", "status"]


async def stalled_blob(aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path,
                       read_timeout: str) -> tuple[TestClient, str, bytes, Stall]:
    """A pullcache whose upstream stalls a 512 KiB blob after 64 KiB (until `stall.release` is set):
    its client, the blob's path, the blob and the stall."""
    data = os.urandom(512 * 1024)
    registry = await FakeRegistry().start(aiohttp_server)
    digest = registry.add_blob(data)
    stall = Stall(data, after=64 * 1024, headers={"Docker-Content-Digest": digest})
    path = f"/v2/library/stalled/blobs/{digest}"
    registry.faults[path] = stall
    config = build_config({"storage": {"path": str(tmp_path / "data")}, "upstreams": [
        {"name": "docker.io", "url": registry.url, "default": True, "read_timeout": read_timeout}]})
    return await aiohttp_client(build_app(config)), path, data, stall


async def test_an_upstream_failure_is_logged_once_not_per_waiting_client(
        aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        access_lines: AccessLines) -> None:
    """Four clients wait on one blob fetch that stalls; the cause is logged once, each client gets its line."""
    client, path, data, stall = await stalled_blob(aiohttp_client, aiohttp_server, tmp_path, read_timeout="700ms")

    async def pull() -> str:
        try:
            async with client.get(path) as response:
                body = await response.read()
                return "complete" if body == data else f"{response.status} {len(body)}B"
        except aiohttp.ClientPayloadError:
            return "cut short"

    caplog.set_level(logging.INFO)
    try:
        first = asyncio.create_task(pull())
        await stall.sent.wait()
        results = await asyncio.gather(first, *(pull() for _ in range(3)))
    finally:
        stall.release.set()
    await access_lines.wait_for(4)
    assert results == ["cut short"] * 4  # every waiting client sees a broken transfer, none a bad blob
    causes = [r for r in caplog.records if r.levelno >= logging.WARNING and "read_timeout" in r.getMessage()]
    assert len(causes) == 1, [r.getMessage() for r in causes]
    access = [r for r in caplog.records if r.name == "pullcache.access" and r.route == "blob"]
    assert len(access) == 4
    assert all("read_timeout" not in r.getMessage() for r in access)


async def test_a_transfer_cut_short_logs_the_bytes_it_sent_and_says_aborted(
        aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        access_lines: AccessLines) -> None:
    """The upstream stalls mid-blob, so pullcache cuts the client's connection after the headers promised
    the whole blob: the line counts the bytes that went out, not that Content-Length, and says aborted."""
    client, path, data, stall = await stalled_blob(aiohttp_client, aiohttp_server, tmp_path, read_timeout="500ms")
    caplog.set_level(logging.INFO, logger="pullcache.access")
    received = bytearray()
    try:
        with pytest.raises(aiohttp.ClientPayloadError):
            async with client.get(path) as response:
                async for chunk in response.content.iter_any():
                    received += chunk
    finally:
        stall.release.set()
    await access_lines.wait_for(1)
    [line] = [r for r in caplog.records if r.name == "pullcache.access" and r.route == "blob"]
    assert (line.status, line.aborted) == (200, True)
    assert 0 < line.bytes == len(received) < len(data)
    assert f" 200 {len(received)}B aborted " in line.getMessage()


class StuckStream(io.StringIO):
    """stderr on a full pipe or a stalled disk: each write waits until `flowing` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.flowing = threading.Event()

    def write(self, text: str) -> int:
        self.flowing.wait(5)
        return super().write(text)


def test_a_stalled_log_stream_does_not_hold_up_the_code_that_logs(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = StuckStream()
    monkeypatch.setattr(sys, "stderr", stream)
    configure_logging(LogConfig(level="info", format="json"))
    started = time.monotonic()
    logging.getLogger("pullcache.access").info("GET /v2/ 200", extra={"status": 200})
    assert time.monotonic() - started < 1  # the event loop would have stood still meanwhile
    stream.flowing.set()
    flush_logs()
    [entry] = json_lines(stream.getvalue())
    assert (entry["msg"], entry["status"]) == ("GET /v2/ 200", 200)


def test_lines_keep_the_arguments_as_they_were_when_logged(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LogConfig(level="info", format="text"))
    names = ["alpine"]
    logging.getLogger("pullcache.test").info("pulled %s", names)
    names.append("later")
    flush_logs()
    [line] = capsys.readouterr().err.splitlines()
    assert line.endswith(" pullcache.test: pulled ['alpine']")


def test_every_line_is_written_before_the_process_exits(tmp_path: Path) -> None:
    script = ("import logging\n"
              "from pullcache.config import LogConfig\n"
              "from pullcache.logs import configure_logging\n"
              "configure_logging(LogConfig(level='info', format='json'))\n"
              "for i in range(2000):\n"
              "    logging.getLogger('pullcache.test').info('line %d', i)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    assert [entry["msg"] for entry in json_lines(done.stderr)] == [f"line {i}" for i in range(2000)]


def test_a_forked_child_keeps_logging(tmp_path: Path) -> None:
    script = ("import logging, os\n"
              "from pullcache.config import LogConfig\n"
              "from pullcache.logs import configure_logging, flush_logs\n"
              "configure_logging(LogConfig(level='info', format='text'))\n"
              "logging.getLogger('pullcache.test').info('parent before fork')\n"
              "pid = os.fork()\n"
              "if pid == 0:\n"
              "    logging.getLogger('pullcache.test').info('from the child')\n"
              "    flush_logs()\n"
              "    os._exit(0)\n"
              "os.waitpid(pid, 0)\n"
              "logging.getLogger('pullcache.test').info('parent after the child')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    messages = [line.split(": ", 1)[1] for line in done.stderr.splitlines()]
    assert messages == ["parent before fork", "from the child", "parent after the child"]


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def test_lines_logged_in_a_burst_go_out_in_few_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """One write, and one wake-up of the writer thread, per request was the access log's cost under load."""
    stream = CountingStream()
    monkeypatch.setattr(sys, "stderr", stream)
    configure_logging(LogConfig(level="info", format="text"))
    for i in range(500):
        logging.getLogger("pullcache.access").info("GET /v2/ 200 #%d", i)
    flush_logs()
    assert len(stream.getvalue().splitlines()) == 500
    assert stream.writes < 100


@pytest.mark.parametrize("created", [1_700_000_000.0, 1_700_000_000.999, 1_700_000_001.0425, 1_700_003_600.5])
def test_text_lines_carry_the_time_logging_itself_would_write(created: float) -> None:
    formatter = TextFormatter()
    record = logging.LogRecord("pullcache.test", logging.INFO, "", 0, "at %s", ("once",), None)
    record.created, record.msecs = created, (created - int(created)) * 1000
    for _ in range(2):  # the second line of a second reuses its formatted time
        assert formatter.format(record) == logging.Formatter(TEXT_FORMAT).format(record)


# ------------------------------------------------------------------ lines without a LogRecord (logs.emit)

def _written_both_ways(capsys: pytest.CaptureFixture[str], log_format: str) -> tuple[str, str]:
    """One line through emit's cheap path (only the writer listens) and one through a LogRecord."""
    configure_logging(LogConfig(level="info", format=log_format))
    root = logging.getLogger()
    others = [h for h in root.handlers if h.get_name() != HANDLER_NAME]  # pytest's capture
    logger = logging.getLogger("pullcache.access")
    fields: dict[str, object] = {"method": "GET", "status": 200, "aborted": False, "cache": None, "ua": 'a "b"'}
    keys, values = tuple(fields), tuple(fields.values())
    for handler in others:
        root.removeHandler(handler)
    try:
        with pytest.MonkeyPatch.context() as patch:  # the cheap path makes no record
            patch.setattr(logger, "handle", lambda record: pytest.fail(f"a LogRecord was made: {record}"))
            emit(logger, logging.INFO, "GET /v2/ 200", keys, values)
    finally:
        for handler in others:
            root.addHandler(handler)
    logger.info("GET /v2/ 200", extra=fields)
    flush_logs()
    cheap, recorded = capsys.readouterr().err.splitlines()
    return cheap, recorded


def test_an_emitted_text_line_reads_as_a_logged_one(capsys: pytest.CaptureFixture[str]) -> None:
    cheap, recorded = _written_both_ways(capsys, "text")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO pullcache.access: GET /v2/ 200", cheap)
    assert cheap[24:] == recorded[24:]  # past the time


def test_an_emitted_json_line_reads_as_a_logged_one(capsys: pytest.CaptureFixture[str]) -> None:
    cheap, recorded = (json.loads(line) for line in _written_both_ways(capsys, "json"))
    assert cheap.pop("ts").endswith("Z") and recorded.pop("ts").endswith("Z")
    assert list(cheap.items()) == list(recorded.items())
    assert cheap["status"] == 200 and cheap["cache"] is None


def test_emit_gives_a_listening_handler_its_record(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pullcache.access")
    emit(logging.getLogger("pullcache.access"), logging.INFO, "GET /v2/ 200", ("status",), (200,))
    [record] = [r for r in caplog.records if r.name == "pullcache.access"]
    assert (record.getMessage(), record.status) == ("GET /v2/ 200", 200)
