"""A Docker-Hub-style token server (docker token auth spec) on 127.0.0.1.

Distribution 2.8 verifies its RS256 JWTs through the certificate in the `x5c` header
against `auth.token.rootcertbundle`, so the same server drives a plain Distribution
upstream and lets tests count how often pullcache asks for tokens. It runs an aiohttp
app on its own event loop in a daemon thread, which makes it usable from sync fixtures
and from async tests alike.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import fnmatch
import secrets
import socket
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import jwt
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

DEFAULT_SERVICE = "registry.pullcache.test"
DEFAULT_ISSUER = "pullcache-test-token-issuer"
ADMIN_USER, ADMIN_PASSWORD = "admin", "adminpass"  # every action everywhere (seeding)
PULL_USER, PULL_PASSWORD = "puller", "pullpass"  # the only user who may pull private/*
DEFAULT_USERS = {ADMIN_USER: ADMIN_PASSWORD, PULL_USER: PULL_PASSWORD}
DEFAULT_PRIVATE = {"private/*": frozenset({PULL_USER})}
ALL_ACTIONS = frozenset({"pull", "push", "delete", "*"})


@dataclass(frozen=True)
class Scope:
    """One requested scope, e.g. `repository:library/alpine:pull,push`."""

    type: str
    name: str
    actions: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Scope:
        # The name may itself hold a colon (never for repositories, but `registry:catalog:*`
        # shows the shape): type is before the first colon, actions after the last.
        kind, _, rest = text.partition(":")
        name, _, actions = rest.rpartition(":")
        if not kind or not name:
            raise ValueError(f"malformed scope {text!r}")
        return cls(kind, name, tuple(a for a in actions.split(",") if a))


@dataclass(frozen=True)
class TokenRequest:
    """What one call to the token endpoint asked for and who asked ("" = anonymous)."""

    method: str
    user: str
    service: str
    scopes: tuple[Scope, ...]
    granted: tuple[dict[str, object], ...]


@dataclass
class _Policy:
    users: dict[str, str]
    admins: frozenset[str]
    private: dict[str, frozenset[str]]

    def allowed(self, user: str, scope: Scope) -> list[str]:
        """The intersection of requested and granted actions (never an error, per spec)."""
        if user in self.admins:
            granted: frozenset[str] = ALL_ACTIONS
        elif scope.type != "repository":
            granted = frozenset()
        else:
            readers = self._readers(scope.name)
            granted = frozenset({"pull"}) if readers is None or user in readers else frozenset()
        return [a for a in scope.actions if a in granted]

    def _readers(self, repo: str) -> frozenset[str] | None:
        for pattern, readers in self.private.items():
            if fnmatch.fnmatchcase(repo, pattern):
                return readers
        return None


@dataclass
class _Signer:
    key: rsa.RSAPrivateKey
    cert: x509.Certificate
    x5c: list[str] = field(init=False)

    def __post_init__(self) -> None:
        der = self.cert.public_bytes(serialization.Encoding.DER)
        self.x5c = [base64.b64encode(der).decode()]

    @classmethod
    def generate(cls, issuer: str) -> _Signer:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=False, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    def sign(self, claims: Mapping[str, object]) -> str:
        return jwt.encode(dict(claims), self.key, algorithm="RS256", headers={"x5c": self.x5c})


class TokenServer:
    """Issues bearer tokens for one registry `service`.

    Policy: anyone (also anonymous) may `pull` a repository unless it matches a pattern in
    `private`, which only the listed users may pull; users in `admins` get every action on
    everything (seeding pushes with them). Wrong credentials are answered 401.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        service: str = DEFAULT_SERVICE,
        issuer: str = DEFAULT_ISSUER,
        users: Mapping[str, str] = DEFAULT_USERS,
        admins: Iterable[str] = (ADMIN_USER,),
        private: Mapping[str, Iterable[str]] = DEFAULT_PRIVATE,
        expires_in: int = 300,
    ) -> None:
        self.workdir = Path(workdir)
        self.service = service
        self.issuer = issuer
        self.expires_in = expires_in
        self.policy = _Policy(
            users=dict(users),
            admins=frozenset(admins),
            private={k: frozenset(v) for k, v in private.items()},
        )
        self._signer = _Signer.generate(issuer)
        self.cert_path = self.workdir / "token-root.pem"
        self._requests: list[TokenRequest] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> TokenServer:
        """Serve on a free loopback port until `stop()`; after a `stop()`, on the same port
        again (a token outage and its end: the realm URL must not change)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.cert_path.write_bytes(self._signer.cert.public_bytes(serialization.Encoding.PEM))
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        # The loop is built inside the thread: a caller that is itself inside a running
        # event loop (an async test) could not drive a second loop here.
        loop = asyncio.new_event_loop()
        started = threading.Event()
        self._thread = threading.Thread(
            target=self._serve, args=(loop, sock, started), name="tokenserver", daemon=True
        )
        self._loop = loop
        self._thread.start()
        if not started.wait(timeout=10):
            raise RuntimeError("token server did not start")
        return self

    def _serve(
        self, loop: asyncio.AbstractEventLoop, sock: socket.socket, started: threading.Event
    ) -> None:
        asyncio.set_event_loop(loop)
        runner = web.AppRunner(self._make_app(), access_log=None)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.SockSite(runner, sock).start())
        started.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(runner.cleanup())
            loop.close()

    def stop(self) -> None:
        """Close the listener and join the thread. Safe to call twice."""
        if self._loop is None or self._thread is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop = None
        self._thread = None

    def __enter__(self) -> TokenServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- what tests look at ------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def realm(self) -> str:
        return f"{self.url}/token"

    @property
    def requests(self) -> list[TokenRequest]:
        """Every token request so far (a copy), oldest first."""
        with self._lock:
            return list(self._requests)

    def count(self, user: str | None = None) -> int:
        """Number of token requests, optionally only those by `user` ("" = anonymous)."""
        return sum(1 for r in self.requests if user is None or r.user == user)

    def reset(self) -> None:
        with self._lock:
            self._requests.clear()

    def issue(self, user: str, access: Iterable[Mapping[str, object]], *, ttl: int | None = None) -> str:
        """A signed token for `user` with exactly `access` (tests craft odd tokens with it)."""
        now = int(dt.datetime.now(dt.UTC).timestamp())
        claims = {
            "iss": self.issuer,
            "sub": user,
            "aud": self.service,
            "exp": now + (self.expires_in if ttl is None else ttl),
            "nbf": now - 1,
            "iat": now,
            "jti": secrets.token_hex(16),
            "access": [dict(a) for a in access],
        }
        return self._signer.sign(claims)

    # --- HTTP --------------------------------------------------------------------------

    def _make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/token", self._get_token)
        # containerd tries the OAuth2 POST form first when it has credentials.
        app.router.add_post("/token", self._post_token)
        return app

    async def _get_token(self, request: web.Request) -> web.Response:
        user = self._basic_user(request.headers.get("Authorization"))
        if user is None:
            return _unauthorized()
        return self._answer(request.method, user, request.query.getall("scope", []),
                            request.query.get("service", ""))

    async def _post_token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("grant_type") != "password":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        username, password = str(form.get("username", "")), str(form.get("password", ""))
        if self.policy.users.get(username) != password:
            return _unauthorized()
        scopes = [str(s) for s in form.getall("scope", [])]
        return self._answer(request.method, username, scopes, str(form.get("service", "")))

    def _basic_user(self, header: str | None) -> str | None:
        """"" for anonymous, the user name for good credentials, None for bad ones."""
        if not header:
            return ""
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            username, _, password = base64.b64decode(value.strip()).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return username if self.policy.users.get(username) == password else None

    def _answer(self, method: str, user: str, raw_scopes: list[str], service: str) -> web.Response:
        try:
            scopes = tuple(Scope.parse(s) for raw in raw_scopes for s in raw.split())
        except ValueError as err:
            return web.json_response({"details": str(err)}, status=400)
        access: list[dict[str, object]] = []
        for scope in scopes:
            actions = self.policy.allowed(user, scope)
            access.append({"type": scope.type, "name": scope.name, "actions": actions})
        with self._lock:
            self._requests.append(TokenRequest(method, user, service, scopes, tuple(access)))
        token = self.issue(user, access)
        issued_at = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return web.json_response(
            {"token": token, "access_token": token, "expires_in": self.expires_in,
             "issued_at": issued_at}
        )


def _unauthorized() -> web.Response:
    return web.json_response(
        {"details": "incorrect username or password"},
        status=401,
        headers={"WWW-Authenticate": 'Basic realm="pullcache-test-tokens"'},
    )
