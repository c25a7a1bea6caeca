"""Fixtures that start real components on loopback (see tests/support/).

Session-scoped: `token_server` and the seeded `upstream` (start-up well under a second).
Function-scoped factories start pullcache, extra upstreams, dockerd, containerd and
skopeo, and stop every one of them (by PID) when the test ends. When a test fails, the
logs of the processes its factories started are attached to the report.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest

# Shared assertion helpers of the API tests: rewrite their asserts before any test module imports them.
pytest.register_assert_rewrite("tests.registry_api")

from pullcache.cache.store import Store
from pullcache.config import UpstreamConfig
from pullcache.upstream.client import UpstreamClient
from tests.fault_upstream import FakeRegistry
from tests.support import seaweed
from tests.support.containerd import Containerd
from tests.support.dockerd import Dockerd
from tests.support.pullcache_proc import PullcacheProcess, deep_merge, docker_hub_upstream
from tests.support.redis import redis_server as redis_server  # the session's Redis fixture
from tests.support.replica_stores import stores as stores  # two replicas' stores on one bucket and Redis
from tests.support.seaweed import SeaweedFS
from tests.support.seed import Upstream, start_seeded_upstream
from tests.support.skopeo import Skopeo
from tests.support.tokenserver import TokenServer

_LOGS = pytest.StashKey[list[tuple[str, Callable[[], str]]]]()
LOG_TAIL_LINES = 200


def _attach_log(request: pytest.FixtureRequest, name: str, tail: Callable[[], str]) -> None:
    request.node.stash.setdefault(_LOGS, []).append((name, tail))


Daemon = TypeVar("Daemon", Dockerd, Containerd)


def _start_daemon(request: pytest.FixtureRequest, started: list[Daemon], name: str, daemon: Daemon) -> Daemon:
    """Start `daemon`, remembered in `started` for the fixture to stop and with its log tail on failure."""
    started.append(daemon)
    _attach_log(request, name, lambda: daemon.process.log_tail(LOG_TAIL_LINES))
    return daemon.start()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed:
        for name, tail in item.stash.get(_LOGS, []):
            report.sections.append((f"log: {name}", tail()))
    return report


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    """An open `Store` on a fresh directory, closed when the test ends."""
    store = Store(tmp_path / "data")
    await store.open()
    yield store
    await store.close()


@pytest.fixture(scope="session")
def seaweed_server() -> Iterator[SeaweedFS]:
    """One SeaweedFS per test session (per xdist worker), with the bucket `pullcache`; tests take a fresh
    prefix of it each (tests/registry_api.py's `storage` fixture)."""
    server = SeaweedFS().start()
    server.create_bucket(seaweed.BUCKET)
    yield server
    server.stop()


@pytest.fixture(params=["filesystem", "s3"])
def storage_backend(request: pytest.FixtureRequest) -> dict[str, Any]:
    """A `storage` section without its path, once per backend: {} (the filesystem), or S3 on the session's
    SeaweedFS under a fresh prefix of its bucket. Tests that run on both backends take it."""
    if request.param == "filesystem":
        return {}
    server: SeaweedFS = request.getfixturevalue("seaweed_server")
    return {"backend": "s3", "s3": server.storage_config(seaweed.BUCKET, prefix=f"t{uuid.uuid4().hex[:12]}",
                                                          timeout="5s")}


@pytest.fixture(scope="session")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenServer]:
    """The Docker-Hub-style token server every upstream trusts.

    Shared by the session: a test that asserts token counts calls `token_server.reset()`
    first (or compares `count()` before and after); one that stops it (a token outage)
    must `start()` it again, which comes back on the same port.
    """
    server = TokenServer(tmp_path_factory.mktemp("tokens")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def upstream(token_server: TokenServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    """The seeded, token-protected Distribution ("Docker Hub"); see `seed.SeedInfo`.

    `upstream.url`, `upstream.host`, `upstream["library/alpine:latest"]` (an
    `images.Image`), `upstream.seed`, `upstream.token_server`, `upstream.distribution`.
    Shared by the session: never delete or retag seeded content here; push new content
    under a repository name unique to the test, or use `upstream_factory`.
    """
    seeded = start_seeded_upstream(tmp_path_factory.mktemp("upstream"), token_server)
    yield seeded
    seeded.stop()


@pytest.fixture
def upstream_factory(
    token_server: TokenServer, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[[], Upstream]]:
    """Start a private seeded upstream (same token server) that a test may stop, mutate
    or retag; stopped at the end of the test if still running."""
    started: list[Upstream] = []

    def factory() -> Upstream:
        seeded = start_seeded_upstream(tmp_path / f"upstream{len(started)}", token_server)
        started.append(seeded)
        _attach_log(request, f"upstream {seeded.host}",
                    lambda: seeded.distribution.process.log_tail(LOG_TAIL_LINES))
        return seeded

    yield factory
    for seeded in started:
        seeded.stop()


@pytest.fixture
def pullcache_factory(
    upstream: Upstream, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., PullcacheProcess]]:
    """`pullcache_factory(config=None, *, upstream=None, env=None, start=True)`.

    Starts `python -m pullcache serve` with `config` deep-merged over a default whose
    only upstream is `docker.io` (default: true, token_hosts [127.0.0.1]) pointing at the
    seeded `upstream` (or the given one). Lists such as `upstreams` are replaced, not
    merged. Returns a `PullcacheProcess` (.url, .host, .port, .data_dir, .config,
    .stop(), .kill(), .restart(), .cli(...)); `start=False` returns it unstarted.
    """
    started: list[PullcacheProcess] = []
    session_upstream = upstream

    def factory(
        config: Mapping[str, Any] | None = None,
        *,
        upstream: Upstream | None = None,
        env: Mapping[str, str] | None = None,
        start: bool = True,
    ) -> PullcacheProcess:
        target = upstream or session_upstream
        merged = deep_merge({"upstreams": [docker_hub_upstream(target.url)]}, config or {})
        proc = PullcacheProcess(tmp_path / f"pullcache{len(started)}", merged, env=env)
        started.append(proc)
        _attach_log(request, f"pullcache {proc.host}", lambda: proc.process.log_tail(LOG_TAIL_LINES))
        return proc.start() if start else proc

    yield factory
    for proc in started:
        proc.stop()


@pytest.fixture
def dockerd_factory(request: pytest.FixtureRequest) -> Iterator[Callable[..., Dockerd]]:
    """`dockerd_factory(mirrors=(), insecure_registries=(), extra_config=None)` -> a running
    `Dockerd` (vfs, own containerd); `.docker("pull", "alpine")` runs the real client."""
    started: list[Dockerd] = []

    def factory(
        mirrors: Sequence[str] = (),
        insecure_registries: Sequence[str] = (),
        extra_config: Mapping[str, Any] | None = None,
    ) -> Dockerd:
        daemon = Dockerd(mirrors=mirrors, insecure_registries=insecure_registries,
                         extra_config=extra_config)
        return _start_daemon(request, started, "dockerd", daemon)

    yield factory
    for daemon in started:
        daemon.stop()


@pytest.fixture
def containerd_factory(request: pytest.FixtureRequest) -> Iterator[Callable[..., Containerd]]:
    """`containerd_factory()` -> a running `Containerd`; `.pull_via_mirror(url, image)` and
    `.ctr(...)` run the real `ctr`."""
    started: list[Containerd] = []

    def factory(*, snapshotter: str = "overlayfs") -> Containerd:
        return _start_daemon(request, started, "containerd", Containerd(snapshotter=snapshotter))

    yield factory
    for daemon in started:
        daemon.stop()


@pytest.fixture
async def fake(aiohttp_server: Any) -> FakeRegistry:
    """An empty fault-injecting registry on loopback (tests/fault_upstream.py); a module that needs it
    seeded defines its own `fake`."""
    return await FakeRegistry().start(aiohttp_server)


MakeUpstreamClient = Callable[..., Awaitable[UpstreamClient]]


@pytest.fixture
async def upstream_clients() -> AsyncIterator[MakeUpstreamClient]:
    """`upstream_clients(url, *, clock=time.monotonic, **settings)` -> a started UpstreamClient with a unique
    upstream name (so metric samples are per test); every one is closed when the test ends."""
    clients: list[UpstreamClient] = []

    async def make(url: str, *, clock: Callable[[], float] = time.monotonic, **settings: Any) -> UpstreamClient:
        client = UpstreamClient(UpstreamConfig(name=f"up-{uuid.uuid4().hex[:8]}", url=url, **settings), clock=clock)
        await client.start()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
def skopeo() -> Iterator[Skopeo]:
    """skopeo with host config shut out (own auth file, registries.conf, policy)."""
    tool = Skopeo()
    yield tool
    tool.close()
