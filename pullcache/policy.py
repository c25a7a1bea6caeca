"""Pull policy per upstream (`rules:`): which repositories and tags may be pulled through pullcache.

Rules are read in order and the first that matches decides; when none does, `default` does (allow unless
the list ends with `default: deny`). A rule names a repository glob (`*` one path component, `**` any
number, as local.deny_push), optionally `:tag-glob`, and optionally a `tags` regex the tag must contain a
match of. Names are the upstream's (`library/alpine` for Docker Hub's `alpine`).

A pull by digest has no tag to judge, so rules with a tag condition pass it over. But an image pulled by
an allowed tag goes on by digest (an index's platform manifests, a manifest's config and layers), so every
digest that an allowed manifest references, and the manifest's own, is vouched for in its repository and
allowed whatever the rules say. Vouches live in memory; a client pulling again starts from the tag, which
vouches for them again.
"""
from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass

from cachetools import LRUCache

from . import metrics
from .config import PullRule, PullRules
from .names import matches_glob

MAX_VOUCHED = 200_000  # (upstream, repository, digest) entries, ~100 bytes each
MAX_PARSED = 10_000    # manifests whose references are remembered: a cached tag is served without parsing it again


class PullDenied(Exception):
    """The pull policy refuses this pull; the message names the rule, for the client."""

    def __init__(self, upstream: str, message: str) -> None:
        super().__init__(message)
        self.upstream = upstream
        self.message = message


@dataclass(frozen=True)
class _Decision:
    allowed: bool
    rule: str  # `rules[0] (deny: "*/*:latest")`, or the default


def _matches(rule: PullRule, repository: str, tag: str | None) -> bool:
    if not matches_glob(repository, rule.repository):
        return False
    if rule.tag_glob is None and rule.tags is None:
        return True
    if tag is None:  # a digest: nothing for a tag condition to judge
        return False
    if rule.tag_glob is not None and not matches_glob(tag, rule.tag_glob):
        return False
    return rule.tags is None or rule.tags_regex.search(tag) is not None


def decide(rules: PullRules, repository: str, tag: str | None) -> _Decision:
    """What the rules say about repository:tag (tag None: a pull by digest)."""
    for index, rule in enumerate(rules.rules):
        if _matches(rule, repository, tag):
            return _Decision(rule.action == "allow", f"rules[{index}] ({rule})")
    return _Decision(not rules.default_deny, "default: deny" if rules.default_deny else "default: allow")


def referenced_digests(body: bytes) -> list[str]:
    """The digests a manifest or index names: platform manifests, config, layers."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return []
    if not isinstance(document, dict):
        return []
    found = [document.get("config")]
    for key in ("manifests", "layers"):
        entries = document.get(key)
        if isinstance(entries, list):
            found.extend(entries)
    return [entry["digest"] for entry in found if isinstance(entry, dict) and isinstance(entry.get("digest"), str)]


def applies(rules: PullRules) -> bool:
    """Whether the rules could refuse anything (without them every pull is allowed, and nothing need be checked)."""
    return bool(rules.rules) or rules.default_deny


class PullPolicy:
    """The rules of every upstream plus the digests their allowed manifests vouch for.

    `ruled` names the upstreams that have rules (None: any may): vouching for another's manifests would be
    work for nothing, a JSON parse per manifest served, since every pull from it is allowed anyway.
    """

    def __init__(self, ruled: Collection[str] | None = None) -> None:
        self._ruled = None if ruled is None else frozenset(ruled)
        self._vouched: LRUCache[tuple[str, str, str], bool] = LRUCache(MAX_VOUCHED)
        self._references: LRUCache[str, list[str]] = LRUCache(MAX_PARSED)  # by manifest digest: bytes never change

    def check(self, upstream: str, rules: PullRules, repository: str, reference: str) -> None:
        """PullDenied unless the rules allow repository@reference (a tag, or a digest `alg:hex`)."""
        if not applies(rules):
            return
        is_digest = ":" in reference
        if is_digest and (upstream, repository, reference) in self._vouched:
            return
        decision = decide(rules, repository, None if is_digest else reference)
        if decision.allowed:
            return
        metrics.policy_denied.labels(upstream).inc()
        what = f"{repository}@{reference}" if is_digest else f"{repository}:{reference}"
        raise PullDenied(upstream, f"pulling {what} from upstream {upstream} is denied by its pull policy: "
                                   f"{decision.rule}")

    def vouch(self, upstream: str, repository: str, digest: str | None, body: bytes | None) -> None:
        """An allowed manifest was served: it and what it references may be pulled by digest."""
        if self._ruled is not None and upstream not in self._ruled:
            return
        digests = ([digest] if digest else []) + (self._referenced(digest, body) if body else [])
        for each in digests:
            self._vouched[(upstream, repository, each)] = True

    def _referenced(self, digest: str | None, body: bytes) -> list[str]:
        if digest is None:
            return referenced_digests(body)
        found = self._references.get(digest)
        if found is None:
            found = self._references[digest] = referenced_digests(body)
        return found
