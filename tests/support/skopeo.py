"""skopeo (1.9) with its configuration isolated from the host's.

Auth file, registries.conf, signature lookaside dir, trust policy and temp dir all live
in one temp dir, so a developer's own `~/.docker/config.json` or
`/etc/containers/registries.conf` never changes what a test sees. TLS verification is off
for every docker:// reference: all test registries speak plain HTTP on loopback.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from .procs import clean_env

SKOPEO_BIN = "/usr/bin/skopeo"


class Skopeo:
    """Runs skopeo with private config; `close()` removes it."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="pc-skopeo-"))
        self.authfile = self.root / "auth.json"
        self.registries_conf = self.root / "registries.conf"
        self.policy = self.root / "policy.json"
        self.registries_d = self.root / "registries.d"
        self.tmpdir = self.root / "tmp"
        self.authfile.write_text("{}")
        self.registries_conf.write_text("unqualified-search-registries = []\n")
        self.policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
        self.registries_d.mkdir()
        self.tmpdir.mkdir()

    def run(
        self, *args: str, check: bool = True, timeout: float = 300.0
    ) -> subprocess.CompletedProcess[bytes]:
        """`skopeo --policy ... ARGS...` with the private config; stdout is raw bytes."""
        env = clean_env(
            REGISTRY_AUTH_FILE=str(self.authfile),
            CONTAINERS_REGISTRIES_CONF=str(self.registries_conf),
            TMPDIR=str(self.tmpdir),
        )
        argv = [
            SKOPEO_BIN, "--policy", str(self.policy), "--registries.d", str(self.registries_d),
            "--tmpdir", str(self.tmpdir), *args,
        ]
        result = subprocess.run(argv, env=env, capture_output=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(
                f"skopeo {' '.join(args)} exited {result.returncode}\n"
                f"stdout:\n{result.stdout.decode(errors='replace')[-4000:]}\n"
                f"stderr:\n{result.stderr.decode(errors='replace')[-4000:]}"
            )
        return result

    def copy(
        self,
        src: str,
        dest: str,
        *,
        all_platforms: bool = False,
        src_creds: str | None = None,
        dest_creds: str | None = None,
        check: bool = True,
        extra: tuple[str, ...] = (),
    ) -> subprocess.CompletedProcess[bytes]:
        """`skopeo copy SRC DEST` between `docker://127.0.0.1:PORT/...`, `oci:DIR[:TAG]`,
        `dir:DIR`...; creds are "user:password"; `all_platforms` copies whole indexes."""
        args = ["copy", "--src-tls-verify=false", "--dest-tls-verify=false"]
        if all_platforms:
            args.append("--all")
        if src_creds is not None:
            args += ["--src-creds", src_creds]
        if dest_creds is not None:
            args += ["--dest-creds", dest_creds]
        return self.run(*args, *extra, src, dest, check=check)

    def inspect_raw(self, ref: str, *, creds: str | None = None) -> bytes:
        """The manifest (or index) bytes exactly as the registry served them."""
        return self.run(*self._inspect_args(ref, creds), "--raw").stdout

    def inspect(self, ref: str, *, creds: str | None = None, platform: str | None = None) -> dict[str, Any]:
        """`skopeo inspect` JSON for one platform ("os/arch[/variant]", default the host's).

        `Digest` is that of the manifest the reference names (the index for a tag);
        `Layers` and the config fields are the chosen platform's.
        """
        global_args: list[str] = []
        if platform:
            os_name, arch, *variant = platform.split("/")
            global_args = ["--override-os", os_name, "--override-arch", arch]
            global_args += ["--override-variant", variant[0]] if variant else []
        args = self._inspect_args(ref, creds)
        return json.loads(self.run(*global_args, *args).stdout)

    @staticmethod
    def _inspect_args(ref: str, creds: str | None) -> list[str]:
        args = ["inspect", "--tls-verify=false", ref]
        return args + (["--creds", creds] if creds is not None else [])

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Skopeo:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
