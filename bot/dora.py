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
  (fix-forwards), as a share of all deployments.

Performance levels are the 2024 Accelerate State of DevOps clusters, matched per level (the 2024 change
failure values are not monotonic), as reproduced by the report's secondary sources.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlite_utils import Database

from bot.store import rows

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


@dataclass(frozen=True)
class Deployment:
    release: int
    service: str
    at: float
    failed: bool
    failure_reason: str | None
    lead_times: tuple[float, ...]
    recovered_at: float | None


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
        times = [t for d in self.deployments for t in d.lead_times if t > 0]
        return statistics.median(times) if times else None

    @property
    def change_failure_rate(self) -> float | None:
        if not self.deployments:
            return None
        return sum(1 for d in self.deployments if d.failed) / len(self.deployments)

    @property
    def recovery_s(self) -> float | None:
        times = [d.recovered_at - d.at for d in self.deployments if d.failed and d.recovered_at is not None]
        return statistics.median(times) if times else None

    @property
    def unrecovered(self) -> int:
        return sum(1 for d in self.deployments if d.failed and d.recovered_at is None)

    @property
    def rework_rate(self) -> float | None:
        if not self.deployments:
            return None
        failures = [d for d in self.deployments if d.failed]
        rework = sum(
            1
            for d in self.deployments
            if any(
                f.service == d.service and 0 < d.at - f.at <= REWORK_WINDOW and f.release != d.release for f in failures
            )
        )
        return rework / len(self.deployments)

    def level(self) -> dict[str, str]:
        """The 2024 cluster of each metric (None when there is no data for it)."""
        out: dict[str, str] = {}
        # (metric, value, index of its bound in a level, whether more is better)
        checks: list[tuple[str, float | None, int, bool]] = [
            ("frequency", self.frequency_per_day if self.deployments else None, 1, True),
            ("lead_time", self.lead_time_s, 2, False),
            ("change_failure_rate", self.change_failure_rate, 3, False),
            ("recovery", self.recovery_s, 4, False),
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
    svc_clause, svc_params = (" AND service = ?", (service,)) if service else ("", ())
    # Finished rollouts to production (deploys and rollbacks) from the events table, plus a little after
    # the window for recoveries and late failures.
    finished = rows(
        db,
        "SELECT at, service, ref, detail FROM events WHERE kind = 'deploy.finished' AND env = ? AND at >= ? AND at < ?"
        f"{svc_clause} ORDER BY at",
        (production, start, end + 30 * DAY, *svc_params),
    )
    releases: dict[int, dict[str, Any]] = {}
    ids = [json.loads(r["detail"]).get("release") for r in finished]
    ids = [i for i in ids if isinstance(i, int)]
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        marks = ",".join("?" for _ in chunk)
        for r in rows(
            db, f"SELECT id, action, state, changelog, bake_until FROM releases WHERE id IN ({marks})", chunk
        ):
            releases[int(r["id"])] = r
    rolled_back = {
        int(json.loads(r["detail"]).get("release", 0))
        for r in rows(
            db,
            "SELECT detail FROM events WHERE kind = 'deploy.rolled_back' AND env = ? AND at >= ? AND at < ?"
            f"{svc_clause}",
            (production, start, end + 30 * DAY, *svc_params),
        )
    }
    alerts = rows(
        db,
        "SELECT service, first_seen FROM alert_groups WHERE severity = 'critical' AND (env = ? OR env IS NULL)"
        f" AND first_seen >= ? AND first_seen < ?{svc_clause} ORDER BY first_seen",
        (production, start, end + 30 * DAY + FAILURE_WINDOW, *svc_params),
    )
    good: list[tuple[float, str]] = []  # (at, service) of successful rollouts (deploys and rollbacks)
    deploys: list[dict[str, Any]] = []
    for r in finished:
        d = json.loads(r["detail"])
        if not d.get("ok"):
            continue
        good.append((float(r["at"]), r["service"]))
        if d.get("action", "deploy") == "deploy" and start <= r["at"] < end:
            deploys.append({"at": float(r["at"]), "service": r["service"], "release": d.get("release"), **d})
    out = Dora(start, end, service)
    for dep in deploys:
        rel = releases.get(int(dep["release"] or 0), {})
        at = dep["at"]
        reason = None
        if dep["release"] in rolled_back or rel.get("state") == "rolled_back":
            reason = "rolled back"
        else:
            until = float(rel.get("bake_until") or (at + FAILURE_WINDOW))
            hit = next((a for a in alerts if a["service"] == dep["service"] and at <= a["first_seen"] <= until), None)
            if hit is not None:
                reason = "critical alert during the bake"
        commits = json.loads(rel["changelog"]) if rel.get("changelog") else []
        leads = []
        for c in commits:
            try:
                leads.append(at - datetime.fromisoformat(c["date"]).timestamp())
            except (KeyError, ValueError):
                continue
        recovered = None
        if reason is not None:
            recovered = next((t for t, s in good if s == dep["service"] and t > at), None)
        out.deployments.append(
            Deployment(
                int(dep["release"] or 0), dep["service"], at, reason is not None, reason, tuple(leads), recovered
            )
        )
    return out


def weekly(
    db: Database, *, production: str, start: float, end: float, service: str | None = None
) -> list[tuple[float, Dora]]:
    """The same metrics per week (for the trend chart)."""
    out = []
    t = start
    while t < end:
        out.append((t, compute(db, production=production, start=t, end=min(end, t + 7 * DAY), service=service)))
        t += 7 * DAY
    return out


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
