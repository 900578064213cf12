"""`python -m bench.dora`: `/ops dora` over a year of events against one full scan of the events table.

The issue's words: *`dora` over a year of events (1 million rows: deploys, alerts, commits) answers in no
more time than one full scan of the events table takes in the same run, thanks to indexes and windowed
queries.* The house rule applies: the baseline (the full scan) is measured in the same run, on the same
database, through the same reader connections, interleaved with the measured work; the result is ratios,
printed and written to `bench/results/dora-<time>.json`.

1. **build** a database through opsloop's own `Store` (its migrations, WAL, its writer thread) holding a
   year of history for 20 services, written in time order as opsloop writes it, with the event kinds and
   the detail shapes of the code that writes them (`handlers/deploy.py` `_event_in`, `bot/alerts.py`
   `_event` and `change`, `bot/builds.py` `record_event`), plus the `releases` rows (changelogs with
   commit dates: lead time) and `alert_groups` rows (critical alerts in the bake: failures) that
   `bot/dora.py` reads. About 1 million events, all inside one transaction of the store's writer
   (`executemany` per simulated day). `--db PATH` keeps the database and reuses it on the next run.
2. **measure**, in rounds (interleaved; the first round is a warm-up and not counted):
   * `scan`: `SELECT count(*), sum(length(detail)) FROM events`. `length()` of a TEXT value counts its
     characters, so SQLite has to read every row's record, `detail` included: a real full table scan. (A
     bare `count(*)` would not be one: SQLite counts the entries of the smallest index instead.)
   * `dora api 30d`, `dora api 90d`, `dora 365d` (all services): the handler's own work, no Slack:
     `handlers.insights._dora` (the window's metrics and the weekly trend, `compute` and `weekly` of
     `bot/dora.py`, on a reader connection of the store), then `dora_blocks` (levels, rework, the text)
     and `trend_chart` with a chart port that only takes the series (the PNG is drawn by the charts
     adapter, outside the database, and is not measured).
3. **report** the medians, `dora/scan` per case (the target: at most 1.0 for every case) and the
   answers themselves (deploys, lead time, failure rate, recovery, rework), so a faster wrong answer
   would show.

Options: `--rows` (1,000,000), `--services` (20), `--rounds` (5 measured), `--db PATH` (build there once,
reuse afterwards), `--profile` (cProfile of the three cases, in this thread), `--explain` (SQLite's query
plans of the queries `bot/dora.py` runs), `--strict` (exit 2 when the target is not met).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import json
import math
import pstats
import random
import re
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from bench import machine, report

ROOT = Path(__file__).resolve().parent.parent
DAY = 86400.0
DAYS = 365
END = datetime(2026, 11, 2, tzinfo=UTC).timestamp()  # "now" for the whole run: a Monday, 00:00 UTC
START = END - DAYS * DAY
PROD, STAGING = "prod", "staging"  # insights.production's default is prod
BAKE_S = 15 * 60.0
NAMES = (
    "api",
    "web",
    "auth",
    "billing",
    "search",
    "cart",
    "checkout",
    "catalog",
    "inventory",
    "payments",
    "notifications",
    "shipping",
    "orders",
    "users",
    "reports",
    "gateway",
    "media",
    "pricing",
    "reviews",
    "recommendations",
)
ALERTS = (  # (alertname, severity, share of the cycles)
    ("HighErrorRate", "critical", 0.03),
    ("SLOBurnRateFast", "critical", 0.02),
    ("HighLatencyP99", "warning", 0.15),
    ("PodRestarting", "warning", 0.20),
    ("CPUThrottlingHigh", "warning", 0.15),
    ("MemoryPressure", "warning", 0.10),
    ("QueueBacklog", "warning", 0.10),
    ("TargetDown", "warning", 0.05),
    ("DiskWillFillIn4h", "info", 0.10),
    ("CertificateExpiring", "info", 0.10),
)
USERS = tuple(f"U0{n:03d}" for n in range(40))
CASES = (("api", 30), ("api", 90), (None, 365))  # (service, days): `dora api 30d`, `dora api 90d`, `dora 365d`
SCAN_SQL = "SELECT count(*), sum(length(detail)) FROM events"
# Per service-day, what is not an alert (weekday and weekend rates below): used to size the alert load.
_OTHER_PER_DAY = (5 * (2 * 14 + 3.2 * 1.1 + 5) + 2 * (2 * 3 + 0.6 * 1.1 + 1)) / 7
_PER_CYCLE = 2.0 + 0.15 + 0.03 * 1.5 + 0.02 + 0.005  # fired + resolved + ack, silence (+unsilence), snooze, ticket


def service_names(n: int) -> list[str]:
    return list(NAMES[:n]) if n <= len(NAMES) else [f"svc-{i:02d}" for i in range(n)]


# --- the history -----------------------------------------------------------------------------------------


@dataclass
class _Group:
    id: int
    key: str
    title: str
    severity: str
    service: str
    env: str | None
    labels: str
    first_seen: float
    last_change: float = 0.0
    resolved_at: float | None = None
    fire_count: int = 0
    acked_by: str | None = None
    acked_at: float | None = None


@dataclass
class _Svc:
    name: str
    version: int = 0
    prod_version: str | None = None
    staging_version: str | None = None
    pending: list[tuple[str, float]] = field(default_factory=list)  # (sha, commit time) not yet in prod
    groups: dict[tuple[str, str | None], _Group] = field(default_factory=dict)  # stable groups by (alert, env)


class History:
    """A year of opsloop history, generated day by day in time order (seeded: the same every run)."""

    def __init__(self, rows: int, services: int, seed: int = 6) -> None:
        self.rng = random.Random(seed)
        self.svcs = [_Svc(n) for n in service_names(services)]
        per_day = rows / (services * DAYS)
        self.cycles_per_day = max(1.0, (per_day - _OTHER_PER_DAY) / _PER_CYCLE)
        self.next_release = 1
        self.next_group = 1
        self.next_build = 1
        self.next_silence = 1
        self.groups: list[_Group] = []
        self.counts: dict[str, int] = {}
        self._pending_events: list[tuple[Any, ...]] = []

    # helpers

    def _times(self, rate: float, lo_h: float, hi_h: float, day0: float) -> list[float]:
        """A Poisson process of `rate` per day, squeezed into the hours [lo_h, hi_h) of the day."""
        out, t = [], 0.0
        while True:
            t += self.rng.expovariate(rate)
            if t >= 1.0:
                return out
            out.append(day0 + (lo_h + t * (hi_h - lo_h)) * 3600.0)

    def _event(
        self, at: float, kind: str, service: str, env: str | None, ref: str | None, actor: str | None, detail: str
    ) -> None:
        self._pending_events.append((at, kind, service, env, ref, actor, detail))
        self.counts[kind] = self.counts.get(kind, 0) + 1

    def _sha(self) -> str:
        return f"{self.rng.getrandbits(160):040x}"

    def _new_group(self, svc: _Svc, alert: str, severity: str, env: str | None, at: float, pod: str | None) -> _Group:
        labels = {"alertname": alert, "service": svc.name, **({"env": env} if env else {})}
        if pod:
            labels["pod"] = f"{pod}-{self.next_group:x}"  # unique, so a group key never repeats
        extra = [v for k, v in sorted(labels.items()) if k != "alertname"]
        key = "alertmanager:{}:" + json.dumps(labels, sort_keys=True, separators=(",", ":"))
        g = _Group(
            self.next_group,
            key,
            f"{alert} ({', '.join(extra)})"[:140],
            severity,
            svc.name,
            env,
            json.dumps(labels),
            at,
        )
        self.next_group += 1
        self.groups.append(g)
        return g

    def _cycle(self, svc: _Svc, g: _Group, at: float) -> None:
        """One firing of a group and its resolution, and what people did about it (bot/alerts.py)."""
        rng = self.rng
        head = {"group": g.id, "title": g.title, "severity": g.severity}
        self._event(at, "alert.fired", svc.name, g.env, str(g.id), None, json.dumps(head))
        lasted = rng.expovariate(1 / 1200.0) + 60.0
        if rng.random() < 0.15:  # acknowledged by the on-call engineer
            t = at + rng.uniform(60, min(lasted, 900) + 60)
            who = rng.choice(USERS)
            g.acked_by, g.acked_at = who, t
            self._event(
                t,
                "alert.acked",
                svc.name,
                g.env,
                str(g.id),
                who,
                json.dumps({"group": g.id, "acked_by": who, "acked_at": t}),
            )
        r = rng.random()
        if r < 0.03:  # silenced for a while, half of them lifted by hand
            t, who = at + rng.uniform(60, 600), rng.choice(USERS)
            sid = f"{self.next_silence:08x}-bench"
            self.next_silence += 1
            until = t + rng.choice((1, 2, 4, 8)) * 3600.0
            detail = {"group": g.id, "silence_id": sid, "silenced_by": who, "silence_until": until}
            self._event(t, "alert.silenced", svc.name, g.env, str(g.id), who, json.dumps(detail))
            if rng.random() < 0.5:
                self._event(
                    t + rng.uniform(600, 3600),
                    "alert.unsilenced",
                    svc.name,
                    g.env,
                    str(g.id),
                    who,
                    json.dumps({"group": g.id}),
                )
        elif r < 0.05:
            t, who = at + rng.uniform(60, 600), rng.choice(USERS)
            detail = {"group": g.id, "snoozed_until": t + 3600.0}
            self._event(t, "alert.snoozed", svc.name, g.env, str(g.id), who, json.dumps(detail))
        elif r < 0.055:
            t, who = at + rng.uniform(60, 1800), rng.choice(USERS)
            detail = {"group": g.id, "ticket": f"OPS-{g.id}"}
            self._event(t, "alert.ticketed", svc.name, g.env, str(g.id), who, json.dumps(detail))
        end = at + lasted
        self._event(end, "alert.resolved", svc.name, g.env, str(g.id), None, json.dumps(head))
        g.fire_count += 1
        g.last_change, g.resolved_at = end, end

    def _alerts(self, svc: _Svc, day0: float) -> None:
        rng = self.rng
        weights = [w for _, _, w in ALERTS]
        for at in self._times(self.cycles_per_day, 0, 24, day0):
            alert, severity, _ = rng.choices(ALERTS, weights)[0]
            env = PROD if rng.random() < 0.6 else (STAGING if rng.random() < 0.95 else None)
            if rng.random() < 0.3:  # a new group: labels with a pod (new pods with every rollout)
                g = self._new_group(svc, alert, severity, env, at, f"{svc.name}-{rng.getrandbits(24):06x}")
            else:
                g = svc.groups.get((alert, env)) or svc.groups.setdefault(
                    (alert, env), self._new_group(svc, alert, severity, env, at, None)
                )
            self._cycle(svc, g, at)

    def _builds(self, svc: _Svc, day0: float, weekend: bool) -> None:
        rng = self.rng
        for at in self._times(3 if weekend else 14, 7, 21, day0):
            sha, who = self._sha(), rng.choice(USERS)
            committed = at - rng.expovariate(1 / 1800.0)
            svc.pending.append((sha, committed))
            bid, number = self.next_build, self.next_build
            self.next_build += 1
            self._event(
                at,
                "build.started",
                svc.name,
                None,
                sha,
                who,
                json.dumps({"build": bid, "number": number, "state": "running", "duration_s": None}),
            )
            took = rng.uniform(180, 900)
            state = "success" if rng.random() < 0.9 else "failure"
            self._event(
                at + took,
                "build.finished",
                svc.name,
                None,
                sha,
                who,
                json.dumps({"build": bid, "number": number, "state": state, "duration_s": round(took, 1)}),
            )

    def _release(
        self,
        svc: _Svc,
        env: str,
        action: str,
        at: float,
        version: str | None,
        from_version: str | None,
        state: str,
        changelog: list[tuple[str, float]],
        who: str,
        bake_until: float | None,
        finished_at: float,
        rollback_of: int | None = None,
    ) -> tuple[Any, ...]:
        rid = self.next_release
        self.next_release += 1
        log = json.dumps(
            [
                {
                    "sha": sha,
                    "author": f"dev{int(sha[:2], 16) % 30}",
                    "date": datetime.fromtimestamp(t, tz=UTC).isoformat(),
                    "subject": f"Change {sha[:7]}",
                    "tickets": [f"SHOP-{int(sha[2:6], 16) % 5000}"],
                }
                for sha, t in changelog[-100:]
            ]
        )
        digest = f"sha256:{self._sha()}{self._sha()[:24]}"
        created = at - self.rng.uniform(300, 3600)
        return (
            rid,
            action,
            svc.name,
            env,
            version,
            f"registry.example.com/shop/{svc.name}:{version}",
            digest,
            from_version,
            who,
            state,
            "#deploys",
            "[]",
            log,
            created,
            at - 180.0,
            finished_at,
            bake_until,
            finished_at,
            rollback_of,
        )

    def _deploy_detail(self, rel: tuple[Any, ...], ok: bool, **extra: Any) -> str:
        return json.dumps({"release": rel[0], "ok": ok, "action": rel[1], "from": rel[7], "digest": rel[6], **extra})

    def _deploys(self, svc: _Svc, day0: float, weekend: bool, releases: list[tuple[Any, ...]]) -> None:
        """Staging and production deploys (handlers/deploy.py), rollbacks, failed rollouts, restarts."""
        rng = self.rng
        for at in self._times(1 if weekend else 5, 8, 19, day0):
            svc.version += 1
            version, who = f"1.{svc.version}.0", rng.choice(USERS)
            rel = self._release(
                svc, STAGING, "deploy", at, version, svc.staging_version, "succeeded", [], who, None, at
            )
            svc.staging_version = version
            releases.append(rel)
            self._event(
                at,
                "deploy.finished",
                svc.name,
                STAGING,
                version,
                who,
                self._deploy_detail(rel, True, revision=svc.version),
            )
        for at in self._times(0.6 if weekend else 3.2, 8, 19, day0):
            version, who = svc.staging_version or f"1.{svc.version}.0", rng.choice(USERS)
            changelog = [c for c in svc.pending if c[1] < at - 300]
            r = rng.random()
            if r < 0.03:  # the rollout failed: deploy.finished ok=false, state failed
                rel = self._release(
                    svc, PROD, "deploy", at, version, svc.prod_version, "failed", changelog, who, None, at
                )
                releases.append(rel)
                detail = self._deploy_detail(rel, False, reason="deployment exceeded its progress deadline")
                self._event(at, "deploy.finished", svc.name, PROD, version, who, detail)
                continue
            svc.pending = [c for c in svc.pending if c[1] >= at - 300]
            if r < 0.07:  # rolled back in its bake (auto or by hand): a rollback release restores the old one
                back = at + rng.uniform(300, BAKE_S)
                rel = self._release(
                    svc, PROD, "deploy", at, version, svc.prod_version, "rolled_back", changelog, who, at + BAKE_S, back
                )
                releases.append(rel)
                self._event(
                    at, "deploy.finished", svc.name, PROD, version, who, self._deploy_detail(rel, True, revision=1)
                )
                rb = self._release(
                    svc,
                    PROD,
                    "rollback",
                    back + 120,
                    svc.prod_version,
                    version,
                    "succeeded",
                    [],
                    who,
                    None,
                    back + 120,
                    rollback_of=rel[0],
                )
                releases.append(rb)
                reason = f"rolled back by release {rb[0]}"
                self._event(
                    back,
                    "deploy.rolled_back",
                    svc.name,
                    PROD,
                    version,
                    who,
                    self._deploy_detail(rel, False, reason=reason),
                )
                self._event(
                    back + 120,
                    "deploy.finished",
                    svc.name,
                    PROD,
                    svc.prod_version,
                    who,
                    self._deploy_detail(rb, True, revision=2),
                )
                continue
            rel = self._release(
                svc,
                PROD,
                "deploy",
                at,
                version,
                svc.prod_version,
                "succeeded",
                changelog,
                who,
                at + BAKE_S,
                at + BAKE_S,
            )
            releases.append(rel)
            self._event(at, "deploy.finished", svc.name, PROD, version, who, self._deploy_detail(rel, True, revision=1))
            svc.prod_version = version
            if r < 0.12:  # a critical alert of a new pod during the bake: a failed change, not rolled back
                first = at + rng.uniform(30, BAKE_S)
                g = self._new_group(
                    svc, "HighErrorRate", "critical", PROD, first, f"{svc.name}-{rng.getrandbits(24):06x}"
                )
                self._cycle(svc, g, first)
        if rng.random() < 0.1:  # now and then a restart (a rollout, but not a deployment)
            at = day0 + rng.uniform(9, 18) * 3600
            who = rng.choice(USERS)
            rel = self._release(svc, PROD, "restart", at, None, svc.prod_version, "succeeded", [], who, None, at)
            releases.append(rel)
            self._event(at, "deploy.finished", svc.name, PROD, None, who, self._deploy_detail(rel, True))

    def days(self) -> Iterator[tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]]:
        """Per simulated day: the events that happened before its end (in time order) and its releases."""
        for d in range(DAYS):
            day0 = START + d * DAY
            weekend = datetime.fromtimestamp(day0, tz=UTC).weekday() >= 5
            releases: list[tuple[Any, ...]] = []
            for svc in self.svcs:
                self._builds(svc, day0, weekend)
                self._deploys(svc, day0, weekend, releases)
                self._alerts(svc, day0)
            self._pending_events.sort(key=lambda e: e[0])
            cut = day0 + DAY if d < DAYS - 1 else math.inf
            n = next((i for i, e in enumerate(self._pending_events) if e[0] >= cut), len(self._pending_events))
            done, self._pending_events = self._pending_events[:n], self._pending_events[n:]
            yield done, releases


def fill(db: Any, rows: int, services: int, progress: Callable[[str], None]) -> dict[str, Any]:
    """Write the history (on the store's writer thread, inside its one transaction)."""
    h = History(rows, services)
    conn = db.conn
    n_events = n_releases = 0
    t0 = time.perf_counter()
    for i, (events, releases) in enumerate(h.days()):
        conn.executemany(
            "INSERT INTO events (at, kind, service, env, ref, actor, detail) VALUES (?, ?, ?, ?, ?, ?, ?)", events
        )
        conn.executemany(
            "INSERT INTO releases (id, action, service, env, version, image, digest, from_version, requester, state,"
            " channel, checks, changelog, created_at, started_at, finished_at, bake_until, updated_at, rollback_of)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            releases,
        )
        n_events += len(events)
        n_releases += len(releases)
        if i % 73 == 72:
            progress(f"  day {i + 1}/{DAYS}: {n_events:,} events, {time.perf_counter() - t0:.0f} s")
    conn.executemany(
        "INSERT INTO alert_groups (id, key, source, title, channel, status, severity, service, env, labels, shown,"
        " first_seen, last_change, resolved_at, fire_count, acked_by, acked_at)"
        " VALUES (?, ?, 'alertmanager', ?, ?, 'resolved', ?, ?, ?, ?, 1, ?, ?, ?, ?, ?, ?)",
        (
            (
                g.id,
                g.key,
                g.title,
                f"#alerts-{g.service}",
                g.severity,
                g.service,
                g.env,
                g.labels,
                g.first_seen,
                g.last_change,
                g.resolved_at,
                g.fire_count,
                g.acked_by,
                g.acked_at,
            )
            for g in h.groups
        ),
    )
    return {
        "events": n_events,
        "releases": n_releases,
        "alert_groups": len(h.groups),
        "services": [s.name for s in h.svcs],
        "by_kind": dict(sorted(h.counts.items(), key=lambda kv: -kv[1])),
    }


# --- measuring ---------------------------------------------------------------------------------------------


class _Charts:
    """A chart port that takes the series and draws nothing (drawing the PNG is not the database's work)."""

    def __init__(self) -> None:
        self.points = 0

    async def line_chart(self, title: str, series: list[Any]) -> bytes:
        self.points += sum(len(s.points) for s in series)
        return b""


def _services(store: Any) -> Any:
    """What `handlers.insights._dora` and `trend_chart` use of `Services`: clock, config, store, charts."""
    return SimpleNamespace(
        clock=SimpleNamespace(now=lambda: END),
        config=SimpleNamespace(insights=SimpleNamespace(production=PROD)),
        store=store,
        charts=_Charts(),
    )


def _title(service: str | None, days: int) -> str:
    return f"DORA {service or 'all services'}, last {days} days ({PROD})"


async def dora_answer(services: Any, service: str | None, days: int) -> tuple[Any, list[Any]]:
    """`/ops dora [SERVICE] [WINDOW]` as handlers/insights.py's `dora` does it, minus Slack and the PNG."""
    from handlers.insights import _dora, dora_blocks, trend_chart

    d, trend = await _dora(services, service, days)
    title = _title(service, days)
    await trend_chart(services, trend, title)
    dora_blocks(d, title)
    return d, trend


def summary(d: Any, trend: list[Any]) -> dict[str, Any]:
    """The answer in numbers (computed after the clock stopped)."""
    from bot.dora import human, pct

    return {
        "deploys": len(d.deployments),
        "failed": sum(1 for x in d.deployments if x.failed),
        "lead_time": human(d.lead_time_s),
        "change_failure_rate": pct(d.change_failure_rate),
        "recovery": human(d.recovery_s),
        "unrecovered": d.unrecovered,
        "rework_rate": pct(d.rework_rate),
        "levels": d.level(),
        "weekly_deploys": [len(w.deployments) for _, w in trend],
        "weekly_failed": [sum(1 for x in w.deployments if x.failed) for _, w in trend],
    }


async def scan(store: Any) -> tuple[int, int]:
    def q(db: Any) -> tuple[int, int]:
        n, size = db.execute(SCAN_SQL).fetchone()
        return int(n), int(size or 0)

    return await store.read(q)


async def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = await fn()
    return time.perf_counter() - t, out


def case_name(service: str | None, days: int) -> str:
    return f"dora {service + ' ' if service else ''}{days}d"


async def measure(path: Path, rounds: int, log: Callable[[str], None]) -> dict[str, Any]:
    from bot.store import Store

    store = Store(path)
    await store.open()
    services = _services(store)
    names = ["scan", *(case_name(s, d) for s, d in CASES)]
    times: dict[str, list[float]] = {n: [] for n in names}
    first: dict[str, float] = {}
    answers: dict[str, Any] = {}
    scanned: tuple[int, int] = (0, 0)
    try:
        for rnd in range(rounds + 1):  # round 0 warms the caches and is not counted
            cpu = machine.busy_seconds()
            t_round = time.perf_counter()
            dt, scanned = await timed(lambda: scan(store))
            if rnd:
                times["scan"].append(dt)
            else:
                first["scan"] = dt
            parts = [f"scan {dt * 1000:7.1f} ms"]
            for service, days in CASES:
                name = case_name(service, days)
                dt, (d, trend) = await timed(lambda s=service, d=days: dora_answer(services, s, d))
                answers[name] = summary(d, trend)
                if rnd:
                    times[name].append(dt)
                else:
                    first[name] = dt
                parts.append(f"{name} {dt * 1000:7.1f} ms")
            wall = time.perf_counter() - t_round
            other = max(0.0, (machine.busy_seconds() - cpu) - wall)  # busy core-seconds beyond our one thread
            log(
                f"  {'warm-up' if rnd == 0 else f'round {rnd}'}: "
                + "  ".join(parts)
                + f"  (other load {other / wall:.2f} cores)"
            )
    finally:
        await store.close()
    med = {n: statistics.median(v) for n, v in times.items()}
    return {
        "scan_sql": SCAN_SQL,
        "scanned_rows": scanned[0],
        "scanned_chars": scanned[1],
        "seconds": times,
        "median_s": med,
        "min_s": {n: min(v) for n, v in times.items()},
        "first_s": first,
        "ratios": {n: med[n] / med["scan"] for n in names if n != "scan"},
        "answers": answers,
    }


def explain(path: Path) -> list[str]:
    """SQLite's plan for each query `bot/dora.py` runs, captured from a real `compute` through a trace."""
    from sqlite_utils import Database

    from bot.dora import compute_with_weeks

    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    seen: list[str] = []
    conn.set_trace_callback(lambda sql: seen.append(sql) if sql.lstrip().upper().startswith("SELECT") else None)
    db = Database(conn, execute_plugins=False)
    for service, days in CASES:
        compute_with_weeks(db, production=PROD, start=END - days * DAY, end=END, service=service)
    conn.set_trace_callback(None)
    out: list[str] = []
    shown: set[str] = set()
    for sql in seen:
        shape = re.sub(r"IN \([^)]*\)", "IN (...)", re.sub(r"\d+(\.\d+)?", "N", sql))
        if shape in shown:
            continue
        shown.add(shape)
        try:
            plan = conn.execute(f"EXPLAIN QUERY PLAN {sql}").fetchall()
        except sqlite3.Error as err:
            plan = [(0, 0, 0, f"({err})")]
        short = re.sub(r"IN \([^)]*\)", "IN (...)", sql)
        out.append(short + "\n" + "\n".join(f"    {r[3]}" for r in plan))
    conn.close()
    return out


def profile(path: Path, top: int = 25) -> str:
    """cProfile of the three cases run in this thread (the reader thread hides them from cProfile)."""
    from sqlite_utils import Database

    from bot.dora import compute_with_weeks
    from handlers.insights import dora_blocks

    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    db = Database(conn, execute_plugins=False)
    prof = cProfile.Profile()
    prof.enable()
    for service, days in CASES:
        start = END - days * DAY
        d, _ = compute_with_weeks(db, production=PROD, start=start, end=END, service=service)
        dora_blocks(d, _title(service, days))
    prof.disable()
    conn.close()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(top)
    return out.getvalue()


# --- the run --------------------------------------------------------------------------------------------------


async def build(path: Path, rows: int, services: int, log: Callable[[str], None]) -> dict[str, Any]:
    from bot.store import Store

    store = Store(path)
    await store.open()
    try:
        t = time.perf_counter()
        facts = await store.write(lambda db: fill(db, rows, services, log))
        facts["build_s"] = time.perf_counter() - t
    finally:
        await store.close()  # the last connection to close checkpoints the WAL into the database file
    return facts


def table(data: dict[str, Any]) -> str:
    m = data["measured"]
    med, lo, ratios = m["median_s"], m["min_s"], m["ratios"]
    lines = [
        f"{'what':<16}{'median ms':>11}{'min ms':>9}{'dora/scan':>11}   answer",
        "-" * 100,
        f"{'scan':<16}{med['scan'] * 1000:>11.1f}{lo['scan'] * 1000:>9.1f}{'':>11}   "
        f"{m['scanned_rows']:,} rows, {m['scanned_chars'] / 1e6:.0f} M characters of detail",
    ]
    for name, ans in m["answers"].items():
        lines.append(
            f"{name:<16}{med[name] * 1000:>11.1f}{lo[name] * 1000:>9.1f}{ratios[name]:>11.2f}   "
            f"{ans['deploys']} deploys ({ans['failed']} failed), lead {ans['lead_time']}, "
            f"CFR {ans['change_failure_rate']}, recovery {ans['recovery']}, rework {ans['rework_rate']}"
        )
    worst = max(ratios.values())
    verdict = "MET" if worst <= 1.0 else "NOT MET"
    lines.append(
        f"target: every dora case in no more time than one full scan (dora/scan ≤ 1.00): {verdict} (worst {worst:.2f})"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.dora", description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000, help="events to generate, about (default 1,000,000)")
    p.add_argument("--services", type=int, default=20)
    p.add_argument("--rounds", type=int, default=5, help="measured rounds after one warm-up (default 5)")
    p.add_argument("--db", type=Path, help="build the database here once and reuse it on later runs")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory and its database")
    p.add_argument("--profile", action="store_true", help="cProfile of the dora cases (printed)")
    p.add_argument("--explain", action="store_true", help="print SQLite's plans of bot/dora.py's queries")
    p.add_argument("--strict", action="store_true", help="exit 2 when the target is not met")
    p.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args(argv)

    def log(msg: str) -> None:
        print(msg, flush=True)

    scratch = None
    if args.db is not None:
        path = args.db.resolve()
    else:
        scratch = Path(tempfile.mkdtemp(prefix="opsloop-bench-dora-"))
        path = scratch / "opsloop.db"
    t0 = time.perf_counter()
    try:
        if path.exists():
            log(f"reusing {path} ({path.stat().st_size / 2**20:.0f} MiB); migrations apply on open")
            built: dict[str, Any] = {"reused": str(path)}
        else:
            log(f"building {path}: ~{args.rows:,} events, {args.services} services, {DAYS} days ...")
            try:
                built = asyncio.run(build(path, args.rows, args.services, log))
            except BaseException:
                for leftover in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                    leftover.unlink(missing_ok=True)  # never "reuse" a half-built database
                raise
            log(
                f"built in {built['build_s']:.1f} s: {built['events']:,} events, {built['releases']:,} releases, "
                f"{built['alert_groups']:,} alert groups; {path.stat().st_size / 2**20:.0f} MiB"
            )
            log("  events by kind: " + ", ".join(f"{k} {n:,}" for k, n in built["by_kind"].items()))
        log(f"measuring: {SCAN_SQL!r} vs /ops dora, {args.rounds} rounds after a warm-up")
        measured = asyncio.run(measure(path, args.rounds, log))
        plans = explain(path) if args.explain else []
        prof = profile(path) if args.profile else ""
        data = {
            "bench": "dora",
            "settings": {"rows": args.rows, "services": args.services, "rounds": args.rounds, "days": DAYS, "end": END},
            "machine": {k: v for k, v in machine.describe("true").items() if k != "wrk"},
            "database": {"path": str(path), "bytes": path.stat().st_size, **built},
            "measured": measured,
            "target_met": max(measured["ratios"].values()) <= 1.0,
            "plans": plans,
            "elapsed_s": time.perf_counter() - t0,
        }
        out = report.write_json(args.results, data, prefix="dora")
        print()
        print(table(data))
        if plans:
            print("\nquery plans (bot/dora.py):\n" + "\n".join(plans))
        if prof:
            print("\n" + prof)
        print(f"\n{out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}  ({data['elapsed_s']:.0f} s in all)")
        return 2 if args.strict and not data["target_met"] else 0
    finally:
        if scratch is not None:
            if args.keep:
                log(f"kept {scratch}")
            else:
                shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
