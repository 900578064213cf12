"""Contract tests of the Grafana adapters: the webhook model, and the render API against the emulator."""

from __future__ import annotations

import copy
import io
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime

import aiohttp
import pydantic
import pytest
import pytest_asyncio

from adapters.grafana import GrafanaAPI, GrafanaWebhook, placeholder_reason, png_size, severity_of
from bot.ports import (
    AdapterError,
    AdapterNotFound,
    AdapterTimeout,
    AdapterUnavailable,
    AlertSource,
    AlertStatus,
    Dashboards,
    Severity,
)
from tests.emulators.grafana import (
    DOCS_EXAMPLE,
    PLACEHOLDER_SIZE,
    TIMEOUT_MESSAGE,
    GrafanaEmulator,
    make_png,
    webhook_payload,
)

UID = "svc-api"
PLACEHOLDER_MESSAGE = "has no image renderer installed; install the grafana-image-renderer plugin"


@pytest_asyncio.fixture
async def emu() -> AsyncIterator[GrafanaEmulator]:
    async with GrafanaEmulator() as e:
        e.add_dashboard(UID, "API service", {1: "Latency", 2: "Errors"}, collapsed={7: "Saturation"})
        yield e
        assert not e.server_errors


@pytest_asyncio.fixture
async def api(emu: GrafanaEmulator) -> AsyncIterator[GrafanaAPI]:
    adapter = GrafanaAPI(emu.url, token=emu.token, timeout=5.0)
    yield adapter
    await adapter.close()


def test_the_adapters_implement_their_ports() -> None:
    source: AlertSource = GrafanaWebhook()
    dashboards: Dashboards = GrafanaAPI("http://grafana.invalid", timeout=1)
    assert source.name == "grafana"
    assert dashboards is not None


# --- the webhook --------------------------------------------------------------------------------------------


def test_the_docs_example_parses() -> None:
    batch = GrafanaWebhook().parse(copy.deepcopy(DOCS_EXAMPLE))
    assert batch.source == "grafana"
    assert batch.group_labels == (("alertname", "High memory usage"),)
    assert batch.truncated == 0
    (a,) = batch.alerts
    assert a.source == "grafana"
    assert a.fingerprint == "c6eadffa33fcdf37"
    assert a.status is AlertStatus.FIRING
    assert a.name == "High memory usage"
    assert a.severity is Severity.INFO  # no severity label: as the Alertmanager adapter reads it
    assert a.group_key == DOCS_EXAMPLE["groupKey"]
    assert a.labels == (("alertname", "High memory usage"), ("team", "blue"), ("zone", "us-1"))
    assert a.annotation("runbook_url") == "https://myrunbook.com/runbook/1234"
    assert a.starts_at == datetime(2021, 10, 12, 9, 51, 3, 157076, tzinfo=timezone(timedelta(hours=2)))
    assert a.ends_at is None  # the 0001-01-01 placeholder of a firing alert
    assert a.summary == "This alert was triggered for zone us-1"
    assert a.value == "B=44.2394, C=1"
    links = dict(a.links)
    assert links == {
        "rule": "https://play.grafana.org/alerting/1afz29v7z/edit",
        "silence": DOCS_EXAMPLE["alerts"][0]["silenceURL"],
        "runbook": "https://myrunbook.com/runbook/1234",
    }  # the empty dashboardURL/panelURL are left out
    assert a.generator_url is None  # Grafana's generatorURL opens the rule; it holds no PromQL


def test_a_body_as_bytes_or_text_parses_too() -> None:
    raw = json.dumps(DOCS_EXAMPLE)
    assert GrafanaWebhook().parse(raw) == GrafanaWebhook().parse(raw.encode()) == GrafanaWebhook().parse(DOCS_EXAMPLE)


def test_a_resolved_alert_linked_to_a_panel() -> None:
    body = webhook_payload(
        [
            {
                "labels": {"alertname": "HighLatency", "service": "api", "severity": "Critical"},
                "annotations": {"description": "p99 above 2 s"},
                "status": "resolved",
                "endsAt": "2026-11-26T04:30:00.5Z",
                "dashboard_uid": UID,
                "panel_id": 1,
                "values": None,
                "valueString": "[ var='A' labels={service=api} value=2.31 ]",
                "imageURL": "https://grafana.example.com/public/img/attachments/abc.png",
            }
        ]
    )
    (a,) = GrafanaWebhook().parse(body).alerts
    assert a.status is AlertStatus.RESOLVED
    assert a.severity is Severity.CRITICAL
    assert a.ends_at == datetime(2026, 11, 26, 4, 30, 0, 500000, tzinfo=UTC)
    assert a.summary == "p99 above 2 s"  # the description when there is no summary
    assert a.value == "[ var='A' labels={service=api} value=2.31 ]"  # valueString when there are no values
    links = dict(a.links)
    assert links["dashboard"].startswith(f"https://grafana.example.com/d/{UID}?")
    assert links["panel"].endswith("&viewPanel=1")
    assert links["image"].endswith("abc.png")
    assert [w for w, _ in a.links] == ["rule", "dashboard", "panel", "silence", "image"]


@pytest.mark.parametrize(
    ("label", "severity"),
    [
        ("critical", Severity.CRITICAL),
        (" CRIT ", Severity.CRITICAL),
        ("page", Severity.CRITICAL),
        ("error", Severity.CRITICAL),
        ("High", Severity.CRITICAL),
        ("warning", Severity.WARNING),
        ("warn", Severity.WARNING),
        ("medium", Severity.WARNING),
        ("info", Severity.INFO),
        ("low", Severity.INFO),
        ("whatever", Severity.INFO),
        ("", Severity.INFO),
        (None, Severity.INFO),
    ],
)
def test_severity_labels_are_normalised(label: str | None, severity: Severity) -> None:
    assert severity_of(label) is severity
    # One label, one meaning: the Alertmanager adapter reads it the same way.
    alertmanager = pytest.importorskip("adapters.alertmanager")
    assert alertmanager.severity_of(label) is severity


def test_extra_fields_are_tolerated_and_private_labels_dropped() -> None:
    body = webhook_payload(
        [{"labels": {"alertname": "Disk", "__alert_rule_uid__": "r1", "grafana_folder": "infra", "n": 3}}],
        group_labels={"alertname": "Disk", "__private__": "x"},
        truncated=2,
        brandNew={"nested": True},
    )
    body["alerts"][0]["somethingNew"] = [1, 2]
    batch = GrafanaWebhook().parse(body)
    (a,) = batch.alerts
    assert dict(a.labels) == {"alertname": "Disk", "grafana_folder": "infra", "n": "3"}
    assert batch.group_labels == (("alertname", "Disk"),)
    assert batch.truncated == 2


def test_alerts_of_one_delivery_share_its_group_key() -> None:
    body = webhook_payload(
        [{"labels": {"alertname": "Disk", "host": "a"}}, {"labels": {"alertname": "Disk", "host": "b"}}],
        group_key='{}:{alertname="Disk"}',
    )
    a, b = GrafanaWebhook().parse(body).alerts
    assert a.group_key == b.group_key == '{}:{alertname="Disk"}'
    assert a.fingerprint != b.fingerprint


def test_a_missing_fingerprint_gets_a_stable_one_from_the_labels() -> None:
    body = copy.deepcopy(DOCS_EXAMPLE)
    del body["alerts"][0]["fingerprint"]
    first = GrafanaWebhook().parse(body).alerts[0].fingerprint
    body["alerts"][0]["labels"] = dict(reversed(list(body["alerts"][0]["labels"].items())))
    assert GrafanaWebhook().parse(body).alerts[0].fingerprint == first
    assert len(first) == 16


def test_an_unreadable_time_loses_the_time_not_the_alert() -> None:
    body = copy.deepcopy(DOCS_EXAMPLE)
    body["alerts"][0]["startsAt"] = "yesterday"
    body["alerts"][0]["endsAt"] = None
    (a,) = GrafanaWebhook().parse(body).alerts
    assert a.starts_at is None and a.ends_at is None


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"version": "4"}, "Alertmanager webhook"),
        ({"version": "2"}, "unsupported Grafana webhook version '2'"),
        ({"version": None}, "no `version`"),
        ({"alerts": None}, "no `alerts` list"),
        ({"alerts": "many"}, "no `alerts` list"),
    ],
)
def test_other_versions_and_missing_alerts_are_refused_with_a_reason(change: dict[str, object], reason: str) -> None:
    body = copy.deepcopy(DOCS_EXAMPLE)
    for k, v in change.items():
        if v is None:
            body.pop(k)
        else:
            body[k] = v
    with pytest.raises(ValueError, match=reason):
        GrafanaWebhook().parse(body)


def test_malformed_bodies_are_refused() -> None:
    with pytest.raises(ValueError, match="must be a JSON object"):
        GrafanaWebhook().parse([DOCS_EXAMPLE])
    with pytest.raises(ValueError, match="not JSON"):
        GrafanaWebhook().parse(b"{nope")
    body = copy.deepcopy(DOCS_EXAMPLE)
    body["alerts"][0]["status"] = "pending"
    with pytest.raises(pydantic.ValidationError):
        GrafanaWebhook().parse(body)


# --- rendering ------------------------------------------------------------------------------------------------


async def test_render_returns_the_panel_png_at_the_size_asked(api: GrafanaAPI, emu: GrafanaEmulator) -> None:
    before_ms = int(time.time() * 1000)
    png = await api.render(UID, 2, minutes=30, width=400, height=200)
    assert png_size(png) == (400, 200)
    (render,) = emu.renders
    assert (render.uid, render.panel_id, render.width, render.height, render.tz) == (UID, 2, 400, 200, "UTC")
    assert not render.placeholder
    assert render.to_ms - render.from_ms == 30 * 60_000
    assert render.to_ms >= before_ms
    (seen,) = emu.seen("render")
    assert seen.path == f"/render/d-solo/{UID}/_"
    assert seen.query["orgId"] == "1"
    assert seen.query["panelId"] == "2"
    assert 1 <= int(seen.query["timeout"]) <= 5  # Grafana gives up before we do
    assert seen.headers["Authorization"] == f"Bearer {emu.token}"
    assert emu.seen("dashboard")[0].headers["Authorization"] == f"Bearer {emu.token}"


async def test_each_panel_gets_its_own_picture_and_defaults_apply(api: GrafanaAPI, emu: GrafanaEmulator) -> None:
    one = await api.render(UID, 1)
    two = await api.render(UID, 2)
    assert png_size(one) == png_size(two) == (1000, 500)
    assert one != two
    assert emu.renders[0].to_ms - emu.renders[0].from_ms == 60 * 60_000


async def test_the_render_is_a_real_png(api: GrafanaAPI) -> None:
    image = pytest.importorskip("PIL.Image")  # Pillow comes with matplotlib
    png = await api.render(UID, 1, width=120, height=60)
    with image.open(io.BytesIO(png)) as im:
        im.load()  # decodes every row: the CRCs and the zlib stream are sound
        assert (im.format, im.size, im.mode) == ("PNG", (120, 60), "RGB")
        assert len(im.getcolors()) == 2  # the background and the panel's line


async def test_a_panel_in_a_collapsed_row_renders(api: GrafanaAPI) -> None:
    assert png_size(await api.render(UID, 7, width=300, height=100)) == (300, 100)


async def test_the_placeholder_of_a_grafana_without_renderer_is_an_error(emu: GrafanaEmulator) -> None:
    emu.renderer = False
    api = GrafanaAPI(emu.url, token=emu.token, timeout=5.0)
    try:
        with pytest.raises(AdapterError, match=PLACEHOLDER_MESSAGE) as err:
            await api.render(UID, 1, width=400, height=200)
    finally:
        await api.close()
    assert type(err.value) is AdapterError
    assert str(err.value).startswith("Grafana: has no image renderer installed")
    w, h = PLACEHOLDER_SIZE
    assert f"a {w}x{h} image where a render is exactly the 400x200 asked for" in str(err.value)
    # What Grafana does: HTTP 200 and a PNG, so the status alone proves nothing.
    assert emu.seen("render")[0].status == 200
    assert emu.renders[0].placeholder


async def test_a_placeholder_of_the_requested_size_is_caught_by_its_age(emu: GrafanaEmulator) -> None:
    emu.renderer = False
    emu.placeholder_matches_request = True
    api = GrafanaAPI(emu.url, token=emu.token, timeout=5.0)
    try:
        with pytest.raises(AdapterError, match=PLACEHOLDER_MESSAGE) as err:
            await api.render(UID, 1, width=600, height=300)
    finally:
        await api.close()
    assert "last changed" in str(err.value) and "days before it was served" in str(err.value)


async def test_a_placeholder_without_last_modified_is_caught_by_its_size(emu: GrafanaEmulator) -> None:
    emu.renderer = False
    emu.send_last_modified = False
    api = GrafanaAPI(emu.url, token=emu.token, timeout=5.0)
    try:
        with pytest.raises(AdapterError, match=PLACEHOLDER_MESSAGE):
            await api.render(UID, 1)
    finally:
        await api.close()


def test_placeholder_detection_keys_on_size_and_age_not_bytes() -> None:
    now = datetime(2026, 11, 26, 4, 0, tzinfo=UTC)
    date = format_datetime(now, usegmt=True)
    png = make_png(40, 20)
    fresh = {"Date": date, "Last-Modified": format_datetime(now - timedelta(seconds=2), usegmt=True)}
    old = {"Date": date, "Last-Modified": format_datetime(now - timedelta(days=400), usegmt=True)}
    assert placeholder_reason(png, fresh, 40, 20) is None  # a render
    assert placeholder_reason(png, {}, 40, 20) is None  # no headers to judge by: the size fits
    assert placeholder_reason(png, old, 40, 20) is not None  # a stock file that happens to fit
    assert placeholder_reason(png, fresh, 41, 20) is not None  # the wrong size
    assert placeholder_reason(b"GIF89a", fresh, 40, 20) is not None


async def test_a_render_failure_says_rendering_failed(api: GrafanaAPI, emu: GrafanaEmulator) -> None:
    emu.fail_next("render")
    with pytest.raises(AdapterError, match=r"failed to render panel 1 \(Latency\) of `svc-api`: Rendering failed\."):
        await api.render(UID, 1)
    assert emu.seen("render")[0].status == 500


async def test_a_renderer_timeout_is_an_adapter_timeout(api: GrafanaAPI, emu: GrafanaEmulator) -> None:
    emu.fail_next("render", message=TIMEOUT_MESSAGE)
    with pytest.raises(AdapterTimeout, match="gave up rendering panel 1"):
        await api.render(UID, 1)


async def test_an_unknown_dashboard_is_not_found(api: GrafanaAPI, emu: GrafanaEmulator) -> None:
    with pytest.raises(AdapterNotFound, match="has no dashboard with uid `nope`"):
        await api.render("nope", 1)
    assert emu.seen("render") == []


async def test_an_unknown_panel_is_not_found_and_the_panels_are_named(api: GrafanaAPI, emu: GrafanaEmulator) -> None:
    with pytest.raises(AdapterNotFound, match=r"`svc-api` \(API service\) has no panel 9; its panels: 1 Latency"):
        await api.render(UID, 9)
    assert emu.seen("render") == []


async def test_a_dashboard_the_token_may_not_see(api: GrafanaAPI, emu: GrafanaEmulator) -> None:
    emu.add_dashboard("secret", "Secret", readable=False)
    with pytest.raises(AdapterError, match="403 Access denied to this dashboard"):
        await api.render("secret", 1)


async def test_a_wrong_render_url_is_not_found(api: GrafanaAPI, emu: GrafanaEmulator) -> None:
    emu.fail_next("render", status=404, message="Page not found")
    with pytest.raises(AdapterNotFound, match="has no render endpoint"):
        await api.render(UID, 1)


async def test_a_page_that_is_no_png(emu: GrafanaEmulator) -> None:
    async def html(request: object) -> aiohttp.web.Response:
        return aiohttp.web.Response(text="<html>login</html>", content_type="text/html")

    emu._render = html  # type: ignore[method-assign]  # a proxy answering for Grafana
    api = GrafanaAPI(emu.url, token=emu.token, timeout=5.0)
    try:
        with pytest.raises(AdapterError, match="with text/html instead of a PNG"):
            await api.render(UID, 1)
    finally:
        await api.close()


@pytest.mark.parametrize(("width", "height", "minutes"), [(9, 100, 60), (100, 3001, 60), (100, 100, 0)])
async def test_sizes_out_of_range_are_refused(
    api: GrafanaAPI, emu: GrafanaEmulator, width: int, height: int, minutes: int
) -> None:
    with pytest.raises(AdapterError, match="can't render"):
        await api.render(UID, 1, minutes=minutes, width=width, height=height)
    assert emu.requests == []


# --- auth, health, faults --------------------------------------------------------------------------------------


async def test_a_wrong_token_is_refused_with_a_hint(emu: GrafanaEmulator) -> None:
    api = GrafanaAPI(emu.url, token="wrong", timeout=5.0)
    try:
        with pytest.raises(AdapterError, match=r"refused the token \(401 invalid API key\).*token_env"):
            await api.render(UID, 1)
        with pytest.raises(AdapterError, match="refused the token"):
            await api.check()
    finally:
        await api.close()


async def test_without_a_token_grafana_asks_for_one(emu: GrafanaEmulator) -> None:
    api = GrafanaAPI(emu.url, timeout=5.0)
    try:
        with pytest.raises(AdapterError, match=r"wants a login \(401 Unauthorized\): set integrations.grafana"):
            await api.render(UID, 1)
    finally:
        await api.close()
    assert "Authorization" not in emu.requests[-1].headers


async def test_a_login_redirect_is_reported_not_followed(emu: GrafanaEmulator) -> None:
    api = GrafanaAPI(emu.url, timeout=5.0)
    # Anonymous access lets the dashboard API answer; the render route still redirects to /login.
    emu.anonymous = True
    original = emu._check_auth

    def render_needs_login(request: aiohttp.web.Request, route: str) -> None:
        emu.anonymous = route != "render"
        original(request, route)

    emu._check_auth = render_needs_login  # type: ignore[method-assign]
    try:
        with pytest.raises(AdapterError, match=r"wants a login for /render \(redirect to /login\).*token_env"):
            await api.render(UID, 1)
    finally:
        await api.close()
    assert [s.route for s in emu.requests] == ["dashboard", "render"]  # /login was not fetched


async def test_anonymous_grafana_renders_without_a_token(emu: GrafanaEmulator) -> None:
    emu.anonymous = True
    api = GrafanaAPI(emu.url, timeout=5.0)
    try:
        assert png_size(await api.render(UID, 1, width=50, height=40)) == (50, 40)
        assert await api.check() == f"Grafana 10.4.1 at {emu.url}"
    finally:
        await api.close()
    assert emu.seen("org") == []  # nothing to prove without a token


async def test_check_names_the_version_and_proves_the_token(api: GrafanaAPI, emu: GrafanaEmulator) -> None:
    assert await api.check() == f"Grafana 10.4.1 at {emu.url}"
    health, org = emu.requests
    assert health.route == "health" and "Authorization" not in health.headers
    assert org.route == "org" and org.headers["Authorization"] == f"Bearer {emu.token}"


async def test_check_reports_a_failing_database(api: GrafanaAPI, emu: GrafanaEmulator) -> None:
    emu.database_ok = False
    with pytest.raises(AdapterUnavailable, match="database is failing"):
        await api.check()


async def test_a_grafana_that_is_down_or_slow(emu: GrafanaEmulator) -> None:
    api = GrafanaAPI(emu.url, token=emu.token, timeout=0.3)
    try:
        await emu.down()
        with pytest.raises(AdapterUnavailable, match="can't reach"):
            await api.check()
        await emu.up()
        assert (await api.check()).startswith("Grafana ")
        emu.slow("render", 2.0, count=1)
        with pytest.raises(AdapterTimeout, match=r"no answer within 0.3 s \(rendering panel 1"):
            await api.render(UID, 1)
        emu.fail_next("dashboard", status=503, message="upstream down")
        with pytest.raises(AdapterUnavailable, match="503 upstream down"):
            await api.render(UID, 1)
    finally:
        await api.close()
