"""Building deploy/Dockerfile with a real dockerd, the way an operator would, but offline.

The builder daemon is a private dockerd (own root, socket and containerd, see dockerd.py) on
overlay2, since a build writes many layers and vfs copies each one whole. The base image is
the debootstrapped bookworm of baseimage.py, passed as the Dockerfile's PYTHON_IMAGE build
argument. The build context is a copy of the repository with what an operator's checkout
holds besides the source (a .venv, ./data with a cache, .git) and the host's CA bundle in
deploy/certs/, which is how the image trusts the TLS-intercepting path this machine's pip
takes to PyPI. Build steps use the host network (`--network host`), as the host's pip does,
and the host pip's http(s) index settings, if any, as build arguments (its file:// indexes
and find-links directories are this machine's alone; pullcache's dependencies come from PyPI).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .baseimage import RELEASE, rootfs_tarball
from .dockerd import DOCKER_BIN, Dockerd
from .procs import StartError, clean_env

REPO_ROOT = Path(__file__).resolve().parents[2]
BASE_TAG = f"pullcache-test-base:{RELEASE}"
# What stays out of the copied context, as it would not be in a fresh clone.
_NOT_COPIED = shutil.ignore_patterns(".git", ".venv", "data", "__pycache__", ".pytest_cache", "*.egg-info",
                                     ".mypy_cache", "*.crt")
# An operator's checkout: a virtualenv, a cache under ./data and git objects, none of which
# the image needs. Each is JUNK_SIZE bytes, so a context that sends them is unmistakable.
JUNK = (".venv/lib/junk.bin", "data/blobs/sha256/ab/junk", ".git/objects/pack/junk.pack")
JUNK_SIZE = 16 * 1024 * 1024
BUILD_TIMEOUT = 900.0


def host_ca_bundle() -> Path:
    """The CA bundle the host's pip trusts (pip's `cert`, else the usual variables, else Debian's)."""
    for name in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        value = os.environ.get(name)
        if value and Path(value).is_file():
            return Path(value)
    return Path("/etc/ssl/certs/ca-certificates.crt")


def host_pip_index_args() -> dict[str, str]:
    """The host pip's index settings that a container can use too (http(s) URLs, not file:// ones),
    as the Dockerfile's PIP_INDEX_URL / PIP_EXTRA_INDEX_URL build arguments."""
    listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                             timeout=60).stdout
    found: dict[str, list[str]] = {}
    for line in listing.splitlines():
        key, _, value = line.partition("=")
        name = key.rsplit(".", 1)[-1]
        if name in ("index-url", "extra-index-url"):
            urls = [u for u in value.strip("'").split() if u.startswith(("http://", "https://"))]
            found.setdefault(name, []).extend(urls)
    return {f"PIP_{name.upper().replace('-', '_')}": " ".join(urls) for name, urls in found.items() if urls}


def operator_checkout(directory: Path) -> Path:
    """A copy of the repository as an operator's working tree: source, CA in deploy/certs, junk."""
    shutil.copytree(REPO_ROOT, directory, ignore=_NOT_COPIED)
    shutil.copyfile(host_ca_bundle(), directory / "deploy" / "certs" / "site.crt")
    for junk in JUNK:
        path = directory / junk
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as out:
            out.truncate(JUNK_SIZE)
    return directory


class BuilderDaemon(Dockerd):
    """A private dockerd whose client can run the classic builder or BuildKit."""

    def __init__(self, storage_driver: str = "overlay2") -> None:
        super().__init__()
        argv = self.process.argv
        argv[argv.index("--storage-driver=vfs")] = f"--storage-driver={storage_driver}"

    @classmethod
    def started(cls) -> BuilderDaemon:
        """On overlay2, or on vfs where overlay2 cannot run (a /tmp that is itself an overlay)."""
        daemon = cls()
        try:
            return daemon.start()
        except StartError:
            daemon.stop()
        return cls("vfs").start()

    def docker_with(self, env: dict[str, str], *args: str, timeout: float = BUILD_TIMEOUT
                    ) -> subprocess.CompletedProcess[str]:
        """`docker ARGS` with extra client environment (DOCKER_BUILDKIT); raises with output on failure."""
        result = subprocess.run(
            [DOCKER_BIN, "-H", self.host, *args],
            env=clean_env(DOCKER_CONFIG=str(self.client_config), **env),
            capture_output=True, text=True, timeout=timeout,
        )
        if result.returncode != 0:
            raise AssertionError(
                f"docker {' '.join(args)} exited {result.returncode}\nstdout:\n{result.stdout[-6000:]}\n"
                f"stderr:\n{result.stderr[-6000:]}\ndockerd log tail:\n{self.process.log_tail(40)}"
            )
        return result

    def import_base(self) -> str:
        """`docker import` the cached debootstrap tarball as BASE_TAG."""
        self.docker("import", "--change", 'CMD ["python3"]', str(rootfs_tarball()), BASE_TAG)
        return BASE_TAG


@dataclass
class Build:
    """One `docker build` of deploy/Dockerfile: its tag, output and wall time."""

    tag: str
    output: str
    seconds: float

    @property
    def context_bytes(self) -> int:
        """What the classic builder reported sending ("Sending build context to Docker daemon  1.2MB")."""
        match = re.search(r"Sending build context to Docker daemon\s+([\d.]+)([kMG]?B)", self.output)
        if match is None:
            raise AssertionError(f"no context size in the build output:\n{self.output[:2000]}")
        scale = {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}[match.group(2)]
        return int(float(match.group(1)) * scale)


def build_image(daemon: BuilderDaemon, context: Path, tag: str, *, buildkit: bool, build_args: dict[str, str],
                dockerfile: str = "deploy/Dockerfile") -> Build:
    """`docker build -f CONTEXT/DOCKERFILE --build-arg K=V... --network host -t TAG CONTEXT`."""
    env = {"DOCKER_BUILDKIT": "1" if buildkit else "0"}
    if buildkit:
        env["BUILDKIT_PROGRESS"] = "plain"
    args = [word for key, value in build_args.items() for word in ("--build-arg", f"{key}={value}")]
    started = time.monotonic()
    result = daemon.docker_with(env, "build", "--network", "host", "-f", str(context / dockerfile), *args,
                                "-t", tag, str(context))
    return Build(tag, result.stdout + result.stderr, time.monotonic() - started)
