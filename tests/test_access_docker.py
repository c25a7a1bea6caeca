"""Access rules through real clients: dockerd logs in as two users of two teams, pushes, is refused and pulls;
anonymous mirror pulls of proxied images keep working under a rule that allows them.

pullcache runs as a real process (`python -m pullcache serve`) in front of the seeded upstream; the
login, push and pull test runs on both backends.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.dockerd import Dockerd
from tests.support.htpasswd import write_htpasswd
from tests.support.pullcache_proc import PullcacheProcess
from tests.support.seed import Upstream

PASSWORDS = {"alice": "alice pass", "bob": "bob pass"}


def access_section(htpasswd: Path) -> dict[str, Any]:
    return {"auth": {"htpasswd": str(htpasswd), "groups": {"team-a": ["alice"], "team-b": ["bob"]},
                     "access": [{"repos": ["team-a/**"], "pull": ["team-a", "team-b"], "push": ["team-a"]},
                                {"repos": ["team-b/**"], "pull": ["team-b"], "push": ["team-b"]},
                                {"repos": ["docker.io/**"], "pull": ["anonymous"]}]},
            "local": {"anonymous_push": False}}


@pytest.fixture
def server(pullcache_factory: Callable[..., PullcacheProcess], tmp_path: Path,
           storage_backend: dict[str, Any]) -> PullcacheProcess:
    """pullcache under the access rules, once per backend."""
    return pullcache_factory({**access_section(write_htpasswd(tmp_path / "htpasswd", PASSWORDS)),
                              "storage": storage_backend})


def login(daemon: Dockerd, server: PullcacheProcess, user: str) -> None:
    daemon.docker("login", "-u", user, "--password-stdin", server.host, input=PASSWORDS[user] + "\n")


def test_team_a_pushes_its_repository_and_team_b_is_refused_with_403(
        server: PullcacheProcess, upstream: Upstream, dockerd_factory: Callable[..., Dockerd]) -> None:
    daemon = dockerd_factory()
    source = f"{upstream.host}/library/single:v1"
    daemon.docker("pull", source)
    ref = f"{server.host}/team-a/app:v1"
    daemon.docker("tag", source, ref)

    login(daemon, server, "bob")
    refused = daemon.docker("push", ref, check=False)
    assert refused.returncode != 0
    assert "denied" in refused.stderr.lower() and "auth.access[0]" in refused.stderr
    # The access line is written once the response went out, so maybe after docker gave up: awaited, not read once.
    server.process.wait_until(lambda: "POST /v2/team-a/app/blobs/uploads/ 403 " in server.log_text(), timeout=10,
                              what="logging the refused upload")

    login(daemon, server, "alice")
    daemon.docker("push", ref)
    daemon.docker("rmi", ref)

    login(daemon, server, "bob")  # team B may pull team A's images, not push them
    daemon.docker("pull", ref)
    daemon.docker("rmi", ref)

    daemon.docker("logout", server.host)
    anonymous = daemon.docker("pull", ref, check=False)
    assert anonymous.returncode != 0
    assert "unauthorized" in anonymous.stderr.lower() or "authentication required" in anonymous.stderr.lower()


@pytest.mark.parametrize("storage_backend", ["filesystem"], indirect=True)  # mirror pulls on S3: test_pull_clients
def test_anonymous_mirror_pulls_of_proxied_images_still_work(
        server: PullcacheProcess, upstream: Upstream, dockerd_factory: Callable[..., Dockerd]) -> None:
    daemon = dockerd_factory(mirrors=[server.url])
    daemon.docker("pull", "alpine")  # bare name: only the mirror can answer; docker.io/library/alpine by the rules
    assert daemon.docker("image", "inspect", "alpine").returncode == 0


def test_with_rules_anonymous_push_is_announced_as_ignored(pullcache_factory: Callable[..., PullcacheProcess],
                                                          tmp_path: Path) -> None:
    config = access_section(write_htpasswd(tmp_path / "htpasswd", PASSWORDS))
    server = pullcache_factory({**config, "local": {"anonymous_push": True}})
    warnings = [line for line in server.log_text().splitlines() if " WARNING " in line]
    assert len(warnings) == 1
    assert "local.anonymous_push has no effect: auth.access decides who may push" in warnings[0]
    assert "pushes, pulls and deletes decided by auth.access (3 rules, 2 groups)" in server.log_text()
