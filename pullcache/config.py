"""proxy.yml plus PULLCACHE_* environment overrides, turned into frozen dataclasses.

Every error is a ConfigError whose message is one line naming the key, the value and what was
expected, so that a wrong config stops start-up with something an operator can act on.
"""
from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ENV_PREFIX = "PULLCACHE_"


class ConfigError(ValueError):
    """A config key holds a value pullcache cannot use."""


_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE_UNITS = {
    "": 1, "b": 1,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
    "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4,
}
_NUMBER_UNIT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_duration(value: Any, key: str) -> float:
    """'500ms', '30s', '5m', '1h', '7d' or a number of seconds -> seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    match = _NUMBER_UNIT.match(str(value)) if isinstance(value, str) else None
    if not match or match.group(2).lower() not in _DURATION_UNITS:
        raise ConfigError(f"{key}: {value!r} is not a duration (expected e.g. 500ms, 30s, 5m, 1h, 7d)")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2).lower()]


def parse_size(value: Any, key: str) -> int:
    """'512MiB', '50GiB', '1TB' or a number of bytes -> bytes."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    match = _NUMBER_UNIT.match(str(value)) if isinstance(value, str) else None
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise ConfigError(f"{key}: {value!r} is not a size (expected e.g. 512MiB, 50GiB, 1TB)")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


@dataclass(frozen=True)
class TLSConfig:
    cert: str | None = None
    key: str | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.cert and self.key)


@dataclass(frozen=True)
class S3Config:
    bucket: str = "pullcache"
    prefix: str = ""
    endpoint: str | None = None  # None: AWS S3 in `region`
    region: str = "us-east-1"
    access_key: str | None = None  # None: the usual AWS chain (environment, profile, instance role)
    secret_key: str | None = None
    secret_key_env: str | None = None  # names the variable holding the secret key
    local_cache: int = 10 * 1024**3  # hot blobs also kept under storage.path, served with sendfile
    redirect: bool = False  # cached blob GETs answered 307 to a presigned URL
    redirect_ttl: float = 20 * 60.0
    timeout: float = 30.0  # one S3 request; past it, requests that need the bucket answer 503

    def secret(self, environ: Mapping[str, str] | None = None) -> str | None:
        """The secret key: given inline, or read from the variable secret_key_env names."""
        if self.secret_key_env:
            return (os.environ if environ is None else environ).get(self.secret_key_env)
        return self.secret_key


@dataclass(frozen=True)
class StorageConfig:
    path: str = "./data"
    max_size: int = 50 * 1024**3
    low_water: float = 0.9  # eviction frees cached content down to this fraction of max_size
    backend: str = "filesystem"  # or s3: blobs, manifests and tags in a bucket, storage.path as spool and cache
    s3: S3Config = field(default_factory=S3Config)


@dataclass(frozen=True)
class GCConfig:
    interval: float = 3600.0
    upload_ttl: float = 86400.0


ACCESS_ACTIONS = ("pull", "push", "delete")
SPECIAL_PRINCIPALS = ("anonymous", "authenticated")  # in rules: everyone, and every known user


@dataclass(frozen=True)
class AccessRule:
    """One `auth.access` entry: the repository globs it covers and who may do each action there."""

    repos: tuple[str, ...]
    pull: tuple[str, ...] = ()
    push: tuple[str, ...] = ()
    delete: tuple[str, ...] = ()

    def principals(self, action: str) -> tuple[str, ...]:
        return tuple(getattr(self, action))


@dataclass(frozen=True)
class AuthConfig:
    htpasswd: str | None = None
    pull: str = "anonymous"  # or "authenticated"
    realm: str = "pullcache"
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # group -> its users
    access: tuple[AccessRule, ...] = ()  # ordered; empty: push needs a user, pull follows `pull`


@dataclass(frozen=True)
class LocalConfig:
    deny_push: tuple[str, ...] = ("library/*",)
    allow_push: tuple[str, ...] = ()  # globs a push must match; empty: every name not denied
    anonymous_push: bool = False  # true: pushes and deletes need no user (warned at start-up)


@dataclass(frozen=True)
class PullRule:
    """One entry of an upstream's `rules` (pullcache.policy reads them)."""
    action: str  # allow or deny
    repository: str  # glob: `*` one path component, `**` any number
    tag_glob: str | None = None  # from `repo-glob:tag-glob`
    tags: str | None = None  # a regex the tag must contain a match of

    @property
    def tags_regex(self) -> re.Pattern[str]:
        return re.compile(self.tags or "")

    def __str__(self) -> str:
        pattern = self.repository + (f":{self.tag_glob}" if self.tag_glob is not None else "")
        return f'{self.action}: "{pattern}"' + (f', tags: "{self.tags}"' if self.tags is not None else "")


@dataclass(frozen=True)
class PullRules:
    rules: tuple[PullRule, ...] = ()
    default_deny: bool = False  # `- default: deny` as the last entry


@dataclass(frozen=True)
class UpstreamConfig:
    name: str
    url: str = ""  # the primary URL; proxy.yml's `urls` sets it to its first entry
    default: bool = False
    manifest_ttl: float = 300.0
    username: str | None = None
    password: str | None = None
    password_env: str | None = None
    aliases: tuple[str, ...] = ()
    token_hosts: tuple[str, ...] = ()  # hosts besides the upstream's own that may serve token realms
    redirect_hosts: tuple[str, ...] = ()  # private-address hosts a blob redirect or token realm may name
    connect_timeout: float = 10.0
    read_timeout: float = 30.0  # a fetch that receives nothing for this long is a stall
    request_timeout: float = 20.0  # total deadline of one exchange: token, manifest, HEAD, a blob's headers
    not_found_ttl: float = 30.0  # how long an upstream 404 is remembered
    max_connections: int = 64
    urls: tuple[str, ...] = ()  # the primary (== url) then its fallbacks, in order; () means just url
    proxy: str | None = None  # outbound HTTP proxy for every request of this upstream; None: the environment's
    proxy_password_env: str | None = None  # the proxy's password, read from this variable
    rules: PullRules = field(default_factory=PullRules)  # pull policy: first matching rule wins
    ratelimit_reserve: float = 0.1  # below this many pulls left (a share of the limit if <= 1): no revalidation

    @property
    def all_urls(self) -> tuple[str, ...]:
        """Every URL of this upstream in failover order: the primary first."""
        return self.urls or (self.url,)

    def for_url(self, url: str) -> UpstreamConfig:
        """This upstream as if `url` were its only URL: a mirror is trusted, and checked, like the primary."""
        return dataclasses.replace(self, url=url, urls=())

    @property
    def is_docker_hub(self) -> bool:
        """Docker Hub's one-component names live under library/."""
        return self.name == "docker.io" or "docker.io" in self.aliases

    def credentials(self) -> tuple[str, str] | None:
        """Username and password, reading password_env at call time so secrets stay out of files."""
        if not self.username:
            return None
        password = self.password
        if self.password_env:
            password = os.environ.get(self.password_env, "")
        return self.username, password or ""


@dataclass(frozen=True)
class MetricsConfig:
    enabled: bool = True


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"
    format: str = "text"
    audit: str | None = None  # null: no audit log; "stdout"; or a file path (reopened on SIGHUP)
    audit_pulls: bool = False  # manifest pulls are audited too


EVENT_ACTIONS = ("push", "delete", "pull")


@dataclass(frozen=True)
class EndpointConfig:
    """One receiver of Distribution-format events (`notifications.endpoints[]`)."""

    name: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)  # e.g. Authorization for the receiver
    timeout: float = 5.0  # one delivery attempt
    events: tuple[str, ...] = ("push", "delete")
    backoff: float = 1.0  # first retry delay after a failure; doubles up to max_backoff
    max_backoff: float = 60.0
    queue: int = 1000  # events waiting for this endpoint; beyond, new ones are dropped (and counted)


@dataclass(frozen=True)
class NotificationsConfig:
    endpoints: tuple[EndpointConfig, ...] = ()


@dataclass(frozen=True)
class ClusterConfig:
    """How pullcache processes coordinate (pullcache.cluster): null redis means the embedded way, one host."""

    redis: str | None = None  # redis://host:6379/0
    advertise: str | None = None  # http://this-replica:5000, how peers reach this process
    secret_env: str | None = None  # names the environment variable holding the cluster secret


@dataclass(frozen=True)
class Config:
    listen: str = "0.0.0.0:5000"
    workers: int = 1  # processes on this host sharing the listening port and the store (pullcache.workers)
    tls: TLSConfig = field(default_factory=TLSConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    gc: GCConfig = field(default_factory=GCConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    local: LocalConfig = field(default_factory=LocalConfig)
    upstreams: tuple[UpstreamConfig, ...] = ()
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    notifications: NotificationsConfig = field(default_factory=NotificationsConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    @property
    def host(self) -> str:
        """The address to bind, without an IPv6 address's brackets; every IPv4 address when none is given."""
        return split_listen(self.listen)[0] or "0.0.0.0"

    @property
    def port(self) -> int:
        return split_listen(self.listen)[1]


# ---------------------------------------------------------------- value checkers

Checker = Callable[[Any, str], Any]
_TEXT_CHECKERS: set[Checker] = set()


def _text(checker: Checker) -> Checker:
    """Mark a checker whose value is text: an environment override reaches it exactly as written instead
    of being read as YAML (which turns 0755 into 493, 12:30 into 750, yes into True and null into None)."""
    _TEXT_CHECKERS.add(checker)
    return checker


@_text
def _string(value: Any, key: str) -> str:
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise ConfigError(f"{key}: {value!r} is not a string")


@_text
def _optional_string(value: Any, key: str) -> str | None:
    return None if value is None else _string(value, key)


def _bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    raise ConfigError(f"{key}: {value!r} is not a boolean (expected true or false)")


def _choice(*choices: str) -> Checker:
    def check(value: Any, key: str) -> str:
        if value in choices:
            return value
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(choices)}")
    return _text(check)


def _string_list(value: Any, key: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ConfigError(f"{key}: {value!r} is not a list of strings")


def _fraction(value: Any, key: str) -> float:
    """0.9 or '90%' -> 0.9; the error quotes the value as it was written."""
    number = value
    if isinstance(value, str) and value.endswith("%"):
        with contextlib.suppress(ValueError):
            number = float(value[:-1]) / 100
    if isinstance(number, (int, float)) and not isinstance(number, bool) and 0 < number <= 1:
        return float(number)
    raise ConfigError(f"{key}: {value!r} is not a fraction (expected e.g. 0.9 or 90%)")


def _positive_int(value: Any, key: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    raise ConfigError(f"{key}: {value!r} is not a positive integer")


# A repository glob: name characters, `/` between components, `*` and `**` (pullcache.names.matches_glob).
_REPO_GLOB = re.compile(r"^[a-z0-9._*-]+(?:/[a-z0-9._*-]+)*$")
_PRINCIPAL = re.compile(r"^[^\s:]+$")


def _principal_list(value: Any, key: str) -> tuple[str, ...]:
    names = _string_list(value, key)
    for name in names:
        if not _PRINCIPAL.match(name):
            raise ConfigError(f"{key}: {name!r} is not a user or group name")
    return names


def _groups(value: Any, key: str) -> dict[str, tuple[str, ...]]:
    """{team-a: [alice, ci-team-a]}; a group may not take a name rules give a meaning of their own."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: {value!r} is not a mapping of group names to lists of users")
    groups = {}
    for name, members in value.items():
        if not isinstance(name, str) or not _PRINCIPAL.match(name) or name in SPECIAL_PRINCIPALS:
            raise ConfigError(f"{key}.{name}: {name!r} cannot name a group "
                              f"({', '.join(SPECIAL_PRINCIPALS)} have a meaning of their own)")
        groups[name] = _principal_list(members, f"{key}.{name}")
    return groups


def repo_glob(glob: str, key: str) -> str:
    """A repository glob as rules and robot tokens use it (pullcache.names.matches_glob), or ConfigError."""
    if not _REPO_GLOB.match(glob):
        raise ConfigError(f"{key}: {glob!r} is not a repository glob (expected lowercase name components "
                          "joined by '/', with * for one component and ** for any number)")
    return glob


def _repo_globs(value: Any, key: str) -> tuple[str, ...]:
    globs = _string_list(value, key)
    if not globs:
        raise ConfigError(f"{key}: [] matches nothing (expected globs such as team-a/** or docker.io/**)")
    return tuple(repo_glob(glob, key) for glob in globs)


_RULE_KEYS: dict[str, Checker] = {"repos": _repo_globs, **{action: _principal_list for action in ACCESS_ACTIONS}}


def _access_rules(value: Any, key: str) -> tuple[AccessRule, ...]:
    """An ordered list of {repos, pull, push, delete}; who the names are is checked at start-up
    (pullcache.access), against the users that exist then."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError(f"{key}: {value!r} is not a list of rules (expected [{{repos: [...], pull: [...]}}])")
    rules = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or "repos" not in item:
            raise ConfigError(f"{key}[{i}]: {item!r} is not a rule (expected a mapping with repos and some of "
                              f"{', '.join(ACCESS_ACTIONS)})")
        rules.append(_build(AccessRule, _RULE_KEYS, item, f"{key}[{i}]"))
    return tuple(rules)


_LISTEN = re.compile(r"^(?:\[(?P<ipv6>[^\]]*)\]|(?P<host>[^\[\]]*)):(?P<port>\d{1,5})$")


def split_listen(text: str) -> tuple[str, int]:
    """`host:port` or `[ipv6]:port` -> (host without brackets, port); ValueError for anything else."""
    match = _LISTEN.match(text)
    if not match or int(match["port"]) > 65535:
        raise ValueError(text)
    if match["ipv6"] is not None:
        ipaddress.IPv6Address(match["ipv6"])  # brackets hold an IPv6 address, nothing else
        return match["ipv6"], int(match["port"])
    return match["host"], int(match["port"])


@_text
def _listen(value: Any, key: str) -> str:
    text = _string(value, key)
    try:
        host, _ = split_listen(text)
    except ValueError:
        raise ConfigError(f"{key}: {value!r} is not host:port (expected e.g. 0.0.0.0:5000 or [::]:5000)") from None
    if ":" in host and not text.startswith("["):
        raise ConfigError(f"{key}: {value!r} is an IPv6 address without brackets "
                          "(expected e.g. [::1]:5000, or [::]:5000 for every address)")
    return text


@_text
def _url(value: Any, key: str) -> str:
    text = _string(value, key)
    if "@" in text.partition("://")[2].split("/", 1)[0]:
        # Not repeated in the message: it is printed, logged, and a URL shows on the status page.
        section = key.rsplit(".", 1)[0]
        raise ConfigError(f"{key}: credentials in the URL (user:password@host) are refused "
                          f"(expected {section}.username plus {section}.password_env)")
    if not re.match(r"^https?://[^/\s]+(/\S*)?$", text):
        raise ConfigError(f"{key}: {value!r} is not an http(s) URL (expected e.g. https://registry-1.docker.io)")
    return text.rstrip("/")


def _headers(value: Any, key: str) -> dict[str, str]:
    if value is None:
        return {}
    if isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        return dict(value)
    raise ConfigError(f"{key}: {value!r} is not a mapping of header names to strings")


def _event_actions(value: Any, key: str) -> tuple[str, ...]:
    actions = _string_list(value, key)
    unknown = [a for a in actions if a not in EVENT_ACTIONS]
    if unknown:
        raise ConfigError(f"{key}: {unknown[0]!r} is not an event (expected some of {', '.join(EVENT_ACTIONS)})")
    return actions


_ENDPOINT_KEYS: dict[str, Checker] = {
    "name": _string, "url": _url, "headers": _headers, "timeout": parse_duration, "events": _event_actions,
    "backoff": parse_duration, "max_backoff": parse_duration, "queue": _positive_int,
}


def _endpoints(value: Any, key: str) -> tuple[EndpointConfig, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError(f"{key}: {value!r} is not a list of endpoints (expected [{{name, url}}])")
    endpoints = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or "name" not in item or "url" not in item:
            raise ConfigError(f"{key}[{i}]: {item!r} is not an endpoint (expected a mapping with name and url)")
        endpoints.append(_build(EndpointConfig, _ENDPOINT_KEYS, item, f"{key}[{i}]"))
    names = [e.name for e in endpoints]
    if len(set(names)) != len(names):
        raise ConfigError(f"{key}: an endpoint name is used twice in {names!r} (expected unique names)")
    return tuple(endpoints)


def _url_list(value: Any, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{key}: {value!r} is not a list of URLs (expected e.g. [https://a, https://b])")
    urls = tuple(_url(item, f"{key}[{i}]") for i, item in enumerate(value))
    if len(set(urls)) != len(urls):
        raise ConfigError(f"{key}: {value!r} lists a URL twice")
    return urls


@_text
def _proxy_url(value: Any, key: str) -> str | None:
    """An http(s) proxy URL, credentials allowed (they go only to the proxy and are never shown)."""
    if value is None:
        return None
    text = _string(value, key)
    if not re.match(r"^https?://([^@/\s]+@)?[^@/\s]+/?$", text):
        raise ConfigError(f"{key}: not an http(s) proxy URL (expected e.g. http://proxy.internal:3128)")
    return text


def _reserve(value: Any, key: str) -> float:
    """`10%` or 0.1 (a share of the rate limit), or a number of pulls above 1 (e.g. 20)."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 1:
        return float(value)
    try:
        return _fraction(value, key)
    except ConfigError:
        raise ConfigError(f"{key}: {value!r} is not a reserve (expected a share of the limit such as 10% or "
                          "0.1, or a number of pulls such as 20)") from None


_REPOSITORY_GLOB = re.compile(r"^[a-z0-9._*-]+(/[a-z0-9._*-]+)*$")
_TAG_GLOB = re.compile(r"^[A-Za-z0-9_.*-]+$")


def _pull_rule(item: Any, key: str) -> PullRule:
    actions = [a for a in ("allow", "deny") if isinstance(item, dict) and a in item]
    if not isinstance(item, dict) or len(actions) != 1 or set(item) - {actions[0], "tags"}:
        raise ConfigError(f"{key}: {item!r} is not a rule (expected allow: GLOB or deny: GLOB, "
                          "optionally with tags: REGEX)")
    action = actions[0]
    pattern = item[action]
    repository, colon, tag_glob = pattern.partition(":") if isinstance(pattern, str) else ("", "", "")
    if not _REPOSITORY_GLOB.match(repository) or "***" in repository or (colon and not _TAG_GLOB.match(tag_glob)):
        raise ConfigError(f"{key}.{action}: {pattern!r} is not a repository glob (expected e.g. library/*, "
                          "myorg/** or */*:latest)")
    tags = item.get("tags")
    if tags is not None:
        if not isinstance(tags, str):
            raise ConfigError(f"{key}.tags: {tags!r} is not a regular expression")
        try:
            re.compile(tags)
        except re.error as exc:
            raise ConfigError(f"{key}.tags: {tags!r} is not a regular expression ({exc})") from None
    return PullRule(action, repository, tag_glob if colon else None, tags)


def _pull_rules(value: Any, key: str) -> PullRules:
    """`rules:` - a list of allow/deny rules, optionally ending with `default: deny` (or allow)."""
    if not isinstance(value, list):
        raise ConfigError(f"{key}: {value!r} is not a list of rules (expected e.g. [{{allow: library/*}}])")
    default_deny = False
    if value and isinstance(value[-1], dict) and set(value[-1]) == {"default"}:
        default = value[-1]["default"]
        if default not in ("allow", "deny"):
            raise ConfigError(f"{key}[{len(value) - 1}].default: {default!r} is not one of allow, deny")
        default_deny, value = default == "deny", value[:-1]
    return PullRules(tuple(_pull_rule(item, f"{key}[{i}]") for i, item in enumerate(value)), default_deny)


_REDIS_URL = re.compile(r"^rediss?://([^@/\s]+@)?[^@/\s:]+(:\d{1,5})?(/\d+)?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@_text
def _redis_url(value: Any, key: str) -> str | None:
    if value is None:
        return None
    text = _string(value, key)
    if not _REDIS_URL.match(text):
        raise ConfigError(f"{key}: {value!r} is not a Redis URL (expected e.g. redis://redis.internal:6379/0)")
    return text


@_text
def _optional_url(value: Any, key: str) -> str | None:
    return None if value is None else _url(value, key)


@_text
def _env_name(value: Any, key: str) -> str | None:
    if value is None:
        return None
    text = _string(value, key)
    if not _ENV_NAME.match(text):
        raise ConfigError(f"{key}: {value!r} is not an environment variable name (expected e.g. PULLCACHE_SECRET)")
    return text


_S3_KEYS: dict[str, Checker] = {
    "bucket": _string, "prefix": _string, "endpoint": _optional_url, "region": _string,
    "access_key": _optional_string, "secret_key": _optional_string, "secret_key_env": _optional_string,
    "local_cache": parse_size, "redirect": _bool, "redirect_ttl": parse_duration, "timeout": parse_duration,
}


def _s3(value: Any, key: str) -> S3Config:
    s3: S3Config = _build(S3Config, _S3_KEYS, value, key)
    if not s3.bucket:
        raise ConfigError(f"{key}.bucket: empty (expected the name of an existing bucket)")
    if s3.secret_key_env and s3.secret_key:
        raise ConfigError(f"{key}.secret_key_env: set with secret_key (expected one of the two)")
    if (s3.secret_key or s3.secret_key_env) and not s3.access_key:
        raise ConfigError(f"{key}.access_key: null while a secret key is set (expected both, or neither for "
                          f"the AWS chain)")
    return s3


_SECTIONS: dict[str, tuple[type, dict[str, Checker]]] = {
    "tls": (TLSConfig, {"cert": _optional_string, "key": _optional_string}),
    "storage": (StorageConfig, {"path": _string, "max_size": parse_size, "low_water": _fraction,
                                "backend": _choice("filesystem", "s3"), "s3": _s3}),
    "gc": (GCConfig, {"interval": parse_duration, "upload_ttl": parse_duration}),
    "auth": (AuthConfig, {"htpasswd": _optional_string, "pull": _choice("anonymous", "authenticated"),
                          "realm": _string, "groups": _groups, "access": _access_rules}),
    "local": (LocalConfig, {"deny_push": _string_list, "allow_push": _string_list, "anonymous_push": _bool}),
    "metrics": (MetricsConfig, {"enabled": _bool}),
    "log": (LogConfig, {"level": _choice("debug", "info", "warning", "error"), "format": _choice("text", "json"),
                        "audit": _optional_string, "audit_pulls": _bool}),
    "notifications": (NotificationsConfig, {"endpoints": _endpoints}),
    "cluster": (ClusterConfig, {"redis": _redis_url, "advertise": _optional_url, "secret_env": _env_name}),
}

_UPSTREAM_KEYS: dict[str, Checker] = {
    "name": _string, "url": _url, "default": _bool, "manifest_ttl": parse_duration,
    "username": _optional_string, "password": _optional_string, "password_env": _optional_string,
    "aliases": _string_list, "token_hosts": _string_list, "redirect_hosts": _string_list,
    "connect_timeout": parse_duration, "read_timeout": parse_duration, "request_timeout": parse_duration,
    "not_found_ttl": parse_duration, "max_connections": _positive_int, "urls": _url_list,
    "proxy": _proxy_url, "proxy_password_env": _optional_string, "rules": _pull_rules,
    "ratelimit_reserve": _reserve,
}


def _build(cls: type, checkers: Mapping[str, Checker], raw: Any, key: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{key}: {raw!r} is not a mapping")
    values = {}
    for name, value in raw.items():
        if name not in checkers:
            raise ConfigError(f"{key}.{name}: unknown key (expected one of {', '.join(checkers)})")
        values[name] = checkers[name](value, f"{key}.{name}")
    return cls(**values)


def _build_upstreams(raw: Any) -> tuple[UpstreamConfig, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError(f"upstreams: {raw!r} is not a list of upstreams")
    upstreams = []
    for i, item in enumerate(raw):
        key = f"upstreams[{i}]"
        if not isinstance(item, dict) or "name" not in item or ("url" in item) == ("urls" in item):
            raise ConfigError(f"{key}: {item!r} is not an upstream (expected a mapping with name and url, "
                              f"or name and urls)")
        upstream = _build(UpstreamConfig, _UPSTREAM_KEYS, item, key)
        upstreams.append(dataclasses.replace(upstream, url=upstream.all_urls[0]))
    names = [u.name for u in upstreams] + [a for u in upstreams for a in u.aliases]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"upstreams: name {duplicates[0]!r} is used twice (expected unique names and aliases)")
    if sum(u.default for u in upstreams) > 1:
        raise ConfigError("upstreams: more than one upstream has default: true (expected at most one)")
    return tuple(upstreams)


def build_config(raw: Any) -> Config:
    """Validate a parsed proxy.yml mapping into a Config."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"proxy.yml: {raw!r} is not a mapping of sections")
    known = {"listen", "workers", "upstreams", *_SECTIONS}
    values: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in known:
            raise ConfigError(f"{name}: unknown key (expected one of {', '.join(sorted(known))})")
        if name == "listen":
            values[name] = _listen(value, name)
        elif name == "workers":
            values[name] = _positive_int(value, name)
        elif name == "upstreams":
            values[name] = _build_upstreams(value)
        else:
            cls, checkers = _SECTIONS[name]
            values[name] = _build(cls, checkers, value, name)
    config = Config(**values)
    if (config.tls.cert and not config.tls.key) or (config.tls.key and not config.tls.cert):
        raise ConfigError(f"tls: cert={config.tls.cert!r} key={config.tls.key!r} (expected both set or both null)")
    return config


def _checker_at(path: list[str]) -> Checker | None:
    """The checker of the key an override names; None for a whole section or list, or an unknown key."""
    if path == ["listen"]:
        return _listen
    if path == ["workers"]:
        return _positive_int
    if len(path) == 3 and path[:2] == ["storage", "s3"]:
        return _S3_KEYS.get(path[2])
    if len(path) == 3 and path[0] == "upstreams":
        return _UPSTREAM_KEYS.get(path[2])
    if len(path) == 2 and path[0] in _SECTIONS:
        return _SECTIONS[path[0]][1].get(path[1])
    return None


def _env_value(env_key: str, text: str, path: list[str]) -> Any:
    """An override's value: exactly the text for a text key, else the text read as YAML; empty is null."""
    if text == "":
        return None
    if _checker_at(path) in _TEXT_CHECKERS:
        return text
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{env_key}: {text!r} is not a YAML value ({str(exc).splitlines()[0]})") from exc


def apply_env_overrides(raw: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """PULLCACHE_<SECTION>__<KEY>=value sets raw[section][key]; upstreams are indexed:
    PULLCACHE_UPSTREAMS__0__URL. A text key (a path, password, realm, URL, choice) takes the value exactly
    as written; the others read it as YAML, so `true`, `64`, `30s` and `[a, b]` work. Empty means null."""
    raw = dict(raw)
    for env_key in sorted(environ):
        if not env_key.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in env_key[len(ENV_PREFIX):].split("__")]
        value = _env_value(env_key, environ[env_key], path)
        node: Any = raw
        for part in path[:-1]:
            child_key: Any = int(part) if isinstance(node, list) and part.isdigit() else part
            if isinstance(node, list):
                if not isinstance(child_key, int) or child_key >= len(node):
                    raise ConfigError(f"{env_key}: no upstream at index {part} (expected 0..{len(node) - 1})")
                node[child_key] = dict(node[child_key])
                node = node[child_key]
                continue
            child = node.get(child_key)
            child = list(child) if isinstance(child, list) else dict(child or {})
            node[child_key] = child
            node = child
        if isinstance(node, list):
            raise ConfigError(f"{env_key}: {environ[env_key]!r} cannot replace a list item (expected __<INDEX>__<KEY>)")
        node[path[-1]] = value
    return raw


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """`at line 3, column 5: mapping values are not allowed here`: where the file went wrong, 1-based."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None) or str(exc).splitlines()[0]
    return f"at line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark else f"({problem})"


def _error_key(exc: ConfigError) -> str:
    """The key an error names: every message starts with `key: `."""
    return str(exc).split(": ", 1)[0]


def _dotted(env_key: str) -> str:
    """PULLCACHE_UPSTREAMS__0__URL -> upstreams[0].url, the key as errors name it."""
    first, *rest = env_key[len(ENV_PREFIX):].lower().split("__")
    return first + "".join(f"[{part}]" if part.isdigit() else f".{part}" for part in rest)


def _within(key: str, outer: str) -> bool:
    return key == outer or key.startswith((f"{outer}.", f"{outer}["))


def _blame_overrides(exc: ConfigError, environ: Mapping[str, str]) -> ConfigError:
    """The error, led by the PULLCACHE_* variables that set its key, a key inside it or a section around it:
    a value the file does not hold must not send the operator looking for it there."""
    key = _error_key(exc)
    culprits = [env_key for env_key in sorted(environ) if env_key.startswith(ENV_PREFIX)
                and (_within(_dotted(env_key), key) or _within(key, _dotted(env_key)))]
    if not culprits:
        return exc
    shown = [f"{name} (value hidden)" if name.endswith("__PASSWORD") else f"{name}={environ[name]}"
             for name in culprits]
    return ConfigError(f"{', '.join(shown)}: {exc}")


def load_config(path: str | Path | None, environ: Mapping[str, str] | None = None) -> Config:
    """Read proxy.yml (or only defaults when path is None), apply env overrides, validate."""
    raw: Any = {}
    if path is not None:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"config file {str(path)!r}: cannot be read ({exc.strerror})") from exc
        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {str(path)!r}: not valid YAML {_yaml_problem(exc)}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {str(path)!r}: {raw!r} is not a mapping of sections")
    environ = os.environ if environ is None else environ
    raw = apply_env_overrides(raw, environ)
    try:
        return build_config(raw)
    except ConfigError as exc:
        raise _blame_overrides(exc, environ) from exc
