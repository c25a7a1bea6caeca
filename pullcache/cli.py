"""Command line: serve, gc, warm, check-config, token. Every command reads proxy.yml plus PULLCACHE_* overrides."""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import ssl
import sys
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from pullcache import __version__
from pullcache.config import Config, ConfigError, load_config, parse_duration
from pullcache.startup import ListenError, announce, bind, fallbacks, push_policy
from pullcache.tokens import TokenError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pullcache", description="Pull-through caching proxy for OCI registries")
    parser.add_argument("--version", action="version", version=f"pullcache {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("-c", "--config", default="proxy.yml", help="path to proxy.yml (default: %(default)s)")
        return sub

    serve = command("serve", "run the registry")
    serve.add_argument("--workers", type=int, metavar="N",
                       help="processes sharing the port and the store (default: the config's workers, 1)")
    gc = command("gc", "run one garbage-collection sweep now (safe while a server runs on the same storage)")
    gc.add_argument("--dry-run", action="store_true", help="print what would be removed, remove nothing")
    warm = command("warm", "pre-fill the cache with images")
    warm.add_argument("images", nargs="+", metavar="IMAGE", help="e.g. alpine:3.20 or ghcr.io/org/app:v1")
    warm.add_argument("--platform", help="os/arch[/variant]; default: every platform of an index")
    command("check-config", "validate the config and print the effective settings")
    token = command("token", "robot tokens for CI: create, list, revoke")
    token_commands = token.add_subparsers(dest="token_command", required=True)
    create = token_commands.add_parser("create", help="make a token and print its secret (once)")
    create.add_argument("--name", required=True, help="the user name clients log in with, e.g. ci-team-a")
    create.add_argument("--access", required=True, action="append", metavar="GLOB:ACTIONS",
                        help="e.g. 'team-a/**:push,pull' (repeatable); actions: pull, push, delete")
    create.add_argument("--expires", help="lifetime, e.g. 90d (default: never)")
    revoke = token_commands.add_parser("revoke", help="stop a token from working (within a request)")
    revoke.add_argument("name")
    list_tokens = token_commands.add_parser("list", help="every token, its access, expiry and state")
    for sub in (create, revoke, list_tokens):  # -c before or after the token command
        sub.add_argument("-c", "--config", dest="token_config", help="path to proxy.yml (default: proxy.yml)")
    return parser


def _check_storage(config: Config) -> None:
    """storage.path must exist or be creatable, and take a new file: the server writes there first thing."""
    path = Path(config.storage.path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise ConfigError(f"storage.path: {str(path)!r} cannot be created or written ({exc.strerror})") from exc
    _check_backend_of(config, path)
    if config.storage.backend == "s3":
        _check_bucket(config)


def _check_backend_of(config: Config, path: Path) -> None:
    """storage.path must not be another backend's (a filesystem store for s3, another bucket's cache)."""
    from pullcache.cache.backends import claim_path
    from pullcache.cache.configured import where
    from pullcache.cache.errors import StorageMisconfigured

    owner = where(config.storage.s3) if config.storage.backend == "s3" else None
    try:
        claim_path(path.resolve(), owner, write=False)
    except StorageMisconfigured as exc:
        raise ConfigError(f"storage.path: {exc}") from exc


def _check_bucket(config: Config) -> None:
    """storage.s3.bucket must exist and take a write: one line saying why not, no traceback."""
    from pullcache.cache.configured import check_bucket
    from pullcache.cache.errors import StorageMisconfigured, StorageUnavailable

    try:
        asyncio.run(check_bucket(config.storage.s3))
    except (StorageMisconfigured, StorageUnavailable) as exc:
        raise ConfigError(f"storage.s3.bucket: {exc}") from exc


def _ssl_context(config: Config) -> ssl.SSLContext | None:
    """The server's TLS context from tls.cert and tls.key, None for plain HTTP."""
    if not config.tls.enabled:
        return None
    cert, key = str(config.tls.cert), str(config.tls.key)
    for name, path in (("tls.cert", cert), ("tls.key", key)):
        try:
            Path(path).open("rb").close()
        except OSError as exc:
            raise ConfigError(f"{name}: {path!r} cannot be read ({exc.strerror})") from exc
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise ConfigError(f"tls.cert: {cert!r} and tls.key {key!r} are not a PEM certificate and its private key "
                          f"({reason})") from exc
    return context


def _check_cluster(config: Config) -> None:
    """The cluster section's one-line refusals; its warnings on stderr."""
    from pullcache.cluster.settings import check_cluster

    for warning in check_cluster(config):
        print(f"pullcache: warning: {warning}", file=sys.stderr)


def _serve(config: Config) -> int:
    from pullcache.logs import configure_logging

    configure_logging(config.log)
    if config.workers > 1:
        from pullcache.workers import metrics_directory, serve_workers

        with metrics_directory():  # before anything imports prometheus_client (pullcache.cluster does)
            _check_cluster(config)
            return serve_workers(config, _ssl_context(config), _check_storage)
    _check_cluster(config)
    from aiohttp import web

    from pullcache.app import build_app

    _check_storage(config)
    ssl_context = _ssl_context(config)
    app = build_app(config)  # reads auth.htpasswd: a bad file is a config error, not a traceback
    sockets = bind(config.host, config.port)
    announce(app, config, sockets)
    web.run_app(app, sock=sockets, ssl_context=ssl_context, access_log=None, print=None, handle_signals=True)
    return 0


def _backend(config: Config) -> str:
    """`filesystem` or `s3 s3://bucket/prefix at <endpoint>, ...` for check-config."""
    storage = config.storage
    if storage.backend == "filesystem":
        return "filesystem"
    from pullcache.cache.configured import where

    s3 = storage.s3
    redirect = f"redirect (presigned, {s3.redirect_ttl:g}s)" if s3.redirect else "no redirect"
    return (f"s3 {where(s3)} at {s3.endpoint or f'AWS {s3.region}'}, local cache {s3.local_cache} bytes, {redirect}, "
            f"credentials {'from the config' if s3.access_key else 'from the AWS chain'}")


def _check_config(config: Config, path: str) -> int:
    """Everything serve checks before it starts, without starting (storage.path is created if absent)."""
    from pullcache.api.auth import Authenticator
    from pullcache.audit import check_target
    from pullcache.cluster.settings import describe_cluster
    from pullcache.tokens import RobotTokens

    _check_cluster(config)
    _check_storage(config)
    # The htpasswd file must exist and hold only bcrypt entries; rules and groups must name known users.
    Authenticator(config.auth, robots=RobotTokens(config.storage.path))
    check_target(config.log)
    _ssl_context(config)
    print(f"{path}: OK")
    workers = f", {config.workers} workers" if config.workers > 1 else ""
    print(f"  listen {config.listen} ({'https' if config.tls.enabled else 'http'}{workers})")
    print(f"  storage {config.storage.path}, cached content bounded at {config.storage.max_size} bytes")
    print(f"  backend {_backend(config)}")
    print(f"  {describe_cluster(config)}")
    for upstream in config.upstreams:
        marker = " (default)" if upstream.default else ""
        print(f"  upstream {upstream.name}{marker} -> {upstream.url}{fallbacks(upstream)}, "
              f"manifest_ttl {upstream.manifest_ttl:g}s")
    print(f"  {push_policy(config)}")
    if config.log.audit:
        print(f"  audit log {config.log.audit}{' (pulls too)' if config.log.audit_pulls else ''}")
    for endpoint in config.notifications.endpoints:
        print(f"  events to {endpoint.name} ({', '.join(endpoint.events)}) -> {endpoint.url}")
    return 0


def _when(timestamp: float | None) -> str:
    return "never" if timestamp is None else datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _token_command(config: Config, args: argparse.Namespace) -> int:
    """create prints only the secret on stdout (so `$(pullcache token create ...)` captures it); the rest
    of what it says goes to stderr."""
    import getpass

    from pullcache.api.auth import load_htpasswd
    from pullcache.audit import append_event
    from pullcache.tokens import Grant, TokenFile

    tokens = TokenFile(config.storage.path)
    operator = getpass.getuser()
    if args.token_command == "create":
        grants = [Grant.parse(text) for text in args.access]
        expires = parse_duration(args.expires, "--expires") if args.expires is not None else None
        if config.auth.htpasswd and args.name in load_htpasswd(config.auth.htpasswd):
            raise TokenError(f"--name: {args.name!r} is a user of auth.htpasswd (expected a name of its own)")
        secret = tokens.create(args.name, grants, expires)
        append_event(config.log, "token_create", "success", principal=operator, reference=args.name,
                     access=[str(g) for g in grants])
        print(secret)
        print(f"token {args.name!r} created; the secret above is shown only now: "
              f"docker login -u {args.name} --password-stdin", file=sys.stderr)
    elif args.token_command == "revoke":
        tokens.revoke(args.name)
        append_event(config.log, "token_revoke", "success", principal=operator, reference=args.name)
        print(f"token {args.name!r} revoked", file=sys.stderr)
    else:
        print(f"{'NAME':24} {'ACCESS':40} {'CREATED':20} {'EXPIRES':20} STATE")
        for robot in sorted(tokens.robots().values(), key=lambda r: r.name):
            access = " ".join(str(g) for g in robot.grants)
            print(f"{robot.name:24} {access:40} {_when(robot.created):20} {_when(robot.expires):20} {robot.status()}")
    return 0


def _run(args: argparse.Namespace) -> int:
    config = load_config(getattr(args, "token_config", None) or args.config)
    if args.command == "token":
        return _token_command(config, args)
    if args.command == "serve":
        return _serve(config if args.workers is None else dataclasses.replace(config, workers=args.workers))
    if args.command == "check-config":
        return _check_config(config, args.config)
    if args.command == "gc":
        from pullcache.eviction.gc import run_gc_command
        return asyncio.run(run_gc_command(config, dry_run=args.dry_run))
    from pullcache.warm import run_warm_command
    return asyncio.run(run_warm_command(config, args.images, platform=args.platform))


class UsageError(Exception):
    """An argument the command cannot use; the message is the one line to print."""


def _check_arguments(args: argparse.Namespace) -> None:
    """What argparse cannot check, before any config or storage is opened."""
    if args.command == "serve" and args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers: {args.workers} is not a positive integer")
    if args.command == "warm" and args.platform is not None:
        from pullcache.warm import WarmError, check_platform
        try:
            check_platform(args.platform)
        except WarmError as exc:
            raise UsageError(str(exc)) from exc


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        _check_arguments(args)
        code = _run(args)
    except ConfigError as exc:  # whichever command and step finds it: one line naming the key, no traceback
        print(f"pullcache: config error: {exc}", file=sys.stderr)
        code = 2
    except (UsageError, TokenError) as exc:  # e.g. warm --platform linux, token create --access 'x:fly'
        print(f"pullcache: {exc}", file=sys.stderr)
        code = 2
    except ListenError as exc:  # the port is taken, or the host is not an address of this machine
        print(f"pullcache: {exc}", file=sys.stderr)
        code = 1
    if args.command == "serve":
        sys.exit(code)
    _exit_at_once(code)


def _exit_at_once(code: int) -> None:
    """End a one-shot command without the interpreter's finalization: the S3 client's runtime threads, still
    winding down the last request's connection, sometimes abort it (SIGABRT after check-config printed OK).
    What a command wrote is flushed first; it has nothing else to clean up."""
    from pullcache.logs import flush_logs

    flush_logs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
