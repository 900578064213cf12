"""DORA metrics from opsloop's own events: deployment frequency, change lead time, change failure rate,
failed deployment recovery time, and the deployment rework rate.

Definitions follow DORA (dora.dev, "the four keys", 2024) and Google's Four Keys where they agree.
Where opsloop has to choose, it says so (`CHOICES`, shown with every answer and in the README):

* a deployment is a successful `deploy` (not a rollback, scale or restart) to the production
  environment (`insights.production`), counted at the time its rollout finished;
* lead time of a deployment = from each commit it brought (the release's changelog, commit dates
  from git) to that finish time; the median over all those commits (Four Keys: per change);
* a deployment failed when it was rolled back (by hand or automatically), or a critical alert of its
  service and environment started within its bake window (or one hour, when it had no bake);
* recovery time of a failed deployment = from its finish to the next successful deploy or rollback
  of the same service in production;
* rework rate = deployments made within 24 hours after a failed one of the same service
  (fix-forwards), as a share of all deployments;
* a window sees what happened to its deployments (rollbacks, alerts, recoveries) until 30 days after
  its end; each week of the trend until 30 days after its own end, as if asked on its own.

Performance levels are the 2024 Accelerate State of DevOps clusters, matched per level (the 2024 change
failure values are not monotonic), as reproduced by the report's secondary sources.
"""

from __future__ import annotations

import json
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import chain, pairwise
from operator import attrgetter
from typing import Any, NamedTuple

from sqlite_utils import Database

CHOICES = (
    "deployments: successful deploys to production",
    "lead time: commit -> production, median over commits",
    "failure: rolled back, or a critical alert during the bake (1 h without bake)",
    "recovery: failure -> next good deploy or rollback",
    "rework: deploys within 24 h after a failed one",
)
REPORT_YEAR = 2024
DAY = 86400.0
FAILURE_WINDOW = 3600.0
REWORK_WINDOW = DAY

# 2024 clusters: (level, deploys per day at least, lead time at most s, change failure rate at most,
# recovery at most s). Checked in order; the first level whose every bound holds is the answer.
LEVELS_2024 = (
    ("elite", 1.0, DAY, 0.05, 3600.0),
    ("high", 1 / 7, 7 * DAY, 0.20, DAY),
    ("medium", 1 / 30, 30 * DAY, 0.10, DAY),
    ("low", 0.0, float("inf"), 1.0, float("inf")),
)


class Deployment(NamedTuple):
    """A successful deploy to production, as one window sees it (a tuple: a year holds tens of thousands)."""

    release: int
    service: str
    at: float
    failed: bool
    failure_reason: str | None
    lead_times: tuple[float, ...]
    recovered_at: float | None


@dataclass(frozen=True)
class Metrics:
    """The values of a window, each computed once."""

    frequency_per_day: float
    lead_time_s: float | None
    change_failure_rate: float | None
    recovery_s: float | None
    unrecovered: int
    rework_rate: float | None
    levels: dict[str, str]


@dataclass
class Dora:
    """The metrics of one window."""

    start: float
    end: float
    service: str | None
    deployments: list[Deployment] = field(default_factory=list)

    @property
    def days(self) -> float:
        return max(1e-9, (self.end - self.start) / DAY)

    @property
    def frequency_per_day(self) -> float:
        return len(self.deployments) / self.days

    @property
    def lead_time_s(self) -> float | None:
        times = sorted(chain.from_iterable(d.lead_times for d in self.deployments))
        return _median_of_sorted(times[bisect_right(times, 0.0) :])  # of the positive ones

    @property
    def change_failure_rate(self) -> float | None:
        if not self.deployments:
            return None
        return sum(1 for d in self.deployments if d.failed) / len(self.deployments)

    @property
    def recovery_s(self) -> float | None:
        times = [d.recovered_at - d.at for d in self.deployments if d.failed and d.recovered_at is not None]
        return _median_of_sorted(sorted(times))

    @property
    def unrecovered(self) -> int:
        return sum(1 for d in self.deployments if d.failed and d.recovered_at is None)

    @property
    def rework_rate(self) -> float | None:
        if not self.deployments:
            return None
        deps = self.deployments
        if any(a.at > b.at for a, b in pairwise(deps)):
            deps = sorted(deps, key=attrgetter("at"))
        # In time order, each service's failures of the last day (the exact test decides).
        recent: dict[str, deque[Deployment]] = {}
        rework = 0
        for d in deps:
            fs = recent.get(d.service)
            if fs:
                while fs and d.at - fs[0].at > REWORK_WINDOW:
                    fs.popleft()
                for f in fs:
                    if d.at - f.at > 0 and f.release != d.release:
                        rework += 1
                        break
            if d.failed:
                recent.setdefault(d.service, deque()).append(d)
        return rework / len(deps)

    def level(self) -> dict[str, str]:
        """The 2024 cluster of each metric ("no data" when there is no data for it)."""
        return _levels(
            self.frequency_per_day if self.deployments else None,
            self.lead_time_s,
            self.change_failure_rate,
            self.recovery_s,
        )

    def metrics(self) -> Metrics:
        """Every value and level at once (each property computes afresh when asked)."""
        frequency, lead, cfr, recovery = (
            self.frequency_per_day,
            self.lead_time_s,
            self.change_failure_rate,
            self.recovery_s,
        )
        levels = _levels(frequency if self.deployments else None, lead, cfr, recovery)
        return Metrics(frequency, lead, cfr, recovery, self.unrecovered, self.rework_rate, levels)


def _median_of_sorted(xs: list[float]) -> float | None:
    """statistics.median of a sorted list (without sorting it again), None for none."""
    if not xs:
        return None
    i = len(xs) // 2
    return xs[i] if len(xs) % 2 else (xs[i - 1] + xs[i]) / 2


def _levels(
    frequency: float | None, lead_time: float | None, failure_rate: float | None, recovery: float | None
) -> dict[str, str]:
    out: dict[str, str] = {}
    # (metric, value, index of its bound in a level, whether more is better)
    checks: list[tuple[str, float | None, int, bool]] = [
        ("frequency", frequency, 1, True),
        ("lead_time", lead_time, 2, False),
        ("change_failure_rate", failure_rate, 3, False),
        ("recovery", recovery, 4, False),
    ]
    for name, value, idx, more_is_better in checks:
        if value is None:
            out[name] = "no data"
            continue
        out[name] = next(
            str(lv[0])
            for lv in LEVELS_2024
            if ((value >= float(lv[idx])) if more_is_better else (value <= float(lv[idx])))
        )
    return out


def compute(db: Database, *, production: str, start: float, end: float, service: str | None = None) -> Dora:
    """The metrics of deployments that finished in [start, end). Windowed, indexed queries only."""
    return _History.read(db, production, start, end, service).judged(start, end, weeks=False)[0]


def weekly(
    db: Database, *, production: str, start: float, end: float, service: str | None = None
) -> list[tuple[float, Dora]]:
    """The same metrics per week (for the trend chart)."""
    return _History.read(db, production, start, end, service).judged(start, end)[1]


def compute_with_weeks(
    db: Database, *, production: str, start: float, end: float, service: str | None = None
) -> tuple[Dora, list[tuple[float, Dora]]]:
    """`compute` and `weekly` of one window from a single read of the database (what `/ops dora` shows)."""
    return _History.read(db, production, start, end, service).judged(start, end)


# A window [s, e) looks for what happened to its deployments (rollbacks, recoveries, alerts in the bake)
# until e + HORIZON. One read covers a window and every week in it; each week applies its own bounds, so
# its answer is the one it would get read on its own.
HORIZON = 30 * DAY

# Production rollouts from dora_rollouts through its covering index (what each deploy.finished event says,
# kept by triggers: no JSON is read), each with its release's outcome from the covering index
# releases_outcome (the rows hold the changelog before bake_until) and its commit times from
# release_commits (kept by triggers too; migrations m008 and m009).
_ROLLOUTS = (
    "SELECT r.at, r.service, r.release, r.ok, r.action, o.state, o.bake_until, c.times FROM dora_rollouts AS r"
    " LEFT JOIN releases AS o INDEXED BY releases_outcome ON o.id = r.release AND typeof(r.release) = 'integer'"
    " LEFT JOIN release_commits AS c ON c.release = o.id"
    " WHERE r.env = ? AND r.at >= ? AND r.at < ?{svc} ORDER BY r.at"
)
_ROLLED_BACK = (
    "SELECT at, json_extract(detail, '$.release') FROM events"
    " WHERE kind = 'deploy.rolled_back' AND env = ? AND at >= ? AND at < ?{svc} ORDER BY at"
)
_CRITICAL = (  # the covering index alert_groups_critical
    "SELECT service, first_seen FROM alert_groups WHERE severity = 'critical' AND (env = ? OR env IS NULL)"
    " AND first_seen >= ? AND first_seen < ?{svc} ORDER BY first_seen"
)


class _Deploy:
    """A successful production deploy that a window may judge failed, and what it is judged by: the
    rollbacks of its release, the first critical alert of its service from its finish until the end of its
    bake (or one hour), and the successful rollouts of its service (the first one after it recovers it).
    (A deploy with none of these is a Deployment at once, the same in every window.)"""

    __slots__ = ("alert", "at", "good", "leads", "release", "rollbacks", "rolled_back", "service")

    def __init__(
        self,
        at: float,
        service: str,
        release: Any,
        rolled_back: bool,
        leads: tuple[float, ...],
        rollbacks: Sequence[float],
        alert: float | None,
        good: list[float],
    ) -> None:
        self.at, self.service, self.release, self.leads = at, service, release, leads
        self.rolled_back, self.rollbacks, self.alert, self.good = rolled_back, rollbacks, alert, good

    def next_good(self) -> float | None:
        i = bisect_right(self.good, self.at)
        return self.good[i] if i < len(self.good) else None

    def judge(self, s: float, e: float) -> tuple[str | None, float | None]:
        """Why it failed, and when it recovered, as the window [s, e) sees it (which reads until e + HORIZON)."""
        horizon = e + HORIZON
        if self.rolled_back or any(s <= t < horizon for t in self.rollbacks):
            reason: str | None = "rolled back"
        elif self.alert is not None and self.alert < e + HORIZON + FAILURE_WINDOW:
            reason = "critical alert during the bake"
        else:
            return None, None
        good = self.next_good()
        return reason, (good if good is not None and good < horizon else None)

    def seen_alike(self, e: float) -> bool:
        """Whether every window ending at or after `e` judges it the same (nothing it depends on happens
        between e + HORIZON and a later end + HORIZON), without judging it."""
        good = self.next_good()
        return (
            not self.rollbacks
            and (good is None or good < e + HORIZON)
            and (self.alert is None or self.alert < e + HORIZON + FAILURE_WINDOW)
        )

    def deployment(self, s: float, e: float) -> Deployment:
        reason, recovered = self.judge(s, e)
        return Deployment(
            int(self.release or 0), self.service, self.at, reason is not None, reason, self.leads, recovered
        )


_JSON = json.JSONDecoder()


def _leads(at: float, stamps: list[Any]) -> tuple[float, ...]:
    """Lead times from the commit times of a release_commits row (exact microseconds, or dates)."""
    try:
        # us / 1_000_000 is what datetime.timestamp() computes from the same microseconds.
        return tuple([at - us / 1_000_000 for us in stamps])
    except TypeError:  # a date SQLite did not convert
        pass
    out = []
    for t in stamps:
        try:
            out.append(at - (t / 1_000_000 if type(t) is int else datetime.fromisoformat(t).timestamp()))
        except (TypeError, ValueError):
            continue
    return tuple(out)


@dataclass
class _History:
    """The successful deploys of a window, judged by what happened until its end + HORIZON (read once)."""

    service: str | None
    deploys: list[Deployment | _Deploy]  # in time order; a _Deploy is judged by each window

    @classmethod
    def read(cls, db: Database, production: str, start: float, end: float, service: str | None) -> _History:
        svc, svc_params = (" AND service = ?", (service,)) if service else ("", ())
        horizon = end + HORIZON
        rollbacks: dict[Any, list[float]] = {}  # release -> when it was rolled back
        for at, release in db.execute(_ROLLED_BACK.format(svc=svc), (production, start, horizon, *svc_params)):
            rollbacks.setdefault(int(release if release is not None else 0), []).append(at)
        alerts: dict[str, list[float]] = {}  # service -> first_seen of its critical alert groups
        for name, first_seen in db.execute(
            _CRITICAL.format(svc=svc), (production, start, horizon + FAILURE_WINDOW, *svc_params)
        ):
            alerts.setdefault(name, []).append(first_seen)
        deploys: list[Deployment | _Deploy] = []
        good: dict[str, list[float]] = {}  # service -> finish times of successful rollouts (any action)
        decode, no_alerts, plain = _JSON.raw_decode, (), Deployment._make
        for at, name, release, ok, action, state, bake_until, times in db.execute(
            _ROLLOUTS.format(svc=svc.replace("service", "r.service")), (production, start, horizon, *svc_params)
        ):
            if not ok:
                continue
            rollouts = good.get(name)
            if rollouts is None:
                rollouts = good[name] = []
            rollouts.append(at)
            if action == "deploy" and at < end:
                seen = alerts.get(name, no_alerts)
                i = bisect_left(seen, at)
                alert = seen[i] if i < len(seen) and seen[i] <= float(bake_until or (at + FAILURE_WINDOW)) else None
                leads = _leads(at, decode(times)[0]) if times else ()
                if alert is None and state != "rolled_back" and release not in rollbacks:  # most: no window fails it
                    deploys.append(plain((int(release or 0), name, at, False, None, leads, None)))
                else:
                    rolled_back, back = state == "rolled_back", rollbacks.get(release, ())
                    deploys.append(_Deploy(at, name, release, rolled_back, leads, back, alert, rollouts))
        return cls(service, deploys)

    def judged(self, start: float, end: float, weeks: bool = True) -> tuple[Dora, list[tuple[float, Dora]]]:
        """The window [start, end) and its weeks (from `start`, a week at a time), in one pass: a week shares
        the window's Deployment wherever it judges it the same."""
        whole = Dora(start, end, self.service)
        trend: list[tuple[float, Dora]] = []
        t = start
        while weeks and t < end:  # the boundaries adding a week at a time always gave
            trend.append((t, Dora(t, min(end, t + 7 * DAY), self.service)))
            t += 7 * DAY
        firsts = [t for t, _ in trend]
        for d in self.deploys:
            if not start <= d.at < end:
                continue
            x = d if isinstance(d, Deployment) else d.deployment(start, end)
            whole.deployments.append(x)
            i = bisect_right(firsts, d.at) - 1
            if i < 0:
                continue
            week = trend[i][1]
            if isinstance(d, _Deploy) and not (
                d.seen_alike(week.end) or d.judge(week.start, week.end) == (x.failure_reason, x.recovered_at)
            ):
                x = d.deployment(week.start, week.end)
            week.deployments.append(x)
        return whole, trend


def human(seconds: float | None) -> str:
    """`3.2 h`, `2.5 d`, `45 min` (or `—`)."""
    if seconds is None:
        return "—"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * DAY:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / DAY:.1f} d"


def pct(x: float | None) -> str:
    return "—" if x is None else f"{x:.0%}"
