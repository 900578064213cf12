"""Contract tests of the Docker registry adapter.

Against the real registry (Debian's docker-registry 2.8, marked `servers`): digests of pushed Docker
schema-2 and OCI images, unknown tags and repositories, tag order, tag paging, basic auth, a
registry that went away. Against the token-auth front (tests/emulators/registry_auth.py): the
bearer flow, token caching and renewal, bad credentials, paging with `Link`, a missing digest
header; the front also proxies to the real registry once, so the flow is checked end to end.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web

from adapters.registry import DOCKER_MANIFEST, OCI_MANIFEST, DockerRegistry, sort_tags
from bot.ports import AdapterError, AdapterNotFound, AdapterTimeout, AdapterUnavailable
from tests.emulators.registry_auth import RegistryAuthFront, TokenRequest
from tests.registry_server import RegistryServer, image_manifest, push_image, registry_server, tiny_layer
from tests.support import free_port

servers = pytest.mark.servers
REPO = "shop/api"
ROBOT = ("robot", "s3cret")


@pytest_asyncio.fixture
async def registry(tmp_path: Path) -> AsyncIterator[RegistryServer]:
    async with registry_server(tmp_path / "registry") as reg:
        yield reg


@pytest_asyncio.fixture
async def make() -> AsyncIterator[Callable[..., DockerRegistry]]:
    """Adapters for a test, all closed at its end."""
    made: list[DockerRegistry] = []

    def factory(url: str, **kw: Any) -> DockerRegistry:
        kw.setdefault("timeout", 5.0)
        adapter = DockerRegistry(url, **kw)
        made.append(adapter)
        return adapter

    yield factory
    for adapter in made:
        await adapter.close()


# --- the real registry ------------------------------------------------------------------------------


@servers
async def test_digest_is_what_the_push_produced_for_docker_and_oci(
    registry: RegistryServer, make: Callable[..., DockerRegistry]
) -> None:
    docker = await push_image(registry.url, REPO, "1.2.3", layer=tiny_layer("docker"))
    oci = await push_image(registry.url, REPO, "1.2.4", layer=tiny_layer("oci"), oci=True)
    assert docker != oci
    reg = make(registry.url)
    assert await reg.digest(REPO, "1.2.3") == docker
    assert await reg.digest(REPO, "1.2.4") == oci
    # A digest as the reference: the registry confirms it holds that manifest.
    assert await reg.digest(REPO, oci) == oci
    # The form deploy targets hold: this registry's host in front of the repository.
    assert await reg.digest(f"127.0.0.1:{registry.port}/{REPO}", "1.2.3") == docker


@servers
async def test_unknown_tag_names_the_tag_and_the_repository(
    registry: RegistryServer, make: Callable[..., DockerRegistry]
) -> None:
    await push_image(registry.url, REPO, "1.2.3", layer=tiny_layer("a"))
    with pytest.raises(AdapterNotFound) as err:
        await make(registry.url).digest(REPO, "9.9.9")
    assert err.value.tool == "registry"
    assert str(err.value) == "registry: no tag `9.9.9` of `shop/api`"


@servers
async def test_unknown_repository(registry: RegistryServer, make: Callable[..., DockerRegistry]) -> None:
    await push_image(registry.url, REPO, "1.2.3", layer=tiny_layer("a"))
    reg = make(registry.url)
    # 2.8 answers MANIFEST_UNKNOWN here, as for a missing tag; the adapter tells them apart.
    with pytest.raises(AdapterNotFound, match=r"no repository `nope/app` in the registry at http://127\.0\.0\.1"):
        await reg.digest("nope/app", "1.2.3")
    with pytest.raises(AdapterNotFound, match=r"no repository `nope/app`"):
        await reg.tags("nope/app")


@servers
async def test_tags_come_sorted_by_version(registry: RegistryServer, make: Callable[..., DockerRegistry]) -> None:
    for tag in ("1.10.0", "latest", "1.2.0", "1.10.0-rc.1", "1.9.0", "v2.0.0"):
        await push_image(registry.url, REPO, tag, layer=tiny_layer(tag))
    assert await make(registry.url).tags(REPO) == ["1.2.0", "1.9.0", "1.10.0-rc.1", "1.10.0", "v2.0.0", "latest"]


@servers
async def test_tags_beyond_a_page(registry: RegistryServer, make: Callable[..., DockerRegistry]) -> None:
    tags = [f"1.{i}.0" for i in range(7)]
    for tag in tags:
        await push_image(registry.url, REPO, tag, layer=tiny_layer("same layer for all"))
    # 2.8 ignores `n` and answers everything at once; the adapter must not rely on either behaviour.
    assert await make(registry.url, page_size=2).tags(REPO) == tags


@servers
async def test_check(registry: RegistryServer, make: Callable[..., DockerRegistry]) -> None:
    assert await make(registry.url).check() == f"Docker registry at {registry.url} (API v2)"


@servers
async def test_registry_down_is_unavailable(registry: RegistryServer, make: Callable[..., DockerRegistry]) -> None:
    reg = make(registry.url)
    await reg.check()  # the session is open and was used
    await registry.stop()
    for call in (reg.digest(REPO, "1.2.3"), reg.tags(REPO), reg.check()):
        with pytest.raises(AdapterUnavailable, match=rf"can't reach {registry.url}"):
            await call


@servers
async def test_basic_auth_with_htpasswd(tmp_path: Path, make: Callable[..., DockerRegistry]) -> None:
    async with registry_server(tmp_path / "registry", users=dict([ROBOT])) as reg:
        digest = await push_image(reg.url, REPO, "1.2.3", layer=tiny_layer("a"), auth=ROBOT)
        with_auth = make(reg.url, user=ROBOT[0], password=ROBOT[1])
        assert await with_auth.digest(REPO, "1.2.3") == digest
        assert await with_auth.tags(REPO) == ["1.2.3"]
        assert await with_auth.check() == f"Docker registry at {reg.url} (API v2)"
        with pytest.raises(AdapterError, match=r"wants credentials .*set registry\.user and registry\.password_env"):
            await make(reg.url).digest(REPO, "1.2.3")
        with pytest.raises(AdapterError, match=r"refused the credentials of user `robot`") as err:
            await make(reg.url, user="robot", password="wrong").digest(REPO, "1.2.3")
        assert not isinstance(err.value, AdapterNotFound | AdapterUnavailable)


@servers
async def test_a_proxy_that_drops_accept_gets_a_clear_error(
    registry: RegistryServer, make: Callable[..., DockerRegistry]
) -> None:
    await push_image(registry.url, REPO, "1.2.3", layer=tiny_layer("a"))
    async with RegistryAuthFront(upstream=registry.url, users=None, strip_accept=True) as proxy:
        with pytest.raises(AdapterError, match=r"refused our Accept header .*`shop/api:1\.2\.3`"):
            await make(proxy.url).digest(REPO, "1.2.3")


@servers
async def test_bearer_flow_in_front_of_the_real_registry(
    registry: RegistryServer, make: Callable[..., DockerRegistry]
) -> None:
    docker = await push_image(registry.url, REPO, "1.2.3", layer=tiny_layer("docker"))
    oci = await push_image(registry.url, REPO, "1.2.4", layer=tiny_layer("oci"), oci=True)
    async with RegistryAuthFront(upstream=registry.url) as front:
        reg = make(front.url, user=ROBOT[0], password=ROBOT[1])
        assert await reg.digest(REPO, "1.2.3") == docker
        assert await reg.digest(REPO, "1.2.4") == oci
        assert await reg.tags(REPO) == ["1.2.3", "1.2.4"]
        assert front.token_requests == [TokenRequest("robot", front.service, f"repository:{REPO}:pull")]


# --- the token-auth front, emulating the registry ------------------------------------------------------


@asynccontextmanager
async def front_with_images(**kw: Any) -> AsyncIterator[tuple[RegistryAuthFront, dict[str, str]]]:
    """The front emulating a registry that holds shop/api 1.2.3 (Docker) and 1.2.4 (OCI), web/app 1.0.0."""
    async with RegistryAuthFront(**kw) as front:
        digests = {}
        for repo, tag, oci in ((REPO, "1.2.3", False), (REPO, "1.2.4", True), ("web/app", "1.0.0", False)):
            _, manifest = image_manifest(tiny_layer(f"{repo}:{tag}"), oci=oci)
            digests[f"{repo}:{tag}"] = front.add_manifest(repo, tag, manifest, OCI_MANIFEST if oci else DOCKER_MANIFEST)
        yield front, digests


async def test_bearer_flow_with_basic_credentials(make: Callable[..., DockerRegistry]) -> None:
    async with front_with_images() as (front, digests):
        reg = make(front.url, user=ROBOT[0], password=ROBOT[1])
        assert await reg.digest(REPO, "1.2.3") == digests["shop/api:1.2.3"]
        assert front.token_requests == [TokenRequest("robot", "opsloop-test-registry", "repository:shop/api:pull")]
        # The first try went without a token, was challenged, and was repeated with one.
        assert [m for m, _ in front.registry_requests] == ["HEAD", "HEAD"]


async def test_token_is_cached_per_scope(make: Callable[..., DockerRegistry]) -> None:
    async with front_with_images() as (front, digests):
        reg = make(front.url, user=ROBOT[0], password=ROBOT[1])
        assert await reg.digest(REPO, "1.2.3") == digests["shop/api:1.2.3"]
        assert await reg.digest(REPO, "1.2.4") == digests["shop/api:1.2.4"]
        assert await reg.tags(REPO) == ["1.2.3", "1.2.4"]
        assert len(front.token_requests) == 1
        # Once the token is known no request is challenged: 2 for the first digest, then one each.
        assert len(front.registry_requests) == 4
        assert await reg.digest("web/app", "1.0.0") == digests["web/app:1.0.0"]
        assert [t.scope for t in front.token_requests] == ["repository:shop/api:pull", "repository:web/app:pull"]


async def test_concurrent_requests_share_one_token(make: Callable[..., DockerRegistry]) -> None:
    async with front_with_images() as (front, digests):
        reg = make(front.url, user=ROBOT[0], password=ROBOT[1])
        got = await asyncio.gather(*(reg.digest(REPO, "1.2.3") for _ in range(5)))
        assert set(got) == {digests["shop/api:1.2.3"]}
        assert len(front.token_requests) == 1


async def test_token_is_renewed_when_it_expires(make: Callable[..., DockerRegistry]) -> None:
    now = [1000.0]
    async with front_with_images(expires_in=300) as (front, _):
        reg = make(front.url, user=ROBOT[0], password=ROBOT[1], clock=lambda: now[0])
        await reg.digest(REPO, "1.2.3")
        now[0] += 200
        await reg.digest(REPO, "1.2.3")
        assert len(front.token_requests) == 1
        now[0] += 100  # at 300 s the token is over (it is renewed a little early)
        await reg.digest(REPO, "1.2.3")
        assert len(front.token_requests) == 2


async def test_a_token_the_registry_forgot_is_replaced_once(make: Callable[..., DockerRegistry]) -> None:
    async with front_with_images() as (front, digests):
        reg = make(front.url, user=ROBOT[0], password=ROBOT[1])
        await reg.digest(REPO, "1.2.3")
        front.revoke_tokens()
        assert await reg.digest(REPO, "1.2.3") == digests["shop/api:1.2.3"]
        assert len(front.token_requests) == 2


async def test_bad_credentials_are_a_clear_error(make: Callable[..., DockerRegistry]) -> None:
    async with front_with_images() as (front, _):
        with pytest.raises(AdapterError) as err:
            await make(front.url, user="robot", password="wrong").digest(REPO, "1.2.3")
        assert type(err.value) is AdapterError
        msg = str(err.value)
        assert "token service" in msg and front.url in msg
        assert "refused user `robot`" in msg and "password_env" in msg


async def test_anonymous_token_without_access(make: Callable[..., DockerRegistry]) -> None:
    async with front_with_images() as (front, _):
        with pytest.raises(AdapterError, match=r"wants credentials for `shop/api:1\.2\.3`") as err:
            await make(front.url).digest(REPO, "1.2.3")
        assert type(err.value) is AdapterError
        # The anonymous token was asked for, granted nothing, and was not asked for again.
        assert front.token_requests == [TokenRequest(None, front.service, "repository:shop/api:pull")]


async def test_token_in_access_token_only(make: Callable[..., DockerRegistry]) -> None:
    async with front_with_images(token_fields=("access_token",), expires_in=None) as (front, digests):
        reg = make(front.url, user=ROBOT[0], password=ROBOT[1])
        assert await reg.digest("web/app", "1.0.0") == digests["web/app:1.0.0"]
        assert await reg.check() == f"Docker registry at {front.url} (API v2)"


async def test_password_without_user_is_a_ready_bearer_token(make: Callable[..., DockerRegistry]) -> None:
    async with front_with_images() as (front, digests):
        reg = make(front.url, password=front.grant("repository:shop/api:pull"))
        assert await reg.digest(REPO, "1.2.3") == digests["shop/api:1.2.3"]
        assert front.token_requests == [] and len(front.registry_requests) == 1
        with pytest.raises(
            AdapterError, match=r"refused the credentials of the token in registry\.password_env for `web/app:1\.0\.0`"
        ):
            await reg.digest("web/app", "1.0.0")


async def test_digest_without_the_header_is_the_sha256_of_the_manifest(make: Callable[..., DockerRegistry]) -> None:
    async with front_with_images(users=None, omit_digest=True) as (front, digests):
        reg = make(front.url)
        assert await reg.digest(REPO, "1.2.4") == digests["shop/api:1.2.4"]
        assert [m for m, _ in front.registry_requests] == ["HEAD", "GET"]


async def test_tags_follow_link_pages(make: Callable[..., DockerRegistry]) -> None:
    async with RegistryAuthFront() as front:
        tags = ["1.0.0", "1.1.0", "1.10.0", "1.2.0", "1.9.0", "latest", "0.9.0-beta"]
        _, manifest = image_manifest(tiny_layer("x"))
        for tag in tags:
            front.add_manifest(REPO, tag, manifest, DOCKER_MANIFEST)
        reg = make(front.url, user=ROBOT[0], password=ROBOT[1], page_size=3)
        assert await reg.tags(REPO) == ["0.9.0-beta", "1.0.0", "1.1.0", "1.2.0", "1.9.0", "1.10.0", "latest"]
        pages = [p for m, p in front.registry_requests if "/tags/list" in p]
        # One challenged first try, then three pages of at most 3.
        assert len(pages) == 4 and pages[0] == pages[1] == "/v2/shop/api/tags/list?n=3"
        assert "last=" in pages[2] and "last=" in pages[3]
        assert len(front.token_requests) == 1


async def test_accept_header_lists_all_four_types(make: Callable[..., DockerRegistry]) -> None:
    # The emulator is as strict as 2.8: each type must be accepted, or the manifest is refused.
    async with front_with_images(users=None) as (front, digests):
        reg = make(front.url)
        assert await reg.digest(REPO, "1.2.3") == digests["shop/api:1.2.3"]
        assert await reg.digest(REPO, "1.2.4") == digests["shop/api:1.2.4"]


# --- no server needed -----------------------------------------------------------------------------------


async def test_nothing_listening_is_unavailable(make: Callable[..., DockerRegistry]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(AdapterUnavailable, match=rf"^registry: can't reach {url} "):
        await make(url).digest(REPO, "1.2.3")


@pytest.fixture
def silent_server() -> Iterator[Callable[[], Any]]:
    """An HTTP server that accepts requests and never answers them (until the test ends)."""
    release = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(status=503)

    @asynccontextmanager
    async def start() -> AsyncIterator[str]:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", hang)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        try:
            yield f"http://127.0.0.1:{runner.addresses[0][1]}"
        finally:
            release.set()
            await runner.cleanup()

    yield start


async def test_no_answer_is_a_timeout(silent_server: Callable[[], Any], make: Callable[..., DockerRegistry]) -> None:
    async with silent_server() as url:
        with pytest.raises(AdapterTimeout, match=rf"no answer from {url} within 0\.2 s"):
            await make(url, timeout=0.2).digest(REPO, "1.2.3")


async def test_names_are_checked_before_asking(make: Callable[..., DockerRegistry]) -> None:
    reg = make("http://registry.example.com")
    with pytest.raises(AdapterError, match=r"`Shop/API` is not a repository name"):
        await reg.digest("Shop/API", "1.2.3")
    with pytest.raises(AdapterError, match=r"`ghcr\.io/shop/api` is in another registry"):
        await reg.tags("ghcr.io/shop/api")
    with pytest.raises(AdapterNotFound, match=r"no tag `1\.2\.3\+build` of `shop/api`"):
        await reg.digest(REPO, "1.2.3+build")


def test_sort_tags() -> None:
    tags = ["latest", "1.10.0", "1.2", "1.2.0", "v1.9.0", "1.2.0-rc.10", "1.2.0-rc.2", "1.2.0-alpha", "main", "2"]
    assert sort_tags([*tags, "latest"]) == [
        "1.2.0-alpha",
        "1.2.0-rc.2",
        "1.2.0-rc.10",
        "1.2",
        "1.2.0",
        "v1.9.0",
        "1.10.0",
        "2",
        "latest",
        "main",
    ]
