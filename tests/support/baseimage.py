"""A `python:3.11-slim` stand-in made from Debian's own packages, for building images offline.

No public base image can be pulled here, so the image tests `debootstrap` a minimal bookworm
with Python 3.11 (what python:3.11-slim is built from) and `docker import` it. The root
filesystem is cached as a tarball under CACHE_DIR, keyed on the release and the package list,
so only the first run of a machine pays for debootstrap; a file lock keeps two concurrent test
sessions from both building it.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

from .cleanup import remove_tree
from .procs import clean_env

CACHE_DIR = Path(os.environ.get("PULLCACHE_TEST_CACHE", "/var/cache/pullcache-tests"))
RELEASE = "bookworm"
# Debian's mirror, as the host's apt reaches it (debootstrap fetches over the host network).
MIRROR = "http://deb.debian.org/debian"
# What the Dockerfile expects of a python:3.x-slim base: `python`, `python -m venv` with pip,
# CA certificates, and groupadd/useradd (passwd is in minbase).
PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates")
DEBOOTSTRAP_TIMEOUT = 1200.0


def rootfs_tarball() -> Path:
    """The cached minbase tarball, debootstrapped on first use."""
    key = hashlib.sha256(f"{RELEASE} {MIRROR} {' '.join(PACKAGES)}".encode()).hexdigest()[:12]
    tarball = CACHE_DIR / f"debootstrap-{RELEASE}-{key}.tar"
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / f".{tarball.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not tarball.exists():
            _debootstrap(tarball)
    return tarball


def _debootstrap(tarball: Path) -> None:
    root = Path(tempfile.mkdtemp(prefix="pc-debootstrap-", dir=CACHE_DIR))
    partial = tarball.with_suffix(".tar.partial")
    try:
        _run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
             RELEASE, str(root / "rootfs"), MIRROR],
            timeout=DEBOOTSTRAP_TIMEOUT,
        )
        rootfs = root / "rootfs"
        # Like the slim images: no package lists or downloaded .debs in the layer.
        for sub in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (rootfs / sub).glob("*.deb" if "archives" in sub else "*_*"):
                entry.unlink()
        _run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(partial), "."], timeout=300)
        partial.rename(tarball)
    finally:
        partial.unlink(missing_ok=True)
        remove_tree(root)


def _run(argv: list[str], *, timeout: float) -> None:
    result = subprocess.run(argv, env=clean_env(), capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
