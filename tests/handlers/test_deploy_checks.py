"""Deploy checks and environment notices end to end: `requires.tests: green` against builds whose JUnit
results Jenkins archived (read through the Jenkins emulator, some of them unreadable), and the freeze
notice in the approvals channel from `/ops freeze` to its end (lifted, replaced or run out)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

import bot.app
from bot.clock import FakeClock
from tests.emulators.jenkins import BuildScript, Case, JenkinsEmulator, junit_xml
from tests.emulators.slack import SlackEmulator
from tests.handlers.deploy_support import (
    APPROVALS_CHANNEL,
    audit_rows,
    command_config,
    deploy_script,
    deploys,
    ephemerals,
    make_repo,
    release_cards,
    scripted_config,
    set_running,
    text_of,
)
from tests.support import ALICE, BOB, slack_ops, slack_workspace, wait_until

TOKEN_ENV = "OPSLOOP_TEST_JENKINS_TOKEN"
C = APPROVALS_CHANNEL


@pytest_asyncio.fixture
async def emu() -> AsyncIterator[SlackEmulator]:
    async with SlackEmulator(post_burst=1000, post_rate_per_channel=1000) as e:
        slack_workspace(e)
        yield e


@pytest_asyncio.fixture
async def jenkins(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[JenkinsEmulator]:
    async with JenkinsEmulator() as j:
        monkeypatch.setenv(TOKEN_ENV, j.token)
        yield j


GOOD = junit_xml([Case("test_checkout"), Case("test_login")])
BROKEN = b"<testsuites><testsuite name='pay'><testcase name='test_pay'></testsuite>"
PARTLY_READABLE = {"reports/TEST-a.xml": GOOD, "reports/TEST-b.xml": BROKEN}


def build_of(sha: str, files: dict[str, bytes]) -> BuildScript:
    """A Jenkins build of commit `sha` that archives `files` (no JUnit plugin report)."""
    return BuildScript(result="SUCCESS", artifacts=files, commit=sha)


# --- requires.tests: green -------------------------------------------------------------------------------


async def test_green_tests_are_required_and_incomplete_results_are_not_green(
    tmp_path: Path, emu: SlackEmulator, jenkins: JenkinsEmulator
) -> None:
    repo = tmp_path / "repo"
    shas = make_repo(repo)
    v120 = shas["Fix the login timeout (SHOP-13)"]  # the commit tagged v1.2.0
    script = deploy_script(tmp_path)
    set_running(tmp_path, "shop", "staging", "1.1.0")
    cfg = command_config(tmp_path, repo, script)
    cfg["environments"]["staging"] = {"requires": {"tests": "green"}, "break_glass": ["admins"]}
    cfg["services"]["shop"]["build"] = {"ci": "jenkins", "job": "shop/web", "junit_artifacts": "reports/*.xml"}
    cfg["permissions"]["build.*"] = ["developers"]
    cfg["integrations"]["jenkins"] = {
        "url": jenkins.url,
        "user": jenkins.user,
        "token_env": TOKEN_ENV,
        "timeout": 5,
        "poll": 0.05,
    }
    # Build #1 passed every test it could read, but one of its two report files is not JUnit XML.
    jenkins.add_job("shop/web", {"BRANCH": "main"}, script=build_of(v120, PARTLY_READABLE))
    async with slack_ops(tmp_path, emu, **cfg) as h:
        # Not built yet: no results, no deploy.
        await h.command("deploy shop 1.2.0 to staging", user=BOB)
        assert f"tests: no test results for {v120[:10]}; build it first" in ephemerals(h, BOB)[-1]

        await h.command("build shop", user=BOB)
        await h.command("deploy shop 1.2.0 to staging", user=BOB)
        said = ephemerals(h, BOB)[-1]
        assert "was refused: tests: the results of build #1 are incomplete" in said
        assert "(2 passed, 0 failed of what could be read)" in said
        assert "`reports/TEST-b.xml` is not JUnit XML" in said and "Build it again to get all of them" in said
        assert 'Override: a member of `admins` can add `force \\"reason\\"`' in said
        assert deploys(tmp_path) == []
        refused = [a["reason"] for a in await audit_rows(h, "refused") if a["action"] == "deploy.deploy"]
        assert any("the results of build #1 are incomplete" in (r or "") for r in refused), refused
        first = text_of(release_cards(h)[-1])  # the second refused card (the first had no build)
        assert "refused by the checks" in first and "⚠️ incomplete: some results could not be read" in first

        # Build #2 of the same commit reads every file: green, and the deploy goes out.
        jenkins.set_script("shop/web", build_of(v120, {"reports/TEST-a.xml": GOOD}))
        await h.command("build shop", user=BOB)
        await h.command("deploy shop 1.2.0 to staging", user=BOB)
        assert deploys(tmp_path) == ["shop 1.2.0 staging"]
        text = text_of(release_cards(h)[-1])
        assert "✅ done" in text and "2 passed, 0 failed in build #2" in text and "incomplete" not in text

        # Build #3 again can't read a file: the newest word on the commit wins over the green #2.
        jenkins.set_script("shop/web", build_of(v120, PARTLY_READABLE))
        await h.command("build shop", user=BOB)
        set_running(tmp_path, "shop", "staging", "1.1.0")
        await h.command("deploy shop 1.2.0 to staging", user=BOB)
        assert "the results of build #3 are incomplete" in ephemerals(h, BOB)[-1]
        # Red tests are refused as before.
        jenkins.set_script(
            "shop/web",
            build_of(v120, {"reports/TEST-a.xml": junit_xml([Case("test_checkout"), Case("test_login", "FAILED")])}),
        )
        await h.command("build shop", user=BOB)
        await h.command("deploy shop 1.2.0 to staging", user=BOB)
        assert "tests: 1 passed, 1 failed in build #4" in ephemerals(h, BOB)[-1]
        assert deploys(tmp_path) == ["shop 1.2.0 staging"]


# --- the freeze notice -------------------------------------------------------------------------------------


def notices(h: object, emu: SlackEmulator) -> list[str]:
    return [text_of(emu.message(C, m.ts)) for m in emu.top_level(C) if m.text.startswith("🧊")]


async def test_a_freeze_notice_in_the_approvals_channel_says_how_the_freeze_ended(
    tmp_path: Path, emu: SlackEmulator
) -> None:
    clock = FakeClock()
    cfg = scripted_config(tmp_path, running=None)
    async with slack_ops(tmp_path, emu, clock=clock, **cfg) as h:
        await h.command('freeze prod 2h "end of quarter"', user=ALICE)
        [notice] = notices(h, emu)
        assert "*prod is frozen* until" in notice and "by <@U0ALICE>: end of quarter" in notice
        # Pinned in the approvals channel while the freeze lasts.
        assert [text_of(m) for m in emu.pinned(C)] == [notice]

        # Lifted by hand: the same message, struck through, says who lifted it.
        await h.command("unfreeze prod", user=ALICE)
        [notice] = notices(h, emu)
        assert "🧊 ~prod is frozen until" in notice and "~ — lifted early by <@U0ALICE>" in notice
        assert emu.pinned(C) == []  # unpinned once it no longer holds

        # A freeze replaced by a longer one: the first notice says so; one notice stays in force.
        await h.command('freeze prod 1h "release party"', user=ALICE)
        clock.advance(60)
        await h.command('freeze prod 3h "incident INC-9"', user=BOB)
        _, replaced, current = notices(h, emu)
        assert "release party~ — replaced by a freeze by <@U0BOB> until" in replaced
        assert "*prod is frozen* until" in current and "incident INC-9" in current
        assert [text_of(m) for m in emu.pinned(C)] == [current]  # only the freeze in force stays pinned

        # Run out: the next look at prod (a deploy's checks, `deploy status`) ends it and edits the notice.
        clock.advance(3 * 3600 + 1)
        res = await h.command("deploy status", user=BOB)
        assert "frozen" not in str(res.json)
        _, _, ended = notices(h, emu)
        assert "incident INC-9~ — ended at" in ended
        res = await h.command("unfreeze prod", user=ALICE)
        assert "prod is not frozen" in res.body_text
        assert len(notices(h, emu)) == 3  # edits only, never a second notice for one freeze

        # A deploy's checks find a freeze that has run out: not a blocker, and its notice says it ended.
        await h.command('freeze prod 1h "maintenance window"', user=ALICE)
        clock.advance(3601)
        set_running(tmp_path, "shop", "prod", "1.1.0")
        await h.command("deploy shop 1.2.0 to prod", user=BOB)
        assert "waiting for approval" in text_of(release_cards(h)[-1])
        assert "maintenance window~ — ended at" in notices(h, emu)[-1]


async def test_a_freeze_that_runs_out_unseen_is_ended_by_the_periodic_sweep(
    tmp_path: Path, emu: SlackEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bot.app, "SWEEP_SECONDS", 0.05)
    clock = FakeClock()
    cfg = scripted_config(tmp_path, running=None)
    async with slack_ops(tmp_path, emu, clock=clock, **cfg) as h:
        await h.command('freeze prod 1h "nobody looks at prod"', user=ALICE)
        [notice] = notices(h, emu)
        assert "*prod is frozen* until" in notice
        # Nobody deploys or asks about prod: the sweep alone notices the freeze ran out.
        clock.advance(3601)
        await wait_until(
            lambda: "nobody looks at prod~ — ended at" in notices(h, emu)[0] and not emu.pinned(C), timeout=10
        )
        assert len(notices(h, emu)) == 1
