"""Basic auth against a bcrypt htpasswd file (and the Bearer tokens it backs), and HTTPS from tls.cert/tls.key.

Auth is checked in-process; TLS through a real `python -m pullcache serve`, because the point is
that the CLI loads the certificate and that blobs go out correctly over TLS (no kernel sendfile).
"""
from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt
import pytest
import yaml
from aiohttp.test_utils import TestClient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pullcache.api import auth
from pullcache.app import build_app
from pullcache.config import Config, ConfigError, build_config
from tests.registry_api import SignedIn, error_code, push_image, sha256
from tests.support.htpasswd import write_htpasswd
from tests.support.procs import ManagedProcess, free_port

pytest_plugins = ["tests.registry_api"]

USER, PASSWORD = "pusher", "s3cret pass"
REPO_ROOT = Path(__file__).resolve().parents[1]


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


GOOD = basic(USER, PASSWORD)
WRONG = basic(USER, "not it")


def auth_config(tmp_path: Path, **auth_section: Any) -> Config:
    htpasswd = write_htpasswd(tmp_path / "htpasswd", {USER: PASSWORD, "other": "other pass"})
    return build_config({"storage": {"path": str(tmp_path / "data")},
                         "auth": {"htpasswd": str(htpasswd), **auth_section}})


@pytest.fixture
def registry_config(tmp_path: Path) -> Config:
    return auth_config(tmp_path)


async def client_for(aiohttp_client: Any, config: Config) -> TestClient:
    return await aiohttp_client(build_app(config))


async def push_image_as(registry: TestClient, headers: dict[str, str]) -> str:
    image = await push_image(SignedIn(registry, headers), "team/app")  # type: ignore[arg-type]
    return image.digest



# ------------------------------------------------------------------ push needs credentials

async def test_base_challenges_without_credentials(registry: TestClient) -> None:
    response = await registry.get("/v2/")
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == 'Basic realm="pullcache"'
    assert await error_code(response) == "UNAUTHORIZED"


async def test_base_accepts_good_and_refuses_wrong_credentials(registry: TestClient) -> None:
    assert (await registry.get("/v2/", headers=GOOD)).status == 200
    assert (await registry.get("/v2/", headers=WRONG)).status == 401
    assert (await registry.get("/v2/", headers=basic("nobody", PASSWORD))).status == 401


async def test_head_base_checks_credentials_like_get(registry: TestClient) -> None:
    refused = await registry.head("/v2/")
    assert refused.status == 401
    assert refused.headers["WWW-Authenticate"] == 'Basic realm="pullcache"'
    accepted = await registry.head("/v2/", headers=GOOD)
    assert accepted.status == 200
    assert accepted.headers["Docker-Distribution-API-Version"] == "registry/2.0"


async def test_head_base_answers_200_without_htpasswd(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await client_for(aiohttp_client, build_config({"storage": {"path": str(tmp_path)}}))
    for path in ("/v2/", "/v2"):
        response = await client.head(path)
        assert response.status == 200, path
        assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"


async def test_push_without_credentials_is_401_and_writes_nothing(registry: TestClient,
                                                                  registry_config: Config) -> None:
    requests = [("POST", "/v2/team/app/blobs/uploads/"), ("PUT", "/v2/team/app/manifests/v1"),
                ("DELETE", "/v2/team/app/manifests/v1"), ("DELETE", f"/v2/team/app/blobs/{sha256(b'x')}"),
                ("PATCH", "/v2/team/app/blobs/uploads/3f1c0a8e-0000-4000-8000-000000000000")]
    for method, path in requests:
        for headers in ({}, WRONG):
            response = await registry.request(method, path, headers=headers, data=b"{}")
            assert response.status == 401, (method, path, headers)
            assert response.headers["WWW-Authenticate"].startswith("Basic realm=")
    assert not list((Path(registry_config.storage.path) / "uploads").iterdir())


async def test_push_with_credentials_works_and_pull_stays_anonymous(registry: TestClient) -> None:
    image = await push_image_as(registry, GOOD)
    anonymous = await registry.get(f"/v2/team/app/manifests/{image}")
    assert anonymous.status == 200
    assert (await registry.get("/v2/team/app/tags/list")).status == 200
    assert (await registry.get("/v2/_catalog")).status == 200


async def test_upload_status_is_a_push_operation(registry: TestClient) -> None:
    started = await registry.post("/v2/team/app/blobs/uploads/", headers=GOOD)
    assert (await registry.get(started.headers["Location"])).status == 401
    assert (await registry.get(started.headers["Location"], headers=GOOD)).status == 204


async def test_bad_credentials_on_an_anonymous_pull_are_ignored(registry: TestClient) -> None:
    """skopeo answers a Basic challenge with empty credentials when it has none."""
    digest = await push_image_as(registry, GOOD)
    for headers in (basic("", ""), WRONG, {"Authorization": "Bearer sometoken"}, {"Authorization": "Basic !!"}):
        assert (await registry.get(f"/v2/team/app/manifests/{digest}", headers=headers)).status == 200


# ------------------------------------------------------------------ challenges and tokens

async def test_401_offers_basic_then_bearer(registry: TestClient) -> None:
    response = await registry.post("/v2/team/app/blobs/uploads/")
    challenges = response.headers.getall("WWW-Authenticate")
    assert challenges[0] == 'Basic realm="pullcache"'
    assert challenges[1] == f'Bearer realm="http://{response.url.host}:{response.url.port}/auth/token",service="pullcache"'


async def test_docker_engine_is_offered_bearer_only(registry: TestClient) -> None:
    """dockerd runs every challenge it knows; Basic without credentials would fail its anonymous pulls."""
    response = await registry.get("/v2/", headers={"User-Agent": "docker/20.10.24 go/go1.19.8 os/linux"})
    assert [c.split(" ")[0] for c in response.headers.getall("WWW-Authenticate")] == ["Bearer"]


async def token_for(registry: TestClient, headers: dict[str, str]) -> str:
    response = await registry.get("/auth/token", params={"service": "pullcache", "scope": "repository:team/app:push"},
                                  headers=headers)
    assert response.status == 200, await response.text()
    body = await response.json()
    assert body["token"] == body["access_token"]
    assert body["expires_in"] >= 60
    return body["token"]


async def test_token_for_good_credentials_allows_pushes(registry: TestClient) -> None:
    token = await token_for(registry, GOOD)
    bearer = {"Authorization": f"Bearer {token}"}
    assert (await registry.get("/v2/", headers=bearer)).status == 200
    assert (await registry.post("/v2/team/app/blobs/uploads/", headers=bearer)).status == 202


async def test_token_endpoint_refuses_wrong_credentials(registry: TestClient) -> None:
    response = await registry.get("/auth/token", headers=WRONG)
    assert response.status == 401
    assert await error_code(response) == "UNAUTHORIZED"


async def test_anonymous_token_pulls_but_cannot_push(registry: TestClient) -> None:
    digest = await push_image_as(registry, GOOD)
    bearer = {"Authorization": f"Bearer {await token_for(registry, {})}"}
    assert (await registry.get(f"/v2/team/app/manifests/{digest}", headers=bearer)).status == 200
    assert (await registry.post("/v2/team/app/blobs/uploads/", headers=bearer)).status == 401
    assert (await registry.get("/v2/", headers=bearer)).status == 401


async def test_forged_token_counts_for_nothing(registry: TestClient) -> None:
    token = await token_for(registry, GOOD)
    payload, _, signature = token.partition(".")
    forged = {"Authorization": f"Bearer {payload}.{signature[:-2]}xx"}
    assert (await registry.post("/v2/team/app/blobs/uploads/", headers=forged)).status == 401


async def test_expired_token_counts_for_nothing(registry: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    token = await token_for(registry, GOOD)
    later = auth.time.time() + auth.TOKEN_SECONDS + 1
    monkeypatch.setattr(auth.time, "time", lambda: later)
    assert (await registry.post("/v2/team/app/blobs/uploads/",
                                headers={"Authorization": f"Bearer {token}"})).status == 401


# ------------------------------------------------------------------ push: the default without users

def no_users_config(tmp_path: Path, **local: Any) -> Config:
    return build_config({"storage": {"path": str(tmp_path / "data")}, "local": local})


@pytest.mark.parametrize("method, path", [
    ("POST", "/v2/team/app/blobs/uploads/"),
    ("PUT", "/v2/team/app/manifests/v1"),
    ("DELETE", "/v2/team/app/manifests/v1"),
])
async def test_without_users_writes_are_refused_saying_how_to_allow_them(
        aiohttp_client: Any, tmp_path: Path, method: str, path: str) -> None:
    client = await client_for(aiohttp_client, no_users_config(tmp_path))
    response = await client.request(method, path, data=b"{}")
    assert response.status == 401
    body = await response.json()
    assert body["errors"][0]["code"] == "UNAUTHORIZED"
    assert "auth.htpasswd" in body["errors"][0]["message"]
    assert "local.anonymous_push" in body["errors"][0]["message"]
    assert (await client.get("/v2/team/app/tags/list")).status == 404


async def test_without_users_pulls_stay_anonymous(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await client_for(aiohttp_client, no_users_config(tmp_path))
    assert (await client.get("/v2/")).status == 200
    assert (await client.get("/v2/team/app/tags/list")).status == 404


async def test_without_users_the_token_endpoint_gives_docker_an_anonymous_token(
        aiohttp_client: Any, tmp_path: Path) -> None:
    """Docker fetches a token before it shows a refused push's reason: the realm must answer."""
    client = await client_for(aiohttp_client, no_users_config(tmp_path))
    anonymous = await client.get("/auth/token")
    assert anonymous.status == 200
    token = (await anonymous.json())["token"]
    refused = await client.post("/v2/team/app/blobs/uploads/", headers={"Authorization": f"Bearer {token}"})
    assert refused.status == 401
    assert (await client.get("/auth/token", headers=basic("someone", "anything"))).status == 401


async def test_anonymous_push_is_an_explicit_opt_in(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await client_for(aiohttp_client, no_users_config(tmp_path, anonymous_push=True))
    await push_image(client, "team/app")
    assert (await client.get("/v2/team/app/tags/list")).status == 200


async def test_with_users_and_anonymous_push_a_push_needs_no_login(aiohttp_client: Any, tmp_path: Path) -> None:
    htpasswd = write_htpasswd(tmp_path / "htpasswd", {USER: PASSWORD})
    config = build_config({"storage": {"path": str(tmp_path / "data")}, "auth": {"htpasswd": str(htpasswd)},
                           "local": {"anonymous_push": True}})
    client = await client_for(aiohttp_client, config)
    assert (await client.post("/v2/team/app/blobs/uploads/")).status == 202


# ------------------------------------------------------------------ pull: authenticated

async def test_authenticated_pull_needs_credentials(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await client_for(aiohttp_client, auth_config(tmp_path, pull="authenticated"))
    digest = await push_image_as(client, GOOD)
    for path in (f"/v2/team/app/manifests/{digest}", "/v2/team/app/tags/list", "/v2/_catalog",
                 f"/v2/team/app/referrers/{digest}"):
        assert (await client.get(path)).status == 401, path
        assert (await client.get(path, headers=WRONG)).status == 401, path
        assert (await client.get(path, headers=GOOD)).status == 200, path


@pytest.mark.parametrize("path", ["/", "/metrics"])
async def test_authenticated_pull_protects_the_status_page_and_metrics(aiohttp_client: Any, tmp_path: Path,
                                                                       path: str) -> None:
    client = await client_for(aiohttp_client, auth_config(tmp_path, pull="authenticated"))
    for method in ("GET", "HEAD"):
        refused = await client.request(method, path)
        assert refused.status == 401, method
        assert 'Basic realm="pullcache"' in refused.headers.getall("WWW-Authenticate")  # a browser asks for a login
        assert (await client.request(method, path, headers=WRONG)).status == 401, method
        assert (await client.request(method, path, headers=GOOD)).status == 200, method


async def test_authenticated_pull_leaves_the_probes_open(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await client_for(aiohttp_client, auth_config(tmp_path, pull="authenticated"))
    for path in ("/healthz", "/readyz"):
        assert (await client.get(path)).status == 200, path


async def test_anonymous_pull_leaves_the_status_page_and_metrics_open(registry: TestClient) -> None:
    for path in ("/", "/metrics"):
        assert (await registry.get(path)).status == 200, path


async def test_authenticated_pull_gives_no_anonymous_token(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await client_for(aiohttp_client, auth_config(tmp_path, pull="authenticated"))
    assert (await client.get("/auth/token")).status == 401
    assert (await client.get("/auth/token", headers=GOOD)).status == 200


async def test_authenticated_pull_without_htpasswd_stops_start_up(tmp_path: Path) -> None:
    config = build_config({"storage": {"path": str(tmp_path)}, "auth": {"pull": "authenticated"}})
    with pytest.raises(ConfigError, match="auth.pull"):
        build_app(config)


# ------------------------------------------------------------------ the htpasswd file

@pytest.fixture
def apache_htpasswd(tmp_path: Path) -> Path:
    """A file written by Apache's own `htpasswd -B` (entries start with $2y$)."""
    path = tmp_path / "htpasswd"
    subprocess.run(["htpasswd", "-cbB", "-C", "5", str(path), "admin", "hunter2"], check=True, capture_output=True)
    path.write_text("# comment\n\n" + path.read_text())
    return path


async def test_entries_written_by_htpasswd_dash_b_are_accepted(aiohttp_client: Any, tmp_path: Path,
                                                               apache_htpasswd: Path) -> None:
    assert "admin:$2y$" in apache_htpasswd.read_text()
    config = build_config({"storage": {"path": str(tmp_path / "data")},
                           "auth": {"htpasswd": str(tmp_path / "htpasswd")}})
    client = await client_for(aiohttp_client, config)
    assert (await client.get("/v2/", headers=basic("admin", "hunter2"))).status == 200
    assert (await client.get("/v2/", headers=basic("admin", "hunter3"))).status == 401


@pytest.mark.parametrize("entry", ["md5user:$apr1$wCQA.0h6$EyqMxlfJ6fnUPIajOjhqs1", "plain:secret",
                                   "shauser:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "no-colon-here"])
def test_non_bcrypt_entries_stop_start_up_naming_the_line(tmp_path: Path, entry: str) -> None:
    (tmp_path / "htpasswd").write_text(f"{USER}:{bcrypt.hashpw(b'x', bcrypt.gensalt(4)).decode()}\n{entry}\n")
    config = build_config({"storage": {"path": str(tmp_path)}, "auth": {"htpasswd": str(tmp_path / "htpasswd")}})
    with pytest.raises(ConfigError, match=r"auth\.htpasswd: .* line 2"):
        build_app(config)


def test_missing_htpasswd_file_stops_start_up(tmp_path: Path) -> None:
    config = build_config({"storage": {"path": str(tmp_path)}, "auth": {"htpasswd": str(tmp_path / "absent")}})
    with pytest.raises(ConfigError, match="auth.htpasswd"):
        build_app(config)


@pytest.fixture
def bcrypt_calls(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The passwords bcrypt is asked to check, in order."""
    calls: list[bytes] = []
    real = bcrypt.checkpw
    monkeypatch.setattr(auth.bcrypt, "checkpw",
                        lambda password, hashed: calls.append(password) or real(password, hashed))
    return calls


async def test_a_good_password_is_checked_by_bcrypt_once(registry: TestClient, bcrypt_calls: list[bytes]) -> None:
    for _ in range(5):
        assert (await registry.get("/v2/", headers=GOOD)).status == 200
    assert bcrypt_calls == [PASSWORD.encode()]


async def test_a_wrong_password_is_checked_by_bcrypt_once_for_a_while(registry: TestClient,
                                                                       bcrypt_calls: list[bytes]) -> None:
    """A client retrying with a wrong password costs one bcrypt check, not one per attempt."""
    for _ in range(5):
        assert (await registry.get("/v2/", headers=WRONG)).status == 401
    assert bcrypt_calls == [b"not it"]


async def test_credentials_on_an_anonymous_pull_are_not_checked(registry: TestClient,
                                                                 bcrypt_calls: list[bytes]) -> None:
    digest = await push_image_as(registry, GOOD)
    bcrypt_calls.clear()
    for headers in (WRONG, basic("other", "guess")):
        assert (await registry.get(f"/v2/team/app/manifests/{digest}", headers=headers)).status == 200
    assert bcrypt_calls == []


async def test_bcrypt_does_not_queue_behind_the_default_executor(registry: TestClient) -> None:
    """Disk reads and writes go through the default executor; a login must not wait for them, nor they for it."""
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(max_workers=1))
    release = threading.Event()
    busy = loop.run_in_executor(None, release.wait)  # the default executor's only thread is taken
    try:
        response = await asyncio.wait_for(registry.get("/v2/", headers=GOOD), timeout=10)
        assert response.status == 200
    finally:
        release.set()
        await busy


# ------------------------------------------------------------------ TLS through the CLI

def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                  critical=False)
                   .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def _answers_tls(port: int, context: ssl.SSLContext) -> bool:
    import http.client
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=1)
    try:
        connection.request("GET", "/v2/")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[str, ssl.SSLContext]]:
    cert, key = self_signed(tmp_path)
    port = free_port()
    config = {"listen": f"127.0.0.1:{port}", "storage": {"path": str(tmp_path / "data")},
              "tls": {"cert": str(cert), "key": str(key)}, "local": {"anonymous_push": True}}
    (tmp_path / "proxy.yml").write_text(yaml.safe_dump(config))
    process = ManagedProcess([sys.executable, "-m", "pullcache", "serve", "-c", str(tmp_path / "proxy.yml")],
                             log_path=tmp_path / "pullcache.log", cwd=REPO_ROOT,
                             env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT)}, name="pullcache")
    context = ssl.create_default_context(cafile=str(cert))
    process.start()
    try:
        process.wait_until(lambda: _answers_tls(port, context), timeout=20, what="answering HTTPS")
        yield f"https://127.0.0.1:{port}", context
    finally:
        process.stop()


async def test_https_serves_the_api_and_blobs(tls_server: tuple[str, ssl.SSLContext]) -> None:
    url, context = tls_server
    blob = bytes(range(256)) * 4096  # 1 MiB: big enough to go out in many TLS records
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
        base = await session.get(f"{url}/v2/")
        assert base.status == 200
        assert base.headers["Docker-Distribution-API-Version"] == "registry/2.0"
        pushed = await session.post(f"{url}/v2/team/app/blobs/uploads/", params={"digest": sha256(blob)}, data=blob)
        assert pushed.status == 201
        pulled = await session.get(f"{url}/v2/team/app/blobs/{sha256(blob)}")
        assert await pulled.read() == blob
        part = await session.get(f"{url}/v2/team/app/blobs/{sha256(blob)}", headers={"Range": "bytes=1000-1999"})
        assert (part.status, await part.read()) == (206, blob[1000:2000])


async def test_plain_http_to_the_tls_port_gets_no_answer(tls_server: tuple[str, ssl.SSLContext]) -> None:
    url, _ = tls_server
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientError):
            await session.get(url.replace("https://", "http://") + "/v2/", timeout=aiohttp.ClientTimeout(total=5))
