"""A container registry over the Docker Registry HTTP API v2 / OCI distribution API (`bot.ports.Registry`).

Reads only: the digest of a tag, the tags of a repository, and a reachability check. One aiohttp
session, made lazily (or handed in), closed by `close()`.

`digest(repository, tag)`:

* `HEAD /v2/<repository>/manifests/<tag>` with an `Accept` listing all four manifest types (OCI
  index, Docker manifest list, OCI manifest, Docker schema 2). Registries are picky about it:
  docker/distribution 2.8 answers a tag of a schema-2 manifest asked without `Accept` with
  400 MANIFEST_INVALID (it tries to down-convert to schema 1), and an OCI manifest asked with only
  the Docker type with 404 "OCI manifest found, but accept header does not support OCI manifests".
* The digest is the `Docker-Content-Digest` header. When it is missing, malformed, or the registry
  does not do HEAD (405), the manifest is fetched with GET and the digest is the sha256 of its exact
  bytes (re-serialising the JSON would change them); a header that disagrees with those bytes is an
  error rather than a guess. Only `sha256:<64 hex>` digests come out.
* `tag` may also be a digest (`sha256:…`): the registry then confirms it holds that manifest.
* `repository` may carry this registry's host (`registry.example.com/shop/api`, the form deploy
  targets hold); it is dropped. Another registry's host is an error, not a silent lookup here.
* 404: the tag or the repository is missing. 2.8 says MANIFEST_UNKNOWN for both (and a HEAD has no
  body at all), so the tag list is asked once to tell "no tag `1.2.3` of `shop/api`" from "no
  repository `shop/api`". Both are `AdapterNotFound`.

`tags(repository)`: `GET /v2/<repository>/tags/list?n=<page_size>`, following `Link: <…>;
rel="next"` until there is none (docker/distribution 3 pages; 2.8 ignores `n` and `last` and answers
everything at once). The registry's order is meaningless (2.8's is random), so tags are sorted:
versions first, in version order, then the rest by plain string order. A version is an optional
`v`, one to three dot-separated numbers (missing ones count as 0) and an optional `-pre.release`
that sorts before the release, as in semver (1.2.0-rc.1 < 1.2.0 < 1.10.0); 1.2 and 1.2.0 are tied
and then ordered by their text.

`check()`: `GET /v2/` -> "Docker registry at URL (API v2)".

Auth, decided by what the registry answers, never assumed:

* anonymous until a 401 says otherwise;
* `401 WWW-Authenticate: Basic` -> the request is repeated once with basic auth (user, password),
  and from then on basic auth goes with every request (htpasswd registries want it every time);
* `401 WWW-Authenticate: Bearer realm=…,service=…,scope=…` -> a token is fetched from the realm
  with `service` and `scope` (with basic auth when credentials are configured, anonymously
  otherwise, as public images need), taken from `token` or `access_token`, and the request is
  repeated once with it. Tokens are cached per scope until shortly before `expires_in` (60 s when
  absent, per the token spec) ends; a cached token the registry refuses (revoked, clock skew) is
  dropped and replaced once. Concurrent requests of the same scope share one token request.
* A password without a user is a ready-made bearer token (a registry access token) and is sent as
  `Authorization: Bearer …` from the first request.
* Still 401/403 after that -> `AdapterError` about the credentials (which user, which repository).

Errors name the tool ("registry") and the registry URL: unreachable -> `AdapterUnavailable`, no
answer within `timeout` -> `AdapterTimeout`, 400 on a manifest -> `AdapterError` saying the registry
refused our Accept header (a proxy that drops it makes 2.8 do that), 429 -> `AdapterError` asking to
retry later, anything else -> `AdapterError` quoting the registry's error code and message.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import quote, urljoin, urlsplit

import aiohttp
from multidict import CIMultiDictProxy

from bot.ports import AdapterError, AdapterNotFound, AdapterTimeout, AdapterUnavailable

TOOL = "registry"

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST)
# One comma-joined header: 2.8 and 3.x both split it on commas; some proxies keep only the last of
# several Accept headers.
ACCEPT = ", ".join(MANIFEST_TYPES)

DEFAULT_PAGE_SIZE = 100
# The token spec's default lifetime when the answer has no `expires_in`.
DEFAULT_TOKEN_TTL = 60.0
# Renew a token this much (at most) before it ends, so it does not expire in flight.
TOKEN_MARGIN = 10.0
MAX_PAGES = 10_000

_SHA256 = re.compile(r"^sha256:[0-9a-f]{64}$")
_ANY_DIGEST = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")
# docker/distribution reference grammar: lowercase path components separated by `/`.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG = re.compile(r"^\w[\w.-]{0,127}$")
_VERSION = re.compile(r"^v?(\d+)(?:\.(\d+))?(?:\.(\d+))?(?:-([0-9A-Za-z.-]+))?$")
_CHALLENGE_PARAM = re.compile(r'([A-Za-z_][\w-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))')
_LINK_NEXT = re.compile(r'<([^>]*)>\s*;[^,]*?\brel\s*=\s*"?next"?', re.IGNORECASE)


def tag_sort_key(tag: str) -> tuple[Any, ...]:
    """Versions first in version order (pre-releases before their release), then the rest by text."""
    m = _VERSION.match(tag)
    if not m:
        return (1, (), tag)
    major, minor, patch, pre = m.groups()
    numbers = (int(major), int(minor or 0), int(patch or 0))
    if pre is None:
        # A release sorts after every pre-release of the same numbers.
        return (0, (*numbers, 1, ()), tag)
    # semver: numeric identifiers compare as numbers and before alphanumeric ones; a shorter list of
    # identifiers that is a prefix of a longer one sorts first (tuple order does exactly that).
    ids = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split("."))
    return (0, (*numbers, 0, ids), tag)


def sort_tags(tags: Sequence[str]) -> list[str]:
    """Tags without duplicates, in `tag_sort_key` order."""
    return sorted(set(tags), key=tag_sort_key)


@dataclass(frozen=True)
class _Answer:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    url: str


@dataclass(frozen=True)
class _Challenge:
    scheme: str  # "bearer" or "basic", lowercase
    params: Mapping[str, str]


@dataclass
class _Token:
    value: str
    expires_at: float


class DockerRegistry:
    """`bot.ports.Registry` over the Docker Registry HTTP API v2 (see the module docstring)."""

    def __init__(
        self,
        url: str,
        *,
        user: str | None = None,
        password: str | None = None,
        timeout: float,
        session: aiohttp.ClientSession | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`url` is the registry's base URL (https://registry.example.com); `user` and `password` are
        basic credentials (also used at a token service), or `password` alone a bearer token;
        `timeout` is in seconds per request; `page_size` is the `n` asked per tag page; `clock`
        (monotonic seconds) decides when cached tokens end, for tests."""
        self._url = url.rstrip("/")
        self._host = urlsplit(self._url).netloc.lower()
        self._user = user
        self._password = password
        self._timeout = timeout
        self._session = session
        self._owns_session = session is None
        self._page_size = max(1, page_size)
        self._clock = clock
        # Learnt from the registry's 401s: basic auth on every request, or a token service.
        self._use_basic = False
        self._token_service: tuple[str, str] | None = None  # (realm, service)
        self._tokens: dict[tuple[str, str, str], _Token] = {}
        self._token_locks: dict[tuple[str, str, str], asyncio.Lock] = {}

    async def close(self) -> None:
        """Close the HTTP session if this adapter made it."""
        if self._owns_session and self._session is not None and not self._session.closed:
            await self._session.close()
        if self._owns_session:
            self._session = None

    # ------------------------------------------------------------------ the port

    async def digest(self, repository: str, tag: str) -> str:
        """`sha256:…` of the tag's manifest; AdapterNotFound when the tag (or repository) does not exist."""
        repo = self._repository(repository)
        reference = self._reference(repo, tag)
        path = f"/v2/{repo}/manifests/{quote(reference, safe=':')}"
        head = await self._request("HEAD", path, repo=repo, accept=ACCEPT)
        if head.status == 200:
            header = head.headers.get("Docker-Content-Digest", "").strip()
            if _SHA256.match(header):
                return header
        elif head.status != 405:  # 405: a registry (or proxy) without HEAD; GET below
            await self._manifest_error(head, repo, tag)
        # No usable digest header: the digest is the sha256 of the manifest's exact bytes.
        got = await self._request("GET", path, repo=repo, accept=ACCEPT)
        if got.status != 200:
            await self._manifest_error(got, repo, tag)
        computed = "sha256:" + hashlib.sha256(got.body).hexdigest()
        header = got.headers.get("Docker-Content-Digest", "").strip()
        if _SHA256.match(header) and header != computed:
            raise AdapterError(
                TOOL,
                f"{self._url} says `{repo}:{tag}` is {header} but sent a manifest whose sha256 is {computed} "
                "(a proxy that rewrites responses?)",
            )
        if _ANY_DIGEST.match(reference) and reference != computed:
            raise AdapterError(TOOL, f"{self._url} answered `{repo}@{reference}` with a manifest of {computed}")
        return computed

    async def tags(self, repository: str) -> list[str]:
        """Every tag of the repository (all pages), versions first in version order, then the rest."""
        repo = self._repository(repository)
        url: str | None = f"{self._url}/v2/{repo}/tags/list?n={self._page_size}"
        seen: set[str] = set()
        found: list[str] = []
        while url is not None:
            if url in seen or len(seen) >= MAX_PAGES:
                raise AdapterError(TOOL, f"{self._url} keeps paging the tags of `{repo}` (at {url})")
            seen.add(url)
            answer = await self._request("GET", url, repo=repo, accept="application/json")
            if answer.status == 404:
                codes, said = _errors(answer.body)
                if "NAME_UNKNOWN" in codes or not codes:
                    raise AdapterNotFound(TOOL, f"no repository `{repo}` in the registry at {self._url}")
                raise AdapterNotFound(TOOL, f"no tags of `{repo}` at {self._url} ({said})")
            if answer.status != 200:
                self._raise_for(answer, repo, f"the tags of `{repo}`")
            found.extend(self._tag_page(answer, repo))
            url = self._next_page(answer)
        return sort_tags(found)

    async def check(self) -> str:
        """Reach the registry's API root; "Docker registry at URL (API v2)"."""
        answer = await self._request("GET", "/v2/", repo=None, accept="application/json")
        if answer.status == 200:
            return f"Docker registry at {self._url} (API v2)"
        if answer.status == 404:
            raise AdapterError(TOOL, f"{self._url}/v2/ does not exist: is {self._url} a Docker registry (API v2)?")
        self._raise_for(answer, None, "its API root")

    # ------------------------------------------------------------------ names

    def _repository(self, repository: str) -> str:
        name = repository.strip().strip("/")
        for scheme in ("https://", "http://"):
            if name.startswith(scheme):
                name = name[len(scheme) :]
        first, _, rest = name.partition("/")
        # A first component with a dot or a port, or `localhost`, is a registry host (Docker's rule).
        if rest and ("." in first or ":" in first or first == "localhost"):
            if first.lower() != self._host:
                raise AdapterError(TOOL, f"`{repository}` is in another registry than {self._url}")
            name = rest
        if not _REPOSITORY.match(name):
            raise AdapterError(
                TOOL,
                f"`{repository}` is not a repository name (lowercase letters, digits, `.`, `_`, `-`, parts "
                "separated by `/`)",
            )
        return name

    @staticmethod
    def _reference(repo: str, tag: str) -> str:
        reference = tag.strip()
        if not (_TAG.match(reference) or _ANY_DIGEST.match(reference)):
            raise AdapterNotFound(
                TOOL, f"no tag `{tag}` of `{repo}` (a tag is up to 128 letters, digits, `_`, `.` and `-`)"
            )
        return reference

    # ------------------------------------------------------------------ answers

    async def _manifest_error(self, answer: _Answer, repo: str, tag: str) -> NoReturn:
        """Raise the right error for a manifest request that did not answer 200."""
        if answer.status == 404:
            codes, said = _errors(answer.body)
            if "NAME_UNKNOWN" in codes or not await self._repository_exists(repo):
                raise AdapterNotFound(TOOL, f"no repository `{repo}` in the registry at {self._url}")
            if said and "accept header" in said.lower():
                # Cannot happen with our Accept unless something between us and it rewrote the header.
                raise AdapterError(TOOL, f"{self._url} refused our Accept header for `{repo}:{tag}` ({said})")
            raise AdapterNotFound(TOOL, f"no tag `{tag}` of `{repo}`")
        if answer.status == 400:
            _, said = _errors(answer.body)
            raise AdapterError(
                TOOL,
                f"{self._url} refused our Accept header (Docker schema 2 and OCI manifest types) for "
                f"`{repo}:{tag}` ({said or '400, no detail'}); docker/distribution 2.8 does that when the "
                "header does not reach it: is a proxy dropping it?",
            )
        self._raise_for(answer, repo, f"`{repo}:{tag}`")

    async def _repository_exists(self, repo: str) -> bool:
        """Whether the tag list of `repo` exists (2.8 says MANIFEST_UNKNOWN for unknown repositories too)."""
        try:
            answer = await self._request("GET", f"/v2/{repo}/tags/list?n=1", repo=repo, accept="application/json")
        except AdapterError:
            return True  # cannot tell: the tag is what is missing, as far as we know
        return not (answer.status == 404 and "NAME_UNKNOWN" in _errors(answer.body)[0])

    def _raise_for(self, answer: _Answer, repo: str | None, what: str) -> NoReturn:
        codes, said = _errors(answer.body)
        said = said or f"HTTP {answer.status}"
        if answer.status in (401, 403):
            if self._user:
                who = f"user `{self._user}`"
            else:
                who = "the token in registry.password_env" if self._password else "opsloop (no credentials configured)"
            if answer.status == 403 or "DENIED" in codes:
                raise AdapterError(TOOL, f"{self._url} denied {who} access to {what} ({said})")
            if self._user or self._password:
                raise AdapterError(
                    TOOL,
                    f"{self._url} refused the credentials of {who} for {what} ({said}); "
                    "check registry.user and the password in registry.password_env",
                )
            raise AdapterError(
                TOOL,
                f"{self._url} wants credentials for {what} ({said}); set registry.user and registry.password_env",
            )
        if answer.status == 429:
            after = answer.headers.get("Retry-After")
            later = f" in {after} s" if after and after.isdigit() else " later"
            raise AdapterError(TOOL, f"{self._url} is rate-limiting us ({said}); try again{later}")
        raise AdapterError(TOOL, f"{self._url} answered {answer.status} for {what} ({said})")

    def _tag_page(self, answer: _Answer, repo: str) -> list[str]:
        try:
            data = json.loads(answer.body)
        except ValueError:
            raise AdapterError(TOOL, f"{answer.url} did not answer JSON (is {self._url} a Docker registry?)") from None
        tags = data.get("tags") if isinstance(data, dict) else None
        if tags is None and isinstance(data, dict) and "tags" in data:
            return []  # a repository whose tags were all deleted: `"tags": null`
        if not isinstance(tags, list):
            raise AdapterError(TOOL, f"{answer.url} answered without a list of tags for `{repo}`")
        return [t for t in tags if isinstance(t, str)]

    def _next_page(self, answer: _Answer) -> str | None:
        link = ",".join(answer.headers.getall("Link", []))
        m = _LINK_NEXT.search(link)
        if not m:
            return None
        url = urljoin(answer.url, str(m.group(1)))
        # Credentials go with the next request: only to the registry itself.
        if urlsplit(url).netloc.lower() != self._host:
            raise AdapterError(TOOL, f"{self._url} sent the next page of tags to another host ({url})")
        return url

    # ------------------------------------------------------------------ HTTP and auth

    def _session_now(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            if not self._owns_session:
                raise AdapterError(TOOL, "the HTTP session handed to the adapter is closed")
            # trust_env: honour HTTPS_PROXY / NO_PROXY like the other tools' clients do.
            self._session = aiohttp.ClientSession(trust_env=True)
        return self._session

    async def _request(self, method: str, path_or_url: str, *, repo: str | None, accept: str) -> _Answer:
        """One request with whatever auth the registry asked for; repeated once after a 401 challenge."""
        url = path_or_url if "://" in path_or_url else self._url + path_or_url
        scope = f"repository:{repo}:pull" if repo else ""
        sent = self._authorization(scope)
        answer = await self._send(method, url, accept, sent)
        if answer.status != 401:
            return answer
        challenge = _challenge(answer.headers.getall("WWW-Authenticate", []))
        if challenge is None:
            return answer
        if challenge.scheme == "basic":
            if (not self._user and not self._password) or (sent and sent.startswith("Basic ")):
                return answer  # nothing (else) to offer: the caller reports the 401
            self._use_basic = True
            return await self._send(method, url, accept, self._basic())
        if challenge.scheme != "bearer" or not challenge.params.get("realm"):
            return answer
        if self._password and not self._user and sent:
            return answer  # our ready-made token was refused; there is no other to get
        realm = urljoin(self._url + "/", challenge.params["realm"])
        service = challenge.params.get("service", "")
        self._token_service = (realm, service)
        token = await self._token(realm, service, challenge.params.get("scope", scope), refused=sent)
        return await self._send(method, url, accept, f"Bearer {token}")

    def _authorization(self, scope: str) -> str | None:
        """The Authorization header to send before any challenge, from what earlier 401s taught."""
        if self._use_basic:
            return self._basic()
        if self._password and not self._user:
            return f"Bearer {self._password}"
        if self._token_service is not None:
            cached = self._tokens.get((*self._token_service, scope))
            if cached is not None and cached.expires_at > self._clock():
                return f"Bearer {cached.value}"
        return None

    def _basic(self) -> str:
        pair = f"{self._user or ''}:{self._password or ''}"
        return "Basic " + base64.b64encode(pair.encode()).decode()

    async def _token(self, realm: str, service: str, scope: str, *, refused: str | None) -> str:
        """A token for the scope: the cached one unless it expired or was just refused, else a new one."""
        key = (realm, service, scope)
        lock = self._token_locks.setdefault(key, asyncio.Lock())
        async with lock:
            cached = self._tokens.get(key)
            if cached is not None and cached.expires_at > self._clock() and refused != f"Bearer {cached.value}":
                return cached.value  # another request fetched it while we waited, or it covers this scope
            self._tokens.pop(key, None)
            value, ttl = await self._fetch_token(realm, service, scope)
            self._tokens[key] = _Token(value, self._clock() + ttl - min(TOKEN_MARGIN, ttl / 10))
            return value

    async def _fetch_token(self, realm: str, service: str, scope: str) -> tuple[str, float]:
        params = {k: v for k, v in (("service", service), ("scope", scope)) if v}
        headers = {"Accept": "application/json", "User-Agent": "opsloop"}
        if self._user or self._password:
            headers["Authorization"] = self._basic()
        answer = await self._send_to(f"{realm} (the token service of {self._url})", "GET", realm, headers, params)
        _, said = _errors(answer.body)
        if answer.status in (401, 403):
            who = f"user `{self._user}`" if self._user else "anonymous access"
            raise AdapterError(
                TOOL,
                f"the token service of {self._url} ({realm}) refused {who} for `{scope or 'the registry'}` "
                f"({said or f'HTTP {answer.status}'}); check registry.user and the password in registry.password_env",
            )
        if answer.status != 200:
            raise AdapterError(
                TOOL, f"the token service of {self._url} ({realm}) answered {answer.status} ({said or 'no detail'})"
            )
        try:
            data = json.loads(answer.body)
        except ValueError:
            data = None
        value = (data.get("token") or data.get("access_token")) if isinstance(data, dict) else None
        if not isinstance(value, str) or not value:
            raise AdapterError(TOOL, f"the token service of {self._url} ({realm}) answered without a token")
        ttl = data.get("expires_in") if isinstance(data, dict) else None
        return value, float(ttl) if isinstance(ttl, int | float) and ttl > 0 else DEFAULT_TOKEN_TTL

    async def _send(self, method: str, url: str, accept: str, authorization: str | None) -> _Answer:
        headers = {"Accept": accept, "User-Agent": "opsloop"}
        if authorization:
            headers["Authorization"] = authorization
        return await self._send_to(self._url, method, url, headers, {})

    async def _send_to(
        self, server: str, method: str, url: str, headers: Mapping[str, str], params: Mapping[str, str]
    ) -> _Answer:
        """One HTTP exchange; transport failures become AdapterUnavailable/AdapterTimeout naming `server`."""
        try:
            async with self._session_now().request(
                method,
                url,
                headers=dict(headers),
                params=dict(params) or None,
                # Registries do not redirect manifests or tags; a redirect would carry our credentials.
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self._timeout),
            ) as resp:
                body = await resp.read()
                return _Answer(resp.status, resp.headers, body, str(resp.url))
        except TimeoutError:
            raise AdapterTimeout(TOOL, f"no answer from {server} within {self._timeout:g} s") from None
        except aiohttp.ClientConnectorError as err:
            reason = err.os_error.strerror or str(err.os_error)
            raise AdapterUnavailable(TOOL, f"can't reach {server} ({reason})") from err
        except aiohttp.ClientError as err:
            raise AdapterUnavailable(TOOL, f"the connection to {server} broke ({type(err).__name__})") from err


def _challenge(headers: Sequence[str]) -> _Challenge | None:
    """The first Bearer or Basic challenge of the WWW-Authenticate headers (Bearer preferred)."""
    found: list[_Challenge] = []
    for header in headers:
        scheme, _, rest = header.strip().partition(" ")
        params = {
            m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
            for m in _CHALLENGE_PARAM.finditer(rest)
        }
        params = {k: re.sub(r"\\(.)", r"\1", v) for k, v in params.items()}
        found.append(_Challenge(scheme.lower(), params))
    for scheme in ("bearer", "basic"):
        for c in found:
            if c.scheme == scheme:
                return c
    return None


def _errors(body: bytes) -> tuple[set[str], str]:
    """The error codes of a registry error body and a "CODE: message" text ("" when there is none)."""
    try:
        data = json.loads(body)
    except ValueError:
        return set(), body.decode(errors="replace").strip()[:300]
    errors = data.get("errors") if isinstance(data, dict) else None
    if not isinstance(errors, list):
        return set(), body.decode(errors="replace").strip()[:300]
    codes: set[str] = set()
    parts: list[str] = []
    for e in errors:
        if not isinstance(e, dict):
            continue
        code, message = str(e.get("code") or ""), str(e.get("message") or "")
        codes.add(code)
        parts.append(f"{code}: {message}" if code and message else code or message)
    return codes, "; ".join(p for p in parts if p)
