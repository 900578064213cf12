"""Issue 7, figure 2: randomized duplicate deliveries never duplicate a side effect.

One opsloop serves the Slack emulator over HTTP *and* Socket Mode at once, with a real Alertmanager
and the command deploy target. Each trial (seeded, `OPSLOOP_TRIALS` of them: 100 by default, 1,000 in
the soak run) picks a side-effecting action and a way Slack delivers it more than once:

* double click: the same person's click sent two or three times at once (fresh trigger ids);
* Slack retry: the same body again with `X-Slack-Retry-Num` 1..3 (events carry the same event_id);
* Socket Mode redelivery: the same envelope (same envelope_id) pushed twice down the websocket;
* concurrent approvals: several people pressing the same button at the same moment.

and the actions: a prod deploy approved by the last needed click (deploy script runs counted), a
"Silence 1h" click (silences in Alertmanager's own API counted), a ticket from an alert card's
"Create ticket" or from a :bug: reaction (plan_items rows counted), and a plan item made by an
@-mention (cards in the channel counted). After each trial exactly one side effect must exist.

With OPSLOOP_RESULTS=1 the counts go to bench/results/duplicates.md.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest

from bot.app import build_slack
from bot.outbox import Pacing
from bot.slack import TimedSocketModeHandler
from bot.store import rows
from tests.emulators.slack import SlackEmulator
from tests.reliability.hooks import HOOK_TOKEN, notification, notify
from tests.servers import ALERTMANAGER, alertmanager, need_binary
from tests.support import (
    ALICE,
    BOB,
    CAROL,
    DAVE,
    SlackHarness,
    click,
    find_button,
    make_config,
    make_env,
    slack_workspace,
    wait_until,
)

pytestmark = pytest.mark.slow

TRIALS = int(os.environ.get("OPSLOOP_TRIALS", "100"))
SEED = int(os.environ.get("OPSLOOP_SEED", "20261126"))
RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "duplicates.md"
WRITE_RESULTS = os.environ.get("OPSLOOP_RESULTS") == "1"  # read now: each test's environment is cleaned
VERSIONS = ("1.1.0", "1.2.0", "1.3.0")
SRE = [f"U0SRE{i}" for i in range(4)]  # extra approvers (through @sre) for concurrent clicks

ACTIONS = ("deploy", "silence", "silence form", "alert ticket", "reaction ticket", "post")
MODES = ("double click", "slack retry", "socket redelivery", "concurrent")


# --- the setup ------------------------------------------------------------------------------------------


def deploy_script(directory: Path) -> Path:
    """Appends `service version env` to deploys.log per run: the count of real deploys."""
    script = directory / "deploy.sh"
    script.write_text(f'#!/bin/sh\necho "$1 $2 $3" >> "{directory / "deploys.log"}"\necho "$2 is live in $3"\n')
    script.chmod(0o755)
    (directory / "versions").mkdir()
    (directory / "versions" / "shop-prod").write_text("1.1.0\n")
    return script


def config(tmp: Path, am_url: str) -> dict[str, Any]:
    script = deploy_script(tmp)
    return {
        "roles": {
            "admins": [ALICE],
            "approvers": [CAROL, DAVE, "@sre"],
            "deployers": [BOB, ALICE],
            "developers": [ALICE, BOB, CAROL, DAVE, *SRE],
        },
        "permissions": {"plan.*": ["developers"], "deploy.*": ["deployers"], "feedback.*": ["everyone"]},
        "services": {
            "shop": {
                "deploy": {"target": "command", "command": [str(script), "{service}", "{version}", "{env}"]},
            }
        },
        "environments": {
            "staging": {},
            "prod": {"approvals": {"required": 2, "from": "approvers", "expire_after": "30m"}, "bake": {"minutes": 0}},
        },
        "integrations": {
            "command": {"version_file": str(tmp / "versions" / "{service}-{env}")},
            "alertmanager": {"url": am_url, "timeout": "5s"},
        },
        "feedback": {"reactions": {"bug": "ticket"}},
        # Each trial makes a new alert group on purpose: that is not a storm to fold into a digest.
        "alerts": {"storm": {"groups_per_minute": 100_000}},
    }


@dataclass
class Bench:
    """opsloop over HTTP and Socket Mode, the emulator, Alertmanager, and what was counted."""

    h: SlackHarness
    emu: SlackEmulator
    am_url: str
    tmp: Path
    rng: random.Random
    deliveries: Counter[tuple[str, str]] = field(default_factory=Counter)
    trials: Counter[tuple[str, str]] = field(default_factory=Counter)
    effects: Counter[tuple[str, str]] = field(default_factory=Counter)
    n: int = 0

    @property
    def url(self) -> str:
        return self.h.url

    async def settle(self) -> None:
        await self.h.settle()

    def deploy_runs(self) -> list[str]:
        log = self.tmp / "deploys.log"
        return log.read_text().splitlines() if log.exists() else []

    async def plan_items(self, title: str) -> list[dict[str, Any]]:
        return await self.h.services.store.read(
            lambda db: rows(db, "SELECT * FROM plan_items WHERE title = ?", (title,))
        )

    async def silences(self, alertname: str) -> list[dict[str, Any]]:
        async with aiohttp.ClientSession() as s, s.get(f"{self.am_url}/api/v2/silences") as r:
            found = await r.json()
        return [
            x
            for x in found
            if x["status"]["state"] == "active"
            and {"name": "alertname", "value": alertname, "isRegex": False, "isEqual": True} in x["matchers"]
        ]


@pytest.fixture
async def bench(tmp_path: Path) -> AsyncIterator[Bench]:
    need_binary(ALERTMANAGER)
    async with (
        # Rate limits off: pacing is figure 4's subject; here it would only make 1,000 trials slow.
        SlackEmulator(enforce_rate_limits=False) as emu,
        alertmanager(tmp_path, "http://127.0.0.1:9/unused") as am,
    ):
        slack_workspace(emu)
        for uid in SRE:
            emu.add_user(uid, uid.lower())
        emu.set_usergroup_users("S0SRE", [CAROL, *SRE])
        cfg = make_config(tmp_path / "opsloop.db", **config(tmp_path, am.url))
        env = make_env(
            tmp_path,
            SLACK_BOT_TOKEN=emu.bot_token,
            SLACK_APP_TOKEN=emu.app_token,
            SLACK_SIGNING_SECRET=emu.signing_secret,
            SLACK_API_URL=emu.api_url,
            OPSLOOP_WEBHOOK_TOKEN=HOOK_TOKEN,
        )
        ops, bolt, frontend = await build_slack(cfg, env, pacing=Pacing.unpaced())
        await ops.start()
        port = await ops.serve_http("127.0.0.1", 0, bolt=bolt)
        assert env.app_token is not None
        socket = TimedSocketModeHandler(bolt, env.app_token, ops.services.metrics)
        await socket.connect_async()
        await emu.wait_socket_connected()
        h = SlackHarness(ops, frontend, emu, f"http://127.0.0.1:{port}/slack/events")
        b = Bench(h, emu, am.url, tmp_path, random.Random(SEED))
        try:
            yield b
        finally:
            await socket.close_async()
            await frontend.wait_late()
            await ops.stop()
            write_figure(b)


# --- ways of delivering one thing more than once ----------------------------------------------------------


async def redeliver_envelope(emu: SlackEmulator, envelope_type: str, payload: dict[str, Any], times: int) -> None:
    """Push one envelope, then the very same envelope (same envelope_id) again before its ack."""
    first = asyncio.ensure_future(emu.socket_send(envelope_type, payload))
    await wait_until(lambda: any(e["payload"] is payload for e in emu.socket_envelopes), 5, "the first envelope")
    envelope = next(e for e in emu.socket_envelopes if e["payload"] is payload)
    # The emulator has no public "redeliver": write the recorded envelope to the live socket as Slack would.
    live = [ws for ws in emu._sockets if not ws.closed]
    for _ in range(times - 1):
        await live[0].send_json(envelope)
    await first


async def click_many(b: Bench, mode: str, channel: str, ts: str, label: str, users: list[str]) -> int:
    """Press `label` on the message as `users[0]` (or, concurrent, as all of `users`) in `mode`;
    returns how many deliveries reached opsloop."""
    el = find_button(b.emu.message(channel, ts).blocks, label)

    def payload(u: str) -> dict[str, Any]:
        return b.emu.action_payload(
            user_id=u, action_id=el["action_id"], value=el.get("value", ""), channel_id=channel, message_ts=ts
        )

    return await interact_many(b, mode, payload, users)


async def interact_many(b: Bench, mode: str, payload: Callable[[str], dict[str, Any]], users: list[str]) -> int:
    """Deliver an interaction (a click, a form's submit) of `users[0]` (or, concurrent, of all of `users`)
    more than once, in `mode`; returns how many deliveries reached opsloop."""
    user = users[0]
    sends: list[Awaitable[Any]]
    if mode == "double click":
        k = b.rng.randint(2, 3)
        sends = [b.emu.send(b.url, urlencode({"payload": json.dumps(payload(user))})) for _ in range(k)]
    elif mode == "slack retry":
        body = urlencode({"payload": json.dumps(payload(user))})
        retries = b.rng.randint(1, 3)
        sends = [b.emu.send(b.url, body)] + [
            b.emu.send(b.url, body, headers={"X-Slack-Retry-Num": str(n), "X-Slack-Retry-Reason": "http_timeout"})
            for n in range(1, retries + 1)
        ]
    elif mode == "socket redelivery":
        k = b.rng.randint(2, 3)
        sends = [redeliver_envelope(b.emu, "interactive", payload(user), k)]
        await asyncio.gather(*sends)
        return k
    else:  # concurrent: everyone at once, some twice
        sends = [
            b.emu.send(b.url, urlencode({"payload": json.dumps(payload(u))}))
            for u in users + b.rng.sample(users, k=b.rng.randint(0, len(users)))
        ]
    results = await asyncio.gather(*sends)
    assert all(r.status == 200 for r in results), [(r.status, r.body_text) for r in results]
    return len(sends)


async def event_many(b: Bench, mode: str, event: dict[str, Any]) -> int:
    """Deliver one event (one event_id) several times: HTTP retries, socket redeliveries, or both at once."""
    envelope = b.emu.event_envelope(event, event_id=f"Ev{b.rng.getrandbits(48):012X}")
    body = json.dumps(envelope)
    retries = b.rng.randint(1, 3)

    def http() -> list[Awaitable[Any]]:
        retried = [
            b.emu.send(b.url, body, headers={"X-Slack-Retry-Num": str(n), "X-Slack-Retry-Reason": "http_timeout"})
            for n in range(1, retries + 1)
        ]
        return [b.emu.send(b.url, body), *retried]

    if mode == "slack retry":
        sends = http()
    elif mode == "socket redelivery":
        sends = [redeliver_envelope(b.emu, "events_api", envelope, retries + 1)]
    else:  # the same event over both transports, and retried, at once
        sends = [*http(), redeliver_envelope(b.emu, "events_api", envelope, 2)]
    await asyncio.gather(*sends)
    return retries + 1 + (2 if mode not in ("slack retry", "socket redelivery") else 0)


# --- the actions ----------------------------------------------------------------------------------------


async def trial_deploy(b: Bench, mode: str) -> tuple[int, int]:
    running = (b.tmp / "versions" / "shop-prod").read_text().strip()
    version = b.rng.choice([v for v in VERSIONS if v != running])
    before = len(b.deploy_runs())
    res = await b.emu.send_command(b.url, f"deploy shop {version} to prod", user_id=BOB)
    assert res.status == 200
    await b.settle()
    card = [m for m in b.emu.top_level("C0APR") if m.text.startswith(f"Deploy shop {version}")][-1]
    if mode == "concurrent":  # both needed approvals, and more, at the same moment
        sent = await click_many(b, mode, "C0APR", card.ts, "Approve", [CAROL, DAVE, *SRE[: b.rng.randint(0, 4)]])
    else:
        await click_many(b, "double click", "C0APR", card.ts, "Approve", [CAROL])
        await b.settle()
        sent = await click_many(b, mode, "C0APR", card.ts, "Approve", [b.rng.choice([DAVE, *SRE])])
    await b.settle()
    await wait_until(lambda: "✅ done" in b.emu.message("C0APR", card.ts).text, 20, f"deploy of {version} to finish")
    return sent, b.deploy_runs()[before:].count(f"shop {version} prod")


async def alert_card(b: Bench, name: str) -> Any:
    hooks = b.url.replace("/slack/events", "/hooks")
    status = await notify(hooks, notification(name, "shop", external_url=b.am_url))
    assert status in (200, 202)
    await b.settle()
    found = [m for m in b.emu.top_level("C0OPS") if name in m.text]
    assert len(found) == 1, (name, [m.text for m in b.emu.top_level("C0OPS")][-5:])
    card = found[0]
    return card


async def trial_silence(b: Bench, mode: str) -> tuple[int, int]:
    name = f"DupSilence{b.n}"
    card = await alert_card(b, name)
    sent = await click_many(b, mode, "C0OPS", card.ts, "Silence 1h", [ALICE, BOB, CAROL])
    await b.settle()
    return sent, len(await b.silences(name))


async def trial_silence_form(b: Bench, mode: str) -> tuple[int, int]:
    name = f"DupSilenceForm{b.n}"
    card = await alert_card(b, name)
    await click(b.h, "C0OPS", card.ts, "Silence…", ALICE)  # opens the form
    [view] = [vw for vw in b.emu.views.values() if vw.get("callback_id") == "alert.silence_submit" and name in str(vw)]
    values = {
        "matchers": {"matchers": {"type": "plain_text_input", "value": f'alertname="{name}"'}},
        "duration": {"duration": {"type": "plain_text_input", "value": "2h"}},
        "reason": {"reason": {"type": "plain_text_input", "value": "a known blip"}},
    }

    def payload(u: str) -> dict[str, Any]:
        return b.emu.view_submission_payload(
            user_id=u,
            view_id=view["id"],
            callback_id="alert.silence_submit",
            values=values,
            private_metadata=view["private_metadata"],
        )

    sent = await interact_many(b, mode, payload, [ALICE, BOB, CAROL])
    await b.settle()
    return sent, len(await b.silences(name))


async def trial_alert_ticket(b: Bench, mode: str) -> tuple[int, int]:
    name = f"DupTicket{b.n}"
    card = await alert_card(b, name)
    sent = await click_many(b, mode, "C0OPS", card.ts, "Create ticket", [ALICE, BOB, CAROL])
    await b.settle()
    return sent, len(await b.plan_items(f"Alert: {name}"))


async def trial_reaction_ticket(b: Bench, mode: str) -> tuple[int, int]:
    text = f"Checkout breaks on step {b.n}"
    msg = b.emu.add_user_message("C0OPS", text, user_id=DAVE)
    event = {
        "type": "reaction_added",
        "user": ALICE,
        "reaction": "bug",
        "item": {"type": "message", "channel": "C0OPS", "ts": msg.ts},
        "item_user": DAVE,
        "event_ts": msg.ts,
    }
    sent = await event_many(b, mode, event)
    await b.settle()
    items = await b.h.services.store.read(
        lambda db: rows(db, "SELECT * FROM plan_items WHERE title LIKE ?", (f"%step {b.n}%",))
    )
    filed = [m for m in b.emu.replies("C0OPS", msg.ts) if "Filed as plan item" in m.text]
    assert len(filed) == len(items), [m.text for m in b.emu.replies("C0OPS", msg.ts)]  # one answer per ticket
    return sent, len(items)


async def trial_post(b: Bench, mode: str) -> tuple[int, int]:
    title = f"Mention item {b.n}"
    event = b.emu.app_mention_event(f'<@{b.emu.bot_user_id}> plan new "{title}"', user_id=ALICE, channel_id="C0OPS")
    sent = await event_many(b, mode, event)
    await b.settle()
    cards = [m for m in b.emu.top_level("C0OPS") if m.text.endswith(f": {title}")]
    return sent, max(len(await b.plan_items(title)), len(cards))


TRIAL: dict[str, Callable[[Bench, str], Awaitable[tuple[int, int]]]] = {
    "deploy": trial_deploy,
    "silence": trial_silence,
    "silence form": trial_silence_form,
    "alert ticket": trial_alert_ticket,
    "reaction ticket": trial_reaction_ticket,
    "post": trial_post,
}
# Events have no clicks: their "double click" is the same event over both transports at once.
EVENT_ACTIONS = ("reaction ticket", "post")


async def test_randomized_duplicate_deliveries_cause_no_duplicate_side_effects(bench: Bench) -> None:
    b = bench
    wrong: list[tuple[int, str, str, int]] = []
    for i in range(TRIALS):
        b.n = i
        action = b.rng.choice(ACTIONS)
        mode = b.rng.choice(MODES)
        label = "both transports" if action in EVENT_ACTIONS and mode in ("double click", "concurrent") else mode
        sent, observed = await TRIAL[action](b, mode)
        b.deliveries[(action, label)] += sent
        b.trials[(action, label)] += 1
        b.effects[(action, label)] += observed
        if observed != 1:
            wrong.append((i, action, label, observed))
    assert wrong == [], f"trials (number, action, duplicated by, side effects) without exactly one effect: {wrong}"
    assert len(b.deploy_runs()) == sum(n for (action, _), n in b.trials.items() if action == "deploy")


def write_figure(b: Bench) -> None:
    if not WRITE_RESULTS or not b.trials:
        return
    load = os.getloadavg()
    lines = [
        "# Duplicate deliveries (issue 7, figure 2)",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} CPUs, "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}. Seed {SEED}, {sum(b.trials.values())} trials. "
        f"Reproduce: `OPSLOOP_RESULTS=1 OPSLOOP_TRIALS={TRIALS} .venv/bin/python -m pytest "
        "tests/reliability/test_duplicates.py`.",
        "",
        "| action | duplicated by | trials | deliveries | side effects | duplicated |",
        "|---|---|---|---|---|---|",
    ]
    for key in sorted(b.trials):
        lines.append(
            f"| {key[0]} | {key[1]} | {b.trials[key]} | {b.deliveries[key]} | {b.effects[key]} | "
            f"{b.effects[key] - b.trials[key]} |"
        )
    t, d, e = sum(b.trials.values()), sum(b.deliveries.values()), sum(b.effects.values())
    lines += [f"| **all** | | {t} | {d} | {e} | {e - t} |", ""]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines))
