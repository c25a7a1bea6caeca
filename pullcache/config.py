"""proxy.yml plus PULLCACHE_* environment overrides, turned into frozen dataclasses.

Every error is a ConfigError whose message is one line naming the key, the value and what was
expected, so that a wrong config stops start-up with something an operator can act on.
"""
from __future__ import annotations

import contextlib
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


@dataclass(frozen=True)
class AuthConfig:
    htpasswd: str | None = None
    pull: str = "anonymous"  # or "authenticated"
    realm: str = "pullcache"


@dataclass(frozen=True)
class LocalConfig:
    deny_push: tuple[str, ...] = ("library/*",)
    allow_push: tuple[str, ...] = ()  # globs a push must match; empty: every name not denied
    anonymous_push: bool = False  # true: pushes and deletes need no user (warned at start-up)


@dataclass(frozen=True)
class UpstreamConfig:
    name: str
    url: str
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


@dataclass(frozen=True)
class Config:
    listen: str = "0.0.0.0:5000"
    tls: TLSConfig = field(default_factory=TLSConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    gc: GCConfig = field(default_factory=GCConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    local: LocalConfig = field(default_factory=LocalConfig)
    upstreams: tuple[UpstreamConfig, ...] = ()
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    log: LogConfig = field(default_factory=LogConfig)

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


@_text
def _optional_url(value: Any, key: str) -> str | None:
    return None if value is None else _url(value, key)


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
                          "realm": _string}),
    "local": (LocalConfig, {"deny_push": _string_list, "allow_push": _string_list, "anonymous_push": _bool}),
    "metrics": (MetricsConfig, {"enabled": _bool}),
    "log": (LogConfig, {"level": _choice("debug", "info", "warning", "error"), "format": _choice("text", "json")}),
}

_UPSTREAM_KEYS: dict[str, Checker] = {
    "name": _string, "url": _url, "default": _bool, "manifest_ttl": parse_duration,
    "username": _optional_string, "password": _optional_string, "password_env": _optional_string,
    "aliases": _string_list, "token_hosts": _string_list, "redirect_hosts": _string_list,
    "connect_timeout": parse_duration, "read_timeout": parse_duration, "request_timeout": parse_duration,
    "not_found_ttl": parse_duration, "max_connections": _positive_int,
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
        if not isinstance(item, dict) or "name" not in item or "url" not in item:
            raise ConfigError(f"{key}: {item!r} is not an upstream (expected a mapping with name and url)")
        upstreams.append(_build(UpstreamConfig, _UPSTREAM_KEYS, item, key))
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
    known = {"listen", "upstreams", *_SECTIONS}
    values: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in known:
            raise ConfigError(f"{name}: unknown key (expected one of {', '.join(sorted(known))})")
        if name == "listen":
            values[name] = _listen(value, name)
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
