"""Contract tests of the Splunk adapters: the webhook model, and export searches against the emulator."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime
from typing import TypeVar

import pydantic
import pytest
import pytest_asyncio

from adapters.splunk import SplunkSearch, SplunkWebhook, fingerprint, search_text, severity_of
from bot.ports import (
    AdapterError,
    AdapterNotFound,
    AdapterTimeout,
    AdapterUnavailable,
    AlertSource,
    AlertStatus,
    LogSearch,
    SearchResult,
    Severity,
)
from tests.emulators.splunk import DOCS_EXAMPLE, SplunkEmulator, webhook_payload

T = TypeVar("T")

EVENTS = [
    {
        "_bkt": "main~12~ABC",
        "_cd": "12:345",
        "_raw": "ERROR payment failed order=17",
        "_serial": "0",
        "_si": ["splunk-emu", "main"],
        "_time": "2026-11-26T04:00:00.000+00:00",
        "host": "web01",
        "source": "/var/log/app.log",
    },
    {
        "_raw": "ERROR timeout upstream=db",
        "_time": "2026-11-26T04:00:01.000+00:00",
        "host": "web02",
        "level": "error",
        "tags": ["db", "timeout"],
    },
]


@pytest_asyncio.fixture
async def emu() -> AsyncIterator[SplunkEmulator]:
    async with SplunkEmulator() as e:
        yield e
        assert not e.server_errors


@pytest_asyncio.fixture
async def splunk(emu: SplunkEmulator) -> AsyncIterator[SplunkSearch]:
    adapter = SplunkSearch(emu.url, token=emu.token, timeout=5.0)
    yield adapter
    await adapter.close()


async def heartbeat_while(coro: Awaitable[T]) -> tuple[T | BaseException, int]:
    """Run `coro` while counting how often a 10 ms heartbeat got the loop; (result or error, beats)."""
    beats = 0
    stop = asyncio.Event()

    async def beat() -> None:
        nonlocal beats
        while not stop.is_set():
            await asyncio.sleep(0.01)
            beats += 1

    task = asyncio.create_task(beat())
    try:
        result: T | BaseException = await coro
    except BaseException as err:
        result = err
    stop.set()
    await task
    return result, beats


def rows(n: int) -> list[dict[str, str]]:
    return [{"host": f"web{i:02d}", "count": str(i)} for i in range(n)]


def test_the_adapters_implement_their_ports() -> None:
    source: AlertSource = SplunkWebhook()
    search: LogSearch = SplunkSearch("https://splunk.invalid:8089", token="t", timeout=1)
    assert source.name == "splunk"
    assert search is not None


# --- the webhook --------------------------------------------------------------------------------------------


def test_the_docs_example_parses() -> None:
    assert webhook_payload() == DOCS_EXAMPLE  # the emulator's builder matches the docs
    batch = SplunkWebhook().parse(copy.deepcopy(DOCS_EXAMPLE))
    assert batch.source == "splunk"
    assert batch.group_labels == (("alertname", "ad-hoc search"),)
    (a,) = batch.alerts
    assert a.source == "splunk"
    assert a.status is AlertStatus.FIRING  # Splunk never sends a resolve
    assert a.name == "ad-hoc search"  # search_name is null
    assert a.group_key == "splunk:ad-hoc search"
    assert a.severity is Severity.WARNING
    assert a.labels == (("count", "8"), ("sourcetype", "mongod"))
    assert dict(a.annotations) == {"app": "search", "owner": "admin", "sid": DOCS_EXAMPLE["sid"]}
    assert a.links == (("results", DOCS_EXAMPLE["results_link"]),)
    assert a.summary == "sourcetype=mongod, count=8"
    assert len(a.fingerprint) == 16
    assert a.starts_at is None  # this sid's number is no epoch time


def test_the_same_row_firing_again_has_the_same_fingerprint() -> None:
    first = SplunkWebhook().parse(
        webhook_payload({"host": "web01", "count": "8"}, search_name="Errors", sid="scheduler__a__search__X_at_1_1")
    )
    again = SplunkWebhook().parse(
        webhook_payload({"count": "8", "host": "web01"}, search_name="Errors", sid="scheduler__a__search__X_at_2_2")
    )
    assert first.alerts[0].fingerprint == again.alerts[0].fingerprint
    assert first.alerts[0].fingerprint == fingerprint("Errors", {"host": "web01", "count": "8"})
    other_row = SplunkWebhook().parse(webhook_payload({"host": "web02", "count": "8"}, search_name="Errors"))
    other_search = SplunkWebhook().parse(webhook_payload({"host": "web01", "count": "8"}, search_name="Latency"))
    assert len({first.alerts[0].fingerprint, other_row.alerts[0].fingerprint, other_search.alerts[0].fingerprint}) == 3


def test_a_scheduled_search_names_itself_and_its_run_time() -> None:
    sid = "scheduler__admin__search__RMD5e461a8b4a8e0d2a4_at_1795666800_1234"
    body = webhook_payload(
        {"host": "web01", "severity": "critical", "summary": "5xx above 5%", "service": "api"},
        search_name="API 5xx rate",
        sid=sid,
    )
    (a,) = SplunkWebhook().parse(body).alerts
    assert a.name == "API 5xx rate"
    assert a.group_key == "splunk:API 5xx rate"
    assert a.severity is Severity.CRITICAL
    assert a.summary == "5xx above 5%"
    assert a.label("service") == "api"
    assert a.label("app") == ""  # Splunk's app is the search's, not a service: it is an annotation
    assert a.starts_at == datetime.fromtimestamp(1795666800, UTC)


@pytest.mark.parametrize(
    ("value", "severity"),
    [
        ("critical", Severity.CRITICAL),
        ("High", Severity.CRITICAL),
        ("6", Severity.CRITICAL),
        ("4", Severity.CRITICAL),
        ("3", Severity.WARNING),
        ("medium", Severity.WARNING),
        ("2", Severity.INFO),
        ("informational", Severity.INFO),
        ("bogus", Severity.WARNING),
        ("", Severity.WARNING),
    ],
)
def test_the_severity_field_is_normalised(value: str, severity: Severity) -> None:
    assert severity_of(value) is severity
    (a,) = SplunkWebhook().parse(webhook_payload({"severity": value})).alerts
    assert a.severity is severity


def test_odd_but_readable_bodies_are_tolerated() -> None:
    body = {
        **DOCS_EXAMPLE,
        "result": {"count": 8, "hosts": ["a", "b"], "empty": None},
        "new_field": {"x": 1},
        "results_link": None,
    }
    (a,) = SplunkWebhook().parse(json.dumps(body).encode()).alerts
    assert dict(a.labels) == {"count": "8", "hosts": "a, b", "empty": ""}
    assert a.links == ()
    (b,) = SplunkWebhook().parse({**DOCS_EXAMPLE, "result": None}).alerts
    assert b.labels == ()


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ([1, 2], "must be a JSON object"),
        (b"nope", "not JSON"),
        ({**DOCS_EXAMPLE, "sid": ""}, "no `sid`"),
        ({k: v for k, v in DOCS_EXAMPLE.items() if k != "sid"}, "no `sid`"),
        ({**DOCS_EXAMPLE, "result": ["a"]}, "must be an object"),
    ],
)
def test_malformed_bodies_are_refused_with_a_reason(body: object, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        SplunkWebhook().parse(body)


def test_a_search_name_of_the_wrong_type_is_refused() -> None:
    with pytest.raises(pydantic.ValidationError):
        SplunkWebhook().parse({**DOCS_EXAMPLE, "search_name": {"a": 1}})


# --- searching --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "sent"),
    [
        ("index=main error", "search index=main error"),
        ("  search index=main", "search index=main"),
        ("SEARCH index=main", "SEARCH index=main"),
        ("| tstats count where index=main", "| tstats count where index=main"),
        ("searchable=yes", "search searchable=yes"),
    ],
)
def test_the_search_starts_with_search_or_a_pipe(query: str, sent: str) -> None:
    assert search_text(query) == sent


async def test_a_search_returns_rows_and_columns(splunk: SplunkSearch, emu: SplunkEmulator) -> None:
    emu.load(EVENTS)
    result = await splunk.search("index=main ERROR", earliest="-1h", latest="now")
    assert isinstance(result, SearchResult)
    # First-seen order; Splunk's internal fields left out except _time and _raw.
    assert result.columns == ("_raw", "_time", "host", "source", "level", "tags")
    assert result.rows == (
        ("ERROR payment failed order=17", "2026-11-26T04:00:00.000+00:00", "web01", "/var/log/app.log", "", ""),
        ("ERROR timeout upstream=db", "2026-11-26T04:00:01.000+00:00", "web02", "", "error", "db, timeout"),
    )
    assert not result.truncated
    (seen,) = emu.seen("export")
    assert seen.method == "POST"
    assert seen.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert seen.headers["Authorization"] == f"Bearer {emu.token}"
    assert seen.form == {
        "search": "search index=main ERROR",
        "output_mode": "json",
        "earliest_time": "-1h",
        "latest_time": "now",
    }
    assert emu.exports[0].finished


async def test_the_defaults_are_the_last_15_minutes(splunk: SplunkSearch, emu: SplunkEmulator) -> None:
    await splunk.search("| makeresults")
    assert (emu.exports[0].search, emu.exports[0].earliest, emu.exports[0].latest) == ("| makeresults", "-15m", "now")


async def test_no_results_is_an_empty_table(splunk: SplunkSearch) -> None:
    assert await splunk.search("index=main nothing") == SearchResult(columns=(), rows=(), truncated=False)


async def test_reading_stops_at_the_limit(splunk: SplunkSearch, emu: SplunkEmulator) -> None:
    emu.load(rows(50))
    emu.stall_after(5)  # the rest would only come after release(): the adapter must not wait for it
    result = await splunk.search("index=main", limit=5)
    assert result.truncated
    assert [r[0] for r in result.rows] == ["web00", "web01", "web02", "web03", "web04"]
    # We hung up, which is how a client cancels an export; the emulator saw it.
    for _ in range(200):
        if emu.exports[0].client_gone:
            break
        await asyncio.sleep(0.01)
    assert emu.exports[0].client_gone and not emu.exports[0].finished
    assert emu.exports[0].rows_sent == 5


async def test_exactly_limit_rows_is_not_truncated(splunk: SplunkSearch, emu: SplunkEmulator) -> None:
    emu.load(rows(3))
    result = await splunk.search("index=main", limit=3)
    assert len(result.rows) == 3 and not result.truncated  # the third row carried `lastrow`
    assert (await splunk.search("index=main", limit=2)).truncated


async def test_head_in_the_search_is_splunks_business(splunk: SplunkSearch, emu: SplunkEmulator) -> None:
    emu.load(rows(10))
    result = await splunk.search("index=main | head 4", limit=100)
    assert len(result.rows) == 4 and not result.truncated


async def test_preview_tables_are_skipped(splunk: SplunkSearch, emu: SplunkEmulator) -> None:
    emu.load([{"host": "web01", "count": "3"}, {"host": "web02", "count": "1"}], when="stats", previews=2)
    result = await splunk.search("index=main | stats count by host")
    assert result.rows == (("web01", "3"), ("web02", "1"))
    assert result.columns == ("host", "count")


async def test_results_lists_are_read_like_single_results(splunk: SplunkSearch, emu: SplunkEmulator) -> None:
    emu.load(rows(7), grouped=3)
    result = await splunk.search("index=main")
    assert len(result.rows) == 7 and not result.truncated
    cut = await splunk.search("index=main", limit=4)
    assert [r[0] for r in cut.rows] == ["web00", "web01", "web02", "web03"] and cut.truncated


async def test_an_error_message_in_the_stream_is_an_adapter_error(splunk: SplunkSearch, emu: SplunkEmulator) -> None:
    emu.load(rows(3))
    with pytest.raises(AdapterError, match="Error in 'lookup' command: Could not construct lookup") as err:
        await splunk.search("index=main | lookup nosuchlookup host")
    assert str(err.value).startswith("Splunk: Error in 'lookup' command")


async def test_warnings_are_not_errors_but_fatal_is(splunk: SplunkSearch, emu: SplunkEmulator) -> None:
    emu.load(rows(2))
    emu.add_message("quota", "WARN", "Search quota nearly reached")
    emu.add_message("broken", "FATAL", "Search process terminated")
    assert len((await splunk.search("index=main quota")).rows) == 2
    with pytest.raises(AdapterError, match="Splunk: Search process terminated"):
        await splunk.search("index=main broken")


async def test_a_refused_search_says_what_splunk_said(splunk: SplunkSearch, emu: SplunkEmulator) -> None:
    emu.fail_next("export", status=400, kind="FATAL", message="Error in 'SearchParser': Mismatched ']'.")
    with pytest.raises(AdapterError, match=r"^Splunk: Error in 'SearchParser': Mismatched '\]'\.$"):
        await splunk.search("index=main [")


async def test_the_emulator_refuses_a_search_without_its_command(emu: SplunkEmulator) -> None:
    import aiohttp

    form = {"search": "index=main", "output_mode": "json"}
    headers = {"Authorization": f"Bearer {emu.token}"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{emu.url}/services/search/jobs/export", data=form, headers=headers) as resp,
    ):
        assert resp.status == 400
        assert (await resp.json())["messages"][0]["text"] == "Unknown search command 'index'."


async def test_a_wrong_token_gets_a_credentials_message(emu: SplunkEmulator) -> None:
    s = SplunkSearch(emu.url, token="wrong", timeout=5.0)
    try:
        with pytest.raises(AdapterError, match=r"refused the token \(401: call not properly authenticated\)"):
            await s.search("index=main")
        with pytest.raises(AdapterError, match="token_env"):
            await s.check()
    finally:
        await s.close()


async def test_a_slow_stream_times_out_while_the_loop_stays_responsive(emu: SplunkEmulator) -> None:
    emu.load(rows(10))
    emu.stall_after(2)
    s = SplunkSearch(emu.url, token=emu.token, timeout=0.4)
    try:
        result, beats = await heartbeat_while(s.search("index=main"))
    finally:
        await s.close()
    assert isinstance(result, AdapterTimeout), result
    assert "did not finish within 0.4 s; 2 rows had arrived" in str(result)
    assert beats >= 3  # the heartbeat kept getting the loop while we waited for rows


async def test_a_search_slow_to_start_times_out(emu: SplunkEmulator) -> None:
    emu.slow("export", 2.0, count=1)
    s = SplunkSearch(emu.url, token=emu.token, timeout=0.3)
    try:
        with pytest.raises(AdapterTimeout, match=r"did not finish within 0\.3 s"):
            await s.search("index=main")
    finally:
        await s.close()


async def test_check_names_the_version(splunk: SplunkSearch, emu: SplunkEmulator) -> None:
    assert await splunk.check() == f"Splunk 9.1.2 at {emu.url}"
    (seen,) = emu.seen("info")
    assert seen.query == {"output_mode": "json"}
    assert seen.headers["Authorization"] == f"Bearer {emu.token}"


async def test_splunk_down_unavailable_or_elsewhere(splunk: SplunkSearch, emu: SplunkEmulator) -> None:
    await emu.down()
    with pytest.raises(AdapterUnavailable, match="can't reach"):
        await splunk.search("index=main")
    await emu.up()
    emu.fail_next("export", status=503, message="Splunkd is restarting")
    with pytest.raises(AdapterUnavailable, match="503: Splunkd is restarting"):
        await splunk.search("index=main")
    other = SplunkSearch(emu.url + "/nope", token=emu.token, timeout=5.0)
    try:
        with pytest.raises(AdapterNotFound, match="is it the management port"):
            await other.check()
    finally:
        await other.close()
