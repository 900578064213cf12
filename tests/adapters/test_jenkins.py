"""Contract tests: the real python-jenkins, through `JenkinsCI`, against the Jenkins emulator.

The emulator's clock is a fake one: builds move when a test advances it, so nothing sleeps for a
build. Queue items move on polls (WaitingItem, BuildableItem, then LeftItem with the build).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Iterator

import jenkins
import pytest
import pytest_asyncio
import requests
from aiohttp import web

from adapters.jenkins import JenkinsCI
from bot.blocking import BlockingPool
from bot.ports import (
    AdapterError,
    AdapterNotFound,
    AdapterTimeout,
    AdapterUnavailable,
    BuildRef,
    BuildState,
    CIServer,
    TestStatus,
)
from tests.emulators.jenkins import BuildScript, Case, JenkinsEmulator

COMMIT = "9f8e7d6c5b4a39281706f5e4d3c2b1a098765432"


class FakeClock:
    """Epoch seconds that move only when told to."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # requests honours proxy variables; 127.0.0.1 must be reached directly.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("JENKINS_API_EXTRA_HEADERS", raising=False)
    yield


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest_asyncio.fixture
async def emu(clock: FakeClock) -> AsyncIterator[JenkinsEmulator]:
    async with JenkinsEmulator(clock=clock) as e:
        e.add_job(
            "app",
            script=BuildScript(
                duration=30,
                log=["Checking out\n", "Compiling\n", "Testing\n"],
                commit=COMMIT,
                branch="main",
            ),
        )
        e.add_job("deploy", params={"IMAGE_TAG": "latest", "BRANCH": "main", "OPSLOOP_REQUEST": ""})
        e.add_job("release", params={"VERSION": "0.0.0", "DRY_RUN": "true"})
        yield e
        assert e.server_errors == [], e.server_errors


@pytest.fixture
def pool() -> Iterator[BlockingPool]:
    p = BlockingPool(workers=4)
    yield p
    p.close()


def make_ci(emu: JenkinsEmulator, pool: BlockingPool, *, token: str | None = None, timeout: float = 5.0) -> JenkinsCI:
    return JenkinsCI(emu.url, emu.user, token or emu.token, pool=pool, timeout=timeout)


@pytest.fixture
def ci(emu: JenkinsEmulator, pool: BlockingPool) -> Iterator[JenkinsCI]:
    c = make_ci(emu, pool)
    yield c
    c.close()


async def started(ci: JenkinsCI, ref: BuildRef, polls: int = 10) -> BuildRef:
    """Poll the queue item until the build has a number (poll mode: no sleeping needed)."""
    for _ in range(polls):
        ref = await ci.locate(ref)
        if ref.number is not None or ref.cancelled:
            return ref
    raise AssertionError(f"{ref} never left the queue")


def test_implements_the_port(ci: JenkinsCI) -> None:
    port: CIServer = ci
    assert port.name == "jenkins"


# --- CSRF ------------------------------------------------------------------------------------


async def test_crumb_and_session_cookie_go_with_every_request_after_the_first(emu: JenkinsEmulator) -> None:
    pool = BlockingPool(workers=1)  # one thread, one python-jenkins client, one crumb
    ci = make_ci(emu, pool)
    try:
        ref = await started(ci, await ci.trigger("app", {}))
        await ci.build("app", ref.number or 0)
        await ci.log("app", ref.number or 0)
        await ci.abort("app", ref.number or 0)
        await ci.check()
    finally:
        ci.close()
        pool.close()
    first, *rest = emu.requests
    assert (first.method, first.path) == ("GET", "/crumbIssuer/api/json")
    cookie_names = {name for name in first.cookies}
    assert not cookie_names  # the crumb request is the one that opens the session
    assert any(r.method == "POST" for r in rest)
    for r in rest:
        if (r.method, r.path) == ("GET", "/"):
            # get_version() bypasses python-jenkins' crumb logic (but keeps the session cookie).
            assert any(k.startswith("JSESSIONID.") for k in r.cookies)
            continue
        assert r.headers.get("Jenkins-Crumb"), f"{r.method} {r.path} carried no crumb"
        assert any(k.startswith("JSESSIONID.") for k in r.cookies), f"{r.method} {r.path} carried no session"
    assert len(emu.requests_to("/crumbIssuer/")) == 1


async def test_each_pool_thread_has_its_own_client_and_crumb(emu: JenkinsEmulator, ci: JenkinsCI) -> None:
    emu.run_build("app", script=BuildScript(duration=0))
    builds = await asyncio.gather(*(ci.build("app", 1) for _ in range(24)))
    assert {b.state for b in builds} == {BuildState.SUCCESS}
    # At most one crumb per pool thread: clients are reused, never shared between threads.
    assert 1 <= len(emu.requests_to("/crumbIssuer/")) <= 4


async def test_without_csrf_protection_no_crumb_is_sent(clock: FakeClock) -> None:
    pool = BlockingPool(workers=1)  # one client: it asks for a crumb exactly once
    async with JenkinsEmulator(csrf=False, clock=clock) as emu:
        emu.add_job("app")
        ci = make_ci(emu, pool)
        ref = await started(ci, await ci.trigger("app", {}))
        assert (await ci.build("app", ref.number or 0)).state is BuildState.SUCCESS
        ci.close()
        pool.close()
        assert [r.path for r in emu.requests_to("/crumbIssuer/")] == ["/crumbIssuer/api/json"]  # 404, asked once
        assert not any(r.headers.get("Jenkins-Crumb") for r in emu.requests)


# --- trigger, queue, run ------------------------------------------------------------------------


async def test_trigger_queue_run_finish(emu: JenkinsEmulator, ci: JenkinsCI, clock: FakeClock) -> None:
    ref = await ci.trigger("app", {})
    assert ref.ci == "jenkins" and ref.job == "app" and ref.queue_id and ref.number is None
    assert emu.requests_to("/job/app/build", "POST"), "a parameterless job is triggered with /build"

    ref = await ci.locate(ref)
    assert ref.number is None and ref.why and "quiet period" in ref.why
    ref = await ci.locate(ref)
    assert ref.number is None and ref.why == "Waiting for next available executor"
    ref = await ci.locate(ref)
    assert ref.number == 1 and ref.why is None and not ref.cancelled
    assert await ci.locate(ref) is ref  # a located ref needs no more requests

    running = await ci.build("app", 1)
    assert running.state is BuildState.RUNNING
    assert running.duration_s is None
    assert running.estimated_s is None  # no successful build yet
    assert running.label == "#1"
    assert running.url == f"{emu.url}job/app/1/"
    assert running.cause == "Started by user opsloop"
    assert running.started_at is not None and running.started_at.timestamp() == pytest.approx(clock.now)

    clock.advance(30)
    done = await ci.build("app", 1)
    assert done.state is BuildState.SUCCESS and done.state.finished
    assert done.duration_s == pytest.approx(30.0)
    assert done.commit == COMMIT
    assert done.branch == "main"
    assert done.failed_tests is None and done.total_tests is None

    emu.set_script("app", BuildScript(duration=12, result="FAILURE"))
    second = await started(ci, await ci.trigger("app", {}))
    assert second.number == 2
    b2 = await ci.build("app", 2)
    assert b2.estimated_s == pytest.approx(30.0)  # from the last success
    clock.advance(12)
    assert (await ci.build("app", 2)).state is BuildState.FAILURE
    last = await ci.last_build("app")
    assert last is not None and last.number == 2
    last_ok = await ci.last_build("app", successful=True)
    assert last_ok is not None and last_ok.number == 1


async def test_last_build_of_a_job_never_built_is_none(ci: JenkinsCI) -> None:
    assert await ci.last_build("app") is None
    assert await ci.last_build("app", successful=True) is None


async def test_parameters_reach_the_build(emu: JenkinsEmulator, ci: JenkinsCI) -> None:
    ref = await started(ci, await ci.trigger("deploy", {"IMAGE_TAG": "1.4.2"}, branch="release/1.4"))
    build = await ci.build("deploy", ref.number or 0)
    params = dict(build.parameters)
    assert params["IMAGE_TAG"] == "1.4.2"
    assert params["BRANCH"] == "release/1.4"
    assert re.fullmatch(r"[0-9a-f]{32}", params["OPSLOOP_REQUEST"])
    assert build.branch == "release/1.4"
    (post,) = emu.requests_to("/job/deploy/buildWithParameters", "POST")
    assert post.query["IMAGE_TAG"] == "1.4.2"  # python-jenkins sends them in the query string
    assert emu.build("deploy", ref.number or 0).params["IMAGE_TAG"] == "1.4.2"


async def test_identical_triggers_get_their_own_queue_items(emu: JenkinsEmulator, ci: JenkinsCI) -> None:
    # Jenkins folds an identical buildWithParameters into the queued item (303); the unique
    # OPSLOOP_REQUEST value keeps each request its own.
    a = await ci.trigger("deploy", {"IMAGE_TAG": "2.0"})
    b = await ci.trigger("deploy", {"IMAGE_TAG": "2.0"})
    assert a.queue_id != b.queue_id
    assert len(emu.requests_to("/job/deploy/api/json", "GET")) == 1  # parameter definitions were read once


async def test_parameterized_job_without_params_sends_the_defaults(emu: JenkinsEmulator, ci: JenkinsCI) -> None:
    ref = await started(ci, await ci.trigger("release", {}, branch="main"))  # no BRANCH parameter: ignored
    build = await ci.build("release", ref.number or 0)
    assert dict(build.parameters) == {"VERSION": "0.0.0", "DRY_RUN": "true"}
    assert emu.requests_to("/job/release/buildWithParameters", "POST")
    assert not [r for r in emu.requests if r.path == "/job/release/build"]


async def test_unknown_parameters_are_refused_before_jenkins_ignores_them(ci: JenkinsCI) -> None:
    with pytest.raises(AdapterError, match=r"job `release` has no parameter `VERSON`; it takes VERSION, DRY_RUN"):
        await ci.trigger("release", {"VERSON": "1.0"})
    with pytest.raises(AdapterError, match=r"job `app` takes no parameters; got X"):
        await ci.trigger("app", {"X": "1"})


async def test_jobs_in_folders(emu: JenkinsEmulator, ci: JenkinsCI, clock: FakeClock) -> None:
    emu.add_job(
        "shop/backend/api",
        params={"BRANCH": "main"},
        script=BuildScript(duration=5, log=["one\n"], tests=[Case("test_ok")]),
    )
    ref = await started(ci, await ci.trigger("shop/backend/api", {}, branch="feature/login"))
    assert emu.requests_to("/job/shop/job/backend/job/api/buildWithParameters", "POST")
    clock.advance(5)
    build = await ci.build("shop/backend/api", ref.number or 0)
    assert build.state is BuildState.SUCCESS
    assert build.url == f"{emu.url}job/shop/job/backend/job/api/1/"
    assert build.branch == "feature/login"
    assert (build.failed_tests, build.total_tests) == (0, 1)
    chunk = await ci.log("shop/backend/api", 1)
    assert "one\n" in chunk.text and not chunk.more
    report = await ci.test_report("shop/backend/api", 1)
    assert report is not None and [c.name for c in report.cases] == ["test_ok"]
    last = await ci.last_build("shop/backend/api")
    assert last is not None and last.number == 1
    with pytest.raises(AdapterNotFound, match="no job `shop/backend`"):
        await ci.trigger("shop/backend", {})  # a folder is not a job


async def test_cancelled_queue_item(emu: JenkinsEmulator, ci: JenkinsCI) -> None:
    ref = await ci.locate(await ci.trigger("app", {}))
    assert ref.number is None
    emu.cancel_queue(int(ref.queue_id or 0))
    ref = await ci.locate(ref)
    assert ref.cancelled and ref.number is None
    assert emu.job_builds("app") == []


async def test_cancel_through_the_rest_endpoint(emu: JenkinsEmulator, ci: JenkinsCI) -> None:
    ref = await ci.trigger("app", {})
    client = jenkins.Jenkins(emu.url, username=emu.user, password=emu.token, timeout=5)
    await asyncio.to_thread(client.cancel_queue, int(ref.queue_id or 0))  # POST /queue/cancelItem -> 302
    assert (await ci.locate(ref)).cancelled


async def test_blocked_item_says_why(emu: JenkinsEmulator, ci: JenkinsCI) -> None:
    emu.hold_queue("Waiting for next available executor on ‘linux’")
    ref = await ci.trigger("app", {})
    for _ in range(5):
        ref = await ci.locate(ref)
    assert ref.number is None and ref.why == "Waiting for next available executor on ‘linux’"
    emu.hold_queue(None)
    assert (await started(ci, ref)).number == 1


async def test_quiet_period_on_the_clock_and_builds_finished_by_hand(clock: FakeClock, pool: BlockingPool) -> None:
    async with JenkinsEmulator(clock=clock, quiet_period=5.0) as emu:
        emu.add_job("app", script=BuildScript(duration=None, log=["waiting\n"]))
        ci = make_ci(emu, pool)
        ref = await ci.trigger("app", {})
        for _ in range(3):  # polls alone do not move an item in time mode
            ref = await ci.locate(ref)
        assert ref.number is None and ref.why == "In the quiet period. Expires in 5.0 sec"
        clock.advance(5)
        ref = await ci.locate(ref)
        assert ref.number == 1
        emu.write_log("app", 1, "deployed\n")
        emu.finish_build("app", 1, "UNSTABLE")
        build = await ci.build("app", 1)
        assert build.state is BuildState.UNSTABLE and build.duration_s == 0.0
        assert (await ci.log("app", 1)).text.endswith("waiting\ndeployed\nFinished: UNSTABLE\n")
        ci.close()
        assert emu.server_errors == []


async def test_expired_queue_item_is_found_by_queue_id(emu: JenkinsEmulator, ci: JenkinsCI, clock: FakeClock) -> None:
    emu.run_build("app")  # #1, from another queue item
    ref = await ci.trigger("app", {})
    await started(ci, ref)
    clock.advance(emu.queue_ttl + 1)  # Jenkins forgets left items after ~5 minutes
    assert emu.requests_to(f"/queue/item/{ref.queue_id}/")
    again = await ci.locate(ref)  # the unlocated ref: queue item is 404 now
    assert again.number == 2
    assert emu.requests_to("/job/app/api/json")[-1].query["tree"] == "builds[number,queueId]"

    gone = BuildRef(ci="jenkins", job="app", queue_id="9999")
    with pytest.raises(AdapterNotFound, match=r"queue item 9999 of job `app` is gone"):
        await ci.locate(gone)


# --- console -------------------------------------------------------------------------------------


async def test_progressive_log(emu: JenkinsEmulator, ci: JenkinsCI, clock: FakeClock) -> None:
    emu.add_job("logs", script=BuildScript(duration=40, log=["step 1\n", "step 2 is hal", "f done\nstep 3\n", "tail"]))
    ref = await started(ci, await ci.trigger("logs", {}))
    n = ref.number or 0

    first = await ci.log("logs", n)
    assert first.text == "Started by user opsloop\nstep 1\n" and first.more
    assert first.next_offset == len(first.text.encode())

    clock.advance(10)  # "step 2 is hal" is written, without its newline
    partial = await ci.log("logs", n, first.next_offset)
    assert partial.text == "" and partial.more  # only complete lines while running
    assert partial.next_offset == first.next_offset

    clock.advance(10)
    second = await ci.log("logs", n, partial.next_offset)
    assert second.text == "step 2 is half done\nstep 3\n" and second.more

    clock.advance(20)  # finished
    last = await ci.log("logs", n, second.next_offset)
    assert last.text == "tail\nFinished: SUCCESS\n"
    assert not last.more
    end = await ci.log("logs", n, last.next_offset)
    assert end.text == "" and not end.more and end.next_offset == last.next_offset

    whole = await ci.log("logs", n)
    assert whole.text == first.text + second.text + last.text == emu.build("logs", n).text


async def test_log_of_unknown_build(ci: JenkinsCI) -> None:
    with pytest.raises(AdapterNotFound, match=r"Jenkins: no build #7 of job `app`"):
        await ci.log("app", 7)


# --- tests -------------------------------------------------------------------------------------


async def test_test_report_mapping(emu: JenkinsEmulator, ci: JenkinsCI, clock: FakeClock) -> None:
    cases = [
        Case("test_login", suite="ui", class_name="tests.test_ui", duration=0.5),
        Case(
            "test_logout",
            status="FAILED",
            suite="ui",
            class_name="tests.test_ui",
            error_details="assert 1 == 2",
            error_stack_trace="Traceback...\nAssertionError: assert 1 == 2",
        ),
        Case("test_health", status="REGRESSION", suite="api", error_details="boom", error_stack_trace="RuntimeError"),
        Case("test_again", status="FIXED", suite="api"),
        Case("test_later", status="SKIPPED", suite="api", skipped_message="not today"),
    ]
    emu.add_job("tested", script=BuildScript(duration=10, result="UNSTABLE", tests=cases))
    ref = await started(ci, await ci.trigger("tested", {}))
    n = ref.number or 0
    assert await ci.test_report("tested", n) is None  # nothing published while it runs

    clock.advance(10)
    build = await ci.build("tested", n)
    assert build.state is BuildState.UNSTABLE
    assert (build.failed_tests, build.total_tests) == (2, 5)

    report = await ci.test_report("tested", n)
    assert report is not None
    by_name = {c.name: c for c in report.cases}
    assert by_name["test_login"].status is TestStatus.PASSED
    assert by_name["test_login"].suite == "ui" and by_name["test_login"].id == "tests.test_ui.test_login"
    assert by_name["test_login"].duration_s == pytest.approx(0.5)
    logout = by_name["test_logout"]
    assert logout.status is TestStatus.FAILED
    assert logout.message == "assert 1 == 2" and logout.details and "AssertionError" in logout.details
    assert by_name["test_health"].status is TestStatus.FAILED  # REGRESSION, as older junit plugins say
    assert by_name["test_health"].suite == "api"
    assert by_name["test_again"].status is TestStatus.PASSED  # FIXED
    assert by_name["test_later"].status is TestStatus.SKIPPED and by_name["test_later"].message == "not today"
    assert (report.count(TestStatus.FAILED), report.count(TestStatus.PASSED), report.count(TestStatus.SKIPPED)) == (
        2,
        2,
        1,
    )


async def test_no_test_report_is_none(emu: JenkinsEmulator, ci: JenkinsCI) -> None:
    emu.run_build("app", script=BuildScript(duration=0))
    assert await ci.test_report("app", 1) is None


# --- abort -------------------------------------------------------------------------------------


async def test_abort_follows_the_redirect_and_ends_aborted(emu: JenkinsEmulator, ci: JenkinsCI) -> None:
    emu.add_job("forever", script=BuildScript(duration=None, log=["waiting for approval\n"]))
    ref = await started(ci, await ci.trigger("forever", {}))
    n = ref.number or 0
    assert (await ci.build("forever", n)).state is BuildState.RUNNING
    await ci.abort("forever", n)
    build = await ci.build("forever", n)
    assert build.state is BuildState.ABORTED and build.duration_s is not None
    posts = emu.requests_to(f"/job/forever/{n}/stop", "POST")
    assert len(posts) == 1
    assert emu.requests[emu.requests.index(posts[0]) + 1].path == f"/job/forever/{n}/"  # 302 followed
    tail = (await ci.log("forever", n)).text
    assert tail.endswith("Aborted by opsloop\nFinished: ABORTED\n")
    with pytest.raises(AdapterNotFound, match=r"no build #99 of job `forever`"):
        await ci.abort("forever", 99)


# --- errors -------------------------------------------------------------------------------------


async def test_unknown_job_is_not_found_by_name(ci: JenkinsCI) -> None:
    with pytest.raises(AdapterNotFound, match=r"^Jenkins: no job `nope`$"):
        await ci.trigger("nope", {})
    with pytest.raises(AdapterNotFound, match=r"no job `team/nope`"):
        await ci.last_build("team/nope")
    with pytest.raises(AdapterNotFound, match=r"no build #1 of job `nope`"):
        await ci.build("nope", 1)


async def test_bad_token_is_a_credentials_error(emu: JenkinsEmulator, pool: BlockingPool) -> None:
    ci = make_ci(emu, pool, token="wrong")
    with pytest.raises(AdapterError, match=r"^Jenkins: rejected the credentials of user opsloop \(401\)$") as info:
        await ci.check()
    assert type(info.value) is AdapterError
    with pytest.raises(AdapterError, match=r"credentials of user opsloop \(401\)"):
        await ci.trigger("app", {})
    ci.close()


async def test_missing_permission_is_reported(emu: JenkinsEmulator, pool: BlockingPool) -> None:
    emu.add_user("viewer", "viewer-token", can_build=False)
    ci = JenkinsCI(emu.url, "viewer", "viewer-token", pool=pool, timeout=5)
    with pytest.raises(AdapterError, match=r"user viewer for job `app` \(403: viewer is missing the Job/Build"):
        await ci.trigger("app", {})
    ci.close()


async def test_disabled_job(emu: JenkinsEmulator, ci: JenkinsCI) -> None:
    emu.set_disabled("app")
    with pytest.raises(AdapterError, match=r"answered 409 Conflict for job `app`: app is not buildable"):
        await ci.trigger("app", {})


async def test_server_errors_name_the_status_not_a_missing_job(emu: JenkinsEmulator, ci: JenkinsCI) -> None:
    emu.run_build("app")
    emu.fail_next("/job/app/1/api/json", status=503)
    with pytest.raises(
        AdapterError, match=r"^Jenkins: answered 503 Service Unavailable for build #1 of job `app`$"
    ) as info:
        await ci.build("app", 1)
    assert not isinstance(info.value, AdapterNotFound)
    emu.fail_next("/job/app/1/api/json", status=500)
    with pytest.raises(AdapterError, match=r"^Jenkins: answered 500 Internal Server Error for build #1 of job `app`$"):
        await ci.build("app", 1)
    emu.fail_next("/buildWithParameters", status=502)
    with pytest.raises(AdapterError, match=r"answered 502 Bad Gateway for job `deploy`"):
        await ci.trigger("deploy", {})
    assert (await ci.build("app", 1)).number == 1  # the faults were one-shot


async def test_jenkins_down_is_unavailable(emu: JenkinsEmulator, ci: JenkinsCI) -> None:
    assert (await ci.check()).startswith("Jenkins ")  # a pooled keep-alive connection exists now
    await emu.down()
    with pytest.raises(
        AdapterUnavailable, match=rf"^Jenkins: cannot reach {re.escape(emu.url)} \(connection refused\)$"
    ):
        await ci.check()
    with pytest.raises(AdapterUnavailable):
        await ci.trigger("app", {})
    await emu.up()
    assert (await ci.check()).startswith("Jenkins ")  # the same clients recover


async def test_jenkins_slow_times_out_and_the_loop_stays_responsive(emu: JenkinsEmulator, pool: BlockingPool) -> None:
    timeout = 0.5
    ci = make_ci(emu, pool, timeout=timeout)
    emu.run_build("app")
    emu.slow(5.0)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    t0 = time.monotonic()
    with pytest.raises(AdapterTimeout, match=r"^Jenkins: no answer from .* within 0\.5 s \(build #1 of job `app`\)$"):
        await ci.build("app", 1)
    elapsed = time.monotonic() - t0
    task.cancel()
    assert elapsed < timeout + 2
    assert ticks >= 10  # the loop kept running while a pool thread waited for Jenkins

    emu.clear_faults()
    emu.slow(5.0, "/build")  # only the trigger POST hangs
    with pytest.raises(AdapterTimeout, match=r"\(job `app`\); the build may have been queued anyway$"):
        await ci.trigger("app", {})
    ci.close()


async def test_check_says_who_we_are(emu: JenkinsEmulator, ci: JenkinsCI) -> None:
    assert await ci.check() == f"Jenkins 2.479.3 at {emu.url} as opsloop"


# --- mapping details ---------------------------------------------------------------------------


async def test_freestyle_build_without_build_data_takes_the_commit_from_its_change_set(
    emu: JenkinsEmulator, ci: JenkinsCI
) -> None:
    emu.add_job(
        "legacy", kind="freestyle", script=BuildScript(duration=0, commit="abc1234", build_data=False, branch="x")
    )
    emu.run_build("legacy")
    build = await ci.build("legacy", 1)
    assert build.commit == "abc1234"
    assert build.branch is None  # no parameter and no git data to say which
    assert build.state is BuildState.SUCCESS


# --- the emulator is as strict as Jenkins (raw python-jenkins / requests) -------------------------


async def test_emulator_strictness(emu: JenkinsEmulator) -> None:
    client = jenkins.Jenkins(emu.url, username=emu.user, password=emu.token, timeout=5)

    # build_job(name, {}) posts /build, which a parameterized job refuses.
    with pytest.raises(requests.HTTPError) as info:
        await asyncio.to_thread(client.build_job, "release", {})
    refused = info.value.response
    assert refused is not None and refused.status_code == 400 and "Nothing is submitted" in refused.text

    # An identical queued buildWithParameters: 303 to the existing item, no Location at the end.
    await asyncio.to_thread(client.build_job, "release", {"VERSION": "1"})
    with pytest.raises(jenkins.EmptyResponseException):
        await asyncio.to_thread(client.build_job, "release", {"VERSION": "1"})

    # Parameters to a job that has none.
    with pytest.raises(requests.HTTPError) as info:
        await asyncio.to_thread(client.build_job, "app", {"X": "1"})
    assert info.value.response is not None and info.value.response.status_code == 400

    def raw(method: str, path: str, **kw: object) -> requests.Response:
        return requests.request(method, emu.url + path, timeout=5, allow_redirects=False, **kw)  # type: ignore[arg-type]

    auth = (emu.user, emu.token)
    no_crumb = await asyncio.to_thread(raw, "POST", "job/app/build", auth=auth)
    assert no_crumb.status_code == 403 and "No valid crumb" in no_crumb.text
    assert no_crumb.headers["X-Jenkins"] == "2.479.3"

    # A crumb without its session cookie is refused too.
    issued = await asyncio.to_thread(raw, "GET", "crumbIssuer/api/json", auth=auth)
    crumb = issued.json()["crumb"]
    assert any(c.name.startswith("JSESSIONID.") for c in issued.cookies)
    without_cookie = await asyncio.to_thread(raw, "POST", "job/app/build", auth=auth, headers={"Jenkins-Crumb": crumb})
    assert without_cookie.status_code == 403
    with_both = await asyncio.to_thread(
        raw, "POST", "job/app/build", auth=auth, headers={"Jenkins-Crumb": crumb}, cookies=issued.cookies
    )
    assert with_both.status_code == 201
    assert re.fullmatch(rf"{re.escape(emu.url)}queue/item/\d+/", with_both.headers["Location"])

    unknown = await asyncio.to_thread(raw, "GET", "job/nope/api/json", auth=auth)
    assert unknown.status_code == 404 and unknown.headers["Content-Type"].startswith("text/html")
    anonymous = await asyncio.to_thread(raw, "GET", "job/app/api/json")
    assert anonymous.status_code == 403
    assert (await asyncio.to_thread(raw, "GET", "")).headers["X-Jenkins"] == "2.479.3"
    bad = await asyncio.to_thread(raw, "GET", "me/api/json", auth=(emu.user, "nope"))
    assert bad.status_code == 401 and "Invalid password/token for user: opsloop" in bad.text

    # disabled -> 409
    emu.set_disabled("app")
    with pytest.raises(requests.HTTPError) as info:
        await asyncio.to_thread(client.build_job, "app")
    assert info.value.response is not None and info.value.response.status_code == 409


async def test_emulator_job_info_and_tree(emu: JenkinsEmulator, clock: FakeClock) -> None:
    client = jenkins.Jenkins(emu.url, username=emu.user, password=emu.token, timeout=5)
    emu.run_build("deploy", {"IMAGE_TAG": "1"})
    emu.run_build("app")  # running (30 s)
    info = await asyncio.to_thread(client.get_job_info, "deploy")
    assert info["nextBuildNumber"] == 2 and info["lastSuccessfulBuild"]["number"] == 1
    (prop,) = info["property"]
    assert [d["name"] for d in prop["parameterDefinitions"]] == ["IMAGE_TAG", "BRANCH", "OPSLOOP_REQUEST"]
    app = await asyncio.to_thread(client.get_job_info, "app")
    assert app["color"] == "notbuilt_anime" and app["lastCompletedBuild"] is None
    running = await asyncio.to_thread(client.get_build_info, "app", 1)
    assert running["building"] and running["result"] is None and running["duration"] == 0
    assert running["changeSets"][0]["items"][0]["commitId"] == COMMIT
    clock.advance(30)
    done = await asyncio.to_thread(client.get_build_info, "app", 1)
    assert done["result"] == "SUCCESS" and done["duration"] == 30_000
    assert "Finished: SUCCESS" in await asyncio.to_thread(client.get_build_console_output, "app", 1)
    tree = await asyncio.to_thread(
        client.jenkins_open,
        requests.Request("GET", f"{emu.url}job/app/api/json", params={"tree": "builds[number,queueId]{0,1}"}),
    )
    assert '"builds":[{"_class":"org.jenkinsci.plugins.workflow.job.WorkflowRun","number":1,"queueId":' in tree


async def test_notification_payload_and_delivery(emu: JenkinsEmulator, clock: FakeClock) -> None:
    emu.add_job("tested", script=BuildScript(duration=10, tests=[Case("a"), Case("b", status="FAILED")]))
    emu.run_build("tested")
    started_payload = emu.notification_payload("tested", 1, "STARTED")
    assert started_payload["name"] == "tested" and started_payload["url"] == "job/tested/"
    assert "status" not in started_payload["build"] and started_payload["build"]["phase"] == "STARTED"
    clock.advance(10)
    final = emu.notification_payload("tested", 1, "FINALIZED")
    assert final["build"]["status"] == "SUCCESS" and final["build"]["number"] == 1
    assert final["build"]["scm"]["commit"] and final["build"]["queue_id"]
    assert final["build"]["test_summary"] == {
        "total": 2,
        "failed": 1,
        "passed": 1,
        "skipped": 0,
        "failed_tests": ["tests.test_app.b"],
    }

    received: list[tuple[str, dict[str, object]]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append((request.headers["Content-Type"], await request.json()))
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hooks/jenkins", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        assert await emu.notify(f"http://127.0.0.1:{port}/hooks/jenkins", "tested", 1, "COMPLETED") == 200
    finally:
        await runner.cleanup()
    ((ctype, body),) = received
    assert ctype == "application/json;charset=UTF-8"
    assert body == emu.notification_payload("tested", 1, "COMPLETED")
