"""Prometheus 2.x through prometheus-api-client: the `MetricsSource` port.

The client is synchronous (requests), so every call runs on the shared `BlockingPool` with a time
limit, and each pool thread gets its own `PrometheusConnect` (threading.local): a `requests.Session`
is not documented as safe to share between threads.

Why the queries do not go through `custom_query` / `custom_query_range`:

* `custom_query()` returns only `data.result`, dropping `resultType`. A scalar and a string both come
  back as a bare `[ts, "v"]` pair, and an empty vector looks like an empty matrix, so the kind cannot
  be inferred reliably.
* Their errors are `PrometheusApiClientException("HTTP Status Code 400 (b'...')")`: the server's JSON
  (`errorType`, `error`) flattened into the repr of a bytes object.
* `custom_query_range()` rounds start and end to whole seconds.

So each thread's `PrometheusConnect` is built on a `requests.Session` that this adapter makes and
hands in (the client's public `session=` argument); the client mounts its retry policy on it, and
the adapter sends `GET /api/v1/query`, `/api/v1/query_range` and `/api/v1/status/buildinfo` on that
same session with the client's URL and headers, reading the whole envelope. The client's default
retry (3 tries with 1 s backoff on 408/429/500/502/503/504) would turn a down Prometheus or a query
timeout into many seconds of waiting; here: one retry, only of a failed connection or a proxy's
502/504, never of Prometheus's own 503 (a query that timed out would just time out again).

Every request carries a timeout, and so does every query (`timeout=` for Prometheus itself, which
then abandons a slow query with errorType "timeout"). Errors: bad PromQL (400 bad_data) and failed
evaluation (422 execution) -> AdapterError("Prometheus", "bad query: <what it said>"); Prometheus's
own timeout and the request timeout -> AdapterTimeout; connection refused or a broken connection ->
AdapterUnavailable.

Results: sample values are strings in the API (NaN, +Inf and -Inf included) and become floats;
points are (unix seconds, value). A scalar or string result has no series: its value is `scalar`,
as Prometheus wrote it. Native-histogram samples have no plain value and are left out.
"""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any

import requests
from prometheus_api_client import PrometheusConnect
from urllib3.util.retry import Retry

from bot.blocking import BlockingPool
from bot.ports import (
    AdapterError,
    AdapterTimeout,
    AdapterUnavailable,
    QueryResult,
    Series,
)

TOOL = "Prometheus"
# Margin of the pool's guard over the request timeout: the request's own timeout should fire first,
# with the better message; the guard only catches what requests does not bound (name resolution).
_GUARD_S = 2.0


def _retry() -> Retry:
    return Retry(
        total=1,
        connect=1,
        # False: a read timeout is raised as itself (requests then says Timeout, not ConnectionError) and
        # never retried, since it means the query is slow and asking again doubles the wait.
        read=False,
        status=1,
        other=0,
        backoff_factor=0.1,
        status_forcelist=(502, 504),  # a proxy's hiccup; Prometheus's own 503 is a query timeout
        allowed_methods=frozenset({"GET"}),
        raise_on_status=False,  # hand back the last answer, so its message reaches the user
    )


class PrometheusMetrics:
    """`bot.ports.MetricsSource` for Prometheus's HTTP API v1."""

    def __init__(self, url: str, *, pool: BlockingPool, timeout: float, token: str | None = None) -> None:
        """`url` is Prometheus's base URL (its --web.external-url, e.g. http://prometheus:9090);
        `token` is sent as a bearer token (for a proxy in front of it)."""
        self.url = url.rstrip("/")
        self._pool = pool
        self._timeout = timeout
        self._headers = {"Accept": "application/json", "User-Agent": "opsloop"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._local = threading.local()
        self._clients: list[PrometheusConnect] = []
        self._clients_lock = threading.Lock()

    # ------------------------------------------------------------------ the port

    async def query(self, promql: str, at: datetime | None = None) -> QueryResult:
        """An instant query, at `at` (default: Prometheus's now)."""
        params: dict[str, str] = {"query": promql}
        if at is not None:
            params["time"] = _ts(at)
        data = await self._run("/api/v1/query", params, what=f"query `{promql}`")
        return _result(data)

    async def query_range(self, promql: str, start: datetime, end: datetime, step_s: float) -> QueryResult:
        """A range query from `start` to `end`, a point every `step_s` seconds (a matrix)."""
        params = {"query": promql, "start": _ts(start), "end": _ts(end), "step": repr(float(step_s))}
        data = await self._run("/api/v1/query_range", params, what=f"query `{promql}`")
        return _result(data)

    async def check(self) -> str:
        """Reach Prometheus; "Prometheus 2.42.0 at URL"."""
        data = await self._run("/api/v1/status/buildinfo", {}, what="its build information")
        version = data.get("version") if isinstance(data, dict) else None
        if not isinstance(version, str):
            raise AdapterError(TOOL, f"{self.url}/api/v1/status/buildinfo did not say a version (is this Prometheus?)")
        # Distributions add build metadata ("2.42.0+ds" on Debian); the release is what people compare.
        return f"{TOOL} {version.split('+', 1)[0]} at {self.url}"

    def close(self) -> None:
        """Close every thread's HTTP session (call after the pool has stopped)."""
        with self._clients_lock:
            clients, self._clients = self._clients, []
        for c in clients:
            c.close()

    # ------------------------------------------------------------------ plumbing

    def _client(self) -> tuple[PrometheusConnect, requests.Session]:
        """This thread's client and the session it was built on (created on first use)."""
        made: tuple[PrometheusConnect, requests.Session] | None = getattr(self._local, "made", None)
        if made is None:
            session = requests.Session()
            client = PrometheusConnect(
                url=self.url, headers=self._headers, retry=_retry(), session=session, timeout=self._timeout
            )
            made = client, session
            self._local.made = made
            with self._clients_lock:
                self._clients.append(client)
        return made

    async def _run(self, path: str, params: dict[str, str], *, what: str) -> Any:
        return await self._pool.run(TOOL, self._get, path, params, what, timeout=self._timeout + _GUARD_S)

    def _get(self, path: str, params: dict[str, str], what: str) -> Any:
        """One GET on this thread's session; `data` of the envelope, or the AdapterError family."""
        client, session = self._client()
        if path != "/api/v1/status/buildinfo":
            # Prometheus abandons the evaluation itself at this point and says so (errorType timeout).
            params = {**params, "timeout": f"{self._timeout:g}"}
        try:
            resp = session.get(f"{client.url}{path}", params=params, headers=client.headers, timeout=self._timeout)
        except requests.exceptions.Timeout:
            raise AdapterTimeout(TOOL, f"no answer from {self.url} within {self._timeout:g} s ({what})") from None
        except requests.exceptions.ConnectionError as err:
            raise AdapterUnavailable(TOOL, f"can't reach {self.url} ({_reason(err)})") from None
        except requests.exceptions.RequestException as err:
            raise AdapterUnavailable(TOOL, f"the request to {self.url} failed ({type(err).__name__})") from None
        try:
            body = resp.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            text = resp.text.strip()[:200] or "an empty body"
            if resp.status_code in (401, 403):
                raise AdapterError(TOOL, f"refused our credentials ({resp.status_code}: {text})")
            raise AdapterError(
                TOOL, f"answered {resp.status_code} with something that is not its API ({text}); is {self.url} right?"
            )
        if resp.status_code == 200 and body.get("status") == "success":
            return body.get("data")
        raise _error(resp.status_code, body, what)


def _error(status: int, body: dict[str, Any], what: str) -> AdapterError:
    etype = str(body.get("errorType") or "")
    said = str(body.get("error") or "no message")
    if etype in ("bad_data", "execution"):
        return AdapterError(TOOL, f"bad query: {said}")
    if etype in ("timeout", "canceled"):
        return AdapterTimeout(TOOL, f"gave up on {what}: {said}")
    if status in (401, 403):
        return AdapterError(TOOL, f"refused our credentials ({status}: {said})")
    return AdapterError(TOOL, f"answered {status} to {what}: {said}")


def _reason(err: requests.exceptions.ConnectionError) -> str:
    """The innermost cause ("Connection refused"), not urllib3's nested wrappers."""
    cause: BaseException | None = err
    seen = 0
    while cause is not None and seen < 10:
        seen += 1
        inner = cause.__context__ or cause.__cause__
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
        if inner is None and cause.args and isinstance(cause.args[0], BaseException):
            inner = cause.args[0]
        reason = getattr(cause, "reason", None)
        if isinstance(reason, BaseException):
            inner = reason
        cause = inner
    return type(err).__name__


def _ts(t: datetime) -> str:
    # Unix seconds keep sub-second precision (the client's range call rounds to whole seconds).
    return f"{t.timestamp():.3f}"


def _value(v: Any) -> float:
    # float() reads Prometheus's "NaN", "+Inf" and "-Inf" as they are.
    return float(v)


def _point(pair: Any) -> tuple[float, float] | None:
    if not isinstance(pair, list | tuple) or len(pair) != 2:
        return None
    try:
        return float(pair[0]), _value(pair[1])
    except (TypeError, ValueError):
        return None


def _labels(metric: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(metric, dict):
        return ()
    return tuple(sorted((str(k), str(v)) for k, v in metric.items()))


def _result(data: Any) -> QueryResult:
    if not isinstance(data, dict) or not isinstance(data.get("resultType"), str):
        raise AdapterError(TOOL, "answered a query without a resultType")
    kind = str(data["resultType"])
    result = data.get("result")
    if kind in ("scalar", "string"):
        value = result[1] if isinstance(result, list) and len(result) == 2 else None
        return QueryResult(kind=kind, scalar=None if value is None else str(value))
    series: list[Series] = []
    for s in result if isinstance(result, list) else []:
        if not isinstance(s, dict):
            continue
        raw = [s["value"]] if kind == "vector" and "value" in s else s.get("values") or []
        points = tuple(p for p in (_point(x) for x in raw) if p is not None)
        series.append(Series(labels=_labels(s.get("metric")), points=points))
    return QueryResult(kind=kind, series=tuple(series))
