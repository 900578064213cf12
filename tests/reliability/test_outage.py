"""Issue 7, figure 4: Slack answers 429, 500 and nothing at all for a while; afterwards every write
opsloop meant is in Slack exactly once, and in order within each thread.

opsloop (in this process, HTTP mode, Slack's real pacing) serves the Slack emulator while people keep
working: slash commands making plan cards, @-mentions answered in a few threads, alerts firing and
resolving (cards edited in place, notes in their threads). For `OPSLOOP_OUTAGE` seconds (5 in
`make test`, 60 in the soak run) every Web API method answers, in turns of 0.3 to 1.5 s, HTTP 429 with
`Retry-After`, HTTP 500, or only after the client's timeout (half of these carried out anyway, the way
a request Slack processed but answered too late is). The Web API client's timeout is cut from 10 s to
2 s so that the window holds many timeouts.

Checked against opsloop's own outbox (every post carries its row's marker in the message metadata):
no write failed or is left pending, each post is in Slack once, each thread's replies (and each
channel's top-level posts) appear in the order opsloop wrote them, and each edited card ends as its
last edit. With OPSLOOP_RESULTS=1 the counts go to bench/results/outage.md.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bot.outbox import Pacing
from bot.store import rows
from tests.emulators.slack import SlackEmulator
from tests.reliability.hooks import notification, notify
from tests.support import ALICE, DAVE, SlackHarness, slack_ops, slack_workspace

pytestmark = pytest.mark.slow

OUTAGE_S = float(os.environ.get("OPSLOOP_OUTAGE", "5"))
SEED = int(os.environ.get("OPSLOOP_SEED", "20261126"))
WRITE_RESULTS = os.environ.get("OPSLOOP_RESULTS") == "1"  # read now: each test's environment is cleaned
RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "outage.md"
CLIENT_TIMEOUT_S = 2
FAULTS = ("429", "500", "timeout", "timeout (carried out)")


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[SlackHarness]:
    async with SlackEmulator() as emu:
        slack_workspace(emu)
        cfg = {"alerts": {"storm": {"groups_per_minute": 1000}}}
        async with slack_ops(tmp_path, emu, pacing=Pacing(), **cfg) as harness:
            harness.frontend.client.timeout = CLIENT_TIMEOUT_S
            yield harness


async def faults(emu: SlackEmulator, seconds: float, rng: random.Random, seen: Counter[str]) -> None:
    """Turns of 429, 500 and timeouts on every Web API method for `seconds`."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        turn = min(left, rng.uniform(0.3, 1.5))
        kind = rng.choice(FAULTS)
        seen[kind] += 1
        if kind == "429":
            emu.fail_for("*", turn, status=429, retry_after=1)
        elif kind == "500":
            emu.fail_for("*", turn, status=500)
        else:
            emu.slow("*", CLIENT_TIMEOUT_S + 0.5, process_first=kind == "timeout (carried out)")
        await asyncio.sleep(turn)
        emu.clear_faults()


async def alert(h: SlackHarness, name: str, status: str) -> None:
    assert await notify(h.url.replace("/slack/events", "/hooks"), notification(name, "api", status)) in (200, 202)


async def activity(h: SlackHarness, seconds: float, rng: random.Random, did: Counter[str]) -> None:
    """People and tools carrying on: commands, mentions in threads, alerts firing and resolving."""
    threads = [h.emu.add_user_message("C0OPS", f"Thread {i}: is api slow?", user_id=DAVE).ts for i in range(3)]
    firing: set[str] = set()
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
        what = rng.choice(("command", "mention", "alert"))
        did[what] += 1
        if what == "command":
            channel = rng.choice(("C0OPS", "C0APR", "C0FB"))
            res = await h.emu.send_command(h.url, f'plan new "Outage item {n}"', user_id=ALICE, channel_id=channel)
            assert res.status == 200
        elif what == "mention":
            thread = rng.choice(threads)
            res = await h.emu.send_app_mention(
                h.url, f"<@{h.emu.bot_user_id}> plan show OPS-1", user_id=ALICE, thread_ts=thread
            )
            assert res.status == 200
        else:
            name = f"Outage{rng.randint(1, 4)}"
            status = "resolved" if name in firing and rng.random() < 0.5 else "firing"
            (firing.discard if status == "resolved" else firing.add)(name)
            await alert(h, name, status)
        # About one thing a second: more than Slack lets a bot post per channel would never drain.
        await asyncio.sleep(rng.uniform(0.3, 1.2))


async def test_a_slack_outage_delays_writes_but_each_arrives_once_and_in_order(h: SlackHarness) -> None:
    rng = random.Random(SEED)
    did: Counter[str] = Counter()
    seen: Counter[str] = Counter()
    await h.command('plan new "Before the outage"')  # OPS-1, which the mentions ask about
    started = time.monotonic()
    await asyncio.gather(faults(h.emu, OUTAGE_S, rng, seen), activity(h, OUTAGE_S, rng, did))
    h.emu.clear_faults()
    ended = time.monotonic()
    await h.frontend.wait_late()
    await h.services.jobs.wait_idle()
    # After a long outage the backoff (up to a minute) and Slack's pace (a post a second per channel)
    # both stand between the end of the outage and an empty outbox.
    assert await h.services.outbox.drain(timeout=120 + 2 * OUTAGE_S), "the outbox did not drain"
    drained = time.monotonic() - ended

    outbox = await h.services.store.read(lambda db: rows(db, "SELECT * FROM outbox ORDER BY id"))
    assert [r for r in outbox if r["state"] != "sent"] == [], "writes not delivered"
    posts = [r for r in outbox if r["op"] == "post"]
    marker = {(r["dedupe_key"] or f"ob-{r['id']}"): r for r in posts}
    bot_messages = [m for ch in ("C0OPS", "C0APR", "C0FB") for m in h.emu.messages(ch) if m.bot_id]
    by_marker = Counter(((m.metadata or {}).get("event_payload") or {}).get("id") for m in bot_messages)
    assert None not in by_marker, "a message in Slack opsloop did not write through its outbox"
    assert {k: n for k, n in by_marker.items() if n != 1} == {}, "posted more than once"
    assert set(by_marker) == set(marker), "posts missing from Slack"

    # Order: within each thread Slack's order is opsloop's, and so at the top of each channel for the
    # writes of one outbox stream (the outbox keeps order per stream; unrelated cards may overtake).
    streams: dict[tuple[str, str | None], list[int]] = {}
    for m in sorted(bot_messages, key=lambda m: float(m.ts)):
        row = marker[(m.metadata or {})["event_payload"]["id"]]
        stream = m.channel if m.thread_ts else row["channel"]
        streams.setdefault((stream, m.thread_ts), []).append(row["id"])
    disordered = {k: ids for k, ids in streams.items() if ids != sorted(ids)}
    assert disordered == {}, "out of order"

    # Each edited card ends as the last edit opsloop made of it.
    refs = await h.services.store.read(lambda db: rows(db, "SELECT * FROM message_refs"))
    last: dict[str, dict[str, Any]] = {}
    for r in outbox:
        if r["ref_key"] and r["op"] in ("post", "update"):
            last[r["ref_key"]] = json.loads(r["payload"])
    stale = [
        ref["key"]
        for ref in refs
        if ref["key"] in last and h.emu.message(ref["channel"], ref["ts"]).text != last[ref["key"]].get("text")
    ]
    assert stale == [], "cards not showing their last edit"

    calls = Counter(c.status for c in h.emu.calls)
    if WRITE_RESULTS:
        load = os.getloadavg()
        threads = [k for k in streams if k[1] is not None]
        turns = ", ".join(f"{k}: {v}" for k, v in sorted(seen.items()))
        lines = [
            "# Slack outage (issue 7, figure 4)",
            "",
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} CPUs, "
            f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}. Seed {SEED}. Reproduce: "
            f"`OPSLOOP_RESULTS=1 OPSLOOP_OUTAGE={OUTAGE_S:g} .venv/bin/python -m pytest "
            "tests/reliability/test_outage.py`.",
            "",
            f"Outage window: {OUTAGE_S:g} s of fault turns ({turns}); "
            f"meanwhile {did['command']} commands, {did['mention']} mentions in threads, {did['alert']} alert "
            f"notifications. Slack answered {calls.get(429, 0)} × 429, {calls.get(500, 0)} × 500 and "
            f"{sum(n for s, n in calls.items() if s == 200)} × 200 over {len(h.emu.calls)} Web API calls.",
            "",
            "| checked | count |",
            "|---|---|",
            f"| writes in the outbox (posts, edits, ephemerals, ...) | {len(outbox)} |",
            f"| posts | {len(posts)} |",
            f"| posts in Slack exactly once | {sum(1 for n in by_marker.values() if n == 1)} |",
            f"| posts twice or more | {sum(1 for n in by_marker.values() if n > 1)} |",
            f"| threads / channels checked for order | {len(threads)} / {len(streams) - len(threads)} |",
            f"| out of order | {len(disordered)} |",
            f"| cards not showing their last edit | {len(stale)} |",
            "",
            f"From the end of the outage to an empty outbox: {drained:.1f} s; "
            f"whole run {ended - started + drained:.1f} s (figures, not bars).",
            "",
        ]
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text("\n".join(lines))
    assert sum(seen.values()) > 0 and calls.get(200, 0) > 0
