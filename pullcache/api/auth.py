"""Who may do what: HTTP Basic against a bcrypt htpasswd file (`auth.htpasswd`, as `htpasswd -B` writes it).

Rules:
- pushes and deletes (every method but GET/HEAD, and every upload request) need a known user, unless the
  operator opted into `local.anonymous_push`. With no users configured they are refused with a 401 that
  says how to allow them: open by default, anyone on the network could replace what mirror clients pull;
- pulls need a user only with `auth.pull: authenticated`; otherwise credentials on pulls are not even
  checked (skopeo answers a Basic challenge with empty credentials when it has none);
- once htpasswd is set, `/v2/` always asks, so that `docker login` really checks the password;
- the status page and /metrics count as pulls (they show what is pulled); the probes never ask.

A 401 carries `WWW-Authenticate: Basic realm="<auth.realm>"` and a second challenge,
`Bearer realm="<this server>/auth/token"`, for clients that prefer tokens. Docker gets the Bearer
challenge alone: its client runs every challenge it knows, and Basic without credentials fails the
request ("no basic auth credentials"), so a Basic challenge would stop every anonymous Docker pull,
`registry-mirrors` clients included, once pushes are protected. With Bearer, Docker fetches a token
from /auth/token, anonymously or with the user's Basic credentials (checked against the same htpasswd
file, so a wrong password still fails `docker login`). Tokens are HMAC-signed with a per-process key
and carry only the user name and an expiry.

bcrypt is slow by design, so checks run one at a time on a thread of their own (the default executor
serves the store's disk I/O, which must not wait behind logins), a successful check is remembered for
a while and a failed one briefly (a client retrying a wrong password costs one check), keyed by a hash
of the password, never the password itself.

Bad input is a 401, never a 500, and never tells users apart:
- bcrypt reads only the first 72 bytes of a password; `htpasswd -B` truncates longer ones when it
  writes them, and so does the check here (bcrypt 5 would refuse them);
- credentials that are not Basic base64 of UTF-8 `user:password`, or a token that is not ours, count
  as wrong credentials; at /auth/token they are refused, not answered with an anonymous token;
- a user not in the file is checked against a dummy hash of the cost most entries use and remembered
  as refused like a wrong password, so neither the first nor a repeated attempt is faster for an
  unknown user than for a known one.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path

import bcrypt
from aiohttp import web
from cachetools import TTLCache

from pullcache.api.appkeys import ROUTE, USER
from pullcache.api.errors import RegistryError
from pullcache.config import AuthConfig, ConfigError

BCRYPT_ENTRY = re.compile(r"\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}")  # $2y$<cost>$<22 salt + 31 hash>
BCRYPT_MAX_PASSWORD = 72  # bytes bcrypt reads; htpasswd -B truncates longer passwords to these
DEFAULT_COST = 12
CHECK_CACHE_SECONDS = 300.0
# A refusal never changes (the file is read once), but anyone can send endless wrong passwords: they are
# remembered briefly, apart from the accepted ones, which they therefore cannot push out.
REFUSED_CACHE_SECONDS = 30.0
CHECK_CACHE_SIZE = 4096
TOKEN_SECONDS = 300  # the token spec asks for at least 60
TOKEN_PATH = "/auth/token"
SERVICE = "pullcache"
DOCKER_ENGINE_AGENT = "docker/"  # dockerd's User-Agent: "docker/20.10.24 go/go1.19 ... UpstreamClient(...)"
ANONYMOUS = ""
PUSH_NEEDS_USERS = ("pushes and deletes need an authenticated user and none is configured: set auth.htpasswd "
                    "to a bcrypt htpasswd file (htpasswd -B), or local.anonymous_push: true to accept "
                    "anonymous pushes")
_BCRYPT_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pullcache-bcrypt")


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
        if not BCRYPT_ENTRY.fullmatch(hashed):
            raise ConfigError(f"auth.htpasswd: {path!r} line {number}: user {user!r} has no valid bcrypt hash "
                              "(expected entries written by htpasswd -B)")
        users[user] = hashed.encode()
    return users


def dummy_hash(users: dict[str, bytes]) -> bytes:
    """A bcrypt hash no password matches, of the cost most entries use (the highest of equally common
    ones): checking an unknown user against it takes as long as checking a known one."""
    costs = Counter(int(hashed[4:6]) for hashed in users.values())  # $2y$<cost>$..., as BCRYPT_ENTRY checked
    cost = max(costs, key=lambda c: (costs[c], c)) if costs else DEFAULT_COST
    return bcrypt.gensalt(cost) + b"." * 31  # a random salt, then an all-zero hash no password realistically gives


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Tokens:
    """Bearer tokens this process issues: `<claims>.<hmac>`, valid for TOKEN_SECONDS."""

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())

    def issue(self, user: str) -> str:
        payload = _b64(json.dumps({"sub": user, "exp": int(time.time()) + TOKEN_SECONDS}).encode())
        return f"{payload}.{self._sign(payload)}"

    def subject(self, token: str) -> str | None:
        """The user a token was issued to (ANONYMOUS for none); None if forged, damaged or expired."""
        if not token.isascii():  # ours are base64url; hmac.compare_digest refuses other text
            return None
        payload, _, signature = token.partition(".")
        if not hmac.compare_digest(self._sign(payload), signature):
            return None
        try:
            claims = json.loads(_unb64(payload))
        except (ValueError, binascii.Error):
            return None
        return claims["sub"] if claims.get("exp", 0) > time.time() else None


def _credentials(header: str | None) -> tuple[str, str] | str | None:
    """(user, password) for Basic, the token for Bearer, None for anything else (malformed ones included)."""
    scheme, _, value = (header or "").strip().partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except ValueError:  # not ASCII, not base64 (binascii.Error) or not UTF-8 (UnicodeDecodeError)
        return None
    return (user, password) if sep else None


class Authenticator:
    """Decides, per request, whether credentials are needed and whether the ones given are right."""

    def __init__(self, config: AuthConfig, *, anonymous_push: bool = False) -> None:
        if config.pull == "authenticated" and not config.htpasswd:
            raise ConfigError("auth.pull: 'authenticated' needs auth.htpasswd to be set (expected a bcrypt "
                              "htpasswd file)")
        self._users = load_htpasswd(config.htpasswd) if config.htpasswd else None
        self._dummy_hash = dummy_hash(self._users or {})
        self._pull_needs_login = config.pull == "authenticated"
        self._anonymous_push = anonymous_push
        self._realm = config.realm
        self._tokens = Tokens()
        self._accepted: TTLCache[tuple[str, bytes], bool] = TTLCache(CHECK_CACHE_SIZE, CHECK_CACHE_SECONDS)
        self._refused: TTLCache[tuple[str, bytes], bool] = TTLCache(CHECK_CACHE_SIZE, REFUSED_CACHE_SECONDS)

    def _required(self, access: Access) -> bool:
        if access is Access.PUSH:
            return not self._anonymous_push
        if access is Access.PULL:
            return self._pull_needs_login
        return self._users is not None

    async def _password_ok(self, user: str, password: str) -> bool:
        """Whether the password is the user's; the same work, cache included, for a user not in the file."""
        if self._users is None:
            return False  # no users configured: no password can be right, and there is no one to enumerate
        hashed = self._users.get(user, self._dummy_hash)
        secret = password.encode()[:BCRYPT_MAX_PASSWORD]
        key = (user, hashlib.sha256(hashed + b"\0" + secret).digest())
        if key in self._accepted:
            return True
        if key in self._refused:
            return False
        loop = asyncio.get_running_loop()
        if await loop.run_in_executor(_BCRYPT_THREAD, bcrypt.checkpw, secret, hashed) and user in self._users:
            self._accepted[key] = True
            return True
        self._refused[key] = True
        return False

    async def _user(self, request: web.Request) -> str | None:
        """The user the request proves to be (by password or by token); ANONYMOUS or None otherwise."""
        credentials = _credentials(request.headers.get("Authorization"))
        if isinstance(credentials, str):
            return self._tokens.subject(credentials)
        if credentials is not None and await self._password_ok(*credentials):
            return credentials[0]
        return None

    def _challenges(self, request: web.Request) -> list[tuple[str, str]]:
        scheme = request.headers.get("X-Forwarded-Proto", request.scheme)
        bearer = ("WWW-Authenticate", f'Bearer realm="{scheme}://{request.host}{TOKEN_PATH}",service="{SERVICE}"')
        if request.headers.get("User-Agent", "").startswith(DOCKER_ENGINE_AGENT):
            return [bearer]
        return [("WWW-Authenticate", f'Basic realm="{self._realm}"'), bearer]

    def _unauthorized(self, request: web.Request, reason: str, access: Access) -> RegistryError:
        return RegistryError("UNAUTHORIZED", reason, detail={"access": access.value},
                             headers=self._challenges(request))

    async def authorize(self, request: web.Request, access: Access) -> None:
        """Return if the request may proceed (setting request[USER] for a known user); else 401."""
        if not self._required(access):
            return  # a pull anyone may make: credentials are not worth a bcrypt check
        user = await self._user(request)
        if user:
            request[USER] = user
            return
        if self._users is None:  # only pushes get here: no user could ever be right
            raise self._unauthorized(request, PUSH_NEEDS_USERS, access)
        present = request.headers.get("Authorization")
        raise self._unauthorized(request, "invalid username, password or token" if present
                                 else "authentication required", access)

    async def token(self, request: web.Request) -> web.StreamResponse:
        """GET /auth/token (the Bearer realm): a token for the Basic credentials given, or an anonymous
        one, when anonymous pulls are allowed, to a request without any. Wrong or malformed credentials
        are 401, so docker login fails."""
        request[ROUTE] = "base"  # part of the /v2/ login handshake, for metrics and logs
        header = request.headers.get("Authorization")
        credentials = _credentials(header)
        if isinstance(credentials, tuple) and await self._password_ok(*credentials):
            user = credentials[0]
        elif header is None and not self._pull_needs_login:
            user = ANONYMOUS
        else:
            raise self._unauthorized(request, "invalid username or password" if header is not None
                                     else "authentication required", Access.LOGIN)
        token = self._tokens.issue(user)
        return web.json_response({"token": token, "access_token": token, "expires_in": TOKEN_SECONDS,
                                  "issued_at": datetime.now(UTC).isoformat()})


AUTHENTICATOR = web.AppKey("authenticator", Authenticator)  # set by v2.setup; ops routes authorize with it too
