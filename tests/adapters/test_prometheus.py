"""PrometheusMetrics against a real Prometheus 2.42 (and a rule that fires through a real Alertmanager).

Server tests are marked `servers`; the retry and token tests use a small stand-in on 127.0.0.1."""

from __future__ import annotations

import asyncio
import math
import re
import socket
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from adapters.alertmanager import AlertmanagerWebhook
from adapters.prometheus import PrometheusMetrics
from bot.blocking import BlockingPool
from bot.ports import (
    AdapterError,
    AdapterTimeout,
    AdapterUnavailable,
    AlertStatus,
    MetricsSource,
    QueryResult,
    Severity,
)
from tests.servers import Catcher, RunningPrometheus, alertmanager, catcher, prometheus
from tests.support import free_port, wait_until

servers = pytest.mark.servers

RULES = """
groups:
  - name: opsloop-test
    rules:
      - alert: AlwaysFiring
        expr: vector(1)
        for: 0s
        labels: {severity: critical, service: api}
        annotations:
          summary: "Test alert, value {{ $value }}"
          runbook_url: "https://runbooks.example/always-firing"
"""


@pytest.fixture
async def pool() -> AsyncIterator[BlockingPool]:
    p = BlockingPool(workers=4)
    yield p
    p.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def prom(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningPrometheus]:
    """One Prometheus for the read-only tests: its first scrape takes about 5 s (discovery batching)."""
    async with prometheus(tmp_path_factory.mktemp("shared")) as server:
        async with aiohttp.ClientSession() as session:

            async def scraped() -> bool:
                async with session.get(f"{server.url}/api/v1/query", params={"query": "up"}) as resp:
                    return bool((await resp.json())["data"]["result"])

            await wait_until(scraped, timeout=30, what="the first scrape")
        yield server


@pytest.fixture
async def metrics(prom: RunningPrometheus, pool: BlockingPool) -> AsyncIterator[PrometheusMetrics]:
    m = PrometheusMetrics(prom.url, pool=pool, timeout=10)
    yield m
    m.close()


@pytest.fixture
def black_hole() -> Iterator[str]:
    """A port that accepts connections (the kernel's backlog) but never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


@servers
async def test_an_instant_vector(metrics: PrometheusMetrics, prom: RunningPrometheus) -> None:
    port: MetricsSource = metrics
    result = await port.query('up{job="prometheus"}')
    assert result.kind == "vector"
    (s,) = result.series
    assert s.labels == (("__name__", "up"), ("instance", f"127.0.0.1:{prom.port}"), ("job", "prometheus"))
    ((ts, value),) = s.points
    assert value == 1.0
    assert abs(ts - time.time()) < 60


@servers
async def test_an_empty_vector(metrics: PrometheusMetrics) -> None:
    assert await metrics.query("no_such_metric_anywhere") == QueryResult(kind="vector")


@servers
async def test_an_instant_query_at_a_time(metrics: PrometheusMetrics) -> None:
    at = datetime.now(UTC).replace(microsecond=250_000) - timedelta(seconds=30)
    result = await metrics.query("time()", at=at)
    assert result.kind == "scalar"
    assert result.series == ()
    assert result.scalar is not None and float(result.scalar) == pytest.approx(at.timestamp(), abs=0.001)


@servers
async def test_a_range_matrix(metrics: PrometheusMetrics) -> None:
    async def two_scrapes() -> QueryResult | None:
        end = datetime.now(UTC)
        result = await metrics.query_range('up{job="prometheus"}', end - timedelta(seconds=10), end, 1.0)
        return result if result.series and len(result.series[0].points) >= 2 else None

    await wait_until(two_scrapes, timeout=30, what="a second scrape")
    end = datetime.now(UTC)
    start = end - timedelta(seconds=10)
    result = await metrics.query_range('up{job="prometheus"}', start, end, 1.0)
    assert result.kind == "matrix"
    (s,) = result.series
    assert dict(s.labels)["job"] == "prometheus"
    assert len(s.points) >= 2
    assert all(v == 1.0 for _, v in s.points)
    times = [t for t, _ in s.points]
    assert times == sorted(times) and start.timestamp() - 1 <= times[0] and times[-1] <= end.timestamp() + 1


@servers
async def test_a_range_keeps_sub_second_bounds(metrics: PrometheusMetrics) -> None:
    # The client's custom_query_range would round these to whole seconds.
    start = datetime(2026, 1, 1, 12, 0, 0, 500_000, tzinfo=UTC)
    result = await metrics.query_range("time()", start, start + timedelta(seconds=2), 1)
    assert result.kind == "matrix"
    (s,) = result.series
    assert s.labels == ()
    t0 = start.timestamp()
    assert s.points == tuple((t0 + i, t0 + i) for i in range(3))


@servers
async def test_an_instant_range_selector_is_a_matrix(metrics: PrometheusMetrics) -> None:
    result = await metrics.query('up{job="prometheus"}[1m]')
    assert result.kind == "matrix"
    assert result.series and result.series[0].points


@servers
async def test_scalars_strings_and_special_values(metrics: PrometheusMetrics) -> None:
    assert (await metrics.query("1 + 1")).scalar == "2"
    inf = await metrics.query("1/0")
    assert (inf.kind, inf.scalar) == ("scalar", "+Inf")
    assert inf.scalar is not None and float(inf.scalar) == math.inf
    assert (await metrics.query("0/0")).scalar == "NaN"
    text = await metrics.query('"hello"')
    assert (text.kind, text.scalar, text.series) == ("string", "hello", ())
    # In a vector the values become floats: NaN and infinities included.
    values = [(await metrics.query(q)).series[0].points[0][1] for q in ("vector(0)/0", "vector(1)/0", "-vector(1)/0")]
    assert math.isnan(values[0]) and values[1] == math.inf and values[2] == -math.inf


@servers
async def test_a_bad_query_says_what_prometheus_said(metrics: PrometheusMetrics) -> None:
    with pytest.raises(AdapterError, match=r"^Prometheus: bad query: .*unclosed left parenthesis") as err:
        await metrics.query("sum(rate((")
    assert not isinstance(err.value, AdapterUnavailable | AdapterTimeout)
    now = datetime.now(UTC)
    with pytest.raises(AdapterError, match=r"^Prometheus: bad query: exceeded maximum resolution"):
        await metrics.query_range("up", now - timedelta(days=1), now, 1)
    with pytest.raises(AdapterError, match=r'^Prometheus: bad query: invalid expression type "string"'):
        await metrics.query_range('"x"', now - timedelta(minutes=1), now, 15)


@servers
async def test_check_names_the_version(metrics: PrometheusMetrics, prom: RunningPrometheus) -> None:
    line = await metrics.check()
    assert re.fullmatch(rf"Prometheus \d+\.\d+\.\d+ at {re.escape(prom.url)}", line), line


@servers
async def test_prometheus_down_is_unavailable_quickly(tmp_path: Path, pool: BlockingPool) -> None:
    async with prometheus(tmp_path) as own:
        m = PrometheusMetrics(own.url, pool=pool, timeout=20)
        try:
            assert await m.check()
            await own.stop()
            started = time.monotonic()
            with pytest.raises(AdapterUnavailable, match=rf"^Prometheus: can't reach {re.escape(own.url)} \("):
                await m.query("up")
            assert time.monotonic() - started < 10  # refused at once, not after the 20 s timeout
        finally:
            m.close()


async def test_nothing_listening_is_unavailable(pool: BlockingPool) -> None:
    m = PrometheusMetrics(f"http://127.0.0.1:{free_port()}", pool=pool, timeout=20)
    try:
        with pytest.raises(AdapterUnavailable, match=r"\(Connection refused\)$"):
            await m.check()
    finally:
        m.close()


async def test_no_answer_is_a_timeout_and_the_loop_keeps_running(black_hole: str, pool: BlockingPool) -> None:
    m = PrometheusMetrics(black_hole, pool=pool, timeout=0.5)
    beats = 0
    stop = asyncio.Event()

    async def beat() -> None:
        nonlocal beats
        while not stop.is_set():
            await asyncio.sleep(0.01)
            beats += 1

    task = asyncio.create_task(beat())
    try:
        with pytest.raises(AdapterTimeout, match=r"^Prometheus: no answer from .* within 0\.5 s \(query `up`\)"):
            await m.query("up")
    finally:
        stop.set()
        await task
        m.close()
    assert beats > 5  # the wait happened on the pool, not on the loop


class _StandIn:
    """A stand-in API that answers with a chosen status and counts requests."""

    def __init__(self) -> None:
        self.status = 200
        self.hits: list[str] = []
        self.auth: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.hits.append(request.path)
        self.auth.append(request.headers.get("Authorization", ""))
        if self.status == 503:
            return web.json_response(
                {"status": "error", "errorType": "timeout", "error": "query timed out in expression evaluation"},
                status=503,
            )
        if self.status != 200:
            return web.Response(status=self.status, text="<html>Bad Gateway</html>", content_type="text/html")
        return web.json_response({"status": "success", "data": {"version": "2.42.0"}})


@pytest.fixture
async def stand_in() -> AsyncIterator[tuple[str, _StandIn]]:
    s = _StandIn()
    app = web.Application()
    app.router.add_get("/{tail:.*}", s.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", s
    finally:
        await runner.cleanup()


async def test_retries_are_few_and_a_query_timeout_is_not_retried(
    stand_in: tuple[str, _StandIn], pool: BlockingPool
) -> None:
    url, s = stand_in
    m = PrometheusMetrics(url, pool=pool, timeout=5, token="t0ken")
    try:
        assert await m.check() == f"Prometheus 2.42.0 at {url}"
        assert s.auth == ["Bearer t0ken"]
        s.hits.clear()
        s.status = 503
        with pytest.raises(AdapterTimeout, match=r"^Prometheus: gave up on query `up`: query timed out"):
            await m.query("up")
        assert s.hits == ["/api/v1/query"]  # Prometheus's own timeout would only time out again
        s.hits.clear()
        s.status = 502
        with pytest.raises(AdapterError, match=r"^Prometheus: answered 502 with something that is not its API"):
            await m.query("up")
        assert s.hits == ["/api/v1/query", "/api/v1/query"]  # one retry of a proxy's hiccup, not three
    finally:
        m.close()


@servers
async def test_a_rule_fires_through_alertmanager_to_the_webhook(tmp_path: Path) -> None:
    hook: Catcher
    async with (
        catcher() as hook,
        alertmanager(tmp_path, hook.url("/alertmanager")) as am,
        prometheus(tmp_path, alertmanager_url=am.url, rules=RULES) as prom,
    ):
        # With --rules.alert.resend-delay=1s an alert dropped before discovery is resent within seconds.
        caught = await hook.wait_for(
            lambda c: c.path == "/alertmanager" and b"AlwaysFiring" in c.body, timeout=60, what="AlwaysFiring"
        )
    batch = AlertmanagerWebhook().parse(caught.json())
    (a,) = batch.alerts
    assert (a.name, a.status, a.severity) == ("AlwaysFiring", AlertStatus.FIRING, Severity.CRITICAL)
    assert a.summary == "Test alert, value 1"
    assert a.ends_at is None
    assert a.generator_url is not None and a.generator_url.startswith(f"{prom.url}/graph?g0.expr=vector%281%29")
    assert ("runbook", "https://runbooks.example/always-firing") in a.links
    assert a.label("service") == "api"
    assert a.starts_at is not None and a.starts_at.tzinfo is UTC
