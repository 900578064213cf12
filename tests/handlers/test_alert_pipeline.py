"""The alert pipeline into the Slack emulator: one card per group, edited in place; noise control; storms."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bot.ports import Alert, AlertBatch, AlertStatus, Severity
from bot.store import rows
from tests.emulators.slack import SlackEmulator
from tests.support import ALICE, BOB, SlackHarness, click, find_button, press, slack_ops, slack_workspace


@pytest.fixture
async def emu():
    async with SlackEmulator(post_burst=1000, post_rate_per_channel=1000) as e:
        slack_workspace(e)
        e.add_channel("C0ALERTS", "alerts")
        e.add_channel("C0API", "team-api")
        yield e


def alert(
    name: str,
    fp: str,
    status: AlertStatus = AlertStatus.FIRING,
    *,
    group: str | None = None,
    severity: Severity = Severity.CRITICAL,
    **labels: str,
) -> Alert:
    labels = {"alertname": name, **labels}
    return Alert(
        source="alertmanager",
        fingerprint=fp,
        status=status,
        name=name,
        severity=severity,
        group_key=group or f'{{}}:{{alertname="{name}"}}',
        labels=tuple(sorted(labels.items())),
        annotations=(("summary", f"{name} on {fp}"),),
        starts_at=datetime(2026, 1, 1, tzinfo=UTC),
        generator_url="http://prom:9090/graph?g0.expr=up%3D%3D0&g0.tab=1",
    )


def batch(*alerts: Alert) -> AlertBatch:
    return AlertBatch("alertmanager", tuple(alerts), group_labels=(("alertname", alerts[0].name),))


CONFIG: dict[str, Any] = {
    "channels": {"default": "#ops", "alerts": "#alerts"},
    "services": {"api": {"channel": "#team-api", "alerts": {"match": {"service": "api"}}}},
    "alerts": {"storm": {"groups_per_minute": 5}},
}


def cards(h: SlackHarness, channel: str) -> list[Any]:
    return h.emu.top_level(channel)


def button_labels(card: Any) -> list[str]:
    return [
        el["text"]["text"]
        for b in card.blocks
        for el in [*(b.get("elements") or []), *([b["accessory"]] if b.get("accessory") else [])]
        if el.get("type") == "button"
    ]


async def test_the_card_gives_the_sources_own_start_and_end_not_when_opsloop_heard(
    tmp_path: Path, emu: SlackEmulator
) -> None:
    async with slack_ops(tmp_path, emu, **CONFIG) as h:
        now = datetime.fromtimestamp(h.services.clock.now(), UTC)
        started = now - timedelta(minutes=40)  # the page reached opsloop 40 minutes late
        late = replace(alert("DiskFull", "d1", service="api"), starts_at=started)
        await h.services.alerts.ingest(batch(late))
        await h.settle()
        [card] = cards(h, "C0API")
        assert f"Since*\\n{started:%Y-%m-%d %H:%M} UTC" in json.dumps(card.blocks, ensure_ascii=False)
        ended = replace(late, status=AlertStatus.RESOLVED, ends_at=started + timedelta(minutes=30))
        await h.services.alerts.ingest(batch(ended))
        await h.settle()
        [card] = cards(h, "C0API")
        assert "resolved after 30m" in json.dumps(card.blocks), json.dumps(card.blocks)


async def test_a_group_title_names_its_group_labels_once(tmp_path: Path, emu: SlackEmulator) -> None:
    # Nagios names a service `web01/HTTP` and groups by host: the title was "web01/HTTP (web01)".
    async with slack_ops(tmp_path, emu, **CONFIG) as h:
        nagios = alert("web01/HTTP", "n1", group="nagios:web01", host="web01")
        disk = alert("Disk", "d1", group="disk:db1", host="db1")
        for a in (nagios, disk):
            await h.services.alerts.ingest(
                AlertBatch("alertmanager", (a,), group_labels=(("host", dict(a.labels)["host"]),))
            )
        titles = await h.services.store.read(lambda db: rows(db, "SELECT title FROM alert_groups ORDER BY id"))
        assert [t["title"] for t in titles] == ["web01/HTTP", "Disk (db1)"]


async def test_a_runbook_url_too_long_for_a_button_costs_the_button_not_the_card(
    tmp_path: Path, emu: SlackEmulator
) -> None:
    # As with a build's URL: an annotation longer than Slack takes for a button made the card fail to render.
    base = "https://runbooks.example.com/disk?"
    async with slack_ops(tmp_path, emu, **CONFIG) as h:
        for fp, length in (("long", 3001), ("fits", 3000)):
            a = replace(alert(f"Disk {fp}", fp), annotations=(("runbook_url", base + "q" * (length - len(base))),))
            await h.services.alerts.ingest(batch(a))
        await h.settle()
        by_title = {c.text.split(": ", 1)[-1]: c for c in cards(h, "C0ALERTS")}
        assert "Runbook" not in button_labels(by_title["Disk long"])
        assert "Runbook" in button_labels(by_title["Disk fits"])


async def test_acknowledge_of_a_nagios_alert_without_nagios_configured_records_the_owner(
    tmp_path: Path, emu: SlackEmulator
) -> None:
    # Before, the button was refused ("Nagios isn't configured") and who owns the page was not recorded.
    async with slack_ops(tmp_path, emu, **CONFIG) as h:
        page = replace(alert("web01/HTTP", "n1", host="web01", nagios_service="HTTP"), source="nagios")
        await h.services.alerts.ingest(AlertBatch("nagios", (page,), group_labels=(("host", "web01"),)))
        await h.settle()
        [card] = cards(h, "C0ALERTS")
        await click(h, "C0ALERTS", card.ts, "Acknowledge", ALICE)
        said = emu.ephemerals_for(ALICE)[-1].text
        assert "You own it now" in said and "Nagios was not told" in said and "integrations.nagios" in said
        owners = await h.services.store.read(lambda db: rows(db, "SELECT acked_by FROM alert_groups"))
        assert owners == [{"acked_by": ALICE}]
        [card] = cards(h, "C0ALERTS")
        assert "Acknowledge" not in button_labels(card)


async def test_one_card_per_group_edited_in_place(tmp_path: Path, emu: SlackEmulator) -> None:
    async with slack_ops(tmp_path, emu, **CONFIG) as h:
        pipe = h.services.alerts
        await pipe.ingest(batch(alert("HighLatency", "a1", service="api")))
        await pipe.ingest(batch(alert("HighLatency", "a1", service="api")))  # a repeat: nothing new
        await pipe.ingest(batch(alert("HighLatency", "a1", service="api"), alert("HighLatency", "a2", service="api")))
        await h.settle()
        [card] = cards(h, "C0API")  # routed by the service's route; never re-posted
        assert "FIRING: HighLatency" in card.text
        assert "2 firing" in json.dumps(card.blocks)
        assert [m.text.split(":")[0] for m in emu.replies("C0API", card.ts)] == ["HighLatency", "HighLatency"]
        await pipe.ingest(
            batch(
                alert("HighLatency", "a1", AlertStatus.RESOLVED, service="api"),
                alert("HighLatency", "a2", AlertStatus.RESOLVED, service="api"),
            )
        )
        await h.settle()
        [card] = cards(h, "C0API")
        assert card.text.startswith("✅ RESOLVED: HighLatency") and "resolved after" in json.dumps(card.blocks)
        assert len(emu.replies("C0API", card.ts)) == 2
        kinds = [
            r["kind"] for r in await h.services.store.read(lambda db: rows(db, "SELECT kind FROM events ORDER BY id"))
        ]
        assert kinds == ["alert.fired", "alert.resolved"]
        await pipe.ingest(batch(alert("HighLatency", "a1", service="api")))  # fires again: same card
        await h.settle()
        [card] = cards(h, "C0API")
        assert "FIRING" in card.text


async def test_severity_floor_and_firing_threshold(tmp_path: Path, emu: SlackEmulator) -> None:
    cfg = {
        **CONFIG,
        "alerts": {
            "routes": [
                {"match": {"team": "db"}, "channel": "#alerts", "min_severity": "critical"},
                {"match": {"team": "web"}, "channel": "#alerts", "after": {"firings": 3, "within": "10m"}},
            ]
        },
    }
    async with slack_ops(tmp_path, emu, **cfg) as h:
        pipe = h.services.alerts
        await pipe.ingest(batch(alert("DiskSlow", "d1", severity=Severity.WARNING, team="db")))
        await h.settle()
        assert cards(h, "C0ALERTS") == []  # below the route's floor: stored, not carded
        for _ in range(2):
            await pipe.ingest(batch(alert("Flappy", "f1", team="web")))
            await pipe.ingest(batch(alert("Flappy", "f1", AlertStatus.RESOLVED, team="web")))
        await h.settle()
        assert cards(h, "C0ALERTS") == []
        await pipe.ingest(batch(alert("Flappy", "f1", team="web")))  # third firing within 10 minutes
        await h.settle()
        assert [c.text for c in cards(h, "C0ALERTS")] == ["🔴 FIRING: Flappy"]
        stored = await h.services.store.read(lambda db: rows(db, "SELECT name FROM alerts ORDER BY id"))
        assert [r["name"] for r in stored] == ["DiskSlow", "Flappy"]  # nothing dropped


async def test_a_storm_becomes_one_digest_and_every_alert_stays_reachable(tmp_path: Path, emu: SlackEmulator) -> None:
    async with slack_ops(tmp_path, emu, **CONFIG) as h:
        pipe = h.services.alerts
        for i in range(30):
            await pipe.ingest(batch(alert(f"Disk{i % 4}", f"s{i}", group=f"g{i}", instance=f"n{i}")))
        await h.settle()
        top = cards(h, "C0ALERTS")
        digests = [m for m in top if m.text.startswith("🌩️")]
        assert len(digests) == 1 and len(top) == 5 + 1  # the first 5 groups got cards, then the digest
        assert "25 groups, 25 alerts" in digests[0].text
        thread = emu.replies("C0ALERTS", digests[0].ts)
        assert len(thread) == 3  # pages of 10 groups, each group with its alerts and its buttons
        pages = json.dumps([m.blocks for m in thread])
        assert all(f"instance=n{i}`" in pages for i in range(5, 30)) and pages.count('"Acknowledge"') == 25
        for i in range(30):
            await pipe.ingest(
                batch(alert(f"Disk{i % 4}", f"s{i}", AlertStatus.RESOLVED, group=f"g{i}", instance=f"n{i}"))
            )
        await h.settle()
        assert len(cards(h, "C0ALERTS")) == 6 and len(emu.replies("C0ALERTS", digests[0].ts)) == 3
        fields = emu.message("C0ALERTS", digests[0].ts).blocks[1]["fields"]
        assert {"type": "mrkdwn", "text": "*Resolved groups*\n25"} in fields


async def test_a_recent_release_is_named_on_the_card_but_never_one_made_after_the_alert_began(
    tmp_path: Path, emu: SlackEmulator
) -> None:
    async with slack_ops(tmp_path, emu, **CONFIG) as h:
        now = h.services.clock.now()

        def began(name: str, service: str, seconds_ago: float) -> AlertBatch:
            """An alert of `service` in prod that its source says began `seconds_ago`."""
            a = alert(name, name.lower(), service=service, env="prod")
            return batch(replace(a, starts_at=datetime.fromtimestamp(now - seconds_ago, UTC)))

        def finished(release: int, ago: float, service: str, started_ago: float) -> Callable[[Any], None]:
            def tx(db: Any) -> None:
                db.execute(
                    "INSERT INTO releases (id, action, service, env, version, requester, state, channel, created_at,"
                    " started_at, finished_at, updated_at) VALUES (?, 'deploy', ?, 'prod', '1.4.2', 'U0DAVE',"
                    " 'succeeded', '#approvals', ?, ?, ?, ?)",
                    (release, service, now - started_ago, now - started_ago, now - ago, now - ago),
                )
                db.execute(
                    "INSERT INTO events (at, kind, service, env, ref, actor, detail) VALUES (?, 'deploy.finished',"
                    " ?, 'prod', '1.4.2', 'U0DAVE', ?)",
                    (now - ago, service, json.dumps({"release": release, "ok": True})),
                )

            return tx

        # api 1.4.2 finished 7½ minutes ago; the alert started 5½ minutes ago.
        await h.services.store.write(finished(1, 450, "api", 510))
        await h.services.alerts.ingest(began("Errors", "api", 330))
        await h.settle()
        [card] = cards(h, "C0API")
        body = json.dumps(card.blocks, ensure_ascii=False)
        assert "started 2 min after api 1.4.2 to prod by <@U0DAVE>" in body and "Rollback" in body, body
        # web 1.4.2 rolled out from 5 minutes ago to 1 minute ago; the alert started 3 minutes ago, mid-rollout.
        await h.services.store.write(finished(2, 60, "web", 300))
        await h.services.alerts.ingest(began("Slow", "web", 180))
        # db 1.4.2 went out 2 minutes ago, but the alert has been firing for an hour: it arrives late, and the
        # release is not its cause.
        await h.services.store.write(finished(3, 120, "db", 240))
        await h.services.alerts.ingest(began("Locks", "db", 3600))
        await h.settle()
        by_title = {c.text: json.dumps(c.blocks, ensure_ascii=False) for c in cards(h, "C0ALERTS")}
        slow = next(b for t, b in by_title.items() if "Slow" in t)
        locks = next(b for t, b in by_title.items() if "Locks" in t)
        assert "started while rolling out web 1.4.2 to prod" in slow and "Rollback" in slow
        assert "🚀" not in locks and "Rollback" not in locks


async def test_a_group_that_fires_again_asks_for_an_owner_again(tmp_path: Path, emu: SlackEmulator) -> None:
    async with slack_ops(tmp_path, emu, **CONFIG) as h:
        pipe = h.services.alerts
        await pipe.ingest(batch(alert("Disk", "d1")))
        [row] = await h.services.store.read(lambda db: rows(db, "SELECT id FROM alert_groups"))
        await pipe.change(row["id"], "alert.acked", "U0ALICE", acked_by="U0ALICE", acked_at=1.0)
        await pipe.ingest(batch(alert("Disk", "d1")))  # a repeat of the same incident keeps its owner
        await h.settle()
        [card] = cards(h, "C0ALERTS")
        assert "acknowledged by <@U0ALICE>" in json.dumps(card.blocks)
        await pipe.ingest(batch(alert("Disk", "d1", AlertStatus.RESOLVED)))
        await pipe.ingest(batch(alert("Disk", "d1")))  # a new incident: the old acknowledgement is not its
        await h.settle()
        [card] = cards(h, "C0ALERTS")
        assert "acknowledged by" not in json.dumps(card.blocks) and "Acknowledge" in json.dumps(card.blocks)
        g = await pipe.get(row["id"])
        assert g is not None and g.acked_by is None


async def test_a_stored_alert_takes_each_change_in_the_order_it_came(tmp_path: Path, emu: SlackEmulator) -> None:
    # Status-only changes and changes of severity or summary are written by different statements; within
    # one delivery the later state of an alert still wins, and firings are counted once per firing.
    from dataclasses import replace

    def disk(status: AlertStatus, severity: Severity, summary: str = "disk full") -> Alert:
        return replace(alert("Disk", "w1", status, severity=severity), summary=summary)

    async with slack_ops(tmp_path, emu, **CONFIG) as h:
        pipe = h.services.alerts

        async def stored() -> tuple[str, str, str, int]:
            [row] = await h.services.store.read(
                lambda db: rows(db, "SELECT status, severity, summary, firings FROM alerts WHERE fingerprint = 'w1'")
            )
            return row["status"], row["severity"], row["summary"], row["firings"]

        await pipe.ingest(batch(disk(AlertStatus.FIRING, Severity.WARNING)))
        await pipe.ingest(batch(disk(AlertStatus.RESOLVED, Severity.WARNING)))
        assert await stored() == ("resolved", "warning", "disk full", 1)
        await pipe.ingest(batch(disk(AlertStatus.FIRING, Severity.CRITICAL, "disk full, 99%")))
        assert await stored() == ("firing", "critical", "disk full, 99%", 2)
        # Resolved, fired again and resolved in one delivery (a source catching up): the last one stands.
        await pipe.ingest(
            batch(
                disk(AlertStatus.RESOLVED, Severity.CRITICAL, "disk full, 99%"),
                disk(AlertStatus.FIRING, Severity.WARNING),
                disk(AlertStatus.RESOLVED, Severity.WARNING, "disk fine again"),
            )
        )
        assert await stored() == ("resolved", "warning", "disk fine again", 3)


async def test_the_pipeline_stores_summaries_redacted_even_when_given_them_directly(
    tmp_path: Path, emu: SlackEmulator
) -> None:
    # The webhook route redacts bodies before the pipeline sees them; the pipeline does not rely on it.
    from dataclasses import replace

    async with slack_ops(tmp_path, emu, **CONFIG) as h:
        leaky = replace(alert("Disk", "s1"), summary="login failed, password=hunter2hunter2")
        clean = replace(alert("Disk", "s2"), summary="disk full")
        await h.services.alerts.ingest(batch(leaky, clean))
        found = await h.services.store.read(lambda db: rows(db, "SELECT summary FROM alerts ORDER BY fingerprint"))
        assert [r["summary"] for r in found] == ["login failed, password=[redacted]", "disk full"]


async def test_without_alertmanagers_api_the_buttons_say_snooze_and_snooze_in_opsloop_until_unsnoozed(
    tmp_path: Path, emu: SlackEmulator
) -> None:
    # Alertmanager's webhook set up, its URL not: the card's buttons still quiet the group, and say how.
    async with slack_ops(tmp_path, emu, **CONFIG) as h:
        await h.services.alerts.ingest(batch(alert("Disk", "d1")))
        await h.settle()
        [card] = cards(h, "C0ALERTS")
        labels = button_labels(card)
        # The alert carries a PromQL expression, but no Prometheus is configured to draw it: no Graph button.
        assert "Snooze 1h" in labels and "Graph" not in labels
        assert not [x for x in labels if x.startswith("Silence")]  # no silence it can't make, no matcher form
        await click(h, "C0ALERTS", card.ts, "Snooze 1h", ALICE)
        said = emu.ephemerals_for(ALICE)[-1].text
        assert "Alertmanager's API isn't configured" in said and "snoozed the group in opsloop for 1h" in said
        [card] = cards(h, "C0ALERTS")
        assert "💤 snoozed until" in json.dumps(card.blocks, ensure_ascii=False)
        assert "Unsnooze" in button_labels(card) and "Snooze 1h" not in button_labels(card)
        assert "(snoozed until" in (await h.command("alerts")).body_text  # the list says it too
        await click(h, "C0ALERTS", card.ts, "Unsnooze", ALICE)
        assert "The snooze is over" in emu.ephemerals_for(ALICE)[-1].text
        [card] = cards(h, "C0ALERTS")
        assert "snoozed" not in json.dumps(card.blocks) and "Snooze 1h" in button_labels(card)
        listed = (await h.command("alerts")).body_text
        assert "Disk" in listed and "snoozed" not in listed
        kinds = [r["kind"] for r in await h.services.store.read(lambda db: rows(db, "SELECT kind FROM events"))]
        assert kinds == ["alert.fired", "alert.snoozed", "alert.unsnoozed"]


async def test_an_alert_its_source_never_resolves_is_resolved_from_its_card(tmp_path: Path, emu: SlackEmulator) -> None:
    splunk = Alert(
        source="splunk",
        fingerprint="errors-spike",
        status=AlertStatus.FIRING,
        name="Errors spike",
        severity=Severity.WARNING,
        group_key="splunk:Errors spike",
        labels=(("alertname", "Errors spike"),),
        annotations=(("summary", "500s above 2 %"),),
        starts_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    async with slack_ops(tmp_path, emu, **CONFIG) as h:
        await h.services.alerts.ingest(AlertBatch("splunk", (splunk,)))
        await h.settle()
        [card] = cards(h, "C0ALERTS")
        assert "FIRING: Errors spike" in card.text
        button = find_button(card.blocks, "Resolve")
        await click(h, "C0ALERTS", card.ts, "Resolve", ALICE)
        [card] = cards(h, "C0ALERTS")
        assert card.text.startswith("✅ RESOLVED: Errors spike") and "Resolve" not in button_labels(card)
        # A second click (a double click, or an old copy of the card) finds nothing firing, and says so.
        await press(h, button, BOB, "C0ALERTS", card.ts)
        assert "is not firing; nothing to resolve" in emu.ephemerals_for(BOB)[-1].text
        kinds = [r["kind"] for r in await h.services.store.read(lambda db: rows(db, "SELECT kind FROM events"))]
        assert kinds == ["alert.fired", "alert.resolved"]  # the MTTR figure counts it
        await h.services.alerts.ingest(AlertBatch("splunk", (splunk,)))  # Splunk fires again: the same card
        await h.settle()
        [card] = cards(h, "C0ALERTS")
        assert "FIRING: Errors spike" in card.text and "Resolve" in button_labels(card)
        # Sources that do say when an alert ends get no such button.
        await h.services.alerts.ingest(batch(alert("Disk", "d1")))
        await h.settle()
        disk = next(c for c in cards(h, "C0ALERTS") if "Disk" in c.text)
        assert "Resolve" not in button_labels(disk)
