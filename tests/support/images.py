"""Deterministic test images in Docker and OCI media types, and pushing them.

Layers are real gzip'd tars (fixed mtimes, seeded random content) so dockerd and
containerd can unpack them and the same inputs always give the same digests. Large
layers for the benchmark are generated and uploaded as a stream.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import tarfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from .registry_client import RegistryClient, sha256_digest

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
MANIFEST_TYPES = (OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST)

_MTIME = 1_700_000_000  # fixed so tars are byte-identical run to run
_CREATED = "2023-11-14T22:13:20Z"
_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_MiB = 1024 * 1024


@dataclass(frozen=True)
class Blob:
    """A config or layer. `data` is None for streamed (large) layers."""

    media_type: str
    digest: str
    size: int
    data: bytes | None = field(repr=False)
    diff_id: str | None = None  # sha256 of the uncompressed tar, layers only

    def descriptor(self) -> dict[str, object]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True)
class Manifest:
    """A manifest or index exactly as pushed: `data` is the raw bytes the digest is of."""

    media_type: str
    digest: str
    data: bytes = field(repr=False)

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass(frozen=True)
class PlatformImage:
    """One platform's image manifest with its config and layers."""

    platform: str  # "linux/amd64", "linux/arm64/v8", ...
    manifest: Manifest
    config: Blob
    layers: tuple[Blob, ...]


@dataclass(frozen=True)
class Image:
    """A tagged image: `index` is None for a single-platform image.

    `digest` is what the tag resolves to (the index if there is one), `platforms` maps
    "os/arch[/variant]" to the per-platform manifest.
    """

    repo: str
    tag: str
    index: Manifest | None
    platforms: Mapping[str, PlatformImage]

    @property
    def top(self) -> Manifest:
        return self.index or next(iter(self.platforms.values())).manifest

    @property
    def digest(self) -> str:
        return self.top.digest

    @property
    def media_type(self) -> str:
        return self.top.media_type

    @property
    def ref(self) -> str:
        return f"{self.repo}:{self.tag}"

    def blobs(self) -> list[Blob]:
        """Every config and layer, each digest once."""
        seen: dict[str, Blob] = {}
        for image in self.platforms.values():
            for blob in (image.config, *image.layers):
                seen.setdefault(blob.digest, blob)
        return list(seen.values())


# --- content -------------------------------------------------------------------------


def seeded_bytes(seed: str, size: int) -> bytes:
    """`size` pseudo-random bytes that depend only on `seed`."""
    return random.Random(seed).randbytes(size)


def layer_tar_gz(files: Mapping[str, bytes]) -> tuple[bytes, str]:
    """A reproducible gzip'd tar of regular files (parents added); returns (blob, diff_id)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = sorted({"/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)})
        for name in dirs:
            info = _tarinfo(name, tarfile.DIRTYPE, mode=0o755)
            tar.addfile(info)
        for name in sorted(files):
            info = _tarinfo(name, tarfile.REGTYPE, mode=0o644)
            info.size = len(files[name])
            tar.addfile(info, io.BytesIO(files[name]))
    tar_bytes = raw.getvalue()
    return _gzip(tar_bytes), sha256_digest(tar_bytes)


def _tarinfo(name: str, kind: bytes, *, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = _MTIME
    info.uname = info.gname = "root"
    return info


def _gzip(data: bytes, level: int = 6) -> bytes:
    # wbits=31 writes a gzip header with mtime 0, so the output is reproducible.
    compressor = zlib.compressobj(level, zlib.DEFLATED, 31)
    return compressor.compress(data) + compressor.flush()


def make_layer(seed: str, size: int, *, oci: bool = False) -> Blob:
    """A layer holding `/data/<seed>.bin` with `size` seeded random bytes."""
    data, diff_id = layer_tar_gz({f"data/{_safe(seed)}.bin": seeded_bytes(seed, size)})
    return Blob(OCI_LAYER if oci else DOCKER_LAYER, sha256_digest(data), len(data), data, diff_id)


def _os_layer(repo: str, platform: str, *, oci: bool) -> Blob:
    """A small 'root filesystem' layer so the image looks like a distro to a client."""
    os_release = f'NAME="pullcache test"\nID=pullcachetest\nIMAGE="{repo}"\nPLATFORM="{platform}"\n'
    files = {"etc/os-release": os_release.encode(), "etc/hostname": b"pullcache-test\n"}
    data, diff_id = layer_tar_gz(files)
    return Blob(OCI_LAYER if oci else DOCKER_LAYER, sha256_digest(data), len(data), data, diff_id)


def _safe(seed: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in seed)


def _json_bytes(obj: object) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=False).encode()


def _platform_fields(platform: str) -> dict[str, str]:
    parts = platform.split("/")
    fields = {"architecture": parts[1], "os": parts[0]}
    if len(parts) > 2:
        fields["variant"] = parts[2]
    return fields


def build_platform_image(
    repo: str, platform: str, layers: Sequence[Blob], *, oci: bool
) -> PlatformImage:
    """Config plus manifest for `layers`, in Docker or OCI media types."""
    config_obj = {
        **_platform_fields(platform),
        "created": _CREATED,
        "config": {"Env": [_PATH_ENV], "Cmd": ["/bin/sh"], "Labels": {"pullcache.test.repo": repo}},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [{"created": _CREATED, "created_by": "pullcache test harness"} for _ in layers],
    }
    config_data = _json_bytes(config_obj)
    config = Blob(OCI_CONFIG if oci else DOCKER_CONFIG, sha256_digest(config_data),
                  len(config_data), config_data)
    media_type = OCI_MANIFEST if oci else DOCKER_MANIFEST
    manifest_data = _json_bytes({
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": config.descriptor(),
        "layers": [layer.descriptor() for layer in layers],
    })
    manifest = Manifest(media_type, sha256_digest(manifest_data), manifest_data)
    return PlatformImage(platform, manifest, config, tuple(layers))


def build_index(images: Sequence[PlatformImage], *, oci: bool) -> Manifest:
    media_type = OCI_INDEX if oci else DOCKER_LIST
    data = _json_bytes({
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": [
            {
                "mediaType": image.manifest.media_type,
                "digest": image.manifest.digest,
                "size": image.manifest.size,
                "platform": _platform_fields(image.platform),
            }
            for image in images
        ],
    })
    return Manifest(media_type, sha256_digest(data), data)


def build_image(
    repo: str,
    tag: str,
    *,
    oci: bool = False,
    platforms: Sequence[str] = ("linux/amd64", "linux/arm64/v8"),
    layer_sizes: Sequence[int] = (16 * 1024,),
    multi: bool = True,
) -> Image:
    """An image with, per platform, a small OS layer plus one seeded layer per size.

    The OS layer depends on repo and platform only, so tags of one repository share it
    (as real tags share base layers); data layers are seeded by repo, tag, platform and
    position, so they are unique. Rebuilding gives identical digests. `multi=False`
    gives a single-platform image (first platform) whose tag names the manifest itself.
    """
    chosen = platforms if multi else platforms[:1]
    per_platform = {}
    for platform in chosen:
        layers = [_os_layer(repo, platform, oci=oci)]
        layers += [
            make_layer(f"{repo}:{tag}:{platform}:{i}", size, oci=oci)
            for i, size in enumerate(layer_sizes)
        ]
        per_platform[platform] = build_platform_image(repo, platform, layers, oci=oci)
    index = build_index(list(per_platform.values()), oci=oci) if multi else None
    return Image(repo, tag, index, per_platform)


# --- pushing -------------------------------------------------------------------------


def push_image(client: RegistryClient, image: Image, *, extra_tags: Sequence[str] = ()) -> None:
    """Push blobs (skipping those present), platform manifests by digest, then the tag(s)."""
    for blob in image.blobs():
        if blob.data is None:
            if not client.blob_exists(image.repo, blob.digest):
                raise RuntimeError(f"streamed blob {blob.digest} missing in {image.repo}")
            continue
        if not client.blob_exists(image.repo, blob.digest):
            client.upload_blob(image.repo, blob.data)
    if image.index is not None:
        for platform_image in image.platforms.values():
            m = platform_image.manifest
            client.put_manifest(image.repo, m.digest, m.data, m.media_type)
    top = image.top
    for tag in (image.tag, *extra_tags):
        digest = client.put_manifest(image.repo, tag, top.data, top.media_type)
        if digest != top.digest:
            raise RuntimeError(f"registry stored {image.repo}:{tag} as {digest}, expected {top.digest}")


class BigLayer:
    """A gzip'd tar holding one `size`-byte file, produced chunk by chunk.

    The file repeats one seeded 1 MiB block, which is cheap to generate, and is stored
    uncompressed (deflate level 0) so generation runs far faster than any network (1 GiB
    in about 5 s with the upload); it is still a valid tar.gz that clients unpack.
    `diff_id` is known once the chunks have been iterated.
    """

    def __init__(self, size: int, *, seed: str = "big") -> None:
        self.size = size
        self.seed = seed
        self.diff_id: str | None = None

    def __iter__(self) -> Iterator[bytes]:
        block = seeded_bytes(self.seed, _MiB)
        info = _tarinfo(f"data/{_safe(self.seed)}.bin", tarfile.REGTYPE, mode=0o644)
        info.size = self.size
        compressor = zlib.compressobj(0, zlib.DEFLATED, 31)
        tar_hash = hashlib.sha256()

        def feed(raw: bytes) -> bytes:
            tar_hash.update(raw)
            return compressor.compress(raw)

        yield feed(info.tobuf(format=tarfile.PAX_FORMAT))
        remaining = self.size
        while remaining:
            piece = block if remaining >= _MiB else block[:remaining]
            remaining -= len(piece)
            yield feed(piece)
        # Pad the file to a tar block, then the two zero blocks that end an archive.
        yield feed(b"\0" * ((-self.size) % tarfile.BLOCKSIZE + 2 * tarfile.BLOCKSIZE))
        yield compressor.flush()
        self.diff_id = "sha256:" + tar_hash.hexdigest()


def push_big_layer(
    client: RegistryClient, repo: str, size: int, *, seed: str = "big", oci: bool = False
) -> Blob:
    """Stream-upload a large layer in one pass; the returned Blob has no data."""
    layer = BigLayer(size, seed=seed)
    digest, blob_size = client.upload_blob_stream(repo, (c for c in layer if c))
    return Blob(OCI_LAYER if oci else DOCKER_LAYER, digest, blob_size, None, layer.diff_id)


def push_big_image(
    client: RegistryClient, repo: str, tag: str, size: int, *, seed: str = "big", oci: bool = False
) -> Image:
    """A single-platform linux/amd64 image whose only layer is a streamed `size`-byte file."""
    layer = push_big_layer(client, repo, size, seed=seed, oci=oci)
    image = Image(repo, tag, None,
                  {"linux/amd64": build_platform_image(repo, "linux/amd64", [layer], oci=oci)})
    push_image(client, image)
    return image
