"""Where each thing lives under storage.path: the map below, and the top-level places as paths.

Each place's own files are named by the module that keeps them: a repository's links by cache/repos.py,
an upload session's files by cache/uploads.py.

    blobs/<alg>/<hex[:2]>/<hex>                  content-addressed bytes (layers, configs, manifests)
    repositories/<name>/...                      local (pushed) repositories
    proxied/<upstream>/<name>/...                repositories cached from an upstream (tags and manifests;
                                                 a cached blob serves every repository, so it has no link)
        _manifests/tags/<tag>                    {"digest", "confirmed_at"} (older: the bare digest; mtime)
        _manifests/revisions/<alg>/<hex>         file holding the manifest's media type
        _layers/<alg>/<hex>                      empty link: the (local) repository may serve this blob
        _referrers/<alg>/<hex>/<alg>-<hex>       descriptor JSON of a manifest whose subject is <alg>:<hex>
                                                 (local repositories; an upstream's are asked of it)
    uploads/<uuid>/{data,info.json}              upload sessions
    tmp/                                         temp files before their rename (same filesystem)
    index.sqlite                                 derived index of blobs: size, origin, last access
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pullcache.digests import Digest

LOCAL_ROOT = "repositories"
CACHED_ROOT = "proxied"


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def blobs(self) -> Path:
        return self.root / "blobs"

    @property
    def uploads(self) -> Path:
        return self.root / "uploads"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def index(self) -> Path:
        return self.root / "index.sqlite"

    def blob(self, digest: Digest) -> Path:
        return self.blobs / digest.algorithm / digest.hex[:2] / digest.hex

    def repositories(self, cached: bool) -> Path:
        return self.root / (CACHED_ROOT if cached else LOCAL_ROOT)

    def repository(self, name: str, cached: bool) -> Path:
        return self.repositories(cached) / name

    def make_dirs(self) -> None:
        for path in (self.blobs, self.uploads, self.tmp, self.repositories(False), self.repositories(True)):
            path.mkdir(parents=True, exist_ok=True)


def digest_from_blob_path(path: Path) -> Digest | None:
    """The digest a file under blobs/ stands for, or None for anything that is not a blob file."""
    try:
        return Digest.parse(f"{path.parent.parent.name}:{path.name}")
    except ValueError:
        return None
