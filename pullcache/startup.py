"""`pullcache serve` start-up: bind the listening sockets and say in one line what is being served.

The sockets are bound here, before aiohttp starts, so that a port already taken or a host that does
not resolve is one line naming the address instead of a traceback. `[::]` binds one dual-stack
socket (IPV6_V6ONLY off), which accepts IPv4 clients too: what IPv6 and dual-stack clusters need
(a kernel that cannot turn IPV6_V6ONLY off gets a second socket on 0.0.0.0 instead).
"""
from __future__ import annotations

import logging
import os
import socket
from typing import TYPE_CHECKING

from pullcache import __version__
from pullcache.config import Config, UpstreamConfig
from pullcache.logs import flush_logs

if TYPE_CHECKING:  # the CLI imports this module for every command; aiohttp only for serve
    from aiohttp import web

BACKLOG = 128  # aiohttp's own default for the sockets it binds
GiB = 1024**3

log = logging.getLogger("pullcache.startup")


class ListenError(Exception):
    """The server cannot have its address; the message is the one line to print."""


def address(host: str, port: int) -> str:
    """`127.0.0.1:5000`, `[::1]:5000`: how a client writes it."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _reason(exc: OSError) -> str:
    """`address already in use`: socket.create_server() replaces strerror with its own longer text."""
    if isinstance(exc, socket.gaierror) or not exc.errno:
        return str(exc.strerror or exc).lower()
    return os.strerror(exc.errno).lower()


def _addresses(host: str, port: int) -> list[tuple[socket.AddressFamily, str]]:
    """What to bind for `host`: `::` is every address of both families, a name every address it resolves to."""
    if host == "::":
        if socket.has_dualstack_ipv6():
            return [(socket.AF_INET6, "::")]
        return [(socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")]  # a kernel without IPV6_V6ONLY=0
    resolved = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    return list(dict.fromkeys((info[0], str(info[4][0])) for info in resolved))  # each address once


def bind(host: str, port: int, *, reuse_port: bool = False) -> list[socket.socket]:
    """Listening sockets for `host:port`, all on one port; reuse_port: with SO_REUSEPORT, so that each worker
    of `workers: N` may have a set of its own on the same port (pullcache.workers)."""
    sockets: list[socket.socket] = []
    try:
        for family, ip in _addresses(host, port):
            # Port 0 picks a port once: every other address then listens on that one.
            chosen = port or (int(sockets[0].getsockname()[1]) if sockets else 0)
            sockets.append(socket.create_server((ip, chosen), family=family, backlog=BACKLOG, reuse_port=reuse_port,
                                                dualstack_ipv6=ip == "::" and socket.has_dualstack_ipv6()))
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise ListenError(f"cannot listen on {address(host, port)}: {_reason(exc)}") from exc
    return sockets


def push_policy(config: Config) -> str:
    """Who may push and delete, as the start-up line says it."""
    if config.auth.access:
        groups = f", {len(config.auth.groups)} groups" if config.auth.groups else ""
        allowed = f"pushes, pulls and deletes decided by auth.access ({len(config.auth.access)} rules{groups})"
    elif config.local.anonymous_push:
        allowed = "pushes allowed for anyone (local.anonymous_push: true)"
    elif config.auth.htpasswd:
        allowed = "pushes allowed for the users in auth.htpasswd"
    else:
        return "pushes refused: no users (set auth.htpasswd, or local.anonymous_push: true)"
    if config.local.allow_push:
        allowed += f", to {', '.join(config.local.allow_push)}"
    return allowed


def fallbacks(upstream: UpstreamConfig) -> str:
    """`, fallback https://b then https://c`: the URLs asked after the primary, in order; "" for none."""
    rest = upstream.all_urls[1:]
    return f", fallback {' then '.join(rest)}" if rest else ""


def summary(config: Config, sockets: list[socket.socket]) -> str:
    """The one start-up line: version, addresses, storage, upstreams, pushes (and the workers, when several)."""
    scheme = "https" if config.tls.enabled else "http"
    listening = ", ".join(f"{scheme}://{address(*sock.getsockname()[:2])}" for sock in sockets)
    if any(sock.family == socket.AF_INET6 and not sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
           for sock in sockets):
        listening += " (IPv6 and IPv4)"
    upstreams = ", ".join(f"{u.name} -> {u.url}{' (default)' if u.default else ''}{fallbacks(u)}"
                          for u in config.upstreams)
    return (f"pullcache {__version__} listening on {listening}; storage {config.storage.path} "
            f"(cached content up to {config.storage.max_size / GiB:.1f} GiB); upstreams {upstreams or 'none'}; "
            f"{push_policy(config)}{f'; {config.workers} workers' if config.workers > 1 else ''}")


def say_started(config: Config, sockets: list[socket.socket]) -> None:
    """Log the start-up line, and the anonymous-push warning: once, whatever the number of workers."""
    log.info("%s", summary(config, sockets))
    reachable = address(config.host, sockets[0].getsockname()[1]) if sockets else config.listen
    if config.local.anonymous_push and config.auth.access:
        log.warning("local.anonymous_push has no effect: auth.access decides who may push (grant push to "
                    "anonymous in a rule to allow anonymous pushes)")
    elif config.local.anonymous_push:
        log.warning("local.anonymous_push is true: anyone who can reach %s may push and delete images, and a "
                    "pushed bare name (such as team/app) hides the default upstream's image of that name",
                    reachable)
    flush_logs()  # out before the first request is answered (nothing is served yet: waiting blocks no one)


def announce(app: web.Application, config: Config, sockets: list[socket.socket]) -> None:
    """Say it has started (say_started) once the app's resources are open."""
    async def on_startup(_app: web.Application) -> None:
        say_started(config, sockets)

    app.on_startup.append(on_startup)
