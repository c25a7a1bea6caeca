"""`kubectl kustomize` of the shipped kustomizations, as a cluster would receive them.

The kubectl on PATH is used: Debian 12's kubernetes-client (1.20, kustomize v2.0) on a fresh
machine, whatever newer one a machine already has otherwise; the manifests are written for both.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path
from typing import Any

import yaml

from .procs import clean_env

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
KUSTOMIZATIONS = {"k8s": DEPLOY / "k8s", "k8s-nodes": DEPLOY / "k8s-nodes", "k8s-replicas": DEPLOY / "k8s-replicas"}
WORKLOAD_KINDS = {"k8s": "Deployment", "k8s-nodes": "DaemonSet", "k8s-replicas": "Deployment"}


@functools.cache
def _rendered(name: str) -> str:
    result = subprocess.run(["kubectl", "kustomize", str(KUSTOMIZATIONS[name])], env=clean_env(),
                            capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise AssertionError(f"kubectl kustomize deploy/{name} exited {result.returncode}:\n{result.stderr}")
    return result.stdout


def render(name: str) -> list[dict[str, Any]]:
    """The documents `kubectl kustomize deploy/NAME` prints (a fresh copy on each call)."""
    return list(yaml.safe_load_all(_rendered(name)))


def resource(name: str, kind: str, resource_name: str | None = None) -> dict[str, Any]:
    """The one document of `kind` (and `resource_name`, if given) in the rendering of deploy/NAME."""
    found = [d for d in render(name) if d["kind"] == kind
             and resource_name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"deploy/{name}: expected one {kind} {resource_name or ''}, found {len(found)}"
    return found[0]


def workload(name: str) -> dict[str, Any]:
    """pullcache's own workload: the Deployment of deploy/k8s and deploy/k8s-replicas, the DaemonSet of
    deploy/k8s-nodes."""
    return resource(name, WORKLOAD_KINDS[name], "pullcache")


def container(name: str) -> dict[str, Any]:
    (only,) = workload(name)["spec"]["template"]["spec"]["containers"]
    return only
