"""Content digests (`sha256:<hex>`, `sha512:<hex>`): parsing and incremental hashing.

Shared by api/ (validation of what clients send), cache/ (verification of what is written) and
upstream/ (verification of what arrives), so the grammar lives in exactly one place.

Nothing here moves work off the event loop: a caller hashing large data runs it in a thread
(cache/writer.py hashes each flushed batch in the thread that writes it; hashlib releases the GIL).
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

ALGORITHMS = {"sha256": 64, "sha512": 128}
_DIGEST = re.compile(r"^([a-z0-9]+(?:[.+_-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)$")


class DigestError(ValueError):
    """Text that is not a digest, or a digest of an algorithm pullcache does not support."""

    def __init__(self, text: str, reason: str) -> None:
        super().__init__(f"{text!r} {reason}")
        self.text = text
        self.reason = reason


@dataclass(frozen=True, order=True)
class Digest:
    algorithm: str
    hex: str

    @classmethod
    def parse(cls, text: str) -> Digest:
        """Strictly parse `alg:hex`; unsupported algorithms and wrong lengths raise DigestError."""
        match = _DIGEST.match(text or "")
        if not match:
            raise DigestError(text, "is not a digest (expected algorithm:hex, e.g. sha256:<64 hex>)")
        algorithm, hexpart = match.groups()
        if algorithm not in ALGORITHMS:
            raise DigestError(text, f"uses unsupported algorithm {algorithm!r} (expected sha256 or sha512)")
        if len(hexpart) != ALGORITHMS[algorithm] or not re.fullmatch(r"[0-9a-f]+", hexpart):
            raise DigestError(text, f"is not a {algorithm} digest (expected {ALGORITHMS[algorithm]} lowercase hex)")
        return cls(algorithm, hexpart)

    @classmethod
    def of(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


class Hasher:
    """Incremental hash that counts the bytes it has seen."""

    def __init__(self, algorithm: str = "sha256") -> None:
        self.algorithm = algorithm
        self._hash = hashlib.new(algorithm)
        self.size = 0

    def update(self, chunk: bytes) -> None:
        self._hash.update(chunk)
        self.size += len(chunk)

    def digest(self) -> Digest:
        return Digest(self.algorithm, self._hash.hexdigest())
