"""deploy/Dockerfile built and run with real Docker daemons, and a real dockerd pulling through it.

The image is built once per session (classic builder, what Debian 12's docker.io uses) on a
debootstrapped bookworm base, from a copy of the repository that also holds what an operator's
checkout does (.venv, ./data, .git). The container runs on the host network with the cache on a
named volume; a second dockerd uses it as its `registry-mirrors`, with the shipped
deploy/clients/docker/daemon.json and the test's address put in for pullcache.internal:5000.
"""
from __future__ import annotations

import json
import re
import secrets
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.support import kustomize, seaweed
from tests.support.compose import COMPOSE_FILE, compose, stack_on_loopback
from tests.support.deploy_image import (
    JUNK_SIZE,
    Build,
    BuilderDaemon,
    build_image,
    host_pip_index_args,
    operator_checkout,
)
from tests.support.dockerd import Dockerd
from tests.support.images import DOCKER_LIST
from tests.support.procs import free_port, http_status
from tests.support.pullcache_proc import docker_hub_upstream
from tests.support.seed import Upstream

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_DAEMON_JSON = ROOT / "deploy" / "clients" / "docker" / "daemon.json"
SHIPPED_MIRROR_HOST = "pullcache.internal:5000"
TAG = "pullcache:test"
UID = "10001"
# What the image adds to its base: the virtualenv with pullcache and its dependencies (42 MB on
# 2026-12-01: obstore's Rust library 15 MB, aiohttp 8 MB, redis-py 6 MB, PyYAML 3 MB, pullcache itself with
# its byte code about 2.5 MB). The bound catches what does not belong there (tests, a cache, pip), not growth.
ADDED_BYTES_BUDGET = 48 * 1024 * 1024
HEALTHY_TIMEOUT = 60.0


@dataclass
class Built:
    daemon: BuilderDaemon
    base: str
    context: Path
    build: Build


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    """deploy/Dockerfile built once with the classic builder on a private dockerd."""
    daemon = BuilderDaemon.started()
    try:
        base = daemon.import_base()
        context = operator_checkout(tmp_path_factory.mktemp("image") / "checkout")
        build_args = {"PYTHON_IMAGE": base, **host_pip_index_args()}
        build = build_image(daemon, context, TAG, buildkit=False, build_args=build_args)
        yield Built(daemon, base, context, build)
    finally:
        daemon.stop()


class Container:
    """`docker run` of the image on a loopback port of the host network, cache on a named volume."""

    def __init__(self, built: Built, upstream: Upstream, workdir: Path) -> None:
        self.daemon = built.daemon
        self.port = free_port()
        self.name = f"pullcache-{self.port}"
        self.volume = f"pullcache-data-{self.port}"
        config = {
            "storage": {"path": "/var/lib/pullcache"},
            "upstreams": [docker_hub_upstream(upstream.url)],
            "log": {"level": "debug", "format": "json"},
        }
        self.config = workdir / "proxy.yml"
        self.config.write_text(yaml.safe_dump(config))
        self.config.chmod(0o644)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def run(self) -> Container:
        self.daemon.docker(
            "run", "-d", "--name", self.name, "--network", "host",
            "-e", f"PULLCACHE_LISTEN=127.0.0.1:{self.port}",
            "-e", "PULLCACHE_LOCAL__ANONYMOUS_PUSH=true",
            "-v", f"{self.config}:/etc/pullcache/proxy.yml:ro",
            "-v", f"{self.volume}:/var/lib/pullcache",
            # The image's own check, polled every second instead of every 30s.
            "--health-interval", "1s", "--health-start-period", "0s",
            TAG,
        )
        return self

    def inspect(self) -> dict:
        return json.loads(self.daemon.docker("inspect", self.name).stdout)[0]

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + HEALTHY_TIMEOUT
        while (state := self.inspect()["State"])["Health"]["Status"] != "healthy":
            assert state["Running"], f"container exited: {state}\n{self.logs()}"
            assert time.monotonic() < deadline, f"not healthy: {state['Health']}\n{self.logs()}"
            time.sleep(0.2)

    def logs(self) -> str:
        result = self.daemon.docker("logs", self.name, check=False)
        return result.stdout + result.stderr

    def exec(self, *argv: str) -> str:
        return self.daemon.docker("exec", self.name, *argv).stdout

    def remove(self) -> None:
        self.daemon.docker("rm", "-f", self.name, check=False)
        self.daemon.docker("volume", "rm", "-f", self.volume, check=False)


@pytest.fixture
def container(built: Built, upstream: Upstream, tmp_path: Path) -> Iterator[Container]:
    running = Container(built, upstream, tmp_path).run()
    try:
        running.wait_healthy()
        yield running
    finally:
        running.remove()


def shipped_daemon_json(mirror_host: str) -> dict:
    """deploy/clients/docker/daemon.json with `mirror_host` in place of pullcache.internal:5000."""
    text = SHIPPED_DAEMON_JSON.read_text()
    assert SHIPPED_MIRROR_HOST in text
    return json.loads(text.replace(SHIPPED_MIRROR_HOST, mirror_host))


def test_classic_builder_sends_only_what_the_image_needs(built: Built) -> None:
    # The checkout holds 3 x 16 MiB of .venv, ./data and .git; the root .dockerignore keeps them out.
    assert built.build.context_bytes < JUNK_SIZE // 4, built.build.output[:500]


def test_buildkit_builds_the_same_dockerfile(built: Built) -> None:
    build_image(built.daemon, built.context, "pullcache:buildkit", buildkit=True,
                build_args={"PYTHON_IMAGE": built.base, **host_pip_index_args()})
    version = built.daemon.docker("run", "--rm", "--network", "none", "pullcache:buildkit", "--help").stdout
    assert "serve" in version


def test_image_runs_as_a_non_root_uid_with_the_cache_on_a_volume(built: Built) -> None:
    config = json.loads(built.daemon.docker("image", "inspect", TAG).stdout)[0]["Config"]
    assert config["User"] == f"{UID}:{UID}"
    assert list(config["Volumes"]) == ["/var/lib/pullcache"]
    uid = built.daemon.docker("run", "--rm", "--network", "none", "--entrypoint", "id", TAG, "-u").stdout
    assert uid.strip() == UID


def test_image_adds_only_the_virtualenv_to_its_base(built: Built) -> None:
    def size(image: str) -> int:
        return json.loads(built.daemon.docker("image", "inspect", image).stdout)[0]["Size"]

    added = size(TAG) - size(built.base)
    assert 0 < added < ADDED_BYTES_BUDGET, f"{added} bytes added to the base"


def test_the_site_ca_reaches_the_build_stage_only(built: Built) -> None:
    listing = built.daemon.docker("run", "--rm", "--network", "none", "--entrypoint", "ls", TAG, "-a", "/tmp").stdout
    assert listing.split() == [".", ".."]


def test_container_reports_healthy_from_its_own_healthcheck(container: Container) -> None:
    assert container.inspect()["State"]["Health"]["Status"] == "healthy"
    assert http_status(f"{container.url}/v2/") == 200


def test_dockerd_pulls_pushes_and_pulls_again_after_a_restart(
        container: Container, dockerd_factory: Callable[..., Dockerd], upstream: Upstream) -> None:
    config = shipped_daemon_json(container.host)
    client = dockerd_factory(mirrors=config["registry-mirrors"], insecure_registries=config["insecure-registries"])

    client.docker("pull", "alpine")  # bare name: only the mirror can answer (no internet)
    pulled = json.loads(client.docker("image", "inspect", "alpine").stdout)[0]
    assert pulled["RepoDigests"] == [f"alpine@{upstream.seed.alpine.digest}"]

    pushed = f"{container.host}/team/deploy-image:v1"
    client.docker("tag", "alpine", pushed)
    client.docker("push", pushed)

    container.daemon.docker("restart", container.name)
    container.wait_healthy()
    client.docker("rmi", pushed, "alpine")
    client.docker("pull", pushed)
    again = json.loads(client.docker("image", "inspect", pushed).stdout)[0]
    assert again["Id"] == pulled["Id"]
    # The store is on the volume, owned by the image's user.
    owner = container.exec("stat", "-c", "%u", "/var/lib/pullcache").strip()
    assert owner == UID
    mounts = {m["Destination"]: m for m in container.inspect()["Mounts"]}
    assert mounts["/var/lib/pullcache"]["Name"] == container.volume


# ------------------------------------------------------------------------------ docker-compose

PROMETHEUS_TAG = "pullcache-test-prometheus:debian"
SCRAPE_TIMEOUT = 60.0


@pytest.fixture(scope="session")
def prometheus_image(built: Built) -> str:
    """deploy/prometheus/Dockerfile (Debian's prometheus package) on the same base."""
    build_image(built.daemon, ROOT / "deploy" / "prometheus", PROMETHEUS_TAG, buildkit=False,
                build_args={"DEBIAN_IMAGE": built.base}, dockerfile="Dockerfile")
    return PROMETHEUS_TAG


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def _scraped_cache_requests(prometheus: str) -> list[dict]:
    query = urllib.parse.urlencode({"query": "pullcache_cache_requests_total"})
    try:
        return _get_json(f"{prometheus}/api/v1/query?{query}")["data"]["result"]
    except OSError:
        return []  # not listening yet


def test_compose_runs_pullcache_and_prometheus_scrapes_it(
        built: Built, prometheus_image: str, upstream: Upstream, tmp_path: Path) -> None:
    shipped = yaml.safe_load(COMPOSE_FILE.read_text())
    built.daemon.docker("tag", TAG, shipped["services"]["pullcache"]["image"])
    pullcache_port, prometheus_port = free_port(), free_port()
    config = {"storage": {"path": "/var/lib/pullcache"}, "upstreams": [docker_hub_upstream(upstream.url)]}
    stack = stack_on_loopback(tmp_path, proxy_yml=yaml.safe_dump(config),
                              pullcache_port=pullcache_port, prometheus_port=prometheus_port)
    project = f"pullcache{pullcache_port}"
    pullcache, prometheus = f"http://127.0.0.1:{pullcache_port}", f"http://127.0.0.1:{prometheus_port}"
    try:
        compose(built.daemon, stack, project, "up", "-d", "--no-build", env={"PROMETHEUS_IMAGE": prometheus_image})
        deadline = time.monotonic() + HEALTHY_TIMEOUT
        while http_status(f"{pullcache}/v2/") != 200:
            assert time.monotonic() < deadline, compose(built.daemon, stack, project, "logs", check=False).stdout
            time.sleep(0.2)
        request = urllib.request.Request(f"{pullcache}/v2/library/alpine/manifests/latest",
                                         headers={"Accept": DOCKER_LIST})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.headers["Docker-Content-Digest"] == upstream.seed.alpine.digest

        deadline = time.monotonic() + SCRAPE_TIMEOUT
        while not (samples := [s for s in _scraped_cache_requests(prometheus)
                               if s["metric"].get("kind") == "manifest" and float(s["value"][1]) >= 1]):
            assert time.monotonic() < deadline, compose(built.daemon, stack, project, "logs", check=False).stdout
            time.sleep(0.5)
        assert {s["metric"]["job"] for s in samples} == {"pullcache"}  # what alerts.yml selects
        rules = _get_json(f"{prometheus}/api/v1/rules")["data"]["groups"]
        loaded = {rule["name"] for group in rules for rule in group["rules"]}
        shipped_alerts = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
        assert loaded == {r["alert"] for group in shipped_alerts["groups"] for r in group["rules"]}
    finally:
        compose(built.daemon, stack, project, "down", "-v", check=False)


# ------------------------------------------------------------- Kubernetes pod specs, in the image

def pod_env(spec: dict, secret_values: dict[tuple[str, str], str]) -> dict[str, str]:
    """The container's environment as a kubelet makes it on this host: the pod's IP is 127.0.0.1, a
    secretKeyRef reads `secret_values[(secret, key)]`, and $(VAR) names an earlier variable."""
    env: dict[str, str] = {}
    for variable in spec["env"]:
        source = variable.get("valueFrom")
        if source is None:
            value = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), variable["value"])
        elif source.get("fieldRef", {}).get("fieldPath") == "status.podIP":
            value = "127.0.0.1"
        else:
            ref = source["secretKeyRef"]
            value = secret_values[(ref["name"], ref["key"])]
        env[variable["name"]] = value
    return env


def shared_parts_env(config: dict, request: pytest.FixtureRequest) -> tuple[dict[str, str], dict[tuple[str, str], str]]:
    """For an overlay on a bucket and Redis: the variables that point its proxy.yml at the session's SeaweedFS
    (a fresh prefix) and Redis, and the values of the Secrets its pod reads."""
    if config["storage"].get("backend") != "s3":
        return {}, {}
    server = request.getfixturevalue("seaweed_server")
    redis = request.getfixturevalue("redis_server")
    env = {"PULLCACHE_STORAGE__S3__ENDPOINT": server.url, "PULLCACHE_STORAGE__S3__REGION": seaweed.REGION,
           "PULLCACHE_STORAGE__S3__BUCKET": seaweed.BUCKET,
           "PULLCACHE_STORAGE__S3__PREFIX": f"pod{secrets.token_hex(6)}", "PULLCACHE_CLUSTER__REDIS": redis.redis_url}
    values = {("pullcache-cluster", "secret"): secrets.token_hex(32),
              ("pullcache-s3", "access-key"): seaweed.ACCESS_KEY, ("pullcache-s3", "secret-key"): seaweed.SECRET_KEY}
    return env, values


@pytest.mark.parametrize("name", sorted(kustomize.KUSTOMIZATIONS))
def test_k8s_pod_spec_runs_in_the_image_and_its_probes_answer(name: str, built: Built, tmp_path: Path,
                                                              request: pytest.FixtureRequest) -> None:
    """pullcache's container of deploy/NAME as a kubelet would run it: the image's entrypoint with
    the manifest's args, env, user and read-only root, the ConfigMap's proxy.yml mounted where the
    manifest mounts it, emptyDirs for the other volumes. Only the listen port differs (host network),
    and an overlay on a bucket and Redis is pointed at the session's SeaweedFS and Redis."""
    spec = kustomize.container(name)
    pod = kustomize.workload(name)["spec"]["template"]["spec"]
    port = free_port()
    config_dir = tmp_path / "config"
    config_dir.mkdir(mode=0o755)
    configmap = kustomize.resource(name, "ConfigMap", "pullcache-config")
    (config_dir / "proxy.yml").write_text(configmap["data"]["proxy.yml"])
    (config_dir / "proxy.yml").chmod(0o644)
    security = {**pod["securityContext"], **spec["securityContext"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    args = ["run", "-d", "--network", "host", "--user", f"{security['runAsUser']}:{security['runAsGroup']}",
            "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "-e", f"PULLCACHE_LISTEN=127.0.0.1:{port}"]
    if security.get("readOnlyRootFilesystem"):
        args.append("--read-only")
    shared, secret_values = shared_parts_env(yaml.safe_load(configmap["data"]["proxy.yml"]), request)
    for variable, value in {**pod_env(spec, secret_values), **shared}.items():
        args += ["-e", f"{variable}={value}"]
    for mount in spec["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "configMap" in volume:
            args += ["-v", f"{config_dir}:{mount['mountPath']}:ro"]
        else:  # a PVC, hostPath or emptyDir: a fresh volume the pod's group can write
            args += ["--tmpfs", f"{mount['mountPath']}:uid={security['runAsUser']},gid={security['runAsGroup']}"]
    image_name = spec["image"]
    built.daemon.docker("tag", TAG, image_name)
    container_id = built.daemon.docker(*args, image_name, *spec["args"]).stdout.strip()
    try:
        deadline = time.monotonic() + HEALTHY_TIMEOUT
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            http_get = spec[probe]["httpGet"]
            assert http_get["port"] in (spec["ports"][0]["name"], spec["ports"][0]["containerPort"])
            while http_status(f"http://127.0.0.1:{port}{http_get['path']}") != 200:
                logs = built.daemon.docker("logs", container_id, check=False)
                assert time.monotonic() < deadline, f"{probe} {http_get['path']}: {logs.stdout}{logs.stderr}"
                time.sleep(0.2)
        uid = built.daemon.docker("exec", container_id, "id", "-u").stdout.strip()
        assert uid == str(security["runAsUser"]) == UID
    finally:
        built.daemon.docker("rm", "-f", container_id, check=False)


def test_k8s_node_init_container_hands_the_host_cache_dir_to_the_pullcache_user(built: Built, tmp_path: Path) -> None:
    """deploy/k8s-nodes' init container, run as rendered on a root-owned dir like a new hostPath."""
    pod = kustomize.workload("k8s-nodes")["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    security = init["securityContext"]
    (mount,) = init["volumeMounts"]
    host_dir = tmp_path / "hostpath"
    host_dir.mkdir(mode=0o755)
    args = ["run", "--rm", "--network", "none", "--user", str(security["runAsUser"]),
            "--cap-drop", "ALL", *[w for cap in security["capabilities"]["add"] for w in ("--cap-add", cap)],
            "--security-opt", "no-new-privileges", "-v", f"{host_dir}:{mount['mountPath']}",
            "--entrypoint", init["command"][0]]
    built.daemon.docker("tag", TAG, init["image"])
    built.daemon.docker(*args, init["image"], *init["command"][1:])
    assert (host_dir.stat().st_uid, host_dir.stat().st_gid) == (int(UID), int(UID))
    assert host_dir.stat().st_mode & 0o777 == 0o750
