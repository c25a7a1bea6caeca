"""A small synchronous OCI distribution client over plain HTTP (standard library only).

It follows the registry's own auth challenge (Bearer token flow or Basic), so the same
code seeds a token-protected Distribution and pushes to a pullcache with htpasswd.
Synchronous on purpose: fixtures are sync and the benchmark runs it in a thread.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import re
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]  # keys lower-cased
    body: bytes


class RegistryError(RuntimeError):
    """A registry answered with an unexpected status."""

    def __init__(self, what: str, response: Response) -> None:
        super().__init__(f"{what}: HTTP {response.status}: {response.body[:500]!r}")
        self.response = response


class RegistryClient:
    """Talks to one registry at `base_url` (e.g. ``http://127.0.0.1:5000``)."""

    def __init__(
        self,
        base_url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 120.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.username = username
        self.password = password
        self.timeout = timeout
        self._auth: dict[str, str] = {}  # repository ("" for none) -> Authorization value

    # --- raw requests ------------------------------------------------------------------

    def request(
        self,
        method: str,
        path_or_url: str,
        *,
        repo: str = "",
        body: bytes | Iterable[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        """One request; on 401 answer the challenge and retry once (bytes bodies only)."""
        response = self._send(method, path_or_url, repo, body, headers)
        if response.status == 401 and (body is None or isinstance(body, bytes)):
            self._auth[repo] = self._answer_challenge(response.headers.get("www-authenticate", ""))
            response = self._send(method, path_or_url, repo, body, headers)
        return response

    def _send(
        self,
        method: str,
        path_or_url: str,
        repo: str,
        body: bytes | Iterable[bytes] | None,
        headers: Mapping[str, str] | None,
    ) -> Response:
        url = urllib.parse.urljoin(self.base_url + "/", path_or_url)
        parts = urllib.parse.urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        all_headers = dict(headers or {})
        if repo in self._auth:
            all_headers["Authorization"] = self._auth[repo]
        if body is None and method in ("PUT", "POST", "PATCH"):
            body = b""
        conn = http.client.HTTPConnection(parts.netloc, timeout=self.timeout)
        try:
            conn.request(method, target, body=body, headers=all_headers)
            raw = conn.getresponse()
            data = raw.read()
            return Response(raw.status, {k.lower(): v for k, v in raw.getheaders()}, data)
        finally:
            conn.close()

    def _answer_challenge(self, challenge: str) -> str:
        scheme, _, params_text = challenge.partition(" ")
        params = dict(_CHALLENGE_PARAM.findall(params_text))
        if scheme.lower() == "basic":
            if self.username is None:
                raise RuntimeError("registry wants Basic auth and the client has no credentials")
            return "Basic " + self._basic()
        if scheme.lower() != "bearer" or "realm" not in params:
            raise RuntimeError(f"cannot answer auth challenge {challenge!r}")
        query = {k: v for k, v in params.items() if k in ("service", "scope")}
        token_url = params["realm"] + "?" + urllib.parse.urlencode(query)
        request = urllib.request.Request(token_url)
        if self.username is not None:
            request.add_header("Authorization", "Basic " + self._basic())
        with urllib.request.urlopen(request, timeout=self.timeout) as answer:
            payload = json.load(answer)
        return "Bearer " + (payload.get("token") or payload["access_token"])

    def _basic(self) -> str:
        return base64.b64encode(f"{self.username}:{self.password or ''}".encode()).decode()

    # --- registry operations -------------------------------------------------------------

    def blob_exists(self, repo: str, digest: str) -> bool:
        response = self.request("HEAD", f"/v2/{repo}/blobs/{digest}", repo=repo)
        if response.status not in (200, 404):
            raise RegistryError(f"HEAD blob {repo}@{digest}", response)
        return response.status == 200

    def get_blob(self, repo: str, digest: str) -> bytes:
        response = self.request("GET", f"/v2/{repo}/blobs/{digest}", repo=repo)
        if response.status != 200:
            raise RegistryError(f"GET blob {repo}@{digest}", response)
        return response.body

    def upload_blob(self, repo: str, data: bytes) -> str:
        """Monolithic upload (POST then PUT with the bytes); returns the digest."""
        digest = sha256_digest(data)
        location = self._start_upload(repo)
        response = self.request(
            "PUT", _with_digest(location, digest), repo=repo, body=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        if response.status != 201:
            raise RegistryError(f"PUT blob {repo}@{digest}", response)
        return digest

    def upload_blob_stream(self, repo: str, chunks: Iterable[bytes]) -> tuple[str, int]:
        """Stream `chunks` in one chunked PATCH, hashing as they go; returns (digest, size).

        Nothing is held in memory beyond one chunk, so a 1 GiB layer costs one pass.
        """
        location = self._start_upload(repo)  # answers any auth challenge before streaming
        hasher = hashlib.sha256()
        size = 0

        def counted() -> Iterator[bytes]:
            nonlocal size
            for chunk in chunks:
                hasher.update(chunk)
                size += len(chunk)
                yield chunk

        response = self.request(
            "PATCH", location, repo=repo, body=counted(),
            headers={"Content-Type": "application/octet-stream"},
        )
        if response.status != 202:
            raise RegistryError(f"PATCH upload {repo}", response)
        digest = "sha256:" + hasher.hexdigest()
        response = self.request("PUT", _with_digest(response.headers["location"], digest), repo=repo)
        if response.status != 201:
            raise RegistryError(f"PUT upload {repo}@{digest}", response)
        return digest, size

    def _start_upload(self, repo: str) -> str:
        response = self.request("POST", f"/v2/{repo}/blobs/uploads/", repo=repo)
        if response.status != 202:
            raise RegistryError(f"POST upload {repo}", response)
        return response.headers["location"]

    def put_manifest(self, repo: str, reference: str, data: bytes, media_type: str) -> str:
        """PUT a manifest by tag or digest; returns the digest the registry computed."""
        response = self.request(
            "PUT", f"/v2/{repo}/manifests/{reference}", repo=repo, body=data,
            headers={"Content-Type": media_type},
        )
        if response.status != 201:
            raise RegistryError(f"PUT manifest {repo}:{reference}", response)
        return response.headers.get("docker-content-digest", sha256_digest(data))

    def get_manifest(self, repo: str, reference: str, accept: Sequence[str]) -> Response:
        response = self.request(
            "GET", f"/v2/{repo}/manifests/{reference}", repo=repo,
            headers={"Accept": ", ".join(accept)},
        )
        if response.status != 200:
            raise RegistryError(f"GET manifest {repo}:{reference}", response)
        return response


def _with_digest(location: str, digest: str) -> str:
    separator = "&" if "?" in location else "?"
    return f"{location}{separator}digest={urllib.parse.quote(digest)}"
