"""A stateful Travis CI API v3 emulator for tests.

One aiohttp server on 127.0.0.1 (port 0, read back) that answers the part of the Travis CI API v3
a chat-ops bot drives: triggering builds through requests, following a request to its build,
build status, cancel and restart, job logs, the repository's build list and ``GET /user``.
Facts come from the reference sheet (``reference/build-test-deploy-apis.md`` section 2) and from
travis-ci/travis-api (``lib/travis/api/v3``).

Use::

    async with TravisEmulator() as emu:
        emu.add_repo("org/app")
        ci = TravisCI(emu.url, emu.token, timeout=2)
        ref = await ci.trigger("org/app", {"K": "V"})
        emu.tick()                      # requests are processed, builds move on one step

Strict where Travis is strict:

* every request needs ``Travis-API-Version: 3`` (without it the real API answers with API v2;
  the emulator answers 400 ``wrong_params`` so a missing header cannot go unnoticed);
* ``Authorization: token <t>``: no header -> 403 ``login_required`` ("login required"), another
  token -> 403 ``wrong_credentials`` ("access denied");
* a repository slug must arrive ``%2F``-encoded as ONE path segment (``/repo/org%2Fapp/...``);
  ``/repo/org/app/requests`` is a 404, as on the real API. Paths are split on the raw
  (still encoded) path, so this does not depend on how aiohttp routes;
* unknown (or hidden, ``visible=False``) repositories -> 404 ``not_found`` with
  ``resource_type: repository``; an inactive repository refuses new requests with 406
  ``repository_inactive``; a read-only token (``add_repo(..., writable=False)``) gets 403
  ``insufficient_access`` on requests, cancel and restart;
* ``POST /repo/{slug}/requests`` counts against a per-repository limit (10 per hour unless set
  with ``rate_limit=`` on the emulator or on the repository) -> 429 ``request_limit_reached`` with
  ``max_requests`` and ``per_seconds``, as in the reference. The window runs on the emulator's
  virtual clock (see below), so ``emu.advance(3600)`` frees the quota.

Time and progress (nothing moves on its own unless ``auto_tick`` is given):

* the emulator has a virtual clock ``emu.now`` (UTC, starts 2026-01-01T00:00:00Z); every
  ``tick()`` moves it by ``tick_seconds`` (default 30) and ``advance(s)`` moves it without
  changing any state. All timestamps and durations come from this clock;
* a new request is ``received`` with ``result: null`` and no builds; it is processed on the first
  ``tick()`` or after it was read ``polls_until_processed`` times through
  ``GET /repo/{slug}/request/{id}`` (default 1: the first read shows it pending, the next one
  shows it processed). Processing approves it and creates a build (state ``created``), or rejects
  it (``reject_next``): ``result: rejected``, no build, and the request's ``message`` replaced by
  the rejection reason (the place the emulator keeps the reason; the real API does not document
  one);
* each ``tick()`` moves every unfinished build one step: ``created`` -> ``started`` (first job
  starts) -> one more tick per job and per ``run_ticks`` -> the outcome (``passed`` unless
  ``next_outcome``/``add_repo(outcome=...)`` says ``failed``, ``errored`` or ``canceled``). Jobs
  run one after the other; earlier jobs pass, the last one ends with the build's outcome;
* ``auto_tick=0.05`` runs ``tick()`` in the background every 0.05 s of real time (for tests of a
  poller); ``stop()`` ends it.

Representations follow travis-api's renderers: ``number`` is a string, ``duration`` is the sum of
the job durations in seconds, ``jobs`` are minimal (``@type``, ``@href``, ``id``) unless the query
asks ``include=job.state`` / ``include=job.number`` (then those fields are added).

Job logs (``GET /job/{id}/log``): JSON ``{"@type": "log", "id", "content", "log_parts"}`` by
default (what the adapter uses, since it sends ``Accept: application/json``); plain text when the
request says ``Accept: text/plain``, as travis-api's log renderer does. ``content`` is ``null``
while the job has not started. Logs only grow, except on restart (cleared, as Travis does).

Cancel (``POST /build/{id}/cancel``) is immediate here (Travis does it shortly after its 202):
202 ``{"@type": "pending", "state_change": "cancel"}``; a finished build -> 409
``build_not_cancelable``. Restart of a finished build -> 202 and the build starts over from
``created`` with the same id and number; of an unfinished one -> 409 ``build_already_running``.

Fault injection (routes: ``user``, ``repo``, ``builds``, ``requests`` (POST), ``request_list``,
``request`` (GET one), ``build``, ``cancel``, ``restart``, ``job``, ``log`` or ``"*"``):

* ``fail_next(route, status=500, count=1, error_type=..., message=...)``: Travis-shaped error
  answers;
* ``slow(route, seconds, count=None)``: delay answers; the request still takes effect after the
  delay even when the client gave up meanwhile (a timed-out trigger may have started a build);
* ``down()`` / ``up()``: stop listening (connection refused) and drop kept-alive connections;
  ``up()`` listens again on the same port with all state kept;
* ``legacy_request_ids = True``: the 202 leaves out ``request.id`` (older servers did).

Records: ``emu.requests`` (every HTTP request: method, raw path, query, headers, JSON body,
status), ``emu.server_errors`` (emulator bugs), and the objects (``emu.repo(slug)``,
``emu.builds``, ``emu.travis_requests``, ``emu.jobs``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, unquote

from aiohttp import web

__all__ = [
    "FINISHED",
    "EmuBuild",
    "EmuJob",
    "EmuRepo",
    "EmuRequest",
    "Seen",
    "TravisEmulator",
]

FINISHED = frozenset({"passed", "failed", "errored", "canceled"})
_OUTCOMES = frozenset({"passed", "failed", "errored", "canceled"})
_EXIT_CODE = {"passed": 0, "failed": 1, "errored": 2}

Json = dict[str, Any]


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.strftime("%Y-%m-%dT%H:%M:%SZ")


# ----------------------------------------------------------------------------------------------
# Records visible to tests
# ----------------------------------------------------------------------------------------------


@dataclass
class Seen:
    """One HTTP request as the emulator received and answered it."""

    method: str
    path: str  # raw path, still percent-encoded: "/repo/org%2Fapp/requests"
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    status: int = 0
    route: str = ""


@dataclass
class EmuRepo:
    id: int
    slug: str
    active: bool = True
    visible: bool = True
    writable: bool = True
    default_branch: str = "main"
    rate_limit: int | None = None  # None: the emulator's default
    outcome: str = "passed"
    jobs: int = 1
    run_ticks: int = 1
    next_number: int = 1
    outcomes: deque[tuple[str, str | None]] = field(default_factory=deque)  # (state, extra log text)
    rejections: deque[str] = field(default_factory=deque)
    accepted_at: list[datetime] = field(default_factory=list)  # successful request times, for the limit

    @property
    def name(self) -> str:
        return self.slug.split("/", 1)[1]

    @property
    def owner(self) -> str:
        return self.slug.split("/", 1)[0]


@dataclass
class EmuJob:
    id: int
    build_id: int
    number: str  # "42.1"
    state: str = "created"
    log: str | None = None  # None until the job starts
    started_at: datetime | None = None
    finished_at: datetime | None = None


@dataclass
class EmuBuild:
    id: int
    repo: EmuRepo
    number: str
    branch: str
    sha: str
    commit_message: str
    event_type: str
    outcome: str
    extra_log: str | None
    env: list[str]
    state: str = "created"
    previous_state: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime | None = None
    jobs: list[EmuJob] = field(default_factory=list)
    run_ticks_left: int = 0
    current_job: int = 0

    @property
    def finished(self) -> bool:
        return self.state in FINISHED


@dataclass
class EmuRequest:
    id: int
    repo: EmuRepo
    branch: str
    message: str
    config: Json
    merge_mode: str | None
    created_at: datetime
    state: str = "received"
    result: str | None = None
    polls: int = 0
    build: EmuBuild | None = None


@dataclass
class _Fault:
    status: int
    error_type: str
    message: str
    remaining: int


@dataclass
class _Slow:
    seconds: float
    remaining: int | None


class _Error(Exception):
    """A Travis-shaped error answer."""

    def __init__(self, status: int, error_type: str, message: str, **payload: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body: Json = {"@type": "error", "error_type": error_type, "error_message": message, **payload}


# ----------------------------------------------------------------------------------------------
# The emulator
# ----------------------------------------------------------------------------------------------

Handler = Callable[[web.Request, list[str]], Awaitable[web.StreamResponse]]


class TravisEmulator:
    """See the module docstring. Use ``async with TravisEmulator() as emu:``."""

    def __init__(
        self,
        *,
        token: str = "travis-test-token",
        user_login: str = "chatops-bot",
        rate_limit: int = 10,
        rate_window: float = 3600.0,
        polls_until_processed: int = 1,
        tick_seconds: float = 30.0,
        auto_tick: float | None = None,
        start: datetime = datetime(2026, 1, 1, tzinfo=UTC),
    ) -> None:
        self.token = token
        self.user_login = user_login
        self.user_id = 42
        self.rate_limit = rate_limit
        self.rate_window = rate_window
        self.polls_until_processed = polls_until_processed
        self.tick_seconds = tick_seconds
        self.auto_tick = auto_tick
        self.now = start
        self.legacy_request_ids = False

        self.port = 0
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._down = False

        self._repos: dict[str, EmuRepo] = {}  # lower-case slug -> repo
        self._repos_by_id: dict[int, EmuRepo] = {}
        self.builds: dict[int, EmuBuild] = {}
        self.jobs: dict[int, EmuJob] = {}
        self.travis_requests: dict[int, EmuRequest] = {}
        self._repo_ids = itertools.count(101)
        self._build_ids = itertools.count(5001)
        self._job_ids = itertools.count(9001)
        self._request_ids = itertools.count(1001)

        self.requests: list[Seen] = []
        self.server_errors: list[str] = []
        self._faults: dict[str, list[_Fault]] = {}
        self._slow: dict[str, _Slow] = {}

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> TravisEmulator:
        """Listen on 127.0.0.1 on a free port (read back into ``port``)."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # A short shutdown: handlers held by ``slow`` are cut off instead of delaying ``stop``.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await self._site.start()
        self.port = int(self._runner.addresses[0][1])
        if self.auto_tick:
            self._ticker = asyncio.create_task(self._tick_forever(self.auto_tick))
        return self

    async def stop(self) -> None:
        """Stop the ticker and the server."""
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            self._site = None

    async def __aenter__(self) -> TravisEmulator:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        """The API base URL, as configured in ``integrations.travis.url``."""
        if not self.port:
            raise RuntimeError("TravisEmulator is not started")
        return f"http://127.0.0.1:{self.port}"

    async def _tick_forever(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.tick()

    # ------------------------------------------------------------------ set-up

    def add_repo(
        self,
        slug: str,
        *,
        active: bool = True,
        visible: bool = True,
        writable: bool = True,
        default_branch: str = "main",
        rate_limit: int | None = None,
        outcome: str = "passed",
        jobs: int = 1,
        run_ticks: int = 1,
        repo_id: int | None = None,
    ) -> EmuRepo:
        """Add a repository. ``visible=False``: the token cannot see it (404 like an unknown one)."""
        if slug.count("/") != 1:
            raise ValueError(f"a slug is owner/name, not {slug!r}")
        self._check_outcome(outcome)
        rid = repo_id if repo_id is not None else next(self._repo_ids)
        repo = EmuRepo(
            id=rid,
            slug=slug,
            active=active,
            visible=visible,
            writable=writable,
            default_branch=default_branch,
            rate_limit=rate_limit,
            outcome=outcome,
            jobs=max(1, jobs),
            run_ticks=max(1, run_ticks),
        )
        self._repos[slug.lower()] = repo
        self._repos_by_id[rid] = repo
        return repo

    def repo(self, slug: str) -> EmuRepo:
        """The repository with that slug (KeyError if none)."""
        return self._repos[slug.lower()]

    def next_outcome(self, slug: str, state: str, *, log: str | None = None) -> None:
        """The next build of ``slug`` ends ``state``; ``log`` is written into its last job's log."""
        self._check_outcome(state)
        self.repo(slug).outcomes.append((state, log))

    def reject_next(self, slug: str, reason: str = "Build config did not create any jobs") -> None:
        """The next request of ``slug`` is rejected when it is processed."""
        self.repo(slug).rejections.append(reason)

    def add_build(
        self,
        slug: str,
        *,
        state: str = "passed",
        branch: str | None = None,
        event_type: str = "push",
        jobs: int | None = None,
        log: str | None = None,
        message: str = "an earlier commit",
    ) -> EmuBuild:
        """Seed a build in ``state`` (finished ones get timestamps and logs, as if they ran)."""
        repo = self.repo(slug)
        build = self._new_build(repo, branch or repo.default_branch, event_type, message, [], jobs=jobs, seeded=True)
        build.outcome = state if state in FINISHED else "passed"
        build.extra_log = log
        if state == "created":
            return build
        self._start(build)
        if state in FINISHED:
            self._finish(build, state)
            # Back-date the start so the seeded build took one tick, without moving the clock.
            began = self.now - timedelta(seconds=self.tick_seconds)
            build.started_at = began
            for job in build.jobs:
                job.started_at = began
        elif state != "started":
            build.state = state  # e.g. "queued", "received": odd states a client must survive
        return build

    def append_log(self, job_id: int, text: str) -> None:
        """Append to a job's log (starting it if it has none)."""
        job = self.jobs[job_id]
        job.log = (job.log or "") + text

    @staticmethod
    def _check_outcome(state: str) -> None:
        if state not in _OUTCOMES:
            raise ValueError(f"an outcome is one of {sorted(_OUTCOMES)}, not {state!r}")

    # ------------------------------------------------------------------ time

    def advance(self, seconds: float) -> None:
        """Move the virtual clock without changing any state (rate-limit windows, timestamps)."""
        self.now += timedelta(seconds=seconds)

    def tick(self, n: int = 1) -> None:
        """Move time by ``tick_seconds`` and every request and unfinished build one step, ``n`` times."""
        for _ in range(n):
            self.now += timedelta(seconds=self.tick_seconds)
            # Builds born in this tick stay `created` until the next one, so every state is seen.
            existing = list(self.builds.values())
            for req in list(self.travis_requests.values()):
                if req.result is None:
                    self._process(req)
            for build in existing:
                self._step(build)

    def _process(self, req: EmuRequest) -> None:
        repo = req.repo
        req.state = "finished"
        if repo.rejections:
            req.result = "rejected"
            req.message = repo.rejections.popleft()
            return
        req.result = "approved"
        env = list(req.config.get("env", {}).get("global", [])) if isinstance(req.config.get("env"), dict) else []
        req.build = self._new_build(repo, req.branch, "api", req.message, [str(e) for e in env])

    def _new_build(
        self,
        repo: EmuRepo,
        branch: str,
        event_type: str,
        message: str,
        env: list[str],
        *,
        jobs: int | None = None,
        seeded: bool = False,
    ) -> EmuBuild:
        number = str(repo.next_number)
        repo.next_number += 1
        # Seeded builds leave the queued outcomes to the builds that tests trigger.
        queued = repo.outcomes and not seeded
        outcome, extra = repo.outcomes.popleft() if queued else (repo.outcome, None)
        previous = self._last_finished_state(repo, branch)
        build = EmuBuild(
            id=next(self._build_ids),
            repo=repo,
            number=number,
            branch=branch,
            sha=hashlib.sha1(f"{repo.slug}#{number}".encode()).hexdigest(),
            commit_message=message,
            event_type=event_type,
            outcome=outcome,
            extra_log=extra,
            env=env,
            previous_state=previous,
            updated_at=self.now,
        )
        for i in range(jobs or repo.jobs):
            job = EmuJob(id=next(self._job_ids), build_id=build.id, number=f"{number}.{i + 1}")
            build.jobs.append(job)
            self.jobs[job.id] = job
        self.builds[build.id] = build
        return build

    def _last_finished_state(self, repo: EmuRepo, branch: str) -> str | None:
        done = [b for b in self.builds.values() if b.repo is repo and b.branch == branch and b.finished]
        return max(done, key=lambda b: b.id).state if done else None

    def _step(self, build: EmuBuild) -> None:
        if build.finished:
            return
        if build.state != "started":
            self._start(build)
            return
        job = build.jobs[build.current_job]
        job.log = (job.log or "") + f"running tests ... ({build.run_ticks_left} step(s) to go)\n"
        build.run_ticks_left -= 1
        if build.run_ticks_left > 0:
            return
        if build.current_job == len(build.jobs) - 1:
            self._finish(build, build.outcome)
            return
        self._end_job(build, job, "passed")
        build.current_job += 1
        self._start_job(build, build.jobs[build.current_job])
        build.run_ticks_left = build.repo.run_ticks

    def _start(self, build: EmuBuild) -> None:
        build.state = "started"
        build.started_at = self.now
        build.updated_at = self.now
        build.current_job = 0
        build.run_ticks_left = build.repo.run_ticks
        self._start_job(build, build.jobs[0])

    def _start_job(self, build: EmuBuild, job: EmuJob) -> None:
        job.state = "started"
        job.started_at = self.now
        repo = build.repo
        lines = [
            "Worker information",
            f"hostname: emu-worker-{job.id}",
            "",
            f"$ git clone --depth=50 --branch={build.branch} https://github.com/{repo.slug}.git {repo.slug}",
            f"$ git checkout -qf {build.sha}",
            *(f"$ export {e}" for e in build.env),
            "$ make test",
            "",
        ]
        job.log = "\n".join(lines)

    def _end_job(self, build: EmuBuild, job: EmuJob, state: str) -> None:
        job.state = state
        job.finished_at = self.now
        if job.log is None:
            job.log = ""
        if state == "canceled":
            job.log += "\nDone: Job Cancelled\n"
            return
        code = _EXIT_CODE[state]
        if state == "errored":
            job.log += f'\nThe command "make install" failed and exited with {code} during install.\n'
        else:
            job.log += f'\nThe command "make test" exited with {code}.\n'
        job.log += f"\nDone. Your build exited with {code}.\n"

    def _finish(self, build: EmuBuild, state: str) -> None:
        for i, job in enumerate(build.jobs):
            if job.state in FINISHED:
                continue
            last = i == len(build.jobs) - 1
            if state != "canceled" and job.state == "created":
                self._start_job(build, job)  # a seeded build: every job ran
            if last and build.extra_log and job.log is not None:
                job.log += build.extra_log
            self._end_job(build, job, state if (last or state == "canceled") else "passed")
        build.state = state
        build.finished_at = self.now
        build.updated_at = self.now

    # ------------------------------------------------------------------ faults

    def fail_next(
        self,
        route: str = "*",
        *,
        status: int = 500,
        count: int = 1,
        error_type: str | None = None,
        message: str | None = None,
    ) -> None:
        """The next ``count`` requests to ``route`` answer ``status`` with a Travis error body."""
        etype = error_type or {
            403: "insufficient_access",
            404: "not_found",
            409: "conflict",
            429: "request_limit_reached",
        }.get(status, "server_error" if status >= 500 else "wrong_params")
        text = message or f"emulated {status}"
        self._faults.setdefault(route, []).append(_Fault(status, etype, text, count))

    def slow(self, route: str, seconds: float, count: int | None = None) -> None:
        """Delay the answers of ``route`` (``"*"``: every route) by ``seconds``."""
        self._slow[route] = _Slow(seconds, count)

    def clear_faults(self) -> None:
        """Forget injected failures and delays (``down`` is separate: use ``up``)."""
        self._faults.clear()
        self._slow.clear()

    async def down(self) -> None:
        """Stop listening (connection refused); requests on kept-alive connections are dropped."""
        self._down = True
        if self._site is not None:
            await self._site.stop()
            self._site = None

    async def up(self) -> None:
        """Listen again on the same port; all state is kept."""
        self._down = False
        if self._site is None and self._runner is not None:
            self._site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
            await self._site.start()

    def _take_fault(self, route: str) -> _Fault | None:
        for key in (route, "*"):
            faults = self._faults.get(key, [])
            if faults:
                f = faults[0]
                f.remaining -= 1
                if f.remaining <= 0:
                    faults.pop(0)
                return f
        return None

    def _take_slow(self, route: str) -> _Slow | None:
        for key in (route, "*"):
            s = self._slow.get(key)
            if s is None:
                continue
            if s.remaining is not None:
                if s.remaining <= 0:
                    del self._slow[key]
                    continue
                s.remaining -= 1
            return s
        return None

    # ------------------------------------------------------------------ assertions helpers

    def seen(self, route: str | None = None, method: str | None = None) -> list[Seen]:
        """Logged requests, optionally only those of one route and/or method."""
        return [
            s for s in self.requests if (route is None or s.route == route) and (method is None or s.method == method)
        ]

    # ------------------------------------------------------------------ HTTP

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self._down:
            # Kept-alive connections survive a closed listening socket; cut them like a dead host.
            if request.transport is not None:
                request.transport.close()
            raise web.HTTPServiceUnavailable()
        raw_path = request.raw_path.split("?", 1)[0]
        body: Any = None
        raw = await request.read()
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode("utf-8", "replace")
        seen = Seen(
            method=request.method,
            path=raw_path,
            query=dict(parse_qsl(request.rel_url.raw_query_string, keep_blank_values=True)),
            headers=dict(request.headers),
            body=body,
        )
        self.requests.append(seen)
        try:
            route, handler, args = self._resolve(request.method, raw_path)
            seen.route = route
            self._check_headers(request, seen)
            slow = self._take_slow(route)
            if slow is not None:
                await asyncio.sleep(slow.seconds)
            fault = self._take_fault(route)
            if fault is not None:
                raise _Error(fault.status, fault.error_type, fault.message)
            response = await handler(request, args)
        except _Error as err:
            response = web.json_response(err.body, status=err.status)
        except Exception as err:  # an emulator bug: answer 500 and keep it for the test to see
            self.server_errors.append(f"{request.method} {raw_path}: {type(err).__name__}: {err}")
            response = web.json_response(
                {"@type": "error", "error_type": "server_error", "error_message": "emulator error"}, status=500
            )
        seen.status = response.status
        return response

    def _check_headers(self, request: web.Request, seen: Seen) -> None:
        if request.headers.get("Travis-API-Version") != "3":
            raise _Error(400, "wrong_params", "emulator: send Travis-API-Version: 3 (else the real API speaks v2)")
        auth = request.headers.get("Authorization")
        if not auth:
            raise _Error(403, "login_required", "login required")
        if auth != f"token {self.token}":
            raise _Error(403, "wrong_credentials", "access denied")
        if request.method == "POST" and request.content_length and request.content_type != "application/json":
            raise _Error(400, "wrong_params", "emulator: a request body must be application/json")
        if isinstance(seen.body, str):
            raise _Error(400, "wrong_params", "emulator: the body is not valid JSON")

    def _resolve(self, method: str, raw_path: str) -> tuple[str, Handler, list[str]]:
        # Split the raw path BEFORE decoding: "org%2Fapp" stays one segment, "org/app" makes two.
        parts = [unquote(p) for p in raw_path.strip("/").split("/")] if raw_path.strip("/") else []
        n = len(parts)
        table: list[tuple[str, str, int, Handler]] = [
            ("GET", "user", 1, self._get_user),
            ("GET", "repo", 2, self._get_repo),
            ("GET", "builds", 3, self._get_builds),
            ("POST", "requests", 3, self._post_requests),
            ("GET", "request_list", 3, self._get_request_list),
            ("GET", "request", 4, self._get_request),
            ("GET", "build", 2, self._get_build),
            ("POST", "cancel", 3, self._post_cancel),
            ("POST", "restart", 3, self._post_restart),
            ("GET", "job", 2, self._get_job),
            ("GET", "log", 3, self._get_log),
        ]
        shape = {
            "user": parts == ["user"],
            "repo": n == 2 and parts[0] == "repo",
            "builds": n == 3 and parts[0] == "repo" and parts[2] == "builds",
            "requests": n == 3 and parts[0] == "repo" and parts[2] == "requests",
            "request_list": n == 3 and parts[0] == "repo" and parts[2] == "requests",
            "request": n == 4 and parts[0] == "repo" and parts[2] == "request",
            "build": n == 2 and parts[0] == "build",
            "cancel": n == 3 and parts[0] == "build" and parts[2] == "cancel",
            "restart": n == 3 and parts[0] == "build" and parts[2] == "restart",
            "job": n == 2 and parts[0] == "job",
            "log": n == 3 and parts[0] == "job" and parts[2] == "log",
        }
        matched = [(m, name, h) for (m, name, _n, h) in table if shape[name]]
        for m, name, h in matched:
            if m == method:
                return name, h, parts
        if matched:
            return matched[0][1], self._method_not_allowed, parts
        return "unknown", self._not_found_path, parts

    async def _method_not_allowed(self, request: web.Request, parts: list[str]) -> web.StreamResponse:
        raise _Error(405, "method_not_allowed", "method not allowed")

    async def _not_found_path(self, request: web.Request, parts: list[str]) -> web.StreamResponse:
        raise _Error(404, "not_found", "resource not found (or insufficient access)", resource_type="resource")

    # ------------------------------------------------------------------ lookups

    def _find_repo(self, ref: str) -> EmuRepo:
        repo = self._repos_by_id.get(int(ref)) if ref.isdigit() else self._repos.get(ref.lower())
        if repo is None or not repo.visible:
            raise _Error(
                404,
                "not_found",
                "repository not found (or insufficient access)",
                resource_type="repository",
            )
        return repo

    def _find_build(self, ref: str) -> EmuBuild:
        build = self.builds.get(int(ref)) if ref.isdigit() else None
        if build is None or not build.repo.visible:
            raise _Error(404, "not_found", "build not found (or insufficient access)", resource_type="build")
        return build

    def _find_job(self, ref: str) -> EmuJob:
        job = self.jobs.get(int(ref)) if ref.isdigit() else None
        if job is None or not self.builds[job.build_id].repo.visible:
            raise _Error(404, "not_found", "job not found (or insufficient access)", resource_type="job")
        return job

    @staticmethod
    def _require_write(repo: EmuRepo) -> None:
        if not repo.writable:
            raise _Error(
                403,
                "insufficient_access",
                "operation requires create_request access to repository",
                resource_type="repository",
                permission="create_request",
            )

    # ------------------------------------------------------------------ renderers

    @staticmethod
    def _repo_minimal(repo: EmuRepo) -> Json:
        return {
            "@type": "repository",
            "@href": f"/repo/{repo.id}",
            "@representation": "minimal",
            "id": repo.id,
            "name": repo.name,
            "slug": repo.slug,
        }

    def _repo_standard(self, repo: EmuRepo) -> Json:
        return {
            **self._repo_minimal(repo),
            "@representation": "standard",
            "description": None,
            "github_id": repo.id * 10,
            "vcs_type": "GithubRepository",
            "owner": {"@type": "organization", "id": 9, "login": repo.owner, "@href": "/org/9"},
            "default_branch": {
                "@type": "branch",
                "@href": f"/repo/{repo.id}/branch/{repo.default_branch}",
                "@representation": "minimal",
                "name": repo.default_branch,
            },
            "active": repo.active,
            "private": False,
        }

    @staticmethod
    def _commit(build: EmuBuild) -> Json:
        return {
            "@type": "commit",
            "@representation": "minimal",
            "id": build.id + 100000,
            "sha": build.sha,
            "ref": f"refs/heads/{build.branch}",
            "message": build.commit_message,
            "compare_url": f"https://github.com/{build.repo.slug}/compare/{build.sha[:12]}",
            "committed_at": _iso(build.updated_at),
        }

    @staticmethod
    def _duration(build: EmuBuild) -> int | None:
        total = 0
        any_ran = False
        for job in build.jobs:
            if job.started_at is not None and job.finished_at is not None:
                total += int((job.finished_at - job.started_at).total_seconds())
                any_ran = True
        return total if any_ran and build.finished else None

    def _build_minimal(self, build: EmuBuild) -> Json:
        return {
            "@type": "build",
            "@href": f"/build/{build.id}",
            "@representation": "minimal",
            "id": build.id,
            "number": build.number,
            "state": build.state,
            "duration": self._duration(build),
            "event_type": build.event_type,
            "previous_state": build.previous_state,
            "pull_request_title": None,
            "pull_request_number": None,
            "started_at": _iso(build.started_at),
            "finished_at": _iso(build.finished_at),
            "private": False,
            "priority": False,
        }

    def _job_minimal(self, job: EmuJob, include: set[str]) -> Json:
        out: Json = {"@type": "job", "@href": f"/job/{job.id}", "@representation": "minimal", "id": job.id}
        if "job.state" in include:
            out["state"] = job.state
        if "job.number" in include:
            out["number"] = job.number
        return out

    def _build_standard(self, build: EmuBuild, include: set[str]) -> Json:
        return {
            **self._build_minimal(build),
            "@representation": "standard",
            "repository": self._repo_minimal(build.repo),
            "branch": {
                "@type": "branch",
                "@href": f"/repo/{build.repo.id}/branch/{build.branch}",
                "@representation": "minimal",
                "name": build.branch,
            },
            "tag": None,
            "commit": self._commit(build),
            "jobs": [self._job_minimal(j, include) for j in build.jobs],
            "stages": [],
            "created_by": {
                "@type": "user",
                "@href": f"/user/{self.user_id}",
                "@representation": "minimal",
                "id": self.user_id,
                "login": self.user_login,
            },
            "updated_at": _iso(build.updated_at),
        }

    def _request_standard(self, req: EmuRequest) -> Json:
        return {
            "@type": "request",
            "@href": f"/repo/{req.repo.id}/request/{req.id}",
            "@representation": "standard",
            "id": req.id,
            "state": req.state,
            "result": req.result,
            "message": req.message,
            "repository": self._repo_minimal(req.repo),
            "branch_name": req.branch,
            "commit": self._commit(req.build) if req.build else None,
            "builds": [self._build_minimal(req.build)] if req.build else [],
            "owner": {"@type": "user", "@href": f"/user/{self.user_id}", "id": self.user_id, "login": self.user_login},
            "created_at": _iso(req.created_at),
            "event_type": "api",
            "base_commit": None,
            "head_commit": None,
        }

    @staticmethod
    def _include(request: web.Request) -> set[str]:
        return {p.strip() for p in request.query.get("include", "").split(",") if p.strip()}

    # ------------------------------------------------------------------ handlers

    async def _get_user(self, request: web.Request, parts: list[str]) -> web.StreamResponse:
        return web.json_response(
            {
                "@type": "user",
                "@href": f"/user/{self.user_id}",
                "@representation": "standard",
                "id": self.user_id,
                "login": self.user_login,
                "name": "Chat Ops",
                "github_id": 4242,
                "vcs_id": "4242",
                "vcs_type": "GithubUser",
                "is_syncing": False,
                "synced_at": "2025-12-31T00:00:00Z",
            }
        )

    async def _get_repo(self, request: web.Request, parts: list[str]) -> web.StreamResponse:
        return web.json_response(self._repo_standard(self._find_repo(parts[1])))

    async def _get_builds(self, request: web.Request, parts: list[str]) -> web.StreamResponse:
        repo = self._find_repo(parts[1])
        q = request.query
        builds = [b for b in self.builds.values() if b.repo is repo]

        def listed(*names: str) -> set[str] | None:
            for name in names:
                if name in q:
                    return {v for v in q[name].split(",") if v}
            return None

        states = listed("build.state", "state")
        if states is not None:
            builds = [b for b in builds if b.state in states]
        events = listed("build.event_type", "event_type")
        if events is not None:
            builds = [b for b in builds if b.event_type in events]
        branches = listed("branch.name")
        if branches is not None:
            builds = [b for b in builds if b.branch in branches]
        sort_by = q.get("sort_by", "id:desc")  # the emulator's default; the real one is not documented
        for key in reversed(sort_by.split(",")):
            field_name, _, direction = key.partition(":")
            if field_name not in ("id", "number", "started_at", "finished_at"):
                raise _Error(400, "wrong_params", f"invalid sort_by {field_name}")

            def sort_key(b: EmuBuild, f: str = field_name) -> Any:
                if f in ("id", "number"):
                    return b.id
                t = getattr(b, f)
                return (t is not None, t or datetime.min.replace(tzinfo=UTC))

            builds.sort(key=sort_key, reverse=direction == "desc")
        try:
            limit = int(q.get("limit", "25"))
            offset = int(q.get("offset", "0"))
        except ValueError as err:
            raise _Error(400, "wrong_params", "limit and offset are integers") from err
        limit = max(0, min(limit, 100))
        page = builds[offset : offset + limit]
        include = self._include(request)
        return web.json_response(
            {
                "@type": "builds",
                "@href": request.rel_url.raw_path_qs,
                "@representation": "standard",
                "@pagination": {
                    "limit": limit,
                    "offset": offset,
                    "count": len(builds),
                    "is_first": offset == 0,
                    "is_last": offset + limit >= len(builds),
                },
                "builds": [self._build_standard(b, include) for b in page],
            }
        )

    async def _post_requests(self, request: web.Request, parts: list[str]) -> web.StreamResponse:
        repo = self._find_repo(parts[1])
        self._require_write(repo)
        if not repo.active:
            raise _Error(406, "repository_inactive", "repository is inactive", repository=self._repo_minimal(repo))
        raw = await request.read()  # already read (and cached) by _handle
        body = json.loads(raw) if raw else {}
        if not isinstance(body, dict):
            raise _Error(400, "wrong_params", "the body must be a JSON object")
        # Both {"request": {...}} and top-level fields are accepted (create_spec.rb).
        inner = body.get("request")
        spec: Json = inner if isinstance(inner, dict) else body
        limit = repo.rate_limit if repo.rate_limit is not None else self.rate_limit
        since = self.now - timedelta(seconds=self.rate_window)
        repo.accepted_at = [t for t in repo.accepted_at if t > since]
        if len(repo.accepted_at) >= limit:
            raise _Error(
                429,
                "request_limit_reached",
                "request limit reached for resource",
                max_requests=limit,
                per_seconds=int(self.rate_window),
                repository={**self._repo_minimal(repo), "@href": f"/v3/repo/{repo.id}"},
            )
        config = spec.get("config") or {}
        if not isinstance(config, dict):
            raise _Error(400, "wrong_params", "config must be an object")
        req = EmuRequest(
            id=next(self._request_ids),
            repo=repo,
            branch=str(spec.get("branch") or repo.default_branch),
            message=str(spec.get("message") or ""),
            config=config,
            merge_mode=spec.get("merge_mode") or config.get("merge_mode"),
            created_at=self.now,
        )
        self.travis_requests[req.id] = req
        repo.accepted_at.append(self.now)
        if self.polls_until_processed <= 0:
            self._process(req)
        rendered: Json = {
            "repository": {"id": repo.id * 10, "vcs_type": "GithubRepository", "owner_name": repo.owner},
            "user": {"id": self.user_id},
            "message": req.message or None,
            "branch": req.branch,
            "config": config or None,
        }
        if not self.legacy_request_ids:
            rendered["id"] = req.id
        rendered = {k: v for k, v in rendered.items() if v is not None}  # nil fields are dropped
        return web.json_response(
            {
                "@type": "pending",
                "resource_type": "request",
                "remaining_requests": limit - len(repo.accepted_at),
                "repository": self._repo_minimal(repo),
                "request": rendered,
            },
            status=202,
        )

    async def _get_request_list(self, request: web.Request, parts: list[str]) -> web.StreamResponse:
        repo = self._find_repo(parts[1])
        reqs = sorted((r for r in self.travis_requests.values() if r.repo is repo), key=lambda r: -r.id)
        limit = max(0, min(int(request.query.get("limit", "25")), 100))
        return web.json_response(
            {
                "@type": "requests",
                "@href": request.rel_url.raw_path_qs,
                "@representation": "standard",
                "requests": [self._request_standard(r) for r in reqs[:limit]],
            }
        )

    async def _get_request(self, request: web.Request, parts: list[str]) -> web.StreamResponse:
        repo = self._find_repo(parts[1])
        req = self.travis_requests.get(int(parts[3])) if parts[3].isdigit() else None
        if req is None or req.repo is not repo:
            raise _Error(404, "not_found", "request not found (or insufficient access)", resource_type="request")
        body = self._request_standard(req)
        if req.result is None:
            req.polls += 1
            if req.polls >= self.polls_until_processed:
                self._process(req)  # seen by the next read, as if Travis processed it meanwhile
        return web.json_response(body)

    async def _get_build(self, request: web.Request, parts: list[str]) -> web.StreamResponse:
        build = self._find_build(parts[1])
        return web.json_response(self._build_standard(build, self._include(request)))

    async def _post_cancel(self, request: web.Request, parts: list[str]) -> web.StreamResponse:
        build = self._find_build(parts[1])
        self._require_write(build.repo)
        if build.finished:
            raise _Error(409, "build_not_cancelable", "build is not running, cannot cancel")
        self._finish(build, "canceled")
        return web.json_response(
            {
                "@type": "pending",
                "build": self._build_minimal(build),
                "state_change": "cancel",
                "resource_type": "build",
            },
            status=202,
        )

    async def _post_restart(self, request: web.Request, parts: list[str]) -> web.StreamResponse:
        build = self._find_build(parts[1])
        self._require_write(build.repo)
        if not build.finished:
            raise _Error(409, "build_already_running", "build already running, cannot restart")
        build.previous_state = build.state
        build.state = "created"
        build.started_at = build.finished_at = None
        build.updated_at = self.now
        build.outcome = "passed" if build.outcome == "canceled" else build.outcome
        for job in build.jobs:
            job.state, job.log, job.started_at, job.finished_at = "created", None, None, None
        return web.json_response(
            {
                "@type": "pending",
                "build": self._build_minimal(build),
                "state_change": "restart",
                "resource_type": "build",
            },
            status=202,
        )

    async def _get_job(self, request: web.Request, parts: list[str]) -> web.StreamResponse:
        job = self._find_job(parts[1])
        build = self.builds[job.build_id]
        return web.json_response(
            {
                "@type": "job",
                "@href": f"/job/{job.id}",
                "@representation": "standard",
                "id": job.id,
                "number": job.number,
                "state": job.state,
                "started_at": _iso(job.started_at),
                "finished_at": _iso(job.finished_at),
                "build": self._build_minimal(build),
                "repository": self._repo_minimal(build.repo),
            }
        )

    async def _get_log(self, request: web.Request, parts: list[str]) -> web.StreamResponse:
        job = self._find_job(parts[1])
        if request.headers.get("Accept", "").split(",")[0].strip() == "text/plain":
            return web.Response(text=job.log or "", content_type="text/plain")
        parts_out = [] if job.log is None else [{"content": job.log, "number": 0, "final": job.state in FINISHED}]
        return web.json_response(
            {
                "@type": "log",
                "@href": f"/job/{job.id}/log",
                "@representation": "standard",
                "id": job.id + 700000,
                "content": job.log,
                "log_parts": parts_out,
            }
        )
