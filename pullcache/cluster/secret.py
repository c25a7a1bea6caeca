"""The cluster secret (`cluster.secret_env` names the environment variable holding it) and the keys
derived from it: each use gets its own key (HMAC-SHA256 of a fixed label), so no two uses share one."""
from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping

from pullcache.config import ClusterConfig, ConfigError

MIN_SECRET_LENGTH = 32  # characters: a secret anyone could guess lets them sign tokens
TOKEN_KEY_LABEL = b"pullcache bearer token signing key v1"
PEER_KEY_LABEL = b"pullcache peer request signing key v1"


def cluster_secret(cluster: ClusterConfig, environ: Mapping[str, str] | None = None) -> bytes | None:
    """The secret's bytes; None when `cluster.secret_env` is not set. Read at start-up, never stored."""
    if cluster.secret_env is None:
        return None
    value = (os.environ if environ is None else environ).get(cluster.secret_env, "")
    if len(value) < MIN_SECRET_LENGTH:
        state = "is not set" if not value else f"holds only {len(value)} characters"
        raise ConfigError(f"cluster.secret_env: the environment variable {cluster.secret_env} {state} "
                          f"(expected a secret of at least {MIN_SECRET_LENGTH} characters, e.g. from "
                          "`openssl rand -hex 32`)")
    return value.encode()


def derive_key(secret: bytes, label: bytes) -> bytes:
    return hmac.new(secret, label, hashlib.sha256).digest()


def token_signing_key(cluster: ClusterConfig) -> bytes | None:
    """The key /auth/token signs with, the same in every process sharing the secret; None: a random one."""
    secret = cluster_secret(cluster)
    return None if secret is None else derive_key(secret, TOKEN_KEY_LABEL)


def peer_signing_key(cluster: ClusterConfig) -> bytes | None:
    """The key requests between peers (a fill streamed from the replica fetching it) are signed with;
    None when the cluster has no secret."""
    secret = cluster_secret(cluster)
    return None if secret is None else derive_key(secret, PEER_KEY_LABEL)
