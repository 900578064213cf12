"""Helpers shared by the tests: configs, a console opsloop, free ports, waiting."""

from __future__ import annotations

import asyncio
import io
import os
import re
import socket
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from rich.console import Console

from bot.app import Opsloop, build_console
from bot.clock import Clock
from bot.config import Config, Env, parse_config
from bot.console import ConsoleSession
from bot.outbox import Pacing

ALICE, BOB, CAROL, DAVE, EVE = "U0ALICE", "U0BOB", "U0CAROL", "U0DAVE", "U0EVE"


def config_data(db: Path | str = "opsloop.db", **overrides: Any) -> dict[str, Any]:
    """The demo's shape: alice admin, bob+carol approvers (carol via @sre), dave developer, eve nobody."""
    data: dict[str, Any] = {
        "storage": {"path": str(db)},
        "channels": {"default": "#ops", "approvals": "#approvals", "feedback": "#feedback"},
        "roles": {
            "admins": [ALICE],
            "approvers": [BOB, "@sre"],
            "developers": [DAVE, ALICE, BOB, CAROL],
        },
        "permissions": {"insights.audit": ["admins"], "plan.*": ["developers"], "feedback.*": ["everyone"]},
        "approvals": {"plan.done": {"required": 1, "from": "approvers", "expire_after": "30m"}},
        "console": {
            "user": "alice",
            "channel": "#ops",
            "people": {"alice": ALICE, "bob": BOB, "carol": CAROL, "dave": DAVE, "eve": EVE},
            "groups": {"@sre": [CAROL]},
        },
    }
    for k, v in overrides.items():
        data[k] = v
    return data


def make_config(db: Path | str, **overrides: Any) -> Config:
    return parse_config(config_data(db, **overrides))


def make_env(tmp: Path, **extra: str) -> Env:
    environ = {"OPSLOOP_CONFIG": str(tmp / "opsloop.yml"), "OPSLOOP_DB": str(tmp / "opsloop.db"), **extra}
    return Env.read(environ)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_until(pred: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = pred()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class ConsoleHarness:
    """A console opsloop driven by a test: `await h.say("plan list")`, then read `h.text()`."""

    def __init__(self, ops: Opsloop, session: ConsoleSession, buf: io.StringIO) -> None:
        self.ops, self.session, self.buf = ops, session, buf
        self.mark = 0

    @property
    def services(self):
        return self.ops.services

    async def say(self, line: str, *, as_user: str | None = None) -> str:
        """Run one line; return only the output it produced."""
        if as_user:
            await self.session.handle(f"/as {as_user}")
        start = len(self.buf.getvalue())
        await self.session.handle(line)
        return _ANSI.sub("", self.buf.getvalue()[start:])

    def text(self) -> str:
        return _ANSI.sub("", self.buf.getvalue())

    def button(self, label: str, *, last: bool = True) -> int:
        """The number of the newest (or oldest) live button with this label."""
        nums = [n for n, c in self.session.screen.choices.items() if c.label == label]
        if not nums:
            raise AssertionError(f"no button {label!r}; have {[c.label for c in self.session.screen.choices.values()]}")
        return max(nums) if last else min(nums)


@asynccontextmanager
async def console_ops(tmp: Path, clock: Clock | None = None, **overrides: Any):
    cfg = make_config(tmp / "opsloop.db", **overrides)
    env = make_env(tmp)
    buf = io.StringIO()
    out = Console(file=buf, width=240, force_terminal=False, color_system=None)
    ops, session = await build_console(cfg, env, out=out, clock=clock, pacing=Pacing.unpaced())
    await ops.start()
    try:
        yield ConsoleHarness(ops, session, buf)
    finally:
        await ops.stop()


def clean_environ() -> dict[str, str]:
    """The environment without Slack settings or proxies (slack_sdk ignores NO_PROXY)."""
    drop = re.compile(r"^(SLACK_|OPSLOOP_(?!REQUIRE_SERVERS|GOLDEN)|HTTPS?_PROXY$|https?_proxy$|ALL_PROXY$|all_proxy$)")
    return {k: v for k, v in os.environ.items() if not drop.match(k)}


# --- Slack -----------------------------------------------------------------------------------------

CHANNELS = {"C0OPS": "ops", "C0APR": "approvals", "C0FB": "feedback"}
PEOPLE = {ALICE: "alice", BOB: "bob", CAROL: "carol", DAVE: "dave", EVE: "eve"}


def slack_workspace(emu: Any) -> None:
    """The demo's people and channels in the Slack emulator; @sre is a user group holding carol."""
    for cid, name in CHANNELS.items():
        emu.add_channel(cid, name)
    for uid, name in PEOPLE.items():
        emu.add_user(uid, name)
    emu.add_usergroup("S0SRE", "sre", [CAROL])


class SlackHarness:
    """opsloop serving HTTP against the Slack emulator."""

    def __init__(self, ops: Opsloop, frontend: Any, emu: Any, url: str) -> None:
        self.ops, self.frontend, self.emu, self.url = ops, frontend, emu, url

    @property
    def services(self):
        return self.ops.services

    async def settle(self, *, jobs: bool = True) -> None:
        """Wait for late answers, (unless `jobs=False`) running jobs, and the outbox."""
        await self.frontend.wait_late()
        if jobs:
            await self.ops.services.jobs.wait_idle()
        assert await self.ops.services.outbox.drain(timeout=30), "outbox did not drain"

    async def command(self, text: str, user: str = ALICE, channel: str = "C0OPS", **kw: Any) -> Any:
        res = await self.emu.send_command(self.url, text, user_id=user, channel_id=channel, **kw)
        await self.settle()
        return res


@asynccontextmanager
async def slack_ops(tmp: Path, emu: Any, *, pacing: Pacing | None = None, clock: Clock | None = None, **overrides: Any):
    from bot.app import build_slack

    cfg = make_config(tmp / "opsloop.db", **overrides)
    env = make_env(
        tmp,
        SLACK_BOT_TOKEN=emu.bot_token,
        SLACK_SIGNING_SECRET=emu.signing_secret,
        SLACK_API_URL=emu.api_url,
        OPSLOOP_WEBHOOK_TOKEN="hook-secret-123",
    )
    ops, bolt, frontend = await build_slack(cfg, env, pacing=pacing or Pacing.unpaced(), clock=clock)
    await ops.start()
    port = await ops.serve_http("127.0.0.1", 0, bolt=bolt)
    try:
        yield SlackHarness(ops, frontend, emu, f"http://127.0.0.1:{port}/slack/events")
    finally:
        await frontend.wait_late()
        await ops.stop()


def find_button(blocks: list[dict[str, Any]], label: str) -> dict[str, Any]:
    """A button element by its label in a Block Kit message."""
    for b in blocks:
        elements = list(b.get("elements") or [])
        if b.get("accessory"):
            elements.append(b["accessory"])
        for el in elements:
            if el.get("type") == "button" and el.get("text", {}).get("text") == label:
                return dict(el)
    raise AssertionError(f"no button {label!r} in {blocks}")


async def click(h: SlackHarness, channel: str, ts: str, label: str, user: str, *, jobs: bool = True) -> Any:
    """Press a button of a message the emulator holds, as `user`, through signed HTTP."""
    return await press(h, find_button(h.emu.message(channel, ts).blocks, label), user, channel, ts, jobs=jobs)


async def press(h: SlackHarness, button: dict[str, Any], user: str, channel: str, ts: str, *, jobs: bool = True) -> Any:
    """Send a click of `button` as if from the message `ts` in `channel` (which may no longer show it: a
    double click, an old copy of a card, a replay from elsewhere), through signed HTTP."""
    res = await h.emu.send_action(
        h.url,
        user_id=user,
        action_id=button["action_id"],
        value=button.get("value", ""),
        channel_id=channel,
        message_ts=ts,
    )
    await h.settle(jobs=jobs)
    return res
