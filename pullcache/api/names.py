"""Validation of what clients put in a /v2/ path: repository names, tags, references.

Any name or reference that leaves here is safe to use as path components below the store:
the spec's grammar admits no `..`, no empty component, no absolute path and no encoded slash.
"""
from __future__ import annotations

import re

from pullcache.api.errors import RegistryError
from pullcache.digests import Digest, DigestError

NAME_PATTERN = re.compile(r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$")
TAG_PATTERN = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$")
MAX_NAME_LENGTH = 255


def check_name(name: str) -> str:
    """The repository name, or NAME_INVALID naming what is wrong with it."""
    if len(name) > MAX_NAME_LENGTH:
        raise RegistryError("NAME_INVALID", f"repository name is longer than {MAX_NAME_LENGTH} characters",
                            detail={"name": name[:300]})
    if not NAME_PATTERN.match(name):
        raise RegistryError("NAME_INVALID", f"invalid repository name {name!r}: components are lowercase "
                            "letters and digits separated by '.', '_', '__' or '-', joined by '/'",
                            detail={"name": name})
    return name


def check_digest(text: str, code: str = "DIGEST_INVALID") -> Digest:
    """A parsed digest, or the given error code with the parser's reason."""
    try:
        return Digest.parse(text)
    except DigestError as exc:
        raise RegistryError(code, f"digest {exc}", detail={"digest": text}) from exc


def is_digest_reference(reference: str) -> bool:
    return ":" in reference


def check_reference(reference: str) -> str | Digest:
    """A tag (str) or a Digest; anything else is a 400 naming the grammar it broke."""
    if is_digest_reference(reference):
        return check_digest(reference)
    if not TAG_PATTERN.match(reference):
        raise RegistryError("TAG_INVALID",
                            f"invalid tag {reference!r}: up to 128 of [A-Za-z0-9_.-], not starting with '.' or '-'",
                            detail={"tag": reference})
    return reference
