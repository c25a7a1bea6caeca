"""HTTP Basic auth against a bcrypt htpasswd file (`auth.htpasswd`, entries as `htpasswd -B` writes them).

Who must log in:
- with no htpasswd, nobody;
- pushes and deletes (every method but GET/HEAD, and every upload request) need valid credentials;
- pulls need them only with `auth.pull: authenticated`; otherwise credentials that do not check out
  are ignored on pulls (skopeo sends empty Basic credentials to registries that challenge);
- `/v2/` always asks for them, because `docker login` probes it: a 200 without a challenge
  would make any password "succeed" without being checked.
A 401 carries `WWW-Authenticate: Basic realm="<auth.realm>"`.

bcrypt costs tens to hundreds of milliseconds by design, so checks run in a thread and a
successful check is remembered for a while, keyed by a hash of the password, never the password.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
from enum import Enum
from pathlib import Path

import bcrypt
from aiohttp import web
from cachetools import TTLCache

from pullcache.api.errors import RegistryError
from pullcache.config import AuthConfig, ConfigError

BCRYPT_PREFIXES = ("$2y$", "$2b$", "$2a$")
CHECK_CACHE_SECONDS = 300.0
CHECK_CACHE_SIZE = 4096


class Access(Enum):
    PULL = "pull"
    PUSH = "push"
    LOGIN = "login"  # GET /v2/: where docker login checks credentials


def load_htpasswd(path: str) -> dict[str, bytes]:
    """user -> bcrypt hash; any other kind of entry stops start-up naming its line."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"auth.htpasswd: {path!r} cannot be read ({exc.strerror})") from exc
    users: dict[str, bytes] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        if not sep or not user or not hashed:
            raise ConfigError(f"auth.htpasswd: {path!r} line {number} is not user:hash")
        if not hashed.startswith(BCRYPT_PREFIXES):
            raise ConfigError(f"auth.htpasswd: {path!r} line {number}: user {user!r} has a non-bcrypt hash "
                              "(expected entries written by htpasswd -B)")
        users[user] = hashed.encode()
    return users


def _basic_credentials(header: str | None) -> tuple[str, str] | None:
    """(user, password) from an `Authorization: Basic ...` header; None if absent or not Basic."""
    if not header:
        return None
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if sep else None


class Authenticator:
    """Decides, per request, whether credentials are needed and whether the ones given are right."""

    def __init__(self, config: AuthConfig) -> None:
        if config.pull == "authenticated" and not config.htpasswd:
            raise ConfigError("auth.pull: 'authenticated' needs auth.htpasswd to be set (expected a bcrypt "
                              "htpasswd file)")
        self._users = load_htpasswd(config.htpasswd) if config.htpasswd else None
        self._pull_needs_login = config.pull == "authenticated"
        self._challenge = f'Basic realm="{config.realm}"'
        self._checked: TTLCache[tuple[str, bytes], bool] = TTLCache(CHECK_CACHE_SIZE, CHECK_CACHE_SECONDS)

    def _required(self, access: Access) -> bool:
        return self._users is not None and (access is not Access.PULL or self._pull_needs_login)

    async def _verify(self, user: str, password: str) -> bool:
        assert self._users is not None
        hashed = self._users.get(user)
        if hashed is None:
            return False
        key = (user, hashlib.sha256(hashed + b"\0" + password.encode()).digest())
        if key in self._checked:
            return True
        if not await asyncio.to_thread(bcrypt.checkpw, password.encode(), hashed):
            return False
        self._checked[key] = True
        return True

    async def authorize(self, request: web.Request, access: Access) -> None:
        """Return if the request may proceed (setting request["user"] when it logged in); else UNAUTHORIZED."""
        if self._users is None:
            return
        credentials = _basic_credentials(request.headers.get("Authorization"))
        if credentials is not None and await self._verify(*credentials):
            request["user"] = credentials[0]
            return
        if not self._required(access):
            return
        reason = "invalid username or password" if credentials else "authentication required"
        raise RegistryError("UNAUTHORIZED", reason, headers={"WWW-Authenticate": self._challenge},
                            detail={"access": access.value})
