"""The Bearer tokens /auth/token issues: JWTs as Docker's token spec describes them (HS256).

The key is derived from the cluster secret when `cluster.secret_env` is set (pullcache.cluster.secret), so
every process sharing the secret accepts the others' tokens, also across restarts; else it is random per
process.

Claims: iss and aud `pullcache`, sub the user (`""` for anonymous), iat/nbf/exp, a jti, and `access`:
one `{"type": "repository", "name": ..., "actions": [...]}` per requested scope, holding the requested
actions the rules granted (possibly none: a refusal is not the token server's to report). The header
names the key by `kid` (a hash of it, never the key). Only HS256 with this key is accepted:
the algorithm is fixed here, never read from the token.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

TOKEN_SECONDS = 300  # the token spec asks for at least 60
ISSUER = AUDIENCE = "pullcache"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Scope:
    """`repository:<name>:<action,...>` as a token request names it."""

    type: str
    name: str
    actions: tuple[str, ...]

    @classmethod
    def parse_all(cls, values: list[str]) -> list[Scope]:
        """Every well-formed scope in the `scope` parameters (each may hold several, space-separated)."""
        scopes = []
        for text in (part for value in values for part in value.split()):
            kind, _, rest = text.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind and name:
                scopes.append(cls(kind, name, tuple(a for a in actions.split(",") if a)))
        return scopes


@dataclass(frozen=True)
class Claims:
    subject: str
    access: tuple[Scope, ...] = field(default=())
    expires: float = float("inf")  # the `exp` claim, epoch seconds: an answer reused for the token ends there

    def allows(self, name: str, action: str) -> bool:
        return any(s.type == "repository" and s.name == name and action in s.actions for s in self.access)


class BearerTokens:
    def __init__(self, key: bytes | None = None) -> None:
        self._key = key if key is not None else secrets.token_bytes(32)
        self._kid = hashlib.sha256(self._key).hexdigest()[:16]
        self._header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": self._kid}).encode())

    def _sign(self, signing_input: str) -> str:
        return _b64(hmac.new(self._key, signing_input.encode(), hashlib.sha256).digest())

    def issue(self, subject: str, access: list[Scope]) -> str:
        now = int(time.time())
        claims = {"iss": ISSUER, "sub": subject, "aud": AUDIENCE, "iat": now, "nbf": now,
                  "exp": now + TOKEN_SECONDS, "jti": secrets.token_urlsafe(16),
                  "access": [{"type": s.type, "name": s.name, "actions": list(s.actions)} for s in access]}
        signing_input = f"{self._header}.{_b64(json.dumps(claims, separators=(',', ':')).encode())}"
        return f"{signing_input}.{self._sign(signing_input)}"

    def verify(self, token: str) -> Claims | None:
        """The token's claims; None if it is not ours, was altered, or is expired or not yet valid."""
        if not token.isascii() or token.count(".") != 2:  # ours are base64url; compare_digest refuses other text
            return None
        header, payload, signature = token.split(".")
        if header != self._header or not hmac.compare_digest(self._sign(f"{header}.{payload}"), signature):
            return None
        try:
            claims: dict[str, Any] = json.loads(_unb64(payload))
            now = time.time()
            if not claims["nbf"] <= now < claims["exp"] or claims["aud"] != AUDIENCE:
                return None
            access = tuple(Scope(str(a["type"]), str(a["name"]), tuple(a["actions"])) for a in claims["access"])
            return Claims(str(claims["sub"]), access, float(claims["exp"]))
        except (ValueError, binascii.Error, KeyError, TypeError):
            return None
