"""The build and test stages end to end: Slack emulator <- opsloop -> Jenkins/Travis emulators, through
the real python-jenkins and aiohttp adapters."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from bot import rendering
from bot.builds import BuildRow
from bot.store import rows
from handlers.build import card as build_card
from tests.emulators.jenkins import BuildScript, Case, JenkinsEmulator, junit_xml
from tests.emulators.slack import SlackEmulator
from tests.emulators.travis import TravisEmulator
from tests.support import ALICE, BOB, EVE, SlackHarness, click, console_ops, slack_ops, slack_workspace, wait_until

TOKEN_ENV = "OPSLOOP_TEST_JENKINS_TOKEN"


@pytest.fixture
async def emu():
    async with SlackEmulator() as e:
        slack_workspace(e)
        yield e


@pytest.fixture
async def jenkins(monkeypatch: pytest.MonkeyPatch):
    async with JenkinsEmulator() as j:
        monkeypatch.setenv(TOKEN_ENV, j.token)
        yield j


def overrides(jenkins: JenkinsEmulator, **extra: Any) -> dict[str, Any]:
    return {
        "integrations": {
            "jenkins": {"url": jenkins.url, "user": jenkins.user, "token_env": TOKEN_ENV, "timeout": 2, "poll": 0.05}
        },
        "services": {"api": {"build": {"ci": "jenkins", "job": "shop/api-build", "params": {"DEPLOY": "no"}}}, **extra},
        "permissions": {"build.*": ["developers"], "plan.*": ["developers"]},
    }


def card_text(h: SlackHarness, channel: str = "C0OPS") -> str:
    """The text of the channel's one build card ("" before it is posted; never two)."""
    cards = [m for m in h.emu.top_level(channel) if m.text.startswith("Build ")]
    assert len(cards) <= 1, [m.text for m in h.emu.top_level(channel)]
    return (json.dumps(cards[0].blocks, ensure_ascii=False) + cards[0].text) if cards else ""


async def test_build_is_triggered_followed_and_finished_on_one_card(
    tmp_path: Path, emu: SlackEmulator, jenkins: JenkinsEmulator
) -> None:
    jenkins.add_job(
        "shop/api-build",
        {"BRANCH": "main", "DEPLOY": "yes", "EXTRA": ""},
        script=BuildScript(
            result="UNSTABLE",
            duration=0.4,
            log=["compiling\n", "testing\n"],
            tests=[
                Case("test_ok"),
                Case("test_bad", "FAILED", error_details="assert 1 == 2"),
                Case("test_skip", "SKIPPED"),
            ],
        ),
    )
    async with slack_ops(tmp_path, emu, **overrides(jenkins)) as h:
        res = await emu.send_command(h.url, "build api branch=release-1 EXTRA=1", user_id=ALICE)
        assert res.status == 200 and "Starting a build of *api*" in res.body_text
        assert "Unknown" not in res.body_text
        await h.services.jobs.wait_idle(timeout=30)
        await h.settle()
        text = card_text(h)
        assert "unstable" in text and "release-1" in text and "4f2d1c9b8a7e" in text and "<@U0ALICE>" in text
        assert "Re-run" in text and "Show log" in text and "Abort" not in text
        card = [m for m in emu.top_level("C0OPS") if m.text.startswith("Build ")][0]
        assert card.edited_count >= 2  # queued -> running -> finished, all on the same message
        [b] = jenkins.job_builds("shop/api-build")
        assert b.params["BRANCH"] == "release-1" and b.params["DEPLOY"] == "no" and b.params["EXTRA"] == "1"
        kinds = [
            r["kind"] for r in await h.services.store.read(lambda db: rows(db, "SELECT kind FROM events ORDER BY id"))
        ]
        assert kinds == ["build.started", "build.finished"]
        results = await h.services.store.read(lambda db: rows(db, "SELECT test_id, status FROM test_results"))
        assert {(r["test_id"], r["status"]) for r in results} == {
            ("tests.test_app.test_ok", "passed"),
            ("tests.test_app.test_bad", "failed"),
            ("tests.test_app.test_skip", "skipped"),
        }


async def test_abort_button_and_log_with_secrets_redacted(
    tmp_path: Path, emu: SlackEmulator, jenkins: JenkinsEmulator
) -> None:
    secret = os.environ[TOKEN_ENV]
    lines = [f"step {i}\n" for i in range(60)] + [f"curl -H 'Authorization: Bearer {secret}'\n", "password=hunter2\n"]
    jenkins.add_job("shop/api-build", {"DEPLOY": "yes"}, script=BuildScript(duration=None, log=lines))
    async with slack_ops(tmp_path, emu, **overrides(jenkins)) as h:
        await emu.send_command(h.url, "build api", user_id=ALICE)
        await wait_until(lambda: "running" in card_text(h), 20, "the build to run")
        card = [m for m in emu.top_level("C0OPS") if m.text.startswith("Build ")][0]
        await click(h, "C0OPS", card.ts, "Abort", EVE, jobs=False)  # eve is no developer
        assert any("build.abort" in e.text and "developers" in e.text for e in emu.ephemerals if e.user == EVE)
        assert jenkins.build("shop/api-build", 1).result is None
        await click(h, "C0OPS", card.ts, "Abort", BOB, jobs=False)
        await h.services.jobs.wait_idle(timeout=30)
        await h.settle()
        assert jenkins.build("shop/api-build", 1).result == "ABORTED"
        assert "aborted" in card_text(h)
        res = await emu.send_command(h.url, "build log api #1", user_id=BOB)
        await h.settle()
        shown = json.dumps(res.json)
        assert "Last 40 of" in shown and secret not in shown and "hunter2" not in shown
        [upload] = emu.files
        assert secret.encode() not in upload.content and b"hunter2" not in upload.content
        assert b"step 0" in upload.content  # the whole log, not only the tail


async def test_builds_started_outside_chat_get_the_same_card(
    tmp_path: Path, emu: SlackEmulator, jenkins: JenkinsEmulator
) -> None:
    jenkins.add_job("shop/api-build", {"DEPLOY": "yes"}, script=BuildScript(duration=None))
    async with slack_ops(tmp_path, emu, **overrides(jenkins)) as h:
        jenkins.run_build("shop/api-build")
        hook = h.url.replace("/slack/events", "/hooks/jenkins")
        headers = {"Authorization": "Bearer hook-secret-123"}
        for phase in ("QUEUED", "STARTED", "STARTED"):
            status = await _post(hook, jenkins.notification_payload("shop/api-build", 1, phase), headers)
            assert status in (200, 202)
        await h.settle(jobs=False)
        await wait_until(lambda: "running" in card_text(h), 20, "the card")
        jenkins.finish_build("shop/api-build", 1, "FAILURE")
        assert await _post(hook, jenkins.notification_payload("shop/api-build", 1, "FINALIZED"), headers) == 202
        await h.services.jobs.wait_idle(timeout=30)
        await h.settle()
        text = card_text(h)  # still exactly one card
        assert "failure" in text and "Started by" in text  # the cause Jenkins gives


@pytest.mark.parametrize("length", [3001, 3000])
def test_a_build_url_too_long_for_a_button_costs_the_button_not_the_card(length: int) -> None:
    """Found by the webhook fuzzer: Slack takes a button url of at most 3,000 characters, and a Jenkins
    notification whose full_url was longer made the build card fail to render, so no card was posted."""
    base = "http://jenkins.example/job/api-build/1/?"
    url = base + "q" * (length - len(base))
    row = BuildRow(
        id=1, service="api", ci="jenkins", job="shop/api-build", queue_id=None, number=1, label="#1",
        state="running", requester=None, channel="C0OPS", params={}, branch=None, commit=None, cause=None,
        url=url, started_at=0.0, finished_at=None, duration_s=None, created_at=0.0,
    )  # fmt: skip
    blocks = rendering.message(build_card(row, typical_s=None, now=30.0))["blocks"]
    links = [e["url"] for b in blocks for e in b.get("elements", []) if e.get("url")]
    assert links == ([] if length > 3000 else [url])
    assert "running" in json.dumps(blocks)


async def _post(url: str, body: dict[str, Any], headers: dict[str, str]) -> int:
    import aiohttp

    async with aiohttp.ClientSession() as s, s.post(url, json=body, headers=headers) as r:
        return r.status


async def test_a_watch_survives_a_restart(tmp_path: Path, emu: SlackEmulator, jenkins: JenkinsEmulator) -> None:
    jenkins.add_job("shop/api-build", {"DEPLOY": "yes"}, script=BuildScript(duration=None))
    async with slack_ops(tmp_path, emu, **overrides(jenkins)) as h:
        await emu.send_command(h.url, "build api", user_id=ALICE)
        await wait_until(lambda: "running" in card_text(h), 20, "the build to run")
    # opsloop is gone (its job row is still `running`); the build finishes meanwhile.
    jenkins.finish_build("shop/api-build", 1, "SUCCESS")
    async with slack_ops(tmp_path, emu, **overrides(jenkins)) as h2:
        await h2.services.jobs.wait_idle(timeout=30)
        await h2.settle()
        assert "success" in card_text(h2)  # the same card, finished
        assert len(jenkins.job_builds("shop/api-build")) == 1  # re-attached, not re-triggered


async def test_jenkins_down_or_unknown_names_it_quickly(
    tmp_path: Path, emu: SlackEmulator, jenkins: JenkinsEmulator
) -> None:
    jenkins.add_job("shop/api-build", {"DEPLOY": "yes"})
    async with slack_ops(tmp_path, emu, **overrides(jenkins)) as h:
        res = await emu.send_command(h.url, "build apj", user_id=ALICE)
        assert "no service `apj`" in res.body_text and "Did you mean `api`" in res.body_text
        await jenkins.down()
        res = await emu.send_command(h.url, "build api", user_id=ALICE)
        assert res.status == 200 and res.elapsed_seconds < 2.5  # the ack never waits for Jenkins
        await h.services.jobs.wait_idle(timeout=30)
        await h.settle()
        failures = [m.text for m in emu.messages("C0OPS") if "failed" in m.text and "Jenkins" in m.text]
        assert failures and "cannot reach" in failures[0]


async def test_test_report_compares_and_threads_failures(
    tmp_path: Path, emu: SlackEmulator, jenkins: JenkinsEmulator
) -> None:
    first = [Case("test_a"), Case("test_b", "FAILED", error_details="boom b"), Case("test_c")]
    second = [
        Case("test_a", "FAILED", error_details="boom a"),
        Case("test_b"),
        Case("test_c", "FAILED", error_details="boom c"),
    ]
    jenkins.add_job("shop/api-build", {"DEPLOY": "yes"}, script=BuildScript(result="UNSTABLE", tests=first))
    async with slack_ops(tmp_path, emu, **overrides(jenkins)) as h:
        await emu.send_command(h.url, "build api", user_id=ALICE)
        await h.services.jobs.wait_idle(timeout=30)
        jenkins.set_script("shop/api-build", BuildScript(result="UNSTABLE", tests=second))
        await emu.send_command(h.url, "build api", user_id=ALICE)
        await h.services.jobs.wait_idle(timeout=30)
        res = await emu.send_command(h.url, "test report api", user_id=ALICE)
        await h.settle()
        assert "Posted the test report" in res.body_text
        [report] = [m for m in emu.top_level("C0OPS") if m.text.startswith("❌ Tests of")]
        body = json.dumps(report.blocks)
        assert "1 passed, 2 failed, 0 skipped" in report.text
        assert "tests.test_app.test_a" in body and "tests.test_app.test_c" in body  # new failures
        assert "*Fixed:* `tests.test_app.test_b`" in body
        [thread] = emu.replies("C0OPS", report.ts)
        assert "boom a" in thread.text or "boom a" in json.dumps(thread.blocks)


async def test_travis_builds_too(tmp_path: Path, emu: SlackEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    async with TravisEmulator(tick_seconds=1, auto_tick=0.02) as travis:
        travis.add_repo("shop/web", outcome="passed")
        monkeypatch.setenv("OPSLOOP_TEST_TRAVIS_TOKEN", travis.token)
        cfg = {
            "integrations": {
                "travis": {"url": travis.url, "token_env": "OPSLOOP_TEST_TRAVIS_TOKEN", "timeout": 2, "poll": 0.05}
            },
            "services": {"web": {"build": {"ci": "travis", "job": "shop/web"}}},
        }
        async with slack_ops(tmp_path, emu, **cfg) as h:
            await emu.send_command(h.url, "build web branch=main", user_id=ALICE)
            await h.services.jobs.wait_idle(timeout=30)
            await h.settle()
            assert "success" in card_text(h)


@pytest.mark.servers
async def test_smoke_check_in_a_real_browser(tmp_path: Path, emu: SlackEmulator) -> None:
    from aiohttp import web

    from tests.conftest import require_servers

    if not (os.path.exists("/usr/bin/chromium") and os.path.exists("/usr/bin/chromedriver")):
        if require_servers():
            pytest.fail("Chromium and chromedriver are required (Debian packages chromium, chromium-driver)")
        pytest.skip("Chromium/chromedriver are not installed (Debian packages chromium, chromium-driver)")

    async def page(request: web.Request) -> web.Response:
        env = request.match_info["env"]
        body = "<title>Shop</title><div id='app'>ok</div>" if env == "staging" else "<title>Shop</title>down"
        return web.Response(text=f"<html><body>{body}</body></html>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/{env}/health", page)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    cfg = {
        "services": {
            "web": {
                "smoke": {
                    "pages": [
                        {"url": f"http://127.0.0.1:{port}/{{env}}/health", "text": "ok", "css": "#app", "timeout": 5}
                    ]
                }
            }
        },
        "environments": {"staging": {}, "prod": {}},
    }
    try:
        async with slack_ops(tmp_path, emu, **cfg) as h:
            res = await emu.send_command(h.url, "test smoke web staging", user_id=ALICE)
            assert "Checking 1 page of" in res.body_text
            await h.services.jobs.wait_idle(timeout=60)
            await h.settle()
            res = await emu.send_command(h.url, "test smoke web prod", user_id=ALICE)
            await h.services.jobs.wait_idle(timeout=60)
            await h.settle()
            res = await emu.send_command(h.url, "test smoke web qa", user_id=ALICE)
            assert "no environment `qa`" in res.body_text
            cards = [m for m in emu.top_level("C0OPS") if "Smoke check of web" in m.text]
            assert [c.text.split(":")[0] for c in cards] == [
                "✅ Smoke check of web in staging",
                "❌ Smoke check of web in prod",
            ]
            [shot] = emu.files
            assert shot.content.startswith(b"\x89PNG") and shot.thread_ts == cards[1].ts
    finally:
        await runner.cleanup()


# --- JUnit files archived as build artifacts (no JUnit plugin report) --------------------------------

SUREFIRE = "target/surefire-reports/*.xml"


def surefire(cases: list[Case]) -> dict[str, bytes]:
    """What a Maven build archives: one report per test class, and things that are not reports."""
    by_class: dict[str, list[Case]] = {}
    for c in cases:
        by_class.setdefault(c.class_name, []).append(c)
    files = {f"target/surefire-reports/TEST-{k}.xml": junit_xml(v, name=k) for k, v in by_class.items()}
    return {**files, "target/api.jar": b"PK\x03\x04 not a report", "target/surefire-reports/notes.txt": b"-"}


def artifact_overrides(jenkins: JenkinsEmulator, pattern: str = SUREFIRE) -> dict[str, Any]:
    cfg = overrides(jenkins)
    cfg["services"]["api"]["build"]["junit_artifacts"] = pattern
    return cfg


def card_of(h: SlackHarness, number: int) -> str:
    """The card of build #number (text and blocks)."""
    [card] = [m for m in h.emu.top_level("C0OPS") if m.text.startswith(f"Build api #{number}:")]
    return card.text + json.dumps(card.blocks, ensure_ascii=False)


async def test_archived_junit_files_give_counts_failures_and_comparisons(
    tmp_path: Path, emu: SlackEmulator, jenkins: JenkinsEmulator
) -> None:
    first = [
        Case("test_login", class_name="shop.LoginTest", suite="shop.LoginTest"),
        Case("test_logout", "FAILED", class_name="shop.LoginTest", suite="shop.LoginTest", error_details="401"),
        Case("test_cart", class_name="shop.CartTest", suite="shop.CartTest"),
        Case("test_pay", "SKIPPED", class_name="shop.CartTest", suite="shop.CartTest"),
    ]
    second = [
        Case("test_login", "FAILED", class_name="shop.LoginTest", suite="shop.LoginTest", error_details="timeout 5s"),
        Case("test_logout", class_name="shop.LoginTest", suite="shop.LoginTest"),
        Case("test_cart", class_name="shop.CartTest", suite="shop.CartTest"),
        Case("test_pay", "SKIPPED", class_name="shop.CartTest", suite="shop.CartTest"),
    ]
    # No `tests=`: Jenkins has no testReport for these builds (the JUnit plugin is absent).
    jenkins.add_job(
        "shop/api-build", {"DEPLOY": "yes"}, script=BuildScript(result="UNSTABLE", artifacts=surefire(first))
    )
    async with slack_ops(tmp_path, emu, **artifact_overrides(jenkins)) as h:
        await emu.send_command(h.url, "build api", user_id=ALICE)
        await h.settle()
        one = card_of(h, 1)
        assert "tests: 2 passed, 1 failed, 1 skipped" in one
        assert "`shop.LoginTest.test_logout`" in one and "no earlier results to compare with" in one
        assert "from 2 archived JUnit files" in one  # the two TEST-*.xml, not the jar or notes.txt

        # The same commit again: test_login now fails (new, and flaky: it passed on this commit before).
        jenkins.set_script("shop/api-build", BuildScript(result="UNSTABLE", artifacts=surefire(second)))
        await emu.send_command(h.url, "build api", user_id=ALICE)
        await h.settle()
        two = card_of(h, 2)
        assert "tests: 2 passed, 1 failed, 1 skipped" in two
        assert "`shop.LoginTest.test_login` _(new, flaky)_" in two
        assert "*Fixed since #1:* `shop.LoginTest.test_logout`" in two
        assert "compared with #1: 1 new failure, 1 fixed, 0 still failing, 1 flaky" in two
        assert "⚠️" not in two  # nothing went wrong reading them
        assert jenkins.requests_to("/testReport/")  # the plugin's report was asked for first
        for r in jenkins.requests_to("/artifact/"):
            assert r.headers["Authorization"].startswith("Basic ")
        downloaded = {r.path.rsplit("/", 1)[-1] for r in jenkins.requests_to("/artifact/")}
        assert downloaded == {"TEST-shop.LoginTest.xml", "TEST-shop.CartTest.xml"}

        res = await emu.send_command(h.url, "test report api", user_id=ALICE)
        await h.settle()
        assert "Posted the test report of api #2" in res.body_text
        [report] = [m for m in emu.top_level("C0OPS") if m.text.startswith("❌ Tests of api #2")]
        assert "2 passed, 1 failed, 1 skipped" in report.text
        assert "*Fixed:* `shop.LoginTest.test_logout`" in json.dumps(report.blocks)
        [thread] = emu.replies("C0OPS", report.ts)
        assert "timeout 5s" in json.dumps(thread.blocks) and "(flaky)" in json.dumps(thread.blocks)

        res = await emu.send_command(h.url, "build status api #1", user_id=ALICE)
        assert "tests: 2 passed, 1 failed, 1 skipped" in json.dumps(res.json)  # from the stored results


async def test_unreadable_archived_files_are_named_and_the_others_still_count(
    tmp_path: Path, emu: SlackEmulator, jenkins: JenkinsEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bot.test_history

    monkeypatch.setattr(bot.test_history, "ARTIFACT_MAX_BYTES", 8 * 1024)
    good = junit_xml([Case("test_ok"), Case("test_bad", "FAILED", error_details="boom")])
    files = {
        "reports/TEST-good.xml": good,
        "reports/TEST-broken.xml": b"<testsuites><testsuite name='x'><testcase name='a'></testsuite>",
        "reports/TEST-huge.xml": b"<testsuites>" + b" " * 20_000 + b"</testsuites>",
        "reports/TEST-gone.xml": good,
        "reports/TEST-html.xml": b"<html><body>Jenkins error page</body></html>",
    }
    jenkins.add_job("shop/api-build", {"DEPLOY": "yes"}, script=BuildScript(result="UNSTABLE", artifacts=files))
    # Listed in the build's JSON, but gone when fetched (log rotation between the two requests).
    jenkins.fail_next("/artifact/reports/TEST-gone.xml", status=404)
    async with slack_ops(tmp_path, emu, **artifact_overrides(jenkins, "reports/**/TEST-*.xml")) as h:
        await emu.send_command(h.url, "build api", user_id=ALICE)
        await h.settle()
        text = card_of(h, 1)
        assert "unstable" in text  # the build's own result is untouched
        assert "tests: 1 passed, 1 failed, 0 skipped" in text and "from 1 archived JUnit file" in text
        assert "`reports/TEST-broken.xml` is not JUnit XML" in text
        assert "`reports/TEST-html.xml` is not JUnit XML: its root element is &lt;html&gt;" in text  # as Slack shows <
        assert "artifact `reports/TEST-huge.xml` of build #1 of job `shop/api-build` is 20,025 bytes" in text
        assert "artifacts over 8 KiB are not downloaded" in text
        assert "has no artifact `reports/TEST-gone.xml`" in text
        assert text.count("its tests are not counted") == 4
        stored = await h.services.store.read(lambda db: rows(db, "SELECT test_id, status FROM test_results"))
        assert {(r["test_id"], r["status"]) for r in stored} == {
            ("tests.test_app.test_ok", "passed"),
            ("tests.test_app.test_bad", "failed"),
        }
        # The problems are kept with the build: the report shown later says the results are partial.
        await emu.send_command(h.url, "test report api #1", user_id=ALICE)
        await h.settle()
        [report] = [m for m in emu.top_level("C0OPS") if m.text.startswith("❌ Tests of api #1")]
        shown = json.dumps(report.blocks, ensure_ascii=False)
        assert "1 passed, 1 failed, 0 skipped" in report.text
        assert "`reports/TEST-broken.xml` is not JUnit XML" in shown and "TEST-gone.xml" in shown


async def test_no_archived_report_and_no_plugin_says_why(
    tmp_path: Path, emu: SlackEmulator, jenkins: JenkinsEmulator
) -> None:
    jenkins.add_job("shop/api-build", {"DEPLOY": "yes"}, script=BuildScript(artifacts={"target/api.jar": b"PK"}))
    async with slack_ops(tmp_path, emu, **artifact_overrides(jenkins)) as h:
        await emu.send_command(h.url, "build api", user_id=ALICE)
        await h.settle()
        text = card_of(h, 1)
        assert "success" in text and "no test results" in text
        assert f"api #1 archived no file matching `{SUREFIRE}` (only 1 other file)" in text
        res = await emu.send_command(h.url, "test report api", user_id=ALICE)
        assert "api #1 published no test results" in res.body_text and "archived no file matching" in res.body_text
        assert await h.services.store.read(lambda db: rows(db, "SELECT * FROM test_results")) == []


async def test_jenkins_failing_while_reading_results_leaves_the_build_card_whole(
    tmp_path: Path, emu: SlackEmulator, jenkins: JenkinsEmulator
) -> None:
    files = surefire([Case("test_ok", class_name="shop.A", suite="shop.A")])
    jenkins.add_job("shop/api-build", {"DEPLOY": "yes"}, script=BuildScript(artifacts=files))
    jenkins.fail_next("/artifact/", status=500)  # the one report file, once
    async with slack_ops(tmp_path, emu, **artifact_overrides(jenkins)) as h:
        await emu.send_command(h.url, "build api", user_id=ALICE)
        await h.settle()
        text = card_of(h, 1)
        assert "success" in text and "Re-run" in text and "*Tests:* no results" in text
        assert "artifact `target/surefire-reports/TEST-shop.A.xml`" in text and "answered 500" in text
        assert not [m.text for m in emu.messages("C0OPS") if "`build.watch`" in m.text]  # no job failure
        [job] = await h.services.store.read(lambda db: rows(db, "SELECT state FROM jobs WHERE kind = 'build.watch'"))
        assert job["state"] == "done"
        # Jenkins answers again: the report reads the files now, and the old problem is not repeated.
        res = await emu.send_command(h.url, "test report api", user_id=ALICE)
        await h.settle()
        assert "Posted the test report of api #1" in res.body_text
        [report] = [m for m in emu.top_level("C0OPS") if m.text.startswith("✅ Tests of api #1")]
        assert "1 passed, 0 failed, 0 skipped" in report.text and "⚠️" not in json.dumps(report.blocks)
        res = await emu.send_command(h.url, "build status api", user_id=ALICE)
        shown = json.dumps(res.json, ensure_ascii=False)
        assert "tests: 1 passed, 0 failed, 0 skipped" in shown and "answered 500" not in shown


def test_travis_builds_cannot_name_archived_junit_files() -> None:
    from bot.config import parse_config
    from bot.errors import ConfigError

    with pytest.raises(ConfigError, match=r"services.web.build.junit_artifacts: .*Travis CI's API serves no build"):
        parse_config(
            {
                "integrations": {"travis": {"token_env": "T"}},
                "services": {"web": {"build": {"ci": "travis", "job": "shop/web", "junit_artifacts": "*.xml"}}},
            }
        )


async def test_a_test_report_of_a_service_without_a_ci_job_says_what_to_configure(tmp_path: Path) -> None:
    # Before, it said "start one with `build shop`", which answers only that shop has no build.
    async with console_ops(tmp_path, services={"shop": {}}) as h:
        out = await h.say("test report shop")
        assert "I have no finished build of shop, and it has no CI job to start one" in out
        assert "services.shop.build" in out and "start one with build shop" not in out
