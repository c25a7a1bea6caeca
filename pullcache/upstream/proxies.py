"""Which outbound HTTP proxy, if any, a request of one upstream goes through.

Corporate networks often reach registries only through a forward proxy. An upstream's `proxy` names
one for all its requests; without it the environment's HTTPS_PROXY / HTTP_PROXY (lower case first, then
upper case) are used by the target's scheme. curl reads https_proxy in either case but http_proxy only in
lower case (a CGI program gets HTTP_PROXY from a request's `Proxy:` header, "httpoxy"); pullcache is no CGI
program and reads HTTP_PROXY too, as the operators asked for both cases. NO_PROXY / no_proxy exempts hosts either
way, the way curl reads it: entries separated by commas or spaces, `*` as the whole value for every host
(an entry `*` in a list matches nothing), a name
matching itself and every name under it (`example.com` and `.example.com` both match `a.example.com`),
an IP address matching itself and a CIDR (`10.0.0.0/8`) the addresses in it, when the URL's host is an
address literal (names are not resolved for it). Token realms and blob redirects are sent through the
same choice, since they go through the same Transport.send.

The proxy's credentials come from its URL (`http://user:pass@proxy:3128`) or, for the password, from
`proxy_password_env`, and go only to the proxy (Proxy-Authorization); an https target is reached through
CONNECT, which carries nothing of the request, so the proxy never sees the upstream's Authorization.
(Through an http:// upstream the proxy relays the request itself, headers included: plain HTTP hides
nothing from any hop.)
"""
from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
from yarl import URL

from ..config import UpstreamConfig


@dataclass(frozen=True)
class ProxyChoice:
    url: URL  # without credentials
    headers: Mapping[str, str]  # Proxy-Authorization, when the proxy has credentials


def _env(environ: Mapping[str, str], name: str) -> str:
    return environ.get(name.lower()) or environ.get(name.upper()) or ""


def _choice(text: str, password_env: str | None, environ: Mapping[str, str]) -> ProxyChoice | None:
    """A proxy URL as the environment or the config spells it; None for an empty one."""
    text = text.strip()
    if not text:
        return None
    url = URL(text if "://" in text else f"http://{text}")  # curl takes a bare host:port as http
    password = environ.get(password_env, "") if password_env else (url.password or "")
    headers = {"Proxy-Authorization": aiohttp.encode_basic_auth(url.user, password)} if url.user else {}
    return ProxyChoice(url.with_user(None).with_password(None).with_path("").with_query(None), headers)


@dataclass(frozen=True)
class _NoProxy:
    every: bool
    names: tuple[str, ...]
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]

    @classmethod
    def parse(cls, text: str) -> _NoProxy:
        names: list[str] = []
        networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        # `*` exempts every host only as the whole value, as curl reads it; an entry `*` in a list matches no
        # host (Go would exempt all): a list is meant to name hosts, and sending everything direct by mistake
        # is the worse surprise on a network that reaches out only through the proxy.
        entries = [e for e in re.split(r"[,\s]+", text.strip()) if e and e != "*"]
        for entry in entries:
            entry = entry.lower().strip("[]")
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            name = entry.lstrip(".").rstrip(".")
            name = re.sub(r":\d+$", "", name)  # a port in an entry is ignored, as by curl
            if name:
                names.append(name)
        return cls(text.strip() == "*", tuple(names), tuple(networks))

    def exempts(self, host: str) -> bool:
        host = host.lower().strip("[]").rstrip(".")
        if self.every:
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return any(host == name or host.endswith("." + name) for name in self.names)
        return any(address in network for network in self.networks)


class Proxies:
    """The proxy choice of one upstream, read once from its config and the environment at start."""

    def __init__(self, config: UpstreamConfig, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        self._no_proxy = _NoProxy.parse(_env(environ, "no_proxy"))
        fixed = _choice(config.proxy, config.proxy_password_env, environ) if config.proxy else None
        self._by_scheme = {
            "http": fixed or _choice(_env(environ, "http_proxy"), None, environ),
            "https": fixed or _choice(_env(environ, "https_proxy"), None, environ),
        }

    @property
    def hosts(self) -> frozenset[str]:
        """The proxies' own hosts: pullcache connects to them whatever their addresses (the operator named them)."""
        return frozenset((c.url.host or "").lower() for c in self._by_scheme.values() if c is not None)

    def for_url(self, url: URL) -> ProxyChoice | None:
        choice = self._by_scheme.get(url.scheme)
        if choice is None or self._no_proxy.exempts(url.host or ""):
            return None
        return choice
