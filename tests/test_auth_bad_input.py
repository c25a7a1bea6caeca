"""Credentials that are malformed, oversized or for no known user: always a 401, never a 500, and a
check that takes as long for an unknown user as for a known one (no user enumeration by timing)."""
from __future__ import annotations

import base64
import subprocess
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from aiohttp.test_utils import TestClient

from pullcache.api import auth
from pullcache.app import build_app
from pullcache.config import Config, ConfigError, build_config
from tests.registry_api import error_code

pytest_plugins = ["tests.registry_api"]

USER = "admin"
LONG_PASSWORD = "correct horse battery staple " * 3  # 87 bytes: htpasswd -B keeps the first 72
COST = 5


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def htpasswd_entry(path: Path, user: str, password: str, *, cost: int = COST) -> None:
    """Add an entry the way an operator does: Apache's own `htpasswd -B`."""
    flags = "-bB" if path.exists() else "-cbB"
    subprocess.run(["htpasswd", flags, "-C", str(cost), str(path), user, password], check=True, capture_output=True)


@pytest.fixture
def registry_config(tmp_path: Path) -> Config:
    htpasswd = tmp_path / "htpasswd"
    htpasswd_entry(htpasswd, USER, LONG_PASSWORD)
    htpasswd_entry(htpasswd, "short", "hunter2")
    return build_config({"storage": {"path": str(tmp_path / "data")}, "auth": {"htpasswd": str(htpasswd)}})


@pytest.fixture
def bcrypt_checks(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bytes, bytes]]:
    """(password, hash) of every bcrypt check, in order."""
    calls: list[tuple[bytes, bytes]] = []
    real = bcrypt.checkpw

    def spy(password: bytes, hashed: bytes) -> bool:
        calls.append((password, hashed))
        return real(password, hashed)
    monkeypatch.setattr(auth.bcrypt, "checkpw", spy)
    return calls


def cost_of(hashed: bytes) -> int:
    return int(hashed.split(b"$")[2])


# ------------------------------------------------------------------ passwords over 72 bytes

async def test_password_over_72_bytes_from_htpasswd_is_accepted(registry: TestClient) -> None:
    response = await registry.get("/v2/", headers=basic(USER, LONG_PASSWORD))
    assert response.status == 200, await response.text()


async def test_only_the_first_72_bytes_count_as_htpasswd_does(registry: TestClient) -> None:
    same_start = LONG_PASSWORD.encode()[:72].decode() + "anything after byte 72"
    assert (await registry.get("/v2/", headers=basic(USER, same_start))).status == 200


async def test_wrong_password_over_72_bytes_is_401(registry: TestClient) -> None:
    for user in (USER, "short", "nobody"):
        response = await registry.get("/v2/", headers=basic(user, "x" * 100))
        assert response.status == 401, (user, await response.text())
        assert await error_code(response) == "UNAUTHORIZED"


async def test_token_for_a_password_over_72_bytes(registry: TestClient) -> None:
    assert (await registry.get("/auth/token", headers=basic(USER, LONG_PASSWORD))).status == 200
    assert (await registry.get("/auth/token", headers=basic(USER, "y" * 90))).status == 401


# ------------------------------------------------------------------ malformed headers

NON_ASCII_BEARER = {"Authorization": "Bearer t\u00f6ken.s\u00efgnature"}


@pytest.mark.parametrize("path", ["/v2/", "/v2/team/app/blobs/uploads/"])
async def test_non_ascii_bearer_is_401(registry: TestClient, path: str) -> None:
    response = await registry.request("GET" if path == "/v2/" else "POST", path, headers=NON_ASCII_BEARER)
    assert response.status == 401, await response.text()
    assert await error_code(response) == "UNAUTHORIZED"


async def test_non_ascii_basic_is_401(registry: TestClient) -> None:
    for value in ("Basic d\u00f6sntdecode", "Basic " + base64.b64encode("admin:p\u00e4ss".encode()).decode()):
        response = await registry.get("/v2/", headers={"Authorization": value})
        assert response.status == 401, (value, await response.text())


MALFORMED_BASIC = ["Basic !!notbase64!!", "Basic " + base64.b64encode(b"no colon here").decode(),
                   "Basic " + base64.b64encode(b"\xff\xfe:\xfd").decode(), "Basic", "Basic d\u00f6",
                   "Bearer sometoken", "Digest username=admin"]


@pytest.mark.parametrize("header", MALFORMED_BASIC)
async def test_malformed_credentials_at_the_token_endpoint_are_401(registry: TestClient, header: str) -> None:
    """A client that sends credentials means to log in: an anonymous token would hide that they are broken."""
    response = await registry.get("/auth/token", headers={"Authorization": header})
    assert response.status == 401, await response.text()
    assert await error_code(response) == "UNAUTHORIZED"


async def test_no_credentials_at_the_token_endpoint_still_get_an_anonymous_token(registry: TestClient) -> None:
    response = await registry.get("/auth/token")
    assert response.status == 200
    assert (await response.json())["token"]


# ------------------------------------------------------------------ no user enumeration

async def test_unknown_user_costs_a_bcrypt_check_of_the_same_cost(registry: TestClient,
                                                                  bcrypt_checks: list[tuple[bytes, bytes]]) -> None:
    assert (await registry.get("/v2/", headers=basic("nobody", "guess"))).status == 401
    assert (await registry.get("/v2/", headers=basic(USER, "guess"))).status == 401
    assert [password for password, _ in bcrypt_checks] == [b"guess", b"guess"]
    unknown, known = (hashed for _, hashed in bcrypt_checks)
    assert cost_of(unknown) == cost_of(known) == COST
    assert unknown != known


async def test_unknown_user_is_refused_from_the_cache_like_a_known_one(
        registry: TestClient, bcrypt_checks: list[tuple[bytes, bytes]]) -> None:
    """A known user's wrong password is remembered for a while; an unknown user's must be too, or the
    second attempt's speed tells them apart."""
    for user in ("nobody", USER):
        for _ in range(3):
            assert (await registry.get("/v2/", headers=basic(user, "guess"))).status == 401
    assert len(bcrypt_checks) == 2


async def test_unknown_user_at_the_token_endpoint_costs_a_bcrypt_check(
        registry: TestClient, bcrypt_checks: list[tuple[bytes, bytes]]) -> None:
    assert (await registry.get("/auth/token", headers=basic("nobody", "guess"))).status == 401
    assert [cost_of(hashed) for _, hashed in bcrypt_checks] == [COST]


async def test_dummy_hash_takes_the_cost_most_entries_use(aiohttp_client: Any, tmp_path: Path,
                                                          bcrypt_checks: list[tuple[bytes, bytes]]) -> None:
    htpasswd = tmp_path / "htpasswd"
    for user, cost in (("a", 4), ("b", 6), ("c", 6)):
        htpasswd_entry(htpasswd, user, "pw", cost=cost)
    config = build_config({"storage": {"path": str(tmp_path / "data")}, "auth": {"htpasswd": str(htpasswd)}})
    client = await aiohttp_client(build_app(config))
    assert (await client.get("/v2/", headers=basic("nobody", "pw"))).status == 401
    assert [cost_of(hashed) for _, hashed in bcrypt_checks] == [6]


@pytest.mark.parametrize("hashed", ["$2y$05$tooshort", "$2y$xx$" + "a" * 53, "$2y$05$" + "!" * 53])
def test_malformed_bcrypt_entries_stop_start_up_naming_the_line(tmp_path: Path, hashed: str) -> None:
    """A damaged entry would make every login of that user a 500; refuse it at start-up instead."""
    (tmp_path / "htpasswd").write_text(f"# users\n{USER}:{hashed}\n")
    config = build_config({"storage": {"path": str(tmp_path)}, "auth": {"htpasswd": str(tmp_path / "htpasswd")}})
    with pytest.raises(ConfigError, match=r"auth\.htpasswd: .* line 2"):
        build_app(config)
