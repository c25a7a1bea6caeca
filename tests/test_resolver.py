"""Routing exactly as DESIGN.md says: path prefix, containerd's ?ns=, bare names local-first then the default
upstream with Docker Hub's library/ rule, and pushes only to local names that shadow nothing."""
from __future__ import annotations

from typing import Any

import pytest

from pullcache import resolver as resolver_module
from pullcache.config import build_config
from pullcache.resolver import LOCAL_CHECK_SECONDS, PushDenied, Resolver, Target, UnknownNamespace
from pullcache.upstream.pool import Upstreams

HUB = {"name": "docker.io", "url": "https://registry-1.docker.io", "default": True, "aliases": ["index.docker.io"]}
GHCR = {"name": "ghcr.io", "url": "https://ghcr.io"}


def resolver(*upstreams: dict[str, Any], existing: frozenset[str] = frozenset(), **sections: Any) -> Resolver:
    """A resolver over `upstreams` (default: Docker Hub as default, and ghcr.io); `existing` are local repositories."""
    config = build_config({"upstreams": list(upstreams or (HUB, GHCR)), **sections})
    return Resolver(config, Upstreams(config.upstreams), lambda name: name in existing)


def where(target: Target) -> tuple[str | None, str]:
    return (target.upstream.name if target.upstream else None), target.repository


# ---------------------------------------------------------------------- reads

def test_a_path_prefix_names_the_upstream() -> None:
    routes = resolver()
    assert where(routes.resolve("ghcr.io/org/app")) == ("ghcr.io", "org/app")
    assert where(routes.resolve("docker.io/library/alpine")) == ("docker.io", "library/alpine")


def test_a_path_prefix_to_docker_hub_gets_library_for_one_component() -> None:
    assert where(resolver().resolve("docker.io/alpine")) == ("docker.io", "library/alpine")


def test_the_prefix_wins_over_a_local_repository_of_the_same_name() -> None:
    routes = resolver(existing=frozenset({"ghcr.io/org/app"}))
    assert where(routes.resolve("ghcr.io/org/app")) == ("ghcr.io", "org/app")


def test_cached_repositories_are_stored_under_their_upstream() -> None:
    target = resolver().resolve("alpine")
    assert target.store_name == "docker.io/library/alpine"
    assert target.name == "alpine"  # as the client wrote it
    assert target.upstream is not None


def test_ns_names_the_upstream_by_name_or_alias_in_any_case() -> None:
    routes = resolver()
    assert where(routes.resolve("library/alpine", "docker.io")) == ("docker.io", "library/alpine")
    assert where(routes.resolve("alpine", "Index.Docker.IO")) == ("docker.io", "library/alpine")
    assert where(routes.resolve("org/app", "ghcr.io")) == ("ghcr.io", "org/app")


def test_ns_wins_over_a_local_repository() -> None:
    routes = resolver(existing=frozenset({"team/app"}))
    assert where(routes.resolve("team/app", "docker.io")) == ("docker.io", "team/app")


def test_an_ns_naming_no_upstream_is_name_unknown() -> None:
    with pytest.raises(UnknownNamespace) as refused:
        resolver().resolve("library/alpine", "evil.example.com")
    assert refused.value.ns == "evil.example.com"
    assert "evil.example.com" in str(refused.value)


def test_a_bare_name_goes_to_the_default_upstream_with_library() -> None:
    routes = resolver()
    assert where(routes.resolve("alpine")) == ("docker.io", "library/alpine")
    assert where(routes.resolve("bitnami/redis")) == ("docker.io", "bitnami/redis")


def test_only_a_bare_name_is_marked_as_falling_back_to_the_default() -> None:
    routes = resolver()
    assert routes.resolve("team/app").via_default
    assert not routes.resolve("docker.io/team/app").via_default
    assert not routes.resolve("team/app", "docker.io").via_default


def test_a_bare_name_that_exists_locally_is_served_locally() -> None:
    target = resolver(existing=frozenset({"team/app"})).resolve("team/app")
    assert target.upstream is None
    assert (target.repository, target.store_name) == ("team/app", "team/app")


def test_library_is_docker_hubs_rule_only() -> None:
    routes = resolver({"name": "quay.io", "url": "https://quay.io", "default": True})
    assert where(routes.resolve("alpine")) == ("quay.io", "alpine")
    assert where(routes.resolve("quay.io/alpine")) == ("quay.io", "alpine")


def test_docker_hub_is_recognised_by_alias() -> None:
    routes = resolver({"name": "hub", "url": "https://registry-1.docker.io", "default": True, "aliases": ["docker.io"]})
    assert where(routes.resolve("alpine")) == ("hub", "library/alpine")


def test_without_a_default_upstream_bare_names_are_local() -> None:
    routes = resolver(GHCR)
    assert routes.resolve("alpine").upstream is None
    assert where(routes.resolve("ghcr.io/org/app")) == ("ghcr.io", "org/app")


def test_a_first_component_that_is_no_upstream_is_part_of_the_name() -> None:
    assert where(resolver().resolve("quay.io/org/app")) == ("docker.io", "quay.io/org/app")


# ---------------------------------------------------------------------- pushes

def test_local_names_accept_pushes() -> None:
    target = resolver().resolve_push("team/app")
    assert target.upstream is None and target.repository == "team/app"


@pytest.mark.parametrize("name", ["docker.io/team/app", "ghcr.io/org/app"])
def test_names_of_upstreams_refuse_pushes(name: str) -> None:
    with pytest.raises(PushDenied) as refused:
        resolver().resolve_push(name)
    assert refused.value.name == name


def test_pushes_with_ns_are_refused() -> None:
    with pytest.raises(PushDenied):
        resolver().resolve_push("team/app", "docker.io")


@pytest.mark.parametrize("name", ["library/alpine", "alpine"])
def test_official_images_cannot_be_shadowed(name: str) -> None:
    with pytest.raises(PushDenied) as refused:
        resolver().resolve_push(name)
    assert "library/*" in str(refused.value)


def test_deny_push_patterns_come_from_the_config() -> None:
    routes = resolver(local={"deny_push": ["corp/*"]})
    with pytest.raises(PushDenied):
        routes.resolve_push("corp/base")
    assert routes.resolve_push("library/alpine").upstream is None  # the default pattern was replaced


def test_allow_push_confines_pushes_to_its_globs() -> None:
    routes = resolver(local={"allow_push": ["team/*", "internal/**"]})
    assert routes.resolve_push("team/app").upstream is None
    assert routes.resolve_push("internal/a/b/c").upstream is None
    for name in ("myorg/oci-app", "team/a/b", "teamx/app"):
        with pytest.raises(PushDenied, match="local.allow_push"):
            routes.resolve_push(name)


def test_allow_push_does_not_override_deny_push() -> None:
    routes = resolver(local={"allow_push": ["**"], "deny_push": ["library/*"]})
    with pytest.raises(PushDenied, match="local.deny_push"):
        routes.resolve_push("library/alpine")


@pytest.mark.parametrize("name, pattern, matches", [
    ("team/app", "team/*", True),
    ("team/a/b", "team/*", False),
    ("team/a/b", "team/**", True),
    ("team", "team/**", False),
    ("x/team/app", "**/app", True),
    ("app", "**/app", True),
    ("team-a/app", "team-*/app", True),
])
def test_push_globs_take_star_as_one_component_and_double_star_as_any(name: str, pattern: str,
                                                                      matches: bool) -> None:
    routes = resolver(local={"allow_push": [pattern], "deny_push": []})
    if matches:
        assert routes.resolve_push(name).upstream is None
    else:
        with pytest.raises(PushDenied):
            routes.resolve_push(name)


def test_the_image_a_pushed_bare_name_hides_is_the_default_upstreams() -> None:
    assert where(resolver().default_target("myorg/oci-app")) == ("docker.io", "myorg/oci-app")  # type: ignore[arg-type]
    assert where(resolver().default_target("busybox")) == ("docker.io", "library/busybox")  # type: ignore[arg-type]
    assert resolver(GHCR).default_target("myorg/oci-app") is None


# ---------------------------------------------------------------------- the local-repository check

class Disk:
    """Local repositories as a resolver sees them through its existence check, which it counts."""

    def __init__(self) -> None:
        self.names: set[str] = set()
        self.checks = 0

    def exists(self, name: str) -> bool:
        self.checks += 1
        return name in self.names


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def checked_resolver(disk: Disk, clock: Clock) -> Resolver:
    config = build_config({"upstreams": [HUB, GHCR]})
    return Resolver(config, Upstreams(config.upstreams), disk.exists, clock=clock)


def test_whether_a_bare_name_is_local_is_remembered_between_requests() -> None:
    disk = Disk()
    routes = checked_resolver(disk, Clock())
    for _ in range(3):
        assert routes.resolve("team/app").upstream is not None
    assert disk.checks == 1


def test_a_repository_created_elsewhere_is_seen_once_the_check_interval_passed() -> None:
    disk, clock = Disk(), Clock()
    routes = checked_resolver(disk, clock)
    assert routes.resolve("team/app").upstream is not None
    disk.names.add("team/app")  # another process on the same store pushed it
    clock.now += LOCAL_CHECK_SECONDS
    assert routes.resolve("team/app").upstream is None


def test_a_push_here_is_seen_by_the_next_read_at_once() -> None:
    disk = Disk()
    routes = checked_resolver(disk, Clock())
    assert routes.resolve("team/app").upstream is not None
    routes.resolve_push("team/app")
    disk.names.add("team/app")  # the push's write
    assert routes.resolve("team/app").upstream is None


def test_a_name_being_pushed_is_checked_on_every_read_until_it_exists() -> None:
    disk = Disk()
    routes = checked_resolver(disk, Clock())
    routes.resolve_push("team/app")
    assert routes.resolve("team/app").upstream is not None  # a client's blob HEAD before it uploads
    disk.names.add("team/app")
    assert routes.resolve("team/app").upstream is None
    checks = disk.checks
    assert routes.resolve("team/app").upstream is None
    assert disk.checks == checks  # found: remembered again


def test_the_names_remembered_are_bounded_and_the_oldest_goes_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resolver_module, "CHECKED_NAMES", 3)
    disk = Disk()
    routes = checked_resolver(disk, Clock())
    for name in ("a/one", "a/two", "a/three", "a/four"):  # clients choose names: memory must not
        routes.resolve(name)
    assert disk.checks == 4
    routes.resolve("a/four")
    assert disk.checks == 4  # the newest is still known
    routes.resolve("a/one")
    assert disk.checks == 5  # the oldest was let go
