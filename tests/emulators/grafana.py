"""A strict Grafana emulator for tests: dashboards, the render API, health, and webhook bodies.

One aiohttp server on 127.0.0.1 (port 0, read back). Facts come from the reference sheet
(``reference/operate-monitor-plan-apis.md`` section 3) and grafana/grafana (``pkg/api/render.go``,
``pkg/services/rendering/rendering.go``, ``public/views/error.html``).

Use::

    async with GrafanaEmulator() as emu:
        emu.add_dashboard("svc-api", "API", panels={1: "Latency", 2: "Errors"})
        api = GrafanaAPI(emu.url, token=emu.token, timeout=5)
        png = await api.render("svc-api", 1, width=400, height=200)

Routes (the names that fault injection and ``seen`` use):

* ``health``: ``GET /api/health``, no auth (as in Grafana) -> ``{"commit", "database", "version"}``;
  ``database_ok = False`` gives 503 with ``"database": "failing"``.
* ``org``: ``GET /api/org`` -> ``{"id": 1, "name": "Main Org."}``.
* ``dashboard``: ``GET /api/dashboards/uid/<uid>`` -> ``{"dashboard": {...panels...}, "meta": {...}}``;
  unknown uid -> 404 ``{"message": "Dashboard not found"}``; ``add_dashboard(..., readable=False)``
  -> 403 ``{"message": "Access denied to this dashboard"}``.
* ``render``: ``GET /render/d-solo/<uid>/<slug>`` (or without the slug). Query as Grafana reads it:
  ``width`` (default 800), ``height`` (default 400), ``timeout``, ``scale`` must be numbers, else 400
  "Render parameters error" (an HTML page, as ``c.Handle`` renders); ``panelId`` is required (the
  emulator is stricter than Grafana, whose renderer would just draw an empty page).
  * With ``renderer=True`` (the default): a real PNG, exactly ``width x height`` (times ``scale``),
    drawn per panel (its own colour and a line), with ``Last-Modified`` = now, as a render written to
    ``data/png`` just before it is served. A dashboard or panel that does not exist -> 500 "Rendering
    failed." (the real renderer waits for a panel that never appears; the emulator's choice).
  * With ``renderer=False``: 200 and the **placeholder**, like ``renderUnavailableImage``: one static
    PNG (``PLACEHOLDER_SIZE``, dark, whatever size was asked for) served like ``http.ServeFile``
    serves a file: ``Content-Type: image/png``, ``Accept-Ranges: bytes``, ``Content-Length`` and
    ``Last-Modified`` = ``placeholder_modified`` (the install time; default 2024-03-05). The pixels
    are the emulator's own (Grafana's picture is not reproduced); what the adapter keys on, a fixed
    size and an old file, is what the real one has. ``placeholder_matches_request = True`` serves it
    at the requested size (a stock image that happens to fit), ``send_last_modified = False`` drops
    the header (as some proxies do).
  * Errors look like Grafana's: 500 with its HTML error page whose ``<h2>`` is "Rendering failed."
    (``fail_next("render")``) or, with ``fail_next("render", message=TIMEOUT_MESSAGE)``, the timeout text.

Auth (strict): ``Authorization: Bearer <token>`` on everything but ``/api/health``. Another token ->
401 ``{"message": "invalid API key"}``. No header: ``/api/*`` -> 401 ``{"message": "Unauthorized"}``,
``/render/*`` -> 302 to ``/login`` (a page route); with ``anonymous=True`` a request without a header is
served as an anonymous Viewer. Unknown paths -> 404 ``{"message": "Not found"}``.

Fault injection: ``fail_next(route, status=500, count=1, message=None)`` (``"*"`` for any route),
``slow(route, seconds, count=None)``, ``down()`` / ``up()`` (connection refused, same port and state).
Records: ``requests`` (every request: method, path, query, headers, status, route), ``renders``
(each render answered: uid, panel, size, time range, tz, placeholder or not), ``server_errors``.

``webhook_payload()`` builds a unified-alerting webhook body; ``DOCS_EXAMPLE`` is the reference's example.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import math
import struct
import zlib
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any
from urllib.parse import quote

from aiohttp import web

__all__ = [
    "DOCS_EXAMPLE",
    "PLACEHOLDER_SIZE",
    "TIMEOUT_MESSAGE",
    "GrafanaEmulator",
    "Render",
    "Seen",
    "make_png",
    "webhook_payload",
]

PLACEHOLDER_SIZE = (600, 300)
TIMEOUT_MESSAGE = "timeout error. You can set timeout in seconds with &timeout url parameter"

Json = dict[str, Any]

DOCS_EXAMPLE: Json = {
    "receiver": "My Super Webhook",
    "status": "firing",
    "orgId": 1,
    "alerts": [
        {
            "status": "firing",
            "labels": {"alertname": "High memory usage", "team": "blue", "zone": "us-1"},
            "annotations": {
                "description": "The system has high memory usage",
                "runbook_url": "https://myrunbook.com/runbook/1234",
                "summary": "This alert was triggered for zone us-1",
            },
            "startsAt": "2021-10-12T09:51:03.157076+02:00",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "https://play.grafana.org/alerting/1afz29v7z/edit",
            "fingerprint": "c6eadffa33fcdf37",
            "silenceURL": "https://play.grafana.org/alerting/silence/new?alertmanager=grafana"
            "&matcher=alertname%3DHigh+memory+usage&matcher=team%3Dblue&matcher=zone%3Dus-1",
            "dashboardURL": "",
            "panelURL": "",
            "values": {"B": 44.23943737541908, "C": 1},
            "valueString": "[ metric='' labels={} value=14151.331895396988 ]",
        }
    ],
    "groupLabels": {"alertname": "High memory usage"},
    "commonLabels": {"alertname": "High memory usage", "team": "blue", "zone": "us-1"},
    "commonAnnotations": {
        "description": "The system has high memory usage",
        "runbook_url": "https://myrunbook.com/runbook/1234",
        "summary": "This alert was triggered for zone us-1",
    },
    "externalURL": "https://play.grafana.org/",
    "version": "1",
    "groupKey": '{}/{alertname="High memory usage"}:{alertname="High memory usage"}',
    "truncatedAlerts": 0,
    "title": "[FIRING:1] High memory usage (blue us-1)",
    "state": "alerting",
    "message": "**Firing**\n\nValue: B=44.23943737541908, C=1\nLabels:\n - alertname = High memory usage\n",
}


def webhook_payload(
    alerts: Iterable[Mapping[str, Any]] = (),
    *,
    root: str = "https://grafana.example.com/",
    receiver: str = "opsloop",
    group_labels: Mapping[str, str] | None = None,
    group_key: str | None = None,
    truncated: int = 0,
    **extra: Any,
) -> Json:
    """A webhook body as Grafana sends it. Each alert needs ``labels``; the rest gets Grafana's shape:
    firing by default, ``endsAt`` the zero time while firing, ``silenceURL`` with one ``matcher`` per
    label, ``dashboardURL``/``panelURL`` when ``dashboard_uid``/``panel_id`` are given."""
    root = root.rstrip("/")
    out: list[Json] = []
    for a in alerts:
        a = dict(a)
        labels = {str(k): str(v) for k, v in dict(a.pop("labels")).items()}
        status = a.pop("status", "firing")
        uid = a.pop("dashboard_uid", None)
        panel = a.pop("panel_id", None)
        dash = f"{root}/d/{uid}?from=1700000000000&to=1700003600000" if uid else ""
        matchers = "&".join(f"matcher={quote(f'{k}={v}', safe='')}" for k, v in sorted(labels.items()))
        alert: Json = {
            "status": status,
            "labels": labels,
            "annotations": a.pop("annotations", {}),
            "startsAt": a.pop("startsAt", "2026-11-26T04:21:41.075Z"),
            "endsAt": a.pop("endsAt", "0001-01-01T00:00:00Z" if status == "firing" else "2026-11-26T04:30:00Z"),
            "generatorURL": f"{root}/alerting/grafana/rule-{labels.get('alertname', 'x')}/view",
            "fingerprint": a.pop("fingerprint", hashlib.sha256(repr(sorted(labels.items())).encode()).hexdigest()[:16]),
            "silenceURL": f"{root}/alerting/silence/new?alertmanager=grafana&{matchers}",
            "dashboardURL": dash,
            "panelURL": f"{dash}&viewPanel={panel}" if dash and panel is not None else "",
            "values": a.pop("values", {"A": 1.0}),
            "valueString": a.pop("valueString", "[ var='A' labels={} value=1 ]"),
        }
        alert.update(a)
        out.append(alert)
    firing = sum(1 for a in out if a["status"] == "firing")
    common = dict(set.intersection(*(set(a["labels"].items()) for a in out))) if out else {}
    glabels = dict(group_labels) if group_labels is not None else {"alertname": common.get("alertname", "")}
    body: Json = {
        "receiver": receiver,
        "status": "firing" if firing else "resolved",
        "orgId": 1,
        "alerts": out,
        "groupLabels": glabels,
        "commonLabels": common,
        "commonAnnotations": {},
        "externalURL": root + "/",
        "version": "1",
        "groupKey": group_key or "{}/{}:" + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(glabels.items())) + "}",
        "truncatedAlerts": truncated,
        "title": f"[FIRING:{firing}] {glabels.get('alertname', '')}",
        "state": "alerting" if firing else "ok",
        "message": "",
    }
    body.update(extra)
    return body


# ----------------------------------------------------------------------------------------------
# PNG drawing (zlib + struct; no imaging library)
# ----------------------------------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def make_png(
    width: int,
    height: int,
    *,
    background: tuple[int, int, int] = (17, 18, 23),
    line: tuple[int, int, int] | None = (115, 191, 105),
    phase: float = 0.0,
) -> bytes:
    """An RGB PNG of ``width x height``: a background and, unless ``line`` is None, a wavy line across."""
    stride = width * 3
    pixels = bytearray(bytes(background) * (width * height))
    if line is not None and width > 0 and height > 0:
        colour = bytes(line)
        for x in range(width):
            y0 = (0.5 + 0.35 * math.sin(phase + x * 6.0 / max(width, 1))) * (height - 1)
            for dy in (-1, 0, 1):  # three pixels thick, visible in a thumbnail
                y = min(height - 1, max(0, round(y0) + dy))
                i = y * stride + x * 3
                pixels[i : i + 3] = colour
    raw = b"".join(b"\x00" + bytes(pixels[r * stride : (r + 1) * stride]) for r in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw, 6)) + _chunk(b"IEND", b"")


_PANEL_COLOURS = [(115, 191, 105), (242, 204, 12), (87, 148, 242), (255, 120, 10), (184, 119, 217), (242, 73, 92)]


# ----------------------------------------------------------------------------------------------
# Records and state
# ----------------------------------------------------------------------------------------------


@dataclass
class Seen:
    """One HTTP request as the emulator received and answered it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    status: int = 0
    route: str = ""


@dataclass
class Render:
    """One answered render request."""

    uid: str
    panel_id: int
    width: int
    height: int
    from_ms: int
    to_ms: int
    tz: str
    placeholder: bool


@dataclass
class Dashboard:
    uid: str
    title: str
    panels: dict[int, str]
    collapsed: dict[int, str] = field(default_factory=dict)  # panels inside a collapsed row
    readable: bool = True

    def all_panels(self) -> dict[int, str]:
        return {**self.panels, **self.collapsed}

    def to_json(self) -> Json:
        panels: list[Json] = [
            {"id": pid, "title": t, "type": "timeseries", "gridPos": {"h": 8, "w": 12, "x": 0, "y": i * 8}}
            for i, (pid, t) in enumerate(self.panels.items())
        ]
        if self.collapsed:
            panels.append(
                {
                    "id": 900 + len(panels),
                    "type": "row",
                    "title": "More",
                    "collapsed": True,
                    "panels": [{"id": pid, "title": t, "type": "timeseries"} for pid, t in self.collapsed.items()],
                }
            )
        return {"uid": self.uid, "title": self.title, "panels": panels, "schemaVersion": 39, "version": 1}


@dataclass
class _Fault:
    status: int
    message: str | None
    remaining: int


@dataclass
class _Slow:
    seconds: float
    remaining: int | None


class _Answer(Exception):
    def __init__(self, response: web.StreamResponse) -> None:
        super().__init__(response.status)
        self.response = response


def _error_page(status: int, title: str) -> web.Response:
    """An error page shaped like Grafana's ``public/views/error.html`` (the title goes in ``<h2>``)."""
    html = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8" /><title>Grafana - Error</title></head>'
        '<body class="fs-variant-error"><main class="fs-error-page"><section>'
        "<header><h1>Grafana<span> / Server Error</span></h1><p>Sadly something went wrong.</p></header>"
        f"<h2>{title}</h2><p>Check the Grafana server logs for the detailed error message.</p>"
        "</section></main></body></html>"
    )
    return web.Response(status=status, text=html, content_type="text/html")


# ----------------------------------------------------------------------------------------------
# The emulator
# ----------------------------------------------------------------------------------------------


class GrafanaEmulator:
    """See the module docstring. Use ``async with GrafanaEmulator() as emu:``."""

    def __init__(
        self,
        *,
        token: str = "grafana-test-token",
        renderer: bool = True,
        version: str = "10.4.1",
        anonymous: bool = False,
        placeholder_modified: datetime = datetime(2024, 3, 5, 9, 12, 44, tzinfo=UTC),
    ) -> None:
        self.token = token
        self.renderer = renderer
        self.version = version
        self.anonymous = anonymous
        self.database_ok = True
        self.placeholder_modified = placeholder_modified
        self.placeholder_matches_request = False
        self.send_last_modified = True
        self.placeholder = make_png(*PLACEHOLDER_SIZE, background=(32, 34, 38), line=None)

        self.port = 0
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._down = False

        self.dashboards: dict[str, Dashboard] = {}
        self.requests: list[Seen] = []
        self.renders: list[Render] = []
        self.server_errors: list[str] = []
        self._faults: dict[str, list[_Fault]] = {}
        self._slow: dict[str, _Slow] = {}

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> GrafanaEmulator:
        """Listen on 127.0.0.1 on a free port (read back into ``port``)."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # A short shutdown: handlers held by ``slow`` are cut off instead of delaying ``stop``.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await self._site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        """Stop the server."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            self._site = None

    async def __aenter__(self) -> GrafanaEmulator:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        """Grafana's root URL, as configured in ``integrations.grafana.url``."""
        if not self.port:
            raise RuntimeError("GrafanaEmulator is not started")
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ set-up

    def add_dashboard(
        self,
        uid: str,
        title: str = "",
        panels: Mapping[int, str] | None = None,
        *,
        collapsed: Mapping[int, str] | None = None,
        readable: bool = True,
    ) -> Dashboard:
        """A dashboard with ``panels`` (id -> title) and, in a collapsed row, ``collapsed`` ones."""
        d = Dashboard(uid, title or uid, dict(panels or {1: "Panel"}), dict(collapsed or {}), readable)
        self.dashboards[uid] = d
        return d

    # ------------------------------------------------------------------ faults

    def fail_next(self, route: str = "*", *, status: int = 500, count: int = 1, message: str | None = None) -> None:
        """The next ``count`` requests to ``route`` answer ``status`` (render: Grafana's HTML error page)."""
        self._faults.setdefault(route, []).append(_Fault(status, message, count))

    def slow(self, route: str, seconds: float, count: int | None = None) -> None:
        """Delay the answers of ``route`` (``"*"``: every route) by ``seconds``."""
        self._slow[route] = _Slow(seconds, count)

    def clear_faults(self) -> None:
        """Forget injected failures and delays (``down`` is separate: use ``up``)."""
        self._faults.clear()
        self._slow.clear()

    async def down(self) -> None:
        """Stop listening (connection refused); requests on kept-alive connections are dropped."""
        self._down = True
        if self._site is not None:
            await self._site.stop()
            self._site = None

    async def up(self) -> None:
        """Listen again on the same port; all state is kept."""
        self._down = False
        if self._site is None and self._runner is not None:
            self._site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
            await self._site.start()

    def _take_fault(self, route: str) -> _Fault | None:
        for key in (route, "*"):
            faults = self._faults.get(key, [])
            if faults:
                f = faults[0]
                f.remaining -= 1
                if f.remaining <= 0:
                    faults.pop(0)
                return f
        return None

    def _take_slow(self, route: str) -> _Slow | None:
        for key in (route, "*"):
            s = self._slow.get(key)
            if s is None:
                continue
            if s.remaining is not None:
                if s.remaining <= 0:
                    del self._slow[key]
                    continue
                s.remaining -= 1
            return s
        return None

    def seen(self, route: str | None = None) -> list[Seen]:
        """Logged requests, optionally only those of one route."""
        return [s for s in self.requests if route is None or s.route == route]

    # ------------------------------------------------------------------ HTTP

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self._down:
            # Kept-alive connections survive a closed listening socket; cut them like a dead host.
            if request.transport is not None:
                request.transport.close()
            raise web.HTTPServiceUnavailable()
        seen = Seen(request.method, request.path, dict(request.query), dict(request.headers))
        self.requests.append(seen)
        try:
            route, handler = self._resolve(request)
            seen.route = route
            if route != "health":
                self._check_auth(request, route)
            slow = self._take_slow(route)
            if slow is not None:
                await asyncio.sleep(slow.seconds)
            fault = self._take_fault(route)
            if fault is not None:
                raise _Answer(self._fault_response(route, fault))
            response = await handler(request)
        except _Answer as ans:
            response = ans.response
        except Exception as err:  # an emulator bug: answer 500 and keep it for the test to see
            self.server_errors.append(f"{request.method} {request.path}: {type(err).__name__}: {err}")
            response = web.json_response({"message": "emulator error"}, status=500)
        seen.status = response.status
        return response

    def _resolve(self, request: web.Request) -> tuple[str, Callable[[web.Request], Awaitable[web.StreamResponse]]]:
        path, method = request.path, request.method
        if method == "GET" and path == "/api/health":
            return "health", self._health
        if method == "GET" and path == "/api/org":
            return "org", self._org
        if method == "GET" and path.startswith("/api/dashboards/uid/"):
            return "dashboard", self._dashboard
        if method == "GET" and path.startswith("/render/d-solo/"):
            return "render", self._render
        raise _Answer(web.json_response({"message": "Not found"}, status=404))

    def _check_auth(self, request: web.Request, route: str) -> None:
        auth = request.headers.get("Authorization")
        if auth is None:
            if self.anonymous:
                return
            if route == "render":
                # A page route: Grafana sends the browser to its login page.
                raise _Answer(web.Response(status=302, headers={"Location": "/login"}))
            raise _Answer(web.json_response({"message": "Unauthorized"}, status=401))
        if auth != f"Bearer {self.token}":
            raise _Answer(web.json_response({"message": "invalid API key"}, status=401))

    def _fault_response(self, route: str, fault: _Fault) -> web.StreamResponse:
        if route == "render":
            if fault.status == 500:
                return _error_page(500, fault.message or "Rendering failed.")
            return _error_page(fault.status, fault.message or "Server error")
        return web.json_response({"message": fault.message or f"emulated {fault.status}"}, status=fault.status)

    async def _health(self, request: web.Request) -> web.StreamResponse:
        body = {"commit": "0123456789", "database": "ok" if self.database_ok else "failing", "version": self.version}
        return web.json_response(body, status=200 if self.database_ok else 503)

    async def _org(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"id": 1, "name": "Main Org.", "address": {}})

    async def _dashboard(self, request: web.Request) -> web.StreamResponse:
        uid = request.path.removeprefix("/api/dashboards/uid/")
        d = self.dashboards.get(uid)
        if d is None:
            return web.json_response({"message": "Dashboard not found"}, status=404)
        if not d.readable:
            return web.json_response({"message": "Access denied to this dashboard"}, status=403)
        slug = d.title.lower().replace(" ", "-")
        meta = {"slug": slug, "url": f"/d/{uid}/{slug}", "folderTitle": "General", "canEdit": False}
        return web.json_response({"dashboard": copy.deepcopy(d.to_json()), "meta": meta})

    async def _render(self, request: web.Request) -> web.StreamResponse:
        parts = request.path.removeprefix("/render/d-solo/").split("/")
        uid = parts[0]
        q = request.query
        try:
            width = int(q.get("width", "800"))
            height = int(q.get("height", "400"))
            int(q.get("timeout", "60"))
            scale = float(q.get("scale", "1"))
            from_ms = int(q.get("from", "0"))
            to_ms = int(q.get("to", "0"))
        except ValueError:
            return _error_page(400, "Render parameters error")
        if "panelId" not in q or not q["panelId"].isdigit():
            return _error_page(400, "Render parameters error")
        panel = int(q["panelId"])
        tz = q.get("tz", "")
        if not self.renderer:
            self.renders.append(Render(uid, panel, width, height, from_ms, to_ms, tz, placeholder=True))
            body = self.placeholder
            if self.placeholder_matches_request:
                body = make_png(width, height, background=(32, 34, 38), line=None)
            return self._file_response(body, self.placeholder_modified)
        d = self.dashboards.get(uid)
        if d is None or panel not in d.all_panels() or not d.readable:
            return _error_page(500, "Rendering failed.")
        self.renders.append(Render(uid, panel, width, height, from_ms, to_ms, tz, placeholder=False))
        colours = _PANEL_COLOURS[panel % len(_PANEL_COLOURS)]
        w, h = round(width * scale), round(height * scale)
        body = make_png(w, h, line=colours, phase=panel * 0.7)
        return self._file_response(body, datetime.now(UTC))

    def _file_response(self, body: bytes, modified: datetime) -> web.Response:
        # Shaped like Go's http.ServeFile: the file's mtime as Last-Modified, byte ranges offered.
        headers = {"Accept-Ranges": "bytes"}
        if self.send_last_modified:
            headers["Last-Modified"] = format_datetime(modified.astimezone(UTC), usegmt=True)
        return web.Response(body=body, content_type="image/png", headers=headers)
