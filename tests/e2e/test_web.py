"""The HTTP side: webhook plumbing (token, size, malformed bodies, nothing half-stored), /healthz, /metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic import BaseModel

from bot.app import GROUPS, build_console
from bot.context import Services
from bot.outbox import Pacing
from bot.router import CommandGroup, HookResult
from bot.store import rows
from bot.web import HookRejected
from tests.support import make_config, make_env

TOKEN = "hook-token-4567"


class Ping(BaseModel):
    name: str
    count: int


probe = CommandGroup("probe", "test hooks")


@probe.hook("probe")
async def probe_hook(services: Services, payload: Any) -> HookResult:
    ping = Ping.model_validate(payload)
    if ping.name == "reject":
        raise HookRejected("names like that are refused", 422)

    def tx(db: Any) -> None:
        for i in range(ping.count):
            db.execute("INSERT INTO events (at, kind, ref) VALUES (0, 'probe', ?)", (f"{ping.name}-{i}",))
            if ping.name == "explode" and i == 2:
                raise RuntimeError("disk on fire")

    await services.store.write(tx)
    return HookResult(202, f"stored {ping.count}")


@pytest.fixture
async def server(tmp_path: Path):
    env = make_env(tmp_path, OPSLOOP_WEBHOOK_TOKEN=TOKEN)
    ops, _ = await build_console(make_config(tmp_path / "w.db"), env, groups=(*GROUPS, probe), pacing=Pacing.unpaced())
    await ops.start()
    port = await ops.serve_http("127.0.0.1", 0)
    async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{port}") as http:
        yield ops, http
    await ops.stop()


AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def probe_rows(ops: Any) -> list[str]:
    return [r["ref"] for r in await ops.services.store.read(lambda db: rows(db, "SELECT ref FROM events"))]


async def test_a_good_hook_is_stored(server) -> None:
    ops, http = server
    r = await http.post("/hooks/probe", json={"name": "a", "count": 3}, headers=AUTH)
    assert r.status == 202 and (await r.json())["message"] == "stored 3"
    assert await probe_rows(ops) == ["a-0", "a-1", "a-2"]


@pytest.mark.parametrize(
    ("headers", "body", "status", "words"),
    [
        ({}, b'{"name":"a","count":1}', 401, "missing or wrong token"),
        ({"Authorization": "Bearer nope"}, b'{"name":"a","count":1}', 401, "missing or wrong token"),
        (AUTH, b'{"name": "a", "count": ', 400, "body is not JSON"),
        (AUTH, b'{"name": "a"}', 400, "payload not understood at count"),
        (AUTH, b'{"name": "reject", "count": 1}', 422, "names like that are refused"),
        (AUTH, b'{"name": "explode", "count": 5}', 500, "nothing was stored"),
        (AUTH, b"x" * (1024 * 1024 + 1), 413, "limit"),
        (AUTH, b'{"name": "n", "count": 9223372036854775808}', 400, "beyond 64 bits"),
        (AUTH, b'{"name": "\\ud800", "count": 1}', 400, "lone surrogate"),
        (AUTH, b"[" * 5000 + b"]" * 5000, 400, "nested too deeply"),
    ],
)
async def test_bad_requests_get_a_reason_and_store_nothing(
    server, headers: dict[str, str], body: bytes, status: int, words: str
) -> None:
    ops, http = server
    r = await http.post("/hooks/probe", data=body, headers={"Content-Type": "application/json", **headers})
    assert r.status == status
    assert words in (await r.json())["message"]
    assert await probe_rows(ops) == []


async def test_unknown_sources_and_query_tokens(server) -> None:
    _, http = server
    r = await http.post("/hooks/nope", json={}, headers=AUTH)
    assert (
        r.status == 404
        and "known: alertmanager, grafana, jenkins, nagios, probe, splunk" in (await r.json())["message"]
    )
    r = await http.post(f"/hooks/probe?token={TOKEN}", json={"name": "q", "count": 1})
    assert r.status == 401  # only sources that cannot send headers may use ?token=
    splunk_alert = {
        "sid": "s1",
        "search_name": "Errors",
        "results_link": "http://splunk/x",
        "owner": "admin",
        "app": "search",
        "result": {"host": "web01", "count": "8"},
    }
    r = await http.post(f"/hooks/splunk?token={TOKEN}", json=splunk_alert)
    assert r.status == 200, await r.text()


async def test_hooks_are_off_without_a_token(tmp_path: Path) -> None:
    ops, _ = await build_console(make_config(tmp_path / "n.db"), make_env(tmp_path), groups=(*GROUPS, probe))
    await ops.start()
    port = await ops.serve_http("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as http:
            r = await http.post(f"http://127.0.0.1:{port}/hooks/probe", json={"name": "a", "count": 1})
            assert r.status == 503 and "OPSLOOP_WEBHOOK_TOKEN" in (await r.json())["message"]
    finally:
        await ops.stop()


async def test_healthz_and_metrics(server) -> None:
    ops, http = server
    from bot.router import Invocation

    await ops.router.command(Invocation("U0ALICE", "#ops", "help", source="console"), ops.surface)
    await ops.router.command(Invocation("U0EVE", "#ops", "audit", source="console"), ops.surface)
    r = await http.get("/healthz")
    assert r.status == 200 and (await r.json())["status"] == "ok"
    r = await http.get("/metrics")
    text = await r.text()
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
    assert 'opsloop_commands_total{id="core.help",outcome="ok"} 1.0' in text
    assert 'opsloop_commands_total{id="insights.audit",outcome="refused"} 1.0' in text
    assert 'opsloop_jobs{state="failed"} 0.0' in text
    for name in ("opsloop_outbox_depth", "opsloop_ack_seconds", "opsloop_slack_ratelimited_total", "opsloop_jobs"):
        assert name in text
