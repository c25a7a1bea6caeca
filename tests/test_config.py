"""proxy.yml and PULLCACHE_* overrides: the shipped file loads, values parse, and every mistake stops
start-up with one line naming the key, the value and what was expected."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pullcache.config import ConfigError, build_config, load_config, parse_duration, parse_size
from pullcache.upstream.pool import Upstreams

REPO_ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "proxy.yml"
    path.write_text(text)
    return path


def test_shipped_proxy_yml_is_the_documented_default() -> None:
    config = load_config(REPO_ROOT / "proxy.yml", environ={})
    assert config.listen == "0.0.0.0:5000"
    assert not config.tls.enabled
    assert config.storage.max_size == 50 * 1024**3
    assert config.gc.interval == 3600 and config.gc.upload_ttl == 86400
    assert config.auth.htpasswd is None and config.auth.pull == "anonymous"
    assert config.local.deny_push == ("library/*",)
    default = Upstreams(config.upstreams).default
    assert default is not None and default.name == "docker.io"
    assert config.metrics.enabled and config.log.format == "text"


def test_no_file_means_defaults() -> None:
    config = load_config(None, environ={})
    assert config.upstreams == () and config.storage.path == "./data"


@pytest.mark.parametrize(("text", "seconds"), [("500ms", 0.5), ("30s", 30), ("5m", 300), ("1h", 3600),
                                               ("7d", 604800), (45, 45)])
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text, "gc.interval") == seconds


@pytest.mark.parametrize(("text", "size"), [("512MiB", 512 * 1024**2), ("50GiB", 50 * 1024**3), ("1TB", 10**12),
                                            ("1.5GiB", int(1.5 * 1024**3)), (4096, 4096)])
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text, "storage.max_size") == size


@pytest.mark.parametrize(("raw", "names"), [
    ({"gc": {"interval": "soon"}}, ["gc.interval", "'soon'", "duration"]),
    ({"storage": {"max_size": "lots"}}, ["storage.max_size", "'lots'", "size"]),
    ({"storage": {"colour": "blue"}}, ["storage.colour", "unknown key"]),
    ({"auth": {"pull": "sometimes"}}, ["auth.pull", "'sometimes'", "anonymous, authenticated"]),
    ({"listen": "localhost"}, ["listen", "host:port"]),
    ({"tls": {"cert": "/c.pem"}}, ["tls", "both set"]),
    ({"upstreams": [{"name": "a", "url": "ftp://x"}]}, ["upstreams[0].url", "http(s) URL"]),
    ({"upstreams": [{"name": "a"}]}, ["upstreams[0]", "name and url"]),
    ({"upstreams": [{"name": "a", "url": "http://a"}, {"name": "a", "url": "http://b"}]}, ["'a'", "twice"]),
    ({"upstreams": [{"name": "a", "url": "http://a", "default": True},
                    {"name": "b", "url": "http://b", "default": True}]}, ["default: true"]),
    ({"metrics": {"enabled": "yes please"}}, ["metrics.enabled", "boolean"]),
    ({"surprise": 1}, ["surprise", "unknown key"]),
    ({"storage": {"backend": "tape"}}, ["storage.backend", "'tape'", "filesystem, s3"]),
    ({"storage": {"s3": {"colour": "blue"}}}, ["storage.s3.colour", "unknown key"]),
    ({"storage": {"s3": {"endpoint": "minio:9000"}}}, ["storage.s3.endpoint", "http(s) URL"]),
    ({"storage": {"s3": {"local_cache": "lots"}}}, ["storage.s3.local_cache", "'lots'"]),
    ({"storage": {"s3": {"redirect": "sometimes"}}}, ["storage.s3.redirect", "boolean"]),
    ({"storage": {"s3": {"bucket": ""}}}, ["storage.s3.bucket", "empty"]),
    ({"storage": {"s3": {"secret_key": "x"}}}, ["storage.s3.access_key", "null"]),
    ({"storage": {"s3": {"access_key": "a", "secret_key": "x", "secret_key_env": "S"}}},
     ["storage.s3.secret_key_env", "one of the two"]),
])
def test_mistakes_name_the_key_and_value(raw: dict, names: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        build_config(raw)
    message = str(caught.value)
    assert "\n" not in message
    for name in names:
        assert name in message


@pytest.mark.parametrize("url", ["https://bob:hunter2@registry-1.docker.io", "https://bob@ghcr.io/v2",
                                 "http://:hunter2@127.0.0.1:5001"])
def test_credentials_in_an_upstream_url_are_refused_without_repeating_them(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_config({"upstreams": [{"name": "hub", "url": url}]})
    message = str(caught.value)
    assert message.startswith("upstreams[0].url: ")
    assert "username" in message and "password_env" in message
    assert "hunter2" not in message and "bob" not in message


def test_environment_overrides_sections_and_indexed_upstreams(tmp_path: Path) -> None:
    path = write(tmp_path, "upstreams:\n  - {name: docker.io, url: https://registry-1.docker.io}\n")
    config = load_config(path, environ={
        "PULLCACHE_STORAGE__MAX_SIZE": "20GiB",
        "PULLCACHE_AUTH__PULL": "authenticated",
        "PULLCACHE_UPSTREAMS__0__URL": "http://127.0.0.1:5001",
        "PULLCACHE_LOCAL__DENY_PUSH": "[library/*, base/*]",
        "UNRELATED": "ignored",
    })
    assert config.storage.max_size == 20 * 1024**3
    assert config.auth.pull == "authenticated"
    assert config.upstreams[0].url == "http://127.0.0.1:5001"
    assert config.local.deny_push == ("library/*", "base/*")


@pytest.mark.parametrize("text", ["0755", "12:30", "0x1F", "yes", "no", "on", "null", "~", "1e3", "[a]", "true"])
def test_environment_string_values_are_taken_exactly_as_written(text: str) -> None:
    config = load_config(None, environ={"PULLCACHE_AUTH__REALM": text})
    assert config.auth.realm == text


def test_environment_upstream_password_is_taken_exactly_as_written(tmp_path: Path) -> None:
    path = write(tmp_path, "upstreams:\n  - {name: ghcr.io, url: https://ghcr.io, username: bot}\n")
    config = load_config(path, environ={"PULLCACHE_UPSTREAMS__0__PASSWORD": "0755"})
    assert config.upstreams[0].credentials() == ("bot", "0755")


def test_environment_typed_values_are_read_as_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "upstreams:\n  - {name: docker.io, url: https://registry-1.docker.io}\n")
    config = load_config(path, environ={"PULLCACHE_METRICS__ENABLED": "false",
                                        "PULLCACHE_UPSTREAMS__0__MAX_CONNECTIONS": "8",
                                        "PULLCACHE_UPSTREAMS__0__DEFAULT": "true",
                                        "PULLCACHE_GC__INTERVAL": "90",
                                        "PULLCACHE_UPSTREAMS__0__ALIASES": "[hub, index.docker.io]"})
    assert config.metrics.enabled is False
    assert config.upstreams[0].max_connections == 8 and config.upstreams[0].default is True
    assert config.gc.interval == 90
    assert config.upstreams[0].aliases == ("hub", "index.docker.io")


def test_environment_value_that_is_not_yaml_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="PULLCACHE_LOCAL__DENY_PUSH") as caught:
        load_config(None, environ={"PULLCACHE_LOCAL__DENY_PUSH": "[library/*, base/*"})
    assert "\n" not in str(caught.value)


def test_environment_override_errors_name_the_variable(tmp_path: Path) -> None:
    path = write(tmp_path, "upstreams:\n  - {name: docker.io, url: https://registry-1.docker.io}\n")
    with pytest.raises(ConfigError, match="PULLCACHE_UPSTREAMS__3__URL"):
        load_config(path, environ={"PULLCACHE_UPSTREAMS__3__URL": "http://x"})
    with pytest.raises(ConfigError, match="storage.max_size"):
        load_config(None, environ={"PULLCACHE_STORAGE__MAX_SIZE": "huge"})


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(tmp_path / "absent.yml", environ={})
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "listen: [unclosed\n"), environ={})


def test_upstream_password_env_is_read_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = build_config({"upstreams": [{"name": "ghcr.io", "url": "https://ghcr.io", "username": "bot",
                                          "password_env": "GHCR_TOKEN"}]})
    monkeypatch.setenv("GHCR_TOKEN", "from-the-environment")
    assert config.upstreams[0].credentials() == ("bot", "from-the-environment")


def test_check_config_command_reports_ok_or_one_line(tmp_path: Path) -> None:
    good = subprocess.run([sys.executable, "-m", "pullcache", "check-config", "-c", str(REPO_ROOT / "proxy.yml")],
                          check=False, capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)
    assert good.returncode == 0 and "OK" in good.stdout
    bad = write(tmp_path, "gc: {interval: soon}\n")
    failed = subprocess.run([sys.executable, "-m", "pullcache", "check-config", "-c", str(bad)],
                            check=False, capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)
    assert failed.returncode == 2
    assert failed.stderr.strip().count("\n") == 0 and "gc.interval" in failed.stderr


def test_low_water_accepts_a_fraction_or_a_percentage() -> None:
    assert build_config({"storage": {"low_water": 0.75}}).storage.low_water == 0.75
    assert build_config({"storage": {"low_water": "80%"}}).storage.low_water == 0.8


@pytest.mark.parametrize("value", ["90x%", "0%", "150%", 0, 1.5, True])
def test_a_low_water_that_is_no_fraction_is_refused_quoting_it_as_written(value: object) -> None:
    with pytest.raises(ConfigError) as refused:
        build_config({"storage": {"low_water": value}})
    assert str(refused.value) == f"storage.low_water: {value!r} is not a fraction (expected e.g. 0.9 or 90%)"


def test_invalid_yaml_names_the_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "listen: 127.0.0.1:5000\nstorage:\n  path: x: y\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert str(caught.value) == (f"config file {str(path)!r}: not valid YAML at line 3, column 10: "
                                 "mapping values are not allowed here")


def test_an_override_value_that_a_key_refuses_names_the_variable() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, environ={"PULLCACHE_STORAGE__MAX_SIZE": "abc"})
    assert str(caught.value) == ("PULLCACHE_STORAGE__MAX_SIZE=abc: storage.max_size: 'abc' is not a size "
                                 "(expected e.g. 512MiB, 50GiB, 1TB)")


def test_an_override_of_an_unknown_key_names_the_variable() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, environ={"PULLCACHE_STORAGE__COLOUR": "blue"})
    assert str(caught.value).startswith("PULLCACHE_STORAGE__COLOUR=blue: storage.colour: unknown key")


def test_an_override_that_breaks_a_rule_across_keys_names_the_variable() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, environ={"PULLCACHE_TLS__CERT": "/c.pem", "PULLCACHE_STORAGE__PATH": "/srv/cache"})
    assert str(caught.value).startswith("PULLCACHE_TLS__CERT=/c.pem: tls: ")


def test_an_override_error_names_a_password_variable_without_its_value(tmp_path: Path) -> None:
    path = write(tmp_path, "upstreams:\n  - {name: a, url: http://a}\n  - {name: b, url: http://b}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={"PULLCACHE_UPSTREAMS__1__NAME": "a", "PULLCACHE_UPSTREAMS__0__PASSWORD": "hunter2"})
    message = str(caught.value)
    assert message.startswith("PULLCACHE_UPSTREAMS__0__PASSWORD (value hidden), PULLCACHE_UPSTREAMS__1__NAME=a: "
                              "upstreams: name 'a' is used twice"), message
    assert "hunter2" not in message


def test_an_error_in_the_file_names_no_unrelated_variable(tmp_path: Path) -> None:
    path = write(tmp_path, "storage: {max_size: lots}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={"PULLCACHE_STORAGE__PATH": "/srv/cache"})
    assert str(caught.value).startswith("storage.max_size: 'lots'")


@pytest.mark.parametrize(("listen", "host", "port"), [("[::1]:5000", "::1", 5000), ("[::]:5001", "::", 5001),
                                                      ("0.0.0.0:5002", "0.0.0.0", 5002), (":5003", "0.0.0.0", 5003),
                                                      ("localhost:5004", "localhost", 5004)])
def test_listen_gives_the_host_without_brackets_and_the_port(listen: str, host: str, port: int) -> None:
    config = build_config({"listen": listen})
    assert (config.host, config.port) == (host, port)


@pytest.mark.parametrize("listen", ["::1:5000", "::5000", "fe80::1:5000"])
def test_an_ipv6_listen_address_without_brackets_is_refused_in_one_line(listen: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_config({"listen": listen})
    assert str(caught.value) == (f"listen: {listen!r} is an IPv6 address without brackets "
                                 "(expected e.g. [::1]:5000, or [::]:5000 for every address)")


@pytest.mark.parametrize("listen", ["[::1:5000", "[nonsense]:5000", "[::1]5000", "[127.0.0.1]:5000"])
def test_a_bracketed_listen_address_must_be_ipv6(listen: str) -> None:
    with pytest.raises(ConfigError, match=r"^listen: .* is not host:port"):
        build_config({"listen": listen})


def test_cluster_section_and_its_environment_overrides() -> None:
    config = load_config(None, environ={"PULLCACHE_CLUSTER__REDIS": "redis://127.0.0.1:6379/2",
                                        "PULLCACHE_CLUSTER__ADVERTISE": "http://10.0.0.7:5000",
                                        "PULLCACHE_CLUSTER__SECRET_ENV": "PULLCACHE_SECRET"})
    assert (config.cluster.redis, config.cluster.advertise, config.cluster.secret_env) == (
        "redis://127.0.0.1:6379/2", "http://10.0.0.7:5000", "PULLCACHE_SECRET")
    assert load_config(None, environ={}).cluster.redis is None


@pytest.mark.parametrize(("raw", "key"), [
    ({"redis": "http://redis:6379"}, "cluster.redis"),
    ({"redis": "redis://redis:port/0"}, "cluster.redis"),
    ({"advertise": "replica-1:5000"}, "cluster.advertise"),
    ({"secret_env": "NOT A NAME"}, "cluster.secret_env"),
    ({"leader": True}, "cluster.leader"),
])
def test_cluster_mistakes_name_the_key(raw: dict, key: str) -> None:
    with pytest.raises(ConfigError) as error:
        build_config({"cluster": raw})
    assert str(error.value).startswith(f"{key}: ") and "\n" not in str(error.value)


def test_storage_s3_keys_and_their_environment_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "storage:\n  backend: s3\n  s3: {bucket: from-file, region: eu-west-1}\n")
    config = load_config(path, environ={"PULLCACHE_STORAGE__S3__BUCKET": "0755",
                                        "PULLCACHE_STORAGE__S3__ENDPOINT": "http://127.0.0.1:8333",
                                        "PULLCACHE_STORAGE__S3__REDIRECT": "true",
                                        "PULLCACHE_STORAGE__S3__REDIRECT_TTL": "5m",
                                        "PULLCACHE_STORAGE__S3__LOCAL_CACHE": "1GiB"})
    s3 = config.storage.s3
    assert config.storage.backend == "s3"
    assert (s3.bucket, s3.region, s3.endpoint) == ("0755", "eu-west-1", "http://127.0.0.1:8333")
    assert s3.redirect and s3.redirect_ttl == 300 and s3.local_cache == 1024**3
    assert s3.prefix == "" and s3.access_key is None  # the AWS chain


def test_an_s3_override_error_names_the_variable() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, environ={"PULLCACHE_STORAGE__S3__LOCAL_CACHE": "lots"})
    assert str(caught.value).startswith("PULLCACHE_STORAGE__S3__LOCAL_CACHE=lots: storage.s3.local_cache: ")


def test_secret_key_env_is_read_when_asked() -> None:
    config = build_config({"storage": {"s3": {"access_key": "a", "secret_key_env": "S3_SECRET"}}})
    assert config.storage.s3.secret({"S3_SECRET": "hush"}) == "hush"
