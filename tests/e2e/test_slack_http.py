"""End to end through Bolt in HTTP mode: signed requests from the Slack emulator, answers back into it."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from bot import commands as c
from bot import views as v
from bot.app import GROUPS
from bot.context import Ctx
from bot.router import CommandGroup
from bot.store import rows
from tests.emulators.slack import SlackEmulator
from tests.support import ALICE, BOB, CAROL, DAVE, SlackHarness, click, slack_ops, slack_workspace


@pytest.fixture
async def emu():
    async with SlackEmulator() as e:
        slack_workspace(e)
        yield e


async def audit_rows(h: SlackHarness) -> list[dict[str, object]]:
    return await h.services.store.read(lambda db: rows(db, "SELECT actor, action, outcome, reason FROM audit"))


async def test_help_is_answered_in_the_ack(tmp_path: Path, emu: SlackEmulator) -> None:
    async with slack_ops(tmp_path, emu) as h:
        res = await h.command("help")
        assert res.status == 200
        assert res.json["response_type"] == "ephemeral"
        assert any("opsloop commands" in json.dumps(b) for b in res.json["blocks"])
        assert emu.invalid_acks == []
        samples = h.services.metrics.registry
        assert samples.get_sample_value("opsloop_ack_seconds_count", {"kind": "command"}) == 1
        assert samples.get_sample_value("opsloop_acks_total", {"kind": "command"}) == 1
        assert await audit_rows(h) == [{"actor": ALICE, "action": "core.help", "outcome": "ok", "reason": None}]


async def test_acks_are_redacted_and_each_reply_keeps_its_own_body(tmp_path: Path, emu: SlackEmulator) -> None:
    # Acks are encoded once per distinct reply: a repeat must still be masked, and must not be another's.
    async with slack_ops(tmp_path, emu) as h:
        first = await h.command("zzz hook-secret-123")
        again = await h.command("zzz hook-secret-123")
        other = await h.command("yyy hook-secret-123")
        for res in (first, again, other):
            assert res.status == 200 and "hook-secret-123" not in res.body_text and "zzz" in first.body_text
            assert {k.lower(): x for k, x in res.headers.items()}["content-type"].startswith("application/json")
        assert first.json == again.json and "I don't know `zzz" in first.body_text
        assert "yyy" in other.body_text and "zzz" not in other.body_text
        assert emu.invalid_acks == []


def test_an_ack_of_a_reply_that_cannot_be_hashed_is_encoded_all_the_same() -> None:
    from bot.redact import Redactor
    from bot.slack import AckBodies

    acks = AckBodies(Redactor(["s3cret-value"]), size=1)
    odd = v.Reply(v.Message("x", [v.Section("keep s3cret-value out")]))  # type: ignore[arg-type]
    for reply in (odd, v.Reply.text("one"), v.Reply.text("two"), v.Reply.text("one")):
        body = json.loads(acks.response(reply).body)
        assert body["response_type"] == "ephemeral" and "s3cret-value" not in json.dumps(body)
    assert json.loads(acks.response(v.Reply.text("two")).body)["text"] == "two"


async def test_plan_card_approval_and_update_in_place(tmp_path: Path, emu: SlackEmulator) -> None:
    async with slack_ops(tmp_path, emu) as h:
        res = await h.command('plan new "Rotate certs" <@U0DAVE|dave> critical')
        assert "Created *OPS-1*" in json.dumps(res.json)
        [card] = emu.messages("C0OPS")
        assert "OPS-1 · Rotate certs" in json.dumps(card.blocks, ensure_ascii=False)
        await click(h, "C0OPS", card.ts, "Done", ALICE)  # critical: asks for approval
        [approval] = emu.messages("C0APR")
        assert "Approval needed" in json.dumps(approval.blocks)
        await click(h, "C0APR", approval.ts, "Approve", DAVE)  # not an approver: refused, privately
        assert any("Only members of `approvers`" in e.text and e.user == DAVE for e in emu.ephemerals)
        await click(h, "C0APR", approval.ts, "Approve", CAROL)  # approver through the @sre user group
        card_now = emu.message("C0OPS", card.ts)
        assert "✅ done" in json.dumps(card_now.blocks, ensure_ascii=False)
        assert card_now.edited_count >= 1 and len(emu.messages("C0OPS")) == 1  # edited, never re-posted
        assert "Approved: plan.done" in json.dumps(emu.message("C0APR", approval.ts).blocks)
        assert [m.text for m in emu.replies("C0APR", approval.ts)] == [
            "✅ <@U0ALICE>, approved by <@U0CAROL>: carrying it out.",
            "OPS-1 is closed.",
        ]
        actions = [(r["actor"], r["action"], r["outcome"]) for r in await audit_rows(h)]
        assert (DAVE, "click:approval.approve", "refused") in actions
        assert (CAROL, "approval.approve", "approved") in actions
        assert (await h.services.audit.verify()).ok


async def test_the_requester_withdraws_a_plan_approval_with_reject_on_its_card(
    tmp_path: Path, emu: SlackEmulator
) -> None:
    # The generic approval card through Slack: its requester's Reject withdraws it, nothing is done, and
    # the card and its thread say so.
    async with slack_ops(tmp_path, emu) as h:
        await h.command('plan new "Rotate certs" critical')
        [card] = emu.messages("C0OPS")
        await click(h, "C0OPS", card.ts, "Done", ALICE)
        [approval] = emu.messages("C0APR")
        assert "its requester can withdraw it with Reject" in json.dumps(approval.blocks, ensure_ascii=False)
        await click(h, "C0APR", approval.ts, "Reject", ALICE)
        shown = json.dumps(emu.message("C0APR", approval.ts).blocks, ensure_ascii=False)
        assert "withdrawn" in shown.lower() and '"type": "actions"' not in shown, shown  # no buttons left
        assert any("withdrew the request" in m.text for m in emu.replies("C0APR", approval.ts))
        assert "✅ done" not in json.dumps(emu.message("C0OPS", card.ts).blocks, ensure_ascii=False)
        item = await h.services.tracker().get("OPS-1")
        assert item.status.value == "open" and item.closed_by is None
        actions = [(r["actor"], r["action"], r["outcome"]) for r in await audit_rows(h)]
        assert (ALICE, "approval.reject", "withdrawn") in actions


async def test_usergroup_membership_is_cached(tmp_path: Path, emu: SlackEmulator) -> None:
    async with slack_ops(tmp_path, emu) as h:
        for _ in range(5):
            await h.command("whoami", user=CAROL)
        assert len(emu.calls_to("usergroups.users.list")) == 1


async def test_mentions_answer_in_a_thread_and_event_retries_are_ignored(tmp_path: Path, emu: SlackEmulator) -> None:
    async with slack_ops(tmp_path, emu) as h:
        event = emu.app_mention_event("<@UBOT> /ops plan list all", user_id=BOB, channel_id="C0OPS")
        first = await emu.send_event(h.url, event, event_id="Ev123")
        again = await emu.send_event(h.url, event, event_id="Ev123", headers={"X-Slack-Retry-Num": "1"})
        await h.settle()
        assert first.status == 200 and again.status == 200
        replies = [m for m in emu.messages("C0OPS") if m.thread_ts == event["ts"]]
        assert len(replies) == 1 and "No plan items yet" in replies[0].text


async def test_a_direct_message_is_a_command_answered_in_the_conversation(tmp_path: Path, emu: SlackEmulator) -> None:
    async with slack_ops(tmp_path, emu) as h:

        def dm_event(text: str, **extra: Any) -> dict[str, Any]:
            msg = emu.add_user_message(BOB, text, user_id=BOB)  # BOB's DM with the app (its Messages tab)
            event = {"type": "message", "channel": msg.channel, "channel_type": "im", "user": BOB, "text": text}
            return {**event, "ts": msg.ts, "event_ts": msg.ts, **extra}

        event = dm_event("/ops plan list all")  # `/ops` typed out of habit is dropped
        first = await emu.send_event(h.url, event, event_id="EvDM1")
        await emu.send_event(h.url, event, event_id="EvDM1", headers={"X-Slack-Retry-Num": "1"})
        await h.settle()
        assert first.status == 200
        answers = [m for m in emu.messages(BOB) if m.user != BOB]
        assert len(answers) == 1 and "No plan items yet" in answers[0].text and answers[0].thread_ts is None
        # Bots (opsloop's own posts included) and edits are not commands.
        await emu.send_event(h.url, dm_event("help", bot_id="B0OTHER"), event_id="EvDM2")
        await emu.send_event(h.url, dm_event("help", subtype="message_changed"), event_id="EvDM3")
        await h.settle()
        assert len([m for m in emu.messages(BOB) if m.user != BOB]) == 1
        audited = await h.services.store.read(
            lambda db: rows(db, "SELECT actor, detail FROM audit WHERE action = 'plan.list'")
        )
        assert [r["actor"] for r in audited] == [BOB] and json.loads(audited[0]["detail"])["source"] == "dm"


async def test_app_home_is_published_when_opened(tmp_path: Path, emu: SlackEmulator) -> None:
    async with slack_ops(tmp_path, emu) as h:
        await h.command('plan new "Home item" <@U0ALICE|alice>')
        await emu.send_event(
            h.url,
            {
                "type": "app_home_opened",
                "user": ALICE,
                "channel": "D1",
                "tab": "home",
                "event_ts": f"{time.time():.6f}",
            },
        )
        await h.settle()
        home = emu.home_views[ALICE]
        assert home["type"] == "home" and "Home item" in json.dumps(home)


async def test_message_shortcut_opens_a_form_whose_submit_creates_the_item(tmp_path: Path, emu: SlackEmulator) -> None:
    async with slack_ops(tmp_path, emu) as h:
        ts = emu.add_user_message("C0OPS", "Checkout is slow since the last deploy", user_id=DAVE).ts
        await emu.send_message_shortcut(
            h.url, user_id=ALICE, callback_id="feedback.message", channel_id="C0OPS", message_ts=ts
        )
        await h.settle()
        [view] = [vw for vw in emu.views.values() if vw.get("callback_id") == "feedback.message_submit"]
        assert "Checkout is slow" in json.dumps(view)
        empty = await emu.send_view_submission(
            h.url,
            user_id=ALICE,
            callback_id="feedback.message_submit",
            view_id=view["id"],
            private_metadata=view["private_metadata"],
            values={
                "text": {"text": {"type": "plain_text_input", "value": "  "}},
                "as": {"as": {"type": "radio_buttons", "selected_option": {"value": "plan"}}},
            },
        )
        assert empty.json == {"response_action": "errors", "errors": {"text": "Write something to send."}}
        ok = await emu.send_view_submission(
            h.url,
            user_id=ALICE,
            callback_id="feedback.message_submit",
            view_id=view["id"],
            private_metadata=view["private_metadata"],
            values={
                "text": {"text": {"type": "plain_text_input", "value": "Checkout is slow"}},
                "as": {"as": {"type": "radio_buttons", "selected_option": {"value": "plan"}}},
            },
        )
        assert ok.status == 200 and not ok.body_text.strip()
        await h.settle()
        assert (await h.services.tracker().get("OPS-1")).title == "Checkout is slow"
        assert any("now plan item" in e.text for e in emu.ephemerals if e.user == ALICE)


async def test_slow_work_is_acked_at_once_and_answered_later(tmp_path: Path, emu: SlackEmulator) -> None:
    slow = CommandGroup("slow", "test")

    @slow.command("slow thing", c.number("seconds", optional=True, default=3, max=10))
    async def slow_thing(ctx: Ctx, seconds: int) -> v.Reply:
        """Take a while."""
        await asyncio.sleep(seconds)
        return v.Reply.text("finally done")

    from bot.app import build_slack
    from tests.support import make_config, make_env

    cfg = make_config(tmp_path / "s.db")
    env = make_env(
        tmp_path, SLACK_BOT_TOKEN=emu.bot_token, SLACK_SIGNING_SECRET=emu.signing_secret, SLACK_API_URL=emu.api_url
    )
    from bot.outbox import Pacing

    ops, bolt, frontend = await build_slack(cfg, env, groups=(*GROUPS, slow), pacing=Pacing.unpaced())
    await ops.start()
    port = await ops.serve_http("127.0.0.1", 0, bolt=bolt)
    try:
        h = SlackHarness(ops, frontend, emu, f"http://127.0.0.1:{port}/slack/events")
        res = await emu.send_command(h.url, "slow thing 3", user_id=ALICE)
        assert res.status == 200 and res.elapsed_seconds < 3.0
        assert "Working on it" in res.body_text
        await h.settle()
        assert [r.body.get("text") for r in emu.responses] == ["finally done"]
    finally:
        await frontend.wait_late()
        await ops.stop()


@pytest.mark.parametrize("variant", ["forged", "unsigned", "replayed", "wrong_secret", "malformed"])
async def test_unverified_requests_are_refused_and_reach_no_handler(
    tmp_path: Path, emu: SlackEmulator, variant: str
) -> None:
    async with slack_ops(tmp_path, emu) as h:
        body = emu.command_body('plan new "evil"', user_id=ALICE)
        if variant == "forged":
            headers = emu.sign(body)
            res = await emu.send(h.url, body.replace("evil", "EVIL"), signed=False, headers=headers)
        elif variant == "unsigned":
            res = await emu.send(h.url, body, signed=False)
        elif variant == "replayed":
            res = await emu.send(h.url, body, timestamp=int(time.time()) - 301)
        elif variant == "wrong_secret":
            other = SlackEmulator(signing_secret="not-the-secret")
            res = await emu.send(h.url, body, signed=False, headers=other.sign(body))
        else:
            res = await emu.send(h.url, "payload=%7Bnot-json", content_type="application/x-www-form-urlencoded")
        await h.settle()
        assert res.status in (400, 401), res
        assert await audit_rows(h) == []
        assert emu.messages("C0OPS") == [] and emu.calls_to("chat.postMessage") == []
