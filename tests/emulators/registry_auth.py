"""A token-auth front for a Docker registry, so the bearer flow is tested without Docker's auth server.

One aiohttp server on 127.0.0.1 (port 0, read back) that plays both halves of distribution's token
auth (`docs/content/spec/auth/token.md`; reference/build-test-deploy-apis.md section 5):

* `GET /token?service=…&scope=…` is the token service: basic credentials are checked against
  `users`; wrong ones -> 401 UNAUTHORIZED; none -> an anonymous token that grants nothing (what
  Docker Hub does for a private repository). The answer is
  `{"token", "access_token", "expires_in", "issued_at"}` (`token_fields` picks which of the first
  two are present). Every request is recorded in `token_requests`.
* `/v2/…` is the registry: without a token that grants `repository:<name>:pull` (any valid token
  for `/v2/` itself) it answers 401 with
  `WWW-Authenticate: Bearer realm="<url>/token",service="<service>",scope="repository:<name>:pull"`
  (plus `error="insufficient_scope"` when the token is valid but lacks the scope) and
  distribution's UNAUTHORIZED body. Behind that it either proxies to a real registry
  (`upstream=`, Accept header passed on) or emulates the two read endpoints from `add_manifest()`:
  manifests by tag or digest (strict about `Accept` like docker/distribution 2.8: 400
  MANIFEST_INVALID for a schema-2 manifest not accepted, 404 "OCI manifest found, but accept header
  does not support OCI manifests") and `tags/list` with `n`/`last` and a `Link` header, as
  distribution 3 pages.

`users=None` turns auth off (a plain proxy or emulator). Knobs for the awkward cases:
`strip_accept` (a proxy that drops the Accept header), `omit_digest` (no Docker-Content-Digest),
`revoke_tokens()` (the registry forgets every token issued so far).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import web

PULL = "repository:{}:pull"
_PASSED_ON = {"content-type", "docker-content-digest", "link", "docker-distribution-api-version", "etag"}


@dataclass(frozen=True)
class TokenRequest:
    user: str | None  # None: anonymous
    service: str
    scope: str


@dataclass
class _Grant:
    scopes: frozenset[str]
    expires_at: float


@dataclass
class RegistryAuthFront:
    """See the module docstring. Use as `async with RegistryAuthFront(...) as front:`; `front.url`."""

    upstream: str | None = None
    users: Mapping[str, str] | None = field(default_factory=lambda: {"robot": "s3cret"})
    service: str = "opsloop-test-registry"
    expires_in: int | None = 300
    token_fields: tuple[str, ...] = ("token", "access_token")
    strip_accept: bool = False
    omit_digest: bool = False
    url: str = field(default="", init=False)
    token_requests: list[TokenRequest] = field(default_factory=list, init=False)
    registry_requests: list[tuple[str, str]] = field(default_factory=list, init=False)  # (method, path_qs)
    _grants: dict[str, _Grant] = field(default_factory=dict, init=False)
    _manifests: dict[tuple[str, str], tuple[str, bytes]] = field(default_factory=dict, init=False)
    _runner: web.AppRunner | None = field(default=None, init=False)
    _client: aiohttp.ClientSession | None = field(default=None, init=False)

    # ------------------------------------------------------------------ control

    def add_manifest(self, repository: str, tag: str, body: bytes, media_type: str) -> str:
        """Store a manifest under a tag (emulated registry); its digest."""
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        self._manifests[(repository, tag)] = (media_type, body)
        self._manifests[(repository, digest)] = (media_type, body)
        return digest

    def grant(self, *scopes: str) -> str:
        """A token for these scopes issued out of band (a registry access token handed to opsloop)."""
        token = secrets.token_urlsafe(24)
        self._grants[token] = _Grant(frozenset(scopes), time.monotonic() + 3600)
        return token

    def revoke_tokens(self) -> None:
        self._grants.clear()

    async def __aenter__(self) -> RegistryAuthFront:
        app = web.Application()
        app.router.add_get("/token", self._token)
        app.router.add_route("*", "/v2/{tail:.*}", self._registry)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        if self.upstream:
            self._client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        return self

    async def __aexit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        if self._client is not None:
            await self._client.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # ------------------------------------------------------------------ the token service

    async def _token(self, request: web.Request) -> web.Response:
        user = None
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            if self.users is None or self.users.get(user) != password:
                return _error(401, "UNAUTHORIZED", "authentication required")
        scope = " ".join(request.query.getall("scope", []))
        self.token_requests.append(TokenRequest(user, request.query.get("service", ""), scope))
        # Anonymous tokens are valid but grant nothing: the registry then says insufficient_scope.
        granted = frozenset(scope.split()) if user else frozenset()
        token = secrets.token_urlsafe(24)
        self._grants[token] = _Grant(granted, time.monotonic() + (self.expires_in or 60))
        body: dict[str, Any] = {f: token for f in self.token_fields}
        if self.expires_in is not None:
            body["expires_in"] = self.expires_in
        body["issued_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return web.json_response(body)

    # ------------------------------------------------------------------ the registry

    async def _registry(self, request: web.Request) -> web.StreamResponse:
        self.registry_requests.append((request.method, request.path_qs))
        tail = request.match_info["tail"]
        name = _repository_of(tail)
        if self.users is not None:
            needed = PULL.format(name) if name else None
            header = request.headers.get("Authorization", "")
            grant = self._grants.get(header[7:]) if header.startswith("Bearer ") else None
            if grant is None or grant.expires_at < time.monotonic():
                return self._challenge(needed, insufficient=False)
            if needed and needed not in grant.scopes:
                return self._challenge(needed, insufficient=True)
        accept = "" if self.strip_accept else ",".join(request.headers.getall("Accept", []))
        if self.upstream:
            return await self._proxy(request, accept)
        return self._emulate(request, tail, name, accept)

    def _challenge(self, scope: str | None, *, insufficient: bool) -> web.Response:
        value = f'Bearer realm="{self.url}/token",service="{self.service}"'
        if scope:
            value += f',scope="{scope}"'
        if insufficient:
            value += ',error="insufficient_scope"'
        return _error(401, "UNAUTHORIZED", "authentication required", {"WWW-Authenticate": value})

    async def _proxy(self, request: web.Request, accept: str) -> web.Response:
        assert self._client is not None and self.upstream
        headers = {"Accept": accept} if accept else {}
        async with self._client.request(
            request.method, self.upstream.rstrip("/") + request.path_qs, headers=headers, allow_redirects=False
        ) as resp:
            body = await resp.read()
            passed = {k: v for k, v in resp.headers.items() if k.lower() in _PASSED_ON}
        return self._answer(resp.status, passed, body)

    def _emulate(self, request: web.Request, tail: str, name: str | None, accept: str) -> web.Response:
        if not name:
            return self._answer(200, {"Content-Type": "application/json"}, b"{}")
        repos = {r for r, _ in self._manifests}
        if tail.endswith("/tags/list"):
            if name not in repos:
                return _error(404, "NAME_UNKNOWN", "repository name not known to registry")
            tags = sorted(t for r, t in self._manifests if r == name and not t.startswith("sha256:"))
            last = request.query.get("last")
            if last:
                tags = [t for t in tags if t > last]
            headers = {"Content-Type": "application/json"}
            n = request.query.get("n")
            if n and n.isdigit() and len(tags) > int(n):
                tags = tags[: int(n)]
                headers["Link"] = f'</v2/{name}/tags/list?last={quote(tags[-1])}&n={n}>; rel="next"'
            return self._answer(200, headers, json.dumps({"name": name, "tags": tags}).encode())
        reference = tail.rsplit("/manifests/", 1)[-1]
        stored = self._manifests.get((name, reference))
        if stored is None:
            return _error(404, "MANIFEST_UNKNOWN", "manifest unknown")
        media_type, body = stored
        if not reference.startswith("sha256:") and media_type not in accept:
            # docker/distribution 2.8: schema 2 not accepted -> it tries schema 1 and fails.
            if "oci" in media_type:
                msg = "OCI manifest found, but accept header does not support OCI manifests"
                return _error(404, "MANIFEST_UNKNOWN", msg)
            return _error(400, "MANIFEST_INVALID", "manifest invalid")
        headers = {"Content-Type": media_type, "Docker-Content-Digest": "sha256:" + hashlib.sha256(body).hexdigest()}
        return self._answer(200, headers, body)

    def _answer(self, status: int, headers: dict[str, str], body: bytes) -> web.Response:
        if self.omit_digest:
            headers.pop("Docker-Content-Digest", None)
        # aiohttp answers a HEAD with these headers (Content-Length included) and without the body.
        return web.Response(status=status, headers=headers, body=body)


def _repository_of(tail: str) -> str | None:
    """The repository a `/v2/…` path is about (None for `/v2/` itself)."""
    for marker in ("/manifests/", "/tags/list", "/blobs/"):
        if marker in tail:
            return tail.split(marker, 1)[0]
    return None


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body = json.dumps({"errors": [{"code": code, "message": message, "detail": None}]}).encode()
    all_headers = {"Content-Type": "application/json; charset=utf-8", **(headers or {})}
    return web.Response(status=status, headers=all_headers, body=body)
