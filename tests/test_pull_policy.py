"""Pull policy per upstream (`rules:`): allow/deny repository globs with an optional tag glob or regex, first
match wins, optional `default: deny`; digests referenced by an allowed manifest stay allowed. End to end
through a real Docker daemon and skopeo, which show the 403 DENIED message naming the rule."""
from __future__ import annotations

import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pullcache.config import build_config
from pullcache.policy import PullDenied, PullPolicy, decide
from tests.support.dockerd import Dockerd
from tests.support.pullcache_proc import PullcacheProcess, docker_hub_upstream
from tests.support.seed import Upstream
from tests.support.skopeo import Skopeo

ISSUE_RULES: list[dict[str, Any]] = [
    {"deny": "*/*:latest"},
    {"allow": "library/*"},
    {"allow": "myorg/**", "tags": r"^v?[0-9]+\.[0-9]+"},
]


def rules_of(rules: list[dict[str, Any]]) -> Any:
    return build_config({"upstreams": [{"name": "hub", "url": "https://r.example", "rules": rules}]}).upstreams[0].rules


# ---------------------------------------------------------------- the rules


@pytest.mark.parametrize("repository, tag, allowed, rule", [
    ("library/alpine", "latest", False, 'rules[0] (deny: "*/*:latest")'),
    ("library/alpine", "3.19", True, 'rules[1] (allow: "library/*")'),
    ("library/alpine", None, True, 'rules[1] (allow: "library/*")'),  # by digest: the tag rule passes it over
    ("myorg/team/app", "v1.2", True, r'rules[2] (allow: "myorg/**", tags: "^v?[0-9]+\.[0-9]+")'),
    # `tags` is searched in the tag, not matched against all of it: without `$` a suffix passes
    ("myorg/team/app", "v1.2-rc1", True, r'rules[2] (allow: "myorg/**", tags: "^v?[0-9]+\.[0-9]+")'),
    ("myorg/team/app", "nightly", True, "default: allow"),
    ("library/a/b", "3", True, "default: allow"),  # `*` is one path component
])
def test_the_first_matching_rule_decides(repository: str, tag: str | None, allowed: bool, rule: str) -> None:
    decision = decide(rules_of(ISSUE_RULES), repository, tag)
    assert (decision.allowed, decision.rule) == (allowed, rule)


def test_default_deny_refuses_what_no_rule_allows_and_names_itself() -> None:
    rules = rules_of([*ISSUE_RULES, {"default": "deny"}])
    assert decide(rules, "myorg/team/app", "nightly").rule == "default: deny"
    with pytest.raises(PullDenied, match="myorg/app:nightly from upstream hub is denied .*default: deny"):
        PullPolicy().check("hub", rules, "myorg/app", "nightly")


def test_digests_an_allowed_manifest_references_are_allowed_in_its_repository() -> None:
    rules = rules_of([*ISSUE_RULES, {"default": "deny"}])
    policy = PullPolicy()
    child, layer = "sha256:" + "1" * 64, "sha256:" + "2" * 64
    with pytest.raises(PullDenied):
        policy.check("hub", rules, "myorg/app", child)
    policy.check("hub", rules, "myorg/app", "v1.0")
    policy.vouch("hub", "myorg/app", "sha256:" + "0" * 64, b'{"manifests": [{"digest": "%s"}]}' % child.encode())
    policy.check("hub", rules, "myorg/app", child)
    policy.vouch("hub", "myorg/app", child, b'{"config": {"digest": "sha256:9"}, "layers": [{"digest": "%s"}]}'
                 % layer.encode())
    policy.check("hub", rules, "myorg/app", layer)
    with pytest.raises(PullDenied):  # vouched in its repository only
        policy.check("hub", rules, "myorg/other", layer)


@pytest.mark.parametrize("rules, words", [
    ([{"allow": "Library/*"}], ["upstreams[0].rules[0].allow", "repository glob"]),
    ([{"deny": "*/*:la test"}], ["upstreams[0].rules[0].deny", "repository glob"]),
    ([{"allow": "a/*", "deny": "b"}], ["upstreams[0].rules[0]", "not a rule"]),
    ([{"allow": "a/*", "tag": "^v"}], ["upstreams[0].rules[0]", "not a rule"]),
    ([{"allow": "a/*", "tags": "^v(["}], ["upstreams[0].rules[0].tags", "regular expression"]),
    ([{"default": "deny"}, {"allow": "a/*"}], ["upstreams[0].rules[0]", "not a rule"]),
    ([{"allow": "a/*"}, {"default": "maybe"}], ["upstreams[0].rules[1].default", "allow, deny"]),
    ({"allow": "a/*"}, ["upstreams[0].rules", "list of rules"]),
])
def test_every_pattern_is_validated_with_a_one_line_error_naming_the_key(rules: Any, words: list[str]) -> None:
    with pytest.raises(ValueError) as caught:
        rules_of(rules)
    assert all(word in str(caught.value) for word in words), str(caught.value)


def test_check_config_refuses_a_bad_pattern(pullcache_factory: Callable[..., PullcacheProcess]) -> None:
    server = pullcache_factory({"upstreams": [{**docker_hub_upstream("http://127.0.0.1:9"),
                                               "rules": [{"allow": "library/*", "tags": "(unclosed"}]}]},
                               start=False)
    result = server.cli("check-config")
    assert result.returncode != 0
    assert "upstreams[0].rules[0].tags" in result.stdout + result.stderr


# ---------------------------------------------------------------- end to end: dockerd and skopeo


@pytest.fixture
def guarded(pullcache_factory: Callable[..., PullcacheProcess], upstream: Upstream) -> PullcacheProcess:
    rules = [{"deny": "*/*:latest"}, {"allow": "library/*"}, {"allow": "team/**", "tags": "^v[0-9]+$"},
             {"default": "deny"}]
    return pullcache_factory({"upstreams": [docker_hub_upstream(upstream.url, rules=rules)]})


def upstream_asked(upstream: Upstream, path: str) -> int:
    return sum(1 for r in upstream.distribution.requests() if r.uri.startswith(path))


def denied_total(server: PullcacheProcess) -> float:
    text = urllib.request.urlopen(f"{server.url}/metrics", timeout=10).read().decode()
    prefix = 'pullcache_policy_denied_total{upstream="docker.io"} '
    return sum(float(line[len(prefix):]) for line in text.splitlines() if line.startswith(prefix))


def test_dockerd_shows_the_403_naming_the_rule_and_pulls_what_the_rules_allow(
        guarded: PullcacheProcess, dockerd_factory: Callable[..., Dockerd], upstream: Upstream) -> None:
    daemon = dockerd_factory()
    asked_before = upstream_asked(upstream, "/v2/library/alpine/manifests/latest")
    refused = daemon.docker("pull", f"{guarded.host}/docker.io/library/alpine:latest", check=False)
    assert refused.returncode != 0
    assert 'denied by its pull policy: rules[0] (deny: "*/*:latest")' in refused.stderr, refused.stderr
    assert upstream_asked(upstream, "/v2/library/alpine/manifests/latest") == asked_before  # nothing fetched
    assert denied_total(guarded) >= 1

    daemon.docker("pull", f"{guarded.host}/docker.io/library/alpine:3.19")
    # team/app's tag passes the tags regex; its platform manifest and blobs, pulled by digest, are vouched for.
    daemon.docker("pull", f"{guarded.host}/docker.io/team/app:v1")

    private = daemon.docker("pull", f"{guarded.host}/docker.io/private/secret:v1", check=False)
    assert private.returncode != 0 and "default: deny" in private.stderr, private.stderr


def test_skopeo_is_refused_by_digest_unless_an_allowed_manifest_referenced_it(
        guarded: PullcacheProcess, skopeo: Skopeo, upstream: Upstream, tmp_path: Path) -> None:
    app = upstream["team/app:v1"]
    by_digest = f"docker://{guarded.host}/docker.io/team/app@{app.digest}"
    refused = skopeo.run("inspect", "--tls-verify=false", "--raw", by_digest, check=False)
    assert refused.returncode != 0 and b"default: deny" in refused.stderr, refused.stderr

    skopeo.copy(f"docker://{guarded.host}/docker.io/team/app:v1", f"dir:{tmp_path / 'tag'}", all_platforms=True)
    assert skopeo.inspect_raw(by_digest) == app.top.data  # the tag's answer vouched for its digest
