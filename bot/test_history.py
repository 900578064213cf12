"""Stored test results: a build's report, comparison with the previous build, flaky tests.

Where a build's results come from, first found wins: the CI's own test report (Jenkins' JUnit
plugin); else the JUnit XML files the build archived (`build.junit_artifacts`, Ant-style globs of
artifact paths, comma-separated, as Jenkins' `junit` step takes them); else JUnit files on disk
(`build.junit`). What could not be read (a file that is not JUnit XML or too big, an artifact that
is gone, a CI that did not answer) becomes a sentence kept with the build (an event
`tests.incomplete`), and the files that could be read still count.

A test is flaky when it both passed and failed on the same commit, or when its result flips often
across recent builds (flips / (runs - 1) at or above FLIP_RATE over at least MIN_RUNS runs)."""

from __future__ import annotations

import functools
import itertools
import json
import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bot.builds import BuildRow, ci_for, load
from bot.ports import (
    AdapterError,
    AdapterNotFound,
    BuildArtifacts,
    CIServer,
    TestCaseResult,
    TestReport,
    TestStatus,
)
from bot.store import one, rows

if TYPE_CHECKING:
    from bot.context import Services

FLIP_RATE = 0.3
MIN_RUNS = 4
HISTORY = 30

# Archived JUnit files: what one build may cost us to read.
ARTIFACT_MAX_BYTES = 20 * 1024 * 1024  # one file (Surefire writes one per test class)
ARTIFACT_MAX_TOTAL = 100 * 1024 * 1024  # all files of one build
ARTIFACT_MAX_FILES = 500
MAX_NOTES = 20  # problems kept per build; the rest are counted
_IN_LIMIT = 500  # test ids in one `IN (...)` (SQLite allows 999 variables before 3.32)
INCOMPLETE = "tests.incomplete"  # the event that keeps why a build's results are missing or partial
_CI_NAMES = {"jenkins": "Jenkins", "travis": "Travis CI"}


@dataclass(frozen=True)
class Collected:
    """What `collect_tests` found: the report (None without one), where it came from, and why results
    are missing or partial (each a sentence for the card)."""

    report: TestReport | None
    source: str = ""  # "Jenkins' test report", "3 archived JUnit files", "`reports/*.xml`"
    notes: tuple[str, ...] = ()


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else text + "."


async def collect_tests(services: Services, row: BuildRow) -> Collected:
    """Fetch the build's test results (see the module docstring for where from) and keep them.

    Tool failures do not raise: they become notes, and whatever could be read is still kept."""
    if row.number is None:
        return Collected(None)
    ci = ci_for(services, row.ci)
    svc = services.config.services.get(row.service or "")
    build = svc.build if svc is not None else None
    ci_name = _CI_NAMES.get(ci.name, ci.name)
    notes: list[str] = []
    report: TestReport | None = None
    source = ""
    try:
        report = await ci.test_report(row.job, row.number)
        source = f"{ci_name}'s test report"
    except AdapterError as e:
        notes.append(_sentence(f"The test report of {row.name} could not be read: {e}"))
    if (report is None or not report.cases) and build is not None and build.junit_artifacts:
        # No report, or an empty one (the JUnit plugin found no files): the archived files may have them.
        archived, where = await _from_artifacts(services, ci, row, build.junit_artifacts, notes)
        if archived is not None:
            report, source = archived, where
    if report is None and build is not None and build.junit and services.test_reader:
        try:
            report, source = await services.test_reader.read(build.junit), f"`{build.junit}`"
        except AdapterNotFound as e:
            notes.append(_sentence(str(e)))
        except AdapterError as e:
            notes.append(_sentence(f"{e}; no results were taken from `{build.junit}`"))
    if len(notes) > MAX_NOTES:
        notes[MAX_NOTES - 1 :] = [f"…and {len(notes) - MAX_NOTES + 1} more problems like these."]
    kept = tuple(services.redactor.text(n) for n in notes)
    if report is not None and report.cases:
        await store_report(services, row, report)
    await _keep_notes(services, row, kept)
    return Collected(report, source if report is not None else "", kept)


@functools.lru_cache(maxsize=256)
def _ant_regex(pattern: str) -> re.Pattern[str]:
    """An Ant-style pattern (`**` any directories, `*` and `?` within one name) as a regex."""
    pattern = pattern.strip().replace("\\", "/").removeprefix("./")
    if pattern.endswith("/"):
        pattern += "**"  # Ant: a trailing slash means everything below
    parts = [p for p in pattern.split("/") if p]
    out = ""
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            out += ".*" if last else "(?:[^/]+/)*"
            continue
        out += "".join("[^/]*" if ch == "*" else "[^/]" if ch == "?" else re.escape(ch) for ch in part)
        out += "" if last else "/"
    return re.compile(out)


def artifact_patterns(text: str) -> tuple[str, ...]:
    """`a/*.xml, b/**/*.xml` -> its patterns."""
    return tuple(p.strip() for p in text.split(",") if p.strip())


def ant_match(pattern: str, path: str) -> bool:
    """Whether an artifact's relative path matches one Ant-style pattern."""
    return _ant_regex(pattern).fullmatch(path) is not None


async def _from_artifacts(
    services: Services, ci: CIServer, row: BuildRow, text: str, notes: list[str]
) -> tuple[TestReport | None, str]:
    """The JUnit files the build archived, read one by one; what fails is noted and skipped."""
    assert row.number is not None
    ci_name = _CI_NAMES.get(ci.name, ci.name)
    if not isinstance(ci, BuildArtifacts):
        notes.append(f"{ci_name} serves no build artifacts, so `junit_artifacts` cannot be read.")
        return None, ""
    reader = services.test_reader
    if reader is None:
        notes.append("No JUnit reader is set up, so the archived test files were not read.")
        return None, ""
    patterns = artifact_patterns(text)
    try:
        listed = await ci.artifacts(row.job, row.number)
    except AdapterError as e:
        notes.append(_sentence(f"The archived files of {row.name} could not be listed: {e}"))
        return None, ""
    matched = sorted((a for a in listed if any(ant_match(p, a.path) for p in patterns)), key=lambda a: a.path)
    if not matched:
        others = f"only {len(listed)} other file{'s' if len(listed) != 1 else ''}" if listed else "no files at all"
        notes.append(f"{row.name} archived no file matching `{text}` ({others}).")
        return None, ""
    if len(matched) > ARTIFACT_MAX_FILES:
        notes.append(f"{len(matched)} archived files match `{text}`; only the first {ARTIFACT_MAX_FILES} were read.")
        matched = matched[:ARTIFACT_MAX_FILES]
    cases: list[TestCaseResult] = []
    read = total = 0
    for i, artifact in enumerate(matched):
        if total >= ARTIFACT_MAX_TOTAL:
            notes.append(f"Stopped after {total:,} bytes of test files; {len(matched) - i} more were not read.")
            break
        try:
            data = await ci.artifact(row.job, row.number, artifact.path, max_bytes=ARTIFACT_MAX_BYTES)
            part = await reader.parse(data, f"`{artifact.path}`")
        except AdapterError as e:
            notes.append(_sentence(f"{e}; its tests are not counted"))
            continue
        total += len(data)
        cases.extend(part.cases)
        read += 1
    if not read:
        return None, ""
    return TestReport(tuple(cases)), f"{read} archived JUnit file{'s' if read != 1 else ''}"


def _notes_sql(db: Any, build_id: int) -> dict[str, Any] | None:
    return one(
        db,
        "SELECT detail FROM events WHERE kind = ? AND json_extract(detail, '$.build') = ? ORDER BY id DESC LIMIT 1",
        (INCOMPLETE, build_id),
    )


async def _keep_notes(services: Services, row: BuildRow, notes: tuple[str, ...]) -> None:
    """Keep why the results are partial; an empty list only overrides earlier notes (a later, clean read)."""
    detail = json.dumps({"build": row.id, "number": row.number, "notes": list(notes)})
    at = services.clock.now()

    def tx(db: Any) -> None:
        if not notes and _notes_sql(db, row.id) is None:
            return  # the usual case: nothing to say, and nothing said before
        db.execute(
            "INSERT INTO events (at, kind, service, ref, actor, detail) VALUES (?, ?, ?, ?, NULL, ?)",
            (at, INCOMPLETE, row.service, row.commit, detail),
        )

    await services.store.write(tx)


async def notes_of(services: Services, build_id: int) -> tuple[str, ...]:
    """Why the build's stored results are missing or partial, as said when they were collected."""
    found = await services.store.read(lambda db: _notes_sql(db, build_id))
    if found is None:
        return ()
    return tuple(str(n) for n in json.loads(found["detail"]).get("notes") or ())


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
class TestSummary:
    """A build's results for its card: counts, what fails, and what changed since the previous build."""

    passed: int
    failed: int
    skipped: int
    failing: tuple[str, ...]  # new failures first, then the others; each group sorted
    new_failures: tuple[str, ...]  # empty when there is nothing to compare with
    fixed: tuple[str, ...]
    still_failing: tuple[str, ...]
    flaky: tuple[str, ...]  # failing here, and flaky in the stored history
    previous: str | None  # the label of the build compared with ("#6"), None without one
    source: str = ""
    notes: tuple[str, ...] = ()

    @property
    def total(self) -> int:
        return self.passed + self.failed + self.skipped

    @property
    def counts(self) -> str:
        return f"{self.passed} passed, {self.failed} failed, {self.skipped} skipped"


async def summarize(services: Services, row: BuildRow, collected: Collected | None = None) -> TestSummary | None:
    """The build's results compared with its previous build's; None when it has none and nothing to say.

    Counts come from the stored results (what `test report` shows later too); `collected` adds where
    they came from and the notes of a collection just made."""
    current = await results_of(services, row.id)
    if collected is not None:
        notes, source = collected.notes, collected.source
        current = current or collected.report
    else:
        notes, source = await notes_of(services, row.id), ""
    if current is None and not notes:
        return None
    current = current or TestReport(())
    prev_id = await previous_build_with_results(services, row)
    previous = await results_of(services, prev_id) if prev_id else None
    prev_label = None
    if prev_id is not None:
        prev = await load(services, prev_id)
        prev_label = prev.label or f"build {prev.id}"
    diff = compare(current, previous)
    new = diff.new_failures if previous is not None else ()
    failing = {c.id for c in current.failed}
    flaky = {f.test_id for f in await flaky_tests(services, row.service or row.job, among=failing)}
    return TestSummary(
        passed=current.count(TestStatus.PASSED),
        failed=current.count(TestStatus.FAILED),
        skipped=current.count(TestStatus.SKIPPED),
        failing=tuple(new) + tuple(sorted(failing - set(new))),
        new_failures=new,
        fixed=diff.fixed,
        still_failing=diff.still_failing,
        flaky=tuple(sorted(flaky)),
        previous=prev_label,
        source=source,
        notes=notes,
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


async def flaky_tests(
    services: Services, service: str | None = None, among: Collection[str] | None = None
) -> list[Flaky]:
    """Tests that look flaky from the stored history (newest HISTORY runs of each test); only those in
    `among` when given (a card asks about its failing tests, not the whole suite)."""
    if among is not None and not among:
        return []
    wanted = sorted(among) if among is not None and len(among) <= _IN_LIMIT else None

    def q(db: Any) -> list[dict[str, Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        if service:
            clauses.append("service = ?")
            params.append(service)
        if wanted is not None:
            clauses.append(f"test_id IN ({', '.join('?' * len(wanted))})")
            params.extend(wanted)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
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
        if among is not None and test_id not in among:
            continue
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
