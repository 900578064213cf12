"""The ack-path benchmark: opsloop's `/ops help` vs a minimal Bolt app vs bare aiohttp, one after another.

Each server is its own process on 127.0.0.1; wrk drives it alone (50 keep-alive connections, 2 threads)
with a signed form body, after a warm-up. opsloop runs as `opsloop run` against the in-repo Slack
emulator (its own process, idle once users.info is cached), so the measured path is the production one:
Bolt's signature check and parsing, opsloop's middleware and metrics, the grammar, the policy check,
the handler, and the audit write committed to SQLite before the ack leaves.
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench import machine, report
from bench import wrk as load
from bench.procs import BenchError, Server, clean_env, free_port, post, spawn, wait_announced, wait_http
from bench.servers import BOT_TOKEN, SIGNING_SECRET

ROOT = Path(__file__).resolve().parent.parent
ACTOR = "U0ALICE"  # an admin and developer in tests/support.py's config_data()
COMMAND_TEXT = "help"
_LOG_TS = re.compile(r"^ts=\S+ ")


@dataclass(frozen=True)
class Options:
    """How long and how hard to drive each server."""

    duration: float
    warmup: float
    repeat: int
    connections: int
    threads: int
    servers: tuple[str, ...]
    quiet_wait: float
    keep: bool
    strict: bool
    results: Path
    paired: bool = False


@dataclass
class Context:
    """What every server start needs: scratch space, the interpreter, the Slack stand-in, the body."""

    opts: Options
    tmp: Path
    slack_api_url: str
    body: str
    python: str = sys.executable

    @property
    def opsloop_bin(self) -> str:
        return str(Path(self.python).parent / "opsloop")


@dataclass
class Round:
    """One life of a server process: ack check, warm-up, one measured run, memory, exit, verification."""

    index: int
    check: dict[str, Any] = field(default_factory=dict)
    warmup: load.WrkResult | None = None
    run: load.WrkResult | None = None
    cpu: machine.CpuWindow | None = None
    busy_before: float = 0.0
    rss_kib: int = 0
    hwm_kib: int = 0
    exit_code: int | None = None
    audit: dict[str, Any] | None = None
    # --paired: the whole life of a process that served every slice (for the audit proof, not measured).
    slices: list[load.WrkResult] = field(default_factory=list)

    def _runs(self) -> list[load.WrkResult]:
        return [r for r in (self.warmup, self.run, *self.slices) if r]

    @property
    def answered(self) -> int:
        """Requests answered as the check and wrk saw them."""
        return (1 if self.check else 0) + sum(r.requests for r in self._runs())

    @property
    def wrk_runs(self) -> int:
        return len(self._runs())

    @property
    def errors(self) -> int:
        return sum(r.errors for r in self._runs())

    def _per_request(self, seconds: float) -> float:
        return seconds / self.run.requests * 1e6 if self.run and self.run.requests else 0.0

    @property
    def cpu_us_per_request(self) -> float:
        """The server's CPU (all threads) per answered request of the measured run."""
        return self._per_request(self.cpu.server) if self.cpu else 0.0

    @property
    def other_threads_us_per_request(self) -> float:
        """The part of it spent outside the event-loop thread (opsloop: the store writer)."""
        return self._per_request(self.cpu.server - self.cpu.server_main) if self.cpu else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "warmup": self.warmup.to_json() if self.warmup else None,
            "run": self.run.to_json() if self.run else None,
            "cpu": self.cpu.to_json() if self.cpu else None,
            "cpu_us_per_request": round(self.cpu_us_per_request, 1),
            "other_threads_cpu_us_per_request": round(self.other_threads_us_per_request, 1),
            "busy_cores_before": round(self.busy_before, 3),
            "rss_kib": self.rss_kib,
            "peak_rss_kib": self.hwm_kib,
            "exit_code": self.exit_code,
            "audit": self.audit,
        }


@dataclass
class Measurement:
    """Every round of one server; the headline numbers are medians over the rounds."""

    name: str
    what: str
    rounds: list[Round] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def _median(self, fn: Callable[[Round], float]) -> float:
        done = [r for r in self.rounds if r.run]
        return float(statistics.median(fn(r) for r in done)) if done else 0.0

    @property
    def rps(self) -> float:
        return self._median(lambda r: r.run.rps if r.run else 0.0)

    @property
    def p50_ms(self) -> float:
        return self._median(lambda r: r.run.p50_ms if r.run else 0.0)

    @property
    def p99_ms(self) -> float:
        return self._median(lambda r: r.run.p99_ms if r.run else 0.0)

    @property
    def errors(self) -> int:
        return sum(r.errors for r in self.rounds)

    def to_json(self) -> dict[str, Any]:
        return {
            "what": self.what,
            "rps": round(self.rps, 1),
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "errors": self.errors,
            "rss_kib": round(self._median(lambda r: r.rss_kib)),
            "cpu_us_per_request": round(self._median(lambda r: r.cpu_us_per_request), 1),
            "other_threads_cpu_us_per_request": round(self._median(lambda r: r.other_threads_us_per_request), 1),
            "other_cores_max": round(max((r.cpu.other_cores for r in self.rounds if r.cpu), default=0.0), 3),
            "rounds": [r.to_json() for r in self.rounds],
            "problems": self.problems,
            "warnings": self.warnings,
        }


@dataclass(frozen=True)
class Target:
    """One server to measure: how to start it, what its ack must say, what to verify after it stopped."""

    name: str
    what: str
    expect: str
    start: Callable[[Context, Path], Server]
    verify: Callable[[Context, Path, Server, Round, Measurement], None] = lambda *args: None


# --- the three servers ------------------------------------------------------------------------------


def _start_bench_server(kind: str, *args: str) -> Callable[[Context, Path], Server]:
    def start(ctx: Context, work: Path) -> Server:
        argv = [ctx.python, "-m", "bench.servers", kind, *args]
        return wait_announced(spawn(kind, argv, clean_env(), work / f"{kind}.log", ROOT))

    return start


def _start_bolt(ctx: Context, work: Path) -> Server:
    return _start_bench_server("bolt", ctx.slack_api_url)(ctx, work)


def opsloop_files(work: Path) -> tuple[Path, Path]:
    """The config (tests/support.py's config_data(): real roles and permission rules) and the database."""
    from tests.support import config_data

    db = work / "opsloop.db"
    config = work / "opsloop.yml"
    config.write_text(yaml.safe_dump(config_data(db), sort_keys=False))
    return config, db


def opsloop_env(ctx: Context, db: Path, port: int) -> dict[str, str]:
    """The environment of `opsloop run`: HTTP mode against the emulator, our database and port."""
    return clean_env(
        SLACK_BOT_TOKEN=BOT_TOKEN,
        SLACK_SIGNING_SECRET=SIGNING_SECRET,
        SLACK_API_URL=ctx.slack_api_url,
        OPSLOOP_DB=str(db),
        OPSLOOP_HTTP_HOST="127.0.0.1",
        OPSLOOP_HTTP_PORT=str(port),
    )


def start_opsloop(ctx: Context, work: Path) -> Server:
    """`opsloop run --config …` as a subprocess; ready when /healthz answers."""
    config, db = opsloop_files(work)
    port = free_port()
    argv = [ctx.opsloop_bin, "run", "--config", str(config)]
    server = spawn("opsloop", argv, opsloop_env(ctx, db, port), work / "opsloop.log", ROOT)
    server.port = port
    return wait_http(server, "/healthz")


def _audit_summary(db: Path) -> dict[str, Any]:
    """Rows, outcomes, and the router's own time per command as the audit rows record it (`detail.ms`)."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = int(conn.execute("SELECT count(*) FROM audit").fetchone()[0])
        outcomes = dict(conn.execute("SELECT outcome || ':' || action, count(*) FROM audit GROUP BY 1").fetchall())
        ms = sorted(
            float(x) for (x,) in conn.execute("SELECT json_extract(detail, '$.ms') FROM audit") if x is not None
        )
    pct = {f"p{p}": ms[min(len(ms) - 1, len(ms) * p // 100)] for p in (50, 99)} if ms else {}
    return {"rows": rows, "by_outcome_action": outcomes, "router_ms": pct}


def _verify_audit(ctx: Context, work: Path, rnd: Round, m: Measurement) -> None:
    """One audit row per answered request (the proof the write is in the path) and an intact chain."""
    config, db = work / "opsloop.yml", work / "opsloop.db"
    audit = _audit_summary(db)
    # wrk stops counting with up to one request in flight per connection; opsloop still answers it.
    slack = ctx.opts.connections * rnd.wrk_runs
    audit.update(answered=rnd.answered, in_flight_allowance=slack)
    if not rnd.answered <= audit["rows"] <= rnd.answered + slack:
        m.problems.append(
            f"round {rnd.index + 1}: audit has {audit['rows']} rows for {rnd.answered} answered requests "
            f"(expected {rnd.answered}..{rnd.answered + slack})"
        )
    if set(audit["by_outcome_action"]) != {"ok:core.help"}:
        m.problems.append(f"round {rnd.index + 1}: audit rows other than ok:core.help: {audit['by_outcome_action']}")
    verify = subprocess.run(
        [ctx.opsloop_bin, "audit", "verify", "--config", str(config)],
        env=opsloop_env(ctx, db, 0),
        capture_output=True,
        text=True,
        check=False,
    )
    audit["verify"] = (verify.stdout + verify.stderr).strip()
    if verify.returncode != 0:
        m.problems.append(f"round {rnd.index + 1}: opsloop audit verify failed: {audit['verify']}")
    rnd.audit = audit


def _verify_opsloop(ctx: Context, work: Path, server: Server, rnd: Round, m: Measurement) -> None:
    """The audit proof, and a log without errors (warnings are shown, they don't invalidate)."""
    _verify_audit(ctx, work, rnd, m)
    log = server.log.read_text(errors="replace").splitlines()
    errors = [line for line in log if "level=error" in line or "Traceback" in line]
    if errors:
        m.problems.append(f"round {rnd.index + 1}: opsloop logged {len(errors)} errors, first: {errors[0][:300]}")
    # One warning per request would cost time too, so every distinct one is shown (without its time).
    for line in log:
        warning = f"opsloop logged: {_LOG_TS.sub('', line)[:300]}"
        if "level=warning" in line and warning not in m.warnings:
            m.warnings.append(warning)


TARGETS: dict[str, Target] = {
    "bare": Target("bare", "aiohttp handler: read body, 200 'ok'", "ok", _start_bench_server("bare")),
    "bolt": Target("bolt", "Bolt AsyncApp, /ops -> ack('ok')", "ok", _start_bolt),
    "opsloop": Target(
        "opsloop",
        "`opsloop run`: /ops help, signature+parse+policy+audit",
        "opsloop commands",
        start_opsloop,
        _verify_opsloop,
    ),
}


# --- measuring ----------------------------------------------------------------------------------------


def check_ack(ctx: Context, server: Server, target: Target) -> dict[str, Any]:
    """One signed request first: a wrong answer would make every number below meaningless."""
    started = time.perf_counter()
    status, text = post(server.url(), ctx.body.encode(), load.signed_headers(SIGNING_SECRET, ctx.body))
    check = {"status": status, "ms": round((time.perf_counter() - started) * 1000, 1), "body": text[:200]}
    if status != 200 or target.expect not in text:
        raise BenchError(f"{target.name}: the ack was {status} {text[:300]!r}, expected 200 with {target.expect!r}")
    return check


def drive(ctx: Context, server: Server, seconds: float, label: str) -> tuple[load.WrkResult, machine.CpuWindow]:
    """One wrk run against `server`, with the CPU accounting of the machine around it."""
    lua = load.write_lua(server.log.with_suffix(".lua"), SIGNING_SECRET, ctx.body)  # fresh signature each run
    marks = (
        time.monotonic(),
        machine.busy_seconds(),
        server.cpu_seconds(),
        server.main_thread_cpu_seconds(),
        machine.children_cpu_seconds(),
    )
    result = load.run(server.url(), lua, seconds=seconds, connections=ctx.opts.connections, threads=ctx.opts.threads)
    window = machine.CpuWindow(
        wall=time.monotonic() - marks[0],
        busy=machine.busy_seconds() - marks[1],
        server=server.cpu_seconds() - marks[2],
        server_main=server.main_thread_cpu_seconds() - marks[3],
        wrk=machine.children_cpu_seconds() - marks[4],
    )
    server.ensure_alive()
    flag = f"  !!! {result.errors} ERRORS" if result.errors else ""
    print(
        f"  {label:<14} {result.rps:8.0f} req/s  p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms"
        f"  other load {window.other_cores:.2f} cores{flag}",
        flush=True,
    )
    return result, window


def measure_round(ctx: Context, target: Target, m: Measurement) -> Round:
    """Start a fresh process, check, warm up, measure once, read memory, stop, verify."""
    rnd = Round(len(m.rounds))
    m.rounds.append(rnd)
    work = ctx.tmp / f"{target.name}-{rnd.index + 1}"
    work.mkdir()
    server = target.start(ctx, work)
    label = f"run {rnd.index + 1}/{ctx.opts.repeat}"
    try:
        rnd.check = check_ack(ctx, server, target)
        rnd.warmup, _ = drive(ctx, server, ctx.opts.warmup, "warm-up")
        rnd.busy_before = machine.wait_quiet(ctx.opts.quiet_wait)
        rnd.run, rnd.cpu = drive(ctx, server, ctx.opts.duration, label)
        rnd.rss_kib, rnd.hwm_kib = server.status_kib("VmRSS"), server.status_kib("VmHWM")
    finally:
        rnd.exit_code = server.stop()
    if rnd.exit_code != 0:
        m.problems.append(f"round {rnd.index + 1}: exited with {rnd.exit_code} on SIGTERM:\n{server.log_tail()}")
    if rnd.errors:
        m.problems.append(f"round {rnd.index + 1}: {rnd.errors} failed requests (non-2xx or socket errors)")
    target.verify(ctx, work, server, rnd, m)
    return rnd


def measure_paired(ctx: Context, names: tuple[str, ...], results: dict[str, Measurement]) -> None:
    """--paired: every server running at once (idle but for the one being driven), one warm-up each, then
    `repeat` slices of `duration` seconds, each slice driving every server once, in turn.

    A slice's servers are measured seconds apart, so a slowing of the host lands on all of them rather
    than on the rounds of one, and the ratio of each slice is a fair pair; the order turns every slice."""
    servers: dict[str, Server] = {}
    lives: dict[str, Round] = {}
    try:
        for name in names:
            work = ctx.tmp / f"{name}-paired"
            work.mkdir()
            servers[name] = TARGETS[name].start(ctx, work)
            life = lives[name] = Round(0)
            life.check = check_ack(ctx, servers[name], TARGETS[name])
            print(f"{name}: {TARGETS[name].what}", flush=True)
            life.warmup, _ = drive(ctx, servers[name], ctx.opts.warmup, "warm-up")
        for i in range(ctx.opts.repeat):
            busy = machine.wait_quiet(ctx.opts.quiet_wait)
            for name in names[i % len(names) :] + names[: i % len(names)]:
                rnd = Round(i, busy_before=busy)
                rnd.run, rnd.cpu = drive(ctx, servers[name], ctx.opts.duration, f"{name} {i + 1}/{ctx.opts.repeat}")
                rnd.rss_kib, rnd.hwm_kib = servers[name].status_kib("VmRSS"), servers[name].status_kib("VmHWM")
                results[name].rounds.append(rnd)
                lives[name].slices.append(rnd.run)
    finally:
        for name, server in servers.items():
            lives.setdefault(name, Round(0)).exit_code = server.stop()
    for name, server in servers.items():
        life, m = lives[name], results[name]
        if life.exit_code != 0:
            m.problems.append(f"exited with {life.exit_code} on SIGTERM:\n{server.log_tail()}")
        if life.errors:
            m.problems.append(f"{life.errors} failed requests (non-2xx or socket errors)")
        TARGETS[name].verify(ctx, ctx.tmp / f"{name}-paired", server, life, m)
        if m.rounds and life.audit:
            m.rounds[-1].audit = life.audit  # the proof covers the process's whole life, shown once


def paired_ratios(results: dict[str, Measurement]) -> dict[str, Any] | None:
    """opsloop/bolt throughput slice by slice (the same slice's two runs) and their median."""
    if "opsloop" not in results or "bolt" not in results:
        return None
    pairs = [
        o.run.rps / b.run.rps
        for o, b in zip(results["opsloop"].rounds, results["bolt"].rounds, strict=False)
        if o.run and b.run and b.run.rps
    ]
    if not pairs:
        return None
    low, high = median_interval(pairs)
    return {
        "opsloop/bolt": [round(x, 3) for x in pairs],
        "median": round(statistics.median(pairs), 3),
        "median_95": [round(low, 3), round(high, 3)],
        "min": round(min(pairs), 3),
        "max": round(max(pairs), 3),
    }


def median_interval(xs: list[float], resamples: int = 2000) -> tuple[float, float]:
    """A 95 % bootstrap interval of the median of `xs` (seeded, so a report reads the same twice): how far
    the median of this many slices can be trusted on a machine whose slices spread as these did."""
    rng = random.Random(0)
    medians = sorted(statistics.median(rng.choices(xs, k=len(xs))) for _ in range(resamples))
    return medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]


# --- the run -------------------------------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measured run (default 10)")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of warm-up per server (default 3)")
    p.add_argument("--repeat", type=int, default=1, help="rounds per server (fresh process each); medians reported")
    p.add_argument("--connections", type=int, default=50, help="wrk connections (default 50)")
    p.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    p.add_argument("--servers", default="bare,bolt,opsloop", help="comma-separated subset, in this order")
    p.add_argument("--quiet-wait", type=float, default=20.0, help="max seconds to wait for an idle machine per run")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory (logs, database, Lua)")
    p.add_argument("--strict", action="store_true", help="exit 2 when the target is not met")
    p.add_argument("--results", type=Path, default=ROOT / "bench" / "results", help="where the JSON goes")
    p.add_argument(
        "--paired",
        action="store_true",
        help="all servers at once, --repeat slices of --duration s each driving every server in turn (see README)",
    )
    a = p.parse_args(argv)
    servers = tuple(s.strip() for s in a.servers.split(",") if s.strip())
    unknown = [s for s in servers if s not in TARGETS]
    if unknown or not servers:
        p.error(f"unknown server(s) {unknown}; choose from {', '.join(TARGETS)}")
    if a.repeat < 1 or a.duration < 1 or a.warmup < 1:
        p.error("--repeat, --duration and --warmup must be at least 1")
    return Options(
        a.duration,
        a.warmup,
        a.repeat,
        a.connections,
        a.threads,
        servers,
        a.quiet_wait,
        a.keep,
        a.strict,
        a.results,
        a.paired,
    )


def start_slack(tmp: Path) -> Server:
    """The Slack emulator in its own process (auth.test and users.info for Bolt and opsloop)."""
    argv = [sys.executable, "-m", "bench.servers", "slack"]
    return wait_announced(spawn("slack", argv, clean_env(), tmp / "slack.log", ROOT))


def run(opts: Options) -> dict[str, Any]:
    """Measure the selected servers one after another, `repeat` rounds; return the report data.

    Rounds go bare, bolt, opsloop, bare, bolt, opsloop…: a slow drift of the host then moves all three
    alike instead of landing on one of them, which keeps the ratios honest.
    """
    wrk_path = load.wrk_binary()
    tmp = Path(tempfile.mkdtemp(prefix="opsloop-bench-"))
    slack = start_slack(tmp)
    results = {name: Measurement(name, TARGETS[name].what) for name in opts.servers}
    fatal: list[str] = []
    try:
        body = load.command_body(ACTOR, COMMAND_TEXT, f"http://127.0.0.1:{slack.port}/commands/T0TEST/1/bench")
        ctx = Context(opts, tmp, f"http://127.0.0.1:{slack.port}/api/", body)
        if opts.paired:
            try:
                measure_paired(ctx, opts.servers, results)
            except BenchError as err:
                fatal.append(str(err))
                print(f"!!! {err}", file=sys.stderr, flush=True)
        for _ in range(0 if opts.paired else opts.repeat):
            for name in opts.servers:
                print(f"{name}: {TARGETS[name].what}", flush=True)
                try:
                    measure_round(ctx, TARGETS[name], results[name])
                except BenchError as err:
                    fatal.append(str(err))
                    print(f"!!! {err}", file=sys.stderr, flush=True)
    finally:
        slack.stop()
        slack_calls = [line for line in slack.log.read_text(errors="replace").splitlines() if "slack calls" in line]
        if opts.keep:
            print(f"scratch directory kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    problems = fatal + [f"{name}: {p}" for name, m in results.items() for p in m.problems]
    settings = {
        "duration_s": opts.duration,
        "warmup_s": opts.warmup,
        "repeat": opts.repeat,
        "connections": opts.connections,
        "threads": opts.threads,
        "request": f"/ops {COMMAND_TEXT} as {ACTOR}",
        "paired": opts.paired,
    }
    servers = {name: m.to_json() for name, m in results.items() if any(r.run for r in m.rounds)}
    paired = paired_ratios(results) if opts.paired else None
    return report.assemble(settings, machine.describe(wrk_path), servers, problems, slack_calls, paired)


def main(argv: list[str] | None = None) -> int:
    """Run, print the table, write the JSON; exit 1 if any number is unusable, 2 if --strict and missed."""
    opts = _parse_args(argv)
    try:
        data = run(opts)
    except BenchError as err:
        print(f"!!! bench failed: {err}", file=sys.stderr)
        return 1
    path = report.write_json(opts.results, data)
    print()
    print(report.table(data))
    print(f"\nresults: {path}")
    if data["problems"]:
        return 1
    if opts.strict and data["target"]["met"] is False:
        return 2
    return 0
