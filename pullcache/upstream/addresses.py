"""Which addresses pullcache may connect to on behalf of one upstream.

Blob redirects and token realms name hosts chosen by the remote side. Followed blindly, a hostile
upstream could point pullcache at a service only pullcache's network can reach (a database on
10.x, the cloud metadata endpoint at 169.254.169.254, an admin port on loopback) and have its answer
relayed to a client. So a host is contacted only when the operator trusts it by name (the upstream's
own host, `redirect_hosts`, `token_hosts`, and Docker Hub's built-in token host) or when every address
it has is public.

The check sits in the name resolver of the upstream's connection pool, so the addresses checked are
the very addresses connected to: a name cannot resolve to a public address for the check and to a
private one for the connection (DNS rebinding). Each new connection resolves again (no DNS cache in
the pool; the system resolver caches), and an address literal in a URL, which never reaches a
resolver, is checked before the request is sent.

Through an outbound proxy (proxies.py) the proxy resolves the target and pullcache connects only to the
proxy, which the operator named and is trusted. An untrusted target name is then resolved here first and
refused if any address is not public, as without a proxy; a name pullcache cannot resolve (networks that
reach the outside only through the proxy often cannot) is left to the proxy and its own access rules.
That check cannot be bound to the connection as the resolver's is: the proxy's DNS answer may differ.
"""
from __future__ import annotations

import ipaddress
import socket

from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from ..config import UpstreamConfig

# Registries whose realm lives on a sibling host, keyed by the registry's host: so a plain
# `url: https://registry-1.docker.io` works without token_hosts, and only for that very host.
BUILTIN_TOKEN_HOSTS = {"registry-1.docker.io": ("auth.docker.io",)}


class AddressRefused(OSError):
    """A host resolved to (or is) an address pullcache may not contact for this upstream."""

    def __init__(self, host: str, address: str) -> None:
        super().__init__(f"{host} has the non-public address {address}")
        self.host = host
        self.address = address


def is_public(address: str) -> bool:
    """Whether an IP address is globally routable unicast (not loopback, private, link-local, shared, reserved)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def own_host(config: UpstreamConfig) -> str:
    return (URL(config.url).host or "").lower()


def token_hosts(config: UpstreamConfig) -> frozenset[str]:
    """Hosts the operator allows to serve token realms, besides the upstream's own origin."""
    return frozenset({*(h.lower() for h in config.token_hosts), *BUILTIN_TOKEN_HOSTS.get(own_host(config), ())})


def redirect_hosts(config: UpstreamConfig) -> frozenset[str]:
    return frozenset(h.lower() for h in config.redirect_hosts)


def trusted_hosts(config: UpstreamConfig) -> frozenset[str]:
    """Hosts contacted whatever their addresses: the operator named them."""
    return frozenset({own_host(config), *token_hosts(config), *redirect_hosts(config)})


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


def check_literal(config: UpstreamConfig, host: str) -> None:
    """Refuse an untrusted address literal that is not public (a name is checked when it is resolved)."""
    host = host.lower()
    if host not in trusted_hosts(config) and _is_literal(host) and not is_public(host):
        raise AddressRefused(host, host)


class GuardedResolver(AbstractResolver):
    """Resolves with `inner` and passes on the answer only if the host is trusted or every address is public."""

    def __init__(self, config: UpstreamConfig, inner: AbstractResolver, proxies: frozenset[str] = frozenset()
                 ) -> None:
        self._config_trusted = trusted_hosts(config)
        # The outbound proxies' hosts pass too: the pool resolves them to connect to the proxy. A request sent
        # straight to such a host is no request to the proxy, and the transport checks it first (check()).
        self._trusted = self._config_trusted | proxies
        self._inner = inner

    def trusts(self, host: str) -> bool:
        """Whether a request to host needs no address check: the operator named it (as more than a proxy), or
        it is an address literal (check_literal sees to those)."""
        host = host.lower().rstrip(".")
        return host in self._config_trusted or _is_literal(host)

    async def check(self, host: str, port: int = 0) -> None:
        """Resolve host and refuse it if any address is not public, whoever trusts it (AddressRefused); a name
        that does not resolve raises the resolver's OSError."""
        self._refuse_private(host, await self._inner.resolve(host, port, socket.AF_UNSPEC))

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[ResolveResult]:
        answers = await self._inner.resolve(host, port, family)
        if host.lower().rstrip(".") not in self._trusted:
            self._refuse_private(host, answers)
        return answers

    @staticmethod
    def _refuse_private(host: str, answers: list[ResolveResult]) -> None:
        for answer in answers:
            if not is_public(answer["host"]):
                raise AddressRefused(host, answer["host"])

    async def close(self) -> None:
        await self._inner.close()
