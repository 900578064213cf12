"""Prometheus Alertmanager 0.25: its webhook (`AlertSource`) and its API v2 (`AlertManager`).

Webhook (`AlertmanagerWebhook.parse`), payload version "4":

* The payload is checked with pydantic models that ignore unknown fields (later Alertmanagers add
  some) but refuse a missing `alerts` or `groupKey`, values of the wrong type, and any `version`
  other than "4" (Grafana's webhook says "1" and means other things).
* `groupKey` is kept as an opaque string: it holds the route path
  (`{}/{alertname=~".+"}:{alertname="X"}`), so it is only ever compared, never parsed.
* A firing alert's `endsAt` is always the placeholder `0001-01-01T00:00:00Z` (Alertmanager hides an
  end that has not been reached yet), so any time before year 2 becomes `ends_at = None`.
* `fingerprint` is Alertmanager's; a hand-written payload without one gets the same hash
  Alertmanager would compute (FNV-1a over the sorted label set), so it still deduplicates.
* Severity, from the `severity` label, case-insensitively: critical, crit, page, error, high,
  fatal, emergency -> CRITICAL; warning, warn, medium -> WARNING; anything else (info, low, none, a
  missing label) -> INFO. An unknown word is not promoted to a page.
* `summary` is the `summary` annotation, else `description`, else `message` (kube-prometheus' older
  rules use `message`).
* Links, in this order when present: ("source", generatorURL), ("runbook", runbook_url annotation),
  ("alertmanager", the externalURL's alerts view filtered on the group's labels).
* `AlertBatch.truncated` is `truncatedAlerts` (alerts left out by `max_alerts`); note that
  `commonLabels` is computed after that truncation, which is why it is not used here.

API v2 (`AlertmanagerAPI`), on aiohttp with one lazily made session:

* `alerts()` is `GET /api/v2/alerts` with one `filter` per matcher (ANDed by Alertmanager) and
  `silenced=false` to hide silenced alerts. The API has no group key, so each alert's `group_key` is
  its fingerprint; `ends_at` is None while it fires (the API shows a projected end, not an end).
* `silence()` posts `isRegex` and `isEqual` on every matcher (0.25 answers 422 without `isRegex`)
  and starts the silence now.
* `expire()` is `DELETE /api/v2/silence/{id}`: 0.25 answers 500 "silence not found" for an unknown
  id (404 only in later versions); both become AdapterNotFound. Expiring an expired silence is fine.
* Errors name Alertmanager and quote it: 400 bodies are JSON strings ("bad matcher format: x"),
  422 bodies JSON objects ({"code":602,"message":"..."}); unreachable -> AdapterUnavailable,
  no answer within the timeout -> AdapterTimeout.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from urllib.parse import quote

import aiohttp
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictStr

from bot.ports import (
    AdapterError,
    AdapterNotFound,
    AdapterTimeout,
    AdapterUnavailable,
    Alert,
    AlertBatch,
    AlertStatus,
    Matcher,
    Severity,
    Silence,
)

TOOL = "Alertmanager"
SOURCE = "alertmanager"
WEBHOOK_VERSION = "4"

_CRITICAL = frozenset({"critical", "crit", "page", "error", "high", "fatal", "emergency"})
_WARNING = frozenset({"warning", "warn", "medium"})
_SUMMARY_KEYS = ("summary", "description", "message")

# FNV-1a 64, as prometheus/common model.LabelSet.Fingerprint uses it; 0xff separates names and values.
_FNV_OFFSET = 14695981039346656037
_FNV_PRIME = 1099511628211
_SEPARATOR = 0xFF


def severity_of(value: str | None) -> Severity:
    """Normalise a `severity` label value (see the module docstring for the words)."""
    word = (value or "").strip().lower()
    if word in _CRITICAL:
        return Severity.CRITICAL
    if word in _WARNING:
        return Severity.WARNING
    return Severity.INFO


def label_fingerprint(labels: Mapping[str, str]) -> str:
    """The fingerprint Alertmanager gives an alert with these labels (16 hex digits)."""
    h = _FNV_OFFSET
    for name in sorted(labels):
        for part in (name, labels[name]):
            for byte in part.encode():
                h = ((h ^ byte) * _FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
            h = ((h ^ _SEPARATOR) * _FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def matcher_text(m: Matcher) -> str:
    """A matcher as Alertmanager's parser reads it (`name="value"`), with `\\`, `"` and newlines escaped."""
    value = m.value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    op = ("=~" if m.is_regex else "=") if m.is_equal else ("!~" if m.is_regex else "!=")
    return f'{m.name}{op}"{value}"'


def alerts_view_url(base: str, labels: Mapping[str, str]) -> str:
    """Alertmanager's UI listing the alerts that carry these labels."""
    return _view_url(base, tuple(sorted(labels.items())))


@functools.lru_cache(maxsize=4096)
def _view_url(base: str, labels: tuple[tuple[str, str], ...]) -> str:
    # Every alert of a delivery links to the same group view: built once, not once per alert.
    if not labels:
        return f"{base.rstrip('/')}/#/alerts"
    expr = "{" + ",".join(matcher_text(Matcher(k, v)) for k, v in labels) + "}"
    return f"{base.rstrip('/')}/#/alerts?filter={quote(expr, safe='')}"


# --- the webhook --------------------------------------------------------------------------------------


def _only_text(value: Any) -> Any:
    # pydantic would take a number as seconds since 1970; Alertmanager only ever sends RFC 3339 text.
    if not isinstance(value, str | datetime):
        raise ValueError("must be an RFC 3339 time string")
    return value


_Time = Annotated[datetime, BeforeValidator(_only_text)]


class _WebhookAlert(BaseModel):
    model_config = ConfigDict(extra="ignore")

    status: Literal["firing", "resolved"]
    labels: dict[StrictStr, StrictStr]
    annotations: dict[StrictStr, StrictStr] = Field(default_factory=dict)
    startsAt: _Time
    endsAt: _Time | None = None
    generatorURL: StrictStr = ""
    fingerprint: StrictStr = ""


class _WebhookPayload(BaseModel):
    model_config = ConfigDict(extra="ignore")

    version: StrictStr
    groupKey: StrictStr
    alerts: list[_WebhookAlert]
    status: Literal["firing", "resolved"] = "firing"
    receiver: StrictStr = ""
    groupLabels: dict[StrictStr, StrictStr] = Field(default_factory=dict)
    commonLabels: dict[StrictStr, StrictStr] = Field(default_factory=dict)
    commonAnnotations: dict[StrictStr, StrictStr] = Field(default_factory=dict)
    externalURL: StrictStr = ""
    truncatedAlerts: int = Field(0, ge=0, strict=True)


class AlertmanagerWebhook:
    """`bot.ports.AlertSource` for Alertmanager's `webhook_configs` payload (version 4)."""

    name = SOURCE

    def parse(self, payload: Any) -> AlertBatch:
        """One delivery -> its alerts; ValueError (or pydantic's ValidationError) with the reason if malformed."""
        if isinstance(payload, bytes | str):
            try:
                payload = json.loads(payload)
            except ValueError as err:
                raise ValueError(f"the Alertmanager webhook body is not JSON: {err}") from None
        if not isinstance(payload, Mapping):
            raise ValueError(f"the Alertmanager webhook body must be a JSON object, not {type(payload).__name__}")
        version = payload.get("version")
        if version != WEBHOOK_VERSION:
            got = "no version" if version is None else f"version {json.dumps(version)}"
            raise ValueError(
                f"this is not an Alertmanager webhook payload opsloop understands: {got}, expected "
                f'"{WEBHOOK_VERSION}" (Grafana\'s webhook says "1": send it to /hooks/grafana)'
            )
        data = _WebhookPayload.model_validate(payload)
        group_key, external = data.groupKey, data.externalURL
        group_view = (
            alerts_view_url(external, data.groupLabels) if external and data.groupLabels else None
        )  # one link for every alert of the group
        alerts = []
        for a in data.alerts:
            # Built here, not per alert in a helper: this loop runs for every alert of every delivery.
            name = a.labels.get("alertname", "")
            annotations = a.annotations
            links: list[tuple[str, str]] = []
            if a.generatorURL:
                links.append(("source", a.generatorURL))
            if runbook := annotations.get("runbook_url"):
                links.append(("runbook", runbook))
            if external:
                # The card is per group: link to the group's alerts (by its labels), else to this alert's name.
                view = group_view or alerts_view_url(external, {"alertname": name} if name else {})
                links.append(("alertmanager", view))
            alerts.append(
                Alert(
                    source=SOURCE,
                    fingerprint=a.fingerprint or label_fingerprint(a.labels),
                    status=_STATUS[a.status],
                    name=name or "(no alertname)",
                    severity=severity_of(a.labels.get("severity")),
                    group_key=group_key,
                    labels=tuple(sorted(a.labels.items())),
                    annotations=tuple(sorted(annotations.items())),
                    starts_at=_real_time(a.startsAt),
                    ends_at=_real_time(a.endsAt),
                    summary=_summary(annotations),
                    links=tuple(links),
                    generator_url=a.generatorURL or None,
                )
            )
        return AlertBatch(
            source=SOURCE,
            alerts=tuple(alerts),
            group_labels=tuple(sorted(data.groupLabels.items())),
            truncated=data.truncatedAlerts,
        )


_STATUS = {s.value: s for s in AlertStatus}


def _real_time(t: datetime | None) -> datetime | None:
    """UTC, or None for Go's zero time (`0001-01-01T00:00:00Z`, "not ended yet")."""
    if t is None or t.year <= 1:
        return None
    # RFC 3339 always has an offset; a time without one is taken as UTC rather than local time.
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def _summary(annotations: Mapping[str, str]) -> str:
    for k in _SUMMARY_KEYS:
        if text := annotations.get(k):
            return text
    return ""


# --- API v2 ---------------------------------------------------------------------------------------------


class AlertmanagerAPI:
    """`bot.ports.AlertManager` over Alertmanager's API v2."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        timeout: float,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        """`url` is Alertmanager's base URL (its --web.external-url, e.g. http://alertmanager:9093);
        `token` is sent as a bearer token (for a proxy in front of it)."""
        self._url = url.rstrip("/")
        self._token = token
        self._timeout = timeout
        self._session = session
        self._owns_session = session is None

    async def close(self) -> None:
        """Close the HTTP session if this adapter made it."""
        if self._owns_session and self._session is not None and not self._session.closed:
            await self._session.close()
        if self._owns_session:
            self._session = None

    # ------------------------------------------------------------------ the port

    async def alerts(self, matchers: Sequence[Matcher] = (), *, silenced: bool = True) -> list[Alert]:
        """Alerts that fire now and match every matcher; without silenced ones when `silenced=False`."""
        params: list[tuple[str, str]] = [("filter", matcher_text(m)) for m in matchers]
        params.append(("silenced", "true" if silenced else "false"))
        data = await self._call("GET", "/api/v2/alerts", params=params, what="the alerts")
        now = datetime.now(UTC)
        alerts = [self._alert(a, now) for a in _objects(data, "/api/v2/alerts", "labels")]
        # Most severe first, then the oldest; the API's order is by fingerprint, meaningless to people.
        alerts.sort(key=lambda a: (a.severity.rank, a.starts_at or now, a.name, a.fingerprint))
        return alerts

    async def silence(self, matchers: Sequence[Matcher], ends_at: datetime, created_by: str, comment: str) -> str:
        """Create a silence from now until `ends_at`; its id."""
        if not matchers:
            raise AdapterError(TOOL, 'a silence needs at least one matcher (e.g. alertname="HighLatency")')
        now = datetime.now(UTC)
        if _aware(ends_at) <= now:
            # Alertmanager would say "start time must be before end time" (the start being now).
            raise AdapterError(TOOL, f"a silence must end in the future, not at {_rfc3339(ends_at)}")
        body = {
            "matchers": [
                {"name": m.name, "value": m.value, "isRegex": m.is_regex, "isEqual": m.is_equal} for m in matchers
            ],
            "startsAt": _rfc3339(now),
            "endsAt": _rfc3339(ends_at),
            "createdBy": created_by,
            "comment": comment,
        }
        data = await self._call("POST", "/api/v2/silences", json_body=body, what="the silence")
        sid = data.get("silenceID") if isinstance(data, dict) else None
        if not isinstance(sid, str) or not sid:
            raise AdapterError(TOOL, "created a silence but did not say its id")
        return sid

    async def expire(self, silence_id: str) -> None:
        """End a silence now; AdapterNotFound when there is no such silence."""
        await self._call(
            "DELETE",
            f"/api/v2/silence/{quote(silence_id, safe='')}",
            what=f"silence `{silence_id}`",
            missing=f"no silence `{silence_id}`",
        )

    async def silences(self) -> list[Silence]:
        """Every silence Alertmanager keeps: active first, then pending, then expired; soonest end first."""
        data = await self._call("GET", "/api/v2/silences", what="the silences")
        out = [s for s in (self._silence(d) for d in _objects(data, "/api/v2/silences", "id")) if s is not None]
        order = {"active": 0, "pending": 1, "expired": 2}
        # Live ones by the soonest end; expired ones by the latest end (what was just lifted comes first).
        out.sort(key=lambda s: (order.get(s.state, 3), s.ends_at.timestamp() * (-1 if s.state == "expired" else 1)))
        return out

    async def check(self) -> str:
        """Reach Alertmanager; "Alertmanager 0.25.0 at URL"."""
        data = await self._call("GET", "/api/v2/status", what="its status")
        info = data.get("versionInfo") if isinstance(data, dict) else None
        version = info.get("version") if isinstance(info, dict) else None
        if not isinstance(version, str):
            raise AdapterError(TOOL, f"{self._url}/api/v2/status did not say a version (is this Alertmanager?)")
        return f"{TOOL} {version} at {self._url}"

    # ------------------------------------------------------------------ helpers

    def _alert(self, a: Mapping[str, Any], now: datetime) -> Alert:
        labels = _str_map(a.get("labels"))
        annotations = _str_map(a.get("annotations"))
        fingerprint = str(a.get("fingerprint") or label_fingerprint(labels))
        ends_at = _parse_time(a.get("endsAt"))
        resolved = ends_at is not None and ends_at <= now
        name = labels.get("alertname", "")
        generator = a.get("generatorURL") if isinstance(a.get("generatorURL"), str) else ""
        links: list[tuple[str, str]] = []
        if generator:
            links.append(("source", str(generator)))
        if runbook := annotations.get("runbook_url"):
            links.append(("runbook", runbook))
        links.append(("alertmanager", alerts_view_url(self._url, {"alertname": name} if name else {})))
        return Alert(
            source=SOURCE,
            fingerprint=fingerprint,
            status=AlertStatus.RESOLVED if resolved else AlertStatus.FIRING,
            name=name or "(no alertname)",
            severity=severity_of(labels.get("severity")),
            # The API has no group key (that is the route's business); each alert stands for itself.
            group_key=fingerprint,
            labels=tuple(sorted(labels.items())),
            annotations=tuple(sorted(annotations.items())),
            starts_at=_parse_time(a.get("startsAt")),
            ends_at=ends_at if resolved else None,
            summary=_summary(annotations),
            links=tuple(links),
            generator_url=str(generator) or None,
        )

    @staticmethod
    def _silence(d: Mapping[str, Any]) -> Silence | None:
        starts, ends = _parse_time(d.get("startsAt")), _parse_time(d.get("endsAt"))
        sid = d.get("id")
        if not isinstance(sid, str) or starts is None or ends is None:
            return None
        matchers = tuple(
            Matcher(
                name=str(m.get("name", "")),
                value=str(m.get("value", "")),
                is_regex=bool(m.get("isRegex", False)),
                # Optional in the API, and true when absent (older silences have no isEqual).
                is_equal=bool(m.get("isEqual", True)),
            )
            for m in d.get("matchers") or []
            if isinstance(m, dict)
        )
        status = d.get("status")
        state = status.get("state") if isinstance(status, dict) else None
        return Silence(
            id=sid,
            matchers=matchers,
            starts_at=starts,
            ends_at=ends,
            created_by=str(d.get("createdBy") or ""),
            comment=str(d.get("comment") or ""),
            state=str(state or "unknown"),
        )

    def _session_now(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            if not self._owns_session:
                raise AdapterError(TOOL, "the HTTP session handed to the adapter is closed")
            self._session = aiohttp.ClientSession()
        return self._session

    async def _call(
        self,
        method: str,
        path: str,
        *,
        what: str,
        params: Sequence[tuple[str, str]] = (),
        json_body: Any = None,
        missing: str | None = None,
    ) -> Any:
        """One API call; JSON back (None for an empty body), or the AdapterError family."""
        headers = {"Accept": "application/json", "User-Agent": "opsloop"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        try:
            async with self._session_now().request(
                method,
                self._url + path,
                params=list(params),
                json=json_body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self._timeout),
            ) as resp:
                status = resp.status
                text = await resp.text(errors="replace")
        except TimeoutError:
            raise AdapterTimeout(TOOL, f"no answer from {self._url} within {self._timeout:g} s") from None
        except aiohttp.ClientConnectorError as err:
            # asyncio's message is "Connect call failed (addr)"; the errno says why ("Connection refused").
            errno = err.os_error.errno
            reason = os.strerror(errno) if errno else str(err.os_error)
            raise AdapterUnavailable(TOOL, f"can't reach {self._url} ({reason})") from err
        except aiohttp.ClientError as err:
            raise AdapterUnavailable(TOOL, f"the connection to {self._url} broke ({type(err).__name__})") from err
        said = _what_it_said(text)
        if status < 300:
            if not text.strip():
                return None
            try:
                return json.loads(text)
            except ValueError:
                raise AdapterError(
                    TOOL, f"answered {method} {path} with something that is not JSON (is {self._url} Alertmanager?)"
                ) from None
        # 0.25 answers an unknown silence id with 500 "silence not found" (later versions: 404).
        if missing and (status == 404 or (status == 500 and "not found" in said.lower())):
            raise AdapterNotFound(TOOL, missing)
        if status == 404:
            raise AdapterNotFound(TOOL, f"{self._url}{path} does not exist ({said}); is this Alertmanager's API v2?")
        if status in (401, 403):
            raise AdapterError(TOOL, f"refused our credentials ({status}: {said}); check the token opsloop uses")
        if status in (400, 422):
            raise AdapterError(TOOL, f"refused {what}: {said}")
        raise AdapterError(TOOL, f"answered {status} to {method} {path}: {said}")


def _objects(data: Any, path: str, key: str) -> list[Mapping[str, Any]]:
    """An answer that must be a list of objects, each with `key`. Anything else is not Alertmanager
    talking (a proxy's page, a cut-off body): reading it as "none" would hide the fault."""
    if not isinstance(data, list) or not all(isinstance(x, dict) and key in x for x in data):
        raise AdapterError(TOOL, f"answered GET {path} with something that is not a list of its objects")
    return data


def _what_it_said(text: str) -> str:
    """The message of an error body: a JSON string (400), an object's `message` (422), else the text."""
    try:
        data = json.loads(text)
    except ValueError:
        return text.strip()[:300] or "no message"
    if isinstance(data, str):
        return data.strip() or "no message"
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        return str(data["message"])
    return text.strip()[:300]


def _aware(t: datetime) -> datetime:
    # A naive time is taken as UTC (the bot's clock is UTC), never as the host's local time.
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def _rfc3339(t: datetime) -> str:
    return _aware(t).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        return None
    return _real_time(t)


def _str_map(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items()}
