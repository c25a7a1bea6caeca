"""Robot tokens: named credentials for CI, each limited to repository globs and actions, with an expiry.

Stored in `<storage.path>/tokens.json` beside the store's other metadata (one node; a shared store
when replicas land). Only a SHA-256 of each secret is stored: a secret is 256 random bits, so a fast
hash is as safe as bcrypt for it and costs a request nothing (a wrong secret still pays the dummy bcrypt
check api/auth.py makes for unknown names, so refusals do not tell robot names apart). A token is never
deleted, only marked revoked, so its name stays known to rules that mention it and to the audit log.

The file is rewritten whole, atomically (temp file, fsync, rename) under an flock, by the CLI. A
running server checks the file's identity (inode, size, mtime) before it trusts a robot, and reads
it again when that changed: a revocation made beside it counts from the next request.
"""
from __future__ import annotations

import asyncio
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pullcache.config import ACCESS_ACTIONS, SPECIAL_PRINCIPALS, ConfigError, repo_glob
from pullcache.names import matches_glob

FILE_NAME = "tokens.json"
SECRET_PREFIX = "pcr_"  # recognisable in a leaked-secret scan
NAME_PATTERN = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$")


class TokenError(ValueError):
    """A token command cannot do what it was asked; the message is the one line to print."""


@dataclass(frozen=True)
class Grant:
    glob: str
    actions: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.glob}:{','.join(self.actions)}"

    @classmethod
    def parse(cls, text: str) -> Grant:
        """`team-a/**:push,pull` -> Grant; TokenError naming --access otherwise."""
        glob, _, actions = text.rpartition(":")
        wanted = tuple(a for a in ACCESS_ACTIONS if a in actions.split(","))
        unknown = [a for a in actions.split(",") if a not in ACCESS_ACTIONS]
        try:
            repo_glob(glob, "--access")
        except ConfigError as exc:
            raise TokenError(f"{exc} in {text!r}") from exc
        if unknown or not wanted:
            raise TokenError(f"--access: {text!r} is not GLOB:ACTIONS (expected e.g. 'team-a/**:push,pull'; "
                             f"actions are {', '.join(ACCESS_ACTIONS)})")
        return cls(glob, wanted)


@dataclass(frozen=True)
class Robot:
    name: str
    hash: str
    grants: tuple[Grant, ...]
    created: float
    expires: float | None = None
    revoked: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked is None and (self.expires is None or time.time() < self.expires)

    def status(self) -> str:
        if self.revoked is not None:
            return "revoked"
        return "active" if self.active else "expired"

    def allows(self, repository: str, action: str) -> bool:
        return any(action in g.actions and matches_glob(repository, g.glob) for g in self.grants)

    def secret_matches(self, secret: str) -> bool:
        return hmac.compare_digest(_hash(secret), self.hash)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["grants"] = [str(g) for g in self.grants]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Robot:
        return cls(data["name"], data["hash"], tuple(Grant.parse(g) for g in data["grants"]), data["created"],
                   data.get("expires"), data.get("revoked"))


def _hash(secret: str) -> str:
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()


def _read(path: Path) -> dict[str, Robot]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"storage.path: robot tokens file {str(path)!r} cannot be read ({exc})") from exc
    try:
        return {name: Robot.from_json(entry) for name, entry in data["tokens"].items()}
    except (KeyError, TypeError, TokenError) as exc:
        raise ConfigError(f"storage.path: robot tokens file {str(path)!r} is damaged ({exc})") from exc


class TokenFile:
    """The CLI's side: read-modify-write under an exclusive lock."""

    def __init__(self, storage_path: str | Path) -> None:
        self.path = Path(storage_path) / FILE_NAME

    def robots(self) -> dict[str, Robot]:
        return _read(self.path)

    @contextmanager
    def _locked(self) -> Iterator[dict[str, Robot]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            robots = _read(self.path)
            yield robots
            self._write(robots)

    def _write(self, robots: dict[str, Robot]) -> None:
        temp = self.path.with_suffix(f".tmp-{os.getpid()}")
        with open(temp, "w") as file:
            json.dump({"version": 1, "tokens": {n: r.to_json() for n, r in sorted(robots.items())}}, file, indent=1)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temp, 0o600)
        os.replace(temp, self.path)

    def create(self, name: str, grants: Sequence[Grant], expires_in: float | None) -> str:
        """Store a new robot and return its secret (the only time it exists anywhere)."""
        if not NAME_PATTERN.match(name):
            raise TokenError(f"--name: {name!r} is not a token name (expected lowercase letters and digits, "
                             "joined by '.', '_' or '-')")
        if name in SPECIAL_PRINCIPALS:  # rules would read it as everyone / every user, never as the robot
            raise TokenError(f"--name: {name!r} is reserved in auth.access rules (expected a name of its own)")
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        with self._locked() as robots:
            if name in robots and robots[name].revoked is None:
                raise TokenError(f"--name: a token named {name!r} exists (revoke it first to replace it)")
            now = time.time()
            robots[name] = Robot(name, _hash(secret), tuple(grants), now,
                                 now + expires_in if expires_in is not None else None)
        return secret

    def revoke(self, name: str) -> None:
        with self._locked() as robots:
            robot = robots.get(name)
            if robot is None:
                raise TokenError(f"no token named {name!r} (pullcache token list shows them)")
            if robot.revoked is None:
                robots[name] = Robot(robot.name, robot.hash, robot.grants, robot.created, robot.expires, time.time())


@dataclass
class _Seen:
    identity: tuple[int, int, int] | None = None
    robots: dict[str, Robot] = field(default_factory=dict)


class RobotTokens:
    """The server's side: the robots as the file says now."""

    def __init__(self, storage_path: str | Path) -> None:
        self._path = Path(storage_path) / FILE_NAME
        self._seen = _Seen()
        self._refresh()

    def names(self) -> set[str]:
        """Every robot's name (revoked ones too: rules naming them stay valid), as read at start-up."""
        return set(self._seen.robots)

    def _identity(self) -> tuple[int, int, int] | None:
        try:
            stat = self._path.stat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ConfigError(f"storage.path: robot tokens file {str(self._path)!r} cannot be read "
                              f"({exc.strerror})") from exc
        return stat.st_ino, stat.st_size, stat.st_mtime_ns

    def _refresh(self) -> dict[str, Robot]:
        identity = self._identity()
        if identity != self._seen.identity:
            self._seen = _Seen(identity, _read(self._path) if identity is not None else {})
        return self._seen.robots

    async def current(self, name: str) -> Robot | None:
        """The robot of that name as the file says now (a stat, and a read only when it changed)."""
        try:
            robots = await asyncio.to_thread(self._refresh)
        except ConfigError:
            return None  # a damaged file trusts no robot until it is fixed
        return robots.get(name)

    async def check(self, name: str, secret: str) -> Robot | None:
        """The active robot whose secret this is; None otherwise."""
        robot = await self.current(name)
        return robot if robot is not None and robot.active and robot.secret_matches(secret) else None
