"""Which replica holds an upload session: its id says so.

An upload's bytes and running hash live on the replica that started it (storage.path/uploads). With
`cluster.advertise` set, that replica names itself in the session's id: `<uuid>.<address>.<mac>`, the
address base64url-encoded and the mac an HMAC of it under a key derived from the cluster secret. A replica
that gets a request of a session it does not hold forwards it to the address the id names
(api/upload_forward.py). The mac makes sure only an address a replica of this cluster minted is ever
forwarded to: a client cannot make a replica send signed requests to a host of its choosing.
"""
from __future__ import annotations

import base64
import hashlib
import hmac

from pullcache.cluster.secret import cluster_secret, derive_key
from pullcache.config import Config

OWNER_KEY_LABEL = b"pullcache upload owner key v1"
UPLOADS_PATH = "/_pullcache/uploads"  # where an owner takes the upload requests forwarded to it (signed)
MAC_BYTES = 16


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class UploadOwners:
    """Mints the id suffix naming this replica, and reads the owner out of a session id."""

    def __init__(self, advertise: str, key: bytes) -> None:
        self.address = advertise.rstrip("/")
        self._key = key
        self.suffix = f".{_b64(self.address.encode())}.{self._mac(self.address)}"

    def _mac(self, address: str) -> str:
        return _b64(hmac.new(self._key, address.encode(), hashlib.sha256).digest()[:MAC_BYTES])

    def owner(self, upload_id: str) -> str | None:
        """The address of the replica that started `upload_id`; None for an id naming none, or one whose
        mac this cluster's secret did not make."""
        parts = upload_id.split(".")
        if len(parts) != 3:
            return None
        try:
            address = _unb64(parts[1]).decode()
        except (ValueError, UnicodeDecodeError):
            return None
        return address if hmac.compare_digest(self._mac(address), parts[2]) else None

    def elsewhere(self, upload_id: str) -> str | None:
        """The owner of `upload_id` when it is another replica than this one."""
        owner = self.owner(upload_id)
        return None if owner == self.address else owner


def upload_owners(config: Config) -> UploadOwners | None:
    """Owner-naming ids when this process has an advertised address and a cluster secret; None otherwise
    (plain ids, no forwarding: one host, as ever)."""
    secret = cluster_secret(config.cluster)
    if config.cluster.advertise is None or secret is None:
        return None
    return UploadOwners(config.cluster.advertise, derive_key(secret, OWNER_KEY_LABEL))
