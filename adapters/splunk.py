"""Splunk: alerts from its webhook alert action, and searches through the REST API's export endpoint.

`SplunkWebhook` (`bot.ports.AlertSource`, name "splunk") reads the body of Splunk's built-in webhook
alert action: `sid`, `search_name` (null for an ad-hoc search), `results_link`, `owner`, `app` and
`result`, the **first result row only**, every value a string. Unknown extra fields are tolerated; a body
without `sid` or with a `result` that is not an object is refused. (The action cannot set headers, so
the bearer token travels in the URL's query string; `bot/web.py` checks it, not this module.)

* `fingerprint` is a hash of the search name and the result row (sorted by field name, values as
  strings). Splunk has no alert identity of its own: a scheduled search that still finds the same thing
  fires again on every run with a new `sid`. Hashing the name and the row makes the same row firing
  again the same alert (the core dedupes it), while a different row (another host, another count) is a
  new alert. Rows of raw events carry `_time`, so each event is its own alert, which is what such a
  search means.
* `status` is always FIRING: Splunk sends nothing when the condition clears, so nothing from Splunk
  ever resolves a card; people acknowledge or silence it.
* `name` is `search_name`, or "ad-hoc search"; `group_key` is `splunk:<name>`.
* `severity` comes from a `severity` field of the row when there is one: the words of the Alertmanager
  and Grafana adapters (critical, crit, page, error, high, fatal, emergency -> CRITICAL; warning, warn,
  medium -> WARNING; info, informational, low, none, notice, debug, ok -> INFO), Splunk's own scale
  (`severe` -> CRITICAL; 1 debug, 2 info -> INFO; 3 warning -> WARNING; 4 error, 5 severe, 6 fatal ->
  CRITICAL, as their words are) or else, like a row without the field, WARNING: a search someone
  turned into an alert deserves attention, but an unknown word never becomes a page.
* `labels` are the row's fields. `app`, `owner` and `sid` go to the annotations, not the labels: the
  core reads a label named `app` as the service an alert belongs to, and Splunk's `app` ("search") is
  the Splunk app that owns the search.
* `summary` is a `summary`, `description` or `message` field of the row, else the row itself
  (`sourcetype=mongod, count=8`); `starts_at` is the run time that scheduler sids carry
  (`scheduler_..._at_<epoch>_<n>`), else None; `links` has ("results", results_link).

`SplunkSearch` (`bot.ports.LogSearch`) runs one search with `POST /services/search/jobs/export`
(form-encoded `search`, `output_mode=json`, `earliest_time`, `latest_time`; `Authorization: Bearer
<token>`). Export streams results without a job to poll. Choices:

* The search gets a leading `search ` unless it starts with `search` or `|` (Splunk answers "Unknown
  search command 'index'" otherwise).
* The body is newline-separated JSON objects, read incrementally as it arrives: each has `preview`
  and `result` (one row) or `results` (a list), and maybe `messages`. Preview rows are skipped: a
  reporting search (`stats ...`) streams provisional tables before its final one.
* Reading stops at `limit` rows: the connection is closed, which makes Splunk cancel the search. The
  result is `truncated` unless that last row carried Splunk's `lastrow` marker.
* Columns are the row fields in first-seen order, without Splunk's internal fields (`_cd`, `_bkt`,
  `_si`, `_serial`, ...) except `_time` and `_raw`; a row without a column has "" there, a multivalue
  field is joined with ", ".
* `messages` of type ERROR or FATAL (in the stream, or in a 4xx body) become
  `AdapterError("Splunk", "<the message>")`; INFO and WARN ones are ignored.
* The whole search, streaming included, gets `timeout` seconds; past that it is an AdapterTimeout that
  says how many rows had arrived (a half-read result would look complete, so none is returned).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

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
    SearchResult,
    Severity,
)

TOOL = "Splunk"
EXPORT_PATH = "/services/search/jobs/export"
INFO_PATH = "/services/server/info"

_MAX_LINE = 16 * 1024 * 1024  # one result row; a larger one is not a log event we could show anyway
_KEEP_INTERNAL = frozenset({"_time", "_raw"})
_SCHEDULED_AT = re.compile(r"_at_(\d{9,11})_")
_SEARCH_START = re.compile(r"^(search\b|\|)", re.IGNORECASE)

# The Alertmanager and Grafana adapters' words (adapters do not import each other), plus Splunk's 1-6 scale.
_CRITICAL = frozenset({"critical", "crit", "page", "error", "high", "fatal", "emergency", "severe", "4", "5", "6"})
_WARNING = frozenset({"warning", "warn", "medium", "3"})
_INFO = frozenset({"info", "informational", "low", "none", "notice", "debug", "ok", "1", "2"})


def severity_of(value: str | None) -> Severity:
    """The normalised severity of a `severity` field (see the module docstring); WARNING if absent or unknown."""
    word = (value or "").strip().lower()
    if word in _CRITICAL:
        return Severity.CRITICAL
    if word in _INFO:
        return Severity.INFO
    return Severity.WARNING


def cell(value: object) -> str:
    """A result value as text: Splunk sends strings, lists for multivalue fields, rarely null."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return ", ".join(cell(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, sort_keys=True)


# --- the webhook ---------------------------------------------------------------------------------------------


def _none_to_empty_dict(value: object) -> object:
    return {} if value is None else value


class SplunkPayloadIn(BaseModel):
    """The body of Splunk's webhook alert action."""

    # Splunk may add fields; ignore what we do not read.
    model_config = ConfigDict(extra="ignore", coerce_numbers_to_str=True, frozen=True)

    sid: str = Field(min_length=1)
    search_name: str | None = None
    results_link: str | None = None
    owner: str | None = None
    app: str | None = None
    result: Annotated[dict[str, Any], BeforeValidator(_none_to_empty_dict)] = Field(default_factory=dict)


class SplunkWebhook:
    """`bot.ports.AlertSource` for Splunk's webhook alert action."""

    name = "splunk"

    def parse(self, payload: Any) -> AlertBatch:
        """The one alert of a delivery; ValueError or pydantic.ValidationError with a reason if malformed."""
        if isinstance(payload, bytes | bytearray | str):
            try:
                payload = json.loads(payload)
            except ValueError as err:
                raise ValueError(f"the Splunk webhook body is not JSON ({err})") from None
        if not isinstance(payload, Mapping):
            raise ValueError("the Splunk webhook body must be a JSON object")
        if not payload.get("sid"):
            raise ValueError("the Splunk webhook body has no `sid`: not a Splunk webhook alert action")
        if payload.get("result") is not None and not isinstance(payload.get("result"), Mapping):
            raise ValueError("the Splunk webhook's `result` must be an object (the first result row)")
        body = SplunkPayloadIn.model_validate(payload)
        row = {str(k): cell(v) for k, v in body.result.items()}
        name = body.search_name or "ad-hoc search"
        annotations = [("app", body.app or ""), ("owner", body.owner or ""), ("sid", body.sid)]
        alert = Alert(
            source=self.name,
            fingerprint=fingerprint(body.search_name, row),
            status=AlertStatus.FIRING,
            name=name,
            severity=severity_of(row.get("severity")),
            group_key=f"splunk:{name}",
            labels=tuple(sorted(row.items())),
            annotations=tuple((k, v) for k, v in annotations if v),
            starts_at=_scheduled_at(body.sid),
            summary=_summary(row),
            links=(("results", body.results_link),) if body.results_link else (),
        )
        return AlertBatch(source=self.name, alerts=(alert,), group_labels=(("alertname", name),))


def fingerprint(search_name: str | None, row: Mapping[str, str]) -> str:
    """16 hex digits identifying `row` of `search_name` (see the module docstring for why)."""
    canon = json.dumps([search_name or "", sorted(row.items())], separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


def _scheduled_at(sid: str) -> datetime | None:
    m = _SCHEDULED_AT.search(sid)
    if not m:
        return None
    try:
        return datetime.fromtimestamp(int(m.group(1)), UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _summary(row: Mapping[str, str]) -> str:
    for key in ("summary", "description", "message"):
        if row.get(key):
            return row[key]
    shown = [(k, v) for k, v in row.items() if not k.startswith("_")] or list(row.items())
    return ", ".join(f"{k}={v}" for k, v in shown)[:500]


# --- the search API --------------------------------------------------------------------------------------------


def search_text(query: str) -> str:
    """The search as Splunk wants it: starting with `search` or `|`."""
    q = query.strip()
    return q if _SEARCH_START.match(q) else f"search {q}"


class _Rows:
    """Rows collected from the export stream, with the columns in first-seen order."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.rows: list[dict[str, str]] = []
        self.columns: dict[str, None] = {}  # an ordered set
        self.truncated = False
        self.done = False

    def feed(self, line: bytes) -> None:
        """One line of the stream; sets `done` once `limit` rows are in."""
        line = line.strip()
        if not line:
            return
        try:
            obj = json.loads(line)
        except ValueError:
            raise AdapterError(TOOL, f"sent a line that is not JSON in the search results: {line[:120]!r}") from None
        if not isinstance(obj, dict):
            return
        for m in obj.get("messages") or ():
            if isinstance(m, dict) and str(m.get("type", "")).upper() in ("ERROR", "FATAL"):
                raise AdapterError(TOOL, str(m.get("text") or "the search failed (no message)"))
        if obj.get("preview") is True:
            return  # a provisional table of a reporting search; the final one follows
        batch: Sequence[object] = ()
        if isinstance(obj.get("result"), dict):
            batch = (obj["result"],)
        elif isinstance(obj.get("results"), list):
            batch = obj["results"]
        last_in_stream = obj.get("lastrow") is True
        for i, row in enumerate(batch):
            if not isinstance(row, dict):
                continue
            if len(self.rows) >= self.limit:
                self.truncated = True
                self.done = True
                return
            self._add(row)
            if len(self.rows) >= self.limit:
                more_here = i + 1 < len(batch)
                self.truncated = more_here or not last_in_stream
                self.done = True
                return

    def _add(self, row: Mapping[str, object]) -> None:
        kept = {str(k): cell(v) for k, v in row.items() if not str(k).startswith("_") or k in _KEEP_INTERNAL}
        for k in kept:
            self.columns.setdefault(k, None)
        self.rows.append(kept)

    def result(self) -> SearchResult:
        cols = tuple(self.columns)
        return SearchResult(
            columns=cols,
            rows=tuple(tuple(r.get(c, "") for c in cols) for r in self.rows),
            truncated=self.truncated,
        )


class SplunkSearch:
    """`bot.ports.LogSearch` for Splunk's REST API (management port, usually 8089)."""

    name = "splunk"

    def __init__(self, url: str, *, token: str, timeout: float, verify_tls: bool = True) -> None:
        """`token` is a Splunk authentication token (sent as Bearer); `verify_tls=False` for a self-signed port."""
        self._url = url.rstrip("/")
        self._token = token
        self._timeout = float(timeout)
        self._verify_tls = verify_tls
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        """Close the HTTP session (it is opened again on the next call)."""
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    # ------------------------------------------------------------------ the port

    async def search(
        self, query: str, *, earliest: str = "-15m", latest: str = "now", limit: int = 1000
    ) -> SearchResult:
        """Run `query` over [earliest, latest]; at most `limit` rows (see the module docstring)."""
        if not query.strip():
            raise AdapterError(TOOL, "needs something to search for")
        if limit < 1:
            raise AdapterError(TOOL, f"can't return {limit} rows: the limit must be at least 1")
        form = {
            "search": search_text(query),
            "output_mode": "json",
            "earliest_time": earliest,
            "latest_time": latest,
        }
        rows = _Rows(limit)
        what = "the search"
        try:
            async with self._session_now().post(
                self._url + EXPORT_PATH,
                data=form,
                headers=self._headers(),
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                ssl=self._ssl(),
            ) as resp:
                if resp.status != 200:
                    body = await resp.content.read(64 * 1024)
                    raise self._error(resp.status, body, what)
                await self._read_stream(resp, rows)
        except TimeoutError:
            got = f"; {len(rows.rows)} rows had arrived" if rows.rows else ""
            raise AdapterTimeout(
                TOOL,
                f"the search did not finish within {self._timeout:g} s{got} (narrow the time range, or add | head)",
            ) from None
        except aiohttp.ClientError as err:
            raise self._transport_error(err) from err
        return rows.result()

    async def check(self) -> str:
        """Reach the REST API with the token: `Splunk <version> at <url>`."""
        what = f"GET {INFO_PATH}"
        try:
            async with self._session_now().get(
                self._url + INFO_PATH,
                params={"output_mode": "json"},
                headers=self._headers(),
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                ssl=self._ssl(),
            ) as resp:
                body = await resp.content.read(1024 * 1024)
                if resp.status != 200:
                    raise self._error(resp.status, body, what)
        except TimeoutError:
            raise AdapterTimeout(TOOL, f"no answer within {self._timeout:g} s ({what})") from None
        except aiohttp.ClientError as err:
            raise self._transport_error(err) from err
        try:
            data = json.loads(body)
            version = data["entry"][0]["content"]["version"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise AdapterError(
                TOOL, f"answered {what} without a version (is {self._url} Splunk's management port?)"
            ) from None
        return f"Splunk {version} at {self._url}"

    # ------------------------------------------------------------------ helpers

    async def _read_stream(self, resp: aiohttp.ClientResponse, rows: _Rows) -> None:
        """Feed the stream to `rows` line by line as it arrives; stop (and hang up) once it has enough."""
        pending = b""
        async for chunk in resp.content.iter_any():
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            for line in lines:
                rows.feed(line)
                if rows.done:
                    # Closing the connection is how a client cancels an export: Splunk stops the search.
                    resp.close()
                    return
            if len(pending) > _MAX_LINE:
                raise AdapterError(TOOL, f"sent a result line longer than {_MAX_LINE // 2**20} MiB")
        rows.feed(pending)

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}", "Accept": "application/json", "User-Agent": "opsloop"}

    def _ssl(self) -> bool:
        # False switches certificate checks off (a management port with Splunk's self-signed certificate).
        return self._verify_tls

    def _session_now(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # trust_env: honour HTTPS_PROXY / NO_PROXY like the other tools' clients do.
            self._session = aiohttp.ClientSession(trust_env=True)
        return self._session

    def _transport_error(self, err: aiohttp.ClientError) -> AdapterError:
        if isinstance(err, aiohttp.ClientConnectorCertificateError):
            return AdapterUnavailable(
                TOOL,
                f"can't verify the TLS certificate of {self._url} ({err.certificate_error}); "
                "set integrations.splunk.verify_tls: false for Splunk's self-signed certificate",
            )
        if isinstance(err, aiohttp.ClientConnectorError):
            reason = err.os_error.strerror or str(err.os_error)
            return AdapterUnavailable(TOOL, f"can't reach {self._url} ({reason})")
        return AdapterUnavailable(TOOL, f"the connection to {self._url} broke ({type(err).__name__})")

    def _error(self, status: int, body: bytes, what: str) -> AdapterError:
        msgs = _messages(body)
        worst = next((t for k, t in msgs if k in ("FATAL", "ERROR")), None)
        said = worst or (msgs[0][1] if msgs else "")
        detail = f"{status}: {said}" if said else str(status)
        if status == 401:
            return AdapterError(
                TOOL,
                f"refused the token ({detail}); check integrations.splunk.token_env "
                "(a Splunk authentication token, sent as Bearer)",
            )
        if status == 403:
            return AdapterError(TOOL, f"refused {what} ({detail}): the token's role may not do this")
        if status == 404:
            return AdapterNotFound(TOOL, f"has no REST API at {self._url} ({detail}); is it the management port?")
        if status in (502, 503, 504):
            return AdapterUnavailable(TOOL, f"answered {detail} (unavailable) to {what}")
        if status == 400 and said:
            return AdapterError(TOOL, said)
        return AdapterError(TOOL, f"answered {detail} to {what}")


def _messages(body: bytes) -> list[tuple[str, str]]:
    """(TYPE, text) of the messages in an error body: JSON with output_mode=json, XML otherwise."""
    text = body.decode("utf-8", "replace")
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("messages"), list):
        return [
            (str(m.get("type", "")).upper(), str(m.get("text", ""))) for m in data["messages"] if isinstance(m, dict)
        ]
    return [
        (kind.upper(), " ".join(msg.split()))
        for kind, msg in re.findall(r'<msg\s+type="([^"]*)"[^>]*>(.*?)</msg>', text, re.DOTALL)
    ]
