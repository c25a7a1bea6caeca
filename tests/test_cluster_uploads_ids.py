"""Upload ids that name the replica holding the session (cluster/upload_owners.py), and the ids the store
accepts as folder names (cache/uploads.py)."""
from __future__ import annotations

import pytest

from pullcache.cache.store import Store
from pullcache.cluster.upload_owners import UploadOwners

A, B = "http://10.0.0.1:5000", "http://10.0.0.2:5000"


def test_an_id_minted_by_one_replica_names_it_to_the_others() -> None:
    upload_id = "0b6f6a4e-1c5d-4c1e-9a7e-3f1b2c3d4e5f" + UploadOwners(A, b"k" * 32).suffix
    assert UploadOwners(B, b"k" * 32).elsewhere(upload_id) == A
    assert UploadOwners(A, b"k" * 32).elsewhere(upload_id) is None  # its own: served here


def test_an_id_is_not_trusted_without_the_clusters_key() -> None:
    upload_id = "0b6f6a4e-1c5d-4c1e-9a7e-3f1b2c3d4e5f" + UploadOwners(A, b"other key" * 4).suffix
    assert UploadOwners(B, b"k" * 32).owner(upload_id) is None


def test_an_address_swapped_into_an_id_is_not_trusted() -> None:
    a_suffix, evil_suffix = UploadOwners(A, b"k" * 32).suffix, UploadOwners("http://evil:80", b"x" * 32).suffix
    forged = "0b6f6a4e-1c5d-4c1e-9a7e-3f1b2c3d4e5f" + "." + evil_suffix.split(".")[1] + "." + a_suffix.split(".")[2]
    assert UploadOwners(B, b"k" * 32).owner(forged) is None


@pytest.mark.parametrize("upload_id", ["0b6f6a4e-1c5d-4c1e-9a7e-3f1b2c3d4e5f/../../x",
                                       "0b6f6a4e-1c5d-4c1e-9a7e-3f1b2c3d4e5f...",
                                       "{0b6f6a4e-1c5d-4c1e-9a7e-3f1b2c3d4e5f}"])
async def test_the_store_takes_no_id_that_could_leave_the_uploads_folder(store: Store, upload_id: str) -> None:
    assert await store.uploads.get(upload_id, "team/app") is None
    assert not await store.uploads.holds(upload_id)


async def test_a_session_made_with_a_suffix_is_found_by_its_whole_id(store: Store) -> None:
    session = await store.uploads.create("team/app", UploadOwners(A, b"k" * 32).suffix)
    assert session.path.name == session.id
    assert await store.uploads.get(session.id, "team/app") is session
    with pytest.raises(ValueError):
        await store.uploads.create("team/app", "/../x")
