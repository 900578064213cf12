"""End to end in Socket Mode: Bolt's AsyncSocketModeHandler against the emulator's websocket."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from bot.app import build_slack
from bot.outbox import Pacing
from bot.slack import TimedSocketModeHandler
from bot.store import rows
from tests.emulators.slack import SlackEmulator
from tests.support import ALICE, BOB, find_button, make_config, make_env, slack_workspace


async def test_commands_and_clicks_over_the_socket(tmp_path: Path) -> None:
    async with SlackEmulator() as emu:
        slack_workspace(emu)
        cfg = make_config(tmp_path / "s.db")
        env = make_env(
            tmp_path, SLACK_BOT_TOKEN=emu.bot_token, SLACK_APP_TOKEN=emu.app_token, SLACK_API_URL=emu.api_url
        )
        ops, bolt, frontend = await build_slack(cfg, env, pacing=Pacing.unpaced())
        await ops.start()
        assert env.app_token is not None
        handler = TimedSocketModeHandler(bolt, env.app_token, ops.services.metrics)
        await handler.connect_async()
        try:
            await emu.wait_socket_connected()
            ack = await emu.socket_command("help", user_id=ALICE)
            assert ack is not None
            assert "opsloop commands" in json.dumps(ack["payload"])
            assert ops.services.metrics.registry.get_sample_value("opsloop_acks_total", {"kind": "command"}) == 1

            ack = await emu.socket_command('plan new "Socket item" critical', user_id=ALICE)
            assert ack is not None and "Created *OPS-1*" in json.dumps(ack["payload"])
            await ops.services.outbox.drain()
            [card] = emu.messages("C0OPS")
            done = find_button(card.blocks, "Done")
            ack = await emu.socket_action(
                user_id=ALICE, action_id=done["action_id"], value=done["value"], channel_id="C0OPS", message_ts=card.ts
            )
            assert ack is not None
            await frontend.wait_late()
            await ops.services.outbox.drain()
            [approval] = emu.messages("C0APR")
            approve = find_button(approval.blocks, "Approve")
            await emu.socket_action(
                user_id=BOB,
                action_id=approve["action_id"],
                value=approve["value"],
                channel_id="C0APR",
                message_ts=approval.ts,
            )
            await frontend.wait_late()
            await ops.services.jobs.wait_idle()
            await ops.services.outbox.drain()
            assert (await ops.services.tracker().get("OPS-1")).status.value == "done"
            audit = await ops.services.store.read(lambda db: rows(db, "SELECT action FROM audit"))
            assert [a["action"] for a in audit].count("approval.approve") == 1
        finally:
            await handler.close_async()
            await frontend.wait_late()
            await ops.stop()


async def test_slow_commands_are_acked_in_time_over_the_socket(tmp_path: Path) -> None:
    from bot import commands as c
    from bot import views as v
    from bot.app import GROUPS
    from bot.context import Ctx
    from bot.router import CommandGroup

    slow = CommandGroup("slow", "test")

    @slow.command("slow thing", c.number("seconds", optional=True, default=3, max=10))
    async def slow_thing(ctx: Ctx, seconds: int) -> v.Reply:
        """Take a while."""
        await asyncio.sleep(seconds)
        return v.Reply.text("finally done")

    async with SlackEmulator() as emu:
        slack_workspace(emu)
        env = make_env(
            tmp_path, SLACK_BOT_TOKEN=emu.bot_token, SLACK_APP_TOKEN=emu.app_token, SLACK_API_URL=emu.api_url
        )
        ops, bolt, frontend = await build_slack(
            make_config(tmp_path / "s.db"), env, groups=(*GROUPS, slow), pacing=Pacing.unpaced()
        )
        await ops.start()
        assert env.app_token is not None
        handler = TimedSocketModeHandler(bolt, env.app_token, ops.services.metrics)
        await handler.connect_async()
        try:
            ack = await emu.socket_command("slow thing 4", user_id=ALICE, timeout=3.0)
            assert ack is not None and "Working on it" in json.dumps(ack.get("payload"))
            await frontend.wait_late()
            await ops.services.outbox.drain()
            assert [r.body.get("text") for r in emu.responses] == ["finally done"]
        finally:
            await handler.close_async()
            await frontend.wait_late()
            await ops.stop()
