"""Command line: serve, gc, warm, check-config. Every command reads proxy.yml plus PULLCACHE_* overrides."""
from __future__ import annotations

import argparse
import asyncio
import ssl
import sys
from typing import Sequence

from pullcache.config import Config, ConfigError, load_config


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pullcache", description="Pull-through caching proxy for OCI registries")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("-c", "--config", default="proxy.yml", help="path to proxy.yml (default: %(default)s)")
        return sub

    command("serve", "run the registry")
    gc = command("gc", "run one garbage-collection sweep now (safe while a server runs on the same storage)")
    gc.add_argument("--dry-run", action="store_true", help="print what would be removed, remove nothing")
    warm = command("warm", "pre-fill the cache with images")
    warm.add_argument("images", nargs="+", metavar="IMAGE", help="e.g. alpine:3.20 or ghcr.io/org/app:v1")
    warm.add_argument("--platform", help="os/arch[/variant]; default: every platform of an index")
    command("check-config", "validate the config and print the effective settings")
    return parser


def _serve(config: Config) -> int:
    from aiohttp import web

    from pullcache.app import build_app
    from pullcache.logs import configure_logging

    configure_logging(config.log)
    try:
        app = build_app(config)  # reads auth.htpasswd: a bad file is a config error, not a traceback
    except ConfigError as exc:
        print(f"pullcache: config error: {exc}", file=sys.stderr)
        return 2
    ssl_context = None
    if config.tls.enabled:
        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_context.load_cert_chain(config.tls.cert, config.tls.key)  # type: ignore[arg-type]
    web.run_app(app, host=config.host, port=config.port, ssl_context=ssl_context,
                access_log=None, print=None, handle_signals=True)
    return 0


def _check_config(config: Config, path: str) -> int:
    from pullcache.api.auth import Authenticator

    try:
        Authenticator(config.auth)  # the htpasswd file must exist and hold only bcrypt entries
    except ConfigError as exc:
        print(f"pullcache: config error: {exc}", file=sys.stderr)
        return 2
    print(f"{path}: OK")
    print(f"  listen {config.listen} ({'https' if config.tls.enabled else 'http'})")
    print(f"  storage {config.storage.path}, cached content bounded at {config.storage.max_size} bytes")
    for upstream in config.upstreams:
        marker = " (default)" if upstream.default else ""
        print(f"  upstream {upstream.name}{marker} -> {upstream.url}, manifest_ttl {upstream.manifest_ttl:g}s")
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"pullcache: config error: {exc}", file=sys.stderr)
        sys.exit(2)
    if args.command == "serve":
        sys.exit(_serve(config))
    if args.command == "check-config":
        sys.exit(_check_config(config, args.config))
    if args.command == "gc":
        from pullcache.eviction.gc import run_gc_command
        sys.exit(asyncio.run(run_gc_command(config, dry_run=args.dry_run)))
    if args.command == "warm":
        from pullcache.warm import run_warm_command
        sys.exit(asyncio.run(run_warm_command(config, args.images, platform=args.platform)))
