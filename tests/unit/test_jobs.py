"""JobRunner: persisted before start, serialized per key, failures reported, recovery after a crash."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bot.clock import SystemClock
from bot.errors import UserError
from bot.jobs import Job, JobCtx, JobKind, JobRunner, JobState
from bot.metrics import Metrics
from bot.store import Store, rows


class Notices:
    def __init__(self) -> None:
        self.failed: list[tuple[int, str]] = []
        self.interrupted: list[int] = []

    async def job_failed(self, job: Job, message: str) -> None:
        self.failed.append((job.id, message))

    async def job_interrupted(self, job: Job) -> None:
        self.interrupted.append(job.id)


@pytest.fixture
async def store(tmp_path: Path):
    s = Store(tmp_path / "j.db")
    await s.open()
    yield s
    await s.close()


async def states(store: Store) -> dict[int, str]:
    return {r["id"]: r["state"] for r in await store.read(lambda db: rows(db, "SELECT id, state FROM jobs"))}


async def test_jobs_with_the_same_key_run_one_at_a_time(store: Store) -> None:
    runner = JobRunner(store, SystemClock(), Metrics(), Notices())
    active: dict[str, int] = {}
    peak: dict[str, int] = {}
    order: list[str] = []

    async def work(jctx: JobCtx) -> None:
        key = jctx.job.key
        active[key] = active.get(key, 0) + 1
        peak[key] = max(peak.get(key, 0), active[key])
        await asyncio.sleep(0.02)
        order.append(f"{key}:{jctx.job.payload['n']}")
        active[key] -= 1

    runner.register(JobKind("work", work))
    for n in range(4):
        await runner.submit("work", "api@prod", {"n": n})
        await runner.submit("work", "web@prod", {"n": n})
    await runner.wait_idle()
    assert peak == {"api@prod": 1, "web@prod": 1}
    assert [o for o in order if o.startswith("api")] == [f"api@prod:{n}" for n in range(4)]
    assert set((await states(store)).values()) == {"done"}


async def test_the_row_exists_before_the_task_runs_and_failures_are_reported(store: Store) -> None:
    notices = Notices()
    runner = JobRunner(store, SystemClock(), Metrics(), notices)
    seen_state: list[str] = []

    async def check(jctx: JobCtx) -> None:
        seen_state.append((await states(store))[jctx.job.id])
        raise UserError("the registry said no")

    async def crash(jctx: JobCtx) -> None:
        raise KeyError("oops")

    runner.register(JobKind("check", check))
    runner.register(JobKind("crash", crash))
    a = await runner.submit("check", "k1", {})
    b = await runner.submit("crash", "k2", {})
    await runner.wait_idle()
    assert seen_state == ["running"]
    assert (await states(store)) == {a: "failed", b: "failed"}
    assert (a, "the registry said no") in notices.failed
    assert any(jid == b and "unexpectedly" in msg for jid, msg in notices.failed)


async def test_timeouts_stop_a_job(store: Store) -> None:
    notices = Notices()
    runner = JobRunner(store, SystemClock(), Metrics(), notices)

    async def slow(jctx: JobCtx) -> None:
        await asyncio.sleep(10)

    runner.register(JobKind("slow", slow, timeout=0.05))
    jid = await runner.submit("slow", "k", {})
    await runner.wait_idle()
    assert (await states(store))[jid] == "failed"
    assert "longer than" in notices.failed[0][1]


async def test_recovery_resumes_reports_and_restarts(store: Store) -> None:
    # A first runner is "killed": its rows stay running/queued.
    first = JobRunner(store, SystemClock(), Metrics(), Notices())
    gate = asyncio.Event()

    async def hang(jctx: JobCtx) -> None:
        await gate.wait()

    first.register(JobKind("watch", hang, resumable=True))
    first.register(JobKind("oneshot", hang))
    w = await first.submit("watch", "build:1", {"n": 1})
    o = await first.submit("oneshot", "x", {})
    await asyncio.sleep(0.05)
    await first.stop()  # like a crash: rows are left `running`
    q = await store.write(lambda db: first.enqueue_in(db, "oneshot", "y", {}))  # written, never launched
    assert (await states(store)) == {w: "running", o: "running", q: "queued"}

    notices = Notices()
    second = JobRunner(store, SystemClock(), Metrics(), notices)
    resumed: list[tuple[int, bool]] = []

    async def watch(jctx: JobCtx) -> None:
        resumed.append((jctx.job.id, jctx.resumed))

    async def oneshot(jctx: JobCtx) -> None:
        resumed.append((jctx.job.id, jctx.resumed))

    second.register(JobKind("watch", watch, resumable=True))
    second.register(JobKind("oneshot", oneshot))
    await second.recover()
    await second.wait_idle()
    assert sorted(resumed) == sorted([(w, True), (q, False)])
    assert notices.interrupted == [o]
    final = await states(store)
    assert final[w] == "done" and final[q] == "done" and final[o] == JobState.INTERRUPTED.value
