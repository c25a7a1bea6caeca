"""The parts of cross-process fills below HTTP: who holds a lease (Coordinator.holder, both
implementations), the signature on requests between peers, when fills are shared at all, and a relayed
fill in the process that follows another's."""
from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from pullcache.cache.fill import FillFailed, FillReader
from pullcache.cache.index import CACHED
from pullcache.cache.store import Store
from pullcache.cache.writer import DigestMismatch
from pullcache.cluster.embedded import EmbeddedCoordinator
from pullcache.cluster.signing import VALID_FOR, BadSignature, RequestSigner, Unsigned
from pullcache.config import ConfigError, build_config
from pullcache.digests import Digest
from pullcache.pullthrough.fill_leases import fill_leases
from pullcache.pullthrough.relayed_fill import RelayableFill
from tests.support.coordinators import Make, hold_in_child

pytest_plugins = ["tests.support.coordinators"]


@pytest.fixture
def key(request: pytest.FixtureRequest) -> str:
    """A lease name of this test's own (the session's Redis is shared), shaped like a fill's."""
    return f"fill/docker.io/{request.node.name}"


async def test_everyone_reads_who_holds_a_lease(make: Make, key: str) -> None:
    a, b = make(), make()
    assert await b.holder(key) is None
    assert await a.acquire(key, "http://a:5000/1/x", 30)
    assert await b.holder(key) == "http://a:5000/1/x"
    assert await a.holder(key) == "http://a:5000/1/x"


async def test_a_released_lease_has_no_holder(make: Make, key: str) -> None:
    a, b = make(), make()
    assert await a.acquire(key, "a", 30)
    assert await a.release(key, "a")
    assert await b.holder(key) is None
    assert await b.acquire(key, "b", 30)
    assert await a.holder(key) == "b"


async def test_embedded_lease_files_go_with_their_release(tmp_path: Path) -> None:
    """One lease per fill would leave a file per blob ever fetched: a released lease leaves none."""
    a, b = EmbeddedCoordinator(tmp_path / "data"), EmbeddedCoordinator(tmp_path / "data")
    try:
        assert await a.acquire("fill/docker.io/sha256:1", "a", 30)
        assert not await b.acquire("fill/docker.io/sha256:1", "b", 30)
        assert await a.release("fill/docker.io/sha256:1", "a")
        assert list((tmp_path / "data" / "leases").iterdir()) == []
        assert await b.acquire("fill/docker.io/sha256:1", "b", 30), "taken again after its file went"
        assert not await a.acquire("fill/docker.io/sha256:1", "a", 30)
    finally:
        await a.close()
        await b.close()


async def test_embedded_holder_of_a_killed_process_is_nobody(tmp_path: Path) -> None:
    child = await hold_in_child(tmp_path / "data", "fill/x", "http://child:1/2/3")
    coordinator = EmbeddedCoordinator(tmp_path / "data")
    try:
        assert await coordinator.holder("fill/x") == "http://child:1/2/3"
        child.kill()
        await child.wait()
        assert await coordinator.holder("fill/x") is None, "the lock file still names it, but nobody locks it"
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
        await coordinator.close()


# ---------------------------------------------------------------------- signed requests between peers

PATH = "/_pullcache/fills/docker.io/sha256:" + "a" * 64


def test_a_signed_request_passes_the_check() -> None:
    signer = RequestSigner(b"k" * 32)
    signer.check("GET", PATH, signer.headers("GET", PATH))


def test_an_unsigned_request_is_refused_as_unsigned() -> None:
    with pytest.raises(Unsigned):
        RequestSigner(b"k" * 32).check("GET", PATH, {})


def test_another_key_another_path_or_method_is_a_bad_signature() -> None:
    signer = RequestSigner(b"k" * 32)
    headers = signer.headers("GET", PATH)
    for method, path, checker in (("GET", PATH, RequestSigner(b"x" * 32)), ("GET", PATH + "0", signer),
                                  ("DELETE", PATH, signer)):
        with pytest.raises(BadSignature):
            checker.check(method, path, headers)


def test_an_expired_signature_is_refused() -> None:
    now = [1_000_000.0]
    signer = RequestSigner(b"k" * 32, clock=lambda: now[0])
    headers = signer.headers("GET", PATH)
    now[0] += VALID_FOR + 1
    with pytest.raises(BadSignature, match="expired"):
        signer.check("GET", PATH, headers)


# ---------------------------------------------------------------------- when fills are shared at all

def test_without_an_advertise_address_fills_take_no_lease(tmp_path: Path) -> None:
    config = build_config({"storage": {"path": str(tmp_path)}})
    assert fill_leases(config, EmbeddedCoordinator(tmp_path)) is None


def test_an_advertise_address_without_a_cluster_secret_is_a_config_error(tmp_path: Path) -> None:
    config = build_config({"storage": {"path": str(tmp_path)}, "cluster": {"advertise": "http://10.0.0.1:5000"}})
    with pytest.raises(ConfigError, match=r"^cluster\.secret_env: "):
        fill_leases(config, EmbeddedCoordinator(tmp_path))


# ---------------------------------------------------------------------- a relayed fill, in the follower

DATA = os.urandom(256 * 1024 + 3)
DATA_DIGEST = Digest.of(DATA)


async def relay(fill: RelayableFill, data: bytes) -> None:
    fill.relayed = True
    await fill.begin(len(data))
    await fill.write(data)


async def read_spans(reader: FillReader, into: bytearray, all_but_last: asyncio.Event) -> None:
    """Read the fill into `into`; `all_but_last` is set once every byte but the blob's last arrived."""
    async for offset, count in reader.spans():
        into += os.pread(reader.fileno(), count, offset)
        if len(into) == len(DATA) - 1:
            all_but_last.set()


async def test_a_relayed_fill_is_verified_but_left_to_its_holder_to_commit(store: Store) -> None:
    fill = RelayableFill(store, DATA_DIGEST, origin=CACHED)
    received = bytearray()
    async with fill.reader() as reader:
        all_but_last = asyncio.Event()
        reading = asyncio.create_task(read_spans(reader, received, all_but_last))
        await relay(fill, DATA)
        await all_but_last.wait()  # the last byte waits for the verdict
        await fill.commit()
        await reading
    assert bytes(received) == DATA
    assert store.blob_size(DATA_DIGEST) is None, "the process that fetched it commits it, not a follower"
    assert os.listdir(store.layout.tmp) == []


async def test_a_relay_of_wrong_bytes_never_hands_out_its_last_byte(store: Store) -> None:
    wrong = DATA[:-1] + bytes([DATA[-1] ^ 1])
    fill = RelayableFill(store, DATA_DIGEST, origin=CACHED)
    received = bytearray()
    async with fill.reader() as reader:
        all_but_last = asyncio.Event()
        reading = asyncio.create_task(read_spans(reader, received, all_but_last))
        await relay(fill, wrong)
        await all_but_last.wait()
        with pytest.raises(DigestMismatch):
            await fill.commit()
        await fill.fail(DigestMismatch(DATA_DIGEST, Digest.of(wrong)))
        with pytest.raises(FillFailed):
            await reading
    assert len(received) < len(DATA)
    assert os.listdir(store.layout.tmp) == []
