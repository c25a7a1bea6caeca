"""Repository access rules (`auth.access`, `auth.groups`): who may pull, push and delete which names.

Checked in-process against build_app; the same rules through a real dockerd are in test_access_docker.py.
"""
from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml
from aiohttp.test_utils import TestClient

from pullcache.app import build_app
from pullcache.config import Config, ConfigError, build_config
from tests.registry_api import SignedIn, error_code, push_image
from tests.support.htpasswd import write_htpasswd
from tests.support.pullcache_proc import docker_hub_upstream
from tests.support.seed import Upstream

pytest_plugins = ["tests.registry_api"]

PASSWORDS = {"alice": "alice pass", "bob": "bob pass", "carol": "carol pass"}
RULES = [
    {"repos": ["team-a/secret/**"], "pull": ["alice"], "push": ["alice"]},
    {"repos": ["team-a/**"], "pull": ["anonymous"], "push": ["team-a"], "delete": ["alice"]},
    {"repos": ["team-b/**"], "pull": ["authenticated"], "push": ["team-b"]},
    {"repos": ["docker.io/**"], "pull": ["anonymous"]},
]
GROUPS = {"team-a": ["alice", "carol"], "team-b": ["bob"]}


def basic(user: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{PASSWORDS[user]}".encode()).decode()}


def access_config(tmp_path: Path, *, rules: Any = None, groups: Any = None, **extra: Any) -> Config:
    htpasswd = write_htpasswd(tmp_path / "htpasswd", PASSWORDS)
    return build_config({"storage": {"path": str(tmp_path / "data")},
                         "auth": {"htpasswd": str(htpasswd), "groups": GROUPS if groups is None else groups,
                                  "access": RULES if rules is None else rules}, **extra})


@pytest.fixture
def registry_config(tmp_path: Path) -> Config:
    return access_config(tmp_path)



# ------------------------------------------------------------------ rules decide pushes, pulls and deletes

async def test_a_group_member_pushes_where_the_rule_grants_it(registry: TestClient) -> None:
    await push_image(SignedIn(registry, basic("carol")), "team-a/app")  # type: ignore[arg-type]
    assert (await registry.get("/v2/team-a/app/tags/list")).status == 200


async def test_an_authenticated_user_not_granted_push_is_403_naming_the_rule(registry: TestClient) -> None:
    response = await registry.post("/v2/team-a/app/blobs/uploads/", headers=basic("bob"))
    assert response.status == 403
    body = await response.json()
    assert body["errors"][0]["code"] == "DENIED"
    assert "auth.access[1]" in body["errors"][0]["message"]
    assert "team-a/**" in body["errors"][0]["message"]


async def test_an_anonymous_refusal_is_401_with_a_challenge(registry: TestClient) -> None:
    response = await registry.post("/v2/team-a/app/blobs/uploads/")
    assert response.status == 401
    assert await error_code(response) == "UNAUTHORIZED"
    bearer = [c for c in response.headers.getall("WWW-Authenticate") if c.startswith("Bearer ")]
    assert bearer and 'scope="repository:team-a/app:push"' in bearer[0]


async def test_the_first_matching_rule_decides(registry: TestClient) -> None:
    image = await push_image(SignedIn(registry, basic("alice")), "team-a/secret/app")  # type: ignore[arg-type]
    path = f"/v2/team-a/secret/app/manifests/{image.digest}"
    assert (await registry.get(path)).status == 401  # team-a/** would let anyone pull; rule 0 came first
    assert (await registry.get(path, headers=basic("carol"))).status == 403
    assert (await registry.get(path, headers=basic("alice"))).status == 200


async def test_anything_not_granted_is_refused(registry: TestClient) -> None:
    response = await registry.post("/v2/elsewhere/app/blobs/uploads/", headers=basic("alice"))
    assert response.status == 403
    assert "no auth.access rule matches 'elsewhere/app'" in (await response.json())["errors"][0]["message"]


async def test_delete_needs_the_delete_action(registry: TestClient) -> None:
    image = await push_image(SignedIn(registry, basic("carol")), "team-a/app")  # type: ignore[arg-type]
    path = f"/v2/team-a/app/manifests/{image.digest}"
    assert (await registry.delete(path, headers=basic("carol"))).status == 403  # carol may push, not delete
    assert (await registry.delete(path, headers=basic("alice"))).status == 202


async def test_authenticated_grants_every_user_and_anonymous_is_asked_to_log_in(registry: TestClient) -> None:
    image = await push_image(SignedIn(registry, basic("bob")), "team-b/app")  # type: ignore[arg-type]
    path = f"/v2/team-b/app/manifests/{image.digest}"
    assert (await registry.get(path)).status == 401
    assert (await registry.get(path, headers=basic("carol"))).status == 200


async def test_wrong_credentials_are_401_even_where_anonymous_may_not(registry: TestClient) -> None:
    wrong = {"Authorization": "Basic " + base64.b64encode(b"alice:nope").decode()}
    response = await registry.post("/v2/team-a/app/blobs/uploads/", headers=wrong)
    assert response.status == 401


async def test_catalog_lists_only_what_the_caller_may_pull(registry: TestClient) -> None:
    for user, name in (("carol", "team-a/app"), ("alice", "team-a/secret/app"), ("bob", "team-b/app")):
        await push_image(SignedIn(registry, basic(user)), name)  # type: ignore[arg-type]
    async def catalog(headers: dict[str, str]) -> list[str]:
        response = await registry.get("/v2/_catalog", headers=headers)
        assert response.status == 200
        return (await response.json())["repositories"]
    assert await catalog({}) == ["team-a/app"]
    assert await catalog(basic("bob")) == ["team-a/app", "team-b/app"]
    assert await catalog(basic("alice")) == ["team-a/app", "team-a/secret/app", "team-b/app"]


# ------------------------------------------------------------------ tokens carry the granted actions

async def token(registry: TestClient, scope: str, headers: dict[str, str] | None = None) -> str:
    response = await registry.get("/auth/token", params={"service": "pullcache", "scope": scope},
                                  headers=headers or {})
    assert response.status == 200, await response.text()
    return (await response.json())["token"]


def claims(token: str) -> dict[str, Any]:
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "HS256" and header["typ"] == "JWT" and header["kid"]
    return jwt.decode(token, options={"verify_signature": False})


async def test_a_token_grants_only_what_the_rules_allow(registry: TestClient) -> None:
    decoded = claims(await token(registry, "repository:team-a/app:pull,push,delete", basic("carol")))
    assert decoded["sub"] == "carol" and decoded["aud"] == "pullcache" and decoded["exp"] > decoded["iat"]
    assert decoded["access"] == [{"type": "repository", "name": "team-a/app", "actions": ["pull", "push"]}]
    decoded = claims(await token(registry, "repository:team-a/app:pull,push", basic("bob")))
    assert decoded["access"] == [{"type": "repository", "name": "team-a/app", "actions": ["pull"]}]
    decoded = claims(await token(registry, "repository:team-b/app:pull repository:team-a/app:push"))
    assert decoded["sub"] == ""
    assert decoded["access"] == [{"type": "repository", "name": "team-b/app", "actions": []},
                                 {"type": "repository", "name": "team-a/app", "actions": []}]


async def test_a_pull_token_cannot_push(registry: TestClient) -> None:
    bearer = {"Authorization": f"Bearer {await token(registry, 'repository:team-a/app:pull', basic('alice'))}"}
    refused = await registry.post("/v2/team-a/app/blobs/uploads/", headers=bearer)
    assert refused.status == 401
    challenge = next(c for c in refused.headers.getall("WWW-Authenticate") if c.startswith("Bearer "))
    assert 'error="insufficient_scope"' in challenge and 'scope="repository:team-a/app:push"' in challenge
    bearer = {"Authorization": f"Bearer {await token(registry, 'repository:team-a/app:pull,push', basic('alice'))}"}
    assert (await registry.post("/v2/team-a/app/blobs/uploads/", headers=bearer)).status == 202


async def test_a_token_is_no_wider_than_the_rules_at_request_time(registry: TestClient) -> None:
    """A scope for one name gives nothing on another."""
    bearer = {"Authorization": f"Bearer {await token(registry, 'repository:team-a/app:push', basic('alice'))}"}
    assert (await registry.post("/v2/team-a/other/blobs/uploads/", headers=bearer)).status == 401


async def test_a_tampered_token_counts_for_nothing(registry: TestClient) -> None:
    good = await token(registry, "repository:team-b/app:push", basic("bob"))
    header, _, signature = good.split(".")
    forged = jwt.encode({**claims(good), "sub": "alice"}, "guess" * 8, algorithm="HS256").split(".")[1]
    bearer = {"Authorization": f"Bearer {header}.{forged}.{signature}"}
    assert (await registry.post("/v2/team-b/app/blobs/uploads/", headers=bearer)).status == 401


# ------------------------------------------------------------------ proxied repositories

@pytest.fixture
def proxied_config(tmp_path: Path, upstream: Upstream) -> Config:
    return access_config(tmp_path, upstreams=[docker_hub_upstream(upstream.url)])


async def test_anonymous_pulls_proxied_images_under_a_rule_that_allows_them(
        aiohttp_client: Any, proxied_config: Config, upstream: Upstream) -> None:
    client = await aiohttp_client(build_app(proxied_config))
    accept = {"Accept": "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, "
                        "application/vnd.docker.distribution.manifest.v2+json, "
                        "application/vnd.docker.distribution.manifest.list.v2+json"}
    for path in ("/v2/alpine/manifests/latest", "/v2/library/alpine/manifests/latest",
                 "/v2/docker.io/library/alpine/manifests/latest"):
        response = await client.get(path, headers=accept)
        assert response.status == 200, (path, await response.text())
    assert "docker.io/library/alpine" in (await (await client.get("/v2/_catalog")).json())["repositories"]


async def test_a_proxied_name_is_matched_by_its_upstream_qualified_name(
        aiohttp_client: Any, tmp_path: Path, upstream: Upstream) -> None:
    rules = [{"repos": ["docker.io/library/*"], "pull": ["alice"]}, {"repos": ["**"], "pull": ["anonymous"]}]
    client = await aiohttp_client(build_app(access_config(tmp_path, rules=rules,
                                                          upstreams=[docker_hub_upstream(upstream.url)])))
    for path in ("/v2/alpine/manifests/latest", "/v2/docker.io/library/alpine/manifests/latest",
                 "/v2/library/alpine/manifests/latest?ns=docker.io"):
        assert (await client.get(path)).status == 401, path
        assert (await client.get(path, headers=basic("bob"))).status == 403, path


async def test_a_pusher_may_read_a_bare_name_before_its_first_push(
        aiohttp_client: Any, tmp_path: Path, upstream: Upstream) -> None:
    """Until pushed, team-a/new is the default upstream's; clients check blobs and manifests there before
    they push, and no rule grants docker.io/** here."""
    rules = [{"repos": ["team-a/**"], "pull": ["team-a"], "push": ["team-a"]}]
    client = await aiohttp_client(build_app(access_config(tmp_path, rules=rules,
                                                          upstreams=[docker_hub_upstream(upstream.url)])))
    blob = f"/v2/team-a/new/blobs/sha256:{'0' * 64}"
    assert (await client.head(blob, headers=basic("carol"))).status == 404
    assert (await client.head("/v2/team-a/new/manifests/v1", headers=basic("carol"))).status == 404
    assert (await client.head(blob, headers=basic("bob"))).status == 403
    assert (await client.head(blob)).status == 401
    decoded = claims(await token(client, "repository:team-a/new:pull,push", basic("carol")))
    assert decoded["access"][0]["actions"] == ["pull", "push"]
    await push_image(SignedIn(client, basic("carol")), "team-a/new")  # type: ignore[arg-type]


# ------------------------------------------------------------------ bad rules stop start-up

@pytest.mark.parametrize("auth, key", [
    ({"access": [{"repos": ["team-a/**"], "push": ["mallory"]}]}, "auth.access[0].push"),
    ({"groups": {"team-a": ["alice", "nobody"]}}, "auth.groups.team-a"),
])
def test_unknown_users_and_groups_stop_start_up(tmp_path: Path, auth: dict[str, Any], key: str) -> None:
    config = access_config(tmp_path, rules=auth.get("access", []), groups=auth.get("groups", {}))
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        build_app(config)


def test_a_group_cannot_be_named_anonymous() -> None:
    with pytest.raises(ConfigError, match="^auth.groups.anonymous: "):
        build_config({"auth": {"groups": {"anonymous": ["alice"]}}})


@pytest.mark.parametrize("access, key", [
    ([{"pull": ["alice"]}], "auth.access[0]"),
    ([{"repos": ["team-a/**"], "pul": ["alice"]}], "auth.access[0].pul"),
    ([{"repos": ["Team A/**"], "pull": ["alice"]}], "auth.access[0].repos"),
    ([{"repos": [], "pull": ["alice"]}], "auth.access[0].repos"),
    ({"repos": ["x"]}, "auth.access"),
])
def test_malformed_rules_are_config_errors(tmp_path: Path, access: Any, key: str) -> None:
    with pytest.raises(ConfigError) as raised:
        build_config({"auth": {"access": access}})
    assert str(raised.value).startswith(f"{key}: ")


def test_check_config_names_the_bad_rule(tmp_path: Path) -> None:
    htpasswd = write_htpasswd(tmp_path / "htpasswd", PASSWORDS)
    path = tmp_path / "proxy.yml"
    path.write_text(yaml.safe_dump({"storage": {"path": str(tmp_path / "data")},
                                    "auth": {"htpasswd": str(htpasswd),
                                             "access": [{"repos": ["team-a/**"], "push": ["mallory"]}]}}))
    result = subprocess.run([sys.executable, "-m", "pullcache", "check-config", "-c", str(path)],
                            check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "auth.access[0].push" in result.stderr and "mallory" in result.stderr


def check_config(tmp_path: Path, **sections: Any) -> subprocess.CompletedProcess[str]:
    htpasswd = write_htpasswd(tmp_path / "htpasswd", PASSWORDS)
    path = tmp_path / "proxy.yml"
    path.write_text(yaml.safe_dump({"storage": {"path": str(tmp_path / "data")},
                                    "auth": {"htpasswd": str(htpasswd), "groups": GROUPS, "access": RULES},
                                    **sections}))
    return subprocess.run([sys.executable, "-m", "pullcache", "check-config", "-c", str(path)],
                          check=False, capture_output=True, text=True, timeout=60)


def test_check_config_says_the_rules_audit_log_and_event_endpoints(tmp_path: Path) -> None:
    result = check_config(tmp_path, log={"audit": str(tmp_path / "audit.log")},
                          notifications={"endpoints": [{"name": "ci", "url": "http://127.0.0.1:9/events"}]})
    assert result.returncode == 0, result.stderr
    assert "pushes, pulls and deletes decided by auth.access (4 rules, 2 groups)" in result.stdout
    assert f"audit log {tmp_path / 'audit.log'}" in result.stdout
    assert "events to ci (push, delete) -> http://127.0.0.1:9/events" in result.stdout


def test_check_config_names_an_audit_file_it_cannot_open(tmp_path: Path) -> None:
    result = check_config(tmp_path, log={"audit": str(tmp_path / "missing" / "audit.log")})
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "log.audit" in result.stderr


# ------------------------------------------------------------------ without rules, a token is bounded by its scope

@pytest.fixture
def ruleless_config(tmp_path: Path) -> Config:
    htpasswd = write_htpasswd(tmp_path / "htpasswd", PASSWORDS)
    return build_config({"storage": {"path": str(tmp_path / "data")}, "auth": {"htpasswd": str(htpasswd)}})


@pytest.fixture
async def ruleless(aiohttp_client: Any, ruleless_config: Config) -> TestClient:
    return await aiohttp_client(build_app(ruleless_config))


def bearer_challenge(response: Any) -> str:
    return next(c for c in response.headers.getall("WWW-Authenticate") if c.startswith("Bearer "))


async def test_without_rules_a_token_for_one_repository_cannot_push_another(ruleless: TestClient) -> None:
    bearer = {"Authorization": f"Bearer {await token(ruleless, 'repository:team-a/app:pull', basic('alice'))}"}
    refused = await ruleless.post("/v2/other/thing/blobs/uploads/", headers=bearer)
    assert refused.status == 401
    challenge = bearer_challenge(refused)
    assert 'error="insufficient_scope"' in challenge and 'scope="repository:other/thing:push"' in challenge


async def test_without_rules_a_token_without_scope_cannot_delete(ruleless: TestClient) -> None:
    alice = basic("alice")
    image = await push_image(SignedIn(ruleless, alice), "team-a/app")  # type: ignore[arg-type]
    unscoped = (await (await ruleless.get("/auth/token", headers=alice)).json())["token"]
    refused = await ruleless.delete(f"/v2/team-a/app/manifests/{image.digest}",
                                    headers={"Authorization": f"Bearer {unscoped}"})
    assert refused.status == 401
    assert 'scope="repository:team-a/app:delete"' in bearer_challenge(refused)
    assert (await ruleless.get("/v2/team-a/app/manifests/v1")).status == 200  # still there


async def test_without_rules_a_token_with_the_scope_pushes(ruleless: TestClient) -> None:
    scoped = await token(ruleless, "repository:team-a/app:pull,push", basic("alice"))
    assert claims(scoped)["access"] == [{"type": "repository", "name": "team-a/app", "actions": ["pull", "push"]}]
    bearer = {"Authorization": f"Bearer {scoped}"}
    assert (await ruleless.post("/v2/team-a/app/blobs/uploads/", headers=bearer)).status == 202


async def test_where_pulls_need_a_login_a_token_pulls_only_what_its_scope_names(
        aiohttp_client: Any, tmp_path: Path) -> None:
    htpasswd = write_htpasswd(tmp_path / "htpasswd", PASSWORDS)
    client = await aiohttp_client(build_app(build_config({
        "storage": {"path": str(tmp_path / "data")}, "auth": {"htpasswd": str(htpasswd), "pull": "authenticated"}})))
    await push_image(SignedIn(client, basic("alice")), "team-a/app")  # type: ignore[arg-type]
    bearer = {"Authorization": f"Bearer {await token(client, 'repository:team-a/other:pull', basic('alice'))}"}
    refused = await client.get("/v2/team-a/app/manifests/v1", headers=bearer)
    assert refused.status == 401
    challenge = bearer_challenge(refused)
    assert 'error="insufficient_scope"' in challenge and 'scope="repository:team-a/app:pull"' in challenge


async def test_where_anyone_may_pull_a_token_is_not_needed(ruleless: TestClient) -> None:
    """A token adds to what anyone may do; where anyone may, what it covers does not matter."""
    await push_image(SignedIn(ruleless, basic("alice")), "team-a/app")  # type: ignore[arg-type]
    bearer = {"Authorization": f"Bearer {await token(ruleless, 'repository:team-a/other:push', basic('alice'))}"}
    assert (await ruleless.get("/v2/team-a/app/manifests/v1", headers=bearer)).status == 200


# ------------------------------------------------------------------ globs

def test_a_glob_is_compiled_once() -> None:
    from pullcache import names
    names._glob_regex.cache_clear()
    for _ in range(3):
        assert names.matches_glob("team-a/app/x", "team-a/**")
    assert names._glob_regex.cache_info().misses == 1
