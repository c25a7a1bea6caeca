"""`workers: N`: one supervisor, N pullcache processes on one port and one store, as an operator runs it.

Which worker answered a connection is read from the kernel (/proc: the accepted socket's inode among each
worker's descriptors), so no response needs to name its process.
"""
from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from pullcache.cache.store import CLEAN_SHUTDOWN
from tests.registry_api import OCI_MANIFEST, image_manifest
from tests.support.gated_front import GatedFront
from tests.support.htpasswd import write_htpasswd
from tests.support.procs import ManagedProcess, free_port
from tests.support.pullcache_proc import PullcacheProcess, docker_hub_upstream
from tests.support.registry_client import RegistryClient
from tests.support.seed import ADMIN_PASSWORD, ADMIN_USER, Upstream
from tests.test_auth_tls import self_signed
from tests.test_metrics_endpoint import Scrape

REPO_ROOT = Path(__file__).resolve().parents[1]
WAIT = 30.0  # seconds for anything a loaded machine may take: a worker starting, a lease moving


def wait_for(condition: Callable[[], object], what: str, seconds: float = WAIT) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"not within {seconds}s: {what}"
        time.sleep(0.1)


def children(pid: int) -> set[int]:
    """The live processes whose parent is pid (zombies excluded)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == pid and state != "Z":
            found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def socket_owners(pids: set[int]) -> dict[int, int]:
    """Socket inode -> the pid (of pids) holding it."""
    owners = {}
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                link = os.readlink(fd)
            except OSError:
                continue
            if link.startswith("socket:["):
                owners[int(link[8:-1])] = pid
    return owners


def accepted_inodes(server_port: int, client_ports: set[int]) -> dict[int, int]:
    """Client port -> inode of the server's socket for that connection."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, remote = int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16)
            if local == server_port and remote in client_ports and int(fields[9]):
                found[remote] = int(fields[9])
    return found


def request(sock: socket.socket, path: str) -> bytes:
    """One HTTP/1.1 GET on an open connection, which stays open (keep-alive); the response's head."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: pullcache\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(65536)
        assert chunk, "connection closed before a response"
        head += chunk
    return head


def answering_pids(host: str, port: int, workers: set[int], connections: int = 16,
                   path: str = "/healthz", tls: ssl.SSLContext | None = None) -> list[int]:
    """Open `connections` connections (over TLS with `tls`), one request each, and say which worker holds each."""
    def connect() -> socket.socket:
        sock = socket.create_connection((host, port), timeout=10)
        return tls.wrap_socket(sock, server_hostname=host) if tls else sock
    with ExitStack() as stack:
        socks = [stack.enter_context(connect()) for _ in range(connections)]
        for sock in socks:
            assert request(sock, path).startswith(b"HTTP/1.1 200 ")
        ports = {sock.getsockname()[1] for sock in socks}
        inodes = accepted_inodes(port, ports)
        owners = socket_owners(workers)
        return [owners[inodes[client]] for client in sorted(ports) if inodes.get(client) in owners]


def peer_addresses(proc: PullcacheProcess) -> dict[int, str]:
    """pid -> the internal address its start-up line names, of each worker started so far."""
    return {int(pid): url for pid, url in
            re.findall(r"worker \d+ \(pid (\d+)\) started; peers reach it at (\S+)", proc.log_text())}


def scrape(proc: PullcacheProcess) -> Scrape:
    with urllib.request.urlopen(f"{proc.url}/metrics", timeout=10) as response:
        return Scrape(response.read().decode())


@pytest.fixture
def two_workers(pullcache_factory: Callable[..., PullcacheProcess], tmp_path: Path) -> Iterator[PullcacheProcess]:
    """Two workers; their temp files (the metrics directory) go to `tmp_path/tmp`."""
    (tmp_path / "tmp").mkdir()
    proc = pullcache_factory({"workers": 2, "storage": {"max_size": "3GiB"}}, env={"TMPDIR": str(tmp_path / "tmp")})
    wait_for(lambda: len(children(proc.process.pid)) == 2 and len(peer_addresses(proc)) == 2, "two workers")
    yield proc


def workers_of(proc: PullcacheProcess) -> set[int]:
    return children(proc.process.pid)


def test_two_workers_answer_on_one_port(two_workers: PullcacheProcess) -> None:
    pids = answering_pids("127.0.0.1", two_workers.port, workers_of(two_workers))
    assert len(pids) == 16 and set(pids) == workers_of(two_workers)


def test_the_start_up_line_is_said_once_for_all_workers(two_workers: PullcacheProcess) -> None:
    lines = [line for line in two_workers.log_text().splitlines() if " listening on " in line]
    assert len(lines) == 1 and "; 2 workers" in lines[0]


def test_each_worker_answers_on_its_own_internal_address(two_workers: PullcacheProcess) -> None:
    addresses = peer_addresses(two_workers)
    assert set(addresses) == workers_of(two_workers) and len(set(addresses.values())) == 2
    for pid, url in addresses.items():
        host, port = re.fullmatch(r"http://([\d.]+):(\d+)", url).groups()  # type: ignore[union-attr]
        assert answering_pids(host, int(port), {pid}, connections=2) == [pid, pid]


def test_a_pull_through_two_workers_serves_the_image(two_workers: PullcacheProcess, upstream: Upstream) -> None:
    image = upstream["library/alpine:latest"]
    client = RegistryClient(two_workers.url)
    for _ in range(4):
        assert client.get_manifest("library/alpine", "latest", [image.media_type]).status == 200
    for layer in image.platforms["linux/amd64"].layers:
        for _ in range(4):  # over new connections: both workers, the cold fill and the cached copy
            assert client.get_blob("library/alpine", layer.digest) == layer.data


def test_metrics_count_the_requests_of_every_worker(two_workers: PullcacheProcess) -> None:
    # /readyz, which nothing else asks here: a worker's counts reach the scrape up to half a second late, so a
    # count taken before the requests could miss the start-up's own /healthz requests
    before = scrape(two_workers).value("pullcache_http_requests_total", route="readyz")
    pids = answering_pids("127.0.0.1", two_workers.port, workers_of(two_workers), connections=20, path="/readyz")
    assert set(pids) == workers_of(two_workers)

    wait_for(lambda: scrape(two_workers).value("pullcache_http_requests_total", route="readyz") == before + 20,
             "20 more readyz requests counted")
    result = scrape(two_workers)
    assert result.value("pullcache_store_max_bytes") == 3 * 1024**3  # one store: not once per worker
    assert all("pid" not in sample.labels for family in result.families for sample in family.samples)
    with urllib.request.urlopen(f"{two_workers.url}/", timeout=10) as response:  # the status page, too
        assert response.status == 200


def test_coordination_is_up_on_a_host_of_workers_without_redis(two_workers: PullcacheProcess) -> None:
    """The lowest over the live workers: the supervisor, which serves nothing, has no say."""
    wait_for(lambda: scrape(two_workers).value("pullcache_cluster_members") == 2, "both workers in the roster")
    assert scrape(two_workers).value("pullcache_cluster_coordination_up") == 1


def test_sigterm_stops_every_worker_and_marks_the_store_clean(
        two_workers: PullcacheProcess, tmp_path: Path) -> None:
    pids = workers_of(two_workers)

    two_workers.stop()

    assert two_workers.process.returncode == 0
    assert not any(alive(pid) for pid in pids)
    log = two_workers.log_text()
    assert "Traceback" not in log
    assert len(re.findall(r"worker \d+ \(pid \d+\) stopped", log)) == 2
    assert index_meta(two_workers, CLEAN_SHUTDOWN) == "1"
    assert list((tmp_path / "tmp").iterdir()) == []  # the metrics directory is gone with the workers


def test_a_killed_worker_is_replaced(two_workers: PullcacheProcess) -> None:
    victim = min(workers_of(two_workers))
    reconciles = two_workers.log_text().count("reconciled index with disk")  # a new index is, at the first start
    os.kill(victim, signal.SIGKILL)

    wait_for(lambda: len(workers_of(two_workers)) == 2 and victim not in workers_of(two_workers),
             "a new worker in place of the killed one")
    two_workers.wait_for_log(rf"worker \d+ \(pid {victim}\) died \(killed by SIGKILL\); starting another")
    wait_for(lambda: len(peer_addresses(two_workers)) == 3, "the new worker's start")
    pids = answering_pids("127.0.0.1", two_workers.port, workers_of(two_workers))
    assert set(pids) == workers_of(two_workers)
    # It died without a clean stop: the worker started in its place reconciles the index with the disk.
    wait_for(lambda: two_workers.log_text().count("reconciled index with disk") == reconciles + 1, "a reconcile")


def test_background_work_runs_in_one_worker(pullcache_factory: Callable[..., PullcacheProcess]) -> None:
    proc = pullcache_factory({"workers": 2, "gc": {"interval": "1s"}})
    wait_for(lambda: scrape(proc).value("pullcache_gc_runs_total") >= 1, "a GC run")
    first, started = scrape(proc).value("pullcache_gc_runs_total"), time.monotonic()
    wait_for(lambda: scrape(proc).value("pullcache_gc_runs_total") >= first + 4, "four more GC runs")
    elapsed = time.monotonic() - started

    result = scrape(proc)
    assert result.value("pullcache_cluster_lease_held", lease="eviction") == 1  # summed over the workers
    assert result.value("pullcache_gc_runs_total") - first <= elapsed / 1.0 + 1  # two leaders would run twice as many
    assert len(re.findall(r"took the 'eviction' lease", proc.log_text())) == 1


def test_serve_workers_overrides_the_config(pullcache_factory: Callable[..., PullcacheProcess]) -> None:
    proc = pullcache_factory({"workers": 1}, start=False)
    proc.process.argv += ["--workers", "2"]
    proc.start()
    wait_for(lambda: len(workers_of(proc)) == 2, "two workers")


def test_one_worker_is_one_process(pullcache_factory: Callable[..., PullcacheProcess]) -> None:
    proc = pullcache_factory()
    assert workers_of(proc) == set()
    assert " workers" not in next(line for line in proc.log_text().splitlines() if " listening on " in line)


def test_workers_that_cannot_start_end_the_supervisor(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "index.sqlite").mkdir(parents=True)  # writable storage.path, but no index can open there
    config = tmp_path / "proxy.yml"
    config.write_text(f"listen: 127.0.0.1:0\nworkers: 2\nstorage: {{path: {data}}}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULLCACHE_")} | {"TMPDIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "pullcache", "serve", "-c", str(config)], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120, check=False, env=env)
    assert result.returncode != 0
    assert "workers keep failing at start-up" in result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["data", "proxy.yml"]  # no metrics dir left


def test_workers_end_with_their_supervisor(two_workers: PullcacheProcess) -> None:
    pids = workers_of(two_workers)
    two_workers.kill()  # SIGKILL: the supervisor signals nobody

    try:
        wait_for(lambda: not any(alive(pid) for pid in pids), "the workers ending")
    finally:
        for pid in filter(alive, pids):  # orphans of a failed run must not outlive the test
            os.kill(pid, signal.SIGKILL)


def test_a_config_error_in_the_workers_is_said_once(tmp_path: Path) -> None:
    config = tmp_path / "proxy.yml"
    config.write_text(f"listen: 127.0.0.1:0\nworkers: 2\nstorage: {{path: {tmp_path / 'data'}}}\n"
                      f"auth: {{htpasswd: {tmp_path / 'missing'}}}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULLCACHE_")}
    result = subprocess.run([sys.executable, "-m", "pullcache", "serve", "-c", str(config)], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120, check=False, env=env)
    assert result.returncode == 2
    (line,) = [line for line in result.stderr.splitlines() if "config error" in line]
    assert line.startswith("pullcache: config error: auth.htpasswd: ")


def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "proxy.yml"
    config.write_text(f"listen: 127.0.0.1:0\nworkers: 3\nstorage: {{path: {tmp_path / 'data'}}}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULLCACHE_")}
    return subprocess.run([sys.executable, "-m", "pullcache", *args, "-c", str(config)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120, check=False, env=env)


def test_check_config_says_how_many_workers(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "check-config")
    assert result.returncode == 0 and "  listen 127.0.0.1:0 (http, 3 workers)\n" in result.stdout


def test_serve_refuses_workers_below_one_in_one_line(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "serve", "--workers", "0")
    assert result.returncode == 2 and result.stderr == "pullcache: --workers: 0 is not a positive integer\n"


def test_workers_serve_tls_on_every_address(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    port = free_port()
    config = tmp_path / "proxy.yml"
    config.write_text(f"listen: '[::]:{port}'\nworkers: 2\nstorage: {{path: {tmp_path / 'data'}}}\n"
                      f"tls: {{cert: {cert}, key: {key}}}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULLCACHE_")}
    process = ManagedProcess([sys.executable, "-m", "pullcache", "serve", "-c", str(config)],
                             log_path=tmp_path / "pullcache.log", cwd=REPO_ROOT, env=env, name="pullcache")
    process.start()
    try:
        process.wait_until(lambda: " listening on " in process.log_text(), timeout=WAIT, what="serving")
        assert f"listening on https://[::]:{port} (IPv6 and IPv4)" in process.log_text()
        context = ssl.create_default_context(cafile=str(cert))
        pids = answering_pids("127.0.0.1", port, children(process.pid), tls=context)
        assert set(pids) == children(process.pid) and len(pids) == 16
        peers = re.findall(r"peers reach it at (\S+)", process.log_text())
        assert len(peers) == 2 and all(peer.startswith("https://127.0.0.1:") for peer in peers)
    finally:
        process.stop()
    assert process.returncode == 0


def test_a_chunked_push_whose_requests_alternate_between_workers_completes(two_workers: PullcacheProcess) -> None:
    """Behind SO_REUSEPORT a client's requests may reach either worker: each asked on its own address here."""
    first, second = (RegistryClient(url) for url in peer_addresses(two_workers).values())
    data = os.urandom(300_000)
    chunks = [data[:100_000], data[100_000:200_000], data[200_000:]]
    digest = "sha256:" + hashlib.sha256(data).hexdigest()

    location = first.request("POST", "/v2/team/app/blobs/uploads/").headers["location"]
    offset = 0
    for client, chunk in zip((first, second, first), chunks, strict=True):
        response = client.request("PATCH", location, body=chunk, headers={
            "Content-Type": "application/octet-stream", "Content-Range": f"{offset}-{offset + len(chunk) - 1}"})
        assert response.status == 202, response.body
        location, offset = response.headers["location"], offset + len(chunk)
    response = second.request("PUT", f"{location}{'&' if '?' in location else '?'}digest={digest}")

    assert response.status == 201, response.body
    assert RegistryClient(two_workers.url).get_blob("team/app", digest) == data


def test_a_token_one_worker_issued_is_accepted_by_the_other(
        pullcache_factory: Callable[..., PullcacheProcess], tmp_path: Path) -> None:
    """Without cluster.secret_env the workers still share one signing key: a client's token request and its
    pulls may reach different workers."""
    htpasswd = write_htpasswd(tmp_path / "htpasswd", {"alice": "alice-password"})
    proc = pullcache_factory({"workers": 2, "auth": {"htpasswd": str(htpasswd), "pull": "authenticated"},
                              "local": {"anonymous_push": False}})
    wait_for(lambda: len(peer_addresses(proc)) == 2, "two workers")
    first, second = peer_addresses(proc).values()
    basic = "Basic " + base64.b64encode(b"alice:alice-password").decode()
    request = urllib.request.Request(f"{first}/auth/token?service=pullcache&scope=repository:team/app:pull",
                                     headers={"Authorization": basic})
    with urllib.request.urlopen(request, timeout=30) as response:
        token = json.loads(response.read())["token"]

    request = urllib.request.Request(f"{second}/v2/", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200


def test_a_tag_pushed_again_through_one_worker_is_read_new_through_the_other(
        two_workers: PullcacheProcess) -> None:
    first, second = (RegistryClient(url) for url in peer_addresses(two_workers).values())
    pushed = []
    for seed in ("one", "two"):
        config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed}).encode()
        layer = f"layer of {seed}".encode() * 100
        for blob in (config, layer):
            first.upload_blob("team/app", blob)
        manifest = image_manifest(config, [layer])
        pushed.append(first.put_manifest("team/app", "v1", manifest, OCI_MANIFEST))
        response = second.get_manifest("team/app", "v1", [OCI_MANIFEST])
        assert response.headers["docker-content-digest"] == pushed[-1]
    assert pushed[0] != pushed[1]


@pytest.mark.parametrize("reuse_port", [False, True])
def test_a_taken_port_is_one_line_with_workers(tmp_path: Path, reuse_port: bool) -> None:
    """Taken by anyone: also by a socket with SO_REUSEPORT, such as another pullcache's workers."""
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, int(reuse_port))
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "proxy.yml"
        config.write_text(f"listen: 127.0.0.1:{port}\nworkers: 2\nstorage: {{path: {tmp_path / 'data'}}}\n")
        result = subprocess.run([sys.executable, "-m", "pullcache", "serve", "-c", str(config)], cwd=REPO_ROOT,
                                capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == f"pullcache: cannot listen on 127.0.0.1:{port}: address already in use"


def test_workers_on_each_backend_serve_a_pull_and_a_push(
        pullcache_factory: Callable[..., PullcacheProcess], storage_backend: dict[str, object],
        upstream: Upstream) -> None:
    """The supervisor checks the bucket before it forks: whatever that started must not hang a worker."""
    proc = pullcache_factory({"workers": 2, "storage": storage_backend})
    wait_for(lambda: len(peer_addresses(proc)) == 2, "two workers")
    layer = upstream["library/alpine:latest"].platforms["linux/amd64"].layers[0]
    blob = os.urandom(50_000)
    for url in peer_addresses(proc).values():
        client = RegistryClient(url, timeout=30)
        assert client.get_blob("library/alpine", layer.digest) == layer.data
        digest = client.upload_blob("team/app", blob)
        assert client.get_blob("team/app", digest) == blob


def index_meta(proc: PullcacheProcess, key: str) -> str:
    query = f"SELECT value FROM meta WHERE key = '{key}'"
    return subprocess.run(["sqlite3", str(proc.data_dir / "index.sqlite"), query],
                          capture_output=True, text=True, check=True).stdout.strip()


def test_workers_signalled_with_their_supervisor_stop_once_and_cleanly(
        two_workers: PullcacheProcess) -> None:
    """systemd's KillMode=control-group sends SIGTERM to every process of the service, and the supervisor
    passes it on: a worker's second stop signal must not cut its graceful shutdown short."""
    pids = workers_of(two_workers)
    os.kill(two_workers.process.pid, signal.SIGTERM)
    for _ in range(3):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):  # it may be done already
                os.kill(pid, signal.SIGTERM)

    two_workers.stop()

    assert two_workers.process.returncode == 0
    log = two_workers.log_text()
    assert "Traceback" not in log and len(re.findall(r"worker \d+ \(pid \d+\) stopped", log)) == 2
    assert index_meta(two_workers, CLEAN_SHUTDOWN) == "1"


def ignored_signals(pid: int) -> int:
    """The process's ignored-signals mask (/proc's SigIgn)."""
    line = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("SigIgn:"))
    return int(line.split()[1], 16)


def test_a_stopping_worker_ignores_later_stop_signals_until_it_has_said_it_stopped(
        pullcache_factory: Callable[..., PullcacheProcess], upstream: Upstream) -> None:
    """Closing the event loop puts a signal's default action back: a late SIGTERM (the supervisor's, passed
    on) must not kill a worker that is already stopping. A layer held at the upstream's gate keeps the
    worker in its graceful shutdown while its signals are read."""
    repo, data = "workers/held", os.urandom(300_000)
    digest = RegistryClient(upstream.url, username=ADMIN_USER, password=ADMIN_PASSWORD).upload_blob(repo, data)
    front = GatedFront(upstream.url, upstream.token_server.realm)
    front.start()
    try:
        proc = pullcache_factory({"workers": 2, "upstreams": [docker_hub_upstream(front.url)]})
        wait_for(lambda: len(peer_addresses(proc)) == 2, "two workers")
        pid, address = next(iter(peer_addresses(proc).items()))
        with urllib.request.urlopen(f"{address}/v2/{repo}/blobs/{digest}", timeout=30) as pull:
            assert pull.status == 200  # the handler is under way: the shutdown waits for it
            os.kill(pid, signal.SIGTERM)
            wait_for(lambda: ignored_signals(pid) & (1 << (signal.SIGTERM - 1)), "SIGTERM ignored while stopping")
            os.kill(pid, signal.SIGTERM)
            os.kill(pid, signal.SIGINT)
            assert alive(pid)
            front.open_gate()
            assert pull.read() == data
        wait_for(lambda: re.search(rf"worker \d+ \(pid {pid}\) stopped", proc.log_text()), "the stopped line")
    finally:
        front.open_gate()
        front.stop()


def test_sighup_to_the_supervisor_reopens_every_worker_s_audit_log(
        pullcache_factory: Callable[..., PullcacheProcess], tmp_path: Path) -> None:
    """logrotate's postrotate (`kill -HUP`, or `systemctl kill -s HUP`) reaches the supervisor: it passes the
    signal on instead of dying of it, and each worker writes to the new file."""
    from tests.test_audit import PASSWORDS, failed_login

    audit_path = tmp_path / "audit.log"
    proc = pullcache_factory({"workers": 2, "auth": {"htpasswd": str(write_htpasswd(tmp_path / "htpasswd", PASSWORDS))},
                              "log": {"audit": str(audit_path)}})
    wait_for(lambda: len(peer_addresses(proc)) == 2, "two workers")
    pids = workers_of(proc)
    audit_path.rename(tmp_path / "audit.log.1")

    os.kill(proc.process.pid, signal.SIGHUP)

    wait_for(lambda: proc.log_text().count("reopened") == 2, "both workers reopened the audit log")
    for _ in range(4):  # new connections: both workers
        failed_login(proc)
    wait_for(lambda: audit_path.exists() and audit_path.read_text().count("\n") == 4, "4 lines in the new file")
    assert proc.alive and workers_of(proc) == pids


def test_a_sighup_passed_on_to_workers_without_an_audit_log_is_ignored(two_workers: PullcacheProcess) -> None:
    pids = workers_of(two_workers)

    os.kill(two_workers.process.pid, signal.SIGHUP)

    two_workers.wait_for_log("SIGHUP: passed on to 2 workers")
    assert answering_pids("127.0.0.1", two_workers.port, pids) and workers_of(two_workers) == pids
    assert two_workers.alive and "died" not in two_workers.log_text()
