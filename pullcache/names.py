"""The grammar of repository names, tags and references (OCI distribution spec), without HTTP.

Any name or reference accepted here is safe to use as path components below the store: the
grammar admits no `..`, no empty component, no absolute path and no slash inside a tag. api/names.py
turns the errors into the spec's error codes; `pullcache warm` reports them as they are.
"""
from __future__ import annotations

import functools
import re

from pullcache.digests import Digest

NAME_PATTERN = re.compile(r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$")
TAG_PATTERN = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$")
MAX_NAME_LENGTH = 255
GLOB_CACHE_SIZE = 1024  # globs come from config and robot grants; bounded all the same


class InvalidName(ValueError):
    """Not a repository name; the message says what is wrong with it."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


class InvalidTag(ValueError):
    """Not a tag (and not a digest either)."""

    def __init__(self, tag: str) -> None:
        super().__init__(f"invalid tag {tag!r}: up to 128 of [A-Za-z0-9_.-], not starting with '.' or '-'")
        self.tag = tag


def parse_name(name: str) -> str:
    """The repository name itself, or InvalidName."""
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidName(name, f"repository name is longer than {MAX_NAME_LENGTH} characters")
    if not NAME_PATTERN.match(name):
        raise InvalidName(name, f"invalid repository name {name!r}: components are lowercase letters and digits "
                                "separated by '.', '_', '__' or '-', joined by '/'")
    return name


def parse_reference(reference: str) -> str | Digest:
    """A tag (str) or a Digest; InvalidTag or DigestError for anything else."""
    if ":" in reference:  # the tag grammar has no colon: only a digest can mean this
        return Digest.parse(reference)
    if not TAG_PATTERN.match(reference):
        raise InvalidTag(reference)
    return reference


@functools.lru_cache(maxsize=GLOB_CACHE_SIZE)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    """`*` matches within one path component, `**` across any number of them (`team/**` is team/a, team/a/b).
    Cached: rules and grants use a handful of globs, matched against every name of a _catalog."""
    parts = []
    for piece in re.split(r"(\*\*/?|\*)", pattern):
        if piece in ("**", "**/"):
            parts.append(".*" if piece == "**" else "(?:.*/)?")
        elif piece == "*":
            parts.append("[^/]*")
        else:
            parts.append(re.escape(piece))
    return re.compile("".join(parts))


def matches_glob(name: str, pattern: str) -> bool:
    """Whether repository `name` matches a config glob (local.deny_push, local.allow_push)."""
    return _glob_regex(pattern).fullmatch(name) is not None
