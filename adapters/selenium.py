"""Page checks in headless Chromium through Selenium 4 and the system's chromedriver.

Nothing is downloaded: the driver path is given to `Service`, which makes Selenium skip Selenium
Manager, and the browser path is set in the options. Selenium is synchronous, so every check runs
on the blocking pool, one browser session per `check()` call, with an overall time limit.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

from selenium.common.exceptions import (
    InvalidSelectorException,
    StaleElementReferenceException,
    TimeoutException,
    WebDriverException,
)
from selenium.webdriver.common.by import By

from bot.blocking import BlockingPool
from bot.ports import AdapterUnavailable, PageCheck, PageResult

TOOL = "Chromium"
INSTALL_HINT = "install the Debian packages chromium and chromium-driver (apt-get install chromium chromium-driver)"

# The flags that work on a locked-down Linux host running as root: no sandbox (root), no GPU, and no
# background traffic (update checks, sync, QUIC probes), whose refused connections would otherwise
# fill the logs and slow the start on a closed network.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",  # containers often give /dev/shm only 64 MB
    "--window-size=1280,800",  # a fixed size, so screenshots of the same page compare
)

# Chromium's network error codes (as chromedriver reports them on navigation) in words.
_NET_ERRORS = {
    "ERR_CONNECTION_REFUSED": "connection refused",
    "ERR_CONNECTION_RESET": "the connection was reset",
    "ERR_CONNECTION_CLOSED": "the server closed the connection",
    "ERR_EMPTY_RESPONSE": "the server sent an empty response",
    "ERR_CONNECTION_TIMED_OUT": "the connection timed out",
    "ERR_TIMED_OUT": "the connection timed out",
    "ERR_NAME_NOT_RESOLVED": "the host name does not resolve",
    "ERR_ADDRESS_UNREACHABLE": "the address is unreachable",
    "ERR_INTERNET_DISCONNECTED": "there is no network",
    "ERR_SSL_PROTOCOL_ERROR": "the TLS handshake failed",
    "ERR_CERT_AUTHORITY_INVALID": "the TLS certificate is not trusted",
    "ERR_CERT_COMMON_NAME_INVALID": "the TLS certificate does not match the host name",
    "ERR_CERT_DATE_INVALID": "the TLS certificate has expired or is not yet valid",
    "ERR_INVALID_URL": "the URL is not valid",
    "ERR_UNSAFE_PORT": "the port is one that browsers refuse to connect to",
}
_ERR_CODE = re.compile(r"\b(?:net::)?(ERR_[A-Z0-9_]+)")

# After navigation: Chromium's own error page (some failures, e.g. ERR_UNSAFE_PORT, load one instead of
# failing the navigation) and the HTTP status of the document, which the WebDriver protocol hides.
_PAGE_STATE_JS = """
const nav = performance.getEntriesByType('navigation')[0];
return [document.URL, nav ? nav.responseStatus || 0 : 0];
"""


def _first_line(e: BaseException) -> str:
    text = getattr(e, "msg", None) or str(e)
    return str(text).strip().splitlines()[0] if str(text).strip() else type(e).__name__


def _load_error(text: str) -> str:
    """Why a navigation failed, in words, from chromedriver's error or Chromium's error page."""
    m = _ERR_CODE.search(text)
    if m is None:
        return f"the page did not load: {text.strip().splitlines()[0] if text.strip() else 'no reason given'}"
    return _NET_ERRORS.get(m.group(1), f"the page did not load ({m.group(1)})")


def _quote(s: str) -> str:
    return f"`{s}`"


def _seconds(t: float) -> str:
    return f"{t:g} s"


def _remove_dir(path: str) -> None:
    # Chromium may still be flushing its profile for a moment after quit(); try again briefly.
    for _ in range(5):
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.exists(path):
            return
        time.sleep(0.2)


class ChromiumBrowser:
    """`Browser` backed by Debian's chromium and chromium-driver.

    `startup_timeout_s` is what starting and quitting the browser may take; with each page's
    `timeout_s` (plus a margin) it makes the overall limit of one `check()`. Past that limit the call
    raises `AdapterTimeout`; the pool thread still quits the browser when the stuck call returns.
    """

    def __init__(
        self,
        pool: BlockingPool,
        *,
        chromedriver: str = "/usr/bin/chromedriver",
        chromium: str = "/usr/bin/chromium",
        startup_timeout_s: float = 30.0,
    ) -> None:
        self._pool = pool
        self._chromedriver = chromedriver
        self._chromium = chromium
        self._startup_timeout_s = startup_timeout_s

    async def check(self, pages: Sequence[PageCheck]) -> tuple[PageResult, ...]:
        """Check each page in one browser session; a failed page is a result, not an exception.

        Raises `AdapterUnavailable` when the browser or driver is missing or cannot start, and
        `AdapterTimeout` when the whole run overruns its budget.
        """
        pages = tuple(pages)
        if not pages:
            return ()
        # Each page has its own deadline; the margin covers the screenshot and title calls, and the
        # start and quit of the browser are budgeted separately.
        budget = 2 * self._startup_timeout_s + sum(p.timeout_s + 10.0 for p in pages)
        return await self._pool.run(TOOL, self._check_sync, pages, timeout=budget)

    def _require_binaries(self) -> None:
        for what, path in (("chromium", self._chromium), ("chromedriver", self._chromedriver)):
            if not os.path.isfile(path):
                raise AdapterUnavailable(TOOL, f"{what} not found at {path}; {INSTALL_HINT}")
            if not os.access(path, os.X_OK):
                raise AdapterUnavailable(TOOL, f"{what} at {path} is not executable; {INSTALL_HINT}")

    def _start(self, profile: str) -> Any:
        # Selenium's driver modules are imported with the first check, not with opsloop (150 ms, some MiB).
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service

        opts = Options()
        opts.binary_location = self._chromium
        for flag in CHROMIUM_FLAGS:
            opts.add_argument(flag)
        # A fresh profile per session: no cookies or cache leak from one check to the next.
        opts.add_argument(f"--user-data-dir={profile}")
        service = Service(executable_path=self._chromedriver)
        # Selenium prefers the SE_CHROMEDRIVER environment variable over executable_path, both here and
        # again when the driver starts (it re-reads the variable named by DRIVER_PATH_ENV_KEY). The
        # configured path is what the operator asked for, so it wins: no variable is consulted.
        service.DRIVER_PATH_ENV_KEY = None
        service.path = self._chromedriver
        try:
            driver = webdriver.Chrome(service=service, options=opts)
        except WebDriverException as e:
            raise AdapterUnavailable(TOOL, f"could not start the browser: {_first_line(e)}; {INSTALL_HINT}") from None
        return driver

    def _check_sync(self, pages: tuple[PageCheck, ...]) -> tuple[PageResult, ...]:
        self._require_binaries()
        profile = tempfile.mkdtemp(prefix="opsloop-chromium-")
        driver: Any = None
        try:
            driver = self._start(profile)
            return tuple(self._check_page_safely(driver, page) for page in pages)
        finally:
            if driver is not None:
                try:
                    driver.quit()
                except WebDriverException:
                    pass  # the browser is already gone; nothing left to close
            _remove_dir(profile)

    def _check_page_safely(self, driver: Any, page: PageCheck) -> PageResult:
        start = time.monotonic()
        try:
            return self._check_page(driver, page, start)
        except WebDriverException as e:
            # The browser itself failed (crashed tab, lost session): still a failed page, not an
            # exception, so the other pages' results are kept.
            message = f"the browser failed: {_first_line(e)}"
            return PageResult(url=page.url, ok=False, message=message, duration_s=time.monotonic() - start)

    def _check_page(self, driver: Any, page: PageCheck, start: float) -> PageResult:
        deadline = start + page.timeout_s

        def result(ok: bool, message: str, *, loaded: bool) -> PageResult:
            title = ""
            shot: bytes | None = None
            if loaded:
                try:
                    title = str(driver.title or "")
                    if not ok:
                        shot = driver.get_screenshot_as_png()
                except WebDriverException:
                    pass  # a title or screenshot is a help, not a reason to fail the check differently
            return PageResult(
                url=page.url,
                ok=ok,
                message=message,
                duration_s=time.monotonic() - start,
                title=title,
                screenshot=shot,
            )

        # One deadline per page: loading and waiting for the content share `timeout_s`.
        driver.set_page_load_timeout(max(page.timeout_s, 0.1))
        try:
            driver.get(page.url)
        except TimeoutException:
            self._stop_loading(driver)
            return result(False, f"the page did not load within {_seconds(page.timeout_s)}", loaded=True)
        except WebDriverException as e:
            return result(False, _load_error(str(getattr(e, "msg", None) or e)), loaded=False)
        try:
            url, status = driver.execute_script(_PAGE_STATE_JS)
        except WebDriverException:
            url, status = "", 0  # not an HTML document (a PDF, say): no state to read, keep checking
        if str(url).startswith("chrome-error://"):
            return result(False, _load_error(self._body_text(driver)), loaded=False)
        # A check that fails on an HTTP error page says so: "the page does not contain `ok`" alone
        # would send people looking in the wrong place.
        http = f" (the server answered HTTP {status})" if isinstance(status, int) and status >= 400 else ""

        if page.css:
            css = page.css
            found = self._wait(driver, deadline, lambda d: bool(d.find_elements(By.CSS_SELECTOR, css)))
            if found is None:
                return result(False, f"{_quote(css)} is not a valid CSS selector", loaded=True)
            if not found:
                message = f"{_quote(css)} did not appear within {_seconds(page.timeout_s)}{http}"
                return result(False, message, loaded=True)
        if page.text:
            text = page.text
            found = self._wait(driver, deadline, lambda d: text in d.find_element(By.TAG_NAME, "body").text)
            if not found:
                return result(False, f"the page does not contain {_quote(text)}{http}", loaded=True)

        what = [_quote(x) for x in (page.css, page.text) if x]
        return result(True, f"found {' and '.join(what)}" if what else "the page loaded", loaded=True)

    @staticmethod
    def _wait(driver: Any, deadline: float, cond: Callable[[Any], bool]) -> bool | None:
        """Poll `cond` until the deadline: True when met, False on timeout, None for a bad selector."""
        # WebDriverWait calls `cond` at least once, even with no time left after a slow load: the
        # content may be there already.
        from selenium.webdriver.support.ui import WebDriverWait

        remaining = max(deadline - time.monotonic(), 0.0)
        # NoSuchElementException (no `body` yet) is ignored by default; a stale element means the page
        # re-rendered under us, so poll again as well.
        wait = WebDriverWait(driver, remaining, poll_frequency=0.1, ignored_exceptions=[StaleElementReferenceException])
        try:
            wait.until(cond)
        except InvalidSelectorException:
            return None
        except TimeoutException:
            return False
        return True

    @staticmethod
    def _body_text(driver: Any) -> str:
        try:
            return str(driver.find_element(By.TAG_NAME, "body").text)
        except WebDriverException:
            return ""

    @staticmethod
    def _stop_loading(driver: Any) -> None:
        # After a page-load timeout the navigation is still running; stop it so the next page starts clean.
        try:
            driver.execute_script("window.stop();")
        except WebDriverException:
            pass
