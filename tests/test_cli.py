"""The command line refuses what would stop the server (a bad htpasswd file, unreadable TLS files, a storage
path it cannot write) with one line naming the key, in check-config and in serve alike."""
from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path

import bcrypt
import pytest

from tests.support import seaweed
from tests.support.seaweed import SeaweedFS

REPO_ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pullcache", *args], check=False, capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=60)


def config_with_htpasswd(tmp_path: Path, htpasswd_line: str) -> Path:
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(htpasswd_line + "\n")
    config = tmp_path / "proxy.yml"
    config.write_text(f"listen: 127.0.0.1:0\nstorage: {{path: {tmp_path / 'data'}}}\n"
                      f"auth: {{htpasswd: {htpasswd}}}\n")
    return config


def test_check_config_rejects_a_non_bcrypt_htpasswd_entry_in_one_line(tmp_path: Path) -> None:
    config = config_with_htpasswd(tmp_path, "alice:$apr1$abc$defghijklmnopqrstuvwx.")  # htpasswd -m (MD5)
    result = run_cli("check-config", "-c", str(config))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "auth.htpasswd" in result.stderr and "alice" in result.stderr


def test_serve_stops_on_a_bad_htpasswd_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    config = config_with_htpasswd(tmp_path, "bob:plaintext")
    result = run_cli("serve", "-c", str(config))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("pullcache: config error: auth.htpasswd")


def test_check_config_accepts_a_bcrypt_htpasswd(tmp_path: Path) -> None:
    hashed = bcrypt.hashpw(b"secret", bcrypt.gensalt(rounds=4)).decode().replace("$2b$", "$2y$", 1)
    result = run_cli("check-config", "-c", str(config_with_htpasswd(tmp_path, f"carol:{hashed}")))
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def write_config(tmp_path: Path, text: str) -> Path:
    config = tmp_path / "proxy.yml"
    config.write_text(f"listen: 127.0.0.1:0\n{text}")
    return config


def assert_one_config_error_line(result: subprocess.CompletedProcess[str], key: str) -> None:
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"pullcache: config error: {key}: "), line


def test_check_config_names_a_missing_tls_cert(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"storage: {{path: {tmp_path / 'data'}}}\n"
                                    f"tls: {{cert: {tmp_path / 'absent.pem'}, key: {tmp_path / 'absent.key'}}}\n")
    assert_one_config_error_line(run_cli("check-config", "-c", str(config)), "tls.cert")


def test_serve_stops_on_a_missing_tls_key_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("placeholder\n")
    config = write_config(tmp_path, f"storage: {{path: {tmp_path / 'data'}}}\n"
                                    f"tls: {{cert: {tmp_path / 'cert.pem'}, key: {tmp_path / 'absent.key'}}}\n")
    assert_one_config_error_line(run_cli("serve", "-c", str(config)), "tls.key")


def test_check_config_names_tls_files_that_are_no_certificate_and_key(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("not a certificate\n")
    (tmp_path / "key.pem").write_text("not a key\n")
    config = write_config(tmp_path, f"storage: {{path: {tmp_path / 'data'}}}\n"
                                    f"tls: {{cert: {tmp_path / 'cert.pem'}, key: {tmp_path / 'key.pem'}}}\n")
    assert_one_config_error_line(run_cli("check-config", "-c", str(config)), "tls.cert")


def test_check_config_names_a_storage_path_that_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("where the storage directory's parent should be\n")
    config = write_config(tmp_path, f"storage: {{path: {tmp_path / 'a-file' / 'data'}}}\n")
    assert_one_config_error_line(run_cli("check-config", "-c", str(config)), "storage.path")


def test_serve_stops_on_a_storage_path_that_cannot_be_created_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("where the storage directory's parent should be\n")
    config = write_config(tmp_path, f"storage: {{path: {tmp_path / 'a-file' / 'data'}}}\n")
    assert_one_config_error_line(run_cli("serve", "-c", str(config)), "storage.path")


def test_version_prints_the_installed_package_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"pullcache {importlib.metadata.version('pullcache')}"


def test_readme_commands_run_the_virtualenv_pullcache() -> None:
    """`make run` installs into .venv without activating it: a bare `pullcache` is not on PATH."""
    readme = (REPO_ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", readme, flags=re.S)
    commands = [line.strip() for block in blocks for line in block.splitlines()
                if re.match(r"\s*(\S*/)?pullcache\s", line)]
    assert commands, "the README shows no pullcache command"
    assert all(command.startswith(".venv/bin/pullcache ") for command in commands), commands


@pytest.mark.parametrize("platform", ["linux", "linux/", "/amd64", "linux/amd64/v8/extra", "Linux/AMD64",
                                      "linux amd64"])
def test_warm_refuses_a_platform_that_is_not_os_arch_variant_in_one_line(tmp_path: Path, platform: str) -> None:
    config = write_config(tmp_path, f"storage: {{path: {tmp_path / 'data'}}}\n")
    result = run_cli("warm", "-c", str(config), "--platform", platform, "alpine:3.20")
    assert result.returncode == 2
    assert result.stderr.strip() == (f"pullcache: --platform {platform!r} is not os/arch[/variant] "
                                     "(expected e.g. linux/amd64 or linux/arm64/v8)")
    assert not (tmp_path / "data").exists()  # refused before anything was opened


def test_check_config_says_who_may_push(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"storage: {{path: {tmp_path / 'data'}}}\nlocal: {{anonymous_push: true}}\n")
    result = run_cli("check-config", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert "  pushes allowed for anyone (local.anonymous_push: true)\n" in result.stdout


def test_check_config_lists_every_url_of_an_upstream_in_the_order_they_are_asked(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"storage: {{path: {tmp_path / 'data'}}}\n"
                                    "upstreams:\n"
                                    "  - {name: docker.io, default: true, manifest_ttl: 5m,\n"
                                    "     urls: [https://a.example, https://b.example, https://c.example]}\n"
                                    "  - {name: ghcr.io, url: https://ghcr.example}\n")
    result = run_cli("check-config", "-c", str(config))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "  upstream docker.io (default) -> https://a.example, fallback https://b.example then "\
           "https://c.example, manifest_ttl 300s" in lines
    assert any(line.startswith("  upstream ghcr.io -> https://ghcr.example, manifest_ttl ") for line in lines)


def s3_config_file(tmp_path: Path, server: SeaweedFS, bucket: str) -> Path:
    s3 = json.dumps(server.storage_config(bucket, prefix="cli", timeout="3s"))
    return write_config(tmp_path, f"storage: {{path: {tmp_path / 'data'}, backend: s3, s3: {s3}}}\n")


def test_check_config_prints_the_s3_backend(tmp_path: Path, seaweed_server: SeaweedFS) -> None:
    result = run_cli("check-config", "-c", str(s3_config_file(tmp_path, seaweed_server, seaweed.BUCKET)))
    assert result.returncode == 0, result.stderr
    assert (f"  backend s3 s3://{seaweed.BUCKET}/cli at {seaweed_server.url}, local cache {10 * 1024**3} bytes, "
            "no redirect, credentials from the config\n") in result.stdout


def test_check_config_prints_the_filesystem_backend(tmp_path: Path) -> None:
    result = run_cli("check-config", "-c", str(write_config(tmp_path, f"storage: {{path: {tmp_path / 'data'}}}\n")))
    assert "  backend filesystem\n" in result.stdout


@pytest.mark.parametrize("command", ["check-config", "serve"])
def test_a_missing_bucket_is_one_line(tmp_path: Path, seaweed_server: SeaweedFS, command: str) -> None:
    result = run_cli(command, "-c", str(s3_config_file(tmp_path, seaweed_server, "no-such-bucket")))
    assert_one_config_error_line(result, "storage.s3.bucket")
    assert "does not exist" in result.stderr


def test_an_unreachable_object_store_stops_serve_in_one_line(tmp_path: Path) -> None:
    s3 = {"endpoint": "http://127.0.0.1:9", "bucket": "b", "access_key": "k", "secret_key": "s", "timeout": "2s"}
    config = write_config(tmp_path, f"storage: {{path: {tmp_path / 'data'}, backend: s3, s3: {json.dumps(s3)}}}\n")
    assert_one_config_error_line(run_cli("serve", "-c", str(config)), "storage.s3.bucket")


def test_s3_on_a_path_holding_a_filesystem_store_is_one_line(tmp_path: Path, seaweed_server: SeaweedFS) -> None:
    (tmp_path / "data" / "blobs" / "sha256").mkdir(parents=True)
    result = run_cli("check-config", "-c", str(s3_config_file(tmp_path, seaweed_server, seaweed.BUCKET)))
    assert_one_config_error_line(result, "storage.path")
    assert "holds a filesystem store" in result.stderr
