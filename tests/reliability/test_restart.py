"""Kill -9 while the outbox is delivering and while an approval waits: nothing lost, nothing posted twice.

opsloop runs as a real `opsloop run` process (HTTP mode) against the Slack emulator in the test
process, which outlives both opsloop processes and so remembers what was really posted.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.emulators.slack import SlackEmulator
from tests.support import ALICE, BOB, clean_environ, config_data, find_button, free_port, slack_workspace, wait_until

pytestmark = pytest.mark.slow


class Proc:
    """`opsloop run` (HTTP mode) as a child process that a test can SIGKILL and start again.

    `config` is the whole opsloop.yml (default: the demo's shape); `environ` adds variables (tokens)."""

    def __init__(
        self, tmp: Path, emu: SlackEmulator, config: dict[str, Any] | None = None, environ: dict[str, str] | None = None
    ) -> None:
        self.tmp, self.emu = tmp, emu
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/slack/events"
        self.hooks = f"http://127.0.0.1:{self.port}/hooks"
        (tmp / "opsloop.yml").write_text(yaml.safe_dump(config or config_data("opsloop.db")))
        self.environ = environ or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tmp / "opsloop.log"

    async def start(self) -> None:
        env = {
            **clean_environ(),
            "SLACK_BOT_TOKEN": self.emu.bot_token,
            "SLACK_SIGNING_SECRET": self.emu.signing_secret,
            "SLACK_API_URL": self.emu.api_url,
            "OPSLOOP_HTTP_PORT": str(self.port),
            "OPSLOOP_CONFIG": str(self.tmp / "opsloop.yml"),
            **self.environ,
        }
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "bot", "run"], env=env, stdout=log, stderr=log)

        async def healthy() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()
            try:
                async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{self.port}/healthz") as r:
                    return r.status == 200
            except aiohttp.ClientError:
                return False

        await wait_until(healthy, 30, "opsloop to come up")

    async def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        await asyncio.to_thread(self.proc.wait, 10)

    async def stop(self) -> None:
        # Waited for off the loop: the emulators in this process must keep answering meanwhile.
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                await asyncio.to_thread(self.proc.wait, 15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                await asyncio.to_thread(self.proc.wait, 10)


@asynccontextmanager
async def opsloop_process(
    tmp: Path, emu: SlackEmulator, config: dict[str, Any] | None = None, environ: dict[str, str] | None = None
) -> AsyncIterator[Proc]:
    p = Proc(tmp, emu, config, environ)
    try:
        yield p
    finally:
        await p.stop()


def cards(emu: SlackEmulator) -> list[str]:
    return [m.text for m in emu.messages("C0OPS") if m.bot_id]


async def test_kill_during_delivery_loses_nothing_and_posts_nothing_twice(tmp_path: Path) -> None:
    async with SlackEmulator() as emu, opsloop_process(tmp_path, emu) as p:
        slack_workspace(emu)
        await p.start()
        # Slack carries out each post, then answers late: a kill now leaves opsloop unsure whether
        # the post happened (the worst case for duplicates).
        emu.slow("chat.postMessage", 1.5, process_first=True)
        for i in range(1, 6):
            res = await emu.send_command(p.url, f'plan new "Item {i}"', user_id=ALICE)
            assert res.status == 200
        await emu.wait_for(lambda: len(cards(emu)) >= 2, timeout=20)
        await p.kill()
        emu.clear_faults()
        await p.start()
        await emu.wait_for(lambda: len(cards(emu)) >= 5, timeout=30)
        await asyncio.sleep(1.5)  # anything duplicated would arrive now
        assert sorted(cards(emu)) == [f"OPS-{i}: Item {i}" for i in range(1, 6)]
        assert "was posted before the restart" in p.log.read_text()


async def test_kill_while_an_approval_waits_then_approve_once(tmp_path: Path) -> None:
    async with SlackEmulator() as emu, opsloop_process(tmp_path, emu) as p:
        slack_workspace(emu)
        await p.start()
        await emu.send_command(p.url, 'plan new "Rotate certs" critical', user_id=ALICE)
        await emu.wait_for(lambda: len(cards(emu)) == 1, timeout=20)
        card = emu.messages("C0OPS")[0]
        done = find_button(card.blocks, "Done")
        await emu.send_action(
            p.url,
            user_id=ALICE,
            action_id=done["action_id"],
            value=done["value"],
            channel_id="C0OPS",
            message_ts=card.ts,
        )
        await emu.wait_for(lambda: len(emu.messages("C0APR")) == 1, timeout=20)
        await p.kill()
        await p.start()
        approval = emu.messages("C0APR")[0]
        approve = find_button(approval.blocks, "Approve")
        # A double click, and Slack delivering the same click twice.
        results = await asyncio.gather(
            *(
                emu.send_action(
                    p.url,
                    user_id=BOB,
                    action_id=approve["action_id"],
                    value=approve["value"],
                    channel_id="C0APR",
                    message_ts=approval.ts,
                )
                for _ in range(3)
            )
        )
        assert all(r.status == 200 for r in results)
        await emu.wait_for(
            lambda: "✅ done" in json.dumps(emu.message("C0OPS", card.ts).blocks, ensure_ascii=False), timeout=20
        )
        await emu.wait_for(lambda: len(emu.replies("C0APR", approval.ts)) >= 2, timeout=20)
        await asyncio.sleep(1.0)
        # Each said once: the requester told who approved, and the action's result.
        assert [m.text for m in emu.replies("C0APR", approval.ts)] == [
            "✅ <@U0ALICE>, approved by <@U0BOB>: carrying it out.",
            "OPS-1 is closed.",
        ]
        assert len(emu.top_level("C0OPS")) == 1 and len(emu.top_level("C0APR")) == 1
        assert "Approved: plan.done" in json.dumps(emu.message("C0APR", approval.ts).blocks)
        already = [e.text for e in emu.ephemerals if e.user == BOB]
        assert sum("carrying it out" in t for t in already) == 1
        assert sum("already" in t for t in already) == 2


async def test_a_slack_outage_delays_delivery_but_loses_nothing(tmp_path: Path) -> None:
    async with SlackEmulator() as emu, opsloop_process(tmp_path, emu) as p:
        slack_workspace(emu)
        await p.start()
        emu.fail_for("chat.postMessage", 3.0, status=500)
        emu.fail_next("chat.postMessage", status=429, count=2, retry_after=1)
        for i in range(1, 5):
            await emu.send_command(p.url, f'plan new "Outage {i}"', user_id=ALICE)
        await emu.wait_for(lambda: len(cards(emu)) >= 4, timeout=60)
        await asyncio.sleep(1.0)
        assert cards(emu) == [f"OPS-{i}: Outage {i}" for i in range(1, 5)]  # all, once, in order
        statuses = {c.status for c in emu.calls_to("chat.postMessage")}
        assert {429, 200} <= statuses or {500, 200} <= statuses
