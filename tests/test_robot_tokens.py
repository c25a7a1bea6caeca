"""Robot tokens: `pullcache token create/list/revoke`, the secret as a Basic password, revocation seen by a
running server, and a real dockerd logging in and pushing with one."""
from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import yaml
from aiohttp.test_utils import TestClient

from pullcache.app import build_app
from pullcache.config import ConfigError, build_config
from tests.registry_api import SignedIn, push_image
from tests.support.dockerd import Dockerd
from tests.support.htpasswd import write_htpasswd
from tests.support.pullcache_proc import PullcacheProcess
from tests.support.seed import Upstream

pytest_plugins = ["tests.registry_api"]

REPO_ROOT = Path(__file__).resolve().parent.parent
PASSWORDS = {"alice": "alice pass"}


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def raw_config(tmp_path: Path, **auth: Any) -> dict[str, Any]:
    htpasswd = write_htpasswd(tmp_path / "htpasswd", PASSWORDS)
    return {"storage": {"path": str(tmp_path / "data")}, "log": {"audit": str(tmp_path / "audit.log")},
            "auth": {"htpasswd": str(htpasswd), **auth}}


def token_cli(config_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pullcache", "token", *args, "-c", str(config_path)],
                          check=False, capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    path = tmp_path / "proxy.yml"
    path.write_text(yaml.safe_dump(raw_config(tmp_path)))
    return path


def create(config_path: Path, name: str, *access: str, expires: str | None = None) -> str:
    args = ["create", "--name", name, *(arg for a in access for arg in ("--access", a))]
    result = token_cli(config_path, *args, *(["--expires", expires] if expires else []))
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


# ------------------------------------------------------------------ the commands

def test_create_prints_the_secret_once_and_stores_only_its_hash(config_path: Path, tmp_path: Path) -> None:
    secret = create(config_path, "ci-team-a", "team-a/**:push,pull", expires="90d")
    assert len(secret) >= 40 and "\n" not in secret
    stored = (tmp_path / "data" / "tokens.json").read_text()
    assert "ci-team-a" in stored and secret not in stored
    listing = token_cli(config_path, "list")
    assert listing.returncode == 0
    assert "ci-team-a" in listing.stdout and "team-a/**:pull,push" in listing.stdout and "active" in listing.stdout
    assert secret not in listing.stdout


def test_revoke_marks_the_token_and_an_unknown_name_is_an_error(config_path: Path) -> None:
    create(config_path, "ci-team-a", "team-a/**:push,pull")
    assert token_cli(config_path, "revoke", "ci-team-a").returncode == 0
    assert "revoked" in token_cli(config_path, "list").stdout
    missing = token_cli(config_path, "revoke", "nobody")
    assert missing.returncode != 0 and "nobody" in missing.stderr and missing.stderr.count("\n") == 1


@pytest.mark.parametrize("args, says", [
    (["--name", "ci", "--access", "team-a/**:fly"], "--access"),
    (["--name", "ci", "--access", "Team A:pull"], "--access"),
    (["--name", "Bad Name", "--access", "team-a/**:pull"], "--name"),
    (["--name", "alice", "--access", "team-a/**:pull"], "alice"),  # a user of auth.htpasswd already
    (["--name", "anonymous", "--access", "team-a/**:pull"], "anonymous"),  # what rules call everyone
    (["--name", "authenticated", "--access", "team-a/**:pull"], "authenticated"),
    (["--name", "ci", "--access", "team-a/**:pull", "--expires", "soon"], "--expires"),
])
def test_create_refuses_bad_arguments_in_one_line(config_path: Path, args: list[str], says: str) -> None:
    result = token_cli(config_path, "create", *args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and says in result.stderr


def test_an_existing_name_is_not_replaced(config_path: Path) -> None:
    create(config_path, "ci", "team-a/**:pull")
    again = token_cli(config_path, "create", "--name", "ci", "--access", "team-a/**:pull")
    assert again.returncode == 2 and "ci" in again.stderr


def test_creation_and_revocation_are_audited(config_path: Path, tmp_path: Path) -> None:
    secret = create(config_path, "ci", "team-a/**:pull")
    token_cli(config_path, "revoke", "ci")
    events = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]
    assert [(e["action"], e["result"], e["reference"]) for e in events] == [
        ("token_create", "success", "ci"), ("token_revoke", "success", "ci")]
    assert secret not in (tmp_path / "audit.log").read_text()


# ------------------------------------------------------------------ the secret at the registry

@pytest.fixture
async def robot_registry(aiohttp_client: Any, config_path: Path, tmp_path: Path) -> tuple[TestClient, str]:
    secret = create(config_path, "ci-team-a", "team-a/**:push,pull")
    client = await aiohttp_client(build_app(build_config(raw_config(tmp_path))))
    return client, secret



async def test_the_secret_is_a_basic_password_within_its_access(robot_registry: tuple[TestClient, str]) -> None:
    client, secret = robot_registry
    robot = basic("ci-team-a", secret)
    assert (await client.get("/v2/", headers=robot)).status == 200
    await push_image(SignedIn(client, robot), "team-a/app")  # type: ignore[arg-type]
    refused = await client.post("/v2/team-b/app/blobs/uploads/", headers=robot)
    assert refused.status == 403
    assert "ci-team-a" in (await refused.json())["errors"][0]["message"]
    assert (await client.get("/v2/", headers=basic("ci-team-a", secret[:-1] + "x"))).status == 401


async def test_a_wrong_robot_secret_costs_a_bcrypt_check_like_any_wrong_password(
        robot_registry: tuple[TestClient, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Robot names cannot be told from unknown ones by how long a wrong password takes."""
    client, secret = robot_registry
    checks: list[bytes] = []
    real = bcrypt.checkpw
    monkeypatch.setattr(bcrypt, "checkpw", lambda password, hashed: checks.append(password) or real(password, hashed))
    for user in ("ci-team-a", "nobody", "alice"):
        checks.clear()
        assert (await client.get("/v2/", headers=basic(user, "wrong"))).status == 401
        assert checks == [b"wrong"], user
        assert (await client.get("/v2/", headers=basic(user, "wrong"))).status == 401  # remembered as refused
        assert checks == [b"wrong"], user
    assert (await client.get("/v2/", headers=basic("ci-team-a", secret))).status == 200


async def test_without_htpasswd_a_wrong_robot_secret_costs_what_an_unknown_name_does(
        aiohttp_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = {"storage": {"path": str(tmp_path / "data")}}
    path = tmp_path / "robots.yml"
    path.write_text(yaml.safe_dump(config))
    secret = create(path, "ci", "team-a/**:push,pull")
    client = await aiohttp_client(build_app(build_config(config)))
    checks: list[bytes] = []
    real = bcrypt.checkpw
    monkeypatch.setattr(bcrypt, "checkpw", lambda password, hashed: checks.append(password) or real(password, hashed))
    for user in ("ci", "nobody"):
        checks.clear()
        assert (await client.get("/v2/", headers=basic(user, "wrong"))).status == 401
        assert checks == [b"wrong"], user
    assert (await client.get("/v2/", headers=basic("ci", secret))).status == 200


async def test_the_catalog_shows_a_robot_only_what_its_grants_cover(robot_registry: tuple[TestClient, str]) -> None:
    client, secret = robot_registry
    await push_image(SignedIn(client, basic("alice", PASSWORDS["alice"])), "team-b/app")  # type: ignore[arg-type]
    await push_image(SignedIn(client, basic("ci-team-a", secret)), "team-a/app")  # type: ignore[arg-type]
    listed = await client.get("/v2/_catalog", headers=basic("ci-team-a", secret))
    assert (await listed.json())["repositories"] == ["team-a/app"]
    assert (await (await client.get("/v2/_catalog")).json())["repositories"] == ["team-a/app", "team-b/app"]


async def test_a_revoked_token_fails_on_the_next_request(robot_registry: tuple[TestClient, str],
                                                         config_path: Path) -> None:
    client, secret = robot_registry
    robot = basic("ci-team-a", secret)
    token = (await (await client.get("/auth/token", params={"scope": "repository:team-a/app:push,pull"},
                                     headers=robot)).json())["token"]
    assert (await client.post("/v2/team-a/app/blobs/uploads/", headers=robot)).status == 202
    assert token_cli(config_path, "revoke", "ci-team-a").returncode == 0
    assert (await client.post("/v2/team-a/app/blobs/uploads/", headers=robot)).status == 401
    bearer = {"Authorization": f"Bearer {token}"}
    assert (await client.post("/v2/team-a/app/blobs/uploads/", headers=bearer)).status == 401


async def test_an_expired_token_fails(aiohttp_client: Any, config_path: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    secret = create(config_path, "ci", "team-a/**:push", expires="1h")
    client = await aiohttp_client(build_app(build_config(raw_config(tmp_path))))
    robot = basic("ci", secret)
    assert (await client.post("/v2/team-a/app/blobs/uploads/", headers=robot)).status == 202
    import pullcache.tokens
    later = pullcache.tokens.time.time() + 3601
    monkeypatch.setattr(pullcache.tokens.time, "time", lambda: later)
    assert (await client.post("/v2/team-a/app/blobs/uploads/", headers=robot)).status == 401


async def test_rules_may_name_robots_and_groups_hold_them(aiohttp_client: Any, config_path: Path,
                                                          tmp_path: Path) -> None:
    secret = create(config_path, "ci-team-a", "**:push,pull")
    rules = [{"repos": ["team-a/**"], "pull": ["anonymous"], "push": ["team-a"]}]
    config = build_config(raw_config(tmp_path, groups={"team-a": ["alice", "ci-team-a"]}, access=rules))
    client = await aiohttp_client(build_app(config))
    robot = basic("ci-team-a", secret)
    assert (await client.post("/v2/team-a/app/blobs/uploads/", headers=robot)).status == 202
    assert (await client.post("/v2/team-b/app/blobs/uploads/", headers=robot)).status == 403  # the rules say no


def test_a_rule_naming_an_unknown_robot_stops_start_up(tmp_path: Path) -> None:
    config = build_config(raw_config(tmp_path, groups={"team-a": ["ci-missing"]}))
    with pytest.raises(ConfigError, match="^auth.groups.team-a: "):
        build_app(config)


# ------------------------------------------------------------------ a real docker login and push

def test_docker_logs_in_and_pushes_with_a_robot_token_until_it_is_revoked(
        pullcache_factory: Callable[..., PullcacheProcess], upstream: Upstream,
        dockerd_factory: Callable[..., Dockerd], tmp_path: Path) -> None:
    htpasswd = write_htpasswd(tmp_path / "htpasswd", PASSWORDS)
    server = pullcache_factory({"auth": {"htpasswd": str(htpasswd)}, "local": {"anonymous_push": False},
                                "log": {"audit": str(tmp_path / "audit.log"), "audit_pulls": True}})
    created = server.cli("token", "create", "--name", "ci-team-a", "--access", "team-a/**:push,pull")
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()

    daemon = dockerd_factory()
    source = f"{upstream.host}/library/single:v1"
    daemon.docker("pull", source)
    daemon.docker("login", "-u", "ci-team-a", "--password-stdin", server.host, input=secret + "\n")
    ref = f"{server.host}/team-a/app:v1"
    daemon.docker("tag", source, ref)
    daemon.docker("push", ref)
    other = f"{server.host}/team-b/app:v1"
    daemon.docker("tag", source, other)
    refused = daemon.docker("push", other, check=False)
    assert refused.returncode != 0 and "denied" in refused.stderr.lower()

    assert server.cli("token", "revoke", "ci-team-a").returncode == 0
    daemon.docker("rmi", ref)
    daemon.docker("tag", source, f"{server.host}/team-a/app:v2")
    after = daemon.docker("push", f"{server.host}/team-a/app:v2", check=False)
    assert after.returncode != 0
    assert "unauthorized" in after.stderr.lower() or "authentication required" in after.stderr.lower()

    assert secret not in server.log_text()
    assert secret not in (tmp_path / "audit.log").read_text()
    assert '"principal": "ci-team-a"' in (tmp_path / "audit.log").read_text()
