"""`workers: N` on one store: the `workers` key, and the clean-shutdown record several processes share.

A store is clean when every process that used it stopped cleanly. With several processes on one store the
last one to stop says so, and one that died while others ran leaves the store unclean however the others
stop. Each Store below stands for one process: each holds its own open files, as a process would.
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from pullcache.cache.store import Store
from pullcache.config import ConfigError, load_config


def test_workers_defaults_to_one() -> None:
    assert load_config(None, environ={}).workers == 1


def test_workers_is_read_from_the_file_and_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "proxy.yml"
    path.write_text("workers: 2\n")
    assert load_config(path, environ={}).workers == 2
    assert load_config(path, environ={"PULLCACHE_WORKERS": "3"}).workers == 3


@pytest.mark.parametrize("value", [0, -1, "two", 1.5, True])
def test_a_bad_workers_value_is_one_line_naming_the_key(tmp_path: Path, value: object) -> None:
    path = tmp_path / "proxy.yml"
    path.write_text(f"workers: {value!r}\n".replace("'", ""))
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    message = str(caught.value)
    assert message.startswith("workers: ") and "positive integer" in message and "\n" not in message


OpenStore = Callable[[], Awaitable[Store]]


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[OpenStore]:
    """Opens Stores on one root: `await open_store()`; every one is closed at the end."""
    async with AsyncExitStack() as stack:
        async def open_store() -> Store:
            store = Store(tmp_path / "data")
            await store.open()
            stack.push_async_callback(store.close)
            return store
        yield open_store


async def started(open_store: OpenStore) -> Store:
    """A process that starts on the store as the eviction service does: look, then mark in use."""
    store = await open_store()
    await store.was_shut_down_cleanly()
    await store.mark_in_use(True)
    return store


async def clean_history(open_store: OpenStore) -> None:
    """One process ran and stopped cleanly: the store is clean (a new index never is)."""
    first = await started(open_store)
    await first.mark_in_use(False)


async def test_a_store_another_process_uses_is_clean_for_one_that_joins(
        stores: OpenStore) -> None:
    await clean_history(stores)
    await started(stores)

    joining = await stores()
    assert await joining.was_shut_down_cleanly()


async def test_a_process_that_died_while_another_ran_leaves_the_store_unclean(
        stores: OpenStore) -> None:
    await clean_history(stores)
    survivor, crashed = await started(stores), await started(stores)
    await crashed.close()  # gone without marking its clean stop: as after kill -9

    await survivor.mark_in_use(False)

    assert not await (await stores()).was_shut_down_cleanly()


async def test_the_last_process_to_stop_cleanly_leaves_the_store_clean(stores: OpenStore) -> None:
    await clean_history(stores)
    first, second = await started(stores), await started(stores)
    await first.mark_in_use(False)
    await second.mark_in_use(False)

    assert await (await stores()).was_shut_down_cleanly()


async def test_a_start_after_a_crash_reconciles_once(stores: OpenStore) -> None:
    await clean_history(stores)
    crashed = await started(stores)
    await crashed.close()

    restarted = await stores()
    assert not await restarted.was_shut_down_cleanly()
    await restarted.mark_in_use(True)  # it reconciles: the dead process's mark is settled
    await restarted.mark_in_use(False)

    assert await (await stores()).was_shut_down_cleanly()
