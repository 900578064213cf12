"""Storm digests in pages: every alert visible in the digest's thread, every page within Block Kit's limits,
every group's buttons working from its page."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bot import rendering
from bot.alerts import (
    PAGE_CHARS,
    PAGE_GROUPS,
    SECTION_CHARS,
    Group,
    Offer,
    StoredAlert,
    digest_page,
    overflow_messages,
)
from bot.ports import Alert, AlertBatch, AlertStatus, Severity
from tests.emulators.slack import SlackEmulator
from tests.support import ALICE, slack_ops, slack_workspace

TOKEN = re.compile(r"\[a(\d+)\]")
# bolt-js#2509: Slack answers msg_blocks_too_long at about 13.2k characters of block text.
BLOCK_CHARS_CEILING = 13_200


def visible_text(blocks: list[dict[str, Any]]) -> str:
    """What a reader sees of a message's blocks: text objects and button labels, not values or ids."""
    out: list[str] = []

    def walk(node: Any, key: str = "") -> None:
        if isinstance(node, dict):
            if node.get("type") in ("mrkdwn", "plain_text") and isinstance(node.get("text"), str):
                out.append(node["text"])
                return
            for k, val in node.items():
                if k not in ("value", "action_id", "url", "block_id"):
                    walk(val, k)
        elif isinstance(node, list):
            for x in node:
                walk(x, key)

    walk(blocks)
    return "\n".join(out)


def stored(i: int, group: int, summary_len: int = 40) -> StoredAlert:
    summary = f"disk full [a{i:04d}] " + "x" * max(0, summary_len - 20)
    return StoredAlert(
        id=i,
        source="alertmanager",
        fingerprint=f"f{i}",
        status="firing" if i % 3 else "resolved",
        name=f"Disk{group}",
        severity="critical",
        labels={"alertname": f"Disk{group}", "instance": f"node-{i:05d}:9100", "job": "node"},
        annotations={"summary": summary},
        summary=summary,
        value=None,
        links=[],
        generator_url="http://prom:9090/graph?g0.expr=up&g0.tab=1",
        starts_at=None,
        ends_at=None,
    )


def group(gid: int, *, firing: bool = True) -> Group:
    return Group(
        id=gid,
        key=f"am:{gid}",
        source="alertmanager",
        title=f"Disk{gid} (prod)",
        channel="#alerts",
        status="firing" if firing else "resolved",
        severity="critical",
        service="api",
        env="prod",
        labels={"alertname": f"Disk{gid}"},
        shown=True,
        digest_id=1,
        first_seen=0.0,
        last_change=0.0,
        resolved_at=None,
        silence_id=None,
        silenced_by=None,
        silence_until=None,
        acked_by="U0ALICE",
        snoozed_until=None,
        ticket="OPS-1",
        release=None,
        truncated=0,
    )


def check_limits(payload: dict[str, Any]) -> None:
    blocks = payload["blocks"]
    assert len(blocks) <= rendering.MAX_MESSAGE_BLOCKS
    assert len(visible_text(blocks)) < BLOCK_CHARS_CEILING
    for b in blocks:
        if b["type"] == "section":
            assert len(b["text"]["text"]) <= 3000 and "more characters)" not in b["text"]["text"]  # never clipped


@pytest.mark.parametrize(("per_group", "summary_len"), [(1, 40), (10, 40), (40, 120), (300, 120)])
def test_pages_and_overflow_show_every_alert_within_block_kit_limits(per_group: int, summary_len: int) -> None:
    groups = [(group(g), [stored(g * 1000 + k, g, summary_len) for k in range(per_group)]) for g in range(PAGE_GROUPS)]
    msg, overflow = digest_page(2, groups, now=0.0, offer=Offer())
    page = rendering.message(msg)
    check_limits(page)
    seen = set(TOKEN.findall(visible_text(page["blocks"])))
    continued = overflow_messages([g for g, _ in groups], overflow, 2)
    for more in continued:
        body = rendering.message(more)
        check_limits(body)
        seen |= set(TOKEN.findall(visible_text(body["blocks"])))
    # Continuations are filled up to the page budget (less at most one section each), not one per group.
    chars = sum(len(line) + 1 for lines in overflow.values() for line in lines)
    assert len(continued) <= 1 + chars // (PAGE_CHARS - SECTION_CHARS)
    assert seen == {f"{a.id:04d}" for _, alerts in groups for a in alerts}
    assert bool(overflow) == (per_group >= 40)  # small groups fit on their page
    text = visible_text(page["blocks"])
    assert "Storm page 3: groups 21–30" in text and text.count("Acknowledge") == 0  # acked by U0ALICE
    assert text.count("Silence 1h") == PAGE_GROUPS and "👀 <@U0ALICE>" in text and "🎫 OPS-1" in text


def am_alert(i: int, g: int, status: AlertStatus = AlertStatus.FIRING) -> Alert:
    name = f"Storm{g:02d}"
    return Alert(
        source="alertmanager",
        fingerprint=f"fp{i}",
        status=status,
        name=name,
        severity=Severity.WARNING,
        group_key=f'{{}}:{{alertname="{name}"}}',
        labels=(("alertname", name), ("instance", f"node-{i:04d}")),
        annotations=(("summary", f"storm alert [a{i:04d}]"),) + ((("runbook_url", RUNBOOK),) if i == 15000 else ()),
        summary=f"storm alert [a{i:04d}] on node-{i:04d}",
        starts_at=datetime(2026, 1, 1, tzinfo=UTC),
        generator_url="http://prometheus:9090/graph?g0.expr=up%3D%3D0" if i == 15001 else None,
    )


RUNBOOK = "https://runbooks.example/storm15"  # on group 16, the 16th made (g=15)


def am_batch(alerts: list[Alert]) -> AlertBatch:
    return AlertBatch("alertmanager", tuple(alerts), group_labels=(("alertname", alerts[0].name),))


@pytest.fixture
async def emu():
    async with SlackEmulator(post_burst=1000, post_rate_per_channel=1000) as e:
        slack_workspace(e)
        e.add_channel("C0ALERTS", "alerts")
        yield e


async def test_a_storm_shows_every_alert_in_its_thread_and_a_page_button_acts_on_its_group(
    tmp_path: Path, emu: SlackEmulator
) -> None:
    config = {
        "channels": {"default": "#ops", "alerts": "#alerts"},
        "alerts": {"storm": {"groups_per_minute": 3}},
        # Graph buttons are offered only where a Prometheus can draw them; this one is never asked here.
        "integrations": {"prometheus": {"url": "http://127.0.0.1:9"}},
    }
    async with slack_ops(tmp_path, emu, **config) as h:
        pipe = h.services.alerts
        groups = 24
        sizes = {g: 120 if g == 7 else 1 + g % 4 for g in range(groups)}  # one big group overflows its page
        ids = {g: [g * 1000 + k for k in range(n)] for g, n in sizes.items()}
        for g in range(groups):
            await pipe.ingest(am_batch([am_alert(i, g) for i in ids[g]]))
        await h.settle()

        def visible() -> set[int]:
            found: set[int] = set()
            for m in emu.top_level("C0ALERTS"):
                for x in [m, *emu.replies("C0ALERTS", m.ts)]:
                    found |= {int(t) for t in TOKEN.findall(visible_text(x.blocks))}
            return found

        everything = {i for g in ids.values() for i in g}
        assert visible() == everything
        [digest] = [m for m in emu.top_level("C0ALERTS") if m.text.startswith("🌩️")]
        thread = emu.replies("C0ALERTS", digest.ts)
        pages = [m for m in thread if m.text.startswith("Storm page") and "continued" not in m.text]
        assert len(pages) == 3 and len(thread) == 4  # 21 groups in the digest; group 7's overflow follows
        for m in thread:
            check_limits({"blocks": m.blocks})

        # The Acknowledge button of one group on a page acknowledges that group and no other.
        page = pages[1]
        [ack] = [
            el
            for b in page.blocks
            if b["type"] == "actions"
            for el in b["elements"]
            if el["text"]["text"] == "Acknowledge" and json.loads(el["value"])["group"] == 16
        ]
        assert ack["action_id"].startswith("alert.ack~")  # repeated on the page, made unique
        # A page reads only some columns of its alerts, the runbook and the query among them: group 16 has
        # both (on two of its alerts), so its buttons are Runbook and Graph too; its neighbours have neither.
        labels = {
            json.loads(el["value"])["group"]: [e["text"]["text"] for e in b["elements"]]
            for b in page.blocks
            if b["type"] == "actions"
            for el in b["elements"][:1]
        }
        assert "Runbook" in labels[16] and "Graph" in labels[16]
        assert not {"Runbook", "Graph"} & {t for g, texts in labels.items() if g != 16 for t in texts}
        [runbook] = [el for b in page.blocks if b["type"] == "actions" for el in b["elements"] if el.get("url")]
        assert runbook["url"] == RUNBOOK
        await emu.send_action(
            h.url, user_id=ALICE, action_id=ack["action_id"], value=ack["value"], channel_id="C0ALERTS",
            message_ts=page.ts,
        )  # fmt: skip
        await h.settle()
        acked = await pipe.get(16)
        assert acked is not None and acked.acked_by == ALICE
        text = visible_text(emu.message("C0ALERTS", page.ts).blocks)
        assert text.count("👀") == 1 and "group `16` · 👀" in text

        # Resolved: the same pages, edited, still show every alert.
        for g in range(groups):
            await pipe.ingest(am_batch([am_alert(i, g, AlertStatus.RESOLVED) for i in ids[g]]))
        await h.settle()
        assert visible() == everything
        assert [m.ts for m in emu.replies("C0ALERTS", digest.ts)] == [m.ts for m in thread]
        assert all("FIRING" not in visible_text(m.blocks) for m in pages)


async def test_a_delivery_of_many_alerts_is_one_thread_message_and_its_card_lists_them_all(
    tmp_path: Path, emu: SlackEmulator
) -> None:
    async with slack_ops(tmp_path, emu, channels={"default": "#ops", "alerts": "#alerts"}) as h:
        await h.services.alerts.ingest(am_batch([am_alert(i, 1) for i in range(12)]))
        await h.services.alerts.ingest(am_batch([am_alert(i, 1) for i in range(12)]))  # a repeat: no post
        await h.services.alerts.ingest(am_batch([am_alert(i, 1) for i in range(14)]))
        await h.settle()
        [card] = emu.top_level("C0ALERTS")
        assert set(TOKEN.findall(visible_text(card.blocks))) == {f"{i:04d}" for i in range(14)}
        first, second = emu.replies("C0ALERTS", card.ts)
        assert len(first.blocks) == 12 and set(TOKEN.findall(visible_text(first.blocks))) == {
            f"{i:04d}" for i in range(12)
        }
        assert set(TOKEN.findall(visible_text(second.blocks))) == {"0012", "0013"}


def test_telling_labels_are_those_whose_values_differ_between_alerts() -> None:
    # The names whose value (or absence) is not the same in every alert of the group: checked against
    # that definition on random groups, absent labels included.
    import random

    from bot.alerts import telling_labels

    rng = random.Random(3)
    for _ in range(300):
        alerts = []
        for i in range(rng.randint(2, 6)):
            labels = {k: rng.choice(["a", "b"]) for k in ("env", "instance", "job", "team") if rng.random() < 0.8}
            alerts.append(
                StoredAlert(i, "am", f"f{i}", "firing", "Disk", "info", labels, {}, "", None, [], None, None, None)
            )
        names = {k for a in alerts for k in a.labels}
        expected = sorted(k for k in names if len({a.labels.get(k) for a in alerts}) > 1)
        assert telling_labels(alerts, {}) == expected
    one = [stored(1, 1)]
    assert telling_labels(one, {"alertname": "Disk1"}) == ["instance", "job"]
