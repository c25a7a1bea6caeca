"""Who may do what: HTTP Basic against a bcrypt htpasswd file (`auth.htpasswd`, as `htpasswd -B` writes it).

Rules:
- pushes and deletes (every method but GET/HEAD, and every upload request) need a known user, unless the
  operator opted into `local.anonymous_push`. With no users configured they are refused with a 401 that
  says how to allow them: open by default, anyone on the network could replace what mirror clients pull;
- pulls need a user only with `auth.pull: authenticated`; otherwise Basic credentials on pulls are not
  even checked (skopeo answers a Basic challenge with empty credentials when it has none), unless the
  audit log (`log.audit_pulls`) or an event endpoint will name who pulled;
- once htpasswd is set, `/v2/` always asks, so that `docker login` really checks the password;
- the status page and /metrics count as pulls (they show what is pulled); the probes never ask.

A 401 carries `WWW-Authenticate: Basic realm="<auth.realm>"` and a second challenge,
`Bearer realm="<this server>/auth/token"`, for clients that prefer tokens. Docker gets the Bearer
challenge alone: its client runs every challenge it knows, and Basic without credentials fails the
request ("no basic auth credentials"), so a Basic challenge would stop every anonymous Docker pull,
`registry-mirrors` clients included, once pushes are protected. With Bearer, Docker fetches a token
from /auth/token, anonymously or with the user's Basic credentials (checked against the same htpasswd
file, so a wrong password still fails `docker login`). Tokens are JWTs (api/bearer.py) carrying the user
and, per requested scope, the actions granted. As the Docker token spec requires, a Bearer request about
a repository needs both the policy's consent and the action in the token's scope for the name it uses;
without the scope it is a 401 with `error="insufficient_scope"` naming the scope, and Docker fetches one.
Where anyone may do what is asked, credentials of any kind decide nothing and are not checked.

With `auth.access` rules (pullcache.access), a request about a repository is decided by the rules
instead: anyone passes where the rules let anonymous clients; otherwise an anonymous client gets a 401
whose Bearer challenge names the scope (so Docker logs in and retries), an authenticated one a 403
DENIED naming the rule. The catalog lists only what the caller may pull. Requests about no repository
(/v2/, the status page, /metrics) keep the rules above.

bcrypt is slow by design, so checks run one at a time on a thread of their own (the default executor
serves the store's disk I/O, which must not wait behind logins), a successful check is remembered for
a while and a failed one briefly (a client retrying a wrong password costs one check), keyed by a hash
of the password, never the password itself.

Bad input is a 401, never a 500, and never tells users apart:
- bcrypt reads only the first 72 bytes of a password; `htpasswd -B` truncates longer ones when it
  writes them, and so does the check here (bcrypt 5 would refuse them);
- credentials that are not Basic base64 of UTF-8 `user:password`, or a token that is not ours, count
  as wrong credentials; at /auth/token they are refused, not answered with an anonymous token;
- a user not in the file, and a robot token's name with a wrong secret, is checked against a dummy hash
  of the cost most entries use and remembered as refused like a wrong password, so neither the first
  nor a repeated attempt is faster for an unknown name or a robot's than for an htpasswd user.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path

import bcrypt
from aiohttp import web
from cachetools import TTLCache

from pullcache.access import Policy
from pullcache.api.appkeys import AUTHORIZED_UNTIL, RESOLVER, ROUTE, USER
from pullcache.api.audited import AUDIT, audit
from pullcache.api.bearer import TOKEN_SECONDS, BearerTokens, Claims, Scope
from pullcache.api.errors import DENIED, UNAUTHORIZED, RegistryError
from pullcache.api.notify import NOTIFIER
from pullcache.config import ACCESS_ACTIONS, AuthConfig, ConfigError
from pullcache.names import InvalidName, parse_name
from pullcache.resolver import UnknownNamespace
from pullcache.tokens import Robot, RobotTokens

BCRYPT_ENTRY = re.compile(r"\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}")  # $2y$<cost>$<22 salt + 31 hash>
BCRYPT_MAX_PASSWORD = 72  # bytes bcrypt reads; htpasswd -B truncates longer passwords to these
DEFAULT_COST = 12
CHECK_CACHE_SECONDS = 300.0
# A refusal never changes (the file is read once), but anyone can send endless wrong passwords: they are
# remembered briefly, apart from the accepted ones, which they therefore cannot push out.
REFUSED_CACHE_SECONDS = 30.0
CHECK_CACHE_SIZE = 4096
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
    DELETE = "delete"
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


@dataclass(frozen=True)
class Caller:
    """Who a request proved to be: a user (ANONYMOUS for an anonymous token), for a Bearer token the access
    it carries, and for a robot token the robot, whose own grants bound what it may do."""

    user: str
    token: Claims | None = None
    robot: Robot | None = None

    def expires(self) -> float:
        """Epoch seconds when these credentials stop proving who the caller is (a password never does)."""
        robot = self.robot.expires if self.robot is not None and self.robot.expires is not None else float("inf")
        return min(robot, self.token.expires if self.token is not None else float("inf"))

    def robot_refuses(self, repository: str, action: str) -> str | None:
        """Why the robot's own grants refuse this, or None."""
        if self.robot is None or self.robot.allows(repository, action):
            return None
        grants = ", ".join(str(g) for g in self.robot.grants)
        return f"robot token {self.user!r} grants no {action} on {repository!r} (it grants {grants})"


@dataclass(frozen=True)
class Repo:
    """The repository a request is about, as rules and grants see it."""

    name: str  # as the request writes it
    canonical: str  # what rules and robot grants match
    unpushed: bool = False  # a bare name still the default upstream's only because nothing was pushed to it


class Authenticator:
    """Decides, per request, whether credentials are needed and whether the ones given are right.

    Without `auth.access` the rules are the ones above. With it, every repository request is decided
    by pullcache.access on the repository's canonical name. Either way a Bearer token also has to carry
    the action for the name the request uses (see docs/access.md). A robot token (pullcache.tokens) is a
    user whose secret is its password, and never does more than its own grants allow.
    """

    def __init__(self, config: AuthConfig, *, anonymous_push: bool = False, robots: RobotTokens | None = None,
                 signing_key: bytes | None = None) -> None:
        if config.pull == "authenticated" and not config.htpasswd:
            raise ConfigError("auth.pull: 'authenticated' needs auth.htpasswd to be set (expected a bcrypt "
                              "htpasswd file)")
        self._users = load_htpasswd(config.htpasswd) if config.htpasswd else None
        self._robots = robots
        policy = Policy(config.access, config.groups, set(self._users or ()) | self._robot_names())
        self._policy = policy if config.access else None
        self._dummy_hash = dummy_hash(self._users or {})
        self._pull_needs_login = config.pull == "authenticated"
        self._anonymous_push = anonymous_push
        self._realm = config.realm
        self._tokens = BearerTokens(signing_key)  # None: a random key, known to this process only
        self._accepted: TTLCache[tuple[str, bytes], bool] = TTLCache(CHECK_CACHE_SIZE, CHECK_CACHE_SECONDS)
        self._refused: TTLCache[tuple[str, bytes], bool] = TTLCache(CHECK_CACHE_SIZE, REFUSED_CACHE_SECONDS)

    def _robot_names(self) -> set[str]:
        return self._robots.names() if self._robots is not None else set()

    def _has_users(self) -> bool:
        """Whether any credentials could be right: htpasswd users, or robot tokens (as the file was last read)."""
        return self._users is not None or bool(self._robot_names())

    def _required(self, access: Access) -> bool:
        if access in (Access.PUSH, Access.DELETE):
            return not self._anonymous_push
        if access is Access.PULL:
            return self._pull_needs_login
        return self._has_users()

    async def _password_ok(self, user: str, password: str) -> bool:
        """Whether the password is an htpasswd user's; the same work, cache included, for any other name (a
        robot's too, once its secret did not match)."""
        if not self._has_users():
            return False  # no credentials can be right, and there is no name to enumerate
        users = self._users or {}
        hashed = users.get(user, self._dummy_hash)
        secret = password.encode()[:BCRYPT_MAX_PASSWORD]
        key = (user, hashlib.sha256(hashed + b"\0" + secret).digest())
        if key in self._accepted:
            return True
        if key in self._refused:
            return False
        loop = asyncio.get_running_loop()
        if await loop.run_in_executor(_BCRYPT_THREAD, bcrypt.checkpw, secret, hashed) and user in users:
            self._accepted[key] = True
            return True
        self._refused[key] = True
        return False

    async def _robot(self, user: str) -> tuple[bool, Robot | None]:
        """(whether the name is a robot's rather than an htpasswd user's, the robot if it is active now)."""
        if self._robots is None or (self._users is not None and user in self._users):
            return False, None
        robot = await self._robots.current(user)
        if robot is None:
            return False, None
        return True, robot if robot.active else None

    async def _authenticate(self, user: str, password: str) -> Caller | None:
        """The caller these Basic credentials prove, a user of the file or a robot; None if wrong."""
        is_robot, robot = await self._robot(user)
        if is_robot and robot is not None and robot.secret_matches(password):
            return Caller(user, robot=robot)  # a fast hash: a secret is 256 random bits
        # Any other name, a robot's with a wrong secret included, pays the bcrypt check (or its cached
        # refusal): how long a refusal takes must not tell robot names from others.
        return Caller(user) if await self._password_ok(user, password) else None

    async def _caller(self, request: web.Request) -> Caller | None:
        """Who the request proves to be (by password or by token); None without or with wrong credentials.
        A robot's token counts only while the robot is active: a revocation stops its tokens too."""
        credentials = _credentials(request.headers.get("Authorization"))
        if isinstance(credentials, str):
            claims = self._tokens.verify(credentials)
            if claims is None:
                return None
            is_robot, robot = await self._robot(claims.subject) if claims.subject else (False, None)
            if is_robot and robot is None:
                return None
            return Caller(claims.subject, claims, robot)
        if credentials is not None:
            return await self._authenticate(*credentials)
        return None

    def _challenges(self, request: web.Request, scope: str | None = None,
                    error: str | None = None) -> list[tuple[str, str]]:
        scheme = request.headers.get("X-Forwarded-Proto", request.scheme)
        params = f'realm="{scheme}://{request.host}{TOKEN_PATH}",service="{SERVICE}"'
        if scope is not None:
            params += f',scope="{scope}"'
        if error is not None:
            params += f',error="{error}"'
        bearer = ("WWW-Authenticate", f"Bearer {params}")
        if request.headers.get("User-Agent", "").startswith(DOCKER_ENGINE_AGENT):
            return [bearer]
        return [("WWW-Authenticate", f'Basic realm="{self._realm}"'), bearer]

    def _unauthorized(self, request: web.Request, reason: str, access: Access, *, scope: str | None = None,
                      error: str | None = None) -> RegistryError:
        return UNAUTHORIZED.error(reason, detail={"access": access.value},
                                  headers=self._challenges(request, scope, error))

    def _wrong_credentials(self, request: web.Request, access: Access, name: str | None = None) -> RegistryError:
        """The 401 for credentials that prove nothing, audited as a failed login under the name tried."""
        credentials = _credentials(request.headers.get("Authorization"))
        audit(request, "login", "failure", principal=credentials[0] if isinstance(credentials, tuple) else "",
              repository=name)
        return self._unauthorized(request, "invalid username, password or token", access)

    @staticmethod
    def _denied(request: web.Request, access: Access, name: str, error: RegistryError) -> RegistryError:
        """A refusal of a repository request, audited (GET /v2/ asking for a login is no refusal)."""
        audit(request, access.value, "denied", repository=name, reason=error.message)
        return error

    def _forbidden(self, request: web.Request, access: Access, name: str, reason: str) -> RegistryError:
        return self._denied(request, access, name, DENIED.error(reason,
                                                                detail={"name": name, "action": access.value}))

    async def authorize(self, request: web.Request, access: Access, name: str | None = None) -> None:
        """Return if the request may proceed (setting request[USER] for a known user); else 401, or 403 when
        an authenticated user is refused by a rule. `name` is the repository the request is about."""
        if name is None or access is Access.LOGIN:
            return await self._authorize_service(request, access)
        header = request.headers.get("Authorization")
        if self._policy is None and not self._required(access):
            # Anyone may, whatever the repository (no rules to match its name against): not resolved at all.
            return await self._let_anyone(request, access, header)
        action = access.value
        repo = self._repo(request, name, action)
        anonymous_refusal = self._refusal(None, repo, action)
        if anonymous_refusal is None:
            return await self._let_anyone(request, access, header)
        if self._policy is None and not self._has_users():  # no user could ever be right
            raise self._denied(request, access, name, self._unauthorized(request, PUSH_NEEDS_USERS, access))
        caller = await self._caller(request)
        if caller is None and header:
            raise self._wrong_credentials(request, access, name)
        scope = f"repository:{name}:{action}"
        if caller is not None and caller.user:
            request[USER] = caller.user
            refusal = self._refusal(caller, repo, action)
            if refusal:
                raise self._forbidden(request, access, name, refusal)
        elif self._policy is None:
            raise self._denied(request, access, name, self._unauthorized(request, anonymous_refusal, access))
        else:
            raise self._denied(request, access, name, self._unauthorized(
                request, f"authentication required: {anonymous_refusal}", access, scope=scope))
        if caller.token is not None and not caller.token.allows(name, action):
            raise self._denied(request, access, name, self._unauthorized(
                request, f"the token does not grant {action} on {name!r}; ask /auth/token for scope {scope}",
                access, scope=scope, error="insufficient_scope"))
        request[AUTHORIZED_UNTIL] = caller.expires()

    async def _let_anyone(self, request: web.Request, access: Access, header: str | None) -> None:
        """What anyone may do: credentials decide nothing, only the audit log or events need a name."""
        if header and self._recorded(request, access):
            await self._note_user(request)

    async def _authorize_service(self, request: web.Request, access: Access) -> None:
        """A request about no repository (/v2/, the status page, /metrics, an unknown endpoint)."""
        if not self._required(access):
            return  # a pull anyone may make: credentials are not worth a bcrypt check
        if not self._has_users():  # only pushes get here: no user could ever be right
            raise self._unauthorized(request, PUSH_NEEDS_USERS, access)
        caller = await self._caller(request)
        if caller is not None and caller.user:
            request[USER] = caller.user
            return
        if request.headers.get("Authorization"):
            raise self._wrong_credentials(request, access)
        raise self._unauthorized(request, "authentication required", access)

    @staticmethod
    def _recorded(request: web.Request, access: Access) -> bool:
        """Whether the audit log or an event endpoint will name who made this request."""
        log, notifier = request.app.get(AUDIT), request.app.get(NOTIFIER)
        audited = log is not None and log.enabled and (access is not Access.PULL or log.pulls)
        return audited or (notifier is not None and notifier.wants(access.value))

    @staticmethod
    def _repo(request: web.Request, name: str, action: str, *, ns_aware: bool = True) -> Repo:
        """The repository as rules see it: a write's local name; a read's name as it resolves, proxied ones
        under their upstream (`alpine` -> `docker.io/library/alpine`). A token request cannot see `?ns=`."""
        if action != Access.PULL.value:
            return Repo(name, name)
        try:
            target = request.app[RESOLVER].resolve(name, request.query.get("ns") if ns_aware else None)
        except UnknownNamespace:
            return Repo(name, name)  # answered 404 by the handler; the rules still decide who learns that
        return Repo(name, target.store_name, unpushed=target.via_default)

    def _refusal(self, caller: Caller | None, repo: Repo, action: str) -> str | None:
        """Why the rules (or, without them, the defaults) or a robot's grants refuse the caller this; None if
        they do not. A bare name not pushed yet may be read by whoever may push it: clients check its blobs
        and manifests before they push."""
        user = caller.user if caller is not None and caller.user else None

        def refuses(repository: str, wanted: str) -> str | None:
            if self._policy is not None:
                decision = self._policy.decide(user, repository, wanted)
                if not decision.allowed:
                    return decision.reason
            elif user is None and self._required(Access(wanted)):
                return "authentication required"
            return caller.robot_refuses(repository, wanted) if caller is not None else None

        reason = refuses(repo.canonical, action)
        if reason and action == Access.PULL.value and repo.unpushed and refuses(repo.name, Access.PUSH.value) is None:
            return None
        return reason

    async def _note_user(self, request: web.Request) -> None:
        """Who acts where anyone may: not needed to decide, but the audit log and events name them. Wrong
        credentials are no reason to refuse what anyone may do."""
        caller = await self._caller(request) if request.headers.get("Authorization") else None
        if caller is not None and caller.user:
            request[USER] = caller.user

    async def pullable(self, request: web.Request, repositories: list[str]) -> list[str]:
        """The canonical repository names the caller may pull: without `auth.access` every one, except that a
        robot sees only what its grants cover."""
        if self._policy is None and not request.headers.get("Authorization"):
            return repositories
        caller = await self._caller(request)
        if caller is None and self._policy is not None and request.headers.get("Authorization"):
            raise self._wrong_credentials(request, Access.PULL)
        return [name for name in repositories if self._refusal(caller, Repo(name, name), Access.PULL.value) is None]

    def _granted(self, request: web.Request, caller: Caller, scope: Scope) -> Scope:
        """The scope's actions the caller holds."""
        wanted = [a for a in dict.fromkeys(scope.actions) if a in ACCESS_ACTIONS]
        try:
            parse_name(scope.name)
        except InvalidName:
            wanted = []
        if scope.type != "repository":
            wanted = []
        granted = [a for a in wanted
                   if self._refusal(caller, self._repo(request, scope.name, a, ns_aware=False), a) is None]
        return Scope(scope.type, scope.name, tuple(granted))

    async def token(self, request: web.Request) -> web.StreamResponse:
        """GET /auth/token (the Bearer realm): a token for the Basic credentials given, or an anonymous
        one, when anonymous pulls are allowed, to a request without any. Wrong or malformed credentials
        are 401, so docker login fails. The token carries, per requested scope, the actions granted."""
        request[ROUTE] = "base"  # part of the /v2/ login handshake, for metrics and logs
        header = request.headers.get("Authorization")
        credentials = _credentials(header)
        caller = await self._authenticate(*credentials) if isinstance(credentials, tuple) else None
        if caller is None and header is not None:
            raise self._wrong_credentials(request, Access.LOGIN)
        if caller is None and self._pull_needs_login:
            raise self._unauthorized(request, "authentication required", Access.LOGIN)
        caller = caller or Caller(ANONYMOUS)
        access = [self._granted(request, caller, scope) for scope in Scope.parse_all(request.query.getall("scope", []))]
        issued = time.time()
        token = self._tokens.issue(caller.user, access)
        return web.json_response({"token": token, "access_token": token, "expires_in": TOKEN_SECONDS,
                                  "issued_at": datetime.fromtimestamp(issued, UTC).isoformat()})


AUTHENTICATOR = web.AppKey("authenticator", Authenticator)  # set by v2.setup; ops routes authorize with it too
