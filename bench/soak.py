"""`python -m bench.soak`: minutes of mixed traffic against a real `opsloop run` (issue 7, figure 9).

What runs, each its own process on 127.0.0.1:

* `opsloop`: `.venv/bin/opsloop run --config …` in HTTP mode (production outbox pacing), configured with
  tests/support.py's people and rules, a Jenkins job, a Kubernetes deployment and Alertmanager webhooks;
* `tools` (`python -m bench.soak tools`): the in-repo Slack, Jenkins and Kubernetes emulators, and the
  traffic driver, which sends signed requests from the Slack emulator as people would:
  slash commands of every stage (help, plan, feedback, status, alerts, audit), builds that Jenkins
  runs for a few seconds, deploys to staging that the Kubernetes emulator rolls out, `plan done`
  approvals that someone else clicks "Approve" on, "Acknowledge" clicks on alert cards, and an alert
  storm every `--storm-every` seconds (`--storm-size` alerts firing through /hooks/alertmanager, then
  resolved).

The bench samples, every `--sample` seconds: the opsloop process's RSS (/proc/PID/status VmRSS) and,
from its /metrics, the outbox depth and running jobs. At the end it reports:

* memory growth after warm-up: median RSS of the last tenth of the run against the median of the
  samples just after `--warmup` (bound: under 10 %);
* ack latency of every request the driver sent (as the Slack emulator timed it: signing, HTTP,
  opsloop's whole ack path): p50, p99, max per kind and overall;
* outbox depth over time (and whether it drained at the end);
* errors: every `level=error` line of opsloop's log (with the last line of its traceback), listed;
  non-200 acks and emulator errors (bound: none unexplained).

Results: bench/results/soak-<time>.json and a printed summary. `--duration` (or SOAK_SECONDS) sets the
length, 600 s by default; `make soak` runs it and then `make fuzz`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench import machine, report
from bench.procs import BenchError, Server, clean_env, free_port, request_json, spawn, wait_announced, wait_http
from bench.servers import BOT_TOKEN, SIGNING_SECRET, serve

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
HOOK_TOKEN = "soak-hook-token"
JENKINS_TOKEN_ENV = "SOAK_JENKINS_TOKEN"
IMAGE = "registry.example.com/shop/shop"
GROWTH_BOUND = 0.10
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_METRIC = re.compile(r"^(opsloop_[a-z_]+)(\{[^}]*\})? ([0-9.eE+-]+|NaN)$", re.M)


# --- the tools process: emulators and the traffic driver ---------------------------------------------------


@dataclass
class Traffic:
    """What the driver sent and how each ack went."""

    acks: dict[str, list[float]] = field(default_factory=dict)  # kind -> seconds
    sent: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    storms: int = 0
    hook_statuses: Counter[int] = field(default_factory=Counter)

    def record(self, kind: str, status: int, elapsed: float, body: str) -> None:
        self.sent[kind] += 1
        self.acks.setdefault(kind, []).append(elapsed)
        if status != 200:
            self.failures.append(f"{kind}: HTTP {status} {body[:200]}")


def _buttons(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for b in blocks:
        elements = list(b.get("elements") or [])
        if b.get("accessory"):
            elements.append(b["accessory"])
        out += [e for e in elements if e.get("type") == "button"]
    return out


def alert_payload(storm: int, size: int, status: str) -> dict[str, Any]:
    """One Alertmanager webhook delivery: `size` alerts of one group, all firing or all resolved."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    alerts = [
        {
            "status": status,
            "labels": {
                "alertname": f"SoakStorm{storm}",
                "service": "api",
                "instance": f"api-{i}",
                "severity": "warning",
            },
            "annotations": {"summary": f"storm {storm}: instance {i} is slow"},
            "startsAt": now,
            "endsAt": now if status == "resolved" else "0001-01-01T00:00:00Z",
            "fingerprint": f"{storm:06x}{i:06x}",
        }
        for i in range(size)
    ]
    return {
        "receiver": "opsloop",
        "status": status,
        "alerts": alerts,
        "groupLabels": {"alertname": f"SoakStorm{storm}"},
        "commonLabels": {"alertname": f"SoakStorm{storm}", "service": "api"},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.example:9093",
        "version": "4",
        "groupKey": f'{{}}:{{alertname="SoakStorm{storm}"}}',
        "truncatedAlerts": 0,
    }


async def drive(slack: Any, spec: dict[str, Any], traffic: Traffic) -> None:
    """Mixed traffic until `spec["seconds"]` have passed, about `spec["rate"]` requests a second."""
    import aiohttp

    from tests.support import ALICE, BOB, CAROL, DAVE, EVE

    url, hooks_url = spec["url"], spec["hooks_url"]
    end = time.monotonic() + float(spec["seconds"])
    rng = random.Random(7)
    clicked: set[tuple[str, str, str]] = set()
    n = 0
    next_storm = time.monotonic() + float(spec["storm_every"]) / 3
    next_deploy = time.monotonic() + 5.0
    next_build = time.monotonic() + 2.0
    resolve_at: list[tuple[float, int]] = []

    async def command(kind: str, text: str, user: str, channel: str = "C0OPS") -> None:
        res = await slack.send_command(url, text, user_id=user, channel_id=channel)
        traffic.record(kind, res.status, res.elapsed_seconds, res.body_text)

    async def click_first(label: str, user: str, kind: str) -> None:
        """Press the newest `label` button nobody pressed yet, in any channel."""
        for channel in list(slack._store):
            for m in reversed(slack.top_level(channel)):
                if (channel, m.ts, label) in clicked:
                    continue
                for b in _buttons(m.blocks):
                    if b.get("text", {}).get("text") == label:
                        clicked.add((channel, m.ts, label))
                        res = await slack.send_action(
                            url,
                            user_id=user,
                            action_id=b["action_id"],
                            value=b.get("value", ""),
                            channel_id=channel,
                            message_ts=m.ts,
                        )
                        traffic.record(kind, res.status, res.elapsed_seconds, res.body_text)
                        return

    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {HOOK_TOKEN}"}) as http:

        async def hook(payload: dict[str, Any]) -> None:
            async with http.post(hooks_url, json=payload) as resp:
                await resp.read()
                traffic.hook_statuses[resp.status] += 1
                if resp.status >= 300:
                    traffic.failures.append(f"hook: HTTP {resp.status}")

        while (now := time.monotonic()) < end:
            n += 1
            roll = rng.random()
            if now >= next_storm:
                traffic.storms += 1
                await hook(alert_payload(traffic.storms, int(spec["storm_size"]), "firing"))
                resolve_at.append((now + float(spec["storm_every"]) / 2, traffic.storms))
                next_storm = now + float(spec["storm_every"])
            elif resolve_at and resolve_at[0][0] <= now:
                _, storm = resolve_at.pop(0)
                await hook(alert_payload(storm, int(spec["storm_size"]), "resolved"))
            elif now >= next_deploy:
                await command("deploy", f"deploy shop 1.{n // 1000}.{n % 1000} to staging", DAVE)
                next_deploy = now + 20.0
            elif now >= next_build:
                await command("build", "build api", DAVE)
                next_build = now + 15.0
            elif roll < 0.22:
                await command("help", "help", rng.choice([ALICE, BOB, CAROL, DAVE, EVE]))
            elif roll < 0.32:
                # Every other item is critical: closing it asks for an approval (a card with buttons).
                flag = " critical" if n % 2 else ""
                await command("plan new", f'plan new "Soak item {n}"{flag}', rng.choice([ALICE, DAVE]))
            elif roll < 0.40:
                await command("plan list", "plan list", rng.choice([ALICE, BOB, DAVE]))
            elif roll < 0.46:
                # Asks for an approval: the card goes to #approvals, where bob clicks below.
                await command("plan done", f"plan done OPS-{rng.randint(1, max(1, n // 10))}", DAVE)
            elif roll < 0.54:
                await click_first("Approve", BOB, "click approve")
            elif roll < 0.60:
                await click_first("Acknowledge", CAROL, "click ack")
            elif roll < 0.68:
                await command("feedback", f'feedback "soak note {n}"', rng.choice([EVE, CAROL]))
            elif roll < 0.76:
                await command("status", "status shop staging", rng.choice([ALICE, BOB, DAVE]))
            elif roll < 0.84:
                await command("alerts", "alerts", rng.choice([ALICE, CAROL]))
            elif roll < 0.90:
                await command("audit", "audit 20", ALICE)
            else:
                await command("build status", "build status api", DAVE)
            # Keep the emulator's request log short; opsloop's memory is what is measured, not ours.
            slack.calls.clear()
            await asyncio.sleep(rng.expovariate(float(spec["rate"])))


async def serve_tools(kubeconfig: Path) -> None:
    """Slack, Jenkins and Kubernetes emulators, and a control API: GET /info, POST /start, GET /result."""
    from aiohttp import web

    from tests.emulators.jenkins import BuildScript, JenkinsEmulator
    from tests.emulators.kubernetes import KubernetesEmulator
    from tests.emulators.slack import SlackEmulator
    from tests.support import slack_workspace

    slack = await SlackEmulator(signing_secret=SIGNING_SECRET, bot_token=BOT_TOKEN).start()
    slack_workspace(slack)
    jenkins = await JenkinsEmulator(quiet_period=0.0).start()
    jenkins.add_job("api-build", script=BuildScript(duration=3.0, log=["Checking out\n", "Tests pass\n"]))
    k8s = await KubernetesEmulator(tick_interval=0.05).start()
    k8s.add_deployment("shop-staging", "shop", f"{IMAGE}:1.0.0", replicas=2)
    k8s.kubeconfig(kubeconfig, context="emulator")
    traffic = Traffic()
    driver: list[asyncio.Task[None]] = []

    async def info(_: web.Request) -> web.Response:
        return web.json_response(
            {
                "slack_api_url": slack.api_url,
                "jenkins_url": jenkins.url,
                "jenkins_user": jenkins.user,
                "jenkins_token": jenkins.token,
            }
        )

    async def start(request: web.Request) -> web.Response:
        spec = await request.json()
        driver.append(asyncio.create_task(drive(slack, spec, traffic)))
        return web.json_response({"started": True})

    async def result(_: web.Request) -> web.Response:
        done = bool(driver) and driver[0].done()
        crash = repr(driver[0].exception()) if done and driver[0].exception() else None
        return web.json_response(
            {
                "done": done,
                "driver_crash": crash,
                "acks": traffic.acks,
                "sent": dict(traffic.sent),
                "failures": traffic.failures,
                "storms": traffic.storms,
                "hooks": {str(k): v for k, v in traffic.hook_statuses.items()},
                "emulator_errors": slack.server_errors + jenkins.server_errors,
                "messages": sum(len(slack.messages(c)) for c in list(slack._store)),
            }
        )

    app = web.Application()
    app.router.add_get("/info", info)
    app.router.add_post("/start", start)
    app.router.add_get("/result", result)
    try:
        await serve(app)
    finally:
        for t in driver:
            t.cancel()
        await k8s.stop()
        await jenkins.stop()
        await slack.stop()


# --- the bench ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    duration: float
    warmup: float
    sample: float
    rate: float
    storm_every: float
    storm_size: int
    keep: bool
    strict: bool
    results: Path


def opsloop_config(work: Path, tools: dict[str, Any], kubeconfig: Path) -> tuple[Path, Path]:
    """tests/support.py's people and rules, plus a build, a deploy target and alerts, as opsloop.yml."""
    from tests.support import config_data

    db = work / "opsloop.db"
    data = config_data(db)
    data["channels"]["alerts"] = "#ops"
    data["permissions"].update(
        {"build.*": ["developers"], "deploy.*": ["developers"], "monitor.*": ["developers", "approvers"]}
    )
    data["integrations"] = {
        "jenkins": {
            "url": tools["jenkins_url"],
            "user": tools["jenkins_user"],
            "token_env": JENKINS_TOKEN_ENV,
            "timeout": 10,
            "poll": 1.0,
        },
        "kubernetes": {"kubeconfig": str(kubeconfig), "context": "emulator", "timeout": 10},
    }
    data["services"] = {
        "api": {"build": {"ci": "jenkins", "job": "api-build"}, "alerts": {"match": {"service": "api"}}},
        "shop": {
            "deploy": {
                "target": "kubernetes",
                "namespace": "shop",
                "deployment": "shop",
                "container": "shop",
                "image": IMAGE,
                "timeout": "60s",
                "envs": {"staging": {"namespace": "shop-staging"}},
            }
        },
    }
    data["environments"] = {"staging": {}}
    config = work / "opsloop.yml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    return config, db


def start_opsloop(work: Path, tools: dict[str, Any], kubeconfig: Path) -> Server:
    config, db = opsloop_config(work, tools, kubeconfig)
    port = free_port()
    env = clean_env(
        SLACK_BOT_TOKEN=BOT_TOKEN,
        SLACK_SIGNING_SECRET=SIGNING_SECRET,
        SLACK_API_URL=tools["slack_api_url"],
        OPSLOOP_DB=str(db),
        OPSLOOP_HTTP_HOST="127.0.0.1",
        OPSLOOP_HTTP_PORT=str(port),
        OPSLOOP_WEBHOOK_TOKEN=HOOK_TOKEN,
        **{JENKINS_TOKEN_ENV: tools["jenkins_token"]},
    )
    opsloop = str(Path(sys.executable).parent / "opsloop")
    server = spawn("opsloop", [opsloop, "run", "--config", str(config)], env, work / "opsloop.log", ROOT)
    server.port = port
    return wait_http(server, "/healthz", timeout=60)


def read_metrics(server: Server) -> dict[str, float]:
    """opsloop's /metrics, summed over labels, by metric name (and `name{labels}` for jobs by state)."""
    with _NO_PROXY.open(server.url("/metrics"), timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for name, labels, value in _METRIC.findall(text):
        out[name] = out.get(name, 0.0) + float(value)
        if labels:
            out[name + labels] = float(value)
    return out


def _pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def log_errors(log: Path) -> list[str]:
    """Every `level=error` line of opsloop's log, with the last line of the traceback after it."""
    lines = log.read_text(errors="replace").splitlines()
    out = []
    for i, line in enumerate(lines):
        if "level=error" in line or "level=critical" in line:
            tail = ""
            j = i + 1
            while j < len(lines) and not lines[j].startswith("ts="):
                if lines[j].strip():
                    tail = lines[j].strip()
                j += 1
            out.append(line[:400] + (f" [{tail[:300]}]" if tail else ""))
    return out


def memory_growth(samples: list[dict[str, Any]], warmup: float) -> dict[str, Any]:
    """RSS after warm-up vs at the end: medians of the first samples past `warmup` and of the last tenth."""
    after = [s for s in samples if s["t"] >= warmup]
    if len(after) < 2:
        return {"start_kib": None, "end_kib": None, "growth": None, "met": None}
    k = max(1, len(after) // 10)
    start = statistics.median(s["rss_kib"] for s in after[:k])
    end = statistics.median(s["rss_kib"] for s in after[-k:])
    growth = (end - start) / start
    return {
        "start_kib": start,
        "end_kib": end,
        "peak_kib": max(s["rss_kib"] for s in samples),
        "growth": round(growth, 4),
        "bound": GROWTH_BOUND,
        "met": growth < GROWTH_BOUND,
    }


def _machine() -> dict[str, Any]:
    # bench.machine describes a wrk too; the soak uses none.
    about = machine.describe(shutil.which("true") or "true")
    about.pop("wrk", None)
    return about


def run(opts: Options) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="opsloop-soak-"))
    kubeconfig = tmp / "kubeconfig"
    tools = spawn(
        "tools", [sys.executable, "-m", "bench.soak", "tools", str(kubeconfig)], clean_env(), tmp / "tools.log", ROOT
    )
    opsloop: Server | None = None
    problems: list[str] = []
    samples: list[dict[str, Any]] = []
    load_before = os.getloadavg()
    try:
        wait_announced(tools, timeout=60)
        info = request_json(tools.url("/info"))
        opsloop = start_opsloop(tmp, info, kubeconfig)
        spec = {
            "url": opsloop.url("/slack/events"),
            "hooks_url": opsloop.url("/hooks/alertmanager"),
            "seconds": opts.duration,
            "rate": opts.rate,
            "storm_every": opts.storm_every,
            "storm_size": opts.storm_size,
        }
        request_json(tools.url("/start"), spec)
        started = time.monotonic()
        print(f"soak: {opts.duration:g} s of mixed traffic against opsloop (pid {opsloop.pid})", flush=True)
        while (t := time.monotonic() - started) < opts.duration:
            opsloop.ensure_alive()
            tools.ensure_alive()
            m = read_metrics(opsloop)
            samples.append(
                {
                    "t": round(t, 1),
                    "rss_kib": opsloop.status_kib("VmRSS"),
                    "outbox_depth": m.get("opsloop_outbox_depth", 0.0),
                    "jobs_running": m.get('opsloop_jobs{state="running"}', 0.0),
                    "acks": m.get("opsloop_acks_total", 0.0),
                }
            )
            if len(samples) % max(1, int(60 / opts.sample)) == 0:
                s = samples[-1]
                print(
                    f"  {s['t']:6.0f} s  RSS {s['rss_kib'] / 1024:6.1f} MiB  outbox {s['outbox_depth']:4.0f}"
                    f"  jobs {s['jobs_running']:3.0f}  acks {s['acks']:6.0f}",
                    flush=True,
                )
            time.sleep(max(0.0, opts.sample - (time.monotonic() - started - t)))
        result = request_json(tools.url("/result"))
        deadline = time.monotonic() + 60
        while (depth := read_metrics(opsloop).get("opsloop_outbox_depth", 0.0)) > 0 and time.monotonic() < deadline:
            time.sleep(0.5)
        drained_s = round(60 - (deadline - time.monotonic()), 1)
        end_rss = opsloop.status_kib("VmRSS")
        code = opsloop.stop()
        if code not in (0, -signal.SIGTERM):
            problems.append(f"opsloop exited with {code} on SIGTERM")
    finally:
        if opsloop is not None:
            opsloop.stop()
        tools.stop()
    errors = log_errors(opsloop.log) if opsloop else []
    all_acks = [x for v in result["acks"].values() for x in v]
    acks = {
        kind: {
            "n": len(v),
            "p50_ms": round(_pct(v, 0.5) * 1000, 1),
            "p99_ms": round(_pct(v, 0.99) * 1000, 1),
            "max_ms": round(max(v) * 1000, 1),
        }
        for kind, v in sorted(result["acks"].items())
        if v
    }
    if all_acks:
        acks["all"] = {
            "n": len(all_acks),
            "p50_ms": round(_pct(all_acks, 0.5) * 1000, 1),
            "p99_ms": round(_pct(all_acks, 0.99) * 1000, 1),
            "max_ms": round(max(all_acks) * 1000, 1),
        }
    if result["driver_crash"]:
        problems.append(f"the traffic driver crashed: {result['driver_crash']}")
    problems += result["failures"][:50] + [f"emulator: {e}" for e in result["emulator_errors"][:20]]
    if depth > 0:
        problems.append(f"the outbox still held {depth:.0f} writes 60 s after the traffic stopped")
    data = {
        "benchmark": "soak",
        "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": {
            "duration_s": opts.duration,
            "warmup_s": opts.warmup,
            "sample_s": opts.sample,
            "rate_per_s": opts.rate,
            "storm_every_s": opts.storm_every,
            "storm_size": opts.storm_size,
            "command": "make soak  (= .venv/bin/python -m bench.soak; then make fuzz)",
        },
        "machine": _machine() | {"loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "sent": result["sent"],
        "storms": result["storms"],
        "hooks": result["hooks"],
        "slack_messages": result["messages"],
        "acks": acks,
        "memory": memory_growth(samples, opts.warmup) | {"after_stop_kib": end_rss},
        "outbox": {
            "max_depth": max((s["outbox_depth"] for s in samples), default=0),
            "drained_after_s": drained_s,
            "left": depth,
        },
        "samples": samples,
        "errors": errors,
        "problems": problems,
    }
    if opts.keep:
        data["scratch"] = str(tmp)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return data


def table(data: dict[str, Any]) -> str:
    """The printed summary."""
    st, mem, out = data["settings"], data["memory"], data["outbox"]
    load = data["machine"]
    lines = [
        f"soak: {st['duration_s']:g} s of mixed traffic (~{st['rate_per_s']:g} requests/s, a storm of "
        f"{st['storm_size']} alerts every {st['storm_every_s']:g} s), {load['cores']} cores, {load['cpu']}, "
        f"load average before {load['loadavg_before'][0]:.2f} after {load['loadavg_after'][0]:.2f}",
        "sent: " + ", ".join(f"{k} {v}" for k, v in sorted(data["sent"].items())) + f"; storms {data['storms']}",
        "",
        f"{'ack latency':<16}{'n':>7}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}",
    ]
    for kind, a in data["acks"].items():
        lines.append(f"{kind:<16}{a['n']:>7}{a['p50_ms']:>9.1f}{a['p99_ms']:>9.1f}{a['max_ms']:>9.1f}")
    if mem["growth"] is not None:
        verdict = "met" if mem["met"] else "NOT MET"
        lines += [
            "",
            f"memory (RSS of opsloop): {mem['start_kib'] / 1024:.1f} MiB after {st['warmup_s']:g} s warm-up, "
            f"{mem['end_kib'] / 1024:.1f} MiB at the end, peak {mem['peak_kib'] / 1024:.1f} MiB: growth "
            f"{mem['growth']:+.1%} (bound < {mem['bound']:.0%}: {verdict})",
        ]
    depths = [s["outbox_depth"] for s in data["samples"]]
    step = max(1, len(depths) // 20)
    lines.append(
        f"outbox depth: max {out['max_depth']:.0f}, drained {out['drained_after_s']:g} s after the traffic "
        f"stopped (left {out['left']:.0f}); over time: " + " ".join(f"{d:.0f}" for d in depths[::step])
    )
    lines.append(f"errors in opsloop's log: {len(data['errors'])}")
    lines += [f"  {e}" for e in data["errors"][:30]]
    if data["problems"]:
        lines += ["", f"!!! {len(data['problems'])} PROBLEM(S)"] + [f"!!! {p}" for p in data["problems"][:30]]
    return "\n".join(lines)


def verdict(data: dict[str, Any]) -> bool:
    """Memory under its bound, no error logged, no problem."""
    return bool(data["memory"]["met"] is not False and not data["errors"] and not data["problems"])


def _parse_args(argv: list[str]) -> Options:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=float(os.environ.get("SOAK_SECONDS", 600)))
    p.add_argument("--warmup", type=float, default=None, help="seconds before memory counts (default: 10%%, ≤60 s)")
    p.add_argument("--sample", type=float, default=5.0, help="seconds between RSS and /metrics samples")
    p.add_argument("--rate", type=float, default=6.0, help="requests per second the driver aims at")
    p.add_argument("--storm-every", type=float, default=60.0)
    p.add_argument("--storm-size", type=int, default=100)
    p.add_argument("--keep", action="store_true", help="keep the scratch directory (logs, database)")
    p.add_argument("--strict", action="store_true", help="exit 2 when a bound is missed")
    p.add_argument("--results", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    warmup = a.warmup if a.warmup is not None else min(60.0, a.duration / 10)
    return Options(a.duration, warmup, a.sample, a.rate, a.storm_every, a.storm_size, a.keep, a.strict, a.results)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["tools"]:
        asyncio.run(serve_tools(Path(args[1])))
        return 0
    opts = _parse_args(args)
    try:
        data = run(opts)
    except BenchError as err:
        print(f"soak failed: {err}", file=sys.stderr)
        return 1
    path = report.write_json(opts.results, data, prefix="soak")
    print(table(data))
    print(f"\nresults: {path}")
    return 2 if opts.strict and not verdict(data) else 0


if __name__ == "__main__":
    raise SystemExit(main())
