"""The monitor stage end to end against real servers: Prometheus + Alertmanager, and Nagios.

opsloop serves HTTP (Slack requests and /hooks/*) against the Slack emulator; the servers are the
Debian binaries (tests/servers.py, tests/nagios_server.py), each on a free port with temporary state.

* Prometheus scrapes a metric this test serves (`e2e_checkout_errors`); a rule fires while it is
  above 0. Alertmanager sends to opsloop's /hooks/alertmanager with the bearer token. The card's
  Silence 1h / Unsilence buttons act on the real Alertmanager; Graph and `/ops query` ask the real
  Prometheus. Setting the metric back to 0 resolves the alert, and the same card turns resolved.
* Nagios checks a service actively with a plugin reading a file the test writes; the notification
  script in scripts/ posts to /hooks/nagios. Acknowledge writes ACKNOWLEDGE_SVC_PROBLEM to the command
  FIFO, and Nagios's ACKNOWLEDGEMENT notification comes back to opsloop.

Which side starts first: opsloop needs the servers' URLs and paths in its config, the servers need
opsloop's URL. So the servers start first with a dead-end receiver, then opsloop on a port the OS
picks, then the servers are pointed at it (Alertmanager reloads its config; the Nagios script reads
its config file on every run). No port is guessed.

Missing binaries skip these tests, or fail them under OPSLOOP_REQUIRE_SERVERS=1.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bot.store import rows
from tests.emulators.slack import Message, SlackEmulator
from tests.nagios_server import NagiosServer, nagios_server
from tests.servers import (
    WEBHOOK_TOKEN,
    RunningAlertmanager,
    RunningPrometheus,
    alertmanager,
    need_binary,
    prometheus,
)
from tests.support import ALICE, BOB, SlackHarness, click, find_button, slack_ops, slack_workspace, wait_until

pytestmark = pytest.mark.servers

ALERTS = "C0ALERTS"
# Nothing listens on the discard port: where the servers send until opsloop runs.
NOWHERE = "http://127.0.0.1:9"
# Generous: Prometheus needs ~5-7 s to discover Alertmanager and send the first alert.
SLOW = 60.0

RULES = """\
groups:
  - name: e2e
    rules:
      - alert: CheckoutErrors
        expr: e2e_checkout_errors > 0
        for: 0s
        labels: {severity: critical, team: shop}
        annotations:
          summary: "checkout fails: {{ $value }} errors"
          runbook_url: https://runbooks.example/checkout-errors
"""


@pytest.fixture
async def emu() -> AsyncIterator[SlackEmulator]:
    async with SlackEmulator(post_burst=1000, post_rate_per_channel=1000) as e:
        slack_workspace(e)
        e.add_channel(ALERTS, "alerts")
        yield e


# --- helpers -------------------------------------------------------------------------------------------


class Gauge:
    """A /metrics endpoint serving one gauge whose value the test sets."""

    def __init__(self) -> None:
        self.value = 0.0
        self.target = ""

    async def handle(self, request: web.Request) -> web.Response:
        text = f"# TYPE e2e_checkout_errors gauge\ne2e_checkout_errors {self.value:g}\n"
        return web.Response(text=text, content_type="text/plain")


@asynccontextmanager
async def gauge() -> AsyncIterator[Gauge]:
    g = Gauge()
    app = web.Application()
    app.router.add_get("/metrics", g.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    g.target = f"127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield g
    finally:
        await runner.cleanup()


def base_url(h: SlackHarness) -> str:
    return h.url.removesuffix("/slack/events")


def cards(emu: SlackEmulator, channel: str = ALERTS) -> list[Message]:
    return emu.top_level(channel)


def body(m: Message) -> str:
    return m.text + "\n" + json.dumps(m.blocks, ensure_ascii=False)


def labels_of(m: Message) -> list[str]:
    out = []
    for b in m.blocks:
        for el in b.get("elements") or []:
            if el.get("type") == "button":
                out.append(el["text"]["text"])
    return out


def texts(node: Any) -> list[str]:
    """Every `text` string in Block Kit JSON, in order."""
    if isinstance(node, list):
        return [t for x in node for t in texts(x)]
    if isinstance(node, dict):
        own = [node["text"]] if isinstance(node.get("text"), str) else []
        return own + [t for k, x in node.items() if k != "text" or not isinstance(x, str) for t in texts(x)]
    return []


def said_to(emu: SlackEmulator, user: str) -> str:
    """Everything opsloop told `user` privately (acks, response_url answers, ephemerals), in order."""
    return "\n".join("\n".join([e.text, *texts(e.blocks)]) for e in emu.ephemerals_for(user))


async def am_get(am: RunningAlertmanager, path: str, **params: str) -> Any:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        session.get(f"{am.url}{path}", params=params) as resp,
    ):
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def silences(am: RunningAlertmanager) -> list[dict[str, Any]]:
    return list(await am_get(am, "/api/v2/silences"))


async def event_kinds(h: SlackHarness) -> list[str]:
    found = await h.services.store.read(lambda db: rows(db, "SELECT kind FROM events ORDER BY id"))
    return [r["kind"] for r in found]


def hooks_ok(h: SlackHarness, source: str) -> float:
    """How many webhooks of `source` opsloop took (its own /metrics counter)."""
    value = h.services.metrics.registry.get_sample_value("opsloop_hooks_total", {"source": source, "status": "200"})
    return value or 0.0


async def settled(h: SlackHarness, pred: Callable[[], object], what: str, timeout: float = SLOW) -> None:
    """Wait for `pred` while webhooks keep arriving; the outbox is drained before each look."""

    async def check() -> bool:
        await h.settle()
        return bool(pred())

    try:
        await wait_until(check, timeout=timeout, what=what)
    except AssertionError:
        raise AssertionError(f"timed out waiting for {what}; cards: {[body(c) for c in cards(h.emu)]}") from None


# --- Prometheus + Alertmanager -------------------------------------------------------------------------


@asynccontextmanager
async def prometheus_stack(
    tmp_path: Path, emu: SlackEmulator
) -> AsyncIterator[tuple[SlackHarness, Gauge, RunningAlertmanager, RunningPrometheus]]:
    need_binary("prometheus")
    need_binary("prometheus-alertmanager")
    async with (
        gauge() as g,
        # group_wait 1s / group_interval 2s: the first notice ~1 s after the alert, changes ~2 s apart.
        alertmanager(tmp_path, f"{NOWHERE}/hooks/alertmanager", group_wait="1s", group_interval="2s") as am,
        prometheus(tmp_path, alertmanager_url=am.url, rules=RULES, scrape_targets=[g.target]) as prom,
        slack_ops(
            tmp_path,
            emu,
            channels={"default": "#ops", "alerts": "#alerts", "approvals": "#approvals"},
            integrations={"prometheus": {"url": prom.url}, "alertmanager": {"url": am.url}},
        ) as h,
    ):
        await am.set_webhook_url(f"{base_url(h)}/hooks/alertmanager")
        try:
            yield h, g, am, prom
        except BaseException as err:
            if not isinstance(err, pytest.skip.Exception):  # the servers' side of a failure, beside it
                for name, log in (("alertmanager", am.log()), ("prometheus", prom.log())):
                    print(f"--- {name} log ---\n" + "\n".join(log.splitlines()[-30:]))
            raise


async def test_a_prometheus_rule_becomes_one_card_that_silences_graphs_and_resolves(
    tmp_path: Path, emu: SlackEmulator
) -> None:
    async with prometheus_stack(tmp_path, emu) as (h, g, am, prom):
        # The rule fires; Alertmanager posts; one card appears.
        g.value = 3
        await settled(h, lambda: cards(emu), "the alert card")
        [card] = cards(emu)
        assert card.text == "🔴 FIRING: CheckoutErrors"
        assert "checkout fails: 3 errors" in body(card) and "1 firing, 0 resolved" in body(card)
        assert {"Silence 1h", "Acknowledge", "Runbook", "Graph"} <= set(labels_of(card))
        assert find_button(card.blocks, "Runbook")["url"] == "https://runbooks.example/checkout-errors"
        [detail] = emu.replies(ALERTS, card.ts)
        assert f"{prom.url}/graph?g0.expr=" in body(detail)  # the generatorURL, linked in the thread
        assert hooks_ok(h, "alertmanager") >= 1

        # Silence 1h: a real silence on the group's labels, shown on the card with Unsilence.
        await click(h, ALERTS, card.ts, "Silence 1h", ALICE)
        [silence] = await silences(am)
        assert silence["status"]["state"] == "active"
        assert silence["matchers"] == [
            {"name": "alertname", "value": "CheckoutErrors", "isRegex": False, "isEqual": True}
        ]
        assert silence["createdBy"] == f"opsloop:{ALICE}"
        [live] = await am_get(am, "/api/v2/alerts", filter='alertname="CheckoutErrors"')
        assert live["status"]["state"] == "suppressed" and live["status"]["silencedBy"] == [silence["id"]]
        card = emu.message(ALERTS, card.ts)
        assert f"silenced by <@{ALICE}>" in body(card)
        assert "Unsilence" in labels_of(card) and "Silence 1h" not in labels_of(card)
        assert f"silence `{silence['id']}`" in said_to(emu, ALICE)

        # Unsilence: the same silence is expired in Alertmanager and the card offers Silence again.
        await click(h, ALERTS, card.ts, "Unsilence", ALICE)
        [silence] = await silences(am)
        assert silence["status"]["state"] == "expired"
        card = emu.message(ALERTS, card.ts)
        assert "silenced by" not in body(card)
        assert "Silence 1h" in labels_of(card) and "Unsilence" not in labels_of(card)

        # Graph: the alert's own PromQL, drawn from the real Prometheus, as a PNG in the card's thread.
        await click(h, ALERTS, card.ts, "Graph", BOB)
        [chart] = [f for f in emu.files if f.filename.startswith("alert-")]
        assert chart.content.startswith(b"\x89PNG\r\n\x1a\n")
        assert chart.thread_ts == card.ts and "e2e_checkout_errors &gt; 0" in (chart.initial_comment or "")

        # The value now, then a chart of the last five minutes, both from the real Prometheus.
        await h.command("query up", user=BOB)
        answer = said_to(emu, BOB)
        assert 'job="prometheus"' in answer and f'instance="{g.target}", job="extra"' in answer, answer
        await h.command("query e2e_checkout_errors 5m", user=BOB)
        [query_chart] = [f for f in emu.files if f.filename == "query.png"]
        assert query_chart.content.startswith(b"\x89PNG\r\n\x1a\n") and query_chart.thread_ts is None
        assert "over 5m posted here" in said_to(emu, BOB)
        await h.command("query sum(up) by (job", user=BOB)  # Prometheus's own complaint, not a trace
        assert "Prometheus: bad query" in said_to(emu, BOB)

        # The metric drops: Prometheus resolves the alert, Alertmanager says so, the same card turns.
        g.value = 0
        await settled(h, lambda: emu.message(ALERTS, card.ts).text.startswith("✅ RESOLVED"), "the resolved card")
        assert [c.ts for c in cards(emu)] == [card.ts]  # edited in place, never re-posted
        card = emu.message(ALERTS, card.ts)
        assert "0 firing, 1 resolved" in body(card) and "resolved after" in body(card)
        assert not {"Silence 1h", "Acknowledge", "Unsilence"} & set(labels_of(card))
        assert len(emu.replies(ALERTS, card.ts)) == 2  # the alert's detail and the chart, nothing more
        assert await event_kinds(h) == ["alert.fired", "alert.silenced", "alert.unsilenced", "alert.resolved"]
        assert emu.server_errors == [] and emu.invalid_acks == []


# --- Nagios --------------------------------------------------------------------------------------------


@asynccontextmanager
async def nagios_stack(tmp_path: Path, emu: SlackEmulator) -> AsyncIterator[tuple[SlackHarness, NagiosServer]]:
    async with (
        nagios_server(url=NOWHERE, token=WEBHOOK_TOKEN, active_service=True) as nagios,
        slack_ops(
            tmp_path,
            emu,
            channels={"default": "#ops", "alerts": "#alerts", "approvals": "#approvals"},
            integrations={"nagios": {"command_file": nagios.command_file, "status_file": nagios.status_file}},
        ) as h,
    ):
        nagios.notify_to(base_url(h), WEBHOOK_TOKEN)
        yield h, nagios


async def test_a_nagios_problem_is_acknowledged_in_nagios_from_its_card(tmp_path: Path, emu: SlackEmulator) -> None:
    async with nagios_stack(tmp_path, emu) as (h, nagios):
        await nagios.wait_status("servicestatus", lambda s: s["has_been_checked"] == "1" and s["current_state"] == "0")

        # The plugin says CRITICAL; Nagios runs the notification script; a card appears.
        nagios.set_service_check(2, "HTTP CRITICAL - 503 Service Unavailable")
        await settled(h, lambda: cards(emu), "the Nagios card")
        [card] = cards(emu)
        assert card.text.startswith("🔴 FIRING: web01/HTTP")
        assert "HTTP CRITICAL - 503 Service Unavailable" in body(card) and "nagios" in body(card)
        assert "Acknowledge" in labels_of(card)

        # Acknowledge: the command reaches Nagios through its FIFO ...
        await click(h, ALERTS, card.ts, "Acknowledge", ALICE)
        assert "Nagios has it too" in said_to(emu, ALICE)
        await nagios.wait_log("EXTERNAL COMMAND: ACKNOWLEDGE_SVC_PROBLEM;web01;HTTP;2;1;1;alice;")
        status = await nagios.wait_status("servicestatus", lambda s: s["problem_has_been_acknowledged"] == "1")
        assert status["acknowledgement_type"] == "2"
        # ... and Nagios's ACKNOWLEDGEMENT notification comes back to opsloop, which keeps the card as it is.
        await nagios.wait_log("SERVICE NOTIFICATION: opsloop;web01;HTTP;ACKNOWLEDGEMENT (CRITICAL)")
        await settled(h, lambda: hooks_ok(h, "nagios") >= 2, "the ACKNOWLEDGEMENT at opsloop")
        card = emu.message(ALERTS, card.ts)
        assert f"acknowledged by <@{ALICE}>" in body(card) and "Acknowledge" not in labels_of(card)

        # OK again: Nagios notifies the RECOVERY, and the same card turns resolved.
        nagios.set_service_check(0, "HTTP OK - 200 in 0.01 s")
        await settled(h, lambda: emu.message(ALERTS, card.ts).text.startswith("✅ RESOLVED"), "the resolved card")

        # A new problem on the same card; this time someone acknowledges it in Nagios itself (its UI
        # writes the same command), and the acknowledgement notification shows who on the card.
        nagios.set_service_check(2, "HTTP CRITICAL - connection refused")
        await settled(h, lambda: emu.message(ALERTS, card.ts).text.startswith("🔴 FIRING"), "the card firing again")
        card = emu.message(ALERTS, card.ts)
        assert "Acknowledge" in labels_of(card) and "acknowledged by" not in body(card)
        nagios.command("ACKNOWLEDGE_SVC_PROBLEM;web01;HTTP;2;1;0;bob;looking at the load balancer")
        await settled(h, lambda: "acknowledged by bob" in body(emu.message(ALERTS, card.ts)), "bob's acknowledgement")
        assert "Acknowledge" not in labels_of(emu.message(ALERTS, card.ts))
        assert [c.ts for c in cards(emu)] == [card.ts]  # one card throughout
        assert await event_kinds(h) == ["alert.fired", "alert.acked", "alert.resolved", "alert.fired"]
        assert emu.server_errors == [] and emu.invalid_acks == []
