"""ChromiumBrowser against real Chromium + chromedriver and pages served by the test on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web

from adapters.selenium import ChromiumBrowser
from bot.blocking import BlockingPool
from bot.ports import AdapterUnavailable, PageCheck
from tests.conftest import require_servers
from tests.support import free_port

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

OK_PAGE = "<!doctype html><title>Status</title><body><h1>api</h1><p>all systems ok</p></body>"
LATE_PAGE = """<!doctype html><title>Late</title><body><p>loading</p>
<script>setTimeout(() => { const d = document.createElement('div'); d.id = 'app';
d.textContent = 'ready'; document.body.appendChild(d); }, 500);</script></body>"""
EMPTY_PAGE = "<!doctype html><title>Empty</title><body><p>nothing here</p></body>"


def _need_browser() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.path.isfile(p)]
    if missing:
        reason = f"{' and '.join(missing)} not installed (apt-get install chromium chromium-driver)"
        if require_servers():
            pytest.fail(f"OPSLOOP_REQUIRE_SERVERS=1 but {reason}")
        pytest.skip(reason)


def _gone(path: str) -> bool:
    return not Path(path).exists()


@pytest.fixture
async def pool() -> AsyncIterator[BlockingPool]:
    p = BlockingPool(workers=2)
    yield p
    p.close()


@pytest.fixture
def browser(pool: BlockingPool) -> ChromiumBrowser:
    _need_browser()
    return ChromiumBrowser(pool, chromedriver=CHROMEDRIVER, chromium=CHROMIUM)


@pytest.fixture
async def site() -> AsyncIterator[str]:
    """A small web site on a free port: `/ok`, `/late`, `/empty`, `/down` (503), `/hang` (never answers)."""
    release = asyncio.Event()

    def page(body: str, status: int = 200) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(_: web.Request) -> web.Response:
            return web.Response(text=body, status=status, content_type="text/html")

        return handler

    async def hang(_: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="too late", content_type="text/html")

    app = web.Application()
    app.router.add_get("/ok", page(OK_PAGE))
    app.router.add_get("/late", page(LATE_PAGE))
    app.router.add_get("/empty", page(EMPTY_PAGE))
    app.router.add_get("/down", page("<title>Down</title><body>maintenance</body>", status=503))
    app.router.add_get("/hang", hang)
    runner = web.AppRunner(app)
    await runner.setup()
    tcp = web.TCPSite(runner, "127.0.0.1", 0)
    await tcp.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        release.set()  # let a hanging handler finish so the runner stops at once
        await runner.cleanup()


@pytest.mark.servers
async def test_text_found(browser: ChromiumBrowser, site: str) -> None:
    (r,) = await browser.check([PageCheck(f"{site}/ok", text="systems ok", timeout_s=10)])
    assert r.ok, r.message
    assert r.message == "found `systems ok`"
    assert r.title == "Status"
    assert r.url == f"{site}/ok"
    assert r.screenshot is None  # only failed checks carry a screenshot
    assert r.duration_s > 0


@pytest.mark.servers
async def test_css_that_appears_after_a_delay_is_found(browser: ChromiumBrowser, site: str) -> None:
    (r,) = await browser.check([PageCheck(f"{site}/late", css="#app", text="ready", timeout_s=10)])
    assert r.ok, r.message
    assert r.message == "found `#app` and `ready`"
    assert r.title == "Late"
    assert r.screenshot is None


@pytest.mark.servers
async def test_missing_text_fails_with_a_png_screenshot(browser: ChromiumBrowser, site: str) -> None:
    (r,) = await browser.check([PageCheck(f"{site}/empty", text="all systems ok", timeout_s=1)])
    assert not r.ok
    assert r.message == "the page does not contain `all systems ok`"
    assert r.title == "Empty"
    assert r.screenshot is not None and r.screenshot.startswith(PNG_MAGIC)


@pytest.mark.servers
async def test_element_that_never_appears_fails_after_the_timeout(browser: ChromiumBrowser, site: str) -> None:
    (r,) = await browser.check([PageCheck(f"{site}/empty", css="#app", timeout_s=1)])
    assert not r.ok
    assert r.message == "`#app` did not appear within 1 s"
    assert r.duration_s >= 1  # it did wait the whole timeout before giving up
    assert r.screenshot is not None and r.screenshot.startswith(PNG_MAGIC)


@pytest.mark.servers
async def test_connection_refused_is_a_failed_page_not_an_exception(browser: ChromiumBrowser) -> None:
    url = f"http://127.0.0.1:{free_port()}/"  # nothing listens there
    (r,) = await browser.check([PageCheck(url, text="ok", timeout_s=5)])
    assert not r.ok
    assert r.message == "connection refused"
    assert r.screenshot is None  # there was no page to take a picture of


@pytest.mark.servers
async def test_one_session_checks_several_pages_in_order(browser: ChromiumBrowser, site: str) -> None:
    results = await browser.check(
        [
            PageCheck(f"{site}/ok", css="h1", timeout_s=5),
            PageCheck(f"{site}/down", text="all systems ok", timeout_s=1),
            PageCheck(f"{site}/hang", text="too late", timeout_s=1),
            PageCheck(f"{site}/ok", css="div[", timeout_s=1),
            PageCheck(f"{site}/ok", timeout_s=5),
        ]
    )
    assert [r.ok for r in results] == [True, False, False, False, True]
    assert results[0].message == "found `h1`"
    assert results[1].message == "the page does not contain `all systems ok` (the server answered HTTP 503)"
    assert results[2].message == "the page did not load within 1 s"
    assert results[3].message == "`div[` is not a valid CSS selector"
    assert results[4].message == "the page loaded"
    # The page after the hung one still works: the stuck navigation was stopped.
    assert results[4].title == "Status"


@pytest.mark.servers
async def test_the_temporary_profile_is_removed(
    browser: ChromiumBrowser, site: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[str] = []
    real_mkdtemp = tempfile.mkdtemp

    def spy(prefix: str | None = None) -> str:
        path = real_mkdtemp(prefix=prefix)
        made.append(path)
        return path

    monkeypatch.setattr("adapters.selenium.tempfile.mkdtemp", spy)
    (r,) = await browser.check([PageCheck(f"{site}/ok", text="ok", timeout_s=5)])
    assert r.ok, r.message
    assert len(made) == 1
    assert _gone(made[0])


@pytest.mark.servers
async def test_the_configured_driver_wins_over_se_chromedriver(
    browser: ChromiumBrowser, site: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Selenium's Service would take SE_CHROMEDRIVER over the path it is given.
    monkeypatch.setenv("SE_CHROMEDRIVER", "/nonexistent/chromedriver")
    (r,) = await browser.check([PageCheck(f"{site}/ok", text="ok", timeout_s=5)])
    assert r.ok, r.message


@pytest.mark.parametrize("missing", ["chromium", "chromedriver"])
async def test_missing_binaries_are_unavailable_with_a_fix(pool: BlockingPool, tmp_path: Path, missing: str) -> None:
    paths = {"chromium": CHROMIUM, "chromedriver": CHROMEDRIVER, missing: str(tmp_path / "no" / missing)}
    browser = ChromiumBrowser(pool, chromedriver=paths["chromedriver"], chromium=paths["chromium"])
    with pytest.raises(AdapterUnavailable) as exc:
        await browser.check([PageCheck("http://127.0.0.1:9/", text="ok")])
    assert exc.value.tool == "Chromium"
    message = str(exc.value)
    assert f"{missing} not found at {paths[missing]}" in message
    assert "install the Debian packages chromium and chromium-driver" in message


async def test_no_pages_means_no_browser(pool: BlockingPool, tmp_path: Path) -> None:
    # Nothing to check: no browser is started, so missing binaries do not matter either.
    browser = ChromiumBrowser(pool, chromedriver=str(tmp_path / "x"), chromium=str(tmp_path / "y"))
    assert await browser.check([]) == ()
