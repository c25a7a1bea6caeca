"""deploy/k8s and deploy/k8s-nodes as a cluster receives them: rendered by `kubectl kustomize`,
every object validated against the Kubernetes OpenAPI schemas (PyPI kubernetes-validate, strict:
unknown fields fail), and the node overlay's hosts.toml step run for real against containerd.

No cluster runs here. What is checked: the renderings, the schemas of every built-in kind, how
the objects refer to each other, and (tests/test_deploy_image.py) the pod specs run in the built
image. The Prometheus Operator's ServiceMonitor and PrometheusRule have no bundled schema: the
rule is compared with alerts.yml, which promtool checks, and the monitor with the Service.
"""
from __future__ import annotations

import os
import re
import subprocess
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.support.containerd import Containerd
from tests.support.images import DOCKER_LIST
from tests.support.kustomize import DEPLOY, KUSTOMIZATIONS, container, render, resource, workload
from tests.support.procs import clean_env
from tests.support.pullcache_proc import PullcacheProcess
from tests.support.seed import Upstream

OPERATOR_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}
# The oldest Kubernetes the schemas bundle and the newest.
VERSIONS = (min(kubernetes_validate.utils.all_versions(), key=lambda v: tuple(map(int, v.split(".")))),
            kubernetes_validate.utils.latest_version())
STORAGE_PATH = "/var/lib/pullcache"
CONFIG_PATH = "/etc/pullcache/proxy.yml"
UPSTREAMS = {"docker.io", "ghcr.io", "quay.io"}
# Strategic-merge patches of an overlay: partial objects, checked in the rendering they change.
PATCHES = {DEPLOY / "k8s-nodes" / "namespace-privileged.yaml"}


def _proxy_yml(name: str) -> dict:
    return yaml.safe_load(resource(name, "ConfigMap", "pullcache-config")["data"]["proxy.yml"])


def _pod_spec(name: str) -> dict:
    return workload(name)["spec"]["template"]["spec"]


def _mounted(name: str, path: str) -> dict:
    """The pod volume mounted at `path` in pullcache's container."""
    mounts = {m["mountPath"]: m["name"] for m in container(name)["volumeMounts"]}
    return {v["name"]: v for v in _pod_spec(name)["volumes"]}[mounts[path]]


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
@pytest.mark.parametrize("version", VERSIONS)
def test_every_rendered_object_is_valid_against_the_kubernetes_schemas(name: str, version: str) -> None:
    validated = []
    for document in render(name):
        if (document["apiVersion"], document["kind"]) in OPERATOR_KINDS:
            continue
        kubernetes_validate.validate(document, version, strict=True)
        validated.append(document["kind"])
    assert {"Namespace", "ConfigMap", "Service"} <= set(validated)


def test_the_schema_check_rejects_an_unknown_field() -> None:
    daemonset = workload("k8s-nodes")
    daemonset["spec"]["template"]["spec"]["hostNetwrk"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(daemonset, VERSIONS[-1], strict=True)


def test_every_manifest_file_is_in_a_rendering() -> None:
    rendered = {(d["kind"], d["metadata"]["name"]) for name in KUSTOMIZATIONS for d in render(name)}
    files = [p for root in KUSTOMIZATIONS.values() for p in root.rglob("*.yaml")
             if p.name != "kustomization.yaml" and p not in PATCHES]
    assert files
    for path in files:
        for document in yaml.safe_load_all(path.read_text()):
            assert (document["kind"], document["metadata"]["name"]) in rendered, path


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_everything_lands_in_the_pullcache_namespace(name: str) -> None:
    for document in render(name):
        if document["kind"] != "Namespace":
            assert document["metadata"]["namespace"] == "pullcache", document["kind"]


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_config_is_the_configmap_mounted_where_serve_reads_it(name: str) -> None:
    config_dir = CONFIG_PATH.rsplit("/", 1)[0]
    assert _mounted(name, config_dir)["configMap"]["name"] == "pullcache-config"
    assert container(name)["args"][-2:] == ["-c", CONFIG_PATH]
    config = _proxy_yml(name)
    assert {u["name"] for u in config["upstreams"]} == UPSTREAMS


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_service_and_servicemonitor_reach_the_pods_metrics(name: str) -> None:
    service = resource(name, "Service", "pullcache")
    (port,) = service["spec"]["ports"]
    pod_labels = workload(name)["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert port["targetPort"] == container(name)["ports"][0]["name"]
    monitor = resource(name, "ServiceMonitor")["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert service["metadata"]["labels"][monitor["jobLabel"]] == "pullcache"  # job="pullcache", as alerts.yml
    (endpoint,) = monitor["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == (port["name"], "/metrics")


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_pullcache_container_has_resource_requests_and_a_memory_limit(name: str) -> None:
    resources = container(name)["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"])
    assert "memory" in resources["limits"]


def test_prometheusrule_carries_the_rules_of_alerts_yml() -> None:
    alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    for name in KUSTOMIZATIONS:
        assert resource(name, "PrometheusRule")["spec"] == alerts


def test_deployment_recreates_the_single_pod_owning_its_volume() -> None:
    spec = workload("k8s")["spec"]
    assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"
    claim = _mounted("k8s", STORAGE_PATH)["persistentVolumeClaim"]["claimName"]
    assert resource("k8s", "PersistentVolumeClaim", claim)["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert _proxy_yml("k8s")["storage"]["path"] == STORAGE_PATH


def test_node_daemonset_serves_on_each_nodes_network_where_hosts_toml_points() -> None:
    spec = _pod_spec("k8s-nodes")
    assert spec["hostNetwork"] is True
    (port,) = container("k8s-nodes")["ports"]
    listen_port = int(_proxy_yml("k8s-nodes")["listen"].rsplit(":", 1)[1])
    assert port["containerPort"] == port["hostPort"] == listen_port
    assert _mounted("k8s-nodes", STORAGE_PATH)["hostPath"]["path"] == STORAGE_PATH
    env = _node_hosts_env()
    assert env["MIRROR"] == f"http://127.0.0.1:{listen_port}"
    assert set(env["REGISTRIES"].split()) == {u["name"] for u in _proxy_yml("k8s-nodes")["upstreams"]}


def test_node_overlay_namespace_allows_host_network_and_paths() -> None:
    labels = resource("k8s-nodes", "Namespace")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "privileged"


def _node_hosts_init() -> dict:
    (init,) = resource("k8s-nodes", "DaemonSet", "pullcache-node-hosts")["spec"]["template"]["spec"]["initContainers"]
    return init


def _node_hosts_env() -> dict[str, str]:
    return {e["name"]: e["value"] for e in _node_hosts_init()["env"]}


def run_node_hosts_step(certs_d: Path, mirror: str) -> None:
    """The node-hosts init container's command as rendered, with the node's certs.d at `certs_d`
    (mounted at /certs.d in the pod) and `mirror` for the node's pullcache."""
    init = _node_hosts_init()
    (mount,) = init["volumeMounts"]
    script = init["args"][0].replace(mount["mountPath"], str(certs_d))
    env = clean_env(**{**_node_hosts_env(), "MIRROR": mirror})
    subprocess.run([*init["command"], script], env=env, check=True, capture_output=True, text=True, timeout=30)


def _env(name: str) -> dict[str, dict]:
    return {variable["name"]: variable for variable in container(name)["env"]}


def test_replicas_keep_the_store_in_a_bucket_and_only_spool_and_cache_on_the_pod() -> None:
    config = _proxy_yml("k8s-replicas")
    assert config["storage"]["backend"] == "s3" and config["storage"]["path"] == STORAGE_PATH
    assert "emptyDir" in _mounted("k8s-replicas", STORAGE_PATH)
    spec = workload("k8s-replicas")["spec"]
    assert spec["replicas"] > 1 and spec["strategy"]["type"] == "RollingUpdate"
    budget = resource("k8s-replicas", "PodDisruptionBudget", "pullcache")["spec"]
    assert budget["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    assert budget["maxUnavailable"] < spec["replicas"]


def test_replicas_share_state_through_the_overlays_redis_without_persistence() -> None:
    redis_url = urllib.parse.urlsplit(_proxy_yml("k8s-replicas")["cluster"]["redis"])
    service = resource("k8s-replicas", "Service", "pullcache-redis")
    (port,) = service["spec"]["ports"]
    assert (redis_url.scheme, redis_url.hostname, redis_url.port) == ("redis", "pullcache-redis", port["port"])
    pod = resource("k8s-replicas", "Deployment", "pullcache-redis")["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (redis,) = pod["spec"]["containers"]
    assert port["targetPort"] == redis["ports"][0]["name"]
    args = redis["args"]
    assert args[args.index("--save") + 1] == "" and args[args.index("--appendonly") + 1] == "no"
    # The pullcache Service must not select Redis.
    pullcache_service = resource("k8s-replicas", "Service", "pullcache")
    assert not pullcache_service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()


def test_each_replica_advertises_its_pod_address_and_reads_its_secrets_from_secrets() -> None:
    env, names = _env("k8s-replicas"), [variable["name"] for variable in container("k8s-replicas")["env"]]
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    port = container("k8s-replicas")["ports"][0]["containerPort"]
    assert env["PULLCACHE_CLUSTER__ADVERTISE"]["value"] == f"http://$(POD_IP):{port}"
    assert names.index("POD_IP") < names.index("PULLCACHE_CLUSTER__ADVERTISE")  # $(VAR) sees earlier ones only
    config = _proxy_yml("k8s-replicas")
    named = (config["cluster"]["secret_env"], config["storage"]["s3"]["secret_key_env"])
    assert not any(variable.startswith("PULLCACHE_") for variable in named)  # those are read as config keys
    for variable in (*named, "PULLCACHE_STORAGE__S3__ACCESS_KEY"):
        assert set(env[variable]["valueFrom"]["secretKeyRef"]) == {"name", "key"}, variable


def test_node_hosts_step_makes_containerd_pull_through_the_nodes_pullcache(
        pullcache_factory: Callable[..., PullcacheProcess], containerd_factory: Callable[..., Containerd],
        upstream: Upstream, tmp_path: Path) -> None:
    server = pullcache_factory()
    certs_d = tmp_path / "certs.d"
    run_node_hosts_step(certs_d, server.url)
    assert {p.parent.name for p in certs_d.glob("*/hosts.toml")} == set(_node_hosts_env()["REGISTRIES"].split())
    assert not [p for p in certs_d.rglob("*") if p.name.endswith(".tmp")]

    node = containerd_factory()
    node.ctr("images", "pull", "--hosts-dir", str(certs_d), "--snapshotter", node.snapshotter,
             "--platform", "linux/amd64", "docker.io/library/alpine:latest")
    listing = " ".join(node.ctr("images", "ls").stdout.split())
    assert f"docker.io/library/alpine:latest {DOCKER_LIST} {upstream.seed.alpine.digest}" in listing
    server.wait_for_log(re.escape("/v2/library/alpine/manifests/latest?ns=docker.io"))


def test_node_hosts_step_rewrites_the_files_when_run_again(
        pullcache_factory: Callable[..., PullcacheProcess], tmp_path: Path) -> None:
    """A pod restart (new image, new MIRROR) replaces each file whole."""
    certs_d = tmp_path / "certs.d"
    run_node_hosts_step(certs_d, "http://127.0.0.1:1")
    run_node_hosts_step(certs_d, "http://127.0.0.1:2")
    hosts = (certs_d / "docker.io" / "hosts.toml").read_text()
    assert "127.0.0.1:2" in hosts and "127.0.0.1:1" not in hosts
    assert os.listdir(certs_d / "docker.io") == ["hosts.toml"]
