"""`python -m bench.alerts`: the alert pipeline under load, issue 5's three benchmarks, each with its baseline.

1. **ingestion**: Alertmanager webhook payloads (version 4) of 50 alerts each, posted over N keep-alive
   connections as fast as they are answered, to `opsloop run`'s `/hooks/alertmanager` and to a bare
   aiohttp endpoint that only parses the same JSON (`python -m bench.servers hook`), one after the
   other in the same run. opsloop answers a hook after the store's commit; the bench also waits until
   the alerts table holds every alert of the phase. Phases: `firing` (every payload a new group of 50
   new alerts) and `resolved` (the same payloads, resolved). Target: ≥ 10,000 alerts/s and ≥ 0.5 of
   the bare endpoint.
2. **storm**: one storm (3,000 alerts in 300 groups, trickling in over 60 s, then all resolved)
   injected into ONE real Alertmanager 0.25 (`POST /api/v2/alerts`), which notifies both opsloop (its
   webhook receiver) and its own `slack_configs` receiver (an incoming webhook of the Slack emulator).
   Both post into the same Slack emulator with Slack's per-channel limit on, each in its own
   channel(s). Per side: Slack calls, 429s, time to the first message, and how many of the 3,000
   alerts can be found in the channel (top level or a thread) at the end.
3. **ack latency**: signed `/ops help` slash commands at a steady rate (open loop) to opsloop's
   `/slack/events`, first with no storm, then during the storm, same opsloop process: p50, p99.

Roles (`python -m bench.alerts ROLE …`): `tools` (the Slack emulator with the channels and incoming
webhooks, plus a small JSON control API), `probe` (the `/ops help` prober), `opsloop` (`opsloop run`
through `bot.cli`, optionally under cProfile in its event-loop and store-writer threads).

Diagnosis: with `BENCH_STALLS=/path/to/log` in the environment, opsloop's event-loop thread is sampled every
2 ms and every stretch of 30 ms or more outside its epoll wait is logged with the stacks seen, as is every
store batch that took that long (items, time in COMMIT).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import shutil
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from bench import machine, report
from bench import wrk as load
from bench.procs import (
    BenchError,
    Server,
    clean_env,
    free_port,
    post,
    request_json,
    spawn,
    wait_announced,
    wait_http,
)
from bench.servers import BOT_TOKEN, HOOK_PATH, SIGNING_SECRET, serve

ROOT = Path(__file__).resolve().parent.parent
ACTOR = "U0ALICE"  # an admin and developer in tests/support.py's config_data()
WEBHOOK_TOKEN = "bench-hook-token"
AM_BINARY = "prometheus-alertmanager"
LANES = ("opsloop", "alertmanager")
PER_PAYLOAD = 50

TARGET_ALERTS_S = 10_000.0
TARGET_BARE_RATIO = 0.5
TARGET_CALL_RATIO = 0.5  # opsloop's Slack calls / Alertmanager's slack receiver's
TARGET_FIRST_CARD_S = 2.0  # after opsloop received its first webhook
TARGET_ACK_P99_MS = 100.0
BUSY_WARNING_CORES = 0.25

TOKEN = re.compile(r"\[a(\d+)\]")  # every storm alert's summary carries `[a0042]`
GROUP_NAME = re.compile(r"\b(Storm\d+)\b")
GENERATOR_URL = "http://prometheus.example:9090/graph?g0.expr=node_filesystem_avail_bytes%20%3C%201e9&g0.tab=1"
_LOG_TS = re.compile(r"^ts=\S+ ")


def lane_channels(lane: str, n: int) -> list[tuple[str, str]]:
    """(id, name) of the channels a side posts into: `#alerts…` for opsloop, `#am-alerts…` for Alertmanager."""
    prefix, tag = ("alerts", "OP") if lane == "opsloop" else ("am-alerts", "AM")
    if n == 1:
        return [(f"C0{tag}00", prefix)]
    return [(f"C0{tag}{k:02d}", f"{prefix}-{k}") for k in range(n)]


def _now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _pct(values: Sequence[float], p: float) -> float:
    """The p-th percentile (nearest rank) of `values`; 0 for none."""
    if not values:
        return 0.0
    s = sorted(values)
    return float(s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))])


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


# --- role `tools`: the Slack emulator and its control API ----------------------------------------------


def visible_text(text: str, blocks: list[dict[str, Any]], attachments: list[dict[str, Any]]) -> str:
    """What a reader of the channel sees of a message: the text objects of its blocks (button labels too,
    never button values, action ids or URLs) or, without blocks, its text; and its attachments' title,
    pretext, text and fields. An alert counts as represented only if it shows here."""
    out: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") in ("mrkdwn", "plain_text") and isinstance(node.get("text"), str):
                out.append(node["text"])
                return
            for k, val in node.items():
                if k not in ("value", "action_id", "url", "block_id", "image_url"):
                    walk(val)
        elif isinstance(node, list):
            for x in node:
                walk(x)

    if blocks:
        walk(blocks)
    else:
        out.append(text)
    for a in attachments:
        if isinstance(a, dict):
            out += [str(a.get(k, "")) for k in ("pretext", "title", "text")]
            out += [f"{f.get('title', '')} {f.get('value', '')}" for f in a.get("fields") or [] if isinstance(f, dict)]
    return "\n".join(out)


def _card_states(visible: str) -> list[tuple[str, str]]:
    """("firing"|"resolved", group name) of every group a message shows: opsloop's cards and digest pages
    (`FIRING: Storm001`, `RESOLVED: *Storm001*`), Alertmanager's notifications (`Storm001 is firing`)."""
    out = []
    for line in visible.splitlines():
        m = GROUP_NAME.search(line)
        if m is None:
            continue
        if "RESOLVED:" in line or line.endswith(" is resolved"):
            out.append(("resolved", m[1]))
        elif "FIRING:" in line or line.endswith(" is firing"):
            out.append(("firing", m[1]))
    return out


async def serve_tools(channels: int) -> None:
    """The Slack emulator (rate limits on), the lanes' channels and Alertmanager's incoming webhooks."""
    from aiohttp import web

    from tests.emulators.slack import SlackEmulator
    from tests.support import slack_workspace

    emu = SlackEmulator(signing_secret=SIGNING_SECRET, bot_token=BOT_TOKEN)
    await emu.start()
    slack_workspace(emu)
    for lane in LANES:
        for cid, name in lane_channels(lane, channels):
            emu.add_channel(cid, name)
    hooks = [emu.add_incoming_webhook(cid) for cid, _ in lane_channels("alertmanager", channels)]
    scanned: dict[tuple[str, str, int], tuple[frozenset[int], list[tuple[str, str]]]] = {}

    def lane_of(method: str) -> str:
        return "alertmanager" if method == "incoming-webhook" else "opsloop"

    async def info(_: web.Request) -> web.Response:
        return web.json_response(
            {"api_url": emu.api_url, "base_url": emu.base_url, "webhooks": hooks, "team_id": emu.team_id}
        )

    async def stats(_: web.Request) -> web.Response:
        calls: dict[str, Counter[str]] = {lane: Counter() for lane in LANES}
        for c in emu.calls:
            calls[lane_of(c.method)][f"{c.method} {c.status}"] += 1
        return web.json_response(
            {"calls": {k: dict(v) for k, v in calls.items()}, "server_errors": emu.server_errors[:20]}
        )

    async def reach(request: web.Request) -> web.Response:
        """Which storm alerts (`[aNNNN]`) a side's channels show anywhere, and its groups' states."""
        lane, n = request.query["lane"], int(request.query.get("n", "0"))
        found: set[int] = set()
        states: dict[str, set[str]] = {"firing": set(), "resolved": set()}
        top = replies = edits = digests = 0
        first: float | None = None
        for cid, _ in lane_channels(lane, channels):
            for m in emu.messages(cid):
                key = (cid, m.ts, m.edited_count)
                hit = scanned.get(key)
                if hit is None:
                    seen = visible_text(m.text, m.blocks, m.attachments)
                    hit = scanned[key] = (frozenset(int(x) for x in TOKEN.findall(seen)), _card_states(seen))
                found |= hit[0]
                for state, name in hit[1]:
                    states[state].add(name)
                if m.is_reply:
                    replies += 1
                else:
                    top += 1
                edits += m.edited_count
                digests += m.text.startswith("🌩")
                first = float(m.ts) if first is None else min(first, float(m.ts))
        missing = [i for i in range(n) if i not in found]
        return web.json_response(
            {
                "found": len(found & set(range(n))),
                "missing": len(missing),
                "missing_sample": missing[:12],
                "top_level": top,
                "replies": replies,
                "edits": edits,
                "digests": digests,
                "first_message_at": first,
                "groups_firing": len(states["firing"] - states["resolved"]),
                "groups_resolved": len(states["resolved"]),
                "groups_seen": len(states["firing"] | states["resolved"]),
            }
        )

    app = web.Application()
    app.router.add_get("/info", info)
    app.router.add_get("/stats", stats)
    app.router.add_get("/reach", reach)
    try:
        await serve(app)
    finally:
        await emu.stop()


# --- role `probe`: /ops help at a steady rate -----------------------------------------------------------


async def probe_main(url: str, response_url: str, rate: float, seconds: float, out: Path) -> int:
    """Open loop: request k is due at start + k/rate whatever the earlier ones do; its latency counts from
    when it was due (so a stalled server shows up as latency, not as fewer requests)."""
    import aiohttp

    body = load.command_body(ACTOR, "help", response_url)
    results: list[dict[str, Any]] = []

    async def one(session: aiohttp.ClientSession, due: float) -> None:
        status, ok, error = 0, False, ""
        try:
            async with session.post(url, data=body, headers=load.signed_headers(SIGNING_SECRET, body)) as resp:
                text = await resp.text()
                status, ok = resp.status, resp.status == 200 and "opsloop commands" in text
                if not ok:
                    error = text[:200]
        except (aiohttp.ClientError, TimeoutError) as err:
            error = f"{type(err).__name__}: {err}"
        results.append({"at": round(due - started, 4), "ms": (time.monotonic() - due) * 1000, "status": status,
                        "ok": ok, "error": error})  # fmt: skip

    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
        started = time.monotonic()
        tasks = []
        for k in range(max(1, int(rate * seconds))):
            due = started + k / rate
            if (delay := due - time.monotonic()) > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(session, due)))
        await asyncio.gather(*tasks)
    await asyncio.to_thread(out.write_text, json.dumps(results))
    print(f"done {len(results)}", flush=True)
    return 0


@dataclass
class AckSample:
    """One probe run: what a user typing `/ops help` waited."""

    label: str
    rate: float
    seconds: float
    results: list[dict[str, Any]]

    @property
    def latencies(self) -> list[float]:
        return [r["ms"] for r in self.results if r["ok"]]

    @property
    def errors(self) -> int:
        return sum(1 for r in self.results if not r["ok"])

    def to_json(self) -> dict[str, Any]:
        ms = self.latencies
        errors = [r["error"] or f"HTTP {r['status']}" for r in self.results if not r["ok"]]
        return {
            "rate_per_s": self.rate,
            "seconds": self.seconds,
            "requests": len(self.results),
            "errors": self.errors,
            "first_errors": sorted(set(errors))[:5],
            "p50_ms": round(_pct(ms, 50), 2),
            "p90_ms": round(_pct(ms, 90), 2),
            "p99_ms": round(_pct(ms, 99), 2),
            "max_ms": round(max(ms, default=0.0), 2),
            "mean_ms": round(statistics.fmean(ms), 2) if ms else 0.0,
            "over_100ms": sum(1 for x in ms if x > 100),
        }


def start_probe(work: Path, label: str, url: str, response_url: str, rate: float, seconds: float) -> Server:
    out = work / f"probe-{label}.json"
    argv = [sys.executable, "-m", "bench.alerts", "probe", "--url", url, "--response-url", response_url]
    argv += ["--rate", str(rate), "--seconds", str(seconds), "--out", str(out)]
    return spawn(f"probe-{label}", argv, clean_env(), work / f"probe-{label}.log", ROOT)


def finish_probe(server: Server, label: str, rate: float, seconds: float, timeout: float) -> AckSample:
    try:
        server.proc.wait(timeout)
    except Exception:
        server.stop()
        raise BenchError(f"the {label} probe did not finish:\n{server.log_tail()}") from None
    out = server.log.parent / f"probe-{label}.json"
    if server.proc.returncode != 0 or not out.exists():
        raise BenchError(f"the {label} probe failed ({server.proc.returncode}):\n{server.log_tail()}")
    return AckSample(label, rate, seconds, json.loads(out.read_text()))


# --- role `opsloop`: opsloop run, optionally profiled ---------------------------------------------------


def _name_os_threads() -> None:
    """Give every Python thread started from now on its name in the OS too (Python 3.11 does not), so
    /proc/PID/task/TID/comm tells the store's writer ("store-writer") from its readers and the pools."""
    import ctypes
    import threading

    try:
        prctl = ctypes.CDLL(None).prctl
    except (OSError, AttributeError):
        return
    bootstrap = threading.Thread._bootstrap_inner  # type: ignore[attr-defined]

    def named(self: threading.Thread) -> None:
        prctl(15, self.name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
        bootstrap(self)

    threading.Thread._bootstrap_inner = named  # type: ignore[attr-defined]


def _watch_stalls(out: Path, every: float = 0.002, report_over: float = 0.03) -> None:
    """Diagnosis: sample the main (event-loop) thread every `every` s; a stretch of `report_over` s or more
    without it waiting in epoll is written to `out` with the stacks seen, and so is every store batch that
    took that long (its size, its time in the writes and in COMMIT)."""
    import threading
    import traceback

    import bot.store

    main = threading.main_thread().ident
    lock = threading.Lock()

    def log(line: str) -> None:
        with lock, out.open("a") as f:
            f.write(line + "\n")

    def sampler() -> None:
        busy_since: float | None = None
        stacks: Counter[str] = Counter()
        while True:
            time.sleep(every)
            frame = sys._current_frames().get(main)
            if frame is None:
                return
            idle = frame.f_code.co_name in ("select", "poll") and "selectors" in frame.f_code.co_filename
            now = time.monotonic()
            if idle:
                if busy_since is not None and now - busy_since >= report_over:
                    top = "\n".join(f"    {n}x {st}" for st, n in stacks.most_common(3))
                    log(f"loop busy {1000 * (now - busy_since):.0f} ms at {time.time():.3f}\n{top}")
                busy_since = None
                stacks.clear()
                continue
            if busy_since is None:
                busy_since = now
            st = " < ".join(
                f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(traceback.extract_stack(frame)[-8:])
            )
            stacks[st] += 1

    threading.Thread(target=sampler, name="stall-watch", daemon=True).start()
    original = bot.store.Store._commit_batch

    def timed(self: bot.store.Store, conn: Any, db: Any, batch: list[Any]) -> Any:
        t0 = time.monotonic()
        commit_at = [0.0]
        real_execute = conn.execute

        class Conn:
            def __getattr__(self, name: str) -> Any:
                return getattr(conn, name)

            def execute(self, sql: str, *a: Any) -> Any:
                if sql == "COMMIT":
                    commit_at[0] = time.monotonic()
                return real_execute(sql, *a)

        result = original(self, Conn(), db, batch)
        took = time.monotonic() - t0
        if took >= report_over:
            commit = time.monotonic() - commit_at[0] if commit_at[0] else 0.0
            log(
                f"store batch of {len(batch)} took {1000 * took:.0f} ms (commit {1000 * commit:.0f} ms)"
                f" at {time.time():.3f}"
            )
        return result

    bot.store.Store._commit_batch = timed  # type: ignore[method-assign]


def run_opsloop(config: str, profile_dir: Path | None) -> int:
    """`opsloop run --config CONFIG` through bot.cli (what the `opsloop` script runs), with its threads named
    in the OS. With `profile_dir`: cProfile, switched on by SIGUSR1 and off by SIGUSR2 (which writes loop.prof
    and writer.prof there), so only the measured phases are profiled. The event-loop thread is profiled
    throughout (its idle `epoll` wait shows as such); the store's writer thread only while it runs a batch
    (`Store._commit_batch`), never while it waits."""
    from bot import cli

    _name_os_threads()
    if os.environ.get("BENCH_STALLS"):
        _watch_stalls(Path(os.environ["BENCH_STALLS"]))
    if profile_dir is None:
        return cli.main(["run", "--config", config])
    import cProfile

    import bot.store

    loop_prof, writer_prof = cProfile.Profile(), cProfile.Profile()
    on = [False]
    original = bot.store.Store._commit_batch

    def profiled_batch(self: bot.store.Store, *args: Any) -> Any:
        if not on[0]:
            return original(self, *args)
        writer_prof.enable()  # in the writer thread: profiles this thread only
        try:
            return original(self, *args)
        finally:
            writer_prof.disable()

    def start(*_: Any) -> None:
        on[0] = True
        loop_prof.enable()

    def stop(*_: Any) -> None:
        loop_prof.disable()
        on[0] = False
        writer_prof.dump_stats(str(profile_dir / "writer.prof"))
        loop_prof.dump_stats(str(profile_dir / "loop.prof"))

    bot.store.Store._commit_batch = profiled_batch  # type: ignore[method-assign]
    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    return cli.main(["run", "--config", config])


# --- shared set-up ---------------------------------------------------------------------------------------


def start_tools(work: Path, channels: int) -> tuple[Server, dict[str, Any]]:
    """`python -m bench.alerts tools`: its own process, its CPU not counted for anyone."""
    argv = [sys.executable, "-m", "bench.alerts", "tools", "--channels", str(channels)]
    server = wait_announced(spawn("tools", argv, clean_env(), work / "tools.log", ROOT))
    return server, request_json(f"http://127.0.0.1:{server.port}/info")


def opsloop_config(work: Path, channels: int) -> tuple[Path, Path]:
    """tests/support.py's config (real roles and rules), alerts to `#alerts` (or by team to `#alerts-K`);
    everything else (storm mode at 10 new groups per minute, pacing) as shipped."""
    from tests.support import config_data

    db = work / "opsloop.db"
    data = config_data(db)
    names = [name for _, name in lane_channels("opsloop", channels)]
    data["channels"]["alerts"] = f"#{names[0]}"
    if channels > 1:
        data["alerts"] = {"routes": [{"match": {"team": f"t{k}"}, "channel": f"#{n}"} for k, n in enumerate(names)]}
    config = work / "opsloop.yml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    return config, db


def start_opsloop(work: Path, api_url: str, channels: int, profile_dir: Path | None = None) -> tuple[Server, Path]:
    """`opsloop run` (the installed entry point; through this module's `opsloop` role when profiling)."""
    config, db = opsloop_config(work, channels)
    port = free_port()
    env = clean_env(
        SLACK_BOT_TOKEN=BOT_TOKEN,
        SLACK_SIGNING_SECRET=SIGNING_SECRET,
        SLACK_API_URL=api_url,
        OPSLOOP_DB=str(db),
        OPSLOOP_HTTP_HOST="127.0.0.1",
        OPSLOOP_HTTP_PORT=str(port),
        OPSLOOP_WEBHOOK_TOKEN=WEBHOOK_TOKEN,
    )
    argv = [sys.executable, "-m", "bench.alerts", "opsloop", "--config", str(config)]
    if profile_dir is not None:
        argv += ["--profile", str(profile_dir)]
    server = spawn("opsloop", argv, env, work / "opsloop.log", ROOT)
    server.port = port
    return wait_http(server, "/healthz"), db


def db_value(db: Path, sql: str, params: Sequence[Any] = ()) -> Any:
    """One value from opsloop's database, read-only while it runs (WAL: never blocks its writer)."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
        row = conn.execute(sql, tuple(params)).fetchone()
        return row[0] if row else None


def db_rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
        return list(conn.execute(sql).fetchall())


def opsloop_metrics(server: Server) -> dict[str, float]:
    """opsloop's own counters about Slack writes, from GET /metrics."""
    status, text = _get(server.url("/metrics"))
    if status != 200:
        return {}
    keep = ("opsloop_outbox_", "opsloop_slack_", "opsloop_hooks_total")
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(keep) and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            if "_created" not in name:
                out[name] = float(value)
    return out


def _get(url: str) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=10) as resp:
            return int(resp.status), resp.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        return err.code, ""
    except OSError:
        return 0, ""


def log_findings(server: Server, problems: list[str], warnings: list[str]) -> None:
    """Errors in opsloop's log are problems; each distinct warning is shown once, with how often."""
    lines = server.log.read_text(errors="replace").splitlines()
    errors = [line for line in lines if "level=error" in line or "Traceback" in line]
    if errors:
        problems.append(f"{server.name} logged {len(errors)} error(s), first: {errors[0][:300]}")
    shapes: Counter[str] = Counter()
    first: dict[str, str] = {}
    for line in lines:
        if "level=warning" in line:
            shape = re.sub(r"\d+(\.\d+)?", "N", _LOG_TS.sub("", line))[:160]
            shapes[shape] += 1
            first.setdefault(shape, _LOG_TS.sub("", line)[:240])
    warnings += [f"{server.name} logged ({n}x): {first[s]}" for s, n in shapes.most_common(6)]


def threads_cpu(server: Server) -> dict[str, float]:
    """CPU seconds so far per kind of thread of a process (by OS thread name; see `_name_os_threads`)."""
    from bench.procs import _stat_cpu

    out: Counter[str] = Counter()
    for task in Path(f"/proc/{server.pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            cpu = _stat_cpu(task / "stat")
        except OSError:  # the thread ended meanwhile
            continue
        kind = "event loop" if task.name == str(server.pid) else re.sub(r"[-_]?\d+$", "", name)
        out[kind] += cpu
    return dict(out)


def threads_switches(server: Server) -> dict[str, int]:
    """Context switches so far per kind of thread (voluntary and not): a thread that waits for the GIL,
    or for the other thread's SQLite step, switches once per wait."""
    out: Counter[str] = Counter()
    for task in Path(f"/proc/{server.pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            status = (task / "status").read_text()
        except OSError:
            continue
        kind = "event loop" if task.name == str(server.pid) else re.sub(r"[-_]?\d+$", "", name)
        out[kind] += sum(int(m) for m in re.findall(r"(?m)^(?:non)?voluntary_ctxt_switches:\s+(\d+)", status))
    return dict(out)


def _self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


# --- 1. ingestion ------------------------------------------------------------------------------------------

_STARTS = "2026-11-26T08:00:00.000Z"
_ENDS = "2026-11-26T08:05:00.000Z"
_ZERO = "0001-01-01T00:00:00Z"  # Alertmanager's endsAt of a firing alert
_PREFIX_CODE = {"Ingest": 1, "Warm": 2}


def webhook_payload(prefix: str, n: int, status: str) -> dict[str, Any]:
    """One Alertmanager webhook delivery (version 4): group `<prefix>NNNNN` with 50 alerts, shaped like
    node-exporter alerts (7 labels, 3 annotations, a generatorURL with a PromQL expression)."""
    name = f"{prefix}{n:05d}"
    alerts = []
    for j in range(PER_PAYLOAD):
        labels = {
            "alertname": name,
            "env": "prod",
            "instance": f"10.{n // 250 % 250}.{n % 250}.{j}:9100",
            "job": "node",
            "service": f"svc-{n % 20:02d}",
            "severity": ("critical", "warning", "info")[n % 3],
            "team": f"team-{n % 7}",
        }
        alerts.append(
            {
                "status": status,
                "labels": labels,
                "annotations": {
                    "summary": f"{name}: disk almost full on {labels['instance']}",
                    "description": "Filesystem /var has less than 10% space left (currently 7.3%) for 5 minutes.",
                    "runbook_url": f"https://runbooks.example.com/node/{name}",
                },
                "startsAt": _STARTS,
                "endsAt": _ZERO if status == "firing" else _ENDS,
                "generatorURL": GENERATOR_URL,
                "fingerprint": f"{_PREFIX_CODE[prefix]:02x}{n:06x}{j:08x}",  # unique across prefixes
            }
        )
    return {
        "receiver": "opsloop",
        "status": status,
        "alerts": alerts,
        "groupLabels": {"alertname": name},
        "commonLabels": {"alertname": name, "env": "prod", "job": "node"},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.example:9093",
        "version": "4",
        "groupKey": f'{{}}:{{alertname="{name}"}}',
        "truncatedAlerts": 0,
    }


@dataclass
class LoadResult:
    """One phase's requests as the client saw them."""

    requests: int
    wall_s: float
    latencies_ms: list[float]
    errors: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "wall_s": round(self.wall_s, 3),
            "p50_ms": round(_pct(self.latencies_ms, 50), 2),
            "p99_ms": round(_pct(self.latencies_ms, 99), 2),
            "max_ms": round(max(self.latencies_ms, default=0.0), 2),
            "errors": len(self.errors),
            "first_errors": self.errors[:5],
        }


async def post_all(url: str, bodies: Sequence[bytes], connections: int) -> LoadResult:
    """Closed loop: `connections` workers, each posting the next body as soon as its last one was answered."""
    import aiohttp

    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {WEBHOOK_TOKEN}"}
    latencies: list[float] = []
    errors: list[str] = []
    queue = iter(bodies)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections), timeout=timeout) as s:

        async def worker() -> None:
            for body in queue:
                t = time.perf_counter()
                try:
                    async with s.post(url, data=body, headers=headers) as resp:
                        text = await resp.text()
                        if resp.status != 200 or f"{PER_PAYLOAD} alerts" not in text:
                            errors.append(f"{resp.status} {text[:200]}")
                except (aiohttp.ClientError, TimeoutError) as err:
                    errors.append(f"{type(err).__name__}: {err}")
                latencies.append((time.perf_counter() - t) * 1000)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        wall = time.perf_counter() - started
    return LoadResult(len(bodies), wall, latencies, errors)


@dataclass
class PhaseRun:
    """One phase against one server process."""

    phase: str
    alerts: int
    load: LoadResult
    seconds: float  # until every alert was answered (bare) or stored (opsloop)
    cpu: machine.CpuWindow
    client_cpu_s: float

    @property
    def alerts_per_s(self) -> float:
        return self.alerts / self.seconds if self.seconds else 0.0

    @property
    def cpu_us_per_alert(self) -> float:
        return self.cpu.server / self.alerts * 1e6 if self.alerts else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "alerts": self.alerts,
            "seconds": round(self.seconds, 3),
            "alerts_per_s": round(self.alerts_per_s, 1),
            "load": self.load.to_json(),
            "cpu": self.cpu.to_json(),
            "cpu_us_per_alert": round(self.cpu_us_per_alert, 2),
            "off_loop_cpu_us_per_alert": round((self.cpu.server - self.cpu.server_main) / self.alerts * 1e6, 2),
            "capacity_alerts_per_cpu_s": round(self.alerts / self.cpu.server) if self.cpu.server else None,
            "client_cores": round(self.client_cpu_s / self.cpu.wall, 2) if self.cpu.wall else None,
        }


@dataclass(frozen=True)
class IngestOptions:
    payloads: int
    warmup: int
    connections: int
    repeat: int
    servers: tuple[str, ...]
    profile: bool


def _wait_stored(db: Path, sql: str, expected: int, timeout: float = 60.0) -> float:
    """Monotonic time at which `sql` (a count) reached `expected` in opsloop's database."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if int(db_value(db, sql) or 0) >= expected:
            return time.monotonic()
        time.sleep(0.01)
    got = db_value(db, sql)
    raise BenchError(f"opsloop's database has {got} of {expected} for {sql!r} after {timeout:.0f} s")


def ingest_round(
    name: str, work: Path, api_url: str, phases: dict[str, list[bytes]], warm: list[bytes], opts: IngestOptions
) -> dict[str, Any]:
    """A fresh server process: check, warm up, then each phase as fast as it is answered; CPU per phase."""
    work.mkdir()
    db: Path | None = None
    profile_dir = work / "profile" if opts.profile else None
    if profile_dir is not None:
        profile_dir.mkdir()
    if name == "opsloop":
        server, db = start_opsloop(work, api_url, 1, profile_dir)
    else:
        server = wait_announced(
            spawn(name, [sys.executable, "-m", "bench.servers", "hook"], clean_env(), work / f"{name}.log", ROOT)
        )
    url = server.url(HOOK_PATH)
    out: dict[str, Any] = {"phases": {}}
    try:
        status, text = post(
            url, warm[0], {"Content-Type": "application/json", "Authorization": f"Bearer {WEBHOOK_TOKEN}"}
        )
        if status != 200 or f"{PER_PAYLOAD} alerts" not in text:
            raise BenchError(f"{name}: the check payload was answered {status} {text[:300]!r}")
        asyncio.run(post_all(url, warm[1:], opts.connections))
        out["busy_cores_before"] = round(machine.wait_quiet(20.0), 3)
        if profile_dir is not None:
            os.kill(server.pid, signal.SIGUSR1)
        done = 0
        for phase, bodies in phases.items():
            alerts = len(bodies) * PER_PAYLOAD
            marks = (
                time.monotonic(),
                machine.busy_seconds(),
                server.cpu_seconds(),
                server.main_thread_cpu_seconds(),
                _self_cpu(),
            )
            threads0, switches0 = threads_cpu(server), threads_switches(server)
            result = asyncio.run(post_all(url, bodies, opts.connections))
            end = time.monotonic()
            if db is not None:
                where = "name LIKE 'Ingest%'" + (" AND status = 'resolved'" if phase == "resolved" else "")
                end = _wait_stored(db, f"SELECT count(*) FROM alerts WHERE {where}", alerts)
            client = _self_cpu() - marks[4]
            cpu = machine.CpuWindow(
                wall=end - marks[0],
                busy=machine.busy_seconds() - marks[1],
                server=server.cpu_seconds() - marks[2],
                server_main=server.main_thread_cpu_seconds() - marks[3],
                wrk=client,  # the load generator is this process
            )
            run = PhaseRun(phase, alerts, result, end - marks[0], cpu, client)
            out["phases"][phase] = run.to_json()
            threads1, switches1 = threads_cpu(server), threads_switches(server)
            out["phases"][phase]["switches_per_payload_by_thread"] = {
                k: round((n - switches0.get(k, 0)) / len(bodies), 1)
                for k, n in sorted(switches1.items(), key=lambda kv: switches0.get(kv[0], 0) - kv[1])
                if n - switches0.get(k, 0) > 0
            }
            out["phases"][phase]["cpu_us_per_alert_by_thread"] = {
                k: round((v - threads0.get(k, 0.0)) / alerts * 1e6, 1)
                for k, v in sorted(threads1.items(), key=lambda kv: threads0.get(kv[0], 0.0) - kv[1])
                if v - threads0.get(k, 0.0) > 0
            }
            done += alerts
            flag = f"  !!! {len(result.errors)} ERRORS" if result.errors else ""
            print(
                f"  {name:<8} {phase:<9} {run.alerts_per_s:9.0f} alerts/s"
                f"  payload p50 {_pct(result.latencies_ms, 50):6.1f} ms"
                f"  p99 {_pct(result.latencies_ms, 99):6.1f} ms  {run.cpu_us_per_alert:6.1f} CPU µs/alert"
                f"  other load {cpu.other_cores:.2f} cores{flag}",
                flush=True,
            )
            server.ensure_alive()
        if profile_dir is not None:
            os.kill(server.pid, signal.SIGUSR2)
            wait_output_file(profile_dir / "loop.prof", server)
        out["rss_kib"] = server.status_kib("VmRSS")
        if db is not None:
            out["store"] = {
                "alerts": db_value(db, "SELECT count(*) FROM alerts"),
                "groups": db_value(db, "SELECT count(*) FROM alert_groups"),
                "groups_in_digest": db_value(db, "SELECT count(*) FROM alert_groups WHERE digest_id IS NOT NULL"),
                "digests": db_value(db, "SELECT count(*) FROM alert_digests"),
                "outbox": dict(db_rows(db, "SELECT op || ':' || state, count(*) FROM outbox GROUP BY 1")),
                "db_bytes": sum(p.stat().st_size for p in db.parent.glob(db.name + "*") if p.is_file()),
            }
    finally:
        out["exit_code"] = server.stop(timeout=60)
    out["problems"], out["warnings"] = [], []
    if out["exit_code"] != 0:
        out["problems"].append(f"{name} exited with {out['exit_code']} on SIGTERM:\n{server.log_tail()}")
    for phase, r in out["phases"].items():
        if r["load"]["errors"]:
            out["problems"].append(
                f"{name} {phase}: {r['load']['errors']} failed payloads: {r['load']['first_errors']}"
            )
    if name == "opsloop":
        log_findings(server, out["problems"], out["warnings"])
    if profile_dir is not None:
        out["profile"] = profile_summary(profile_dir, sum(r["alerts"] for r in out["phases"].values()))
    return out


def wait_output_file(path: Path, server: Server, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        server.ensure_alive()
        time.sleep(0.05)
    time.sleep(0.2)  # dump_stats writes in one go; give it a moment to finish


def run_ingest(opts: IngestOptions, tmp: Path) -> dict[str, Any]:
    """Every selected server, `repeat` interleaved rounds, the same payloads; medians per phase."""
    phases = {
        status: [json.dumps(webhook_payload("Ingest", n, status)).encode() for n in range(opts.payloads)]
        for status in ("firing", "resolved")
    }
    warm = [json.dumps(webhook_payload("Warm", n, "firing")).encode() for n in range(max(2, opts.warmup))]
    size = statistics.fmean(len(b) for b in phases["firing"])
    print(
        f"ingestion: {opts.payloads} payloads × {PER_PAYLOAD} alerts per phase ({size / 1024:.1f} KiB each),"
        f" {opts.connections} connections; servers: {', '.join(opts.servers)}",
        flush=True,
    )
    tools, info = start_tools(tmp, 1)
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in opts.servers}
    try:
        for k in range(opts.repeat):
            for name in opts.servers:
                rounds[name].append(
                    ingest_round(name, tmp / f"ingest-{name}-{k + 1}", info["api_url"], phases, warm, opts)
                )
    finally:
        tools.stop()
    servers: dict[str, Any] = {}
    for name, rs in rounds.items():
        med: dict[str, Any] = {}
        for phase in phases:
            runs = [r["phases"][phase] for r in rs if phase in r["phases"]]
            if runs:
                med[phase] = {
                    key: statistics.median(r[key] for r in runs)
                    for key in ("alerts_per_s", "cpu_us_per_alert", "off_loop_cpu_us_per_alert", "seconds")
                }
                med[phase]["p50_ms"] = statistics.median(r["load"]["p50_ms"] for r in runs)
                med[phase]["p99_ms"] = statistics.median(r["load"]["p99_ms"] for r in runs)
                med[phase]["client_cores"] = max(r["client_cores"] or 0 for r in runs)
                med[phase]["other_cores"] = max(r["cpu"]["other_cores"] for r in runs)
                med[phase]["alerts"] = runs[0]["alerts"]
        servers[name] = {"median": med, "rounds": rs, "rss_kib": statistics.median(r.get("rss_kib", 0) for r in rs)}
    return {
        "settings": {
            "payloads_per_phase": opts.payloads,
            "alerts_per_payload": PER_PAYLOAD,
            "payload_bytes_mean": round(size),
            "warmup_payloads": len(warm),
            "connections": opts.connections,
            "repeat": opts.repeat,
            "profiled": opts.profile,
        },
        "servers": servers,
        "verdict": ingest_verdict(servers),
    }


def ingest_verdict(servers: dict[str, Any]) -> dict[str, Any]:
    """≥ 10,000 alerts/s and ≥ 0.5 of bare, per phase and for both phases together."""
    if "opsloop" not in servers:
        return {"met": None}
    ops = servers["opsloop"]["median"]
    bare = servers.get("bare", {}).get("median", {})
    out: dict[str, Any] = {"alerts_per_s_min": TARGET_ALERTS_S, "bare_ratio_min": TARGET_BARE_RATIO, "phases": {}}
    met: bool | None = True
    for phase, r in ops.items():
        ratio = _ratio(r["alerts_per_s"], bare.get(phase, {}).get("alerts_per_s"))
        ok = r["alerts_per_s"] >= TARGET_ALERTS_S and (ratio is not None and ratio >= TARGET_BARE_RATIO)
        out["phases"][phase] = {"alerts_per_s": round(r["alerts_per_s"]), "bare_ratio": ratio, "met": ok}
        met = None if ratio is None else (met and ok)
    alerts = sum(r["alerts"] for r in ops.values())
    seconds = sum(r["seconds"] for r in ops.values())
    bare_seconds = sum(r["seconds"] for r in bare.values()) if bare else None
    out["overall"] = {
        "alerts_per_s": round(alerts / seconds) if seconds else 0,
        "bare_alerts_per_s": round(alerts / bare_seconds) if bare_seconds else None,
        "bare_ratio": _ratio(bare_seconds, seconds) if bare_seconds else None,
    }
    out["met"] = met
    return out


# cProfile: the functions whose cumulative time answers "where does an alert's time go".
PROFILE_WATCH: tuple[tuple[str, str, str], ...] = (
    ("web.py hook (auth, read, json.loads, handler)", "bot/web.py", "hook"),
    ("monitor._ingest (parse + pipeline)", "handlers/monitor.py", "_ingest"),
    ("AlertmanagerWebhook.parse (pydantic + Alert objects)", "adapters/alertmanager.py", "parse"),
    ("alerts_view_url (per alert link)", "adapters/alertmanager.py", "alerts_view_url"),
    ("AlertPipeline.ingest (event loop side)", "bot/alerts.py", "ingest"),
    ("AlertPipeline._ingest (the write, writer thread)", "bot/alerts.py", "_ingest"),
    ("  _refresh_group", "bot/alerts.py", "_refresh_group"),
    ("  _refresh_digest", "bot/alerts.py", "_refresh_digest"),
    ("  _count_firing", "bot/alerts.py", "_count_firing"),
    ("  _new_group", "bot/alerts.py", "_new_group"),
    ("  _digest_for", "bot/alerts.py", "_digest_for"),
    ("  card (view model)", "bot/alerts.py", "card"),
    ("  digest_card (view model)", "bot/alerts.py", "digest_card"),
    ("  detail (view model)", "bot/alerts.py", "detail"),
    ("  _group / _alert (row -> dataclass, json.loads)", "bot/alerts.py", "_group|_alert"),
    ("  Services.post_in (render + enqueue)", "bot/context.py", "post_in"),
    ("    rendering.message (Block Kit dicts)", "bot/rendering.py", "message"),
    ("    Outbox.post_in / _update_in (coalescing SQL)", "bot/outbox.py", "post_in|_update_in"),
    ("    Redactor.value / text", "bot/redact.py", "value|text"),
    ("  store.one / store.rows", "bot/store.py", "one|rows"),
    ("Store._commit_batch (writer: savepoints, commit)", "bot/store.py", "_commit_batch"),
    ("sqlite3 execute (all)", "~", "<method 'execute' of 'sqlite3.Connection' objects>"),
    ("json.dumps (all)", "json/__init__.py", "dumps"),
    ("json.loads (all)", "json/__init__.py", "loads"),
    ("outbox worker (dispatch + deliver)", "bot/outbox.py", "_dispatch|_deliver_one"),
)


_IDLE = frozenset({"<method 'poll' of 'select.epoll' objects>", "<method 'get' of '_queue.SimpleQueue' objects>"})


def profile_summary(profile_dir: Path, alerts: int) -> str:
    """Per profiled thread: its busy time (idle waits left out), the watched functions' cumulative time,
    self time by file and the top self times; µs are per alert of the measured phases."""
    import pstats

    lines = [
        f"cProfile of opsloop over the measured phases ({alerts} alerts). cProfile adds a cost per Python call,"
        " so compare shares, not absolute µs, with the unprofiled run. Its clock is the wall clock (a thread's"
        " CPU clock is a system call here, ~1 µs an event, which swamped the figures): a SQLite call that let"
        " go of the GIL is charged until it has the GIL back, so the writer's fetchall/execute include the"
        " loop's work meanwhile."
    ]
    for thread in ("writer", "loop"):
        path = profile_dir / f"{thread}.prof"
        if not path.exists():
            lines.append(f"(no {thread}.prof)")
            continue
        st = pstats.Stats(str(path))
        entries: dict[tuple[str, int, str], tuple[int, int, float, float, Any]] = st.stats  # type: ignore[attr-defined]
        idle = sum(e[2] for (f, _, fn), e in entries.items() if f == "~" and fn in _IDLE)
        busy = float(st.total_tt) - idle  # type: ignore[attr-defined]
        lines += [
            "",
            f"thread {thread}: {busy:.2f} s busy (+{idle:.2f} s idle wait) = {busy / alerts * 1e6:.0f} µs/alert",
        ]
        lines.append("  cumulative (s, µs/alert, share of the busy time):")
        for label, file, funcs in PROFILE_WATCH:
            names = funcs.split("|")
            ct = sum(e[3] for (f, _, fn), e in entries.items() if fn in names and (f.endswith(file) or f == file))
            if ct:
                lines.append(f"    {ct:7.2f} s {ct / alerts * 1e6:7.1f} µs {100 * ct / busy:5.1f}%  {label}")
        by_file: Counter[str] = Counter()
        for (f, _, fn), e in entries.items():
            if not (f == "~" and fn in _IDLE):
                by_file[_area(f, fn)] += e[2]
        lines.append("  self time by area:")
        lines += [f"    {tt:7.2f} s {100 * tt / busy:5.1f}%  {area}" for area, tt in by_file.most_common(12)]
        lines.append("  self time, top 20 (s, share, calls, function):")
        top = sorted(
            ((k, e) for k, e in entries.items() if not (k[0] == "~" and k[2] in _IDLE)), key=lambda x: -x[1][2]
        )
        for (f, line, fn), (_, nc, tt, _, _) in top[:20]:
            where = f if f == "~" else f"{_short(f)}:{line}"
            lines.append(f"    {tt:7.2f} s {100 * tt / busy:5.1f}% {nc:9d}  {fn} ({where})")
    return "\n".join(lines)


def _area(path: str, fn: str) -> str:
    """bot/alerts.py, sqlite3, json, pydantic, asyncio…: where self time is spent."""
    if path == "~":
        m = re.search(r"of '([\w.]+)\.", fn) or re.search(r"method ([\w.]+)\.", fn)
        return f"(C) {m[1] if m else fn[:40]}"
    short = _short(path)
    if "/" in short and not short.startswith(("bot/", "handlers/", "adapters/")):
        return short.split("/", 1)[0]
    return short


def _short(path: str) -> str:
    for marker in ("/site-packages/", "/lib/python3"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path.replace(str(ROOT) + "/", "")


# --- 2. + 3. the storm, and /ops help during it ----------------------------------------------------------


@dataclass(frozen=True)
class StormOptions:
    alerts: int
    groups: int
    seconds: float
    channels: int
    group_wait: str
    group_interval: str
    settle: float
    probe_rate: float
    probe_baseline: float


def storm_alert(i: int, o: StormOptions, ends_at: str | None = None) -> dict[str, Any]:
    """Alert i of the storm: group `StormGGG` (i mod groups), team by group (routing), a findable summary."""
    g = i % o.groups
    a: dict[str, Any] = {
        "labels": {
            "alertname": f"Storm{g:03d}",
            "env": "prod",
            "instance": f"node-{i:04d}:9100",
            "job": "node",
            "service": f"svc-{g % 20:02d}",
            "severity": "critical" if g % 3 == 0 else "warning",
            "team": f"t{g % o.channels}",
        },
        "annotations": {"summary": f"storm alert [a{i:04d}] on node-{i:04d}"},
        "generatorURL": GENERATOR_URL,
    }
    if ends_at is not None:
        a["endsAt"] = ends_at
    return a


def alertmanager_config(o: StormOptions, opsloop_url: str, webhooks: list[str]) -> dict[str, Any]:
    """Every alert to opsloop's webhook and, per team, to a `slack_configs` receiver posting to that
    team's incoming webhook: both sides see exactly the same groups and notifications."""
    slack_routes = [{"receiver": f"slack-{k}", "matchers": [f'team="t{k}"']} for k in range(o.channels)]
    receivers: list[dict[str, Any]] = [
        {
            "name": "opsloop",
            "webhook_configs": [
                {
                    "url": opsloop_url,
                    "send_resolved": True,
                    "http_config": {"authorization": {"type": "Bearer", "credentials": WEBHOOK_TOKEN}},
                }
            ],
        }
    ]
    for k, hook in enumerate(webhooks):
        receivers.append(
            {
                "name": f"slack-{k}",
                "slack_configs": [
                    {
                        "api_url": hook,
                        "channel": f"#{lane_channels('alertmanager', o.channels)[k][1]}",
                        "send_resolved": True,
                        "title": "{{ .CommonLabels.alertname }} is {{ .Status }}",
                        "text": '{{ range .Alerts }}{{ .Annotations.summary }}{{ "\\n" }}{{ end }}',
                    }
                ],
            }
        )
    return {
        "global": {"resolve_timeout": "5m"},
        "route": {
            "receiver": "opsloop",
            "group_by": ["alertname"],
            "group_wait": o.group_wait,
            "group_interval": o.group_interval,
            "repeat_interval": "1h",
            "routes": [{"receiver": "opsloop", "continue": True}, *slack_routes],
        },
        "receivers": receivers,
    }


def start_alertmanager(work: Path, config: dict[str, Any]) -> Server:
    binary = shutil.which(AM_BINARY)
    if binary is None:
        raise BenchError(f"`{AM_BINARY}` is not installed: apt-get install -y prometheus-alertmanager")
    path = work / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    argv = [
        binary,
        f"--config.file={path}",
        f"--storage.path={work / 'am-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        f"--web.external-url=http://127.0.0.1:{port}",
        "--cluster.listen-address=",  # no HA gossip on :9094
        "--log.level=info",
    ]
    server = spawn("alertmanager", argv, clean_env(), work / "alertmanager.log", ROOT)
    server.port = port
    return wait_http(server, "/-/ready")


def inject(am: Server, alerts: list[dict[str, Any]]) -> None:
    status, text = post(am.url("/api/v2/alerts"), json.dumps(alerts).encode(), {"Content-Type": "application/json"})
    if status != 200:
        raise BenchError(f"Alertmanager refused the alerts: {status} {text[:300]}")


def am_metrics(am: Server) -> dict[str, float]:
    """Alertmanager's notification counters per integration (slack, webhook)."""
    status, text = _get(am.url("/metrics"))
    out: dict[str, float] = {}
    for line in text.splitlines() if status == 200 else []:
        if line.startswith(
            ("alertmanager_notifications", "alertmanager_notification_requests", "alertmanager_alerts_received")
        ):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def _am_counter(metrics: dict[str, float], prefix: str, integration: str) -> int:
    return int(sum(v for k, v in metrics.items() if k.startswith(prefix + "{") and f'integration="{integration}"' in k))


def _calls_summary(calls: dict[str, int]) -> dict[str, Any]:
    total = sum(calls.values())
    limited = sum(n for k, n in calls.items() if k.endswith(" 429"))
    by_method: Counter[str] = Counter()
    for k, n in calls.items():
        by_method[k.rsplit(" ", 1)[0]] += n
    return {
        "calls": total,
        "429s": limited,
        "by_method_status": dict(sorted(calls.items())),
        "by_method": dict(by_method),
    }


def _diff(end: dict[str, int], start: dict[str, int]) -> dict[str, int]:
    return {
        k: end.get(k, 0) - start.get(k, 0) for k in sorted(set(end) | set(start)) if end.get(k, 0) - start.get(k, 0)
    }


def run_storm(o: StormOptions, tmp: Path) -> dict[str, Any]:
    """Start the emulator, opsloop and Alertmanager; probe acks without a storm; then storm, resolve, settle."""
    problems: list[str] = []
    warnings: list[str] = []
    work = tmp / "storm"
    work.mkdir()
    tools, info = start_tools(work, o.channels)
    base = f"http://127.0.0.1:{tools.port}"
    procs: list[Server] = [tools]
    try:
        ops, db = start_opsloop(work, info["api_url"], o.channels)
        procs.append(ops)
        am = start_alertmanager(work, alertmanager_config(o, ops.url(HOOK_PATH), info["webhooks"]))
        procs.append(am)
        response_url = f"{info['base_url']}/commands/{info['team_id']}/1/bench"
        print(
            f"storm: {o.alerts} alerts in {o.groups} groups over {o.seconds:g} s, then resolved; Alertmanager"
            f" group_wait {o.group_wait}, group_interval {o.group_interval}; {o.channels} channel(s) per side",
            flush=True,
        )

        # 3a. the ack baseline: same process, same rate, nothing else going on
        machine.wait_quiet(20.0)
        print(f"  /ops help at {o.probe_rate:g}/s for {o.probe_baseline:g} s, no storm", flush=True)
        base_probe = finish_probe(
            start_probe(work, "baseline", ops.url(), response_url, o.probe_rate, o.probe_baseline),
            "baseline",
            o.probe_rate,
            o.probe_baseline,
            o.probe_baseline + 60,
        )

        stats0 = request_json(f"{base}/stats")
        am0 = am_metrics(am)
        metrics0 = opsloop_metrics(ops)
        cpu0 = (ops.cpu_seconds(), am.cpu_seconds(), tools.cpu_seconds(), machine.busy_seconds())
        probe_seconds = o.seconds + _seconds(o.group_interval) + _seconds(o.group_wait)
        probe = start_probe(work, "storm", ops.url(), response_url, o.probe_rate, probe_seconds)
        time.sleep(0.5)  # the probe's interpreter starts; its first request then meets the storm's first alerts
        print(
            f"  injecting {o.alerts} alerts over {o.seconds:g} s (and /ops help at {o.probe_rate:g}/s meanwhile)",
            flush=True,
        )
        t0_wall, t0 = time.time(), time.monotonic()
        ticks = max(1, int(o.seconds))
        for k in range(ticks):
            due = t0 + k * o.seconds / ticks
            if (delay := due - time.monotonic()) > 0:
                time.sleep(delay)
            inject(am, [storm_alert(i, o) for i in range(k * o.alerts // ticks, (k + 1) * o.alerts // ticks)])
        if (delay := t0 + o.seconds - time.monotonic()) > 0:
            time.sleep(delay)
        t_resolve = time.monotonic() - t0
        ends = _now_rfc3339()
        for start in range(0, o.alerts, 500):
            inject(am, [storm_alert(i, o, ends) for i in range(start, min(o.alerts, start + 500))])
        print(f"  resolved all at +{t_resolve:.1f} s; settling up to {o.settle:g} s more", flush=True)

        timeline: list[dict[str, Any]] = []
        all_reachable: dict[str, float | None] = {lane: None for lane in LANES}
        am_quiet_since: float | None = None
        last_am_calls = -1
        deadline = t0 + t_resolve + o.settle
        storm_probe: AckSample | None = None
        while True:
            now = time.monotonic()
            for p in procs:
                p.ensure_alive()
            if storm_probe is None and probe.proc.poll() is not None:
                storm_probe = finish_probe(probe, "storm", o.probe_rate, probe_seconds, 5)
            point: dict[str, Any] = {"t": round(now - t0, 1)}
            for lane in LANES:
                r = request_json(f"{base}/reach?lane={lane}&n={o.alerts}")
                point[lane] = {k: r[k] for k in ("found", "top_level", "replies", "groups_resolved")}
                if r["found"] == o.alerts and all_reachable[lane] is None:
                    all_reachable[lane] = round(now - t0, 1)
            pending = int(db_value(db, "SELECT count(*) FROM outbox WHERE state IN ('pending', 'sending')") or 0)
            point["opsloop_outbox_pending"] = pending
            timeline.append(point)
            am_calls = sum(request_json(f"{base}/stats")["calls"]["alertmanager"].values())
            if am_calls != last_am_calls:
                am_quiet_since, last_am_calls = now, am_calls
            settled = (
                now - t0 > t_resolve + _seconds(o.group_interval) + _seconds(o.group_wait)
                and storm_probe is not None
                and pending == 0
                and point["opsloop"]["groups_resolved"] >= o.groups
                and am_quiet_since is not None
                and now - am_quiet_since > _seconds(o.group_interval) + 2
            )
            if settled or now >= deadline:
                break
            time.sleep(2.0)
        t_end = time.monotonic() - t0
        if storm_probe is None:
            storm_probe = finish_probe(probe, "storm", o.probe_rate, probe_seconds, 60)
        cpu1 = (ops.cpu_seconds(), am.cpu_seconds(), tools.cpu_seconds(), machine.busy_seconds())
        stats1 = request_json(f"{base}/stats")
        reach = {lane: request_json(f"{base}/reach?lane={lane}&n={o.alerts}") for lane in LANES}
        am1 = am_metrics(am)
        metrics1 = opsloop_metrics(ops)
        first_webhook = db_value(db, "SELECT min(first_seen) FROM alert_groups WHERE title LIKE 'Storm%'")
        store = {
            "alerts": db_value(db, "SELECT count(*) FROM alerts WHERE name LIKE 'Storm%'"),
            "alerts_resolved": db_value(
                db, "SELECT count(*) FROM alerts WHERE name LIKE 'Storm%' AND status = 'resolved'"
            ),
            "groups": db_value(db, "SELECT count(*) FROM alert_groups WHERE title LIKE 'Storm%'"),
            "groups_in_digest": db_value(
                db, "SELECT count(*) FROM alert_groups WHERE title LIKE 'Storm%' AND digest_id IS NOT NULL"
            ),
            "outbox": dict(db_rows(db, "SELECT op || ':' || state, count(*) FROM outbox GROUP BY 1")),
            "webhooks": int(metrics1.get('opsloop_hooks_total{source="alertmanager",status="200"}', 0))
            - int(metrics0.get('opsloop_hooks_total{source="alertmanager",status="200"}', 0)),
        }
    finally:
        codes = {p.name: p.stop(timeout=30) for p in reversed(procs)}
    if codes.get("opsloop") not in (0, None):
        problems.append(f"opsloop exited with {codes['opsloop']} on SIGTERM")
    log_findings(ops, problems, warnings)
    am_log = am.log.read_text(errors="replace")
    am_failed_lines = [line for line in am_log.splitlines() if "Notify for alerts failed" in line]

    wall = time.monotonic() - t0
    calls = {lane: _calls_summary(_diff(stats1["calls"][lane], stats0["calls"][lane])) for lane in LANES}
    if stats1["server_errors"]:
        problems.append(f"Slack emulator errors: {stats1['server_errors'][:3]}")
    sides: dict[str, Any] = {}
    for lane in LANES:
        r = reach[lane]
        first = r["first_message_at"]
        sides[lane] = {
            **calls[lane],
            "first_message_s": round(first - t0_wall, 2) if first else None,
            "alerts_reachable": r["found"],
            "alerts_missing": r["missing"],
            "missing_sample": r["missing_sample"],
            "all_reachable_at_s": all_reachable[lane],
            "top_level_messages": r["top_level"],
            "thread_replies": r["replies"],
            "edits": r["edits"],
            "groups_seen": r["groups_seen"],
            "groups_resolved": r["groups_resolved"],
            "groups_still_firing": r["groups_firing"],
        }
    ops_side = sides["opsloop"]
    ops_side["digests"] = reach["opsloop"]["digests"]
    ops_side["first_card_after_webhook_s"] = (
        round(reach["opsloop"]["first_message_at"] - first_webhook, 2)
        if first_webhook and reach["opsloop"]["first_message_at"]
        else None
    )
    ops_side["store"] = store
    ops_side["outbox_pending_at_end"] = timeline[-1]["opsloop_outbox_pending"] if timeline else None
    ops_side["outbox_failed"] = sum(n for k, n in store["outbox"].items() if k.endswith(":failed"))
    ops_side["metrics"] = {
        k: round(v - metrics0.get(k, 0.0), 1) for k, v in metrics1.items() if v - metrics0.get(k, 0.0)
    }
    ops_side["cpu_s"] = round(cpu1[0] - cpu0[0], 2)
    am_side = sides["alertmanager"]
    am_side["notifications"] = {
        integration: {
            "sent": _am_counter(am1, "alertmanager_notifications_total", integration)
            - _am_counter(am0, "alertmanager_notifications_total", integration),
            "failed": _am_counter(am1, "alertmanager_notifications_failed_total", integration)
            - _am_counter(am0, "alertmanager_notifications_failed_total", integration),
        }
        for integration in ("slack", "webhook")
    }
    am_side["log_notify_failed_lines"] = len(am_failed_lines)
    am_side["log_first_failure"] = am_failed_lines[0][:400] if am_failed_lines else None
    am_side["cpu_s"] = round(cpu1[1] - cpu0[1], 2)
    other = max(0.0, (cpu1[3] - cpu0[3]) - sum(cpu1[i] - cpu0[i] for i in range(3))) / max(wall, 1e-9)
    if other > BUSY_WARNING_CORES:
        warnings.append(f"other processes used {other:.2f} cores during the storm; latencies are pessimistic")
    ack = {"baseline": base_probe.to_json(), "storm": storm_probe.to_json()}
    for label, sample in ack.items():
        if sample["errors"]:
            problems.append(f"/ops help {label}: {sample['errors']} failed requests: {sample['first_errors']}")
    return {
        "settings": {
            "alerts": o.alerts,
            "groups": o.groups,
            "storm_s": o.seconds,
            "channels_per_side": o.channels,
            "group_wait": o.group_wait,
            "group_interval": o.group_interval,
            "settle_s": o.settle,
            "slack_limits": "chat.postMessage and incoming webhooks 1/s per channel (burst 5), chat.update 50/min",
            "probe_rate_per_s": o.probe_rate,
            "probe_baseline_s": o.probe_baseline,
            "probe_storm_s": probe_seconds,
        },
        "resolved_at_s": round(t_resolve, 1),
        "observed_until_s": round(t_end, 1),
        "sides": sides,
        "timeline": timeline,
        "ack": ack,
        "cpu": {
            "opsloop_cores": round((cpu1[0] - cpu0[0]) / t_end, 3),
            "alertmanager_cores": round((cpu1[1] - cpu0[1]) / t_end, 3),
            "emulator_cores": round((cpu1[2] - cpu0[2]) / t_end, 3),
            "other_cores": round(other, 3),
        },
        "verdict": storm_verdict(sides, ack, o),
        "problems": problems,
        "warnings": warnings,
    }


def _seconds(duration: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", duration)
    if m is None:
        raise BenchError(f"not a duration: {duration!r} (write 5s, 500ms, 1m)")
    return float(m[1]) * {"ms": 0.001, "s": 1.0, "m": 60.0}[m[2]]


def storm_verdict(sides: dict[str, Any], ack: dict[str, Any], o: StormOptions) -> dict[str, Any]:
    """The issue's storm targets (calls ≤ half of Alertmanager's, no message lost to a 429, every alert
    represented, first card ≤ 2 s after the webhook) and the ack target (p99 ≤ 100 ms during the storm)."""
    ops, am = sides["opsloop"], sides["alertmanager"]
    ratio = _ratio(ops["calls"], am["calls"])
    first = ops["first_card_after_webhook_s"]
    checks = {
        "calls_at_most_half_of_alertmanager": ratio is not None and ratio <= TARGET_CALL_RATIO,
        "no_message_lost_to_429": ops["outbox_failed"] == 0,
        "every_alert_represented": ops["alerts_reachable"] == o.alerts,
        "first_card_within_2s_of_webhook": first is not None and first <= TARGET_FIRST_CARD_S,
        "ack_p99_at_most_100ms_during_storm": ack["storm"]["p99_ms"] <= TARGET_ACK_P99_MS
        and ack["storm"]["errors"] == 0,
    }
    return {"call_ratio": ratio, "checks": checks, "met": all(checks.values())}


# --- the report -------------------------------------------------------------------------------------------


def _n(x: Any, fmt: str = "") -> str:
    return "-" if x is None else format(x, fmt)


def _verdict(met: bool | None) -> str:
    return {True: "MET", False: "NOT MET", None: "NOT MEASURED"}[met]


def ingest_table(d: dict[str, Any]) -> list[str]:
    st, servers = d["settings"], d["servers"]
    lines = [
        f"1. ingestion: {st['payloads_per_phase']} Alertmanager v4 payloads"
        f" × {st['alerts_per_payload']} alerts per phase"
        f" ({st['payload_bytes_mean'] / 1024:.1f} KiB each), {st['connections']} connections,"
        f" median of {st['repeat']} round(s)" + ("  [PROFILED: cProfile slows opsloop down]" if st["profiled"] else ""),
        "",
    ]
    head = (
        f"{'phase':<9}{'server':<9}{'alerts/s':>10}{'p50 ms':>8}{'p99 ms':>8}{'CPU µs/alert':>13}"
        f"{'off-loop':>9}{'alerts/CPU-s':>13}{'client cores':>13}"
    )
    lines += [head, "-" * len(head)]
    phases = sorted({p for s in servers.values() for p in s["median"]}, key=["firing", "resolved"].index)
    for phase in phases:
        for name, s in servers.items():
            r = s["median"].get(phase)
            if r is None:
                continue
            cap = 1e6 / r["cpu_us_per_alert"] if r["cpu_us_per_alert"] else None
            lines.append(
                f"{phase:<9}{name:<9}{r['alerts_per_s']:>10.0f}{r['p50_ms']:>8.1f}{r['p99_ms']:>8.1f}"
                f"{r['cpu_us_per_alert']:>13.1f}{r['off_loop_cpu_us_per_alert']:>9.1f}{_n(cap, '.0f'):>13}"
                f"{r['client_cores']:>13.2f}"
            )
    v = d["verdict"]
    if v.get("met") is not None or "phases" in v:
        lines.append("")
        for phase, r in v.get("phases", {}).items():
            lines.append(f"opsloop/bare {phase:<9} {_n(r['bare_ratio'], '.3f')}   ({r['alerts_per_s']:,} alerts/s)")
        ov = v.get("overall", {})
        lines.append(
            f"both phases: opsloop {ov.get('alerts_per_s', 0):,} alerts/s, bare {_n(ov.get('bare_alerts_per_s'), ',')}"
            f" alerts/s, ratio {_n(ov.get('bare_ratio'), '.3f')}"
        )
        lines.append(
            f"target: ≥{TARGET_ALERTS_S:,.0f} alerts/s and ≥{TARGET_BARE_RATIO} of bare: {_verdict(v.get('met'))}"
        )
    if "opsloop" in servers:
        for phase, r in servers["opsloop"]["rounds"][-1]["phases"].items():
            by = ", ".join(f"{k} {x:.0f}" for k, x in r.get("cpu_us_per_alert_by_thread", {}).items())
            lines.append(f"opsloop CPU µs/alert by thread, {phase} (last round): {by}")
            sw = ", ".join(f"{k} {x:.0f}" for k, x in r.get("switches_per_payload_by_thread", {}).items())
            if sw:
                lines.append(f"opsloop context switches per payload by thread, {phase} (last round): {sw}")
        store = servers["opsloop"]["rounds"][-1].get("store")
        if store:
            lines.append(
                f"opsloop's store after the run: {store['alerts']} alerts, {store['groups']} groups"
                f" ({store['groups_in_digest']} in {store['digests']} storm digest(s)), outbox {store['outbox']},"
                f" {store['db_bytes'] / 2**20:.1f} MiB"
            )
        prof = servers["opsloop"]["rounds"][-1].get("profile")
        if prof:
            lines += ["", prof]
    return lines


def storm_table(d: dict[str, Any]) -> list[str]:
    st, ops, am = d["settings"], d["sides"]["opsloop"], d["sides"]["alertmanager"]
    lines = [
        f"2. storm: {st['alerts']} alerts in {st['groups']} groups over {st['storm_s']:g} s, all resolved at"
        f" +{d['resolved_at_s']:.0f} s, observed until +{d['observed_until_s']:.0f} s; one Alertmanager 0.25"
        f" (group_wait {st['group_wait']}, group_interval {st['group_interval']}); {st['channels_per_side']}"
        f" channel(s) per side; Slack emulator: {st['slack_limits']}",
        "",
        f"{'':<34}{'opsloop':>22}{'Alertmanager slack_configs':>30}",
    ]

    def row(label: str, a: str, b: str) -> None:
        lines.append(f"{label:<34}{a:>22}{b:>30}")

    row("notifications from Alertmanager", _n(ops["store"]["webhooks"]), _n(am["notifications"]["slack"]["sent"]))
    row("Slack calls", _n(ops["calls"]), _n(am["calls"]))
    row("  429s", _n(ops["429s"]), _n(am["429s"]))
    ops_methods = ", ".join(f"{k} {v}" for k, v in ops["by_method"].items())
    row(
        "first message after first alert",
        f"{_n(ops['first_message_s'], '.1f')} s",
        f"{_n(am['first_message_s'], '.1f')} s",
    )
    row("first card after first webhook", f"{_n(ops['first_card_after_webhook_s'], '.2f')} s", "")
    row("messages (top level + replies)", f"{ops['top_level_messages']} + {ops['thread_replies']}",
        f"{am['top_level_messages']} + {am['thread_replies']}")  # fmt: skip
    row("edits of messages", _n(ops["edits"]), _n(am["edits"]))
    row(
        f"alerts findable (of {st['alerts']})",
        f"{ops['alerts_reachable']}"
        + (f" (all at +{ops['all_reachable_at_s']:.0f} s)" if ops["all_reachable_at_s"] else ""),
        f"{am['alerts_reachable']}"
        + (f" (all at +{am['all_reachable_at_s']:.0f} s)" if am["all_reachable_at_s"] else ""),
    )
    row(f"groups shown resolved (of {st['groups']})", _n(ops["groups_resolved"]), _n(am["groups_resolved"]))
    row(
        "lost / given up",
        f"{ops['outbox_failed']} outbox rows failed",
        f"{am['notifications']['slack']['failed']} notifications failed",
    )
    row("still queued at the end", f"{_n(ops['outbox_pending_at_end'])} outbox rows", "-")
    lines.append(f"opsloop's calls by method: {ops_methods}")
    lines.append(
        f"opsloop: {ops['digests']} storm digest(s);"
        f" {ops['store']['groups_in_digest']} of {ops['store']['groups']} groups"
        f" in a digest; stored {ops['store']['alerts']} alerts ({ops['store']['alerts_resolved']} resolved);"
        f" outbox {ops['store']['outbox']}"
    )
    if ops["alerts_missing"]:
        lines.append(f"opsloop: {ops['alerts_missing']} alerts not findable in Slack, e.g. {ops['missing_sample']}")
    if am["log_first_failure"]:
        lines.append(
            f"Alertmanager log ({am['log_notify_failed_lines']} failures), first: {am['log_first_failure'][:300]}"
        )
    c = d["cpu"]
    lines.append(
        f"cores used over the storm: opsloop {c['opsloop_cores']:.2f}, Alertmanager {c['alertmanager_cores']:.2f},"
        f" emulator {c['emulator_cores']:.2f}, other {c['other_cores']:.2f}"
    )
    v = d["verdict"]
    lines.append(f"call ratio opsloop/Alertmanager: {_n(v['call_ratio'], '.3f')}")
    lines += [f"  {'MET    ' if ok else 'NOT MET'}  {name.replace('_', ' ')}" for name, ok in v["checks"].items()]
    a = d["ack"]
    lines += [
        "",
        f"3. /ops help ack latency, open loop at {st['probe_rate_per_s']:g}/s (signed, U0ALICE), same opsloop process",
        f"{'':<12}{'requests':>9}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}{'>100 ms':>9}{'errors':>8}",
    ]
    for label, s in a.items():
        lines.append(
            f"{label:<12}{s['requests']:>9}{s['p50_ms']:>9.1f}{s['p90_ms']:>9.1f}{s['p99_ms']:>9.1f}"
            f"{s['max_ms']:>9.1f}{s['over_100ms']:>9}{s['errors']:>8}"
        )
    b, s = a["baseline"], a["storm"]
    lines.append(
        f"storm/no storm: p50 {_n(_ratio(s['p50_ms'], b['p50_ms']), '.2f')}x,"
        f" p99 {_n(_ratio(s['p99_ms'], b['p99_ms']), '.2f')}x;"
        f" target p99 ≤ {TARGET_ACK_P99_MS:.0f} ms during the storm:"
        f" {_verdict(v['checks']['ack_p99_at_most_100ms_during_storm'])}"
    )
    return lines


def table(data: dict[str, Any]) -> str:
    m = data["machine"]
    lines = [
        f"alert pipeline on {m['cores']} cores, {m['cpu']} (git {m['git_commit']}{'+dirty' if m['git_dirty'] else ''})"
    ]
    if "ingest" in data:
        lines += ["", *ingest_table(data["ingest"])]
    if "storm" in data:
        lines += ["", *storm_table(data["storm"])]
    lines += [f"warning: {w}" for w in data["warnings"]]
    if data["problems"]:
        lines += ["", "!" * 72, f"!!! {len(data['problems'])} PROBLEM(S): these numbers are not valid", "!" * 72]
        lines += [f"!!! {p}" for p in data["problems"]]
    return "\n".join(lines)


# --- entry points -----------------------------------------------------------------------------------------


def _parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.alerts", description=(__doc__ or "").splitlines()[0])
    p.add_argument("--only", choices=("ingest", "storm"), help="run one part (default: both, about 4 minutes)")
    g = p.add_argument_group("ingestion")
    g.add_argument("--payloads", type=int, default=300, help="payloads of 50 alerts per phase (default 300)")
    g.add_argument("--warmup", type=int, default=20, help="warm-up payloads before the phases (default 20)")
    g.add_argument("--connections", type=int, default=16, help="concurrent webhook connections (default 16)")
    g.add_argument("--repeat", type=int, default=1, help="interleaved rounds per server; medians (default 1)")
    g.add_argument("--servers", default="bare,opsloop", help="comma-separated subset of bare,opsloop")
    g.add_argument("--profile", action="store_true", help="opsloop only, under cProfile; prints where the time goes")
    s = p.add_argument_group("storm")
    s.add_argument("--alerts", type=int, default=3000, help="alerts in the storm (default 3000)")
    s.add_argument("--groups", type=int, default=300, help="groups (alertnames) they fall into (default 300)")
    s.add_argument("--seconds", type=float, default=60.0, help="how long they trickle in (default 60)")
    s.add_argument("--channels", type=int, default=1, help="channels per side, routed by team (default 1)")
    s.add_argument("--group-wait", default="5s", help="Alertmanager group_wait (default 5s)")
    s.add_argument("--group-interval", default="15s", help="Alertmanager group_interval (default 15s)")
    s.add_argument("--settle", type=float, default=75.0, help="max seconds to watch after resolving (default 75)")
    s.add_argument("--probe-rate", type=float, default=20.0, help="/ops help requests per second (default 20)")
    s.add_argument("--probe-baseline", type=float, default=15.0, help="seconds of probing with no storm (default 15)")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory (logs, configs, databases)")
    p.add_argument("--results", type=Path, default=ROOT / "bench" / "results", help="where the JSON goes")
    a = p.parse_args(argv)
    if a.profile:
        a.servers = "opsloop"
    a.servers = tuple(x.strip() for x in a.servers.split(",") if x.strip())
    if not a.servers or any(x not in ("bare", "opsloop") for x in a.servers):
        p.error("--servers takes bare and/or opsloop")
    if a.payloads < 1 or a.alerts < 1 or a.groups < 1 or a.channels < 1 or a.seconds < 1:
        p.error("--payloads, --alerts, --groups, --channels and --seconds must be positive")
    return a


def _role(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog=f"python -m bench.alerts {argv[0]}")
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--config")
    p.add_argument("--profile", type=Path)
    p.add_argument("--url")
    p.add_argument("--response-url")
    p.add_argument("--rate", type=float, default=20.0)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--out", type=Path)
    a = p.parse_args(argv[1:])
    if argv[0] == "tools":
        import logging

        logging.basicConfig(level=logging.WARNING)
        asyncio.run(serve_tools(a.channels))
        return 0
    if argv[0] == "probe":
        return asyncio.run(probe_main(a.url, a.response_url, a.rate, a.seconds, a.out))
    return run_opsloop(a.config, a.profile)


def main(argv: list[str] | None = None) -> int:
    """Run, print the table, write bench/results/alerts-<time>.json; exit 1 when a number is unusable."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("tools", "probe", "opsloop"):
        return _role(args)
    a = _parse_args(args)
    tmp = Path(tempfile.mkdtemp(prefix="opsloop-bench-alerts-"))
    data: dict[str, Any] = {"benchmark": "alert pipeline", "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    problems: list[str] = []
    warnings: list[str] = []
    started = time.monotonic()
    try:
        if a.only in (None, "ingest"):
            ingest = run_ingest(IngestOptions(a.payloads, a.warmup, a.connections, a.repeat, a.servers, a.profile), tmp)
            data["ingest"] = ingest
            for s in ingest["servers"].values():
                for r in s["rounds"]:
                    problems += r["problems"]
                    warnings += [w for w in r["warnings"] if w not in warnings]
        if a.only in (None, "storm") and not a.profile:
            o = StormOptions(
                a.alerts,
                a.groups,
                a.seconds,
                a.channels,
                a.group_wait,
                a.group_interval,
                a.settle,
                a.probe_rate,
                a.probe_baseline,
            )
            storm = run_storm(o, tmp)
            data["storm"] = storm
            problems += storm["problems"]
            warnings += storm["warnings"]
    except BenchError as err:
        print(f"!!! bench failed: {err}", file=sys.stderr)
        return 1
    finally:
        if a.keep:
            print(f"scratch directory kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    info = machine.describe(sys.executable)
    info.pop("wrk", None)
    data.update(machine=info, problems=problems, warnings=warnings, total_s=round(time.monotonic() - started, 1))
    path = report.write_json(a.results, data, prefix="alerts")
    print()
    print(table(data))
    print(f"\nresults: {path}  (whole run {data['total_s']:.0f} s)")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
