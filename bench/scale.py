"""`python -m bench.scale [--quick] [--blobs N]`: pullcache with a large store, as one JSON object.

Builds a storage dir holding N blob files (default 100,000) and their index rows, then, in a
fresh child process (so its peak RSS is the server's own):
- startup_seconds: build_app + startup until GET /v2/ answers (the target is < 2 s);
- eviction_pass_seconds: one LRU pass evicting 1,000 cached blobs (target: well under 1 s);
- gc_dry_run_seconds: one GC plan over the whole store (what the periodic sweep costs);
- peak_rss_mib: the child's peak resident memory over all of that (target: < 200 MiB).
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BLOB_SIZE = 512  # bytes per blob: the count is what is measured, not the bytes
EVICT_BLOBS = 1_000
TARGETS = {"startup_seconds": 2.0, "eviction_pass_seconds": 1.0, "peak_rss_mib": 200.0}


def build_storage(root: Path, count: int) -> None:
    """count content-addressed blob files plus matching index rows (oldest first), fast."""
    from pullcache.cache.index import CACHED, BlobIndex
    from pullcache.cache.layout import Layout
    from pullcache.digests import Digest

    layout = Layout(root)
    layout.make_dirs()

    async def make_schema() -> None:
        index = BlobIndex(layout.index)
        await index.open()
        await index.set_meta("clean_shutdown", "1")
        await index.close()
    asyncio.run(make_schema())

    rows = []
    start = time.time() - count
    made: set[Path] = set()
    for i in range(count):
        data = i.to_bytes(8, "big") * (BLOB_SIZE // 8)
        digest = Digest("sha256", hashlib.sha256(data).hexdigest())
        path = layout.blob(digest)
        if path.parent not in made:
            path.parent.mkdir(parents=True, exist_ok=True)
            made.add(path.parent)
        with open(path, "wb") as handle:
            handle.write(data)
        rows.append((str(digest), BLOB_SIZE, CACHED, start + i, start + i))
    with sqlite3.connect(layout.index) as db:
        db.executemany("INSERT INTO blobs (digest, size, origin, last_access, created) VALUES (?, ?, ?, ?, ?)", rows)


async def measure(root: Path) -> dict[str, float]:
    """Run in the child: start the app on the store, evict, plan a GC; return the timings."""
    import aiohttp
    from aiohttp import web

    from pullcache.api.appkeys import STORE
    from pullcache.app import EVICTION, build_app
    from pullcache.cache.index import CACHED
    from pullcache.config import Config, StorageConfig
    from pullcache.eviction.gc import collect_garbage
    from pullcache.eviction.lru import evict_to

    config = Config(listen="127.0.0.1:0", storage=StorageConfig(path=str(root), max_size=1 << 50))
    started = time.perf_counter()
    app = build_app(config)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/v2/") as response:
        assert response.status == 200, response.status
    startup = time.perf_counter() - started

    store = app[STORE]
    assert app[EVICTION].reconciling is None, "a clean store must not be reconciled at start-up"
    cached = store.index.totals()[CACHED]
    started = time.perf_counter()
    evicted = await evict_to(store, cached.bytes - EVICT_BLOBS * BLOB_SIZE)
    eviction = time.perf_counter() - started
    assert evicted.blobs == EVICT_BLOBS, evicted

    started = time.perf_counter()
    await collect_garbage(store, config.gc, dry_run=True)
    gc_plan = time.perf_counter() - started

    await runner.cleanup()
    return {
        "blobs": cached.blobs,
        "startup_seconds": round(startup, 3),
        "eviction_pass_blobs": evicted.blobs,
        "eviction_pass_seconds": round(eviction, 3),
        "gc_dry_run_seconds": round(gc_plan, 3),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.splitlines()[0])
    parser.add_argument("--blobs", type=int, default=100_000, help="blobs in the store (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="20,000 blobs instead of 100,000")
    parser.add_argument("--child", metavar="DIR", help=argparse.SUPPRESS)  # the measuring process
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(measure(Path(args.child)))))
        return 0

    count = 20_000 if args.quick else args.blobs
    with tempfile.TemporaryDirectory(prefix="pullcache-scale-") as tmp:
        root = Path(tmp) / "data"
        started = time.perf_counter()
        build_storage(root, count)
        built = time.perf_counter() - started
        child = subprocess.run([sys.executable, "-m", "bench.scale", "--child", str(root)], check=False,
                               capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parents[1],
                               env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
        if child.returncode != 0:
            sys.stderr.write(child.stderr)
            return child.returncode
        results = {"build_seconds": round(built, 1), **json.loads(child.stdout)}
    results["targets_met"] = all(results[key] < limit for key, limit in TARGETS.items())
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
