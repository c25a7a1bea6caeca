"""cache.fill: one producer writing a blob into a temp file while many readers stream it as it grows.

Committed bytes are read through the Store; the temp files and open descriptors checked here are the
local spool's, which both backends write under storage.path (the filesystem backend's own files).
"""
from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pullcache.cache.fill import Fill, FillFailed, FillReader, State
from pullcache.cache.index import CACHED
from pullcache.cache.store import Store
from pullcache.cache.writer import DigestMismatch
from pullcache.digests import Digest

DATA = os.urandom(3 * 1024 * 1024 + 17)
DIGEST = Digest.of(DATA)


def temp_files(store: Store) -> list[str]:
    return os.listdir(store.layout.tmp)


def open_descriptors_to(directory: Path) -> list[str]:
    """Paths under `directory` this process holds open (a leaked reader descriptor shows up here)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(directory)):
            found.append(target)
    return found


async def chunks_of(reader: FillReader, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
    """The bytes of each span the reader hands out, read from its descriptor as a consumer would."""
    async for offset, count in reader.spans(start, end):
        yield os.pread(reader.fileno(), count, offset)


async def read_all(reader: FillReader, start: int = 0, end: int | None = None) -> bytes:
    return b"".join([chunk async for chunk in chunks_of(reader, start, end)])


async def next_chunk(chunks: AsyncIterator[bytes]) -> bytes:
    return await asyncio.wait_for(anext(chunks), 5)


async def test_readers_see_bytes_before_the_producer_finishes(store: Store) -> None:
    fill = Fill(store, DIGEST, origin=CACHED)
    reader = fill.reader()
    await fill.begin(len(DATA))
    await fill.write(DATA[:1000])
    chunks = chunks_of(reader)
    assert await next_chunk(chunks) == DATA[:1000]
    await fill.write(DATA[1000:])
    rest = next_chunk(chunks)
    first_of_rest = await rest
    assert DATA[1000:].startswith(first_of_rest)
    await fill.commit()
    remaining = b"".join([chunk async for chunk in chunks])
    assert DATA[:1000] + first_of_rest + remaining == DATA
    reader.close()
    assert store.read_blob_blocking(str(DIGEST)) == DATA


async def test_the_last_byte_waits_for_the_digest_verdict(store: Store) -> None:
    fill = Fill(store, DIGEST, origin=CACHED)
    reader = fill.reader()
    await fill.begin(len(DATA))
    await fill.write(DATA)
    chunks = chunks_of(reader)
    received = b""
    while len(received) < len(DATA) - 1:
        received += await next_chunk(chunks)
    assert received == DATA[:-1]
    last = asyncio.ensure_future(anext(chunks))
    await asyncio.sleep(0)  # give the reader every chance to (wrongly) hand out the last byte
    assert not last.done()
    await fill.commit()
    assert await asyncio.wait_for(last, 5) == DATA[-1:]
    reader.close()


async def test_a_reader_joining_late_reads_from_any_offset(store: Store) -> None:
    fill = Fill(store, DIGEST, origin=CACHED)
    await fill.begin(len(DATA))
    await fill.write(DATA[: 2 * 1024 * 1024])
    late = fill.reader()
    middle = asyncio.ensure_future(read_all(late, 1024 * 1024, 2 * 1024 * 1024 + 10))
    await fill.write(DATA[2 * 1024 * 1024:])
    await fill.commit()
    assert await middle == DATA[1024 * 1024: 2 * 1024 * 1024 + 10]
    late.close()


async def test_wrong_bytes_fail_every_reader_and_leave_nothing(store: Store) -> None:
    wrong = bytearray(DATA)
    wrong[-1] ^= 0xFF
    fill = Fill(store, DIGEST, origin=CACHED)
    readers = [fill.reader() for _ in range(3)]
    reads = [asyncio.ensure_future(read_all(reader)) for reader in readers]
    await fill.begin(len(DATA))
    await fill.write(bytes(wrong))
    with pytest.raises(DigestMismatch):
        await fill.commit()
    await fill.fail(DigestMismatch(DIGEST, Digest.of(bytes(wrong))))
    for read in reads:
        with pytest.raises(FillFailed) as failed:
            await read
        assert isinstance(failed.value.cause, DigestMismatch)
    for reader in readers:
        reader.close()
    assert store.blob_size(DIGEST) is None
    assert temp_files(store) == []
    assert open_descriptors_to(store.layout.tmp) + open_descriptors_to(store.layout.blobs) == []


async def test_a_failure_mid_way_raises_in_readers_instead_of_ending_short(store: Store) -> None:
    fill = Fill(store, DIGEST, origin=CACHED)
    reader = fill.reader()
    await fill.begin(len(DATA))
    await fill.write(DATA[:4096])
    chunks = chunks_of(reader)
    assert await next_chunk(chunks) == DATA[:4096]
    waiting = asyncio.ensure_future(anext(chunks))
    await fill.fail(ConnectionResetError("upstream went away"))
    with pytest.raises(FillFailed):
        await waiting
    reader.close()
    assert fill.state is State.FAILED
    assert temp_files(store) == []
    assert open_descriptors_to(store.layout.tmp) + open_descriptors_to(store.layout.blobs) == []


async def test_a_truncated_fill_does_not_commit(store: Store) -> None:
    fill = Fill(store, DIGEST, origin=CACHED)
    await fill.begin(len(DATA))
    await fill.write(DATA[:-10])
    with pytest.raises(DigestMismatch):
        await fill.commit()
    await fill.fail(EOFError("short"))
    assert store.blob_size(DIGEST) is None
    assert temp_files(store) == []


async def test_a_reader_waiting_for_the_start_learns_why_it_never_came(store: Store) -> None:
    fill = Fill(store, DIGEST, origin=CACHED)
    reader = fill.reader()
    started = asyncio.ensure_future(reader.started())
    await fill.fail(LookupError("no such blob upstream"))
    with pytest.raises(FillFailed) as failed:
        await started
    assert isinstance(failed.value.cause, LookupError)
    reader.close()


async def test_a_reader_that_leaves_does_not_stop_the_producer(store: Store) -> None:
    fill = Fill(store, DIGEST, origin=CACHED)
    leaving = fill.reader()
    staying = fill.reader()
    await fill.begin(len(DATA))
    await fill.write(DATA[:100])
    assert await next_chunk(chunks_of(leaving)) == DATA[:100]
    leaving.close()
    await fill.write(DATA[100:])
    await fill.commit()
    assert await read_all(staying) == DATA
    staying.close()
    assert store.read_blob_blocking(str(DIGEST)) == DATA
    assert open_descriptors_to(store.layout.tmp) + open_descriptors_to(store.layout.blobs) == []


async def test_readers_of_a_committed_fill_still_read_after_the_rename(store: Store) -> None:
    fill = Fill(store, DIGEST, origin=CACHED)
    reader = fill.reader()
    await fill.begin(len(DATA))
    await fill.write(DATA)
    await fill.commit()
    assert temp_files(store) == []  # renamed into place; the reader's descriptor follows it
    assert await read_all(reader) == DATA
    reader.close()
    assert open_descriptors_to(store.layout.tmp) + open_descriptors_to(store.layout.blobs) == []


async def test_an_unknown_size_is_read_to_the_end_of_the_commit(store: Store) -> None:
    fill = Fill(store, DIGEST, origin=CACHED)
    reader = fill.reader()
    await fill.begin(None)
    read = asyncio.ensure_future(read_all(reader))
    for offset in range(0, len(DATA), 500_000):
        await fill.write(DATA[offset:offset + 500_000])
    await fill.commit()
    assert await read == DATA
    reader.close()


async def test_an_empty_range_still_waits_for_the_verdict(store: Store) -> None:
    empty = Digest.of(b"")
    fill = Fill(store, empty, origin=CACHED)
    reader = fill.reader()
    await fill.begin(0)
    read = asyncio.ensure_future(read_all(reader))
    await asyncio.sleep(0)
    assert not read.done()
    await fill.commit()
    assert await read == b""
    reader.close()
