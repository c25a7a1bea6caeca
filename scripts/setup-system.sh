#!/usr/bin/env bash
# Installs the Debian packages pullcache's tests and benchmark drive (real registry, clients, tools).
# Idempotent and quiet when everything is present; needs root (apt-get) when something is missing.
set -euo pipefail

packages=(
  python3-venv        # the virtualenv
  docker-registry     # CNCF Distribution 2.8: the real upstream, and the benchmark's comparison
  docker.io           # dockerd + docker client: registry-mirrors pulls, docker login/push
  containerd          # containerd + ctr: hosts.toml mirror pulls (?ns=)
  skopeo              # multi-platform copies by path prefix and with credentials
  podman              # pulls through deploy/clients/podman/registries.conf (vfs, private root; 4.3)
  redis-server        # cluster.redis: the tests start their own, in memory, on loopback ports
  haproxy             # the round-robin balancer, health-checked on /readyz, in front of the replica tests' three pullcaches
  tinyproxy           # the outbound HTTP(S) proxy the upstream-proxy tests send through
  wrk                 # manifest requests/s in the benchmark
  nginx               # the benchmark's static-file ceiling for manifests (bench/efficiency.py starts its own)
  apache2-utils       # htpasswd -B for the auth tests
  prometheus          # promtool checks the shipped alert rules
  debootstrap         # a Debian base image for building deploy/Dockerfile offline (cached, see tests/support/baseimage.py)
  docker-compose      # runs deploy/docker-compose.yml (1.29, the Python one)
  systemd             # systemd-analyze verify of deploy/systemd/pullcache.service (no systemd as PID 1 needed)
  chromium fonts-dejavu-core fonts-liberation  # renders the status page in a real browser, with fonts
  curl iproute2 util-linux
)
# `kubectl kustomize` renders deploy/k8s*: Debian's kubectl, unless the machine already has one
# (another kubectl package owns the same path).
command -v kubectl >/dev/null || packages+=(kubernetes-client)
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Keep the packages' own services (a docker-registry on :5000, dockerd, prometheus, redis-server, haproxy) from starting:
  # the tests start every daemon themselves, on their own ports and paths.
  policy=/usr/sbin/policy-rc.d
  had_policy=0; [ -e "$policy" ] && had_policy=1
  [ "$had_policy" = 1 ] || { printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; }
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}" || status=$?
  [ "$had_policy" = 1 ] || rm -f "$policy"
  exit "${status:-0}"
fi
