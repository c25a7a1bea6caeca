"""Parsing of `WWW-Authenticate` headers (RFC 7235) into challenges.

A registry's 401 says how to authenticate: `Bearer realm="...",service="...",scope="..."` or
`Basic realm="..."`, sometimes several challenges in one header or over several headers. Values
are quoted strings that may hold commas (`scope="repository:a:pull,push"`) and backslash escapes.
Remote input is untrusted, so the parser never raises: what it cannot read it skips.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

# RFC 7230 tchar: the characters an auth-scheme or parameter name is made of.
_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_SPACE = " \t"


@dataclass(frozen=True)
class Challenge:
    """One challenge: the scheme lower-cased (`bearer`, `basic`) and its parameters (names lower-cased)."""

    scheme: str
    params: dict[str, str] = field(default_factory=dict)

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")

    @property
    def service(self) -> str | None:
        return self.params.get("service")

    @property
    def scopes(self) -> tuple[str, ...]:
        """The space-separated scope parameter as separate scopes (it may name several resources)."""
        return tuple(self.params.get("scope", "").split())


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def skip(self, chars: str) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in chars:
            self.pos += 1

    def token(self) -> str:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] in _TCHAR:
            self.pos += 1
        return self.text[start:self.pos]

    def quoted(self) -> str:
        """A quoted-string starting at the opening quote; an unterminated one runs to the end."""
        self.pos += 1
        out = []
        while self.pos < len(self.text):
            char = self.text[self.pos]
            self.pos += 1
            if char == "\\" and self.pos < len(self.text):
                out.append(self.text[self.pos])
                self.pos += 1
            elif char == '"':
                break
            else:
                out.append(char)
        return "".join(out)

    def bare_value(self) -> str:
        """An unquoted value: lenient, it runs to the next comma or space (realms are often URLs)."""
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in "," + _SPACE:
            self.pos += 1
        return self.text[start:self.pos]


def parse_challenges(headers: str | Iterable[str]) -> list[Challenge]:
    """All challenges in one header value or in several (pass `resp.headers.getall(...)`), in order.

    A name followed by `=` is a parameter of the current challenge; a name that is not starts a new
    challenge. Parameters before any scheme, stray characters and repeated names (first wins) are ignored.
    """
    values = [headers] if isinstance(headers, str) else list(headers)
    parsed: list[tuple[str, dict[str, str]]] = []
    for value in values:
        scan = _Scanner(value)
        params: dict[str, str] | None = None  # of the challenge being read; None before the first scheme
        while not scan.at_end():
            scan.skip(_SPACE + ",")
            if scan.at_end():
                break
            name = scan.token()
            if not name:
                # Not a token where one must be: drop the character (or a whole quoted string) and go on.
                if scan.peek() == '"':
                    scan.quoted()
                else:
                    scan.pos += 1
                continue
            scan.skip(_SPACE)
            if scan.peek() != "=":
                params = {}
                parsed.append((name.lower(), params))
                continue
            scan.pos += 1
            scan.skip(_SPACE)
            param = scan.quoted() if scan.peek() == '"' else scan.bare_value()
            if params is not None:
                params.setdefault(name.lower(), param)
    return [Challenge(scheme, params) for scheme, params in parsed]
