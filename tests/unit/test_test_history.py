"""Test history: comparison with the previous build and flaky detection from stored results."""

from __future__ import annotations

from pathlib import Path

from bot.builds import load
from bot.ports import TestCaseResult, TestReport, TestStatus
from bot.test_history import compare, flaky_tests, results_of, store_report
from tests.support import console_ops

P, F, S = TestStatus.PASSED, TestStatus.FAILED, TestStatus.SKIPPED


def report(**cases: TestStatus) -> TestReport:
    return TestReport(
        tuple(
            TestCaseResult("suite", "pkg.mod", name, st, message="boom" if st is F else None)
            for name, st in cases.items()
        )
    )


async def add_build(h, commit: str, rep: TestReport, service: str = "api") -> int:
    now = h.services.clock.now()
    bid = await h.services.store.write(
        lambda db: (
            db.execute(
                "INSERT INTO builds (service, ci, job, number, state, channel, commit_sha, created_at, updated_at)"
                " VALUES (?, 'jenkins', 'api-build', (SELECT count(*) + 1 FROM builds), 'success', '#ops', ?, ?, ?)",
                (service, commit, now, now),
            ).lastrowid
        )
    )
    await store_report(h.services, await load(h.services, bid), rep)
    return int(bid)


def test_compare_names_new_failures_and_fixes() -> None:
    before = report(a=P, b=F, c=F, d=P)
    now = report(a=F, b=P, c=F, d=P, e=F)
    diff = compare(now, before)
    assert diff.new_failures == ("pkg.mod.a", "pkg.mod.e")
    assert diff.fixed == ("pkg.mod.b",)
    assert diff.still_failing == ("pkg.mod.c",)
    assert compare(now, None).new_failures == ("pkg.mod.a", "pkg.mod.c", "pkg.mod.e")


async def test_flaky_by_same_commit_and_by_flip_rate(tmp_path: Path) -> None:
    async with console_ops(tmp_path) as h:
        await add_build(h, "c1", report(same=P, steady=P, flipper=P, broken=F, skipped=S))
        await add_build(h, "c1", report(same=F, steady=P, flipper=F, broken=F, skipped=S))
        await add_build(h, "c2", report(same=P, steady=P, flipper=P, broken=F, skipped=S))
        await add_build(h, "c3", report(same=P, steady=P, flipper=F, broken=F, skipped=S))
        await add_build(h, "c4", report(same=P, steady=P, flipper=P, broken=F, skipped=P))
        found = {f.test_id: f for f in await flaky_tests(h.services, "api")}
        assert set(found) == {"pkg.mod.same", "pkg.mod.flipper"}
        assert found["pkg.mod.same"].same_commit
        assert found["pkg.mod.flipper"].flips == 4 and found["pkg.mod.flipper"].rate == 1.0
        assert await flaky_tests(h.services, "web") == []


async def test_stored_results_round_trip(tmp_path: Path) -> None:
    async with console_ops(tmp_path) as h:
        bid = await add_build(h, "c1", report(a=P, b=F))
        got = await results_of(h.services, bid)
        assert got is not None
        assert {(c.id, c.status) for c in got.cases} == {("pkg.mod.a", P), ("pkg.mod.b", F)}
        assert got.failed[0].message == "boom"
