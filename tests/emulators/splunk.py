"""A strict Splunk REST emulator for tests: the export search endpoint, server info, webhook bodies.

One aiohttp server on 127.0.0.1 (port 0, read back), playing the management port (plain HTTP here).
Facts come from the reference sheet (``reference/operate-monitor-plan-apis.md`` section 5) and
splunk/splunk-sdk-python (``splunklib/results.py`` ``JSONResultsReader``).

Use::

    async with SplunkEmulator() as emu:
        emu.load([{"host": "web01", "count": "3"}, {"host": "web02", "count": "1"}])
        s = SplunkSearch(emu.url, token=emu.token, timeout=5)
        result = await s.search("index=main error")

Routes (the names that fault injection and ``seen`` use):

* ``export``: ``POST /services/search/jobs/export``, form-encoded (anything else -> 400). ``search``
  must start with ``search`` or ``|`` (else 400 FATAL ``Unknown search command '<word>'.``, as Splunk
  says for ``index=main``); ``output_mode`` must be ``json`` (the only format emulated). The answer
  streams newline-separated JSON objects:
  ``{"preview": false, "offset": i, "result": {...}}``, ``"lastrow": true`` on the last row. Which rows:
  the set given to ``load(rows, when=...)`` whose ``when`` occurs in the search (else the set loaded
  without ``when``, else none); ``| head N`` in the search is honoured. ``load(..., previews=n)`` first
  streams the rows ``n`` times with ``"preview": true`` (as reporting searches do);
  ``load(..., grouped=k)`` sends ``"results"`` lists of ``k`` rows instead of one ``result`` per line.
  Messages: ``add_message(when, type, text)`` streams ``{"preview": false, "messages": [...]}`` first;
  a search containing ``bad_token`` streams an ERROR message (``bad_message``) and no rows.
* ``info``: ``GET /services/server/info`` -> JSON with ``output_mode=json``
  (``entry[0].content.version``/``serverName``), a small Atom feed otherwise.

Auth (strict): ``Authorization: Bearer <token>``; none or another -> 401 with
``call not properly authenticated`` (JSON ``messages`` when ``output_mode=json`` is in the query or
form, Splunk's XML ``<response><messages><msg type="WARN">`` otherwise). Unknown paths -> 404.

Streaming control (for limit and timeout tests): ``row_delay`` (seconds between rows),
``stall_after(n)`` (after ``n`` rows the stream waits until ``release()`` or the client hangs up).

Fault injection: ``fail_next(route, status=500, count=1, message=None, kind="ERROR")`` (a JSON
``messages`` body), ``slow(route, seconds, count=None)`` (before the answer starts), ``down()``/``up()``.
Records: ``requests`` (method, path, query, form, headers, status, route), ``exports`` (per search:
text, time range, rows sent, finished, whether the client hung up), ``server_errors``.

``webhook_payload()`` builds the webhook alert action's body; ``DOCS_EXAMPLE`` is the docs' example.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl
from xml.sax.saxutils import escape

from aiohttp import web

__all__ = ["DOCS_EXAMPLE", "Export", "Seen", "SplunkEmulator", "webhook_payload"]

Json = dict[str, Any]

DOCS_EXAMPLE: Json = {
    "result": {"sourcetype": "mongod", "count": "8"},
    "sid": "scheduler_admin_search_W2_at_14232356_132",
    "results_link": "http://web.example.local:8000/app/search/@go?sid=scheduler_admin_search_W2_at_14232356_132",
    "search_name": None,
    "owner": "admin",
    "app": "search",
}


def webhook_payload(
    result: Mapping[str, Any] | None = None,
    *,
    search_name: str | None = None,
    sid: str = "scheduler_admin_search_W2_at_14232356_132",
    owner: str = "admin",
    app: str = "search",
    web_url: str = "http://web.example.local:8000",
) -> Json:
    """The webhook alert action's body: the first result row with every value a string, as Splunk sends it.
    With no arguments it is the docs' example (``DOCS_EXAMPLE``)."""
    row = {"sourcetype": "mongod", "count": "8"} if result is None else result
    return {
        "result": {str(k): v if isinstance(v, str) else str(v) for k, v in row.items()},
        "sid": sid,
        "results_link": f"{web_url}/app/{app}/@go?sid={sid}",
        "search_name": search_name,
        "owner": owner,
        "app": app,
    }


@dataclass
class Seen:
    """One HTTP request as the emulator received and answered it."""

    method: str
    path: str
    query: dict[str, str]
    form: dict[str, str]
    headers: dict[str, str]
    status: int = 0
    route: str = ""


@dataclass
class Export:
    """One export search as the emulator streamed it."""

    search: str
    earliest: str
    latest: str
    rows_sent: int = 0
    finished: bool = False
    client_gone: bool = False


@dataclass
class _ResultSet:
    rows: list[Json]
    when: str | None
    previews: int
    grouped: int


@dataclass
class _Fault:
    status: int
    message: str | None
    kind: str
    remaining: int


@dataclass
class _Slow:
    seconds: float
    remaining: int | None


class _Answer(Exception):
    def __init__(self, response: web.StreamResponse) -> None:
        super().__init__(response.status)
        self.response = response


def _messages_response(status: int, kind: str, text: str, *, as_json: bool) -> web.Response:
    if as_json:
        return web.json_response({"messages": [{"type": kind, "text": text}]}, status=status)
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<response>\n  <messages>\n'
        f'    <msg type="{kind}">{escape(text)}</msg>\n  </messages>\n</response>\n'
    )
    return web.Response(status=status, text=xml, content_type="text/xml")


class SplunkEmulator:
    """See the module docstring. Use ``async with SplunkEmulator() as emu:``."""

    def __init__(
        self,
        *,
        token: str = "splunk-test-token",
        version: str = "9.1.2",
        server_name: str = "splunk-emu",
        bad_token: str = "nosuchlookup",
        bad_message: str | None = None,
    ) -> None:
        self.token = token
        self.version = version
        self.server_name = server_name
        self.bad_token = bad_token
        self.bad_message = bad_message or (
            f"Error in 'lookup' command: Could not construct lookup '{bad_token}, host'. "
            "See search.log for more details."
        )
        self.row_delay = 0.0

        self.port = 0
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._down = False

        self._sets: list[_ResultSet] = []
        self._messages: list[tuple[str | None, str, str]] = []
        self._stall_after: int | None = None
        self._release = asyncio.Event()

        self.requests: list[Seen] = []
        self.exports: list[Export] = []
        self.server_errors: list[str] = []
        self._faults: dict[str, list[_Fault]] = {}
        self._slow: dict[str, _Slow] = {}

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> SplunkEmulator:
        """Listen on 127.0.0.1 on a free port (read back into ``port``)."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # A short shutdown: stalled streams are cut off instead of delaying ``stop``.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await self._site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        """Stop the server (stalled streams are released first)."""
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            self._site = None

    async def __aenter__(self) -> SplunkEmulator:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        """The management URL, as configured in ``integrations.splunk.url``."""
        if not self.port:
            raise RuntimeError("SplunkEmulator is not started")
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ set-up

    def load(
        self, rows: Sequence[Mapping[str, Any]], *, when: str | None = None, previews: int = 0, grouped: int = 0
    ) -> None:
        """Rows for searches containing ``when`` (for any search when None); see the module docstring."""
        self._sets = [s for s in self._sets if s.when != when]
        self._sets.append(_ResultSet([dict(r) for r in rows], when, previews, grouped))

    def add_message(self, when: str | None, kind: str, text: str) -> None:
        """Stream a ``messages`` entry (``INFO``/``WARN``/``ERROR``/``FATAL``) for searches containing ``when``."""
        self._messages.append((when, kind, text))

    def stall_after(self, rows: int) -> None:
        """Streams pause after ``rows`` rows until ``release()`` (or until the client hangs up)."""
        self._stall_after = rows
        self._release.clear()

    def release(self) -> None:
        """Let stalled streams go on."""
        self._stall_after = None
        self._release.set()

    # ------------------------------------------------------------------ faults

    def fail_next(
        self, route: str = "*", *, status: int = 500, count: int = 1, message: str | None = None, kind: str = "ERROR"
    ) -> None:
        """The next ``count`` requests to ``route`` answer ``status`` with a ``messages`` body."""
        self._faults.setdefault(route, []).append(_Fault(status, message, kind, count))

    def slow(self, route: str, seconds: float, count: int | None = None) -> None:
        """Delay the answers of ``route`` (``"*"``: every route) by ``seconds`` before they start."""
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
            if request.transport is not None:
                request.transport.close()
            raise web.HTTPServiceUnavailable()
        form: dict[str, str] = {}
        raw = await request.read()
        if raw and request.content_type == "application/x-www-form-urlencoded":
            form = dict(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))
        seen = Seen(request.method, request.path, dict(request.query), form, dict(request.headers))
        self.requests.append(seen)
        as_json = request.query.get("output_mode", form.get("output_mode")) == "json"
        try:
            route, handler = self._resolve(request, as_json)
            seen.route = route
            if request.headers.get("Authorization") != f"Bearer {self.token}":
                raise _Answer(_messages_response(401, "WARN", "call not properly authenticated", as_json=as_json))
            slow = self._take_slow(route)
            if slow is not None:
                await asyncio.sleep(slow.seconds)
            fault = self._take_fault(route)
            if fault is not None:
                text = fault.message or f"emulated {fault.status}"
                raise _Answer(_messages_response(fault.status, fault.kind, text, as_json=as_json))
            response = await handler(request, raw, form)
        except _Answer as ans:
            response = ans.response
        except Exception as err:  # an emulator bug: answer 500 and keep it for the test to see
            self.server_errors.append(f"{request.method} {request.path}: {type(err).__name__}: {err}")
            response = _messages_response(500, "ERROR", "emulator error", as_json=True)
        seen.status = response.status
        return response

    def _resolve(
        self, request: web.Request, as_json: bool
    ) -> tuple[str, Callable[[web.Request, bytes, dict[str, str]], Awaitable[web.StreamResponse]]]:
        path = request.path.rstrip("/")
        if path == "/services/search/jobs/export":
            if request.method != "POST":
                raise _Answer(_messages_response(405, "ERROR", "emulator: POST the export search", as_json=as_json))
            return "export", self._export
        if path == "/services/server/info" and request.method == "GET":
            return "info", self._info
        raise _Answer(_messages_response(404, "ERROR", "Not Found", as_json=as_json))

    async def _info(self, request: web.Request, raw: bytes, form: dict[str, str]) -> web.StreamResponse:
        content = {"version": self.version, "serverName": self.server_name, "build": "64e843ea36b1"}
        if request.query.get("output_mode") == "json":
            return web.json_response(
                {
                    "links": {},
                    "origin": f"{self.url}/services/server/info",
                    "generator": {"build": content["build"], "version": self.version},
                    "entry": [{"name": "server-info", "content": content}],
                    "paging": {"total": 1, "perPage": 30, "offset": 0},
                }
            )
        atom = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<feed xmlns="http://www.w3.org/2005/Atom" '
            'xmlns:s="http://dev.splunk.com/ns/rest"><title>server-info</title><entry><title>server-info</title>'
            f'<content type="text/xml"><s:dict><s:key name="version">{self.version}</s:key>'
            f'<s:key name="serverName">{self.server_name}</s:key></s:dict></content></entry></feed>'
        )
        return web.Response(text=atom, content_type="text/xml")

    async def _export(self, request: web.Request, raw: bytes, form: dict[str, str]) -> web.StreamResponse:
        if request.content_type != "application/x-www-form-urlencoded":
            raise _Answer(_messages_response(400, "FATAL", "emulator: send the search form-encoded", as_json=True))
        if form.get("output_mode") != "json":
            raise _Answer(_messages_response(400, "FATAL", "emulator: only output_mode=json", as_json=False))
        search = form.get("search", "").strip()
        if not search:
            raise _Answer(_messages_response(400, "FATAL", "Empty search.", as_json=True))
        if not re.match(r"(?i)(search\b|\|)", search):
            # Splunk names the word it took for a command: `index=main` -> 'index'.
            word = re.match(r"[\w-]*", search)
            first = word.group(0) if word and word.group(0) else search.split(None, 1)[0]
            raise _Answer(_messages_response(400, "FATAL", f"Unknown search command '{first}'.", as_json=True))
        export = Export(search, form.get("earliest_time", ""), form.get("latest_time", ""))
        self.exports.append(export)

        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json; charset=UTF-8"})
        await resp.prepare(request)
        try:
            await self._stream(request, resp, export)
            export.finished = True
            await resp.write_eof()
        except ConnectionError:
            # The client hung up (what a client does to cancel an export).
            export.client_gone = True
        return resp

    async def _stream(self, request: web.Request, resp: web.StreamResponse, export: Export) -> None:
        search = export.search
        for when, kind, text in self._messages:
            if when is None or when.lower() in search.lower():
                await self._line(resp, {"preview": False, "messages": [{"type": kind, "text": text}]})
        if self.bad_token and self.bad_token in search:
            await self._line(resp, {"preview": False, "messages": [{"type": "ERROR", "text": self.bad_message}]})
            return
        chosen = self._rows_for(search)
        if chosen is None:
            return
        rows = chosen.rows
        head = re.search(r"\|\s*head\s+(?:limit=)?(\d+)", search)
        if head:
            rows = rows[: int(head.group(1))]
        for _ in range(chosen.previews):
            for i, row in enumerate(rows):
                await self._line(resp, {"preview": True, "offset": i, "result": row})
        step = chosen.grouped or 1
        for start in range(0, len(rows), step):
            batch = rows[start : start + step]
            await self._gate(request, export)
            obj: Json = {"preview": False, "offset": start}
            if start + step >= len(rows):
                obj["lastrow"] = True
            if chosen.grouped:
                obj["results"] = batch
            else:
                obj["result"] = batch[0]
            await self._line(resp, obj)
            export.rows_sent += len(batch)

    async def _gate(self, request: web.Request, export: Export) -> None:
        """Honour ``row_delay`` and ``stall_after`` before the next row."""
        if self.row_delay:
            await asyncio.sleep(self.row_delay)
        while self._stall_after is not None and export.rows_sent >= self._stall_after:
            transport = request.transport
            if transport is None or transport.is_closing():
                raise ConnectionResetError("client hung up while the stream was stalled")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._release.wait(), 0.02)

    @staticmethod
    async def _line(resp: web.StreamResponse, obj: Json) -> None:
        await resp.write(json.dumps(obj).encode() + b"\n")

    def _rows_for(self, search: str) -> _ResultSet | None:
        low = search.lower()
        for s in self._sets:
            if s.when is not None and s.when.lower() in low:
                return s
        return next((s for s in self._sets if s.when is None), None)
