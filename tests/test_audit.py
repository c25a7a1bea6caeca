"""The audit log (`log.audit`): exactly one JSON line per event of a scripted session, and SIGHUP reopens the file."""
from __future__ import annotations

import base64
import json
import os
import signal
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from aiohttp.test_utils import TestClient

from pullcache.api.audited import AUDIT
from pullcache.app import build_app
from pullcache.config import Config, ConfigError, build_config
from tests.registry_api import SignedIn, push_image
from tests.support.htpasswd import write_htpasswd
from tests.support.pullcache_proc import PullcacheProcess

pytest_plugins = ["tests.registry_api"]

PASSWORDS = {"alice": "alice pass", "bob": "bob pass"}
KEYS = ["time", "action", "result", "principal", "remote", "repository", "reference", "digest"]


def basic(user: str, password: str | None = None) -> dict[str, str]:
    text = f"{user}:{PASSWORDS[user] if password is None else password}"
    return {"Authorization": "Basic " + base64.b64encode(text.encode()).decode()}


def audit_config(tmp_path: Path, **log: Any) -> Config:
    htpasswd = write_htpasswd(tmp_path / "htpasswd", PASSWORDS)
    return build_config({
        "storage": {"path": str(tmp_path / "data")},
        "auth": {"htpasswd": str(htpasswd), "access": [
            {"repos": ["team-a/**"], "pull": ["anonymous"], "push": ["alice"], "delete": ["alice"]}]},
        "log": {"audit": str(tmp_path / "audit.log"), **log}})



async def lines(client: TestClient, path: Path) -> list[dict[str, Any]]:
    await client.server.app[AUDIT].drain()
    events = [json.loads(line) for line in path.read_text().splitlines()]
    for event in events:
        assert list(event)[:len(KEYS)] == KEYS
        assert datetime.fromisoformat(event.pop("time")).tzinfo is not None
        assert event.pop("remote") == "127.0.0.1"
    return events


async def test_a_scripted_session_writes_exactly_the_expected_lines(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await aiohttp_client(build_app(audit_config(tmp_path)))
    alice = SignedIn(client, basic("alice"))
    first = await push_image(alice, "team-a/app", "v1", seed="one")  # type: ignore[arg-type]
    await client.get("/v2/team-a/app/manifests/v1")  # a pull: not audited by default
    second = await push_image(alice, "team-a/app", "v1", seed="two")  # type: ignore[arg-type]
    assert (await client.post("/v2/team-a/app/blobs/uploads/", headers=basic("bob"))).status == 403
    assert (await client.get("/v2/", headers=basic("alice", "wrong"))).status == 401
    assert (await client.delete(f"/v2/team-a/app/manifests/{first.digest}", headers=basic("alice"))).status == 202
    reason = "auth.access[0] (repos team-a/**) does not grant push on 'team-a/app' to bob"
    assert await lines(client, tmp_path / "audit.log") == [
        {"action": "push", "result": "success", "principal": "alice", "repository": "team-a/app",
         "reference": "v1", "digest": first.digest},
        {"action": "push", "result": "success", "principal": "alice", "repository": "team-a/app",
         "reference": "v1", "digest": second.digest},
        {"action": "tag_overwrite", "result": "success", "principal": "alice", "repository": "team-a/app",
         "reference": "v1", "digest": second.digest, "previous": first.digest},
        {"action": "push", "result": "denied", "principal": "bob", "repository": "team-a/app",
         "reference": None, "digest": None, "reason": reason},
        {"action": "login", "result": "failure", "principal": "alice", "repository": None,
         "reference": None, "digest": None},
        {"action": "delete", "result": "success", "principal": "alice", "repository": "team-a/app",
         "reference": first.digest, "digest": first.digest},
    ]


async def test_pulls_are_audited_when_asked(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await aiohttp_client(build_app(audit_config(tmp_path, audit_pulls=True)))
    image = await push_image(SignedIn(client, basic("alice")), "team-a/app")  # type: ignore[arg-type]
    assert (await client.get("/v2/team-a/app/manifests/v1")).status == 200
    assert (await lines(client, tmp_path / "audit.log"))[-1] == {
        "action": "pull", "result": "success", "principal": "anonymous", "repository": "team-a/app",
        "reference": "v1", "digest": image.digest}


async def test_an_audited_pull_names_the_user_who_logged_in(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await aiohttp_client(build_app(audit_config(tmp_path, audit_pulls=True)))
    await push_image(SignedIn(client, basic("alice")), "team-a/app")  # type: ignore[arg-type]
    assert (await client.get("/v2/team-a/app/manifests/v1", headers=basic("bob"))).status == 200
    pull = (await lines(client, tmp_path / "audit.log"))[-1]
    assert (pull["action"], pull["principal"]) == ("pull", "bob")


async def test_an_audited_pull_without_rules_names_the_user_who_logged_in(aiohttp_client: Any,
                                                                          tmp_path: Path) -> None:
    htpasswd = write_htpasswd(tmp_path / "htpasswd", PASSWORDS)
    config = build_config({"storage": {"path": str(tmp_path / "data")}, "auth": {"htpasswd": str(htpasswd)},
                           "log": {"audit": str(tmp_path / "a.log"), "audit_pulls": True}})
    client = await aiohttp_client(build_app(config))
    await push_image(SignedIn(client, basic("alice")), "team/app")  # type: ignore[arg-type]
    scope = {"scope": "repository:team/app:pull"}
    token = (await (await client.get("/auth/token", params=scope, headers=basic("bob"))).json())["token"]
    assert (await client.get("/v2/team/app/manifests/v1", headers={"Authorization": f"Bearer {token}"})).status == 200
    assert (await client.get("/v2/team/app/manifests/v1", headers=basic("alice"))).status == 200
    assert (await client.get("/v2/team/app/manifests/v1")).status == 200
    pulls = [e["principal"] for e in await lines(client, tmp_path / "a.log") if e["action"] == "pull"]
    assert pulls == ["bob", "alice", "anonymous"]


async def test_credentials_on_a_pull_nobody_records_are_not_checked(aiohttp_client: Any, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    client = await aiohttp_client(build_app(audit_config(tmp_path)))
    await push_image(SignedIn(client, basic("alice")), "team-a/app")  # type: ignore[arg-type]
    checks: list[bytes] = []
    real = bcrypt.checkpw
    monkeypatch.setattr(bcrypt, "checkpw", lambda password, hashed: checks.append(password) or real(password, hashed))
    assert (await client.get("/v2/team-a/app/manifests/v1", headers=basic("bob"))).status == 200
    assert checks == []


async def test_a_scope_refusal_is_audited(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await aiohttp_client(build_app(audit_config(tmp_path)))
    scope = {"scope": "repository:team-a/app:pull"}
    token = (await (await client.get("/auth/token", params=scope, headers=basic("alice"))).json())["token"]
    bearer = {"Authorization": f"Bearer {token}"}
    assert (await client.post("/v2/team-a/app/blobs/uploads/", headers=bearer)).status == 401
    [event] = await lines(client, tmp_path / "audit.log")
    assert (event["action"], event["result"], event["principal"], event["repository"]) == (
        "push", "denied", "alice", "team-a/app")
    assert "repository:team-a/app:push" in event["reason"]


async def test_a_push_anyone_may_make_still_names_the_user_who_logged_in(aiohttp_client: Any,
                                                                         tmp_path: Path) -> None:
    htpasswd = write_htpasswd(tmp_path / "htpasswd", PASSWORDS)
    config = build_config({"storage": {"path": str(tmp_path / "data")}, "log": {"audit": str(tmp_path / "a.log")},
                           "auth": {"htpasswd": str(htpasswd),
                                    "access": [{"repos": ["**"], "pull": ["anonymous"], "push": ["anonymous"]}]}})
    client = await aiohttp_client(build_app(config))
    await push_image(SignedIn(client, basic("alice")), "team/app")  # type: ignore[arg-type]
    await push_image(client, "team/other")
    events = await lines(client, tmp_path / "a.log")
    assert [(e["principal"], e["repository"]) for e in events] == [("alice", "team/app"), ("anonymous", "team/other")]


async def test_the_password_of_a_failed_login_is_never_written(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await aiohttp_client(build_app(audit_config(tmp_path)))
    assert (await client.get("/auth/token", headers=basic("alice", "hunter2-secret"))).status == 401
    events = await lines(client, tmp_path / "audit.log")
    assert [e["action"] for e in events] == ["login"]
    assert "hunter2-secret" not in (tmp_path / "audit.log").read_text()


async def test_stdout_gets_the_lines(aiohttp_client: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = build_config({"storage": {"path": str(tmp_path / "data")}, "log": {"audit": "stdout"}})
    client = await aiohttp_client(build_app(config))
    assert (await client.post("/v2/team/app/blobs/uploads/")).status == 401
    await client.server.app[AUDIT].drain()
    event = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert (event["action"], event["result"], event["repository"]) == ("push", "denied", "team/app")


def test_an_audit_path_that_cannot_be_opened_stops_start_up(tmp_path: Path) -> None:
    config = build_config({"storage": {"path": str(tmp_path / "data")},
                           "log": {"audit": str(tmp_path / "missing" / "audit.log")}})
    with pytest.raises(ConfigError, match="^log.audit: "):
        build_app(config)


def failed_login(server: PullcacheProcess) -> None:
    request = urllib.request.Request(f"{server.url}/v2/", headers=basic("alice", "wrong"))
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 401


def test_sighup_after_a_rename_writes_to_a_new_file(pullcache_factory: Callable[..., PullcacheProcess],
                                                    tmp_path: Path) -> None:
    audit_path = tmp_path / "audit.log"
    server = pullcache_factory({"auth": {"htpasswd": str(write_htpasswd(tmp_path / "htpasswd", PASSWORDS))},
                                "log": {"audit": str(audit_path)}})
    failed_login(server)
    server.process.wait_until(lambda: audit_path.exists() and audit_path.read_text().count("\n") == 1,
                              timeout=10, what="the first audit line")
    rotated = tmp_path / "audit.log.1"
    audit_path.rename(rotated)
    os.kill(server.process.pid, signal.SIGHUP)
    server.process.wait_until(lambda: "reopened" in server.log_text(), timeout=10, what="the audit log reopened")
    failed_login(server)
    server.process.wait_until(lambda: audit_path.exists() and audit_path.read_text().count("\n") == 1,
                              timeout=10, what="a line in the new file")
    assert rotated.read_text().count("\n") == 1
    assert json.loads(audit_path.read_text())["action"] == "login"
    assert server.alive
