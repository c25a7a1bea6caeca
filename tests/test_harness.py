"""The harness itself, against plain Distribution: if these fail, no other test means much.

They prove that the token server's JWTs are accepted by a real Distribution, that the
seeded content is what `SeedInfo` says (checked by skopeo, not by our own client), and
that real dockerd and containerd pull through a mirror on this machine.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import socket
import subprocess
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import jwt
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support import images
from tests.support.distribution import Distribution, start_proxy
from tests.support.htpasswd import write_htpasswd
from tests.support.pullcache_proc import PullcacheProcess
from tests.support.registry_client import RegistryClient, sha256_digest
from tests.support.seed import ADMIN_PASSWORD, ADMIN_USER, PULL_PASSWORD, PULL_USER, Upstream
from tests.support.skopeo import Skopeo
from tests.support.tokenserver import TokenServer


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _token(server: TokenServer, scope: str, auth: str | None = None) -> tuple[int, dict]:
    headers = {"Authorization": auth} if auth else {}
    status, body = _get(f"{server.realm}?service={server.service}&scope={scope}", headers)
    return status, json.loads(body)


def _claims(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_tokens_are_valid_jwts_that_distribution_accepts(upstream: Upstream) -> None:
    server = upstream.token_server
    before = server.count()
    status, body = _token(server, "repository:library/alpine:pull")
    assert status == 200 and body["token"] == body["access_token"]
    assert body["expires_in"] == server.expires_in and body["issued_at"].endswith("Z")

    header = jwt.get_unverified_header(body["token"])
    assert header["alg"] == "RS256" and len(header["x5c"]) == 1
    public_key = x509.load_pem_x509_certificate(server.cert_path.read_bytes()).public_key()
    assert isinstance(public_key, rsa.RSAPublicKey)
    claims = jwt.decode(body["token"], public_key, algorithms=["RS256"],
                        audience=server.service, issuer=server.issuer)
    assert claims["sub"] == "" and claims["jti"]
    assert claims["nbf"] <= claims["iat"] < claims["exp"]
    assert claims["access"] == [{"type": "repository", "name": "library/alpine", "actions": ["pull"]}]

    manifest_url = f"{upstream.url}/v2/library/alpine/manifests/latest"
    accept = {"Accept": images.DOCKER_LIST}
    assert _get(manifest_url, accept)[0] == 401
    status, data = _get(manifest_url, {**accept, "Authorization": f"Bearer {body['token']}"})
    assert status == 200 and data == upstream.seed.alpine.top.data

    # Private: anonymous gets an empty grant (not an error) that Distribution refuses.
    secret_url = f"{upstream.url}/v2/private/secret/manifests/v1"
    _, anon = _token(server, "repository:private/secret:pull")
    assert _claims(anon["token"])["access"][0]["actions"] == []
    assert _get(secret_url, {**accept, "Authorization": f"Bearer {anon['token']}"})[0] == 401
    _, granted = _token(server, "repository:private/secret:pull,push", _basic(PULL_USER, PULL_PASSWORD))
    assert _claims(granted["token"])["access"][0]["actions"] == ["pull"]
    assert _get(secret_url, {**accept, "Authorization": f"Bearer {granted['token']}"})[0] == 200

    assert _token(server, "repository:private/secret:pull", _basic(PULL_USER, "wrong"))[0] == 401
    assert server.count() == before + 3  # the refused one is not counted
    assert server.requests[-1].user == PULL_USER


def test_token_server_oauth_post_form(token_server: TokenServer) -> None:
    """containerd asks with a POST form when it has credentials."""
    form = (f"grant_type=password&service={token_server.service}&client_id=test"
            f"&username={PULL_USER}&password={PULL_PASSWORD}"
            "&scope=repository:private/secret:pull").encode()
    request = urllib.request.Request(token_server.realm, data=form, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        token = json.load(response)["access_token"]
    access = _claims(token)["access"]
    assert access == [{"type": "repository", "name": "private/secret", "actions": ["pull"]}]


async def test_token_server_serves_async_tests(tmp_path: Path) -> None:
    """Started inside a running event loop, queried with aiohttp from that loop."""
    with TokenServer(tmp_path) as server:
        async with aiohttp.ClientSession() as session:
            params = {"service": server.service, "scope": "repository:library/alpine:pull"}
            async with session.get(server.realm, params=params) as response:
                assert response.status == 200
                assert (await response.json())["token"]
        assert server.count(user="") == 1
        port = server.port
        server.stop()
        server.start()
        assert server.port == port
        async with aiohttp.ClientSession() as session, session.get(server.realm) as response:
            assert response.status == 200


def test_images_are_deterministic() -> None:
    first = images.build_image("library/x", "1", oci=True)
    again = images.build_image("library/x", "1", oci=True)
    other = images.build_image("library/x", "2", oci=True)
    assert first.digest == again.digest and first.top.data == again.top.data
    shared = {b.digest for b in first.blobs()} & {b.digest for b in other.blobs()}
    assert shared == {p.layers[0].digest for p in first.platforms.values()}  # the OS layers
    size = 3 * 1024 * 1024 + 1
    big = b"".join(images.BigLayer(size, seed="d"))
    assert big == b"".join(images.BigLayer(size, seed="d"))


def test_seeded_content_matches_seed_info_by_skopeo(upstream: Upstream, skopeo: Skopeo,
                                                    tmp_path: Path) -> None:
    for image in upstream.seed:
        creds = f"{PULL_USER}:{PULL_PASSWORD}" if image.repo.startswith("private/") else None
        for tag in (image.tag, *upstream.seed.extra_tags[image.ref]):
            raw = skopeo.inspect_raw(f"docker://{upstream.host}/{image.repo}:{tag}", creds=creds)
            assert raw == image.top.data and sha256_digest(raw) == image.digest
        for platform, platform_image in image.platforms.items():
            info = skopeo.inspect(f"docker://{upstream.host}/{image.ref}", creds=creds, platform=platform)
            assert info["Digest"] == image.digest
            assert info["Architecture"] == platform.split("/")[1]
            assert info["Layers"] == [layer.digest for layer in platform_image.layers]

    denied = skopeo.run("inspect", "--tls-verify=false", "--raw",
                        f"docker://{upstream.host}/private/secret:v1", check=False)
    assert denied.returncode != 0

    # A full multi-platform copy (OCI to an OCI layout, so nothing is converted): every
    # blob arrives byte for byte and every layer is a real tar.gz.
    oci_dir = tmp_path / "oci"
    ocitest = upstream.seed.ocitest
    skopeo.copy(f"docker://{upstream.host}/{ocitest.ref}", f"oci:{oci_dir}:v1",
                all_platforms=True, extra=("--preserve-digests",))
    index = json.loads((oci_dir / "index.json").read_text())
    assert index["manifests"][0]["digest"] == ocitest.digest
    for blob in ocitest.blobs():
        assert (oci_dir / "blobs" / "sha256" / blob.digest.split(":")[1]).read_bytes() == blob.data
        if blob.diff_id is not None:
            raw_tar = gzip.decompress(blob.data)
            assert sha256_digest(raw_tar) == blob.diff_id
            assert tarfile.open(fileobj=io.BytesIO(raw_tar)).getnames()


def test_streamed_big_layer_is_a_valid_tar_gz(upstream: Upstream) -> None:
    client = RegistryClient(upstream.url, username=ADMIN_USER, password=ADMIN_PASSWORD)
    size = 5 * 1024 * 1024 + 123
    image = images.push_big_image(client, "harness/big", "v1", size, seed="harness")
    layer = image.platforms["linux/amd64"].layers[0]
    data = RegistryClient(upstream.url).get_blob("harness/big", layer.digest)
    assert sha256_digest(data) == layer.digest and len(data) == layer.size
    raw_tar = gzip.decompress(data)
    assert sha256_digest(raw_tar) == layer.diff_id
    members = tarfile.open(fileobj=io.BytesIO(raw_tar)).getmembers()
    assert [(m.name, m.size) for m in members] == [("data/harness.bin", size)]


def test_distribution_proxy_mode_and_docker_registry_mirror(upstream: Upstream, skopeo: Skopeo,
                                                            dockerd_factory) -> None:
    """The benchmark's baseline: Distribution as pull-through cache, used by dockerd."""
    proxy = start_proxy(upstream.url, username=PULL_USER, password=PULL_PASSWORD)
    try:
        assert skopeo.inspect_raw(f"docker://{proxy.host}/private/secret:v1") == upstream.seed.secret.top.data

        daemon = dockerd_factory(mirrors=[proxy.url])
        assert "Registry Mirrors" in daemon.docker("info").stdout
        daemon.docker("pull", "alpine")  # bare name: only the mirror can answer (no internet)
        inspected = json.loads(daemon.docker("image", "inspect", "alpine").stdout)[0]
        amd64 = upstream.seed.alpine.platforms["linux/amd64"]
        assert inspected["RepoDigests"] == [f"alpine@{upstream.seed.alpine.digest}"]
        assert inspected["Id"] == amd64.config.digest
        assert inspected["RootFS"]["Layers"] == [layer.diff_id for layer in amd64.layers]
        # dockerd 20.10 resolves the tag with HEAD, then GETs the list and manifest by digest.
        served = {(r.method, r.uri) for r in proxy.requests()}
        assert ("HEAD", "/v2/library/alpine/manifests/latest") in served
        assert ("GET", f"/v2/library/alpine/manifests/{upstream.seed.alpine.digest}") in served
    finally:
        proxy.stop()

    # Straight from a registry on 127.0.0.1 (insecure by default), in OCI media types.
    daemon.docker("pull", f"{upstream.host}/library/ocitest:v1")
    inspected = json.loads(daemon.docker("image", "inspect", f"{upstream.host}/library/ocitest:v1").stdout)[0]
    assert inspected["Id"] == upstream.seed.ocitest.platforms["linux/amd64"].config.digest


def test_containerd_pulls_through_hosts_toml_mirror(upstream: Upstream, containerd_factory) -> None:
    daemon = containerd_factory()
    daemon.pull_via_mirror(upstream.url, "docker.io/library/alpine:latest")
    listing = " ".join(daemon.ctr("images", "ls").stdout.split())
    alpine = upstream.seed.alpine
    assert f"docker.io/library/alpine:latest {images.DOCKER_LIST} {alpine.digest}" in listing
    # containerd tells the mirror which registry it mirrors.
    served = {(r.method, r.uri) for r in upstream.distribution.requests()}
    assert ("HEAD", "/v2/library/alpine/manifests/latest?ns=docker.io") in served

    assert daemon.pull_via_mirror(upstream.url, "docker.io/private/secret:v1", check=False).returncode != 0
    daemon.pull_via_mirror(upstream.url, "docker.io/private/secret:v1", user=f"{PULL_USER}:{PULL_PASSWORD}")
    daemon.pull_via_mirror(upstream.url, "docker.io/library/ocitest:v1", platform=None)
    assert upstream.seed.ocitest.digest in daemon.ctr("images", "ls").stdout


def test_upstream_outage_and_recovery(upstream_factory, skopeo: Skopeo) -> None:
    private = upstream_factory()
    ref = f"docker://{private.host}/{private.seed.alpine.ref}"
    private.distribution.halt()
    assert skopeo.run("inspect", "--tls-verify=false", "--raw", ref, check=False).returncode != 0
    private.distribution.start()
    assert skopeo.inspect_raw(ref) == private.seed.alpine.top.data


def test_start_moves_off_a_port_taken_meanwhile() -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        registry = Distribution()
        registry.port = squatter.getsockname()[1]
        try:
            registry.start()
            assert registry.port != squatter.getsockname()[1]
            assert "address already in use" in registry.process.log_text()
        finally:
            registry.stop()


def test_htpasswd_file_is_what_apache_htpasswd_verifies(tmp_path: Path) -> None:
    path = write_htpasswd(tmp_path / "htpasswd", {"pusher": "pushpass"})
    ok = subprocess.run(["htpasswd", "-vb", str(path), "pusher", "pushpass"], capture_output=True)
    bad = subprocess.run(["htpasswd", "-vb", str(path), "pusher", "nope"], capture_output=True)
    assert ok.returncode == 0 and bad.returncode != 0


def test_pullcache_factory_writes_config_over_the_default(pullcache_factory, upstream: Upstream) -> None:
    """Only the config: starting pullcache is the business of pullcache's own tests."""
    proc: PullcacheProcess = pullcache_factory({"storage": {"max_size": "1GiB"}}, start=False)
    proc.write_config()
    written = yaml.safe_load(proc.config_path.read_text())
    assert written["listen"] == f"127.0.0.1:{proc.port}"
    assert written["storage"] == {"path": str(proc.data_dir), "max_size": "1GiB"}
    assert written["upstreams"] == [{
        "name": "docker.io", "url": upstream.url, "default": True, "manifest_ttl": "5m",
        "token_hosts": ["127.0.0.1"],
    }]
