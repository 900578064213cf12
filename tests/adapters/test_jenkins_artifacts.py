"""Contract tests for archived artifacts: the real python-jenkins, through `JenkinsCI`, against the
Jenkins emulator (build JSON `artifacts[]`, `.../<n>/artifact/<relativePath>`, auth, size limits)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
import pytest_asyncio

from adapters.jenkins import JenkinsCI
from adapters.junit import JUnitReader
from bot.blocking import BlockingPool
from bot.ports import (
    AdapterError,
    AdapterNotFound,
    AdapterTimeout,
    Artifact,
    BuildArtifacts,
    TestStatus,
)
from tests.emulators.jenkins import BuildScript, Case, JenkinsEmulator, junit_xml

CASES = [
    Case("test_ok", class_name="com.shop.ApiTest", suite="com.shop.ApiTest"),
    Case("test_bad", "FAILED", class_name="com.shop.ApiTest", suite="com.shop.ApiTest", error_details="expected 2"),
    Case("test_later", "SKIPPED", class_name="com.shop.ApiTest", suite="com.shop.ApiTest", skipped_message="wip"),
]
REPORT = junit_xml(CASES)
JAR = bytes(range(256)) * 64  # 16 KiB of binary
ARTIFACTS = {
    "target/surefire-reports/TEST-com.shop.ApiTest.xml": REPORT,
    "web/target/surefire-reports/TEST-com.shop.ApiTest.xml": REPORT,
    "target/shop api #1.jar": JAR,
}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("JENKINS_API_EXTRA_HEADERS", raising=False)
    yield


@pytest_asyncio.fixture
async def emu() -> AsyncIterator[JenkinsEmulator]:
    async with JenkinsEmulator(clock=FakeClock()) as e:
        # No `tests`: the JUnit plugin is absent, only the archived files hold the results.
        e.add_job("shop/api", script=BuildScript(artifacts=ARTIFACTS))
        yield e
        assert e.server_errors == [], e.server_errors


@pytest.fixture
def pool() -> Iterator[BlockingPool]:
    p = BlockingPool(workers=4)
    yield p
    p.close()


@pytest.fixture
def ci(emu: JenkinsEmulator, pool: BlockingPool) -> Iterator[JenkinsCI]:
    c = JenkinsCI(emu.url, emu.user, emu.token, pool=pool, timeout=5)
    yield c
    c.close()


async def build_number(ci: JenkinsCI, job: str = "shop/api") -> int:
    """Trigger a build and follow its queue item to the build's number (it finishes at once unless its
    script runs until finished by hand)."""
    ref = await ci.trigger(job, {})
    for _ in range(10):
        ref = await ci.locate(ref)
        if ref.number is not None:
            return ref.number
    raise AssertionError(f"{ref} never started")


def test_jenkins_implements_the_artifacts_port(ci: JenkinsCI) -> None:
    assert isinstance(ci, BuildArtifacts)
    port: BuildArtifacts = ci
    assert port is ci


async def test_artifacts_are_listed_and_downloaded_with_auth(
    emu: JenkinsEmulator, ci: JenkinsCI, pool: BlockingPool
) -> None:
    number = await build_number(ci)
    assert await ci.test_report("shop/api", number) is None  # no JUnit plugin report
    listed = await ci.artifacts("shop/api", number)
    assert listed == (
        Artifact("target/shop api #1.jar", "shop api #1.jar"),
        Artifact("target/surefire-reports/TEST-com.shop.ApiTest.xml", "TEST-com.shop.ApiTest.xml"),
        Artifact("web/target/surefire-reports/TEST-com.shop.ApiTest.xml", "TEST-com.shop.ApiTest.xml"),
    )
    # Binary content and a name that needs quoting arrive byte for byte.
    assert await ci.artifact("shop/api", number, "target/shop api #1.jar", max_bytes=1 << 20) == JAR
    data = await ci.artifact("shop/api", number, listed[1].path, max_bytes=1 << 20)
    assert data == REPORT
    [jar, xml] = emu.requests_to("/artifact/")
    assert jar.path == f"/job/shop/job/api/{number}/artifact/target/shop api #1.jar"
    assert xml.path == f"/job/shop/job/api/{number}/artifact/target/surefire-reports/TEST-com.shop.ApiTest.xml"
    for r in (jar, xml):
        assert r.headers["Authorization"].startswith("Basic ") and r.headers.get("Jenkins-Crumb")
    # What was downloaded is JUnit XML the reader understands, with the same results.
    report = await JUnitReader(pool).parse(data, "archived")
    assert {(c.id, c.status) for c in report.cases} == {
        ("com.shop.ApiTest.test_ok", TestStatus.PASSED),
        ("com.shop.ApiTest.test_bad", TestStatus.FAILED),
        ("com.shop.ApiTest.test_later", TestStatus.SKIPPED),
    }
    assert report.failed[0].message == "expected 2"


async def test_build_json_lists_artifacts_as_jenkins_does(emu: JenkinsEmulator, ci: JenkinsCI) -> None:
    number = await build_number(ci)
    auth = {"Authorization": "Basic " + base64.b64encode(f"{emu.user}:{emu.token}".encode()).decode()}
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{emu.url}job/shop/job/api/{number}/api/json", headers=auth) as r:
            data = await r.json()
        assert data["artifacts"] == [
            {"displayPath": "shop api #1.jar", "fileName": "shop api #1.jar", "relativePath": "target/shop api #1.jar"},
            {
                # two files of one name: the shortest path suffixes that tell them apart
                "displayPath": "target/surefire-reports/TEST-com.shop.ApiTest.xml",
                "fileName": "TEST-com.shop.ApiTest.xml",
                "relativePath": "target/surefire-reports/TEST-com.shop.ApiTest.xml",
            },
            {
                "displayPath": "web/target/surefire-reports/TEST-com.shop.ApiTest.xml",
                "fileName": "TEST-com.shop.ApiTest.xml",
                "relativePath": "web/target/surefire-reports/TEST-com.shop.ApiTest.xml",
            },
        ]
        base = f"{emu.url}job/shop/job/api/{number}/artifact/"
        async with s.get(base + "target/surefire-reports/TEST-com.shop.ApiTest.xml", headers=auth) as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith(("application/xml", "text/xml"))
            assert r.headers["Content-Length"] == str(len(REPORT)) and "sandbox" in r.headers["Content-Security-Policy"]
        async with s.get(base + "target/", headers=auth) as r:  # a directory: its listing
            assert r.status == 200 and "surefire-reports" in await r.text()
        async with s.get(base + "target/nothing.xml", headers=auth) as r:
            assert r.status == 404
        async with s.get(base + "target/shop%20api%20%231.jar") as r:  # no credentials
            assert r.status == 403


async def test_a_running_build_has_no_artifacts_yet(emu: JenkinsEmulator, ci: JenkinsCI) -> None:
    emu.set_script("shop/api", BuildScript(duration=None, artifacts=ARTIFACTS))
    number = await build_number(ci)  # still running
    assert await ci.artifacts("shop/api", number) == ()
    with pytest.raises(AdapterNotFound):
        await ci.artifact("shop/api", number, "target/shop api #1.jar", max_bytes=1 << 20)
    emu.finish_build("shop/api", number)
    assert len(await ci.artifacts("shop/api", number)) == 3


async def test_missing_and_discarded_artifacts_are_not_found_by_name(emu: JenkinsEmulator, ci: JenkinsCI) -> None:
    number = await build_number(ci)
    with pytest.raises(AdapterNotFound, match=r"no artifact `target/other.xml`"):
        await ci.artifact("shop/api", number, "target/other.xml", max_bytes=1 << 20)
    emu.discard_artifacts("shop/api", number)
    assert await ci.artifacts("shop/api", number) == ()
    with pytest.raises(AdapterNotFound, match=r"build #1 of job `shop/api` has no artifact `target/shop api #1.jar`"):
        await ci.artifact("shop/api", number, "target/shop api #1.jar", max_bytes=1 << 20)
    with pytest.raises(AdapterNotFound, match="no build #9"):
        await ci.artifacts("shop/api", 9)


async def test_paths_that_leave_the_archive_are_refused_before_any_request(emu: JenkinsEmulator, ci: JenkinsCI) -> None:
    number = await build_number(ci)
    before = len(emu.requests)
    for bad in ("../../config.xml", "/etc/passwd", "target//x.xml", ""):
        with pytest.raises(AdapterError, match="not a relative artifact path"):
            await ci.artifact("shop/api", number, bad, max_bytes=1 << 20)
    assert len(emu.requests) == before


@pytest.mark.parametrize("content_length", [True, False], ids=["content-length", "chunked"])
async def test_files_over_the_limit_are_refused(pool: BlockingPool, content_length: bool) -> None:
    async with JenkinsEmulator(clock=FakeClock(), artifact_content_length=content_length) as emu:
        big = b"<testsuites>" + b"<!-- padding -->" * 200_000 + b"</testsuites>"  # ~3 MiB
        emu.add_job("api", script=BuildScript(artifacts={"big.xml": big, "small.xml": REPORT}))
        ci = JenkinsCI(emu.url, emu.user, emu.token, pool=pool, timeout=5)
        try:
            number = await build_number(ci, "api")
            expected = f"is {len(big):,} bytes" if content_length else "passed 65,536 bytes while downloading"
            with pytest.raises(AdapterError, match=f"artifact `big.xml` of build #1 of job `api` {expected}"):
                await ci.artifact("api", number, "big.xml", max_bytes=64 * 1024)
            # The client is still usable afterwards, and a file within the limit arrives whole.
            assert await ci.artifact("api", number, "small.xml", max_bytes=len(REPORT)) == REPORT
            assert emu.server_errors == []
        finally:
            ci.close()


async def test_a_slow_download_times_out_naming_the_artifact(
    emu: JenkinsEmulator, ci: JenkinsCI, pool: BlockingPool
) -> None:
    number = await build_number(ci)  # set up with a patient client
    ci = JenkinsCI(emu.url, emu.user, emu.token, pool=pool, timeout=0.5, download_timeout=0.5)
    try:
        emu.slow(3.0, "/artifact/", count=1)
        with pytest.raises(AdapterTimeout, match=r"artifact `target/shop api #1.jar` of build #1 of job `shop/api`"):
            await ci.artifact("shop/api", number, "target/shop api #1.jar", max_bytes=1 << 20)
    finally:
        ci.close()


async def test_bad_credentials_and_server_errors_name_jenkins(emu: JenkinsEmulator, pool: BlockingPool) -> None:
    good = JenkinsCI(emu.url, emu.user, emu.token, pool=pool, timeout=5)
    bad = JenkinsCI(emu.url, emu.user, "wrong-token", pool=pool, timeout=5)
    try:
        number = await build_number(good)
        with pytest.raises(AdapterError, match=r"Jenkins: rejected the credentials of user opsloop \(401\)"):
            await bad.artifact("shop/api", number, "target/shop api #1.jar", max_bytes=1 << 20)
        emu.fail_next("/artifact/", status=503)
        with pytest.raises(AdapterError, match=r"answered 503 .* for artifact `target/shop api #1.jar`"):
            await good.artifact("shop/api", number, "target/shop api #1.jar", max_bytes=1 << 20)
        emu.fail_next("/api/json", status=500)
        with pytest.raises(AdapterError, match=r"answered 500 .* for build #1 of job `shop/api`"):
            await good.artifacts("shop/api", number)
    finally:
        good.close()
        bad.close()


@pytest.mark.parametrize(
    ("drip", "timeout", "download_timeout", "expected"),
    [
        # Every chunk arrives well within the per-request timeout, but the whole file would take ~2 s.
        (0.2, 5.0, 0.3, "took longer than 0.3 s to download"),
        # The first chunk comes at once, the next one later than the per-request timeout.
        (1.0, 0.3, 30.0, "stopped arriving: nothing for 0.3 s"),
    ],
    ids=["whole-download-deadline", "stalled-body"],
)
async def test_a_download_that_drips_or_stalls_is_stopped(
    pool: BlockingPool, drip: float, timeout: float, download_timeout: float, expected: str
) -> None:
    async with JenkinsEmulator(clock=FakeClock(), artifact_content_length=False, artifact_drip=drip) as emu:
        emu.add_job("api", script=BuildScript(artifacts={"big.xml": b"x" * (10 * 64 * 1024)}))
        setup = JenkinsCI(emu.url, emu.user, emu.token, pool=pool, timeout=5)
        number = await build_number(setup, "api")
        setup.close()
        ci = JenkinsCI(emu.url, emu.user, emu.token, pool=pool, timeout=timeout, download_timeout=download_timeout)
        try:
            with pytest.raises(
                AdapterTimeout, match=f"Jenkins: artifact `big.xml` of build #1 of job `api` {expected}"
            ):
                await ci.artifact("api", number, "big.xml", max_bytes=1 << 20)
        finally:
            ci.close()
