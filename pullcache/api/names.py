"""What clients put in a /v2/ path, checked against the grammar of pullcache/names.py and refused
with the spec's error codes (NAME_INVALID, TAG_INVALID, DIGEST_INVALID) when it does not fit."""
from __future__ import annotations

from pullcache.api.errors import DIGEST_INVALID, NAME_INVALID, TAG_INVALID
from pullcache.digests import Digest, DigestError
from pullcache.names import (
    NAME_PATTERN,
    InvalidName,
    InvalidTag,
    parse_name,
    parse_reference,
)

__all__ = ["NAME_PATTERN", "check_digest", "check_name", "check_reference"]


def check_name(name: str) -> str:
    """The repository name, or NAME_INVALID naming what is wrong with it."""
    try:
        return parse_name(name)
    except InvalidName as exc:
        raise NAME_INVALID.error(str(exc), detail={"name": name[:300]}) from exc


def check_digest(text: str) -> Digest:
    """A parsed digest, or DIGEST_INVALID with the parser's reason."""
    try:
        return Digest.parse(text)
    except DigestError as exc:
        raise DIGEST_INVALID.error(f"digest {exc}", detail={"digest": text}) from exc


def check_reference(reference: str) -> str | Digest:
    """A tag (str) or a Digest; anything else is a 400 naming the grammar it broke."""
    try:
        return parse_reference(reference)
    except DigestError as exc:
        raise DIGEST_INVALID.error(f"digest {exc}", detail={"digest": reference}) from exc
    except InvalidTag as exc:
        raise TAG_INVALID.error(str(exc), detail={"tag": reference}) from exc
