"""`python -m bench.watch`: what watching 100 builds at once costs opsloop, against 100 naive polling loops.

The issue's words: *100 builds watched at once cost one polling loop with backoff, not 100 busy loops:
measure CPU and memory for that.* Three processes are measured side by side over the same window:

* `opsloop`: `opsloop run` (its own code path, HTTP mode, production outbox pacing) against a Slack and a
  Jenkins emulator, after 100 `/ops build svc-NN` commands: 100 `build.watch` jobs on the shared `Poller`;
* `naive`: the same `JenkinsCI` adapter on a `BlockingPool`, one asyncio task per build calling
  `ci.build()` every poll interval without backoff, and a `chat.update` of the same card per poll,
  straight to Slack (no outbox, no database, no pacing; a 429 is counted and ignored);
* `idle`: `opsloop run` with the same config and nothing to watch: the floor.

The emulators (one Jenkins and one Slack per process, so every request is counted for the process that
made it) run in a fourth process whose CPU is not counted: `python -m bench.watch tools`. It also
appends a console line to every running build now and then, and finishes the builds at the end, so the
bench can check that every one of opsloop's 100 cards ends showing its build's result.

Roles of this module, as `python -m bench.watch ROLE …`: (none) the bench; `tools` the emulators;
`opsloop` the opsloop process (`opsloop run` plus a SIGUSR1 stats dump); `naive` the baseline.
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
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from bench import machine, report
from bench.procs import (
    BenchError,
    Server,
    clean_env,
    free_port,
    request_json,
    spawn,
    wait_announced,
    wait_http,
    wait_output,
)
from bench.servers import BOT_TOKEN, SIGNING_SECRET, serve

if TYPE_CHECKING:
    from bot.app import Opsloop
    from bot.config import Config, Env

ROOT = Path(__file__).resolve().parent.parent
ACTOR = "U0ALICE"  # an admin and developer in tests/support.py's config_data()
JENKINS_TOKEN_ENV = "BENCH_JENKINS_TOKEN"
LANES = ("opsloop", "naive", "idle")  # one measured process and one pair of emulators each
RESULTS = ("SUCCESS", "FAILURE", "UNSTABLE")  # cycled over the jobs: the end check sees each kind of card
CEILING_S = 60.0  # handlers/build.py watch_job: ceiling=max(60.0, poll)
BACKOFF = 1.5  # bot/poller.py Poller(backoff=1.5)
JENKINS_TIMEOUT_S = 10.0  # integrations.jenkins.timeout's default
BUSY_WARNING_CORES = 0.25
MIN_CPU_S = 0.1  # /proc counts CPU in 10 ms ticks: ratios to less than this are noise
_LOG_TS = re.compile(r"^ts=\S+ ")
_METRICS = frozenset(
    {
        "opsloop_outbox_sent_total",
        "opsloop_outbox_failed_total",
        "opsloop_slack_ratelimited_total",
        "opsloop_slack_retries_total",
        "opsloop_adapter_errors_total",
        "opsloop_job_runs_total",
        "opsloop_jobs",
    }
)


def service_name(i: int, builds: int) -> str:
    """`svc-07`: zero-padded so names sort and never prefix one another."""
    return f"svc-{i:0{len(str(builds - 1))}d}"


def job_name(service: str) -> str:
    return f"shop/{service}"  # in a folder, as most real jobs are


def channel_id(k: int) -> str:
    return f"C0B{k:02d}"


def expected_result(i: int) -> str:
    return RESULTS[i % len(RESULTS)]


# --- stats a measured process writes on SIGUSR1 ------------------------------------------------------


class StatsFile:
    """The process's own view (tasks, polls…), written atomically when the bench sends SIGUSR1.

    On demand rather than periodic: a process that wrote stats every second would spend CPU on it
    during the window. Nothing runs between two signals.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seq = 0

    def write(self, data: dict[str, Any]) -> None:
        self.seq += 1
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"seq": self.seq, **data}))
        os.replace(tmp, self.path)


def _task_kind(task: asyncio.Task[Any]) -> str:
    """`job-build.watch-17` -> `job-build.watch`; an unnamed `Task-123` by its coroutine (`Poller._poll_one`)."""
    name = task.get_name()
    if re.fullmatch(r"Task-\d+", name):
        coro = task.get_coro()
        return str(getattr(coro, "__qualname__", None) or type(coro).__name__)
    return re.sub(r"[-_]\d+$", "", name)


def _loop_stats() -> dict[str, Any]:
    tasks = asyncio.all_tasks()
    return {
        "tasks": len(tasks),
        "task_kinds": dict(Counter(_task_kind(t) for t in tasks).most_common()),
        "threads": threading.active_count(),
    }


def _opsloop_stats(ops: Opsloop) -> dict[str, Any]:
    samples: dict[str, float] = {}
    for family in ops.services.metrics.registry.collect():
        for s in family.samples:
            if s.name in _METRICS:
                labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                samples[f"{s.name}{{{labels}}}"] = s.value
    poller = ops.services.poller
    return {**_loop_stats(), "polls": poller.polls, "watching": poller.watching, "metrics": samples}


def read_stats(server: Server, path: Path, timeout: float = 10.0) -> dict[str, Any]:
    """Ask a measured process for its stats (SIGUSR1) and wait for the new file."""
    before = json.loads(path.read_text())["seq"] if path.exists() else 0
    server.ensure_alive()
    os.kill(server.pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            data: dict[str, Any] = json.loads(path.read_text())
            if data["seq"] > before:
                return data
        time.sleep(0.02)
    raise BenchError(f"{server.name} wrote no stats within {timeout:.0f} s:\n{server.log_tail()}")


# --- role `opsloop`: opsloop run, observed -----------------------------------------------------------


def run_opsloop(config_path: str, stats: Path) -> int:
    """`opsloop run --config CONFIG`, through bot.cli itself, plus a SIGUSR1 handler writing `stats`.

    `bot.cli._run` imports `build_slack` from `bot.app` when it runs; wrapping that one function is the
    least intrusive way to reach the live `Opsloop` (its poller, metrics and event loop) while
    everything else (logging, auth.test, start-up, the web server, production pacing, shutdown) is
    exactly what `opsloop run` does.
    """
    import bot.app
    from bot import cli

    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # never die of an early signal (its default action)
    original = bot.app.build_slack
    writer = StatsFile(stats)

    async def observed(config: Config, env: Env, **kw: Any) -> tuple[Opsloop, Any, Any]:
        ops, bolt, frontend = await original(config, env, **kw)
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, lambda: writer.write(_opsloop_stats(ops)))
        return ops, bolt, frontend

    bot.app.build_slack = observed
    return cli.main(["run", "--config", config_path])


# --- role `naive`: 100 loops ---------------------------------------------------------------------------


@dataclass
class _Watched:
    index: int
    service: str
    job: str
    number: int
    channel: str
    ts: str = ""


async def naive_main(spec: dict[str, Any], stats: Path) -> int:
    """The baseline: one task per build, `ci.build()` every `poll` seconds, a card update per poll.

    What it shares with opsloop: the adapter (`JenkinsCI` on an 8-thread `BlockingPool`, each pool
    thread its own python-jenkins client), the card (`handlers.build.card` rendered by
    `bot.rendering.message`) and the Slack client (`bot.slack.web_client`). What it leaves out on
    purpose: the shared loop, backoff, the database and the outbox. Slack's 429s are counted and
    ignored, as such loops usually do; the cards are posted before the window, waiting out 429s.
    """
    from slack_sdk.errors import SlackApiError

    from adapters.jenkins import JenkinsCI
    from bot import rendering
    from bot.blocking import BlockingPool
    from bot.builds import BuildRow
    from bot.ports import AdapterError, Build
    from bot.slack import web_client
    from handlers.build import card

    interval = float(spec["poll"])
    pool = BlockingPool()
    ci = JenkinsCI(
        spec["jenkins_url"], spec["jenkins_user"], os.environ[JENKINS_TOKEN_ENV], pool=pool, timeout=spec["timeout"]
    )
    client = web_client(BOT_TOKEN, spec["slack_api_url"])
    watched = [_Watched(i, b["service"], b["job"], b["number"], b["channel"]) for i, b in enumerate(spec["builds"])]
    counts: Counter[str] = Counter()
    created = time.time()

    def payload(w: _Watched, b: Build) -> dict[str, Any]:
        row = BuildRow(
            id=w.index + 1,
            service=w.service,
            ci="jenkins",
            job=w.job,
            queue_id=None,
            number=b.number,
            label=b.label,
            state=b.state.value,
            requester=ACTOR,
            channel=w.channel,
            params=dict(b.parameters),
            branch=b.branch,
            commit=b.commit,
            cause=b.cause,
            url=b.url,
            started_at=b.started_at.timestamp() if b.started_at else None,
            finished_at=time.time() if b.state.finished else None,
            duration_s=b.duration_s,
            created_at=created,
        )
        return rendering.message(card(row, typical_s=None, now=time.time()))

    async def post(w: _Watched) -> None:
        body = payload(w, await ci.build(w.job, w.number))
        while True:
            try:
                resp = await client.chat_postMessage(channel=w.channel, text=body["text"], blocks=body["blocks"])
                w.ts = str(resp["ts"])
                return
            except SlackApiError as err:
                if err.response.status_code != 429:
                    raise
                await asyncio.sleep(float(err.response.headers.get("Retry-After", "1")))

    async def watch(w: _Watched) -> None:
        while True:
            try:
                b = await ci.build(w.job, w.number)
            except AdapterError:
                counts["jenkins_errors"] += 1
                await asyncio.sleep(interval)
                continue
            counts["polls"] += 1
            body = payload(w, b)
            counts["slack_calls"] += 1
            try:
                await client.chat_update(channel=w.channel, ts=w.ts, text=body["text"], blocks=body["blocks"])
            except SlackApiError as err:
                counts["slack_429" if err.response.status_code == 429 else "slack_errors"] += 1
            except Exception:  # connection trouble: a naive loop logs and carries on
                counts["slack_errors"] += 1
            if b.state.finished:
                counts["ended"] += 1
                return
            await asyncio.sleep(interval)

    writer = StatsFile(stats)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await asyncio.gather(*(post(w) for w in watched))
    tasks = [asyncio.create_task(watch(w), name=f"naive-watch-{w.index}") for w in watched]
    loop.add_signal_handler(
        signal.SIGUSR1,
        lambda: writer.write(
            {**_loop_stats(), "polls": counts["polls"], "watching": sum(not t.done() for t in tasks), **counts}
        ),
    )
    print(f"watching {len(tasks)} builds", flush=True)
    await stop.wait()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    pool.close()
    ci.close()
    return 0


# --- role `tools`: the emulators -------------------------------------------------------------------------


def _jenkins_kind(method: str, path: str) -> str:
    """What a Jenkins request was for, from its path: build polls apart from everything else."""
    if "crumbIssuer" in path:
        return "crumb"
    if path.startswith("/queue/"):
        return "queue"
    if method == "POST":
        return "trigger"
    if re.search(r"/\d+/api/json$", path):
        return "build"
    if "testReport" in path:
        return "tests"
    if path.endswith("/api/json"):
        return "job"
    return "other"


async def serve_tools(builds: int, channels: int, log_every: float) -> None:
    """A Jenkins and a Slack emulator per lane, and a JSON control API; `ready PORT` once listening."""
    from aiohttp import web

    from tests.emulators.jenkins import BuildScript, JenkinsEmulator
    from tests.emulators.slack import SlackEmulator
    from tests.support import slack_workspace

    services = [service_name(i, builds) for i in range(builds)]

    @dataclass
    class Lane:
        jenkins: JenkinsEmulator
        slack: SlackEmulator
        jenkins_requests: Counter[str] = field(default_factory=Counter)
        slack_calls: Counter[str] = field(default_factory=Counter)

        def count(self) -> None:
            # Count and drop what the emulators recorded, so their lists stay short over long windows.
            for r in self.jenkins.requests:
                self.jenkins_requests[_jenkins_kind(r.method, r.path)] += 1
            self.jenkins.requests.clear()
            for c in self.slack.calls:
                self.slack_calls[f"{c.method} {c.status}"] += 1
            self.slack.calls.clear()

    lanes: dict[str, Lane] = {}
    for name in LANES:
        # quiet_period=0: a queued build starts at Jenkins' next request, as on an idle executor.
        jenkins = await JenkinsEmulator(quiet_period=0.0).start()
        slack = await SlackEmulator(signing_secret=SIGNING_SECRET, bot_token=BOT_TOKEN).start()
        slack_workspace(slack)
        for k in range(channels):
            slack.add_channel(channel_id(k), f"builds-{k}")
        for s in services:
            jenkins.add_job(job_name(s), script=BuildScript(duration=None, log=["Checking out\n"]))
        lanes[name] = Lane(jenkins, slack)

    def lane(request: web.Request) -> Lane:
        name = request.match_info["lane"]
        if name not in lanes:
            raise web.HTTPNotFound(text=f"no lane {name}")
        return lanes[name]

    async def info(_: web.Request) -> web.Response:
        return web.json_response(
            {
                name: {
                    "jenkins_url": ln.jenkins.url,
                    "jenkins_user": ln.jenkins.user,
                    "jenkins_token": ln.jenkins.token,
                    "slack_api_url": ln.slack.api_url,
                }
                for name, ln in lanes.items()
            }
        )

    async def commands(request: web.Request) -> web.Response:
        """Send signed slash commands from the lane's Slack, 10 at a time; their statuses and acks."""
        ln, body = lane(request), await request.json()
        sem = asyncio.Semaphore(10)

        async def one(channel: str, text: str) -> dict[str, Any]:
            async with sem:
                res = await ln.slack.send_command(body["url"], text, user_id=ACTOR, channel_id=channel)
                return {"status": res.status, "body": res.body_text[:300]}

        return web.json_response(await asyncio.gather(*(one(ch, text) for ch, text in body["commands"])))

    async def run(request: web.Request) -> web.Response:
        """Start one build per job at once (the naive lane watches builds by number)."""
        ln = lane(request)
        out = []
        for i, s in enumerate(services):
            b = ln.jenkins.run_build(job_name(s))
            out.append({"service": s, "job": job_name(s), "number": b.number, "channel": channel_id(i % channels)})
        return web.json_response(out)

    async def finish(request: web.Request) -> web.Response:
        ln = lane(request)
        done: dict[str, str] = {}
        for i, s in enumerate(services):
            for b in ln.jenkins.job_builds(job_name(s)):
                if b.building:
                    ln.jenkins.finish_build(job_name(s), b.number, expected_result(i))
                    done[s] = expected_result(i)
        return web.json_response(done)

    async def stats(_: web.Request) -> web.Response:
        out = {}
        for name, ln in lanes.items():
            ln.count()
            out[name] = {
                "jenkins": dict(ln.jenkins_requests),
                "slack": dict(ln.slack_calls),
                "slack_429": ln.slack.rate_limited_count,
                "errors": ln.jenkins.server_errors + ln.slack.server_errors,
            }
        return web.json_response(out)

    async def cards(request: web.Request) -> web.Response:
        ln = lane(request)
        return web.json_response(
            [
                {"channel": channel_id(k), "text": m.text, "edits": m.edited_count}
                for k in range(channels)
                for m in ln.slack.top_level(channel_id(k))
                if m.text.startswith("Build ")
            ]
        )

    async def write_logs() -> None:
        # Builds that write now and then, as real ones do (opsloop's watch does not read the log).
        step = 0
        while True:
            await asyncio.sleep(log_every)
            step += 1
            for ln in lanes.values():
                for s in services:
                    for b in ln.jenkins.job_builds(job_name(s)):
                        if b.building:
                            ln.jenkins.write_log(job_name(s), b.number, f"step {step}: still building\n")

    app = web.Application()
    app.router.add_get("/lanes", info)
    app.router.add_get("/stats", stats)
    app.router.add_post("/{lane}/commands", commands)
    app.router.add_post("/{lane}/run", run)
    app.router.add_post("/{lane}/finish", finish)
    app.router.add_get("/{lane}/cards", cards)
    writer = asyncio.create_task(write_logs())
    try:
        await serve(app)
    finally:
        writer.cancel()
        for ln in lanes.values():
            await ln.jenkins.stop()
            await ln.slack.stop()


# --- the bench ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    builds: int
    channels: int
    poll: float
    window: float
    log_every: float
    finish_timeout: float
    quiet_wait: float
    keep: bool
    results: Path


@dataclass
class Proc:
    """One measured process, its stats file and what was read from it."""

    name: str
    what: str
    server: Server
    stats: Path
    db: Path | None = None
    marks: dict[str, dict[str, Any]] = field(default_factory=dict)
    rss_samples: list[int] = field(default_factory=list)

    def mark(self, label: str) -> None:
        """CPU, memory and the process's own stats, now."""
        s = self.server
        self.marks[label] = {
            "t": time.monotonic(),
            "cpu_s": s.cpu_seconds(),
            "main_thread_cpu_s": s.main_thread_cpu_seconds(),
            "rss_kib": s.status_kib("VmRSS"),
            "peak_rss_kib": s.status_kib("VmHWM"),
            "stats": read_stats(s, self.stats),
            **({"db": db_counts(self.db)} if self.db else {}),
        }


def db_rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    """Read opsloop's database while it runs (read-only; WAL readers never block its writer)."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
        return list(conn.execute(sql).fetchall())


def db_counts(db: Path) -> dict[str, Any]:
    """What the watches leave behind in the database: rows that only grow, and the file sizes."""
    counts = dict(db_rows(db, "SELECT op || ':' || state, count(*) FROM outbox GROUP BY 1"))
    (events,) = db_rows(db, "SELECT count(*) FROM events")[0]
    size = sum(p.stat().st_size for p in db.parent.glob(db.name + "*") if p.is_file())
    return {"outbox": counts, "outbox_rows": sum(counts.values()), "events": events, "db_bytes": size}


def _until(pred: Callable[[], bool], timeout: float, procs: Sequence[Server], step: float = 0.25) -> float | None:
    """Seconds until `pred()` held, or None after `timeout`; stops early if a process died."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        for p in procs:
            p.ensure_alive()
        if pred():
            return time.monotonic() - started
        time.sleep(step)
    return None


def opsloop_config(work: Path, lane: dict[str, Any], opts: Options) -> tuple[Path, Path]:
    """tests/support.py's config (real roles and rules), builds allowed to developers, N services."""
    from tests.support import config_data

    db = work / "opsloop.db"
    data = config_data(db)
    data["permissions"]["build.*"] = ["developers"]
    data["integrations"] = {
        "jenkins": {
            "url": lane["jenkins_url"],
            "user": lane["jenkins_user"],
            "token_env": JENKINS_TOKEN_ENV,
            "timeout": JENKINS_TIMEOUT_S,
            "poll": opts.poll,
        }
    }
    data["services"] = {
        service_name(i, opts.builds): {"build": {"ci": "jenkins", "job": job_name(service_name(i, opts.builds))}}
        for i in range(opts.builds)
    }
    config = work / "opsloop.yml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    return config, db


def start_opsloop(name: str, what: str, work: Path, lane: dict[str, Any], opts: Options) -> Proc:
    """`python -m bench.watch opsloop …` (= opsloop run) in HTTP mode against the lane's emulators."""
    work.mkdir()
    config, db = opsloop_config(work, lane, opts)
    port = free_port()
    env = clean_env(
        SLACK_BOT_TOKEN=BOT_TOKEN,
        SLACK_SIGNING_SECRET=SIGNING_SECRET,
        SLACK_API_URL=lane["slack_api_url"],
        OPSLOOP_DB=str(db),
        OPSLOOP_HTTP_HOST="127.0.0.1",
        OPSLOOP_HTTP_PORT=str(port),
        **{JENKINS_TOKEN_ENV: lane["jenkins_token"]},
    )
    stats = work / "stats.json"
    argv = [sys.executable, "-m", "bench.watch", "opsloop", "--config", str(config), "--stats", str(stats)]
    server = spawn(name, argv, env, work / f"{name}.log", ROOT)
    server.port = port
    return Proc(name, what, wait_http(server, "/healthz"), stats, db)


def start_naive(work: Path, lane: dict[str, Any], builds: list[dict[str, Any]], opts: Options) -> Proc:
    """`python -m bench.watch naive …`: posts its cards, then starts its loops and says so."""
    work.mkdir()
    spec = work / "naive.json"
    spec.write_text(
        json.dumps(
            {
                "jenkins_url": lane["jenkins_url"],
                "jenkins_user": lane["jenkins_user"],
                "slack_api_url": lane["slack_api_url"],
                "timeout": JENKINS_TIMEOUT_S,
                "poll": opts.poll,
                "builds": builds,
            }
        )
    )
    stats = work / "stats.json"
    argv = [sys.executable, "-m", "bench.watch", "naive", "--spec", str(spec), "--stats", str(stats)]
    server = spawn("naive", argv, clean_env(**{JENKINS_TOKEN_ENV: lane["jenkins_token"]}), work / "naive.log", ROOT)
    wait_output(server, r"^watching \d+ builds$", timeout=180, what="post its cards and start its loops")
    return Proc("naive", f"{opts.builds} asyncio loops, poll every {opts.poll:g} s, no backoff", server, stats)


def check_cards(cards: list[dict[str, Any]], opts: Options) -> tuple[int, list[str]]:
    """How many services have exactly one card showing their build's result; what is wrong otherwise."""
    by_service: dict[str, list[str]] = {}
    for c in cards:
        m = re.match(r"Build (\S+) ", c["text"])
        if m:
            by_service.setdefault(m[1], []).append(c["text"])
    ok, wrong = 0, []
    for i in range(opts.builds):
        s = service_name(i, opts.builds)
        texts = by_service.get(s, [])
        want = expected_result(i).lower()
        if len(texts) == 1 and f" {want}" in texts[0]:
            ok += 1
        else:
            wrong.append(f"{s}: {texts or 'no card'} (expected {want})")
    return ok, wrong


def _diff(end: dict[str, int], start: dict[str, int]) -> dict[str, int]:
    keys = sorted(set(end) | set(start))
    return {k: end.get(k, 0) - start.get(k, 0) for k in keys if end.get(k, 0) - start.get(k, 0)}


def _metric_sum(stats: dict[str, Any], name: str) -> float:
    return float(sum(v for k, v in stats.get("metrics", {}).items() if k.startswith(name + "{")))


def summarize(p: Proc, tools0: dict[str, Any], tools1: dict[str, Any], opts: Options) -> dict[str, Any]:
    """One process's numbers over the window."""
    a, b = p.marks["window_start"], p.marks["window_end"]
    minutes = (b["t"] - a["t"]) / 60
    cpu = b["cpu_s"] - a["cpu_s"]
    jenkins = _diff(tools1[p.name]["jenkins"], tools0[p.name]["jenkins"])
    slack = _diff(tools1[p.name]["slack"], tools0[p.name]["slack"])
    polls = b["stats"]["polls"] - a["stats"]["polls"]
    watched = opts.builds if p.name != "idle" else 0
    out: dict[str, Any] = {
        "what": p.what,
        "pid": p.server.pid,
        "window_s": round(b["t"] - a["t"], 2),
        "cpu_s": round(cpu, 3),
        "main_thread_cpu_s": round(b["main_thread_cpu_s"] - a["main_thread_cpu_s"], 3),
        "cpu_s_per_min": round(cpu / minutes, 3),
        "cpu_ms_per_build_min": round(cpu / minutes / watched * 1000, 2) if watched else None,
        "rss_kib_start": a["rss_kib"],
        "rss_kib_end": b["rss_kib"],
        "rss_kib_max_sampled": max(p.rss_samples, default=b["rss_kib"]),
        "peak_rss_kib": b["peak_rss_kib"],
        "jenkins_requests": sum(jenkins.values()),
        "jenkins_by_kind": jenkins,
        "slack_calls": sum(slack.values()),
        "slack_by_method_status": slack,
        "slack_429": tools1[p.name]["slack_429"] - tools0[p.name]["slack_429"],
        "polls": polls,
        "mean_poll_gap_s": round(watched * minutes * 60 / polls, 2) if polls and watched else None,
        "tasks_start": a["stats"]["tasks"],
        "tasks_end": b["stats"]["tasks"],
        "task_kinds_end": b["stats"]["task_kinds"],
        "threads_end": b["stats"]["threads"],
        "stats_start": a["stats"],
        "stats_end": b["stats"],
    }
    if "db" in a:
        out["db_start"], out["db_end"] = a["db"], b["db"]
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def ratios(procs: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """opsloop/naive (the architecture) and opsloop/idle (what watching adds to the floor).

    The idle process makes no requests, so opsloop/idle compares CPU and memory only; and its CPU is
    often a tick or two (10 ms each), so below MIN_CPU_S a CPU ratio would be noise and is left out.
    """
    out: dict[str, dict[str, float | None]] = {}
    keys = {"cpu": "cpu_s_per_min", "memory": "rss_kib_end", "jenkins": "jenkins_requests", "slack": "slack_calls"}
    if "opsloop" in procs and "naive" in procs:
        a, b = procs["opsloop"], procs["naive"]
        out["opsloop/naive"] = {k: _ratio(a[v], b[v]) for k, v in keys.items()}
    if "opsloop" in procs and "idle" in procs:
        a, c = procs["opsloop"], procs["idle"]
        cpu = _ratio(a["cpu_s_per_min"], c["cpu_s_per_min"]) if c["cpu_s"] >= MIN_CPU_S else None
        out["opsloop/idle"] = {"cpu": cpu, "memory": _ratio(a["rss_kib_end"], c["rss_kib_end"])}
    return out


def above_idle(procs: dict[str, dict[str, Any]], builds: int) -> dict[str, Any]:
    """The watching itself: opsloop's CPU minus the idle opsloop's, per build and per poll."""
    a, c, n = procs["opsloop"], procs["idle"], procs.get("naive")
    extra = a["cpu_s_per_min"] - c["cpu_s_per_min"]
    out: dict[str, Any] = {
        "opsloop_cpu_s_per_min": round(extra, 3),
        "opsloop_cpu_ms_per_build_min": round(extra / builds * 1000, 2),
        "opsloop_cpu_ms_per_poll": round(extra * a["window_s"] / 60 / a["polls"] * 1000, 2) if a["polls"] else None,
    }
    if n is not None and n["polls"]:
        out["naive_cpu_ms_per_poll"] = round(n["cpu_s"] / n["polls"] * 1000, 2)
        out["opsloop_vs_naive_cpu"] = _ratio(extra, n["cpu_s_per_min"])
    return out


def _log_findings(p: Proc, problems: list[str], warnings: list[str]) -> None:
    """Errors in an opsloop log are problems; each distinct warning is shown once (without its time)."""
    lines = p.server.log.read_text(errors="replace").splitlines()
    errors = [line for line in lines if "level=error" in line or "Traceback" in line]
    if errors:
        problems.append(f"{p.name} logged {len(errors)} error(s), first: {errors[0][:300]}")
    seen: set[str] = set()
    for line in lines:
        if "level=warning" in line:
            # Numbers vary per line ("retry 3 in 1.2s"); group by the text without them.
            shape = re.sub(r"\d+(\.\d+)?", "N", _LOG_TS.sub("", line))[:200]
            if shape not in seen:
                seen.add(shape)
                n = sum(1 for x in lines if re.sub(r"\d+(\.\d+)?", "N", _LOG_TS.sub("", x))[:200] == shape)
                warnings.append(f"{p.name} logged ({n}x): {_LOG_TS.sub('', line)[:240]}")


@dataclass
class Run:
    """Everything one run started, and what it found; the phases below fill it in."""

    opts: Options
    tmp: Path
    tools: Server | None = None
    base: str = ""
    procs: dict[str, Proc] = field(default_factory=dict)
    setup: dict[str, float] = field(default_factory=dict)
    tools_stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    window: dict[str, float] = field(default_factory=dict)
    end: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def servers(self) -> list[Server]:
        return [p.server for p in self.procs.values()]

    @property
    def opsloop(self) -> Proc:
        return self.procs["opsloop"]

    def opsloop_db(self, sql: str) -> Any:
        """The one value of a query on the watching opsloop's database."""
        assert self.opsloop.db is not None
        return db_rows(self.opsloop.db, sql)[0][0]


def start_all(r: Run) -> None:
    """The emulators, both opsloops, 100 `build` commands, the naive loops; then wait for steady state."""
    opts = r.opts
    quiet = machine.wait_quiet(opts.quiet_wait)
    if quiet > BUSY_WARNING_CORES:
        r.warnings.append(f"the machine was busy before the start ({quiet:.2f} cores)")
    argv = [sys.executable, "-m", "bench.watch", "tools", "--builds", str(opts.builds)]
    argv += ["--channels", str(opts.channels), "--log-every", str(opts.log_every)]
    r.tools = wait_announced(spawn("tools", argv, clean_env(), r.tmp / "tools.log", ROOT), timeout=60)
    r.base = f"http://127.0.0.1:{r.tools.port}"
    lanes = request_json(f"{r.base}/lanes")
    print(f"emulators up (pid {r.tools.pid}); starting opsloop, an idle opsloop and the naive loops", flush=True)
    what = f"opsloop run, {opts.builds} build.watch jobs"
    r.procs["opsloop"] = start_opsloop("opsloop", what, r.tmp / "opsloop", lanes["opsloop"], opts)
    r.procs["idle"] = start_opsloop("idle", "opsloop run, nothing watched", r.tmp / "idle", lanes["idle"], opts)

    # The way people start builds: `/ops build svc-NN`, signed by the lane's Slack, in 10 channels.
    started = time.monotonic()
    commands = [[channel_id(i % opts.channels), f"build {service_name(i, opts.builds)}"] for i in range(opts.builds)]
    body = {"url": r.opsloop.server.url(), "commands": commands}
    acks = request_json(f"{r.base}/opsloop/commands", body, timeout=300)
    bad = [x for x in acks if x["status"] != 200 or "Starting a build" not in x["body"]]
    if bad:
        raise BenchError(f"{len(bad)} of {len(acks)} build commands were not acknowledged, first: {bad[0]}")
    r.setup["commands_s"] = round(time.monotonic() - started, 2)
    print(f"  {opts.builds} `build` commands acknowledged in {r.setup['commands_s']} s", flush=True)

    naive_builds = request_json(f"{r.base}/naive/run", {})
    started = time.monotonic()
    r.procs["naive"] = start_naive(r.tmp / "naive", lanes["naive"], naive_builds, opts)
    r.setup["naive_cards_s"] = round(time.monotonic() - started, 2)

    def steady() -> bool:
        # Every build has its number and every card is posted: from here on it is watching only.
        running = r.opsloop_db("SELECT count(*) FROM builds WHERE state = 'running' AND number IS NOT NULL")
        posting = r.opsloop_db("SELECT count(*) FROM outbox WHERE op = 'post' AND state IN ('pending', 'sending')")
        return bool(running == opts.builds and posting == 0)

    if _until(steady, 180, r.servers) is None:
        raise BenchError(f"opsloop did not reach {opts.builds} running builds with posted cards within 180 s")
    r.setup["opsloop_steady_s"] = round(time.monotonic() - started, 2)


def measure_window(r: Run) -> None:
    """All three processes over the same window, so a drift of the host hits them alike."""
    assert r.tools is not None
    print(f"  all {r.opts.builds} watches running, cards posted; measuring {r.opts.window:g} s", flush=True)
    tools_cpu0, busy0, self0 = r.tools.cpu_seconds(), machine.busy_seconds(), _self_cpu()
    r.tools_stats["window_start"] = request_json(f"{r.base}/stats")
    for p in r.procs.values():
        p.mark("window_start")
    started = time.monotonic()
    while (left := r.opts.window - (time.monotonic() - started)) > 0:
        time.sleep(min(2.0, left))
        for p in r.procs.values():
            p.server.ensure_alive()
            p.rss_samples.append(p.server.status_kib("VmRSS"))
    for p in r.procs.values():
        p.mark("window_end")
    r.tools_stats["window_end"] = request_json(f"{r.base}/stats")
    wall = time.monotonic() - started
    tools_cpu = r.tools.cpu_seconds() - tools_cpu0
    ours = sum(p.marks["window_end"]["cpu_s"] - p.marks["window_start"]["cpu_s"] for p in r.procs.values())
    ours += tools_cpu + _self_cpu() - self0
    other = max(0.0, machine.busy_seconds() - busy0 - ours) / wall
    r.window = {"wall_s": round(wall, 2), "tools_cpu_s": round(tools_cpu, 3), "other_cores": round(other, 3)}
    if other > BUSY_WARNING_CORES:
        r.warnings.append(f"other processes used {other:.2f} cores during the window; its numbers are pessimistic")


def _self_cpu() -> float:
    """This bench process's own CPU time (sampling /proc, reading stats), kept out of "other load"."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def finish_and_check(r: Run) -> None:
    """Finish every build; each of opsloop's watches must end and each card show its build's result.

    The naive loops are followed at the same time, so both end times count from the same moment.
    """
    opts, a, naive = r.opts, r.opsloop, r.procs["naive"]
    print("  finishing every build; waiting for opsloop's watches and cards", flush=True)
    request_json(f"{r.base}/opsloop/finish", {})
    request_json(f"{r.base}/naive/finish", {})
    finished = time.monotonic()
    cards: list[dict[str, Any]] = []

    def watches_ended() -> bool:
        ended = r.opsloop_db("SELECT count(*) FROM builds WHERE finished_at IS NOT NULL")
        done = r.opsloop_db("SELECT count(*) FROM jobs WHERE kind = 'build.watch' AND state = 'done'")
        return bool(ended == opts.builds and done == opts.builds)

    def cards_final() -> bool:
        cards[:] = request_json(f"{r.base}/opsloop/cards")
        return check_cards(cards, opts)[0] == opts.builds

    def loops_ended() -> bool:
        return bool(read_stats(naive.server, naive.stats)["watching"] == 0)

    checks = {"opsloop_watches_ended_s": watches_ended, "opsloop_cards_final_s": cards_final}
    checks["naive_loops_ended_s"] = loops_ended
    at: dict[str, float] = {}
    while len(at) < len(checks) and time.monotonic() - finished < opts.finish_timeout:
        for p in r.procs.values():
            p.server.ensure_alive()
        for name, check in checks.items():
            if name not in at and check():
                at[name] = round(time.monotonic() - finished, 1)
        time.sleep(0.5)
    ok, wrong = check_cards(request_json(f"{r.base}/opsloop/cards"), opts)
    if "opsloop_watches_ended_s" not in at:
        r.problems.append(f"opsloop: not every watch ended {opts.finish_timeout:.0f} s after the builds finished")
    if ok != opts.builds:
        r.problems.append(
            f"opsloop: {opts.builds - ok} of {opts.builds} cards do not show their build's result "
            f"{opts.finish_timeout:.0f} s after the builds finished; first: {wrong[0]}"
        )
    a.mark("after_end")
    naive.mark("after_end")
    after = a.marks["after_end"]["stats"]
    if n_failed := _metric_sum(after, "opsloop_outbox_failed_total"):
        r.problems.append(f"opsloop gave up on {n_failed:.0f} Slack write(s) (opsloop_outbox_failed_total)")
    for metric, what in (("opsloop_slack_ratelimited_total", "429s"), ("opsloop_adapter_errors_total", "errors")):
        if n_seen := _metric_sum(after, metric):
            r.warnings.append(f"opsloop counted {n_seen:.0f} {what} ({metric})")
    naive_ok, _ = check_cards(request_json(f"{r.base}/naive/cards"), opts)
    r.end = {
        **{k: at.get(k) for k in checks},
        "opsloop_cards_showing_result": ok,
        "opsloop_wrong_cards": wrong[:10],
        "opsloop_after": {k: a.marks["after_end"].get(k) for k in ("stats", "rss_kib", "db")},
        "naive_cards_showing_result": naive_ok,
        "naive_after": naive.marks["after_end"]["stats"],
    }
    for name, s in request_json(f"{r.base}/stats").items():
        r.problems += [f"{name} emulator: {e}" for e in s["errors"]]


def stop_all(r: Run) -> None:
    """SIGTERM everything; a non-zero exit or an error in an opsloop log is a problem."""
    for p in r.procs.values():
        code = p.server.stop()
        if code != 0:
            r.problems.append(f"{p.name} exited with {code} on SIGTERM:\n{p.server.log_tail()}")
    if r.tools is not None:
        r.tools.stop()
    for name in ("opsloop", "idle"):
        if name in r.procs:
            _log_findings(r.procs[name], r.problems, r.warnings)


def run(opts: Options) -> dict[str, Any]:
    """Start everything, bring the watches to steady state, measure the window, finish, check, stop."""
    r = Run(opts, Path(tempfile.mkdtemp(prefix="opsloop-bench-watch-")))
    started = time.monotonic()
    try:
        start_all(r)
        measure_window(r)
        finish_and_check(r)
    finally:
        stop_all(r)
        if opts.keep:
            print(f"scratch directory kept: {r.tmp}")
        else:
            shutil.rmtree(r.tmp, ignore_errors=True)
    t0, t1 = r.tools_stats["window_start"], r.tools_stats["window_end"]
    results = {name: summarize(p, t0, t1, opts) for name, p in r.procs.items()}
    info = machine.describe(sys.executable)  # describe() asks a wrk binary for its version: meaningless here
    info.pop("wrk", None)
    return {
        "benchmark": "build watching",
        "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": {
            "builds": opts.builds,
            "channels": opts.channels,
            "poll_s": opts.poll,
            "backoff": BACKOFF,
            "ceiling_s": CEILING_S,
            "window_s": opts.window,
            "log_every_s": opts.log_every,
        },
        "machine": info,
        "setup": r.setup,
        "processes": results,
        "ratios": ratios(results),
        "above_idle": above_idle(results, opts.builds),
        "window": r.window,
        "end": r.end,
        "problems": r.problems,
        "warnings": r.warnings,
        "total_s": round(time.monotonic() - started, 1),
    }


# --- the report ---------------------------------------------------------------------------------------


def _n(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def table(data: dict[str, Any]) -> str:
    """The human summary: one row per process, the ratios, the end check, and problems loudly."""
    st, m, procs = data["settings"], data["machine"], data["processes"]
    head = (
        f"{'process':<9}{'CPU s/min':>10}{'ms/build/min':>13}{'RSS MiB':>9}{'peak':>7}{'ΔRSS':>7}"
        f"{'Jenkins req':>12}{'Slack calls':>12}{'429s':>6}{'polls':>7}{'gap s':>7}{'tasks':>7}{'threads':>8}"
    )
    lines = [
        f"build watching: {st['builds']} builds in {st['channels']} channels, poll {st['poll_s']:g} s "
        f"(opsloop: ×{st['backoff']:g} per unchanged poll up to {st['ceiling_s']:g} s), "
        f"window {data['window']['wall_s']:.0f} s, {m['cores']} cores, {m['cpu']}",
        "",
        head,
        "-" * len(head),
    ]
    for name, p in procs.items():
        lines.append(
            f"{name:<9}{p['cpu_s_per_min']:>10.2f}{_n(p['cpu_ms_per_build_min'], '.1f'):>13}"
            f"{p['rss_kib_end'] / 1024:>9.1f}{p['peak_rss_kib'] / 1024:>7.1f}"
            f"{(p['rss_kib_end'] - p['rss_kib_start']) / 1024:>+7.1f}"
            f"{p['jenkins_requests']:>12}{p['slack_calls']:>12}{p['slack_429']:>6}{p['polls']:>7}"
            f"{_n(p['mean_poll_gap_s'], '.1f'):>7}{p['tasks_end']:>7}{p['threads_end']:>8}"
        )
    lines.append("")
    names = {"cpu": "CPU", "memory": "memory", "jenkins": "Jenkins requests", "slack": "Slack calls"}
    for pair, r in data["ratios"].items():
        line = f"{pair:<14}" + "   ".join(f"{names[k]} {_n(x, '.2f')}x" for k, x in r.items())
        if r.get("cpu") is None and pair == "opsloop/idle":
            line += f"   (idle used {procs['idle']['cpu_s']:.2f} CPU s: below {MIN_CPU_S} s, no CPU ratio)"
        lines.append(line)
    ai = data["above_idle"]
    line = (
        f"watching alone (opsloop − idle): {ai['opsloop_cpu_s_per_min']:.2f} CPU s/min, "
        f"{ai['opsloop_cpu_ms_per_build_min']:.1f} ms per build per minute, "
        f"{_n(ai['opsloop_cpu_ms_per_poll'], '.2f')} ms per poll"
    )
    if "naive_cpu_ms_per_poll" in ai:
        line += (
            f"; naive: {ai['naive_cpu_ms_per_poll']:.2f} ms per poll; "
            f"opsloop's watching/naive CPU {_n(ai['opsloop_vs_naive_cpu'], '.2f')}x"
        )
    lines.append(line)
    off = ", ".join(
        f"{name} {(p['cpu_s'] - p['main_thread_cpu_s']) / p['cpu_s']:.0%}" for name, p in procs.items() if p["cpu_s"]
    )
    lines.append(f"CPU outside the event-loop thread (python-jenkins on the pool; opsloop's SQLite writer): {off}")
    if "opsloop" in procs:
        p = procs["opsloop"]
        kinds = ", ".join(f"{k} {v}" for k, v in list(p["task_kinds_end"].items())[:6])
        lines.append(f"opsloop tasks at the end of the window: {kinds}")
        if "db_start" in p:
            d0, d1 = p["db_start"], p["db_end"]
            lines.append(
                f"opsloop database during the window: outbox rows {d0['outbox_rows']} -> {d1['outbox_rows']}, "
                f"events {d0['events']} -> {d1['events']}, "
                f"size {d0['db_bytes'] / 2**20:.1f} -> {d1['db_bytes'] / 2**20:.1f} MiB (with WAL)"
            )
    end = data.get("end") or {}
    if end:
        n = st["builds"]
        lines.append(
            f"end (builds finished at t=0): opsloop's watches ended at +{_n(end['opsloop_watches_ended_s'], '.0f')} s, "
            f"every card showed its result at +{_n(end['opsloop_cards_final_s'], '.0f')} s "
            f"({end['opsloop_cards_showing_result']}/{n}); naive loops ended at "
            f"+{_n(end['naive_loops_ended_s'], '.0f')} s, {end['naive_cards_showing_result']}/{n} of their cards"
            " show the result"
        )
    w = data["window"]
    lines.append(
        f"emulators (not counted) used {w['tools_cpu_s'] / w['wall_s']:.2f} cores; other load {w['other_cores']:.2f}"
        f" cores; whole run {data['total_s']:.0f} s"
    )
    lines += [f"warning: {x}" for x in data["warnings"]]
    if data["problems"]:
        lines += ["", "!" * 72, f"!!! {len(data['problems'])} PROBLEM(S): these numbers are not valid", "!" * 72]
        lines += [f"!!! PROBLEM: {x}" for x in data["problems"]]
    return "\n".join(lines)


# --- entry points -------------------------------------------------------------------------------------


def _parse_args(argv: list[str]) -> Options:
    p = argparse.ArgumentParser(prog="python -m bench.watch", description=(__doc__ or "").splitlines()[0])
    p.add_argument("--builds", type=int, default=100, help="builds watched at once (default 100)")
    p.add_argument("--channels", type=int, default=10, help="channels the cards are spread over (default 10)")
    p.add_argument("--poll", type=float, default=2.0, help="integrations.jenkins.poll in seconds (default 2)")
    p.add_argument("--window", type=float, default=60.0, help="measured seconds (default 60)")
    p.add_argument("--log-every", type=float, default=5.0, help="seconds between console lines per build")
    p.add_argument("--finish-timeout", type=float, default=300.0, help="max seconds for the end check")
    p.add_argument("--quiet-wait", type=float, default=20.0, help="max seconds to wait for an idle machine first")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory (logs, databases, configs)")
    p.add_argument("--results", type=Path, default=ROOT / "bench" / "results", help="where the JSON goes")
    a = p.parse_args(argv)
    if a.builds < 1 or a.channels < 1 or a.poll <= 0 or a.window < 5:
        p.error("--builds, --channels and --poll must be positive and --window at least 5")
    return Options(
        a.builds, a.channels, a.poll, a.window, a.log_every, a.finish_timeout, a.quiet_wait, a.keep, a.results
    )


def _role(argv: list[str]) -> int:
    """The processes the bench starts: `tools`, `opsloop`, `naive`."""
    p = argparse.ArgumentParser(prog=f"python -m bench.watch {argv[0]}")
    p.add_argument("--builds", type=int, default=100)
    p.add_argument("--channels", type=int, default=10)
    p.add_argument("--log-every", type=float, default=5.0)
    p.add_argument("--config")
    p.add_argument("--spec", type=Path)
    p.add_argument("--stats", type=Path)
    a = p.parse_args(argv[1:])
    if argv[0] == "tools":
        import logging

        logging.basicConfig(level=logging.WARNING)
        asyncio.run(serve_tools(a.builds, a.channels, a.log_every))
        return 0
    if argv[0] == "opsloop":
        return run_opsloop(a.config, a.stats)
    return asyncio.run(naive_main(json.loads(a.spec.read_text()), a.stats))


def main(argv: list[str] | None = None) -> int:
    """Run, print the table, write the JSON; exit 1 when something is wrong with the numbers."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("tools", "opsloop", "naive"):
        return _role(args)
    opts = _parse_args(args)
    try:
        data = run(opts)
    except BenchError as err:
        print(f"!!! bench failed: {err}", file=sys.stderr)
        return 1
    path = report.write_json(opts.results, data, prefix="watch")
    print()
    print(table(data))
    print(f"\nresults: {path}")
    return 1 if data["problems"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
