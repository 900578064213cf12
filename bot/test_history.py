"""Stored test results: a build's report, comparison with the previous build, flaky tests.

A test is flaky when it both passed and failed on the same commit, or when its result flips often
across recent builds (flips / (runs - 1) at or above FLIP_RATE over at least MIN_RUNS runs)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bot.builds import BuildRow, ci_for
from bot.ports import AdapterNotFound, TestCaseResult, TestReport, TestStatus
from bot.store import rows

if TYPE_CHECKING:
    from bot.context import Services

FLIP_RATE = 0.3
MIN_RUNS = 4
HISTORY = 30


async def collect_tests(services: Services, row: BuildRow) -> TestReport | None:
    """Fetch the build's test results (the CI's report, else the configured JUnit files) and keep them."""
    if row.number is None:
        return None
    report = await ci_for(services, row.ci).test_report(row.job, row.number)
    svc = services.config.services.get(row.service or "")
    if report is None and svc is not None and svc.build is not None and svc.build.junit and services.test_reader:
        try:
            report = await services.test_reader.read(svc.build.junit)
        except AdapterNotFound:
            report = None
    if report is None:
        return None
    await store_report(services, row, report)
    return report


async def store_report(services: Services, row: BuildRow, report: TestReport) -> None:
    """Keep a build's results (history for comparisons and flaky detection)."""
    at = services.clock.now()
    data = [
        (
            row.service or row.job,
            row.id,
            row.commit,
            case.id,
            case.suite,
            case.status.value,
            case.duration_s,
            services.redactor.text(case.message or "")[:2000] or None,
            services.redactor.text(case.details or "")[:4000] or None,
            at,
        )
        for case in report.cases
    ]
    await services.store.write(
        lambda db: db.conn.executemany(
            "INSERT OR REPLACE INTO test_results (service, build_id, commit_sha, test_id, suite, status, duration_s,"
            " message, details, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            data,
        )
    )


async def results_of(services: Services, build_id: int) -> TestReport | None:
    """The stored report of a build, or None if none was stored."""
    found = await services.store.read(
        lambda db: rows(db, "SELECT * FROM test_results WHERE build_id = ? ORDER BY id", (build_id,))
    )
    if not found:
        return None
    return TestReport(
        tuple(
            TestCaseResult(
                suite=r["suite"] or "",
                classname=r["test_id"].rsplit(".", 1)[0] if "." in r["test_id"] else "",
                name=r["test_id"].rsplit(".", 1)[-1],
                status=TestStatus(r["status"]),
                duration_s=r["duration_s"] or 0.0,
                message=r["message"],
                details=r["details"],
            )
            for r in found
        )
    )


async def previous_build_with_results(services: Services, row: BuildRow) -> int | None:
    """The id of the service's latest earlier build that has stored results."""
    found = await services.store.read(
        lambda db: rows(
            db,
            "SELECT b.id FROM builds b WHERE b.service IS ? AND b.job = ? AND b.id < ?"
            " AND EXISTS (SELECT 1 FROM test_results t WHERE t.build_id = b.id) ORDER BY b.id DESC LIMIT 1",
            (row.service, row.job, row.id),
        )
    )
    return int(found[0]["id"]) if found else None


@dataclass(frozen=True)
class Comparison:
    new_failures: tuple[str, ...]
    fixed: tuple[str, ...]
    still_failing: tuple[str, ...]


def compare(current: TestReport, previous: TestReport | None) -> Comparison:
    """What changed between two reports of the same job."""
    now_failed = {c.id for c in current.failed}
    if previous is None:
        return Comparison(tuple(sorted(now_failed)), (), ())
    before_failed = {c.id for c in previous.failed}
    passed_now = {c.id for c in current.cases if c.status is TestStatus.PASSED}
    return Comparison(
        new_failures=tuple(sorted(now_failed - before_failed)),
        fixed=tuple(sorted(before_failed & passed_now)),
        still_failing=tuple(sorted(now_failed & before_failed)),
    )


@dataclass(frozen=True)
class Flaky:
    service: str
    test_id: str
    runs: int
    flips: int
    rate: float
    same_commit: bool  # passed and failed on one commit

    @property
    def why(self) -> str:
        if self.same_commit:
            return "passed and failed on the same commit"
        return f"flipped {self.flips} times in {self.runs} runs"


async def flaky_tests(services: Services, service: str | None = None) -> list[Flaky]:
    """Tests that look flaky from the stored history (newest HISTORY runs of each test)."""

    def q(db: Any) -> list[dict[str, Any]]:
        where, params = ("WHERE service = ?", (service,)) if service else ("", ())
        return rows(
            db,
            f"SELECT service, test_id, commit_sha, status, id FROM test_results {where} ORDER BY service, test_id, id",
            params,
        )

    by_test: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in await services.store.read(q):
        if r["status"] == TestStatus.SKIPPED.value:
            continue
        by_test.setdefault((r["service"], r["test_id"]), []).append(r)
    out: list[Flaky] = []
    for (svc, test_id), runs in by_test.items():
        runs = runs[-HISTORY:]
        statuses = [r["status"] for r in runs]
        flips = sum(1 for a, b in itertools.pairwise(statuses) if a != b)
        per_commit: dict[str, set[str]] = {}
        for r in runs:
            if r["commit_sha"]:
                per_commit.setdefault(r["commit_sha"], set()).add(r["status"])
        same_commit = any(len(s) > 1 for s in per_commit.values())
        rate = flips / (len(runs) - 1) if len(runs) > 1 else 0.0
        if same_commit or (len(runs) >= MIN_RUNS and rate >= FLIP_RATE):
            out.append(Flaky(svc, test_id, len(runs), flips, rate, same_commit))
    out.sort(key=lambda f: (not f.same_commit, -f.rate, f.test_id))
    return out
