"""Tags record when they were last true (`confirmed_at`) in their own content, not in a file time, so
an upstream tag's ttl survives restarts and copies, and means the same on any backend."""
from __future__ import annotations

import json
import os
import time

from pullcache.cache.store import Store
from pullcache.digests import Digest

DIGEST = Digest.of(b"manifest")


async def test_a_tag_records_when_it_was_confirmed(store: Store) -> None:
    repository = store.repository("team/app")
    await repository.set_tag("v1", DIGEST, confirmed_at=1000.5)
    link = await repository.get_tag("v1")
    assert link is not None and (link.digest, link.confirmed_at) == (DIGEST, 1000.5)


async def test_a_tag_written_without_a_time_is_confirmed_now(store: Store) -> None:
    before = time.time()
    await store.repository("team/app").set_tag("v1", DIGEST)
    link = await store.repository("team/app").get_tag("v1")
    assert link is not None and before <= link.confirmed_at <= time.time()


async def test_confirmed_at_does_not_follow_the_files_time(store: Store) -> None:
    """Copying or touching the store (rsync, a restore) must not restart every tag's ttl."""
    repository = store.repository("team/app")
    await repository.set_tag("v1", DIGEST, confirmed_at=1000.0)
    os.utime(repository.path / "_manifests" / "tags" / "v1")  # filesystem backend: the file itself
    link = await repository.get_tag("v1")
    assert link is not None and link.confirmed_at == 1000.0


async def test_a_tag_file_of_an_older_version_is_read_with_its_mtime(store: Store) -> None:
    repository = store.repository("team/app")
    path = repository.path / "_manifests" / "tags" / "v1"
    path.parent.mkdir(parents=True)
    path.write_text(str(DIGEST))
    os.utime(path, (2000.0, 2000.0))
    link = await repository.get_tag("v1")
    assert link is not None and (link.digest, link.confirmed_at) == (DIGEST, 2000.0)


async def test_a_damaged_tag_file_names_nothing(store: Store) -> None:
    repository = store.repository("team/app")
    path = repository.path / "_manifests" / "tags" / "v1"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"digest": "not a digest", "confirmed_at": 1}))
    assert await repository.get_tag("v1") is None
