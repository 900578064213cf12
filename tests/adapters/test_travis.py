"""Contract tests of the Travis CI adapter against the Travis API v3 emulator."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

import aiohttp
import pytest
import pytest_asyncio

from adapters.travis import TravisCI, _default_web_url
from bot.ports import (
    AdapterError,
    AdapterNotFound,
    AdapterTimeout,
    AdapterUnavailable,
    BuildRef,
    BuildState,
    CIServer,
)
from tests.emulators.travis import TravisEmulator

T = TypeVar("T")
SLUG = "org/app"


@pytest_asyncio.fixture
async def emu() -> AsyncIterator[TravisEmulator]:
    async with TravisEmulator() as e:
        e.add_repo(SLUG)
        yield e
        assert not e.server_errors


@pytest_asyncio.fixture
async def ci(emu: TravisEmulator) -> AsyncIterator[TravisCI]:
    adapter = TravisCI(emu.url, emu.token, timeout=2.0)
    yield adapter
    await adapter.close()


async def started_build(ci: TravisCI, emu: TravisEmulator, slug: str = SLUG, **params: str) -> int:
    """Trigger, let Travis process the request, and return the build id."""
    ref = await ci.trigger(slug, params)
    emu.tick()
    located = await ci.locate(ref)
    assert located.number is not None
    return located.number


async def heartbeat_while(coro: Awaitable[T]) -> tuple[T | BaseException, int]:
    """Run `coro` while counting how often a 10 ms heartbeat got the loop; (result or error, beats)."""
    beats = 0
    stop = asyncio.Event()

    async def beat() -> None:
        nonlocal beats
        while not stop.is_set():
            await asyncio.sleep(0.01)
            beats += 1

    task = asyncio.create_task(beat())
    try:
        result: T | BaseException = await coro
    except BaseException as err:
        result = err
    stop.set()
    await task
    return result, beats


# --- wire format --------------------------------------------------------------------------------------


def test_travis_ci_is_a_ci_server() -> None:
    ci: CIServer = TravisCI("https://api.travis-ci.com", "t", timeout=1)
    assert ci.name == "travis"


async def test_every_request_carries_the_api_version_and_token(ci: TravisCI, emu: TravisEmulator) -> None:
    number = await started_build(ci, emu, VERSION="1.2.3")
    emu.tick(3)
    await ci.build(SLUG, number)
    await ci.log(SLUG, number)
    await ci.last_build(SLUG)
    await ci.check()
    assert len(emu.requests) >= 6
    for seen in emu.requests:
        assert seen.headers["Travis-API-Version"] == "3"
        assert seen.headers["Authorization"] == f"token {emu.token}"
        assert seen.headers["Accept"] == "application/json"
        assert seen.status < 400


async def test_the_slug_travels_as_one_encoded_segment(ci: TravisCI, emu: TravisEmulator) -> None:
    ref = await ci.trigger(SLUG, {})
    await ci.locate(ref)
    await ci.last_build(SLUG)
    paths = [s.path for s in emu.requests]
    assert paths[0] == "/repo/org%2Fapp/requests"
    assert paths[1] == f"/repo/org%2Fapp/request/{ref.queue_id}"
    assert paths[2] == "/repo/org%2Fapp/builds"
    # The emulator is as strict as Travis: an unencoded slug is two segments and matches nothing.
    headers = {"Travis-API-Version": "3", "Authorization": f"token {emu.token}"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{emu.url}/repo/org/app/requests", json={}, headers=headers) as resp,
    ):
        assert resp.status == 404
        assert (await resp.json())["error_type"] == "not_found"


async def test_trigger_posts_a_request_with_params_as_env(ci: TravisCI, emu: TravisEmulator) -> None:
    ref = await ci.trigger(SLUG, {"VERSION": "1.2.3", "NOTE": "hello world"}, branch="release")
    assert ref == BuildRef(ci="travis", job=SLUG, queue_id=ref.queue_id)
    (post,) = emu.seen("requests", "POST")
    assert post.headers["Content-Type"].startswith("application/json")
    request = post.body["request"]
    assert request["branch"] == "release"
    assert request["message"] == "opsloop: VERSION=1.2.3 NOTE=hello world"
    assert request["merge_mode"] == "deep_merge_append"
    # Travis exports env entries through a shell, so values are quoted.
    assert request["config"] == {"env": {"global": ["VERSION=1.2.3", "NOTE='hello world'"]}}
    assert ref.queue_id == str(next(iter(emu.travis_requests)))


async def test_trigger_without_params_or_branch_sends_neither(ci: TravisCI, emu: TravisEmulator) -> None:
    await ci.trigger(SLUG, {})
    request = emu.seen("requests", "POST")[0].body["request"]
    assert set(request) == {"message"}
    assert request["message"].startswith("opsloop")
    assert next(iter(emu.travis_requests.values())).branch == "main"  # the repository's default


async def test_trigger_refuses_a_parameter_name_that_is_no_env_name(ci: TravisCI, emu: TravisEmulator) -> None:
    with pytest.raises(AdapterError, match="`bad-name` can't be an environment variable name"):
        await ci.trigger(SLUG, {"bad-name": "x"})
    assert emu.requests == []


async def test_trigger_finds_the_request_when_the_server_leaves_out_its_id(ci: TravisCI, emu: TravisEmulator) -> None:
    emu.legacy_request_ids = True
    ref = await ci.trigger(SLUG, {"K": "1"})
    assert "id" not in emu.seen("requests", "POST")[0].body
    assert ref.queue_id == str(max(emu.travis_requests))
    emu.tick()
    assert (await ci.locate(ref)).number is not None


# --- request -> build -> result --------------------------------------------------------------------------


async def test_trigger_locate_and_follow_a_build_to_success(ci: TravisCI, emu: TravisEmulator) -> None:
    ref = await ci.trigger(SLUG, {"VERSION": "1.2.3"})
    waiting = await ci.locate(ref)
    assert waiting.number is None and not waiting.cancelled
    assert waiting.why and "not turned the request into a build" in waiting.why

    located = await ci.locate(waiting)  # the emulator processes a request after one read
    assert located.number is not None and located.why is None
    assert located.number in emu.builds
    travis_build = emu.builds[located.number]

    queued = await ci.build(SLUG, located.number)
    assert (queued.state, queued.label, queued.number) == (BuildState.QUEUED, "#1", travis_build.id)
    assert queued.started_at is None and queued.duration_s is None

    emu.tick()
    running = await ci.build(SLUG, located.number)
    assert running.state is BuildState.RUNNING
    assert running.started_at is not None and running.duration_s is None

    emu.tick()
    done = await ci.build(SLUG, located.number)
    assert done.state is BuildState.SUCCESS and done.state.finished
    assert done.duration_s is not None and done.duration_s > 0
    assert done.commit == travis_build.sha
    assert done.branch == "main"
    assert done.cause == "API request by chatops-bot"
    assert done.url is None  # no build page known for a private API URL


async def test_a_located_ref_is_not_asked_again(ci: TravisCI, emu: TravisEmulator) -> None:
    ref = BuildRef(ci="travis", job=SLUG, queue_id="1001", number=5001)
    assert await ci.locate(ref) is ref
    assert emu.requests == []


@pytest.mark.parametrize(
    ("outcome", "state"),
    [
        ("passed", BuildState.SUCCESS),
        ("failed", BuildState.FAILURE),
        ("errored", BuildState.FAILURE),
        ("canceled", BuildState.ABORTED),
    ],
)
async def test_finished_states_are_mapped(ci: TravisCI, emu: TravisEmulator, outcome: str, state: BuildState) -> None:
    emu.next_outcome(SLUG, outcome)
    number = await started_build(ci, emu)
    emu.tick(3)
    assert emu.builds[number].state == outcome
    assert (await ci.build(SLUG, number)).state is state


@pytest.mark.parametrize(
    ("travis_state", "state"),
    [
        ("created", BuildState.QUEUED),
        ("received", BuildState.QUEUED),
        ("queued", BuildState.QUEUED),
        ("started", BuildState.RUNNING),
    ],
)
async def test_unfinished_states_are_mapped(
    ci: TravisCI, emu: TravisEmulator, travis_state: str, state: BuildState
) -> None:
    build = emu.add_build(SLUG, state=travis_state)
    assert (await ci.build(SLUG, build.id)).state is state


async def test_a_rejected_request_is_a_cancelled_ref(ci: TravisCI, emu: TravisEmulator) -> None:
    emu.reject_next(SLUG, "Branch not included or excluded")
    ref = await ci.trigger(SLUG, {}, branch="feature/x")
    emu.tick()
    located = await ci.locate(ref)
    assert located.cancelled and located.number is None
    assert located.why == "Travis CI rejected the request: Branch not included or excluded"
    assert not emu.builds


async def test_a_build_of_another_repository_is_not_found(ci: TravisCI, emu: TravisEmulator) -> None:
    emu.add_repo("org/other")
    other = emu.add_build("org/other", state="started")
    with pytest.raises(AdapterNotFound, match="not a build of `org/app`"):
        await ci.build(SLUG, other.id)
    with pytest.raises(AdapterNotFound):
        await ci.abort(SLUG, other.id)
    assert emu.seen("cancel") == []
    assert other.state == "started"


async def test_an_unknown_build_is_not_found(ci: TravisCI) -> None:
    with pytest.raises(AdapterNotFound, match="no build 999 in `org/app`"):
        await ci.build(SLUG, 999)


async def test_test_report_is_none(ci: TravisCI, emu: TravisEmulator) -> None:
    assert await ci.test_report(SLUG, 1) is None
    assert emu.requests == []


# --- last build -----------------------------------------------------------------------------------------


async def test_last_build_and_last_successful_build(ci: TravisCI, emu: TravisEmulator) -> None:
    assert await ci.last_build(SLUG) is None
    passed = emu.add_build(SLUG, state="passed")
    failed = emu.add_build(SLUG, state="failed")
    emu.add_build(SLUG, state="passed", event_type="pull_request", branch="feature")

    last = await ci.last_build(SLUG)
    assert last is not None and (last.number, last.state) == (failed.id, BuildState.FAILURE)
    good = await ci.last_build(SLUG, successful=True)
    assert good is not None and (good.number, good.label) == (passed.id, f"#{passed.number}")
    assert good.cause == "push by chatops-bot"

    queries = [s.query for s in emu.seen("builds")]
    assert queries[-1] == {
        "limit": "1",
        "sort_by": "id:desc",
        "build.event_type": "push,api,cron",
        "build.state": "passed",
    }
    assert "build.state" not in queries[-2]


async def test_last_build_includes_a_running_build(ci: TravisCI, emu: TravisEmulator) -> None:
    emu.add_build(SLUG, state="passed")
    number = await started_build(ci, emu)
    emu.tick()
    last = await ci.last_build(SLUG)
    assert last is not None and (last.number, last.state) == (number, BuildState.RUNNING)


# --- abort ----------------------------------------------------------------------------------------------


async def test_abort_cancels_a_running_build_and_is_idempotent(ci: TravisCI, emu: TravisEmulator) -> None:
    number = await started_build(ci, emu)
    emu.tick()
    await ci.abort(SLUG, number)
    assert emu.builds[number].state == "canceled"
    assert (await ci.build(SLUG, number)).state is BuildState.ABORTED
    assert [s.path for s in emu.seen("cancel")] == [f"/build/{number}/cancel"]

    await ci.abort(SLUG, number)  # a second click: already finished, nothing to do
    assert len(emu.seen("cancel")) == 1


async def test_abort_tolerates_a_build_that_finishes_meanwhile(ci: TravisCI, emu: TravisEmulator) -> None:
    number = await started_build(ci, emu)
    emu.fail_next("cancel", status=409, error_type="build_not_cancelable", message="build is not running")
    await ci.abort(SLUG, number)


# --- logs -----------------------------------------------------------------------------------------------


async def test_log_of_a_build_that_has_not_started(ci: TravisCI, emu: TravisEmulator) -> None:
    number = await started_build(ci, emu)
    chunk = await ci.log(SLUG, number)
    assert (chunk.text, chunk.next_offset, chunk.more) == ("", 0, True)


async def test_log_offsets_follow_the_text_as_it_grows(ci: TravisCI, emu: TravisEmulator) -> None:
    emu.add_repo("org/matrix", jobs=3, run_ticks=2)
    emu.next_outcome("org/matrix", "failed", log="✗ 2 tests failed — see above\n")
    number = await started_build(ci, emu, "org/matrix", VERSION="1.2.3")

    received = ""
    offset = 0
    for _ in range(20):
        chunk = await ci.log("org/matrix", number, offset)
        assert chunk.next_offset == offset + len(chunk.text)
        received += chunk.text
        offset = chunk.next_offset
        if not chunk.more:
            break
        emu.tick()
    else:
        pytest.fail("the build never finished")

    # The pieces add up to the whole log: nothing lost, nothing repeated.
    whole = await ci.log("org/matrix", number)
    assert whole.text == received and not whole.more
    jobs = emu.builds[number].jobs
    assert received.count("--- job ") == 3
    for job in jobs:
        assert f"--- job {job.number} ---\n{job.log}" in received
    assert "$ export VERSION=1.2.3" in received
    assert received.endswith("Done. Your build exited with 1.\n")
    assert "✗ 2 tests failed — see above" in received

    # Offsets count characters, not bytes.
    tail = await ci.log("org/matrix", number, len(received) - 5)
    assert tail.text == received[-5:]


async def test_log_starts_again_after_a_restart(ci: TravisCI, emu: TravisEmulator) -> None:
    number = await started_build(ci, emu)
    emu.tick(2)
    first = await ci.log(SLUG, number)
    assert not first.more and "Done." in first.text

    headers = {"Travis-API-Version": "3", "Authorization": f"token {emu.token}"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{emu.url}/build/{number}/restart", headers=headers) as r,
    ):
        assert r.status == 202
    emu.tick()
    again = await ci.log(SLUG, number, first.next_offset)
    assert again.more
    assert again.text.startswith("Worker information") and again.next_offset == len(again.text)


# --- errors ---------------------------------------------------------------------------------------------


async def test_an_unknown_repository_is_named(ci: TravisCI, emu: TravisEmulator) -> None:
    emu.add_repo("org/secret", visible=False)
    for slug in ("org/nope", "org/secret"):
        with pytest.raises(AdapterNotFound) as err:
            await ci.trigger(slug, {})
        assert str(err.value) == f"Travis CI: no repository `{slug}` (or the token can't see it)"
        with pytest.raises(AdapterNotFound, match=f"no repository `{slug}`"):
            await ci.last_build(slug)


async def test_the_request_limit_is_reported(ci: TravisCI, emu: TravisEmulator) -> None:
    for _ in range(10):
        await ci.trigger(SLUG, {})
    with pytest.raises(AdapterError) as err:
        await ci.trigger(SLUG, {})
    assert not isinstance(err.value, AdapterNotFound | AdapterUnavailable)
    assert str(err.value) == "Travis CI: refused: request limit reached (10 per hour) for org/app"
    assert emu.requests[-1].status == 429

    emu.add_repo("org/small", rate_limit=2)
    await ci.trigger("org/small", {})
    await ci.trigger("org/small", {})
    with pytest.raises(AdapterError, match=r"request limit reached \(2 per hour\) for org/small"):
        await ci.trigger("org/small", {})
    emu.advance(3600)  # the hour is over
    await ci.trigger("org/small", {})


async def test_an_inactive_repository_is_reported(ci: TravisCI, emu: TravisEmulator) -> None:
    emu.add_repo("org/old", active=False)
    with pytest.raises(AdapterError, match="repository org/old is not active on Travis CI"):
        await ci.trigger("org/old", {})
    assert emu.requests[-1].status == 406


async def test_a_read_only_token_is_reported(ci: TravisCI, emu: TravisEmulator) -> None:
    emu.add_repo("org/ro", writable=False)
    with pytest.raises(AdapterError, match="the token may not do this on org/ro"):
        await ci.trigger("org/ro", {})


async def test_a_wrong_token_is_reported(emu: TravisEmulator) -> None:
    ci = TravisCI(emu.url, "wrong", timeout=2.0)
    try:
        with pytest.raises(AdapterError, match="refused the API token"):
            await ci.check()
    finally:
        await ci.close()
    assert emu.requests[-1].status == 403


async def test_check_says_who_we_are(ci: TravisCI, emu: TravisEmulator) -> None:
    assert await ci.check() == f"logged in to Travis CI at {emu.url} as chatops-bot"
    assert emu.requests[-1].path == "/user"


@pytest.mark.parametrize(("status", "kind"), [(500, AdapterError), (503, AdapterUnavailable)])
async def test_server_errors(ci: TravisCI, emu: TravisEmulator, status: int, kind: type[AdapterError]) -> None:
    emu.fail_next("user", status=status)
    with pytest.raises(kind, match=f"Travis CI: answered {status}") as err:
        await ci.check()
    assert not isinstance(err.value, AdapterNotFound)


async def test_unreachable_is_unavailable_and_the_loop_stays_responsive(emu: TravisEmulator) -> None:
    ci = TravisCI(emu.url, emu.token, timeout=2.0)
    try:
        await ci.check()  # leaves a kept-alive connection in the pool
        await emu.down()
        for _ in range(2):  # the pooled connection first, then a fresh one
            result, _beats = await heartbeat_while(ci.check())
            assert isinstance(result, AdapterUnavailable), result
            assert str(result).startswith("Travis CI: ")
        await emu.up()
        assert "chatops-bot" in await ci.check()
    finally:
        await ci.close()


async def test_a_closed_port_is_unavailable() -> None:
    async with TravisEmulator() as gone:
        url = gone.url
    ci = TravisCI(url, "t", timeout=2.0)
    try:
        with pytest.raises(AdapterUnavailable, match=f"can't reach {url}"):
            await ci.check()
    finally:
        await ci.close()


async def test_a_slow_server_times_out_within_the_timeout(emu: TravisEmulator) -> None:
    emu.slow("build", 5.0)
    build = emu.add_build(SLUG, state="started")
    ci = TravisCI(emu.url, emu.token, timeout=0.3)
    try:
        began = time.monotonic()
        result, beats = await heartbeat_while(ci.build(SLUG, build.id))
        elapsed = time.monotonic() - began
    finally:
        await ci.close()
    assert isinstance(result, AdapterTimeout), result
    assert str(result) == f"Travis CI: no answer within 0.3 s (GET /build/{build.id})"
    assert elapsed < 5.0  # gave up long before the server would have answered
    assert beats >= 3  # the loop kept running meanwhile


async def test_a_poller_sees_the_build_through_with_a_ticking_emulator() -> None:
    async with TravisEmulator(auto_tick=0.02) as emu:
        emu.add_repo(SLUG, jobs=2)
        ci = TravisCI(emu.url, emu.token, timeout=2.0)
        try:
            ref = await ci.trigger(SLUG, {})
            seen: list[BuildState] = []
            for _ in range(500):
                ref = await ci.locate(ref)
                if ref.number is not None:
                    build = await ci.build(SLUG, ref.number)
                    if not seen or seen[-1] is not build.state:
                        seen.append(build.state)
                    if build.state.finished:
                        break
                await asyncio.sleep(0.005)
        finally:
            await ci.close()
    assert seen[-1] is BuildState.SUCCESS
    assert BuildState.RUNNING in seen


async def test_the_emulator_refuses_requests_without_version_or_token(emu: TravisEmulator) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{emu.url}/user", headers={"Authorization": f"token {emu.token}"}) as resp:
            assert resp.status == 400
        async with session.get(f"{emu.url}/user", headers={"Travis-API-Version": "3"}) as resp:
            assert resp.status == 403
            assert (await resp.json()) == {
                "@type": "error",
                "error_type": "login_required",
                "error_message": "login required",
            }


# --- session ownership ----------------------------------------------------------------------------------


async def test_a_given_session_is_used_and_left_open(emu: TravisEmulator) -> None:
    async with aiohttp.ClientSession() as session:
        ci = TravisCI(emu.url, emu.token, timeout=2.0, session=session)
        await ci.check()
        await ci.close()
        assert not session.closed
        await ci.check()


async def test_the_own_session_is_made_lazily_and_closed(emu: TravisEmulator) -> None:
    ci = TravisCI(emu.url, emu.token, timeout=2.0)
    await ci.close()  # nothing to close yet
    await ci.check()
    await ci.close()
    await ci.check()  # a new session after close
    await ci.close()


async def test_build_pages_are_linked(emu: TravisEmulator) -> None:
    build = emu.add_build(SLUG, state="passed")
    ci = TravisCI(emu.url, emu.token, timeout=2.0, web_url="https://travis.example.com/github/")
    try:
        got = await ci.build(SLUG, build.id)
    finally:
        await ci.close()
    assert got.url == f"https://travis.example.com/github/org/app/builds/{build.id}"
    assert _default_web_url("https://api.travis-ci.com/") == "https://app.travis-ci.com/github"
    assert _default_web_url(emu.url) is None
