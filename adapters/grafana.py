"""Grafana: alerts from its unified-alerting webhook, and panel images from its render API.

`GrafanaWebhook` (`bot.ports.AlertSource`, name "grafana") reads the webhook contact point's body
(`"version": "1"`; Alertmanager's is "4"). Unknown extra fields are tolerated; another version, a
missing `alerts` list or a body that is not a JSON object is refused with a reason (a contact point with
a custom `payload.template` sends whatever its template renders, which we cannot read). Each alert maps
like an Alertmanager alert:

* `fingerprint`, `status` (firing/resolved) and labels/annotations as Grafana sends them. Labels named
  `__like_this__` are Grafana's private ones and are dropped (Grafana drops them from the group and
  common labels itself); values that arrive as numbers become strings.
* `name` is the `alertname` label; `group_key` is the payload's opaque `groupKey`, never parsed.
* `severity` comes from the `severity` label with the same words as the Alertmanager adapter, so a
  rule moved between the two keeps its meaning (case and surrounding spaces ignored): critical, crit,
  page, error, high, fatal, emergency -> CRITICAL; warning, warn, medium -> WARNING; anything else
  (info, low, none, an unknown word, no label) -> INFO. An unknown word is never promoted: bake-time
  rollbacks trigger on CRITICAL.
* `startsAt`/`endsAt`: Grafana (like Alertmanager) sends `0001-01-01T00:00:00Z` as the end of a firing
  alert; that placeholder (and an unreadable time) becomes None. Times without a zone are UTC.
* `summary` is the `summary` annotation, else `description`.
* `value` is Grafana's `values` map written as `B=44.2394, C=1` (what Grafana's own default message
  shows); `valueString` (`[ var='B' labels={} value=44.2 ]`, harder to read) only when `values` is absent.
* `links`: ("rule", generatorURL), ("dashboard", dashboardURL), ("panel", panelURL), ("silence",
  silenceURL), ("runbook", the `runbook_url` annotation), ("image", imageURL); empty ones are left out.
  `generator_url` stays None: Grafana's generatorURL opens the rule, it is no Prometheus graph link.

`GrafanaAPI` (`bot.ports.Dashboards`) renders one panel as PNG with
`GET /render/d-solo/<uid>/_?orgId=1&from=<ms>&to=<ms>&panelId=<id>&width=&height=&tz=UTC&timeout=<s>`
and a service account token as `Authorization: Bearer`. Choices:

* It first reads the dashboard (`GET /api/dashboards/uid/<uid>`). That is the only way to answer "no
  such dashboard" or "no such panel" honestly: `/render` itself never says 404 for them (the renderer
  draws whatever the page shows, and without a renderer Grafana answers its placeholder anyway).
  Panels inside collapsed rows count.
* `timeout=` asks Grafana's renderer to give up a little before we do, so a slow dashboard gives
  Grafana's own timeout message instead of a dead connection.
* Redirects are not followed: Grafana answers an unauthenticated page request (as `/render/...` is)
  with a redirect to `/login`, which we report as "set a token", not as an HTML page that is no PNG.

Placeholder detection. Without an image renderer, Grafana answers `/render` with **200** and the file
`public/img/rendering_plugin_not_installed.png` (`RenderingService.render` -> `renderUnavailableImage`,
served by `http.ServeFile`); when the renderer's concurrency limit is hit it likewise serves a stock
`rendering_limit_<theme>.png`. We do not key on the stock image's bytes or hash: they are not the same
across Grafana versions, and a hash would silently stop matching the day Grafana redraws the picture.
We key on two properties that any stock file has, whatever it looks like:

1. **Size.** A real render of a solo panel is exactly the `width` x `height` viewport we asked for (we
   send no `scale`, so Grafana uses 1). A file on disk cannot know the size we asked for. The PNG's
   IHDR chunk gives its size without decoding the image.
2. **Age.** `http.ServeFile` sends the file's modification time as `Last-Modified`. A render is written
   to Grafana's `data/png` directory moments before it is served, so its `Last-Modified` is within
   seconds of the response's `Date` (both from Grafana's clock, so our clock does not matter); a stock
   image is as old as the Grafana installation.

Either one marks the image as a placeholder (so a stock image that happened to have our size is still
caught by its age, and one served through a proxy that drops `Last-Modified` by its size). Sizes are
limited to 10..3000 px, what the image renderer honours as asked (`validateImageOptions` replaces a
side under 10 px by its default and clamps one over `maxWidth`/`maxHeight`, 3000 by default), so a
real render is never resized into looking like a placeholder. The error says to install the
grafana-image-renderer plugin (the usual case) and mentions the busy-renderer case.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlencode

import aiohttp
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from bot.ports import (
    AdapterError,
    AdapterNotFound,
    AdapterTimeout,
    AdapterUnavailable,
    Alert,
    AlertBatch,
    AlertStatus,
    Severity,
)

TOOL = "Grafana"

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MIN_SIDE = 10  # the image renderer replaces a smaller width or height by its default (1000x500)
MAX_SIDE = 3000  # ... and clamps a larger one to its default maximum viewport
STALE_AFTER_S = 300.0  # a render is served seconds after it is written; a stock image is months old
_MAX_BODY = 32 * 1024 * 1024  # a 3000x3000 panel PNG is a few MiB; more is not a panel image

# The same words as adapters/alertmanager.py (adapters do not import each other): one label, one meaning.
_CRITICAL = frozenset({"critical", "crit", "page", "error", "high", "fatal", "emergency"})
_WARNING = frozenset({"warning", "warn", "medium"})


def severity_of(value: str | None) -> Severity:
    """The normalised severity of a `severity` label value (see the module docstring); INFO if unknown."""
    word = (value or "").strip().lower()
    if word in _CRITICAL:
        return Severity.CRITICAL
    if word in _WARNING:
        return Severity.WARNING
    return Severity.INFO


# --- the webhook ---------------------------------------------------------------------------------------------


def _none_to_empty_str(value: object) -> object:
    return "" if value is None else value


def _none_to_empty_dict(value: object) -> object:
    return {} if value is None else value


Text = Annotated[str, BeforeValidator(_none_to_empty_str)]
StrMap = Annotated[dict[str, str], BeforeValidator(_none_to_empty_dict)]


class _Model(BaseModel):
    # Grafana adds fields over time: ignore what we do not read. Numbers sent where we expect text
    # (a label value from a templated label) are kept as their text rather than refusing the alert.
    model_config = ConfigDict(extra="ignore", populate_by_name=True, coerce_numbers_to_str=True, frozen=True)


class GrafanaAlertIn(_Model):
    """One alert of the webhook body (`ExtendedAlert` in grafana/alerting)."""

    status: Literal["firing", "resolved"]
    labels: StrMap = Field(default_factory=dict)
    annotations: StrMap = Field(default_factory=dict)
    starts_at: Text = Field("", alias="startsAt")
    ends_at: Text = Field("", alias="endsAt")
    generator_url: Text = Field("", alias="generatorURL")
    fingerprint: Text = ""
    silence_url: Text = Field("", alias="silenceURL")
    dashboard_url: Text = Field("", alias="dashboardURL")
    panel_url: Text = Field("", alias="panelURL")
    image_url: Text = Field("", alias="imageURL")
    values: dict[str, float | None] | None = None
    value_string: Text = Field("", alias="valueString")


class GrafanaPayloadIn(_Model):
    """The webhook body (`webhookMessage` in grafana/alerting receivers/webhook/v1)."""

    version: str
    alerts: list[GrafanaAlertIn]
    receiver: Text = ""
    status: Text = ""
    org_id: int | None = Field(None, alias="orgId")
    group_labels: StrMap = Field(default_factory=dict, alias="groupLabels")
    common_labels: StrMap = Field(default_factory=dict, alias="commonLabels")
    common_annotations: StrMap = Field(default_factory=dict, alias="commonAnnotations")
    external_url: Text = Field("", alias="externalURL")
    group_key: Text = Field("", alias="groupKey")
    truncated_alerts: int = Field(0, alias="truncatedAlerts")
    title: Text = ""
    state: Text = ""
    message: Text = ""


class GrafanaWebhook:
    """`bot.ports.AlertSource` for Grafana's unified-alerting webhook contact point."""

    name = "grafana"

    def parse(self, payload: Any) -> AlertBatch:
        """The alerts of one delivery; ValueError or pydantic.ValidationError with a reason if malformed."""
        if isinstance(payload, bytes | bytearray | str):
            try:
                payload = json.loads(payload)
            except ValueError as err:
                raise ValueError(f"the Grafana webhook body is not JSON ({err})") from None
        if not isinstance(payload, Mapping):
            raise ValueError("the Grafana webhook body must be a JSON object")
        _check_version(payload.get("version"))
        if not isinstance(payload.get("alerts"), list):
            raise ValueError("the Grafana webhook body has no `alerts` list")
        body = GrafanaPayloadIn.model_validate(payload)
        group_key = body.group_key or "labels:" + json.dumps(sorted(body.group_labels.items()))
        alerts = tuple(self._alert(a, group_key) for a in body.alerts)
        return AlertBatch(
            source=self.name,
            alerts=alerts,
            group_labels=_public(body.group_labels),
            truncated=max(0, body.truncated_alerts),
        )

    def _alert(self, a: GrafanaAlertIn, group_key: str) -> Alert:
        labels = _public(a.labels)
        annotations = _public(a.annotations)
        name = a.labels.get("alertname") or "Grafana alert"
        links = [
            ("rule", a.generator_url),
            ("dashboard", a.dashboard_url),
            ("panel", a.panel_url),
            ("silence", a.silence_url),
            ("runbook", a.annotations.get("runbook_url", "")),
            ("image", a.image_url),
        ]
        return Alert(
            source=self.name,
            fingerprint=a.fingerprint or _label_hash(a.labels),
            status=AlertStatus(a.status),
            name=name,
            severity=severity_of(a.labels.get("severity")),
            group_key=group_key,
            labels=labels,
            annotations=annotations,
            starts_at=_time(a.starts_at),
            ends_at=_time(a.ends_at),
            summary=a.annotations.get("summary") or a.annotations.get("description") or "",
            value=_value(a.values, a.value_string),
            links=tuple((what, url) for what, url in links if url),
        )


def _check_version(version: object) -> None:
    if version is None:
        raise ValueError(
            "the body has no `version`: not Grafana's webhook (a contact point with a custom payload template?)"
        )
    if str(version) == "1":
        return
    if str(version) == "4":
        raise ValueError(
            "this is an Alertmanager webhook (version 4), not Grafana's (version 1): send it to /hooks/alertmanager"
        )
    raise ValueError(f'unsupported Grafana webhook version {version!r} (this reads "1")')


def _public(items: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """Sorted pairs without Grafana's private `__name__` keys."""
    return tuple(sorted((k, v) for k, v in items.items() if not (k.startswith("__") and k.endswith("__"))))


def _label_hash(labels: Mapping[str, str]) -> str:
    # Grafana always sends a fingerprint; an older or proxied body without one still needs a stable id.
    return hashlib.sha256(json.dumps(sorted(labels.items())).encode()).hexdigest()[:16]


def _time(value: str) -> datetime | None:
    if not value:
        return None
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        return None  # an unreadable time loses the time, not the alert
    if t.year <= 1:
        return None  # Go's zero time: "no end yet"
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _value(values: Mapping[str, float | None] | None, value_string: str) -> str | None:
    if values:
        return ", ".join(f"{k}={_num(v)}" for k, v in sorted(values.items()))
    return value_string.strip() or None


def _num(v: float | None) -> str:
    if v is None or math.isnan(v):
        return "NaN"
    return f"{v:.6g}"


# --- the render API ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def message(self) -> str:
        """Grafana's explanation: `message` of a JSON error, or the text of an HTML error page."""
        data = self.json()
        if isinstance(data, dict) and isinstance(data.get("message"), str):
            return str(data["message"])
        text = self.body.decode("utf-8", "replace")
        if "<" in text:
            return _html_text(text)
        return " ".join(text.split())[:300]


class GrafanaAPI:
    """`bot.ports.Dashboards` for Grafana's HTTP API and render endpoint."""

    name = "grafana"

    def __init__(self, url: str, *, token: str | None = None, timeout: float) -> None:
        """`url` is Grafana's root URL (with its sub-path, if any); `token` a service account token."""
        self._url = url.rstrip("/")
        self._token = token or None
        self._timeout = float(timeout)
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        """Close the HTTP session (it is opened again on the next call)."""
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    # ------------------------------------------------------------------ the port

    async def render(
        self, dashboard_uid: str, panel_id: int, *, minutes: int = 60, width: int = 1000, height: int = 500
    ) -> bytes:
        """The panel as PNG over the last `minutes`; AdapterError if Grafana can't render (see the module doc)."""
        if not dashboard_uid:
            raise AdapterError(TOOL, "needs a dashboard uid to render a panel")
        if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
            raise AdapterError(
                TOOL, f"can't render {width}x{height}: width and height must be {MIN_SIDE} to {MAX_SIDE} pixels"
            )
        if minutes < 1:
            raise AdapterError(TOOL, f"can't render the last {minutes} minutes: give at least 1")
        title = await self._panel_title(dashboard_uid, panel_id)
        to_ms = int(time.time() * 1000)
        query = {
            "orgId": "1",
            "from": str(to_ms - minutes * 60_000),
            "to": str(to_ms),
            "panelId": str(panel_id),
            "width": str(width),
            "height": str(height),
            "tz": "UTC",
            # Grafana's renderer gives up first, so a slow dashboard gets its message, not our cut.
            "timeout": str(max(1, int(self._timeout * 0.8))),
        }
        what = f"panel {panel_id} ({title})" if title else f"panel {panel_id}"
        path = f"/render/d-solo/{quote(dashboard_uid, safe='')}/_"
        ans = await self._get(path, query, what=f"rendering {what} of dashboard `{dashboard_uid}`")
        if ans.status in (301, 302, 303, 307, 308):
            raise AdapterError(TOOL, self._login_hint(ans))
        if ans.status == 404:
            raise AdapterNotFound(
                TOOL, f"has no render endpoint at {self._url}/render (is the URL Grafana's root, with its sub-path?)"
            )
        if ans.status >= 500 and ans.status not in (502, 503, 504):
            msg = ans.message() or "no details"
            if "timeout" in msg.lower():
                raise AdapterTimeout(
                    TOOL, f"gave up rendering {what} of `{dashboard_uid}` ({msg}); its queries may be too slow"
                )
            raise AdapterError(
                TOOL, f"failed to render {what} of `{dashboard_uid}`: {msg} (Grafana's log, logger=rendering, says why)"
            )
        if ans.status != 200:
            raise self._error(ans, f"rendering {what} of `{dashboard_uid}`")
        if not ans.body.startswith(PNG_SIGNATURE):
            raise AdapterError(
                TOOL,
                f"answered the render request with {ans.content_type or 'something'} instead of a PNG "
                f"(is {self._url} Grafana's root URL?)",
            )
        reason = placeholder_reason(ans.body, ans.headers, width, height)
        if reason is not None:
            raise AdapterError(
                TOOL,
                "has no image renderer installed; install the grafana-image-renderer plugin (or set "
                "[rendering] server_url to a remote renderer) to get panel images. /render answered with "
                f"Grafana's stock placeholder picture ({reason}); Grafana sends a similar one when an "
                "installed renderer is busy ([rendering] concurrent_render_request_limit)",
            )
        return ans.body

    async def check(self) -> str:
        """Reach Grafana (`/api/health`) and, with a token, prove it works (`/api/org`)."""
        ans = await self._get("/api/health", None, what="GET /api/health", auth=False)
        data = ans.json()
        if ans.status == 503 or (isinstance(data, dict) and data.get("database") not in (None, "ok")):
            raise AdapterUnavailable(TOOL, f"at {self._url} answers, but its database is failing")
        if ans.status != 200 or not isinstance(data, dict):
            raise self._error(ans, "GET /api/health")
        if self._token:
            org = await self._get("/api/org", None, what="GET /api/org")
            if org.status != 200:
                raise self._error(org, "GET /api/org")
        return f"Grafana {data.get('version') or '(version unknown)'} at {self._url}"

    # ------------------------------------------------------------------ helpers

    async def _panel_title(self, uid: str, panel_id: int) -> str:
        """The panel's title; AdapterNotFound when the dashboard or the panel does not exist."""
        ans = await self._get(f"/api/dashboards/uid/{quote(uid, safe='')}", None, what=f"reading dashboard `{uid}`")
        if ans.status == 404:
            raise AdapterNotFound(TOOL, f"has no dashboard with uid `{uid}`")
        if ans.status != 200:
            raise self._error(ans, f"reading dashboard `{uid}`")
        data = ans.json()
        dash = data.get("dashboard") if isinstance(data, dict) else None
        if not isinstance(dash, dict):
            raise AdapterError(TOOL, f"answered with no dashboard JSON for `{uid}`")
        panels = list(_panels(dash))
        for pid, title in panels:
            if pid == panel_id:
                return title
        name = dash.get("title") or uid
        known = ", ".join(f"{pid} {title}".strip() for pid, title in panels[:12]) or "none"
        raise AdapterNotFound(TOOL, f"dashboard `{uid}` ({name}) has no panel {panel_id}; its panels: {known}")

    def _login_hint(self, ans: _Answer) -> str:
        where = ans.headers.get("Location", "")
        if self._token:
            return f"sent the render request to {where or 'another page'}: the token was not accepted there"
        return (
            f"wants a login for /render (redirect to {where or 'a login page'}): set integrations.grafana.token_env "
            "to a service account token with the Viewer role"
        )

    def _session_now(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # trust_env: honour HTTPS_PROXY / NO_PROXY like the other tools' clients do.
            self._session = aiohttp.ClientSession(trust_env=True)
        return self._session

    async def _get(self, path: str, query: Mapping[str, str] | None, *, what: str, auth: bool = True) -> _Answer:
        url = self._url + path + ("?" + urlencode(query) if query else "")
        headers = {"Accept": "image/png, application/json;q=0.9, */*;q=0.1", "User-Agent": "opsloop"}
        if auth and self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        try:
            async with self._session_now().get(
                url,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self._timeout),
            ) as resp:
                body = bytearray()
                async for chunk in resp.content.iter_any():
                    body += chunk
                    if len(body) > _MAX_BODY:
                        raise AdapterError(TOOL, f"answered {what} with more than {_MAX_BODY // 2**20} MiB")
                # A copy that stays case-insensitive: proxies speaking HTTP/2 send header names in lower case.
                return _Answer(resp.status, resp.headers.copy(), bytes(body))
        except TimeoutError:
            raise AdapterTimeout(TOOL, f"no answer within {self._timeout:g} s ({what})") from None
        except aiohttp.ClientConnectorError as err:
            reason = err.os_error.strerror or str(err.os_error)
            raise AdapterUnavailable(TOOL, f"can't reach {self._url} ({reason})") from err
        except aiohttp.ClientError as err:
            raise AdapterUnavailable(TOOL, f"the connection to {self._url} broke ({type(err).__name__})") from err

    def _error(self, ans: _Answer, what: str) -> AdapterError:
        msg = ans.message()
        detail = f"{ans.status} {msg}".strip()
        if ans.status == 401 and not self._token:
            return AdapterError(
                TOOL, f"wants a login ({detail}): set integrations.grafana.token_env to a service account token"
            )
        if ans.status == 401:
            return AdapterError(
                TOOL, f"refused the token ({detail}); check integrations.grafana.token_env (a service account token)"
            )
        if ans.status == 403:
            return AdapterError(TOOL, f"refused {what} ({detail}): the token's role may not see it")
        if ans.status == 404:
            return AdapterNotFound(TOOL, f"found nothing for {what} ({detail})")
        if ans.status in (502, 503, 504):
            return AdapterUnavailable(TOOL, f"answered {detail} (unavailable) to {what}")
        return AdapterError(TOOL, f"answered {detail} to {what}")


def _panels(dash: Mapping[str, Any]) -> Sequence[tuple[int, str]]:
    """(id, title) of every panel, including those inside rows (collapsed rows keep theirs in `panels`)."""
    out: list[tuple[int, str]] = []

    def walk(items: object) -> None:
        if not isinstance(items, list):
            return
        for p in items:
            if not isinstance(p, dict):
                continue
            if p.get("type") != "row" and isinstance(p.get("id"), int):
                out.append((int(p["id"]), str(p.get("title") or "")))
            walk(p.get("panels"))

    walk(dash.get("panels"))
    for row in dash.get("rows") or []:  # dashboards older than schema 16 kept panels in rows
        if isinstance(row, dict):
            walk(row.get("panels"))
    return out


# --- PNG facts ------------------------------------------------------------------------------------------------


def png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the PNG's IHDR chunk, None if `data` is no PNG."""
    if len(data) < 24 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def placeholder_reason(data: bytes, headers: Mapping[str, str], width: int, height: int) -> str | None:
    """Why this 200 answer to /render is a stock image and not our render, or None when it is a render."""
    size = png_size(data)
    if size != (width, height):
        got = f"{size[0]}x{size[1]}" if size else "unreadable"
        return f"a {got} image where a render is exactly the {width}x{height} asked for"
    age = _file_age(headers)
    if age is not None and age > STALE_AFTER_S:
        return f"an image file last changed {_ago(age)} before it was served, where a render is brand new"
    return None


def _file_age(headers: Mapping[str, str]) -> float | None:
    """Seconds between the file's Last-Modified and the response's Date (both Grafana's clock)."""
    modified = _http_date(headers.get("Last-Modified"))
    if modified is None:
        return None
    served = _http_date(headers.get("Date")) or datetime.now(UTC)
    return (served - modified).total_seconds()


def _http_date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        t = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _ago(seconds: float) -> str:
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.0f} days"
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:.0f} hours"
    return f"{seconds / 60:.0f} minutes"


def _html_text(html: str) -> str:
    """The gist of an HTML error page: Grafana's error page puts the title it was handed (such as
    "Rendering failed.") in its `<h2>`; any other page gives its visible text, shortened."""
    m = re.search(r"(?is)<h2\b[^>]*>(.*?)</h2>", html)
    body = m.group(1) if m else re.sub(r"(?is)<(script|style|head)\b.*?</\1>", " ", html)
    text = re.sub(r"(?s)<[^>]+>", " ", body)
    return " ".join(text.split())[:300]
