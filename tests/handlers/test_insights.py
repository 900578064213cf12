"""Insights: the dora command, the weekly digest (once per week, even across restarts), the dashboard."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from bot.clock import FakeClock
from bot.store import rows
from handlers.insights import digest_message, schedule_digest
from tests.support import console_ops
from tests.unit.test_dora import T0, history

MONDAY_10 = datetime(2026, 2, 2, 10, tzinfo=UTC).timestamp()  # a Monday, after the 09:00 send time


async def test_dora_command_reports_levels_and_choices(tmp_path: Path) -> None:
    clock = FakeClock(T0 + 30 * 86400)
    async with console_ops(tmp_path, clock=clock) as h:
        await history(h.services.store)
        out = await h.say("dora 30d")
        assert "DORA all services, last 30 days (prod)" in out
        assert "Change failure rate" in out and "60%" in out and "low" in out
        assert "2024 State of DevOps" in out and "rolled back, or a critical alert" in out
        assert "dora.png" in out  # the weekly trend, with deploys to draw
        out = await h.say("dora nosuch")
        assert "There is no service nosuch" in out
        out = await h.say("dora 7")
        assert "for 7 days write 7d" in out  # (the console shows code without its backticks)


async def test_dora_draws_no_chart_of_empty_weeks(tmp_path: Path) -> None:
    async with console_ops(tmp_path) as h:
        out = await h.say("dora")
        assert "DORA all services, last 30 days" in out and "no data" in out
        assert "dora.png" not in out


async def test_the_digest_goes_out_once_even_across_restarts(tmp_path: Path) -> None:
    cfg = {"insights": {"digest": {"channel": "#ops", "weekday": "monday", "hour": 9}}}
    clock = FakeClock(MONDAY_10 - 3600 * 2)  # 08:00: not due yet
    async with console_ops(tmp_path, clock=clock, **cfg) as h:
        assert not await schedule_digest(h.services)
        clock.advance(2 * 3600)
        assert await schedule_digest(h.services)
        await h.services.jobs.wait_idle()
        assert not await schedule_digest(h.services)
        await h.services.outbox.drain()
        assert h.text().count("Weekly digest, week 2026-W06") == 1
    async with console_ops(tmp_path, clock=clock, **cfg) as h2:  # a restart in the same week
        assert not await schedule_digest(h2.services)
        sent = await h2.services.store.read(lambda db: rows(db, "SELECT week FROM digests_sent"))
        assert sent == [{"week": "2026-W06"}]


async def test_home_is_a_dashboard(tmp_path: Path) -> None:
    async with console_ops(tmp_path) as h:
        out = await h.say("home")
        assert "Last 30 days:" in out and "Open plan items" in out


async def test_the_digest_counts_deploys_by_environment_and_not_rollbacks_scales_or_restarts(tmp_path: Path) -> None:
    clock = FakeClock(MONDAY_10)
    async with console_ops(tmp_path, clock=clock) as h:

        def events(db) -> None:
            for at, env, action, ok in [
                (MONDAY_10 - 3600, "prod", "deploy", True),
                (MONDAY_10 - 7200, "prod", "deploy", True),
                (MONDAY_10 - 7200, "staging", "deploy", True),
                (MONDAY_10 - 3600, "prod", "scale", True),
                (MONDAY_10 - 3600, "prod", "rollback", True),
                (MONDAY_10 - 3600, "prod", "restart", False),
                (MONDAY_10 - 3600, "staging", "deploy", False),
                (MONDAY_10 - 8 * 86400, "prod", "deploy", True),  # the week before
            ]:
                db.execute(
                    "INSERT INTO events (at, kind, service, env, ref, actor, detail) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (at, "deploy.finished", "shop", env, "1.0", "U1", json.dumps({"ok": ok, "action": action})),
                )

        await h.services.store.write(events)
        fields = dict(digest_message_fields(await digest_message(h.services, clock.now())))
        assert fields["Deploys"] == "prod 2 · staging 1"
        assert fields["Failed deploys"] == "1"


def digest_message_fields(msg) -> list[tuple[str, str]]:
    return [f for b in msg.blocks for f in (getattr(b, "fields", None) or ())]
