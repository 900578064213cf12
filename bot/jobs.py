"""JobRunner: slow work outside the ack path, persisted, serialized per key, recovered at start-up.

A job row is written before its task starts. The runner owns every task (no fire-and-forget), runs
jobs with the same key one at a time (one deploy of `api@prod`), records how each ended, and at
start-up deals with rows a crash left behind: a queued job is started, a running job of a resumable
kind is resumed (it re-attaches to its build or rollout), any other running job is marked
interrupted and its thread is told so.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

from sqlite_utils import Database

from bot.clock import Clock
from bot.errors import UserError
from bot.metrics import Metrics
from bot.ports import AdapterError, SqlStore
from bot.store import one, rows

log = logging.getLogger(__name__)


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class Job:
    id: int
    kind: str
    key: str
    state: JobState
    requester: str | None
    channel: str | None
    thread_ts: str | None
    payload: Mapping[str, Any]
    attempts: int


class JobNotifier(Protocol):
    """How jobs speak: the app wires this to the outbox."""

    async def job_failed(self, job: Job, message: str) -> None: ...

    async def job_interrupted(self, job: Job) -> None: ...


@dataclass
class JobCtx:
    """Handed to a running job."""

    job: Job
    resumed: bool
    runner: JobRunner


JobFn = Callable[[JobCtx], Awaitable[None]]


@dataclass(frozen=True)
class JobKind:
    """A kind of job: its function, whether it can resume after a restart, and its time limit."""

    name: str
    run: JobFn
    resumable: bool = False
    timeout: float = 3600.0


def _job(r: Mapping[str, Any]) -> Job:
    return Job(
        id=r["id"],
        kind=r["kind"],
        key=r["key"],
        state=JobState(r["state"]),
        requester=r["requester"],
        channel=r["channel"],
        thread_ts=r["thread_ts"],
        payload=json.loads(r["payload"]),
        attempts=r["attempts"],
    )


@dataclass
class _KeyLock:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class JobRunner:
    """See the module docstring."""

    def __init__(self, store: SqlStore, clock: Clock, metrics: Metrics, notifier: JobNotifier) -> None:
        self._store = store
        self._clock = clock
        self._metrics = metrics
        self._notifier = notifier
        self._kinds: dict[str, JobKind] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._locks: dict[str, _KeyLock] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self._accepting = True

    def register(self, kind: JobKind) -> None:
        """Make a kind of job known; names are unique."""
        if kind.name in self._kinds:
            raise ValueError(f"job kind {kind.name} is registered twice")
        self._kinds[kind.name] = kind

    # --- submitting

    def enqueue_in(
        self,
        db: Database,
        kind: str,
        key: str,
        payload: Mapping[str, Any],
        *,
        requester: str | None = None,
        channel: str | None = None,
        thread_ts: str | None = None,
    ) -> int:
        """Write a queued job inside a running write; call `launch(id)` after it commits."""
        if kind not in self._kinds:
            raise ValueError(f"unknown job kind {kind}")
        now = self._clock.now()
        cur = db.execute(
            "INSERT INTO jobs (kind, key, state, requester, channel, thread_ts, payload, created_at, updated_at)"
            " VALUES (?, ?, 'queued', ?, ?, ?, ?, ?, ?)",
            (kind, key, requester, channel, thread_ts, json.dumps(dict(payload), default=str), now, now),
        )
        return int(cur.lastrowid or 0)

    async def submit(
        self,
        kind: str,
        key: str,
        payload: Mapping[str, Any],
        *,
        requester: str | None = None,
        channel: str | None = None,
        thread_ts: str | None = None,
    ) -> int:
        """Persist a job and start it; return its id."""
        job_id = await self._store.write(
            lambda db: self.enqueue_in(
                db, kind, key, payload, requester=requester, channel=channel, thread_ts=thread_ts
            )
        )
        await self.launch(job_id)
        return job_id

    async def launch(self, job_id: int, *, resumed: bool = False) -> None:
        """Start the task of a persisted job (no-op if it is already running here)."""
        if job_id in self._tasks or not self._accepting:
            return
        r = await self._store.read(lambda db: one(db, "SELECT * FROM jobs WHERE id = ?", (job_id,)))
        if r is None:
            raise ValueError(f"no job {job_id}")
        job = _job(r)
        self._idle.clear()
        task = asyncio.create_task(self._run(job, resumed), name=f"job-{job.kind}-{job.id}")
        self._tasks[job.id] = task
        task.add_done_callback(partial(self._finished, job.id))
        self._gauge()

    def _finished(self, job_id: int, _task: object = None) -> None:
        self._tasks.pop(job_id, None)
        self._gauge()
        if not self._tasks:
            self._idle.set()

    def _gauge(self) -> None:
        self._metrics.jobs.labels(state="in_process").set(len(self._tasks))

    async def _set(self, job_id: int, state: JobState, error: str | None = None, *, bump: bool = False) -> None:
        now = self._clock.now()
        await self._store.write(
            lambda db: db.execute(
                "UPDATE jobs SET state = ?, error = ?, updated_at = ?, attempts = attempts + ? WHERE id = ?",
                (str(state), error, now, 1 if bump else 0, job_id),
            )
        )

    async def _run(self, job: Job, resumed: bool) -> None:
        kind = self._kinds.get(job.kind)
        if kind is None:
            await self._set(job.id, JobState.FAILED, f"unknown job kind {job.kind}")
            return
        kl = self._locks.setdefault(job.key, _KeyLock())
        kl.users += 1
        try:
            async with kl.lock:
                await self._set(job.id, JobState.RUNNING, bump=True)
                ctx = JobCtx(job=job, resumed=resumed, runner=self)
                try:
                    async with asyncio.timeout(kind.timeout):
                        await kind.run(ctx)
                except asyncio.CancelledError:
                    if not self._accepting:
                        # Shutting down: leave it `running` so start-up resumes or reports it.
                        raise
                    await self._set(job.id, JobState.CANCELLED, "cancelled")
                    self._metrics.job_runs.labels(kind=job.kind, state="cancelled").inc()
                    raise
                except TimeoutError:
                    msg = f"took longer than {int(kind.timeout)} s and was stopped"
                    await self._end_failed(job, msg)
                except (UserError, AdapterError) as err:
                    await self._end_failed(job, str(err))
                except Exception as err:
                    log.exception("job %s (%s) crashed", job.id, job.kind)
                    await self._end_failed(job, f"failed unexpectedly ({type(err).__name__}); see the opsloop log")
                else:
                    await self._set(job.id, JobState.DONE)
                    self._metrics.job_runs.labels(kind=job.kind, state="done").inc()
        finally:
            kl.users -= 1
            if kl.users == 0:
                self._locks.pop(job.key, None)

    async def _end_failed(self, job: Job, message: str) -> None:
        await self._set(job.id, JobState.FAILED, message)
        self._metrics.job_runs.labels(kind=job.kind, state="failed").inc()
        try:
            await self._notifier.job_failed(job, message)
        except Exception:
            log.exception("could not report the failure of job %s", job.id)

    # --- lifecycle

    async def recover(self) -> None:
        """Deal with jobs a previous process left queued or running (see the module docstring)."""
        left = await self._store.read(
            lambda db: rows(db, "SELECT * FROM jobs WHERE state IN ('queued', 'running') ORDER BY id")
        )
        for r in left:
            job = _job(r)
            kind = self._kinds.get(job.kind)
            if job.state is JobState.QUEUED:
                await self.launch(job.id)
            elif kind is not None and kind.resumable:
                log.info("resuming job %s (%s) after a restart", job.id, job.kind)
                await self.launch(job.id, resumed=True)
            else:
                await self._set(job.id, JobState.INTERRUPTED, "interrupted by a restart of opsloop")
                self._metrics.job_runs.labels(kind=job.kind, state="interrupted").inc()
                await self._notifier.job_interrupted(job)

    async def cancel(self, job_id: int) -> bool:
        """Cancel a running job; False if it isn't running here."""
        task = self._tasks.get(job_id)
        if task is None:
            return False
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        return True

    async def wait_idle(self, timeout: float = 30.0) -> None:
        """Wait until no job is running (tests and the scripted console use it)."""
        await asyncio.wait_for(self._idle.wait(), timeout)

    async def stop(self) -> None:
        """Stop accepting jobs and cancel the running ones; their rows stay `running` for recovery."""
        self._accepting = False
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def count_states(self) -> dict[str, int]:
        """Jobs by state (also published as the `opsloop_jobs` gauge)."""
        found = await self._store.read(lambda db: rows(db, "SELECT state, count(*) AS n FROM jobs GROUP BY state"))
        counts = {str(s): 0 for s in JobState} | {r["state"]: int(r["n"]) for r in found}
        for state, n in counts.items():
            self._metrics.jobs.labels(state=state).set(n)
        return counts

    async def get(self, job_id: int) -> Job | None:
        """A job by id."""
        r = await self._store.read(lambda db: one(db, "SELECT * FROM jobs WHERE id = ?", (job_id,)))
        return _job(r) if r else None
