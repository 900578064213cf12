"""The deploy stage end to end: Slack emulator <- Bolt <- opsloop -> command target / Kubernetes emulator /
real Docker registry / git repositories made here.

Every click is a signed `block_actions` payload built by the Slack emulator from the message it holds,
so a test presses the buttons people see. Time that must pass (approval expiry, the end of a bake) is
moved with a FakeClock; nothing here asserts on durations.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import pytest_asyncio

import bot.app
import handlers.deploy as deploy_handlers
from bot.clock import FakeClock
from bot.store import rows
from tests.emulators.kubernetes import KubernetesEmulator
from tests.emulators.slack import SlackEmulator
from tests.handlers.deploy_support import (
    APPROVALS_CHANNEL,
    answer,
    audit_rows,
    card_of,
    deploys,
    ephemerals,
    kubernetes_config,
    post_alert,
    release_cards,
    release_rows,
    scripted_config,
    text_of,
    thread_text,
)
from tests.registry_server import push_image, registry_server, tiny_layer
from tests.reliability.test_restart import opsloop_process
from tests.support import (
    ALICE,
    BOB,
    CAROL,
    DAVE,
    EVE,
    SlackHarness,
    click,
    config_data,
    find_button,
    press,
    slack_ops,
    slack_workspace,
    wait_until,
)

IMAGE = "registry.example.com/shop/api"
C = APPROVALS_CHANNEL


@pytest_asyncio.fixture
async def emu() -> AsyncIterator[SlackEmulator]:
    async with SlackEmulator(post_burst=1000, post_rate_per_channel=1000) as e:
        slack_workspace(e)
        yield e


@pytest.fixture(autouse=True)
def _fast_bake_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    # The bake looks for new alerts every BAKE_POLL seconds; tests need not wait 2 s for each look.
    monkeypatch.setattr(deploy_handlers, "BAKE_POLL", 0.02)


@pytest_asyncio.fixture
async def k8s() -> AsyncIterator[KubernetesEmulator]:
    async with KubernetesEmulator(tick_interval=0.02) as k:
        k.add_deployment("shop", "api", f"{IMAGE}:1.1.0", replicas=3)
        k.add_deployment("shop-staging", "api", f"{IMAGE}:1.1.0", replicas=1)
        yield k


def fast_polls(h: SlackHarness) -> None:
    """The Kubernetes target looks at a rollout every 2 s by default; here every 20 ms."""
    h.services.targets["kubernetes"].poll_interval = 0.02  # type: ignore[attr-defined]


async def polled_twice(h: SlackHarness, k8s: KubernetesEmulator, card: Any) -> None:
    """Wait until opsloop has read the prod Deployment twice more (so it has reported what it saw the
    first time), or has called the rollout done; and until the card edits are delivered."""
    reads = len(k8s.requests_to("/namespaces/shop/deployments/api", "GET"))

    def polled() -> bool:
        done = "successfully rolled out" in card_now(h, card)
        return done or len(k8s.requests_to("/namespaces/shop/deployments/api", "GET")) >= reads + 2

    await wait_until(polled, 20, "opsloop to poll")
    await h.settle(jobs=False)


def card_now(h: SlackHarness, card: Any) -> str:
    return text_of(h.emu.message(card.channel, card.ts))


async def card_shows(h: SlackHarness, card: Any, *words: str, timeout: float = 20) -> str:
    """Wait until the card (the same message, edited) shows every word; its text then."""
    await wait_until(lambda: all(w in card_now(h, card) for w in words), timeout, f"the card to show {words}")
    return card_now(h, card)


async def approve(h: SlackHarness, card: Any, *users: str) -> None:
    for user in users:
        await click(h, C, card.ts, "Approve", user, jobs=False)


async def say(h: SlackHarness, text: str, user: str) -> Any:
    """A slash command, without waiting for jobs to end (a bake goes on meanwhile)."""
    res = await h.emu.send_command(h.url, text, user_id=user)
    await h.settle(jobs=False)
    return res


def last_ephemeral(h: SlackHarness, user: str) -> str:
    said = ephemerals(h, user)
    assert said, f"nothing was said to {user}"
    return said[-1]


def scripted_shop(tmp_path: Path, emu: SlackEmulator, clock: FakeClock) -> Any:
    """opsloop with shop deployed by a script (1.1.0 running in prod), a 60-minute bake, staging first."""
    return slack_ops(tmp_path, emu, clock=clock, **scripted_config(tmp_path, bake=60, passed_in=True))


# --- 1. the whole flow ---------------------------------------------------------------------------------


async def test_request_checks_card_approvals_rollout_and_automatic_rollback_on_a_bake_alert(
    tmp_path: Path, emu: SlackEmulator
) -> None:
    clock = FakeClock()  # the bake lasts an hour that never passes: only the alert can end it
    async with scripted_shop(tmp_path, emu, clock) as h:
        # The checks come first: 1.2.0 never went to staging, and the answer says what to do.
        await h.command("deploy shop 1.2.0 to prod", user=BOB)
        assert "never went to staging; deploy it to staging first" in last_ephemeral(h, BOB)
        assert deploys(tmp_path) == []
        await h.command("deploy shop 1.2.0 to staging", user=BOB)  # staging needs nobody's approval
        assert deploys(tmp_path) == ["shop 1.2.0 staging"]
        staged = card_now(h, card_of(h, "Deploy shop 1.2.0 → staging"))
        assert "✅ done" in staged
        assert "`1.2.0` (what ran before is not known)" in staged  # nothing ran there: no "`?` →"

        await h.command('deploy shop 1.2.0 to prod "fixes the login timeout"', user=BOB)
        prod = [m for m in release_cards(h) if "→ prod" in m.text]
        assert [m.text.split(":")[1].strip() for m in prod] == ["⛔ refused by the checks", "⏳ waiting for approval"]
        card = prod[1]
        text = card_now(h, card)
        assert "*Requested by*\\n<@U0BOB>" in text and "`1.1.0` → `1.2.0`" in text
        # Why, for the approvers: a reason without `force` was dropped before.
        assert "💬 *Why*: fixes the login timeout" in text and "Break glass" not in text
        # The changelog between the running and the candidate version, tickets linked to the tracker.
        assert "<https://jira.example.com/browse/SHOP-12|SHOP-12> Faster checkout — Bea Kim" in text
        assert "Fix the login timeout (<https://jira.example.com/browse/SHOP-13|SHOP-13>) — Cy Ode" in text
        assert "Changes (2)" in text and "SHOP-14" not in text and "Initial import" not in text
        assert "0 of 2 from `approvers` (not the requester)" in text
        find_button(emu.message(C, card.ts).blocks, "Approve")
        find_button(emu.message(C, card.ts).blocks, "Reject")

        await approve(h, card, BOB)  # the requester, though an approver, never counts
        assert "your vote doesn't count" in last_ephemeral(h, BOB)
        await approve(h, card, EVE)
        assert "Only members of `approvers`" in last_ephemeral(h, EVE)
        await approve(h, card, CAROL)  # an approver through the @sre user group
        assert "1 more needed" in last_ephemeral(h, CAROL)
        assert "1 of 2" in card_now(h, card) and deploys(tmp_path) == ["shop 1.2.0 staging"]
        await approve(h, card, DAVE)
        assert "carrying it out" in last_ephemeral(h, DAVE)
        # The requester hears it by name in the thread (an edited card notifies nobody).
        assert "<@U0BOB>, approved by <@U0CAROL>, <@U0DAVE>: carrying it out." in thread_text(h, card)

        text = await card_shows(h, card, "🍞 baking")
        assert "deploy.sh deployed 1.2.0: exit code 0" in text and "<@U0CAROL> ✅, <@U0DAVE> ✅" in text
        assert deploys(tmp_path)[-1] == "shop 1.2.0 prod"
        assert "Rolled out: deploy.sh deployed 1.2.0" in thread_text(h, card)
        find_button(emu.message(C, card.ts).blocks, "Rollback")

        # A critical alert for shop in prod during the bake: automatic rollback, the reason in the thread.
        assert await post_alert(h, "shop", "prod") in (200, 202)
        text = await card_shows(h, card, "↩️ rolled back")
        assert "Rolled back to 1.1.0: HighErrorRate (critical) fired during the bake" in text
        await h.settle()
        thread = thread_text(h, card)
        assert "Rolling back automatically: HighErrorRate (critical) fired during the bake" in thread
        assert "During the bake: *HighErrorRate* (critical)" in thread
        assert deploys(tmp_path) == ["shop 1.2.0 staging", "shop 1.2.0 prod", "shop 1.1.0 prod"]
        assert (tmp_path / "versions" / "shop-prod").read_text().strip() == "1.1.0"
        # One card per release, edited in place; the prod one from request to rollback.
        assert len(release_cards(h)) == 3 and emu.message(C, card.ts).edited_count >= 5
        events = await h.services.store.read(lambda db: rows(db, "SELECT kind, env, ref FROM events ORDER BY id"))
        assert [(e["kind"], e["env"]) for e in events if e["kind"].startswith("deploy.")] == [
            ("deploy.finished", "staging"),
            ("deploy.finished", "prod"),
            ("deploy.rolled_back", "prod"),
        ]


async def test_a_rollback_by_hand_that_fails_during_the_bake_leaves_the_release_failed_not_rolled_back(
    tmp_path: Path, emu: SlackEmulator
) -> None:
    async with scripted_shop(tmp_path, emu, FakeClock()) as h:
        # Nothing deployed yet: said in words, not as a version "?".
        shown = json.dumps(answer(h, await h.command("status shop", user=BOB)), ensure_ascii=False)
        assert "*staging*: no version known" in shown and "it has deployed none here yet" in shown, shown
        await h.command("deploy shop 1.1.0 to staging", user=BOB)  # what a rollback to 1.1.0 checks for
        await h.command("deploy shop 1.2.0 to staging", user=BOB)
        await h.command("deploy shop 1.2.0 to prod", user=BOB)
        release = card_of(h, "Deploy shop 1.2.0 → prod")
        await approve(h, release, CAROL, DAVE)
        await card_shows(h, release, "🍞 baking")
        (tmp_path / "fail").touch()  # the deploy command fails from now on: so does the rollback
        await say(h, "rollback shop prod", BOB)
        back = card_of(h, "Rollback shop in prod")
        await card_shows(h, back, "waiting for approval")
        await approve(h, back, CAROL, DAVE)
        assert "exit code 3" in await card_shows(h, back, "❌ failed")
        # The bake ended when the rollback started; that it failed is said on the release it meant to undo.
        text = await card_shows(h, release, "❌ failed")
        assert "tried to roll this back and failed; this version may still be running" in text
        assert "rolled back" not in text
        assert deploys(tmp_path)[-1] == "shop 1.1.0 prod"
        assert (tmp_path / "versions" / "shop-prod").read_text().strip() == "1.2.0"
        # A command target knows the version it deployed and no replicas: status says so, not "0/0 ready".
        shown = json.dumps(answer(h, await h.command("status shop", user=BOB)), ensure_ascii=False)
        assert "*staging*: `1.2.0`" in shown and "*prod*: `1.2.0`" in shown
        assert "reports only the version it last deployed" in shown and "ready" not in shown
        # It can't scale or restart either: said at once, before anyone is asked to approve a release.
        for command in ("restart shop prod", "scale shop prod 3"):
            said = json.dumps(answer(h, await h.command(command, user=BOB)), ensure_ascii=False)
            assert "deployed by a command, which can't" in said, said
        assert [c for c in release_cards(h) if "Restart" in c.text or "Scale" in c.text] == []


def buttons_of(h: SlackHarness, card: Any) -> list[str]:
    """The labels of a card's buttons, as it is now."""
    return [
        el["text"]["text"]
        for b in h.emu.message(card.channel, card.ts).blocks
        if b["type"] == "actions"
        for el in b["elements"]
        if el["type"] == "button"
    ]


async def test_a_command_target_rolls_back_to_what_ran_before_the_release_undone(
    tmp_path: Path, emu: SlackEmulator
) -> None:
    async with scripted_shop(tmp_path, emu, FakeClock()) as h:
        # Nothing ran in staging before: no Rollback button, and `rollback` asks for a version.
        await h.command("deploy shop 1.1.0 to staging", user=BOB)
        first = card_of(h, "Deploy shop 1.1.0 → staging")
        await card_shows(h, first, "✅ done")
        assert "Rollback" not in buttons_of(h, first)
        said = json.dumps(answer(h, await h.command("rollback shop staging", user=BOB)), ensure_ascii=False)
        assert "no earlier version is known" in said
        # The same version again: allowed, said on the card, and still nothing to go back to.
        await h.command("deploy shop 1.1.0 to staging", user=BOB)
        [again] = [c for c in release_cards(h) if c.ts != first.ts]
        text = await card_shows(h, again, "✅ done")
        assert "⚠️ *redeploy*: staging already runs 1.1.0; this deploys it again" in text
        assert "Rollback" not in buttons_of(h, again)
        await h.command("deploy shop 1.2.0 to staging", user=BOB)
        second = card_of(h, "Deploy shop 1.2.0 → staging")
        await card_shows(h, second, "✅ done")
        assert "Rollback" in buttons_of(h, second)
        # A refused deploy records what ran when it was checked (1.2.0): not a version to go back to.
        await h.command('freeze staging 1h "release train"', user=ALICE)
        await h.command("deploy shop 1.0.0 to staging", user=BOB)
        await card_shows(h, card_of(h, "Deploy shop 1.0.0 → staging"), "refused")
        await h.command("unfreeze staging", user=ALICE)
        await h.command("rollback shop staging", user=BOB)
        back = card_of(h, "Rollback shop in staging to 1.1.0")
        # The reviewer sees what going back takes out: the commits of 1.2.0 that 1.1.0 lacks.
        text = await card_shows(h, back, "✅ done")
        assert "*Takes out (2)*: running now, not in `1.1.0`" in text
        assert "Faster checkout" in text and "Fix the login timeout" in text and "Initial import" not in text
        assert "Takes out" not in card_now(h, second) and "*Changes (2)*" in card_now(h, second)
        # The rollout is over: its last report is named so, not "Rollout: deploying …" as if still going.
        assert "*Last rollout report:*" in text and "*Rollout:*" not in text
        assert (tmp_path / "versions" / "shop-staging").read_text().strip() == "1.1.0"
        await card_shows(h, second, "↩️ rolled back")


async def test_a_command_target_with_an_image_offers_no_rollback_of_a_redeploy(
    tmp_path: Path, emu: SlackEmulator
) -> None:
    # The card once decided "can go back to an earlier revision" by whether an image was configured; a
    # command target has no revisions, and the click could then only say "no earlier version is known".
    async with registry_server(tmp_path / "registry") as reg:
        await push_image(reg.url, "shop/web", "1.1.0", layer=tiny_layer("a build"))
        cfg = scripted_config(tmp_path)
        cfg["services"]["shop"]["deploy"]["image"] = f"127.0.0.1:{reg.port}/shop/web"
        cfg["integrations"]["registry"] = {"url": reg.url, "timeout": "5s"}
        async with slack_ops(tmp_path, emu, clock=FakeClock(), **cfg) as h:
            await h.command("deploy shop 1.1.0 to staging", user=BOB)
            await card_shows(h, card_of(h, "Deploy shop 1.1.0 → staging"), "✅ done")
            await h.command("deploy shop 1.1.0 to staging", user=BOB)
            again = release_cards(h)[-1]
            assert "redeploy" in await card_shows(h, again, "✅ done")
            assert "Rollback" not in buttons_of(h, again)


async def test_a_lock_is_announced_in_the_third_person_and_a_break_glass_unlock_names_whose_it_was(
    tmp_path: Path, emu: SlackEmulator
) -> None:
    async with scripted_shop(tmp_path, emu, FakeClock()) as h:
        locked = answer(h, await h.command('lock prod "db migration"', user=BOB))
        assert locked["response_type"] == "in_channel"
        assert "<@U0BOB> holds prod: db migration" in json.dumps(locked, ensure_ascii=False)
        assert "You hold" not in json.dumps(locked)
        freed = json.dumps(answer(h, await h.command("unlock prod", user=ALICE)), ensure_ascii=False)
        assert "prod is free" in freed and "<@U0ALICE> released <@U0BOB>'s hold" in freed
        await h.command("lock prod", user=BOB)
        mine = json.dumps(answer(h, await h.command("unlock prod", user=BOB)), ensure_ascii=False)
        assert "prod is free" in mine and "released" not in mine


async def test_the_requester_withdraws_a_waiting_release_with_reject_and_the_env_is_free_again(
    tmp_path: Path, emu: SlackEmulator
) -> None:
    async with scripted_shop(tmp_path, emu, FakeClock()) as h:
        await h.command("deploy shop 1.2.0 to staging", user=BOB)
        await h.command("deploy shop 1.2.0 to prod", user=BOB)
        release = card_of(h, "Deploy shop 1.2.0 → prod")
        assert "its requester can withdraw it with Reject" in await card_shows(h, release, "waiting for approval")
        # While it waits, another request says what frees prod.
        said = json.dumps(answer(h, await h.command("deploy shop 1.1.0 to prod", user=ALICE)), ensure_ascii=False)
        assert "its requester withdraws it with Reject" in said
        await click(h, C, release.ts, "Reject", BOB, jobs=False)
        assert "Withdrawn; nothing will be done" in last_ephemeral(h, BOB)
        text = await card_shows(h, release, "cancelled")
        assert "Withdrawn by its requester before anyone approved it" in text
        assert "Approve" not in buttons_of(h, release)
        assert "<@U0BOB> withdrew the request" in thread_text(h, release)
        assert deploys(tmp_path) == ["shop 1.2.0 staging"]
        said = json.dumps(answer(h, await h.command("deploy shop 1.1.0 to prod", user=ALICE)), ensure_ascii=False)
        assert "Checking release 3" in said  # prod is free again


async def test_a_rejected_or_expired_release_is_told_to_its_requester_in_the_thread(
    tmp_path: Path, emu: SlackEmulator
) -> None:
    clock = FakeClock()
    async with scripted_shop(tmp_path, emu, clock) as h:
        await h.command("deploy shop 1.2.0 to staging", user=BOB)
        await h.command("deploy shop 1.2.0 to prod", user=BOB)
        card = card_of(h, "Deploy shop 1.2.0 → prod")
        await click(h, C, card.ts, "Reject", CAROL, jobs=False)
        await card_shows(h, card, "rejected")
        told = [m for m in emu.replies(C, card.ts) if "<@U0BOB>, rejected by <@U0CAROL>." in m.text]
        assert len(told) == 1
        assert deploys(tmp_path) == ["shop 1.2.0 staging"]

        await h.command("deploy shop 1.2.0 to prod", user=BOB)
        [again] = [m for m in release_cards(h) if "→ prod" in m.text and m.ts != card.ts]
        clock.advance(31 * 60)  # prod's approvals expire after 30 minutes
        await h.services.approvals.expire_due()
        await h.settle(jobs=False)
        await card_shows(h, again, "expired")
        assert "<@U0BOB>, nobody approved it in time." in thread_text(h, again)


async def test_kubernetes_rollout_progress_on_the_card_then_an_image_pull_failure_and_its_rollback(
    tmp_path: Path, emu: SlackEmulator, k8s: KubernetesEmulator
) -> None:
    kubeconfig = k8s.kubeconfig(tmp_path / "kubeconfig")
    clock = FakeClock()
    async with slack_ops(tmp_path, emu, clock=clock, **kubernetes_config(kubeconfig, bake=30)) as h:
        fast_polls(h)
        k8s.auto_tick(None)  # the rollout moves one controller step when the test says so
        await h.command("deploy api 1.2.0 to prod", user=BOB)
        card = card_of(h, "Deploy api 1.2.0 → prod")
        assert "`1.1.0` → `1.2.0`" in card_now(h, card)
        await approve(h, card, CAROL, DAVE)
        await wait_until(lambda: k8s.image("shop", "api") == f"{IMAGE}:1.2.0", 20, "the image patch")
        # Not observed yet: how many replicas are updated is unknown, and the card doesn't guess.
        seen = [await card_shows(h, card, "spec update to be observed", "(3 desired, 3 available)")]
        for _ in range(40):  # until opsloop calls it done, one controller step at a time
            k8s.tick()
            await polled_twice(h, k8s, card)
            seen.append(card_now(h, card))
            if "successfully rolled out" in seen[-1]:
                break
        text = await card_shows(h, card, "🍞 baking", "successfully rolled out (3/3 updated, 3 available)")
        steps = [t for t in seen if "new replicas have been updated" in t or "pending termination" in t]
        assert steps and any("(1/3 updated" in t or "(2/3 updated" in t for t in steps)  # progress, in place
        assert "None" not in "".join(seen)
        assert k8s.image("shop-staging", "api") == f"{IMAGE}:1.1.0"  # staging is another namespace

        # The bake ends without alerts: success, and the deployer is asked how it went.
        clock.advance(31 * 60)
        text = await card_shows(h, card, "✅ done")
        assert "Baked without trouble." in text
        await wait_until(lambda: "How did it go?" in thread_text(h, card), 20, "the feedback prompt")
        prompt = next(m for m in emu.replies(C, card.ts) if "How did it go?" in m.text)
        await click(h, C, prompt.ts, "👍 Smooth", BOB, jobs=False)
        feedback = await h.services.store.read(lambda db: rows(db, "SELECT release_id, rating, author FROM feedback"))
        assert feedback == [{"release_id": 1, "rating": "good", "author": BOB}]
        # ...and the answer appears with the release, in its thread.
        await wait_until(lambda: "🟢 <@U0BOB>: Smooth release" in thread_text(h, card), 20, "the answer in the thread")
        # A note after a rating starts from that rating, not from "Smooth" whatever one said.
        await click(h, C, prompt.ts, "😐 Bumpy", BOB, jobs=False)
        await click(h, C, prompt.ts, "Add a note…", BOB, jobs=False)
        form = json.dumps(list(emu.views.values())[-1]["blocks"], ensure_ascii=False)
        assert '"initial_option": {"text": {"type": "plain_text", "text": "Bumpy"' in form, form

        # The next version's pods can't pull their image: the card says so, the rollout fails.
        k8s.auto_tick(0.02)
        k8s.fail_next_rollout("image_pull")
        await h.command("deploy api 1.3.0 to prod", user=BOB)
        bad = card_of(h, "Deploy api 1.3.0 → prod")
        await approve(h, bad, CAROL, DAVE)
        text = await card_shows(h, bad, "❌ failed", timeout=30)
        assert "ImagePullBackOff" in text and "exceeded its progress deadline" in text
        assert "ImagePullBackOff" in thread_text(h, bad)
        # The Rollback button on the failed card; prod wants its approvals for a rollback too.
        await click(h, C, bad.ts, "Rollback", BOB, jobs=False)
        back = card_of(h, "Rollback api in prod")
        await card_shows(h, back, "waiting for approval")
        assert k8s.image("shop", "api") == f"{IMAGE}:1.3.0"
        await approve(h, back, CAROL, DAVE)
        text = await card_shows(h, back, "✅ done", timeout=30)
        assert k8s.image("shop", "api") == f"{IMAGE}:1.2.0" and k8s.rollout_complete("shop", "api")
        assert "`1.3.0` → `1.2.0`" in text  # `rollout undo` found the version it went back to
        assert "❌ failed" in card_now(h, bad)


# --- 2. refusals, each with its reason, each audited ----------------------------------------------------


@pytest.mark.servers
async def test_every_refusal_is_told_and_audited_with_its_reason(
    tmp_path: Path, emu: SlackEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Expiry is found by the click here, not by the sweeper (which would otherwise race the click).
    monkeypatch.setattr(bot.app, "SWEEP_SECONDS", 3600.0)
    clock = FakeClock()
    async with registry_server(tmp_path / "registry") as reg:
        first = await push_image(reg.url, "shop/web", "1.2.0", layer=tiny_layer("first build"))
        cfg = scripted_config(tmp_path)
        cfg["services"]["shop"]["deploy"]["image"] = f"127.0.0.1:{reg.port}/shop/web"
        cfg["integrations"]["registry"] = {"url": reg.url, "timeout": "5s"}
        async with slack_ops(tmp_path, emu, clock=clock, **cfg) as h:
            await h.command("deploy shop 1.2.0 to prod", user=BOB)
            card = card_of(h, "Deploy shop 1.2.0 → prod")
            assert f"`{first[:19]}…`" in card_now(h, card)  # bound to the digest the registry gave

            await approve(h, card, BOB)
            await approve(h, card, EVE)
            # A replayed payload: the card's Approve button, but from another channel and message.
            el = find_button(emu.message(C, card.ts).blocks, "Approve")
            await press(h, el, DAVE, "C0OPS", "1700000000.000100", jobs=False)
            assert "does not belong to request" in last_ephemeral(h, DAVE)
            await approve(h, card, CAROL)  # counts: 1 of 2

            await h.command('freeze prod 1h "release party"', user=ALICE)
            await approve(h, card, DAVE)
            assert "Can't approve now: prod is frozen" in last_ephemeral(h, DAVE)
            await h.command("unfreeze prod", user=ALICE)
            await h.command('lock prod "db migration"', user=ALICE)
            await approve(h, card, DAVE)
            assert "Can't approve now: <@U0ALICE> holds the lock on prod" in last_ephemeral(h, DAVE)
            await h.command("unlock prod", user=ALICE)
            assert deploys(tmp_path) == [] and "1 of 2" in card_now(h, card)

            # Another image under the same tag after the request: the approvals are void.
            second = await push_image(reg.url, "shop/web", "1.2.0", layer=tiny_layer("second build"))
            assert second != first
            await approve(h, card, DAVE)
            assert "changed after the request, so the request is void" in last_ephemeral(h, DAVE)
            await card_shows(h, card, "⏹️ cancelled", "The approvals are void")

            # A request nobody decides on in time expires.
            await h.command("deploy shop 1.2.0 to prod", user=BOB)
            late = release_cards(h)[-1]
            await approve(h, late, CAROL)
            clock.advance(31 * 60)
            await approve(h, late, DAVE)
            assert "This request expired" in last_ephemeral(h, DAVE)
            await card_shows(h, late, "⌛ approval expired")
            assert deploys(tmp_path) == []

            # Frozen and locked at request time: refused by the checks, with the override that exists.
            await h.command('freeze prod 1h "release party"', user=ALICE)
            await h.command('lock prod "db migration"', user=ALICE)
            await h.command("deploy shop 1.2.0 to prod", user=BOB)
            said = last_ephemeral(h, BOB)
            assert "was refused: freeze: prod is frozen until" in said
            assert "lock: <@U0ALICE> holds the lock on prod: db migration" in said
            assert 'Override: a member of `admins` can add `force "reason"`' in said
            await h.command('deploy shop 1.2.0 to prod force "hotfix INC-7"', user=BOB)
            assert "Only `admins` may break glass in prod" in last_ephemeral(h, BOB)

            # Breaking glass: allowed for admins, shown on the card, still approved by two others.
            await h.command('deploy shop 1.2.0 to prod force "hotfix INC-7"', user=ALICE)
            glass = release_cards(h)[-1]
            text = await card_shows(h, glass, "waiting for approval")
            assert "⚠️ *Break glass* by <@U0ALICE>: hotfix INC-7" in text
            assert "⚠️ *freeze*: prod is frozen" in text and "(overridden: break glass)" in text
            await approve(h, glass, CAROL, DAVE)
            await card_shows(h, glass, "✅ done")
            assert deploys(tmp_path) == ["shop 1.2.0 prod"]

            audit = await audit_rows(h)
            refused = [(a["actor"], a["reason"]) for a in audit if a["outcome"] == "refused"]
            for actor, words in [
                (BOB, "your vote doesn't count"),
                (EVE, "Only members of `approvers`"),
                (DAVE, "does not belong to request"),
                (DAVE, "prod is frozen"),
                (DAVE, "holds the lock on prod"),
                (BOB, "freeze: prod is frozen"),
                (BOB, "Only `admins` may break glass"),
            ]:
                assert any(a == actor and words in (r or "") for a, r in refused), (actor, words, refused)
            outcomes = {(a["outcome"], a["actor"], a["reason"]) for a in audit}
            assert ("voided", DAVE, "what was to be approved changed after the request") in outcomes
            assert ("expired", DAVE, "expired") in outcomes
            assert ("requested", ALICE, "break glass: hotfix INC-7") in outcomes
            # ... and people can read it in chat.
            res = await h.command("audit 100", user=ALICE)
            shown = json.dumps(answer(h, res), ensure_ascii=False)
            for words in ("does not belong to request", "holds the lock on prod", "changed after the request"):
                assert words in shown
            assert (await h.services.audit.verify()).ok


async def test_a_card_found_again_after_a_restart_takes_its_own_clicks_and_refuses_replays(
    tmp_path: Path, emu: SlackEmulator
) -> None:
    async with slack_ops(tmp_path, emu, **scripted_config(tmp_path)) as h:
        await h.command("deploy shop 1.2.0 to prod", user=BOB)
        card = card_of(h, "Deploy shop 1.2.0 → prod")
        # What the outbox keeps of a card it posted just before a SIGKILL and found again on restart
        # (by its marker in conversations.history): the channel as configured, not its id.
        await h.services.store.write(
            lambda db: db.execute("UPDATE message_refs SET channel = '#approvals' WHERE key = 'release:1'")
        )
        el = find_button(emu.message(C, card.ts).blocks, "Approve")
        await emu.send_action(
            h.url, user_id=DAVE, action_id=el["action_id"], value=el["value"], channel_id="C0OPS", message_ts="1.2"
        )
        await h.settle(jobs=False)
        assert "card in #approvals, so the click doesn't count" in last_ephemeral(h, DAVE)
        await approve(h, card, CAROL)
        assert "1 more needed" in last_ephemeral(h, CAROL)
        await approve(h, card, DAVE)
        assert "carrying it out" in last_ephemeral(h, DAVE)
        await card_shows(h, card, "✅ done")
        assert deploys(tmp_path) == ["shop 1.2.0 prod"]


# --- 3. idempotency ----------------------------------------------------------------------------------------


async def test_twenty_last_clicks_and_a_slack_retry_start_one_rollout_and_one_request_holds_the_env(
    tmp_path: Path, emu: SlackEmulator
) -> None:
    cfg = scripted_config(tmp_path, sleep=0.3)
    sre = [f"U0SRE{i:02d}" for i in range(10)]
    for uid in sre:
        emu.add_user(uid, uid.lower())
    emu.set_usergroup_users("S0SRE", [CAROL, *sre])
    async with slack_ops(tmp_path, emu, **cfg) as h:
        # Requests at the same moment (bob and alice, three each): one gets the card, the others are
        # told who holds shop in prod.
        answers = await asyncio.gather(
            *(emu.send_command(h.url, "deploy shop 1.2.0 to prod", user_id=u) for u in (BOB, ALICE) * 3)
        )
        await h.settle()
        texts = [a.body_text for a in answers]
        assert sum("Checking release 1: Deploy shop 1.2.0" in t for t in texts) == 1, texts
        [card] = release_cards(h)
        holder = BOB if "<@U0BOB>" in card_now(h, card) else ALICE
        assert sum(f"<@{holder}> holds shop in prod" in t for t in texts) == 5, texts

        await approve(h, card, CAROL)
        assert "1 more needed" in last_ephemeral(h, CAROL)
        # The last needed approval: 20 clicks from ten approvers at once, and Slack retrying one payload.
        el = find_button(emu.message(C, card.ts).blocks, "Approve")
        payload = emu.action_payload(
            user_id=sre[0], action_id=el["action_id"], value=el["value"], channel_id=C, message_ts=card.ts
        )
        body = urlencode({"payload": json.dumps(payload)})
        clicks = [
            emu.send_action(
                h.url, user_id=u, action_id=el["action_id"], value=el["value"], channel_id=C, message_ts=card.ts
            )
            for u in sre * 2
        ]
        retry = emu.send(h.url, body, headers={"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"})
        results = await asyncio.gather(*clicks, emu.send(h.url, body), retry)
        assert all(r.status == 200 for r in results)
        await h.settle()
        assert deploys(tmp_path) == ["shop 1.2.0 prod"]
        runs = await h.services.store.read(lambda db: rows(db, "SELECT id FROM jobs WHERE kind = 'deploy.run'"))
        executions = await h.services.store.read(lambda db: rows(db, "SELECT * FROM approval_executions"))
        assert len(runs) == 1 and len(executions) == 1
        said = [e for u in sre for e in ephemerals(h, u)]
        assert sum("carrying it out" in t for t in said) == 1
        assert all("carrying it out" in t or "already" in t for t in said), said
        text = await card_shows(h, card, "✅ done")
        assert "2 of 2 from `approvers`" in text and len(release_cards(h)) == 1


# --- 4. crash during a rollout ----------------------------------------------------------------------------


@pytest.mark.slow
async def test_sigkill_during_a_rollout_then_the_same_card_finishes_and_pending_approvals_survive(
    tmp_path: Path, emu: SlackEmulator, k8s: KubernetesEmulator
) -> None:
    k8s.auto_tick(None)  # the cluster moves only when the test ticks it
    kubeconfig = k8s.kubeconfig(tmp_path / "kubeconfig")
    async with opsloop_process(tmp_path, emu, config_data("opsloop.db", **kubernetes_config(kubeconfig))) as p:
        await p.start()
        await emu.send_command(p.url, "deploy api 1.2.0 to prod", user_id=BOB)
        await emu.wait_for(lambda: any("waiting for approval" in m.text for m in emu.top_level(C)), timeout=20)
        [card] = emu.top_level(C)
        await p.kill()  # while the approval waits
        await p.start()
        el = find_button(emu.message(C, card.ts).blocks, "Approve")
        for user in (CAROL, DAVE):
            await emu.send_action(
                p.url, user_id=user, action_id=el["action_id"], value=el["value"], channel_id=C, message_ts=card.ts
            )
        await emu.wait_for(lambda: k8s.image("shop", "api") == f"{IMAGE}:1.2.0", timeout=20)
        k8s.tick()
        k8s.tick()
        await emu.wait_for(lambda: "new replicas have been updated" in text_of(emu.message(C, card.ts)), timeout=20)
        assert not k8s.rollout_complete("shop", "api")
        await p.kill()  # in the middle of the rollout
        k8s.auto_tick(0.05)  # the cluster goes on without opsloop
        await p.start()
        await emu.wait_for(lambda: "✅ done" in emu.message(C, card.ts).text, timeout=30)
        text = text_of(emu.message(C, card.ts))
        assert "successfully rolled out (3/3 updated, 3 available)" in text and "<@U0DAVE> ✅" in text
        await emu.wait_for(lambda: any("How did it go?" in m.text for m in emu.replies(C, card.ts)), timeout=20)
        replies = [m.text for m in emu.replies(C, card.ts)]
        assert "↪️ opsloop restarted; following the rollout again." in replies
        assert sum(t.startswith("✅ Deploy api 1.2.0 → prod: succeeded") for t in replies) == 1
        assert [m.ts for m in emu.top_level(C)] == [card.ts]  # the same card, no second one
        assert len(k8s.requests_to("/namespaces/shop/deployments/api", "PATCH")) == 1  # re-attached, not re-done


# --- 5. operate: rollback, status, scale, restart under the environment's policy ---------------------------


async def test_rollback_status_scale_and_restart_follow_the_environment_policy(
    tmp_path: Path, emu: SlackEmulator, k8s: KubernetesEmulator
) -> None:
    kubeconfig = k8s.kubeconfig(tmp_path / "kubeconfig")
    clock = FakeClock()  # prod bakes for 30 minutes that pass only when the test says so
    async with slack_ops(tmp_path, emu, clock=clock, **kubernetes_config(kubeconfig, bake=30)) as h:
        fast_polls(h)
        res = await h.command("status api", user=BOB)
        shown = json.dumps(answer(h, res), ensure_ascii=False)
        assert "*staging*: `1.1.0` — 1/1 ready" in shown and "*prod*: `1.1.0` — 3/3 ready" in shown
        assert shown.count("🟢") == 4
        res = await h.command("scale api prod 4", user=EVE)
        assert "Not allowed" in res.body_text and release_cards(h) == []

        # staging: no approvals, done at once.
        await h.command("scale api staging 2", user=BOB)
        await card_shows(h, card_of(h, "Scale api in staging to 2"), "✅ done")
        assert k8s.deployment("shop-staging", "api")["spec"]["replicas"] == 2
        # prod: the same command waits for two approvers.
        await h.command("scale api prod 5", user=BOB)
        scale = card_of(h, "Scale api in prod to 5")
        assert "waiting for approval" in card_now(h, scale)
        assert k8s.deployment("shop", "api")["spec"]["replicas"] == 3
        await approve(h, scale, CAROL, DAVE)
        await card_shows(h, scale, "✅ done")
        assert k8s.deployment("shop", "api")["spec"]["replicas"] == 5

        await h.command("restart api prod", user=BOB)
        restart = card_of(h, "Restart api in prod")
        annotations = k8s.deployment("shop", "api")["spec"]["template"]["metadata"].get("annotations") or {}
        assert "kubectl.kubernetes.io/restartedAt" not in annotations
        await approve(h, restart, CAROL, DAVE)
        await card_shows(h, restart, "✅ done", "successfully rolled out")
        annotations = k8s.deployment("shop", "api")["spec"]["template"]["metadata"]["annotations"]
        assert "kubectl.kubernetes.io/restartedAt" in annotations

        await h.command("deploy api 1.2.0 to prod", user=BOB)
        release = card_of(h, "Deploy api 1.2.0 → prod")
        await approve(h, release, CAROL, DAVE)
        await card_shows(h, release, "🍞 baking")
        res = await say(h, "status api prod", EVE)
        shown = json.dumps(answer(h, res), ensure_ascii=False)
        assert "*prod*: `1.2.0` — 5/5 ready" in shown and "staging" not in shown

        # rollback SERVICE ENV during the bake: prod's approvals apply, and the release bakes on
        # until the rollback starts; then it ends as rolled back and its bake stops.
        await say(h, "rollback api prod", BOB)
        back = card_of(h, "Rollback api in prod")
        await card_shows(h, back, "waiting for approval")
        assert "🍞 baking" in card_now(h, release)
        assert k8s.image("shop", "api") == f"{IMAGE}:1.2.0"
        await approve(h, back, BOB)
        assert "your vote doesn't count" in last_ephemeral(h, BOB)
        await approve(h, back, CAROL, DAVE)
        text = await card_shows(h, back, "✅ done")
        assert k8s.image("shop", "api") == f"{IMAGE}:1.1.0" and "`1.2.0` → `1.1.0`" in text
        await card_shows(h, release, "↩️ rolled back", "Rolled back by release 5")  # the undone deploy says so
        await h.settle()  # the bake job has stopped (it would wait for the clock otherwise)
        clock.advance(31 * 60)
        assert "↩️ rolled back" in card_now(h, release) and "How did it go?" not in thread_text(h, release)
        # rollback SERVICE ENV to VERSION
        await h.command("rollback api prod to 1.0.9", user=BOB)
        pinned = card_of(h, "Rollback api in prod to 1.0.9")
        await approve(h, pinned, CAROL, DAVE)
        await card_shows(h, pinned, "✅ done")
        assert k8s.image("shop", "api") == f"{IMAGE}:1.0.9"

        res = await h.command("deploy status", user=DAVE)
        lines = answer(h, res)["blocks"][1]["text"]["text"].splitlines()
        assert [line.split("—")[1].split("·")[0].strip() for line in lines] == [
            "*succeeded*",  # rollback to 1.0.9
            "*succeeded*",  # rollback
            "*rolled back*",  # deploy 1.2.0
            "*succeeded*",  # restart
            "*succeeded*",  # scale prod
            "*succeeded*",  # scale staging
        ]
        rolled_back = await h.services.store.read(
            lambda db: rows(db, "SELECT ref FROM events WHERE kind = 'deploy.rolled_back'")
        )
        assert [r["ref"] for r in rolled_back] == ["1.2.0"]  # what DORA counts as a failed change
        assert len(await release_rows(h)) == 6
