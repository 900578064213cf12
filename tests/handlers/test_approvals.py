"""The approval engine through the router: quorum, requester excluded, roles, expiry, fingerprint, double clicks."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from bot.clock import FakeClock
from bot.router import Click
from bot.store import rows
from tests.support import ALICE, BOB, CAROL, DAVE, ConsoleHarness, console_ops

TWO = {"plan.done": {"required": 2, "from": "approvers", "expire_after": "30m"}}


async def critical_item(h: ConsoleHarness) -> str:
    await h.say('plan new "Rotate certs" critical', as_user="alice")
    await h.say("plan done OPS-1")
    pending = await h.services.store.read(lambda db: rows(db, "SELECT id FROM approvals WHERE state = 'pending'"))
    assert len(pending) == 1
    return str(pending[0]["id"])


def approve(h: ConsoleHarness, user: str, approval_id: str, action: str = "approval.approve") -> Click:
    return Click(actor=user, channel="#approvals", action_id=action, value=f'{{"id": "{approval_id}"}}')


async def item_status(h: ConsoleHarness) -> str:
    return (await h.services.tracker().get("OPS-1")).status.value


async def test_the_requester_withdraws_a_request_with_reject_and_nothing_is_done(tmp_path: Path) -> None:
    async with console_ops(tmp_path, approvals=TWO) as h:
        aid = await critical_item(h)
        r = await h.ops.router.click(approve(h, BOB, aid), h.ops.surface)  # one approval of two
        assert r is not None and "1 more needed" in r.message.text
        # Alice asked for it and is no approver: her Reject takes the request back.
        r = await h.ops.router.click(approve(h, ALICE, aid, "approval.reject"), h.ops.surface)
        assert r is not None and "Withdrawn; nothing will be done" in r.message.text
        r = await h.ops.router.click(approve(h, CAROL, aid), h.ops.surface)
        assert r is not None and "already withdrawn" in r.message.text
        assert await item_status(h) == "open"
        await h.session.settle()
        shown = " ".join(h.text().replace("│", " ").split())
        assert "@alice withdrew the request; nothing will be done" in shown
        rows_ = await h.services.audit.recent(5)
        assert any(x.outcome == "withdrawn" and x.actor == ALICE for x in rows_)


async def test_the_app_home_lists_the_requests_one_may_decide_and_ones_own_that_wait(tmp_path: Path) -> None:
    async with console_ops(tmp_path, approvals=TWO) as h:
        out = await h.say("home", as_user="bob")
        assert "Waiting for your approval" not in out  # nothing pending: no empty section
        aid = await critical_item(h)  # alice asks to close OPS-1; approvers decide
        out = " ".join((await h.say("home", as_user="bob")).replace("│", " ").split())
        assert "Waiting for your approval" in out and "OPS-1" in out and "0 of 2, asked by @alice" in out
        assert "expires in 30m" in out  # a countdown to the minute, not "29m58s"
        out = " ".join((await h.say("home", as_user="alice")).replace("│", " ").split())
        assert "Your requests waiting" in out and "Reject on a request's card withdraws it" in out
        assert "0 of 2 in" in out and "asked by" not in out  # her own: no "asked by @alice"
        assert "Waiting for your approval" not in out
        out = await h.say("home", as_user="dave")  # a developer, no approver
        assert "Waiting for your approval" not in out and "Your requests waiting" not in out
        await h.ops.router.click(approve(h, BOB, aid), h.ops.surface)
        out = await h.say("home", as_user="bob")  # bob has voted: nothing left for him to decide
        assert "Waiting for your approval" not in out
        out = " ".join((await h.say("home", as_user="carol")).replace("│", " ").split())
        assert "Waiting for your approval" in out and "1 of 2" in out  # carol (through @sre) still may


async def test_the_app_home_no_longer_lists_a_request_once_it_has_expired(tmp_path: Path) -> None:
    clock = FakeClock()
    async with console_ops(tmp_path, clock=clock, approvals=TWO) as h:
        await critical_item(h)
        assert "Waiting for your approval" in await h.say("home", as_user="bob")
        clock.advance(31 * 60)  # past its 30 minutes, whether or not the expiry sweep has closed it yet
        out = await h.say("home", as_user="bob")
        assert "Waiting for your approval" not in out and "App Home of @bob" in out


async def test_two_distinct_approvers_are_needed_and_the_requester_never_counts(tmp_path: Path) -> None:
    async with console_ops(tmp_path, approvals=TWO) as h:
        aid = await critical_item(h)
        r = await h.ops.router.click(approve(h, ALICE, aid), h.ops.surface)
        assert r is not None and "your vote doesn't count" in r.message.text
        r = await h.ops.router.click(approve(h, DAVE, aid), h.ops.surface)
        assert r is not None and "Only members of `approvers`" in r.message.text
        r = await h.ops.router.click(approve(h, BOB, aid), h.ops.surface)
        assert r is not None and "1 more needed" in r.message.text
        r = await h.ops.router.click(approve(h, BOB, aid), h.ops.surface)
        assert r is not None and "already voted" in r.message.text
        assert await item_status(h) == "open"
        r = await h.ops.router.click(approve(h, CAROL, aid), h.ops.surface)  # carol is an approver via @sre
        assert r is not None and "carrying it out" in r.message.text
        await h.services.jobs.wait_idle()
        assert await item_status(h) == "done"
        refused = await h.services.store.read(
            lambda db: rows(db, "SELECT actor, reason FROM audit WHERE outcome = 'refused' ORDER BY id")
        )
        assert [x["actor"] for x in refused] == [ALICE, DAVE]
        assert all(x["reason"] for x in refused)


async def test_a_storm_of_clicks_runs_the_action_once(tmp_path: Path) -> None:
    async with console_ops(tmp_path) as h:
        aid = await critical_item(h)
        clicks = [approve(h, u, aid) for u in (BOB, CAROL) for _ in range(10)]
        await asyncio.gather(*(h.ops.router.click(c, h.ops.surface) for c in clicks))
        await h.services.jobs.wait_idle()
        executions = await h.services.store.read(lambda db: rows(db, "SELECT * FROM approval_executions"))
        jobs = await h.services.store.read(lambda db: rows(db, "SELECT * FROM jobs WHERE kind = 'plan.close'"))
        assert len(executions) == 1 and len(jobs) == 1
        assert await item_status(h) == "done"


async def test_expired_requests_cannot_be_approved_and_their_card_says_so(tmp_path: Path) -> None:
    clock = FakeClock()
    async with console_ops(tmp_path, clock=clock) as h:
        aid = await critical_item(h)
        clock.advance(31 * 60)
        r = await h.ops.router.click(approve(h, BOB, aid), h.ops.surface)
        assert r is not None and "expired" in r.message.text
        await h.services.outbox.drain()
        assert "Expired: plan.done" in h.text()
        assert await item_status(h) == "open"


async def test_the_sweeper_expires_requests_nobody_clicked(tmp_path: Path) -> None:
    clock = FakeClock()
    async with console_ops(tmp_path, clock=clock) as h:
        await critical_item(h)
        clock.advance(3600)
        expired = await h.services.approvals.expire_due()
        assert len(expired) == 1
        audit = await h.services.audit.recent(1)
        assert audit[0].outcome == "expired"


async def test_a_changed_subject_voids_the_approval(tmp_path: Path) -> None:
    async with console_ops(tmp_path) as h:
        aid = await critical_item(h)
        await h.services.store.write(lambda db: db.execute("UPDATE plan_items SET title = 'Something else'"))
        r = await h.ops.router.click(approve(h, BOB, aid), h.ops.surface)
        assert r is not None and "changed after the request" in r.message.text
        a = await h.services.approvals.get(aid)
        assert a.state.value == "void"
        assert await item_status(h) == "open"


async def told_in_thread(h: ConsoleHarness, aid: str) -> list[str]:
    """The texts posted in the thread of request `aid`'s card."""
    found = await h.services.store.read(
        lambda db: rows(db, "SELECT payload FROM outbox WHERE thread_key = ? ORDER BY id", (f"approval:{aid}",))
    )
    return [json.loads(r["payload"])["text"] for r in found]


async def test_reject_closes_the_request(tmp_path: Path) -> None:
    async with console_ops(tmp_path) as h:
        aid = await critical_item(h)
        r = await h.ops.router.click(approve(h, BOB, aid, "approval.reject"), h.ops.surface)
        assert r is not None and "Rejected" in r.message.text
        r = await h.ops.router.click(approve(h, CAROL, aid), h.ops.surface)
        assert r is not None and "already rejected" in r.message.text
        assert await item_status(h) == "open"
        # The requester hears it by name, once, in the card's thread (an edited card notifies nobody).
        assert await told_in_thread(h, aid) == ["🚫 <@U0ALICE>, rejected by <@U0BOB>."]


async def test_the_requester_is_told_who_approved(tmp_path: Path) -> None:
    async with console_ops(tmp_path, approvals=TWO) as h:
        aid = await critical_item(h)
        for user in (BOB, CAROL, CAROL):
            await h.ops.router.click(approve(h, user, aid), h.ops.surface)
        await h.services.jobs.wait_idle()
        told = await told_in_thread(h, aid)
        assert told == ["✅ <@U0ALICE>, approved by <@U0BOB>, <@U0CAROL>: carrying it out.", "OPS-1 is closed."]


async def test_asking_twice_joins_the_open_request(tmp_path: Path) -> None:
    async with console_ops(tmp_path) as h:
        await critical_item(h)
        out = await h.say("plan done OPS-1")
        assert "already waits for approval" in out
        n = await h.services.store.read(lambda db: db.execute("SELECT count(*) FROM approvals").fetchone()[0])
        assert n == 1


async def test_prune_forgets_old_dedupe_rows_only(tmp_path: Path) -> None:
    clock = FakeClock()
    async with console_ops(tmp_path, clock=clock) as h:
        await h.say('plan new "x"')
        now = clock.now()
        await h.services.store.write(
            lambda db: db.conn.executemany(
                "INSERT INTO seen_events (id, at) VALUES (?, ?)", [("old", now - 3 * 86400), ("new", now)]
            )
        )
        clock.advance(8 * 86400)
        await h.services.store.write(
            lambda db: db.execute("INSERT INTO seen_events (id, at) VALUES ('fresh', ?)", (clock.now(),))
        )
        await h.ops.prune()
        left = await h.services.store.read(lambda db: rows(db, "SELECT id FROM seen_events ORDER BY id"))
        assert [r["id"] for r in left] == ["fresh"]
        assert await h.services.store.read(lambda db: rows(db, "SELECT * FROM outbox")) == []
        assert len(await h.services.store.read(lambda db: rows(db, "SELECT * FROM message_refs"))) == 1
