"""Alertmanager adapters: the webhook model and the API v2 client, against a real Alertmanager 0.25.

Payloads are captured from the real server by a catcher on a free port; the same captured bodies
then go through `AlertmanagerWebhook.parse`. Server tests are marked `servers`."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pydantic
import pytest
from aiohttp import web

from adapters.alertmanager import (
    AlertmanagerAPI,
    AlertmanagerWebhook,
    alerts_view_url,
    label_fingerprint,
    matcher_text,
    severity_of,
)
from bot.ports import (
    AdapterError,
    AdapterNotFound,
    AdapterTimeout,
    AdapterUnavailable,
    AlertManager,
    AlertSource,
    AlertStatus,
    Matcher,
    Severity,
)
from tests.servers import (
    WEBHOOK_RECEIVER,
    WEBHOOK_TOKEN,
    Catcher,
    Caught,
    RunningAlertmanager,
    alertmanager,
    catcher,
    inject_alerts,
)
from tests.support import free_port, wait_until

servers = pytest.mark.servers
HOOK = "/alertmanager"

# Observed from Alertmanager 0.25 (reference sheet §1.1), extra fields and all.
FIRING: dict[str, Any] = {
    "receiver": "chatops-bot",
    "status": "firing",
    "alerts": [
        {
            "status": "firing",
            "labels": {"alertname": "InjectedTest", "service": "api", "severity": "warning"},
            "annotations": {"summary": "injected via API", "runbook_url": "https://runbooks/injected"},
            "startsAt": "2026-11-26T04:22:05.094824942Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://example.invalid/graph",
            "fingerprint": "b2017badd404dfce",
        }
    ],
    "groupLabels": {"alertname": "InjectedTest"},
    "commonLabels": {"alertname": "InjectedTest", "service": "api", "severity": "warning"},
    "commonAnnotations": {"summary": "injected via API"},
    "externalURL": "http://127.0.0.1:19093",
    "version": "4",
    "groupKey": '{}/{alertname=~".+"}:{alertname="InjectedTest"}',
    "truncatedAlerts": 0,
}


def payload(**changes: Any) -> dict[str, Any]:
    data = {**FIRING, "alerts": [dict(a) for a in FIRING["alerts"]]}
    data.update(changes)
    return data


def alert_changes(**changes: Any) -> dict[str, Any]:
    return payload(alerts=[{**FIRING["alerts"][0], **changes}])


# --- the webhook model (no server) -------------------------------------------------------------------


def test_the_webhook_is_an_alert_source() -> None:
    source: AlertSource = AlertmanagerWebhook()
    assert source.name == "alertmanager"


def test_a_firing_payload_maps_to_one_alert() -> None:
    batch = AlertmanagerWebhook().parse(FIRING)
    assert batch.source == "alertmanager"
    assert batch.group_labels == (("alertname", "InjectedTest"),)
    assert batch.truncated == 0
    (a,) = batch.alerts
    assert a.source == "alertmanager"
    assert a.fingerprint == "b2017badd404dfce"
    assert a.status is AlertStatus.FIRING
    assert a.name == "InjectedTest"
    assert a.severity is Severity.WARNING
    assert a.group_key == '{}/{alertname=~".+"}:{alertname="InjectedTest"}'
    assert a.labels == (("alertname", "InjectedTest"), ("service", "api"), ("severity", "warning"))
    assert a.annotations == (("runbook_url", "https://runbooks/injected"), ("summary", "injected via API"))
    assert a.starts_at == datetime(2026, 11, 26, 4, 22, 5, 94824, tzinfo=UTC)
    assert a.starts_at is not None and a.starts_at.tzinfo is UTC
    assert a.ends_at is None  # the 0001-01-01 placeholder of every firing alert
    assert a.summary == "injected via API"
    assert a.generator_url == "http://example.invalid/graph"
    assert a.links == (
        ("source", "http://example.invalid/graph"),
        ("runbook", "https://runbooks/injected"),
        ("alertmanager", "http://127.0.0.1:19093/#/alerts?filter=%7Balertname%3D%22InjectedTest%22%7D"),
    )


def test_a_resolved_alert_keeps_its_real_end() -> None:
    data = alert_changes(status="resolved", endsAt="2026-11-26T04:22:26Z")
    data["status"] = "resolved"
    (a,) = AlertmanagerWebhook().parse(data).alerts
    assert a.status is AlertStatus.RESOLVED
    assert a.ends_at == datetime(2026, 11, 26, 4, 22, 26, tzinfo=UTC)


def test_the_body_may_come_as_bytes() -> None:
    import json

    assert AlertmanagerWebhook().parse(json.dumps(FIRING).encode()) == AlertmanagerWebhook().parse(FIRING)


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ("critical", Severity.CRITICAL),
        ("CRITICAL", Severity.CRITICAL),
        ("page", Severity.CRITICAL),
        ("error", Severity.CRITICAL),
        ("high", Severity.CRITICAL),
        ("warning", Severity.WARNING),
        ("Warn", Severity.WARNING),
        ("medium", Severity.WARNING),
        ("info", Severity.INFO),
        ("low", Severity.INFO),
        ("whatever", Severity.INFO),
        ("", Severity.INFO),
        (None, Severity.INFO),
    ],
)
def test_severity_is_normalised(label: str | None, expected: Severity) -> None:
    assert severity_of(label) is expected
    labels = {"alertname": "X"} if label is None else {"alertname": "X", "severity": label}
    (a,) = AlertmanagerWebhook().parse(alert_changes(labels=labels)).alerts
    assert a.severity is expected


def test_summary_falls_back_to_description_then_message() -> None:
    parse = AlertmanagerWebhook().parse
    assert parse(alert_changes(annotations={"description": "d", "message": "m"})).alerts[0].summary == "d"
    assert parse(alert_changes(annotations={"message": "m"})).alerts[0].summary == "m"
    assert parse(alert_changes(annotations={})).alerts[0].summary == ""


def test_unknown_fields_are_tolerated_and_optional_ones_may_be_missing() -> None:
    data = payload(orgId=1, somethingNew={"x": [1]})
    data["alerts"][0]["silenceURL"] = "http://x"
    for key in ("receiver", "groupLabels", "commonLabels", "commonAnnotations", "externalURL", "truncatedAlerts"):
        data.pop(key)
    batch = AlertmanagerWebhook().parse(data)
    assert batch.group_labels == ()
    assert [link for link, _ in batch.alerts[0].links] == ["source", "runbook"]


def test_a_missing_fingerprint_is_the_one_alertmanager_computes() -> None:
    data = alert_changes()
    del data["alerts"][0]["fingerprint"]
    (a,) = AlertmanagerWebhook().parse(data).alerts
    assert a.fingerprint == "b2017badd404dfce"  # what Alertmanager 0.25 sent for these labels
    assert label_fingerprint({}) == "cbf29ce484222325"  # FNV-1a 64 offset: the empty label set


def test_truncated_alerts_are_counted() -> None:
    assert AlertmanagerWebhook().parse(payload(truncatedAlerts=7)).truncated == 7


@pytest.mark.parametrize(
    ("version", "reason"),
    [("1", 'version "1", expected "4"'), (4, 'version 4, expected "4"'), (None, 'no version, expected "4"')],
)
def test_another_version_is_refused_with_the_reason(version: Any, reason: str) -> None:
    data = payload(version=version)
    if version is None:
        del data["version"]
    with pytest.raises(ValueError, match=reason):
        AlertmanagerWebhook().parse(data)


@pytest.mark.parametrize("missing", ["alerts", "groupKey"])
def test_a_payload_without_alerts_or_group_key_is_refused(missing: str) -> None:
    data = payload()
    del data[missing]
    with pytest.raises(pydantic.ValidationError, match=missing):
        AlertmanagerWebhook().parse(data)


@pytest.mark.parametrize(
    ("changes", "where"),
    [
        ({"labels": {"alertname": 5}}, "labels"),
        ({"labels": "alertname=X"}, "labels"),
        ({"status": "pending"}, "status"),
        ({"startsAt": 1764131000}, "startsAt"),
        ({"startsAt": "yesterday"}, "startsAt"),
        ({"fingerprint": 12}, "fingerprint"),
    ],
)
def test_wrong_types_are_refused(changes: dict[str, Any], where: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=where):
        AlertmanagerWebhook().parse(alert_changes(**changes))


@pytest.mark.parametrize("body", [[], "not json", b"[1]", 42])
def test_a_body_that_is_not_an_object_is_refused(body: Any) -> None:
    with pytest.raises(ValueError, match="Alertmanager webhook body"):
        AlertmanagerWebhook().parse(body)


def test_matcher_text_escapes_what_alertmanager_unescapes() -> None:
    assert matcher_text(Matcher("alertname", "Foo")) == 'alertname="Foo"'
    assert matcher_text(Matcher("a", "x.*", is_regex=True, is_equal=False)) == 'a!~"x.*"'
    assert matcher_text(Matcher("path", 'say "hi" \\ bye')) == 'path="say \\"hi\\" \\\\ bye"'
    assert alerts_view_url("http://am:9093/", {}) == "http://am:9093/#/alerts"


# --- against a real Alertmanager ---------------------------------------------------------------------


@pytest.fixture
async def hook() -> AsyncIterator[Catcher]:
    async with catcher() as c:
        yield c


@pytest.fixture
async def am(tmp_path: Path, hook: Catcher) -> AsyncIterator[RunningAlertmanager]:
    async with alertmanager(tmp_path, hook.url(HOOK)) as server:
        yield server


@pytest.fixture
async def api(am: RunningAlertmanager) -> AsyncIterator[AlertmanagerAPI]:
    client = AlertmanagerAPI(am.url, timeout=10)
    yield client
    await client.close()


def hook_with(name: str, status: str = "firing") -> Any:
    def pred(c: Caught) -> bool:
        if c.path != HOOK:
            return False
        body = c.json()
        return body["status"] == status and body["groupLabels"].get("alertname") == name

    return pred


@pytest.fixture
def black_hole() -> Iterator[str]:
    """A port that accepts connections (the kernel's backlog) but never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


@servers
async def test_the_real_webhook_payloads_parse(am: RunningAlertmanager, hook: Catcher) -> None:
    labels = {"alertname": "ContractFiring", "service": "api", "severity": "critical"}
    await inject_alerts(
        am.url,
        [{"labels": labels, "annotations": {"summary": "from the test"}, "generatorURL": "http://gen/graph"}],
    )
    caught = await hook.wait_for(hook_with("ContractFiring"), what="firing")
    assert caught.headers["Authorization"] == f"Bearer {WEBHOOK_TOKEN}"
    assert caught.headers["User-Agent"].startswith("Alertmanager/")
    body = caught.json()
    assert body["receiver"] == WEBHOOK_RECEIVER
    assert body["alerts"][0]["endsAt"] == "0001-01-01T00:00:00Z"
    firing = AlertmanagerWebhook().parse(body)
    (a,) = firing.alerts
    assert a.status is AlertStatus.FIRING and a.ends_at is None
    assert a.severity is Severity.CRITICAL and a.summary == "from the test"
    assert a.fingerprint == label_fingerprint(labels)
    assert a.group_key == body["groupKey"] and "ContractFiring" in a.group_key
    assert a.starts_at is not None and a.starts_at.tzinfo is UTC
    assert ("alertmanager", alerts_view_url(am.url, {"alertname": "ContractFiring"})) in a.links

    # Posting the same labels with an end in the past resolves it; the next group_interval tells us.
    ended = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    await inject_alerts(am.url, [{"labels": labels, "endsAt": ended}])
    body = (await hook.wait_for(hook_with("ContractFiring", "resolved"), what="resolved")).json()
    (r,) = AlertmanagerWebhook().parse(body).alerts
    assert r.status is AlertStatus.RESOLVED
    assert r.ends_at is not None and r.starts_at is not None and r.ends_at > r.starts_at
    assert (r.fingerprint, r.group_key) == (a.fingerprint, a.group_key)


@servers
async def test_max_alerts_truncation_is_counted(tmp_path: Path, hook: Catcher) -> None:
    async with alertmanager(tmp_path, hook.url(HOOK), max_alerts=3) as server:
        await inject_alerts(server.url, [{"labels": {"alertname": "Bulk", "instance": f"i{n}"}} for n in range(5)])
        body = (await hook.wait_for(hook_with("Bulk"), what="the bulk group")).json()
    batch = AlertmanagerWebhook().parse(body)
    assert len(batch.alerts) == 3
    assert batch.truncated == 2
    assert {a.fingerprint for a in batch.alerts} <= {
        label_fingerprint({"alertname": "Bulk", "instance": f"i{n}"}) for n in range(5)
    }


@servers
async def test_the_native_slack_receiver_sees_the_same_alerts(tmp_path: Path, hook: Catcher) -> None:
    async with alertmanager(tmp_path, hook.url(HOOK), slack_api_url=hook.url("/slack/T0/B0/X")) as server:
        await inject_alerts(server.url, [{"labels": {"alertname": "Both"}, "annotations": {"summary": "twice"}}])
        await hook.wait_for(hook_with("Both"), what="the webhook")
        slack = await hook.wait_for(lambda c: c.path == "/slack/T0/B0/X", what="the Slack post")
    attachment = slack.json()["attachments"][0]
    assert attachment["title"] == "Both is firing"
    assert "twice" in attachment["text"]


@servers
async def test_alerts_filter_by_matchers(am: RunningAlertmanager, api: AlertmanagerAPI) -> None:
    port: AlertManager = api
    await inject_alerts(
        am.url,
        [
            {"labels": {"alertname": "Filtered", "service": "api", "severity": "warning"}},
            {"labels": {"alertname": "Filtered", "service": "web", "severity": "critical"}},
            {"labels": {"alertname": "Other", "path": 'say "hi"'}, "generatorURL": "http://gen/x"},
        ],
    )
    every = await port.alerts()
    assert {a.name for a in every} == {"Filtered", "Other"}
    assert [a.severity for a in every][0] is Severity.CRITICAL  # most severe first
    only_api = await port.alerts([Matcher("alertname", "Filtered"), Matcher("service", "api")])
    assert [a.label("service") for a in only_api] == ["api"]
    (a,) = only_api
    assert a.status is AlertStatus.FIRING and a.ends_at is None
    assert a.fingerprint == label_fingerprint({"alertname": "Filtered", "service": "api", "severity": "warning"})
    not_api = await port.alerts(
        [Matcher("service", "api", is_equal=False), Matcher("alertname", "Filt.*", is_regex=True)]
    )
    assert [a.label("service") for a in not_api] == ["web"]
    # A value with quotes survives the filter syntax.
    (quoted,) = await port.alerts([Matcher("path", 'say "hi"')])
    assert quoted.name == "Other" and quoted.generator_url == "http://gen/x"


@servers
async def test_silence_hides_the_alert_until_it_is_expired(am: RunningAlertmanager, api: AlertmanagerAPI) -> None:
    await inject_alerts(am.url, [{"labels": {"alertname": "Noisy", "service": "api"}}])
    matchers = [Matcher("alertname", "Noisy")]
    await wait_until(lambda: api.alerts(matchers), what="the alert")

    ends = datetime.now(UTC) + timedelta(hours=1)
    sid = await api.silence(matchers, ends, "U0ALICE", "deploying, ack from chat")

    async def silenced() -> bool:
        return not await api.alerts(matchers, silenced=False) and bool(await api.alerts(matchers))

    await wait_until(silenced, what="the alert to show as silenced")
    (s,) = [s for s in await api.silences() if s.id == sid]
    assert s.state == "active"
    assert s.matchers == (Matcher("alertname", "Noisy"),)
    assert (s.created_by, s.comment) == ("U0ALICE", "deploying, ack from chat")
    assert abs((s.ends_at - ends).total_seconds()) < 1
    assert s.starts_at <= datetime.now(UTC)

    await api.expire(sid)
    (s,) = [s for s in await api.silences() if s.id == sid]
    assert s.state == "expired"
    await wait_until(lambda: api.alerts(matchers, silenced=False), what="the alert to show again")
    await api.expire(sid)  # expiring an expired silence is fine


@servers
async def test_an_unknown_silence_is_not_found(api: AlertmanagerAPI) -> None:
    with pytest.raises(AdapterNotFound, match="no silence `c5449657-6eb8-48e5-8a15-da0246d26268`"):
        await api.expire("c5449657-6eb8-48e5-8a15-da0246d26268")
    with pytest.raises(AdapterError, match=r"Alertmanager: refused silence `nope`: .*uuid"):
        await api.expire("nope")


@servers
@pytest.mark.parametrize(
    ("matchers", "said"),
    [
        ([Matcher("alertname", "(", is_regex=True)], "invalid regular expression"),
        ([Matcher("", "x")], "invalid label name"),
        ([Matcher("alertname", ".*", is_regex=True)], "at least one matcher must not match the empty string"),
        ([], "at least one matcher"),
    ],
)
async def test_a_bad_silence_says_what_alertmanager_said(
    api: AlertmanagerAPI, matchers: list[Matcher], said: str
) -> None:
    with pytest.raises(AdapterError, match=f"^Alertmanager: .*{said}") as err:
        await api.silence(matchers, datetime.now(UTC) + timedelta(hours=1), "U0ALICE", "x")
    assert not isinstance(err.value, AdapterUnavailable | AdapterTimeout | AdapterNotFound)


@servers
async def test_a_silence_ending_in_the_past_is_refused(api: AlertmanagerAPI) -> None:
    with pytest.raises(AdapterError, match=r"^Alertmanager: a silence must end in the future, not at 20"):
        await api.silence([Matcher("a", "b")], datetime.now(UTC) - timedelta(minutes=1), "U0ALICE", "x")


@servers
async def test_a_bad_filter_says_what_alertmanager_said(api: AlertmanagerAPI) -> None:
    with pytest.raises(AdapterError, match="Alertmanager: refused the alerts: bad matcher format"):
        await api.alerts([Matcher("not a name", "x")])


@servers
async def test_check_names_the_version(am: RunningAlertmanager, api: AlertmanagerAPI) -> None:
    line = await api.check()
    assert line.startswith("Alertmanager 0.") and line.endswith(f" at {am.url}")


@servers
async def test_alertmanager_down_is_unavailable_quickly(am: RunningAlertmanager) -> None:
    client = AlertmanagerAPI(am.url, timeout=20)
    try:
        assert await client.check()
        await am.stop()
        started = time.monotonic()
        # A pooled keep-alive connection may be the one that notices: "the connection ... broke".
        gone = rf"^Alertmanager: (can't reach|the connection to) {re.escape(am.url)}"
        with pytest.raises(AdapterUnavailable, match=gone):
            await client.alerts()
        # Refused at once, not after the 20 s timeout.
        assert time.monotonic() - started < 10
    finally:
        await client.close()


async def test_nothing_listening_is_unavailable() -> None:
    client = AlertmanagerAPI(f"http://127.0.0.1:{free_port()}", timeout=20)
    try:
        with pytest.raises(AdapterUnavailable, match=r"^Alertmanager: can't reach .*Connection refused"):
            await client.silences()
    finally:
        await client.close()


async def test_no_answer_is_a_timeout(black_hole: str) -> None:
    client = AlertmanagerAPI(black_hole, timeout=0.5)
    try:
        with pytest.raises(AdapterTimeout, match=r"^Alertmanager: no answer from .* within 0\.5 s"):
            await client.check()
    finally:
        await client.close()


async def test_the_token_is_sent_and_a_refusal_is_explained() -> None:
    seen: list[str] = []

    async def status(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        if request.headers.get("Authorization") != "Bearer right":
            return web.json_response({"code": 401, "message": "unauthorized"}, status=401)
        return web.json_response({"versionInfo": {"version": "0.25.0"}})

    app = web.Application()
    app.router.add_get("/api/v2/status", status)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    good, bad = AlertmanagerAPI(url, token="right", timeout=5), AlertmanagerAPI(url, token="wrong", timeout=5)
    try:
        assert await good.check() == f"Alertmanager 0.25.0 at {url}"
        with pytest.raises(AdapterError, match="refused our credentials \\(401: unauthorized\\)"):
            await bad.check()
        assert seen == ["Bearer right", "Bearer wrong"]
    finally:
        await good.close()
        await bad.close()
        await runner.cleanup()


async def test_close_then_use_again_makes_a_new_session(black_hole: str) -> None:
    client = AlertmanagerAPI(black_hole, timeout=0.2)
    await client.close()
    with pytest.raises(AdapterTimeout):
        await client.check()
    await client.close()
    await asyncio.sleep(0)
