"""Figure 1 of issue 7: forged, unsigned, replayed, re-signed, mistyped, oversized and truncated requests.

One real opsloop serves HTTP (Bolt in HTTP mode with its request verification on, the webhook routes,
the Slack emulator as its Web API). Every case of the matrix below is sent to `/slack/events` or to a
`/hooks/<source>` endpoint over a real socket and must be

* refused with the status the case names (401 for a signature or token that does not hold, 413 over
  the 1 MiB body limit, 415 for a content type the endpoint does not take, 400 for a body cut short);
* stopped before any handler: counters around every entry point of opsloop's router (commands, clicks,
  submits, shortcuts, events, the home tab and each hook handler) and a Bolt middleware (which only
  runs once Bolt's own verification passed) stay at zero;
* and store nothing: the row count of every table of the store is the same before and after, and the
  bot makes no Slack Web API call because of it.

The hook cases are made for every source the running app's router serves (a new hook is covered
without touching this file), and a control per endpoint (a good request) proves that the counters do
count. With OPSLOOP_RESULTS=1 the matrix is written to bench/results/forged.md.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
import pytest_asyncio

from bot.app import GROUPS, Opsloop, build_slack
from bot.outbox import Pacing
from bot.router import HookSpec
from bot.web import MAX_BODY, QUERY_TOKEN_SOURCES
from tests.emulators.slack import SlackEmulator
from tests.reliability.support_figures import md_cell, provenance, table_counts, write_figure
from tests.support import ALICE, make_config, make_env, slack_workspace

SECRET = "forged-test-signing-secret"
HOOK_TOKEN = "forged-test-hook-token"
# Sources registered by opsloop's command groups; test_every_served_endpoint_is_in_the_matrix checks
# this against what the running app actually serves.
SOURCES = sorted(h.source for g in GROUPS for h in g.hooks)
MODULE_LOOP = pytest.mark.asyncio(loop_scope="module")


# --- requests ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sig:
    """A Slack signature made when the request is sent (so a case never goes stale): over `body`, with a
    timestamp `age` seconds in the past, with `secret`; `mangle` then edits the headers."""

    body: bytes
    age: int = 0
    secret: str = SECRET
    mangle: Callable[[dict[str, str]], dict[str, str]] | None = None

    def headers(self) -> dict[str, str]:
        h = sign(self.body, int(time.time()) - self.age, self.secret)
        return self.mangle(h) if self.mangle else h


@dataclass(frozen=True)
class Req:
    path: str
    body: bytes
    headers: dict[str, str]
    sig: Sig | None = None
    chunked: bool = False  # sent with Transfer-Encoding: chunked, no Content-Length
    cut_at: int | None = None  # raw socket: declare the whole body, send this many bytes, then close

    def all_headers(self) -> dict[str, str]:
        return {**self.headers, **(self.sig.headers() if self.sig else {})}


def sign(body: bytes, ts: int, secret: str = SECRET) -> dict[str, str]:
    sig = hmac.new(secret.encode(), f"v0:{ts}:".encode() + body, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": str(ts), "X-Slack-Signature": f"v0={sig}"}


FORM = "application/x-www-form-urlencoded"
JSON = "application/json"


def command_body(text: str = "help", user: str = ALICE) -> bytes:
    return urlencode(
        {
            "token": "verification-token",
            "team_id": "T0TEST",
            "channel_id": "C0OPS",
            "user_id": user,
            "command": "/ops",
            "text": text,
            "response_url": "http://127.0.0.1:9/commands/1",
            "trigger_id": "1.2.3",
        }
    ).encode()


def action_body(user: str = ALICE) -> bytes:
    payload = {
        "type": "block_actions",
        "team": {"id": "T0TEST"},
        "user": {"id": user},
        "channel": {"id": "C0OPS"},
        "container": {"type": "message", "channel_id": "C0OPS", "message_ts": "1700000000.000100"},
        "actions": [{"action_id": "approval.approve", "value": '{"id": "1"}', "type": "button"}],
        "trigger_id": "1.2.3",
    }
    return urlencode({"payload": json.dumps(payload)}).encode()


def event_body(text: str = "<@UBOT> help") -> bytes:
    return json.dumps(
        {
            "type": "event_callback",
            "team_id": "T0TEST",
            "api_app_id": "A0TEST",
            "event_id": "Ev0FORGED",
            "event_time": int(time.time()),
            "event": {
                "type": "app_mention",
                "user": ALICE,
                "channel": "C0OPS",
                "text": text,
                "ts": "1700000001.000100",
            },
        }
    ).encode()


def slack(body: bytes, ctype: str = FORM, sig: Sig | None = None, **kw: Any) -> Req:
    return Req("/slack/events", body, {"Content-Type": ctype}, sig, **kw)


def only(header: str) -> Callable[[dict[str, str]], dict[str, str]]:
    return lambda h: {header: h[header]}


def replace(header: str, fn: Callable[[str], str]) -> Callable[[dict[str, str]], dict[str, str]]:
    return lambda h: {**h, header: fn(h[header])}


BIG = b'{"pad": "' + b"x" * MAX_BODY + b'"}'


def slack_cases() -> list[Case]:
    cmd, act, ev = command_body(), action_body(), event_body()
    ts, sig = "X-Slack-Request-Timestamp", "X-Slack-Signature"
    other = "another-signing-secret"
    return [
        Case(
            "slack",
            "command body changed after signing",
            401,
            slack(command_body("deploy api v9 to prod"), sig=Sig(cmd)),
        ),
        Case("slack", "click with the user swapped after signing", 401, slack(action_body("U0EVE"), sig=Sig(act))),
        Case("slack", "event body changed after signing", 401, slack(event_body("<@UBOT> audit"), JSON, Sig(ev))),
        Case("slack", "unsigned command", 401, slack(cmd)),
        Case("slack", "unsigned event", 401, slack(ev, JSON)),
        Case("slack", "unsigned url_verification", 401, slack(b'{"type":"url_verification","challenge":"c"}', JSON)),
        Case("slack", "signature without timestamp", 401, slack(cmd, sig=Sig(cmd, mangle=only(sig)))),
        Case("slack", "timestamp without signature", 401, slack(cmd, sig=Sig(cmd, mangle=only(ts)))),
        Case("slack", "replayed: signed 301 s ago", 401, slack(cmd, sig=Sig(cmd, age=301))),
        Case("slack", "replayed click: signed an hour ago", 401, slack(act, sig=Sig(act, age=3600))),
        Case("slack", "timestamp 6 min in the future", 401, slack(cmd, sig=Sig(cmd, age=-360))),
        Case("slack", "timestamp not a number", 401, slack(cmd, sig=Sig(cmd, mangle=replace(ts, lambda _: "soon")))),
        Case("slack", "re-signed with another secret", 401, slack(cmd, sig=Sig(cmd, secret=other))),
        Case("slack", "event re-signed with another secret", 401, slack(ev, JSON, Sig(ev, secret=other))),
        Case(
            "slack", "signature scheme v1", 401, slack(cmd, sig=Sig(cmd, mangle=replace(sig, lambda s: "v1=" + s[3:])))
        ),
        Case("slack", "signature of the empty body", 401, slack(cmd, sig=Sig(b""))),
        Case("slack", "signed, sent as text/plain", 415, slack(cmd, "text/plain", Sig(cmd))),
        Case("slack", "signed event, sent as application/xml", 415, slack(ev, "application/xml", Sig(ev))),
        Case("slack", "signed, multipart/form-data", 415, slack(cmd, "multipart/form-data; boundary=x", Sig(cmd))),
        Case("slack", "oversized, signed (Content-Length)", 413, slack(BIG, JSON, Sig(BIG))),
        Case("slack", "oversized, signed, chunked", 413, slack(BIG, JSON, Sig(BIG), chunked=True)),
        Case("slack", "oversized, unsigned", 413, slack(BIG, JSON)),
        Case("slack", "truncated: signed whole, half sent", 401, slack(cmd[: len(cmd) // 2], sig=Sig(cmd))),
        Case("slack", "truncated JSON event, signed as cut", 400, slack(ev[:40], JSON, Sig(ev[:40]))),
        Case("slack", "truncated in transit (connection closed)", None, slack(cmd, sig=Sig(cmd), cut_at=len(cmd) // 2)),
    ]


def hook(source: str, body: bytes, headers: dict[str, str], query: str = "", **kw: Any) -> Req:
    return Req(f"/hooks/{source}{query}", body, headers, **kw)


def hook_cases(source: str) -> list[Case]:
    good = {"Authorization": f"Bearer {HOOK_TOKEN}", "Content-Type": JSON}
    body = b'{"status": "firing", "alerts": []}'
    cases = [
        Case(source, "no token", 401, hook(source, body, {"Content-Type": JSON})),
        Case(source, "wrong bearer token", 401, hook(source, body, {**good, "Authorization": "Bearer nope"})),
        Case(
            source, "token with a suffix", 401, hook(source, body, {**good, "Authorization": f"Bearer {HOOK_TOKEN}x"})
        ),
        Case(
            source, "token cut short", 401, hook(source, body, {**good, "Authorization": f"Bearer {HOOK_TOKEN[:-1]}"})
        ),
        Case(source, "token as Basic auth", 401, hook(source, body, {**good, "Authorization": f"Basic {HOOK_TOKEN}"})),
        Case(source, "empty bearer", 401, hook(source, body, {**good, "Authorization": "Bearer "})),
        Case(source, "oversized without a token", 401, hook(source, BIG, {"Content-Type": JSON})),
        Case(source, "JSON sent as text/plain", 415, hook(source, body, {**good, "Content-Type": "text/plain"})),
        Case(source, "form-encoded", 415, hook(source, b"status=firing", {**good, "Content-Type": FORM})),
        Case(source, "XML", 415, hook(source, b"<alerts/>", {**good, "Content-Type": "application/xml"})),
        Case(source, "oversized (Content-Length)", 413, hook(source, BIG, good)),
        Case(source, "oversized, chunked", 413, hook(source, BIG, good, chunked=True)),
        Case(source, "truncated JSON", 400, hook(source, body[:17], good)),
        Case(source, "empty body", 400, hook(source, b"", good)),
        Case(source, "not UTF-8", 400, hook(source, b'{"status": "\xff\xfe"}', good)),
        Case(source, "truncated in transit (connection closed)", None, hook(source, body, good, cut_at=10)),
    ]
    if source in QUERY_TOKEN_SOURCES:
        cases.append(Case(source, "wrong ?token=", 401, hook(source, body, {"Content-Type": JSON}, "?token=nope")))
    else:
        cases.append(
            Case(
                source,
                "right token in ?token= (headers only)",
                401,
                hook(source, body, {"Content-Type": JSON}, f"?token={HOOK_TOKEN}"),
            )
        )
    return cases


@dataclass(frozen=True)
class Case:
    endpoint: str  # "slack" or the hook source
    name: str
    expect: int | None  # None: the request never arrived whole; any 4xx or a closed connection
    req: Req

    @property
    def id(self) -> str:
        return f"{self.endpoint}: {self.name}"


CASES = [*slack_cases(), *(c for s in SOURCES for c in hook_cases(s))]


# --- the opsloop under test -------------------------------------------------------------------------------


@dataclass
class Rig:
    ops: Opsloop
    emu: SlackEmulator
    base: str
    reached: Counter[str] = field(default_factory=Counter)
    results: list[tuple[Case, int | None, str]] = field(default_factory=list)
    leaks: int = 0  # handler invocations caused by the matrix's requests (the bar: 0)


def _counting(reached: Counter[str], name: str, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def wrapper(*args: Any, **kw: Any) -> Any:
        reached[name] += 1
        return await fn(*args, **kw)

    return wrapper


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rig(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    tmp = tmp_path_factory.mktemp("forged")
    async with SlackEmulator(signing_secret=SECRET) as emu:
        slack_workspace(emu)
        cfg = make_config(tmp / "opsloop.db", channels={"default": "#ops", "approvals": "#approvals", "alerts": "#ops"})
        env = make_env(
            tmp,
            SLACK_BOT_TOKEN=emu.bot_token,
            SLACK_SIGNING_SECRET=SECRET,
            SLACK_API_URL=emu.api_url,
            OPSLOOP_WEBHOOK_TOKEN=HOOK_TOKEN,
        )
        ops, bolt, frontend = await build_slack(cfg, env, pacing=Pacing.unpaced())
        reached: Counter[str] = Counter()

        # Bolt runs its own middleware (signature verification first) before anything registered here;
        # opsloop's own (SlashCommands) comes first of those registered and answers `/ops`.
        @bolt.middleware
        async def past_verification(next: Callable[[], Awaitable[Any]]) -> Any:
            reached["bolt listener middleware"] += 1
            return await next()

        router = ops.router
        for name in ("command", "click", "submit", "shortcut", "event", "home"):
            setattr(router, name, _counting(reached, f"router.{name}", getattr(router, name)))
        for source, spec in list(router.hooks.items()):
            router.hooks[source] = HookSpec(source, _counting(reached, f"hook {source}", spec.handler))
        await ops.start()
        port = await ops.serve_http("127.0.0.1", 0, bolt=bolt)
        rig = Rig(ops, emu, f"http://127.0.0.1:{port}", reached)
        try:
            yield rig
        finally:
            await frontend.wait_late()
            await ops.stop()
            write_figure("forged", render(rig))


async def send(base: str, req: Req) -> tuple[int | None, str]:
    """The status and body of the answer; None when the server closed the connection without one."""
    if req.cut_at is not None:
        return await _send_cut(base, req)
    data: Any = req.body
    headers = req.all_headers()
    if req.chunked:

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(0, len(req.body), 64 * 1024):
                yield req.body[i : i + 64 * 1024]

        data = chunks()
    async with aiohttp.ClientSession() as http:
        try:
            async with http.post(base + req.path, data=data, headers=headers) as resp:
                return resp.status, await resp.text()
        except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as err:
            # The server may answer 413 and close while the client is still sending.
            return None, f"{type(err).__name__}: {err}"


async def _send_cut(base: str, req: Req) -> tuple[int | None, str]:
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = f"POST {req.path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(req.body)}\r\nConnection: close\r\n"
    head += "".join(f"{k}: {val}\r\n" for k, val in req.all_headers().items()) + "\r\n"
    writer.write(head.encode() + req.body[: req.cut_at])
    await writer.drain()
    writer.write_eof()
    try:
        raw = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
    if not raw:
        return None, "connection closed without an answer"
    status_line = raw.split(b"\r\n", 1)[0].decode()
    return int(status_line.split()[1]), raw.decode(errors="replace")


@MODULE_LOOP
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_refused_before_any_handler_and_nothing_stored(rig: Rig, case: Case) -> None:
    before = await table_counts(rig.ops.services)
    calls_before = len(rig.emu.calls)
    reached_before = sum(rig.reached.values())
    status, text = await send(rig.base, case.req)
    await rig.ops.services.jobs.wait_idle()
    await rig.ops.services.outbox.drain(timeout=10)
    rig.results.append((case, status, text))
    rig.leaks += sum(rig.reached.values()) - reached_before
    if case.expect is None:
        assert status is None or 400 <= status < 500, (status, text)
    else:
        assert status == case.expect, (status, text)
    if case.endpoint != "slack" and status is not None:
        assert json.loads(text)["message"], text  # a refusal says why
    assert sum(rig.reached.values()) == reached_before, dict(rig.reached)
    assert await table_counts(rig.ops.services) == before
    assert [c.method for c in rig.emu.calls[calls_before:]] == []


@MODULE_LOOP
async def test_controls_reach_the_handlers(rig: Rig) -> None:
    """A good request of each endpoint does reach its handler, so the zero counts above mean something."""
    start = Counter(rig.reached)
    cmd, act = command_body("help"), action_body()
    for body in (cmd, act):
        status, text = await send(rig.base, slack(body, sig=Sig(body)))
        assert status == 200, text
    for source in SOURCES:
        headers = {"Authorization": f"Bearer {HOOK_TOKEN}", "Content-Type": "application/json; charset=utf-8"}
        status, text = await send(rig.base, hook(source, b"{}", headers))
        assert status is not None and status < 500, text
    gained = rig.reached - start
    # `/ops` is answered by opsloop's own middleware ahead of the probe; the click passes the probe.
    assert gained["router.command"] == 1 and gained["router.click"] == 1
    assert gained["bolt listener middleware"] == 1
    assert all(gained[f"hook {s}"] == 1 for s in SOURCES), gained


@MODULE_LOOP
async def test_every_served_endpoint_is_in_the_matrix(rig: Rig) -> None:
    """Enumerated from the running app: its POST routes and the hook sources its router serves."""
    app = rig.ops._runner.app  # type: ignore[union-attr]
    posts = {r.resource.canonical for r in app.router.routes() if r.method == "POST" and r.resource is not None}
    served: set[str] = set()
    for path in posts:
        if path == "/hooks/{source}":
            served |= set(rig.ops.router.hooks)
        elif path == "/slack/events":
            served.add("slack")
        else:
            served.add(path)
    covered = {c.endpoint for c in CASES}
    assert served == covered, f"not in the matrix: {served - covered}"
    assert len(CASES) >= 25


def render(rig: Rig) -> str:
    refused = [r for r in rig.results if r[1] is None or r[1] >= 400]
    by_endpoint: dict[str, list[tuple[Case, int | None, str]]] = {}
    for r in rig.results:
        by_endpoint.setdefault(r[0].endpoint, []).append(r)
    lines = [
        "# Forged input (issue 7, figure 1)",
        "",
        provenance("OPSLOOP_RESULTS=1 .venv/bin/python -m pytest tests/reliability/test_forged.py"),
        "",
        f"{len(rig.results)} requests to {len(by_endpoint)} endpoints, {len(refused)} refused; handler or Bolt "
        f"listener invocations caused by them: {rig.leaks}; rows stored and Slack calls made because of them: "
        "checked per case over every table and the Slack emulator's call log (a failing case fails the test). "
        "Bar: all refused with the expected status, 0 handlers reached, nothing stored.",
        "",
        "| endpoint | cases | refused | statuses |",
        "|---|---|---|---|",
    ]
    for endpoint, results in by_endpoint.items():
        statuses = Counter("closed" if s is None else str(s) for _, s, _ in results)
        n_refused = sum(1 for _, s, _ in results if s is None or s >= 400)
        lines.append(
            f"| {endpoint} | {len(results)} | {n_refused} | "
            + ", ".join(f"{k}×{n}" for k, n in sorted(statuses.items()))
            + " |"
        )
    lines += ["", "| case | expected | got | answer |", "|---|---|---|---|"]
    for case, status, text in rig.results:
        lines.append(
            f"| {md_cell(case.id, 80)} | {case.expect or '4xx or closed'} | {status or 'closed'} "
            f"| {md_cell(text, 100)} |"
        )
    return "\n".join(lines) + "\n"


def test_case_ids_are_unique() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
