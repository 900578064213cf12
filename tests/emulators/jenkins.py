"""A strict, stateful Jenkins emulator for tests.

One aiohttp server on 127.0.0.1 (port 0, read back) that answers the REST surface python-jenkins
1.8.3 uses, with the shapes of `shared/reference/build-test-deploy-apis.md` section 1:

* CSRF: ``GET /crumbIssuer/api/json`` issues a crumb bound to a ``JSESSIONID.<node>`` cookie; a
  POST without that crumb header *and* the matching cookie gets 403 ("No valid crumb was included
  in the request"). ``csrf=False`` turns protection off: the crumb issuer answers 404, as Jenkins does.
* Basic auth with user / API token: bad credentials -> 401 HTML, no credentials -> 403 HTML (only
  ``GET /`` is open, so ``get_version()`` works), an authenticated user without the build
  permission -> 403 with ``X-You-Are-Authenticated-As``. Every response carries ``X-Jenkins``.
* Jobs and folders (``/job/a/job/b/job/app/...``), parameterized or not, enabled or not; the trigger
  endpoints answer 201 + ``Location: .../queue/item/<id>/``, 400 "Nothing is submitted" for
  ``/build`` on a parameterized job, 400 "... is not parameterized" for ``/buildWithParameters`` on
  a plain one, 409 for a disabled job, 303 to the existing item for a duplicate
  ``buildWithParameters`` (what makes python-jenkins raise ``EmptyResponseException``), 404 HTML for
  unknown jobs.
* The queue: an item is a ``WaitingItem``, then a ``BuildableItem``, then a ``LeftItem`` whose
  ``executable`` names the build, after ``waiting_polls`` + ``buildable_polls`` reads of the item
  (or after ``quiet_period`` seconds of the emulator clock when that is set). ``hold_queue(why)``
  keeps items blocked; ``cancel_queue`` (or ``POST /queue/cancelItem``) leaves them ``cancelled``.
  A left item answers 404 ``queue_ttl`` seconds later.
* Builds follow their `BuildScript` on the emulator clock: the console chunks are spread evenly
  over ``duration`` and the build finishes with ``result`` at ``start + duration``. With
  ``duration=None`` a build runs until `finish_build` (or a stop). ``progressiveText`` returns only
  complete lines while running, with ``X-Text-Size`` and ``X-More-Data: true``; everything, without
  ``X-More-Data``, once finished.
* ``POST .../stop`` answers 302 to the build page (served 200) and ends a running build ABORTED.
* ``?tree=`` is honoured on every ``api/json`` (``builds[number,queueId]{0,10}`` and friends).
* Archived artifacts (``BuildScript.artifacts``: relativePath -> content) appear when the build
  finishes, listed in its ``api/json`` ``artifacts`` as ``displayPath``/``fileName``/``relativePath``
  (sorted by path; ``displayPath`` is the shortest unique path suffix, as ``Run.ArtifactList``
  computes it) and served at ``.../<n>/artifact/<relativePath>`` with ``Content-Length``, a content
  type from the extension and Jenkins' sandboxing CSP; a directory there answers an HTML listing, anything
  else 404. Like every other path they need credentials. ``artifact_content_length=False`` sends
  them chunked, without ``Content-Length`` (``artifact_drip`` seconds apart per 64 KiB); `discard_artifacts`
  drops them as log rotation does.
  `junit_xml` renders `Case` objects as the JUnit XML file a build would archive.

Example::

    clock = FakeClock()                               # any callable returning epoch seconds
    async with JenkinsEmulator(clock=clock) as emu:
        emu.add_job("shop/api", params={"BRANCH": "main"}, script=BuildScript(duration=30, result="FAILURE"))
        ci = JenkinsCI(emu.url, emu.user, emu.token, pool=pool, timeout=5)
        ref = await ci.trigger("shop/api", {})        # queued
        ref = await ci.locate(ref)                    # poll 1: WaitingItem, poll 2: BuildableItem, 3: number
        clock.advance(30)                             # the build finishes FAILURE
        emu.fail_next("/api/json", status=503); emu.slow(5.0); await emu.down(); await emu.up()

Time: the emulator reads ``clock()`` (epoch seconds; ``time.time`` unless injected). State moves
lazily, at each request or inspection, so a fake clock plus ``advance`` drives builds without sleeps.

Choices where Jenkins is silent or the emulator is deliberately simpler (tests rely on them):

* ``depth`` is ignored (always depth 0); ``tree`` expands nested builds fully, as Jenkins does.
* Crumbs are checked on POSTs only (Jenkins ignores them on GETs); python-jenkins sends them anyway.
  Jenkins >= 2.96 exempts API-token requests from CSRF checks; the emulator does not, on purpose,
  so a client that loses its crumb or session cookie is caught (as behind an older Jenkins).
* A build's test report exists only once the build has finished (404 before, and 404 without cases).
* The branch a build checks out is its ``BRANCH`` parameter when given, else the script's branch.
* Fault injection (`fail_next`, `slow`) applies before authentication, to any request whose path
  contains the given substring; injected answers are HTML pages like Jenkins' own error pages.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import html
import itertools
import json
import mimetypes
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import quote, unquote

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

__all__ = [
    "BuildScript",
    "Case",
    "EmulatedBuild",
    "JenkinsEmulator",
    "QueueItem",
    "SeenRequest",
    "junit_xml",
]

RESULTS = ("SUCCESS", "UNSTABLE", "FAILURE", "NOT_BUILT", "ABORTED")
CASE_STATUSES = ("PASSED", "FAILED", "SKIPPED", "REGRESSION", "FIXED")
JobKind = Literal["pipeline", "freestyle"]
_USER: web.RequestKey[str | None] = web.RequestKey("user")  # the authenticated user of a request

_CLASSES = {
    "pipeline": ("org.jenkinsci.plugins.workflow.job.WorkflowJob", "org.jenkinsci.plugins.workflow.job.WorkflowRun"),
    "freestyle": ("hudson.model.FreeStyleProject", "hudson.model.FreeStyleBuild"),
}
_FOLDER_CLASS = "com.cloudbees.hudson.plugins.folder.Folder"
_PERMALINKS = (
    "lastBuild",
    "lastCompletedBuild",
    "lastSuccessfulBuild",
    "lastFailedBuild",
    "lastStableBuild",
    "lastUnstableBuild",
    "lastUnsuccessfulBuild",
)


# ----------------------------------------------------------------------------------------------
# What tests configure
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One test case of a build's report (JUnit plugin ``CaseResult``)."""

    name: str
    status: str = "PASSED"  # PASSED FAILED SKIPPED, or REGRESSION / FIXED as older junit plugins export
    class_name: str = "tests.test_app"
    suite: str = "tests"
    duration: float = 0.01
    error_details: str | None = None  # the message attribute of <failure>/<error>
    error_stack_trace: str | None = None  # the element text
    skipped_message: str | None = None
    stdout: str | None = None

    def __post_init__(self) -> None:
        if self.status not in CASE_STATUSES:
            raise ValueError(f"case status must be one of {CASE_STATUSES}, not {self.status!r}")


@dataclass(frozen=True)
class BuildScript:
    """What a build of a job does.

    ``log`` chunks appear evenly over ``duration`` (chunk i at ``start + i * duration / len(log)``);
    a chunk need not end with a newline (a line still being written). ``duration=None``: the build
    runs until `JenkinsEmulator.finish_build` or a stop, with every chunk written at its start.
    """

    result: str = "SUCCESS"
    duration: float | None = 0.0
    log: Sequence[str] = ("Building\n",)
    tests: Sequence[Case] | None = None  # the JUnit plugin's test report (None: no report, 404)
    artifacts: Mapping[str, bytes | str] | None = None  # archived at the end: relativePath -> content
    commit: str | None = "4f2d1c9b8a7e6d5c4b3a29180f7e6d5c4b3a2918"
    branch: str = "main"
    message: str = "Fix the login page"
    author: str = "alice"
    build_data: bool = True  # the git plugin's BuildData action (lastBuiltRevision); else only changeSets
    repo_url: str = "https://git.example.com/shop/app.git"

    def __post_init__(self) -> None:
        if self.result not in RESULTS:
            raise ValueError(f"result must be one of {RESULTS}, not {self.result!r}")
        if self.duration is not None and self.duration < 0:
            raise ValueError("duration must be >= 0 (or None)")


@dataclass(frozen=True)
class SeenRequest:
    """One request as the emulator received it (before faults, auth and CSRF checks)."""

    method: str
    path: str  # decoded, without the query string
    query: dict[str, str]
    headers: CIMultiDictProxy[str]
    cookies: dict[str, str]


# ----------------------------------------------------------------------------------------------
# Emulator state (readable by tests)
# ----------------------------------------------------------------------------------------------


@dataclass
class _Folder:
    path: tuple[str, ...]


@dataclass
class _Job:
    path: tuple[str, ...]
    params: dict[str, str] | None
    disabled: bool
    script: BuildScript
    kind: JobKind
    next_number: int = 1
    builds: dict[int, EmulatedBuild] = field(default_factory=dict)

    @property
    def full_name(self) -> str:
        return "/".join(self.path)


@dataclass
class EmulatedBuild:
    """A build inside the emulator."""

    job: str
    number: int
    queue_id: int
    params: dict[str, str]
    user: str
    script: BuildScript
    started_at: float
    branch: str
    log: bytearray = field(default_factory=bytearray)
    emitted: int = 0
    finished_at: float | None = None
    result: str | None = None
    aborted_by: str | None = None
    artifacts: dict[str, bytes] = field(default_factory=dict)  # relativePath -> content, once archived

    @property
    def building(self) -> bool:
        return self.result is None

    @property
    def text(self) -> str:
        return self.log.decode("utf-8", "replace")


@dataclass
class QueueItem:
    """A queue item inside the emulator."""

    id: int
    job: str
    params: dict[str, str] | None
    user: str
    queued_at: float
    polls: int = 0
    left_at: float | None = None
    cancelled: bool = False
    build_number: int | None = None

    @property
    def left(self) -> bool:
        return self.left_at is not None


@dataclass
class _Fault:
    substring: str
    status: int
    remaining: int


@dataclass
class _Slow:
    substring: str
    seconds: float
    remaining: int | None


@dataclass
class _User:
    token: str
    can_build: bool = True


class _Answer(Exception):
    """Raised inside a handler to answer with an error page."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


# ----------------------------------------------------------------------------------------------
# The emulator
# ----------------------------------------------------------------------------------------------


class JenkinsEmulator:
    """See the module docstring. Use ``async with JenkinsEmulator() as emu:``."""

    def __init__(
        self,
        *,
        user: str = "opsloop",
        token: str = "11aa22bb33cc44dd55ee66ff77aa88bb99",
        csrf: bool = True,
        version: str = "2.479.3",
        clock: Callable[[], float] | None = None,
        waiting_polls: int = 1,
        buildable_polls: int = 1,
        quiet_period: float | None = None,
        queue_ttl: float = 300.0,
        artifact_content_length: bool = True,
        artifact_drip: float = 0.0,
    ) -> None:
        self.csrf = csrf
        self.version = version
        self.clock: Callable[[], float] = clock or time.time
        self.waiting_polls = waiting_polls
        self.buildable_polls = buildable_polls
        self.quiet_period = quiet_period
        self.queue_ttl = queue_ttl
        self.artifact_content_length = artifact_content_length
        self.artifact_drip = artifact_drip  # seconds between 64 KiB chunks of a chunked artifact
        self.user = user
        self.token = token

        self.port = 0
        self._runner: web.AppRunner | None = None
        self._session_hash = secrets.token_hex(4)
        self._cookie_name = f"JSESSIONID.{secrets.token_hex(4)}"

        self._users: dict[str, _User] = {user: _User(token)}
        self._sessions: dict[str, str] = {}  # session cookie value -> crumb
        self._items: dict[tuple[str, ...], _Job | _Folder] = {}
        self._queue: dict[int, QueueItem] = {}
        self._queue_ids = itertools.count(101)
        self._hold: str | None = None

        self.requests: list[SeenRequest] = []
        self.server_errors: list[str] = []  # emulator bugs (unexpected exceptions), for failing tests loudly
        self._faults: list[_Fault] = []
        self._slow: list[_Slow] = []

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> JenkinsEmulator:
        """Listen on 127.0.0.1 (a free port on the first start, the same port after `up`)."""
        app = web.Application(middlewares=[self._middleware])
        app.on_response_prepare.append(self._advertise)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port)
        await site.start()
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        """Close the listener and every open connection."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def down(self) -> None:
        """Refuse connections from now on: the listener and open connections close; `up` reopens the port."""
        await self.stop()

    async def up(self) -> None:
        """Listen again on the same port, with all state kept."""
        if self._runner is None:
            await self.start()

    async def __aenter__(self) -> JenkinsEmulator:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        """The root URL with a trailing slash, as configured in opsloop (``http://127.0.0.1:PORT/``)."""
        if not self.port:
            raise RuntimeError("JenkinsEmulator is not started")
        return f"http://127.0.0.1:{self.port}/"

    # ------------------------------------------------------------------ set-up

    def add_user(self, name: str, token: str, *, can_build: bool = True) -> None:
        """Another account; ``can_build=False`` gets 403 on triggers and stops."""
        self._users[name] = _User(token, can_build)

    def add_job(
        self,
        path: str,
        params: Mapping[str, str] | None = None,
        *,
        disabled: bool = False,
        script: BuildScript | None = None,
        kind: JobKind = "pipeline",
    ) -> None:
        """Add a job; ``path`` ``a/b/app`` creates folders ``a`` and ``a/b``. ``params``: name -> default."""
        parts = tuple(p for p in path.split("/") if p)
        if not parts:
            raise ValueError("empty job path")
        for i in range(1, len(parts)):
            existing = self._items.get(parts[:i])
            if isinstance(existing, _Job):
                raise ValueError(f"{'/'.join(parts[:i])} is a job, not a folder")
            self._items.setdefault(parts[:i], _Folder(parts[:i]))
        self._items[parts] = _Job(
            parts, dict(params) if params is not None else None, disabled, script or BuildScript(), kind
        )

    def set_script(self, path: str, script: BuildScript) -> None:
        """What the job's next builds do."""
        self._job(path).script = script

    def set_disabled(self, path: str, disabled: bool = True) -> None:
        """Disable (or enable) a job: triggers answer 409."""
        self._job(path).disabled = disabled

    def hold_queue(self, why: str | None = "Waiting for next available executor") -> None:
        """Keep every queue item blocked with this reason (None releases them)."""
        self._hold = why

    # ------------------------------------------------------------------ driving state

    def run_build(
        self, path: str, params: Mapping[str, str] | None = None, *, script: BuildScript | None = None
    ) -> EmulatedBuild:
        """Start a build at once, bypassing the queue (history for a test); returns it."""
        job = self._job(path)
        item = QueueItem(next(self._queue_ids), job.full_name, self._values(job, params or {}), self.user, self.now())
        return self._start(item, script)

    def start_queued(self) -> list[EmulatedBuild]:
        """Start every waiting queue item now (ignoring polls, quiet period and holds)."""
        started = []
        for item in list(self._queue.values()):
            if not item.left:
                started.append(self._start(item))
        return started

    def cancel_queue(self, item_id: int) -> None:
        """Cancel a waiting item (as a user clicking the X would)."""
        item = self._queue[item_id]
        if not item.left:
            item.left_at = self.now()
            item.cancelled = True

    def write_log(self, path: str, number: int, text: str) -> None:
        """Append console text to a running build."""
        b = self.build(path, number)
        if not b.building:
            raise ValueError(f"{path} #{number} has finished")
        b.log += text.encode()

    def finish_build(self, path: str, number: int, result: str | None = None) -> EmulatedBuild:
        """End a running build now with ``result`` (default: the script's) after writing its remaining log."""
        b = self.build(path, number)
        if b.building:
            b.emitted = self._emit(b, len(b.script.log))
            self._finish(b, result or b.script.result, self.now())
        return b

    def set_artifact(self, path: str, number: int, relative_path: str, content: bytes | str) -> None:
        """Archive (or replace) one file of a build, as a later `archiveArtifacts` step would."""
        b = self.build(path, number)
        b.artifacts[relative_path] = content.encode() if isinstance(content, str) else bytes(content)

    def discard_artifacts(self, path: str, number: int) -> None:
        """Delete a build's artifacts and keep the build (log rotation's "max # of builds to keep with artifacts")."""
        self.build(path, number).artifacts.clear()

    def expire_queue(self) -> None:
        """Forget every item that has left the queue (as Jenkins does ~5 minutes later)."""
        for item_id in [i for i, it in self._queue.items() if it.left]:
            del self._queue[item_id]

    def now(self) -> float:
        """The emulator's time (epoch seconds)."""
        return self.clock()

    # ------------------------------------------------------------------ inspection

    def job_builds(self, path: str) -> list[EmulatedBuild]:
        """The job's builds, oldest first."""
        self._advance()
        return [b for _, b in sorted(self._job(path).builds.items())]

    def build(self, path: str, number: int) -> EmulatedBuild:
        """A build, brought up to the clock's time."""
        self._advance()
        try:
            return self._job(path).builds[number]
        except KeyError:
            raise KeyError(f"{path} has no build #{number}") from None

    def queue_item(self, item_id: int) -> QueueItem:
        """A queue item (KeyError once it has expired)."""
        self._advance()
        return self._queue[item_id]

    def requests_to(self, substring: str, method: str | None = None) -> list[SeenRequest]:
        """The requests whose path contains ``substring`` (and with ``method``), oldest first."""
        return [r for r in self.requests if substring in r.path and (method is None or r.method == method)]

    # ------------------------------------------------------------------ faults

    def fail_next(self, path_substring: str, status: int = 500, count: int = 1) -> None:
        """The next ``count`` requests whose path contains ``path_substring`` answer ``status``."""
        self._faults.append(_Fault(path_substring, status, count))

    def slow(self, seconds: float, path_substring: str = "", count: int | None = None) -> None:
        """Delay answers by ``seconds`` (all requests unless a substring is given; ``count`` of them)."""
        self._slow.append(_Slow(path_substring, seconds, count))

    def clear_faults(self) -> None:
        """Drop pending failures and delays."""
        self._faults.clear()
        self._slow.clear()

    # ------------------------------------------------------------------ notification plugin

    def notification_payload(self, job: str, number: int, phase: str) -> dict[str, Any]:
        """The Notification plugin's JSON for a build (reference 1.5: Gson, snake_case, nulls omitted)."""
        if phase not in ("QUEUED", "STARTED", "COMPLETED", "FINALIZED"):
            raise ValueError(f"unknown phase {phase!r}")
        j = self._job(job)
        b = self.build(job, number)
        build: dict[str, Any] = {
            "full_url": self._build_url(j, number),
            "number": number,
            "queue_id": b.queue_id,
            "timestamp": _ms(b.started_at),
            "duration": 0 if b.finished_at is None else _ms(b.finished_at - b.started_at),
            "phase": phase,
            "url": f"{_job_rel(j.path)}{number}/",
            "parameters": dict(b.params),
            "log": "",
            "notes": "",
            "artifacts": {},
        }
        if phase in ("COMPLETED", "FINALIZED") and b.result is not None:
            build["status"] = b.result
        if b.script.commit:
            build["scm"] = {
                "url": b.script.repo_url,
                "branch": f"origin/{b.branch}",
                "commit": b.script.commit,
                "changes": ["src/app.py"],
                "culprits": [b.script.author],
            }
        cases = b.script.tests
        if cases and b.result is not None:
            failed = [c for c in cases if c.status in ("FAILED", "REGRESSION")]
            build["test_summary"] = {
                "total": len(cases),
                "failed": len(failed),
                "passed": sum(1 for c in cases if c.status in ("PASSED", "FIXED")),
                "skipped": sum(1 for c in cases if c.status == "SKIPPED"),
                "failed_tests": [f"{c.class_name}.{c.name}" for c in failed],
            }
        return {"name": j.path[-1], "display_name": j.path[-1], "url": _job_rel(j.path), "build": build}

    async def notify(
        self, url: str, job: str, number: int, phase: str, *, headers: Mapping[str, str] | None = None
    ) -> int:
        """POST `notification_payload` to ``url`` as the plugin does; returns the HTTP status."""
        body = json.dumps(self.notification_payload(job, number, phase)).encode()
        hdrs = {"Content-Type": "application/json;charset=UTF-8", **(headers or {})}
        async with (
            aiohttp.ClientSession(trust_env=False) as s,
            s.post(url, data=body, headers=hdrs) as r,
        ):
            await r.read()
            return r.status

    # ------------------------------------------------------------------ HTTP plumbing

    async def _advertise(self, request: web.Request, response: web.StreamResponse) -> None:
        # Jenkins sets these on every page and API answer (Functions.advertiseHeaders, Api.java).
        response.headers["X-Jenkins"] = self.version
        response.headers["X-Hudson"] = "1.395"
        response.headers["X-Jenkins-Session"] = self._session_hash

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        self.requests.append(
            SeenRequest(
                method=request.method,
                path=request.path,
                query=dict(request.query),
                headers=CIMultiDictProxy(CIMultiDict(request.headers)),
                cookies=dict(request.cookies),
            )
        )
        slow = self._take(self._slow, request.path)
        if slow is not None:
            await asyncio.sleep(slow.seconds)
        try:
            fault = self._take(self._faults, request.path)
            if fault is not None:
                raise _Answer(fault.status, _REASONS.get(fault.status, "Injected failure"))
            user = self._authenticate(request)
            request[_USER] = user
            if request.method == "POST" and self.csrf:
                self._check_crumb(request)
            self._advance()
            return await handler(request)
        except _Answer as a:
            return _error_page(a.status, a.message, a.headers)
        except web.HTTPException:
            raise
        except Exception as exc:  # an emulator bug: answer 500 and make it visible to the test
            self.server_errors.append(f"{request.method} {request.path}: {exc!r}")
            return _error_page(500, f"emulator error: {exc!r}")

    def _take(self, rules: list[Any], path: str) -> Any:
        for rule in list(rules):
            if rule.substring not in path:
                continue
            if rule.remaining is not None:
                rule.remaining -= 1
                if rule.remaining <= 0:
                    rules.remove(rule)
            return rule
        return None

    def _authenticate(self, request: web.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        if not header:
            # Anonymous read is off, as on any secured Jenkins; the root page still answers so
            # that python-jenkins' get_version() (which sends no auth on a fresh client) works.
            if request.method == "GET" and request.path == "/":
                return None
            raise _Answer(
                403,
                "Authentication required",
                {"X-You-Are-Authenticated-As": "anonymous", "X-Required-Permission": "hudson.model.Hudson.Read"},
            )
        scheme, _, value = header.partition(" ")
        try:
            name, _, token = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            name, token = "", ""
        known = self._users.get(name)
        if scheme.lower() != "basic" or known is None or not secrets.compare_digest(known.token, token):
            raise _Answer(
                401, f"Invalid password/token for user: {name}", {"WWW-Authenticate": 'Basic realm="Jenkins"'}
            )
        return name

    def _check_crumb(self, request: web.Request) -> None:
        session = request.cookies.get(self._cookie_name)
        crumb = request.headers.get("Jenkins-Crumb")
        expected = self._sessions.get(session or "")
        if not crumb or expected is None or not secrets.compare_digest(crumb, expected):
            raise _Answer(403, "No valid crumb was included in the request")

    def _need_build_permission(self, request: web.Request) -> str:
        """The user, who must hold the Job/Build permission (403 otherwise)."""
        user: str | None = request.get(_USER)
        if user is None or not self._users[user].can_build:
            raise _Answer(
                403,
                f"{user or 'anonymous'} is missing the Job/Build permission",
                {"X-You-Are-Authenticated-As": user or "anonymous"},
            )
        return user

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        # Split the raw path so an encoded "/" inside a job name stays part of the name.
        segs = [unquote(s) for s in request.raw_path.split("?", 1)[0].split("/")]
        segs = [s for s in segs if s]
        method = request.method
        if not segs:
            return _html(
                f"<html><head><title>Dashboard [Jenkins]</title></head><body>Jenkins {self.version}</body></html>"
            )
        head = segs[0]
        if segs == ["api", "json"] and method == "GET":
            return self._json(request, self._root_json())
        if segs == ["crumbIssuer", "api", "json"] and method == "GET":
            return self._crumb_issuer(request)
        if segs == ["me", "api", "json"] and method == "GET":
            user = request[_USER]
            return self._json(
                request,
                {
                    "_class": "hudson.model.User",
                    "absoluteUrl": f"{self.url}user/{user}",
                    "description": None,
                    "fullName": user,
                    "id": user,
                    "property": [],
                },
            )
        if head == "queue":
            return await self._queue_route(request, segs[1:])
        if head == "job":
            return await self._job_route(request, segs)
        raise _Answer(404, "Not Found")

    def _crumb_issuer(self, request: web.Request) -> web.StreamResponse:
        if not self.csrf:
            raise _Answer(404, "Not Found")
        session = request.cookies.get(self._cookie_name)
        if session not in self._sessions:
            session = "node0" + secrets.token_hex(10)
            self._sessions[session] = secrets.token_hex(16)
        resp = self._json(
            request,
            {
                "_class": "hudson.security.csrf.DefaultCrumbIssuer",
                "crumb": self._sessions[session],
                "crumbRequestField": "Jenkins-Crumb",
            },
        )
        resp.set_cookie(self._cookie_name, session, path="/", httponly=True)
        return resp

    def _json(self, request: web.Request, data: Any) -> web.Response:
        tree = request.query.get("tree")
        if tree:
            data = _apply_tree(data, _parse_tree(tree))
        return web.json_response(data, dumps=lambda d: json.dumps(d, separators=(",", ":")))

    # ------------------------------------------------------------------ queue

    async def _queue_route(self, request: web.Request, segs: list[str]) -> web.StreamResponse:
        method = request.method
        if segs == ["api", "json"] and method == "GET":
            items = [self._item_json(i) for i in self._queue.values() if not i.left]
            return self._json(request, {"_class": "hudson.model.Queue", "discoverableItems": [], "items": items})
        if segs == ["cancelItem"] and method == "POST":
            try:
                item = self._queue.get(int(request.query.get("id", "")))
            except ValueError:
                raise _Answer(400, "id must be a number") from None
            if item is not None:
                self.cancel_queue(item.id)
            # Queue.doCancelItem answers forwardToPreviousPage(): the Referer, else the root.
            raise web.HTTPFound(request.headers.get("Referer") or self.url)
        if len(segs) >= 2 and segs[0] == "item" and segs[1].isdigit():
            item = self._queue.get(int(segs[1]))
            if item is None:
                raise _Answer(404, "Not Found")
            rest = segs[2:]
            if rest == ["api", "json"] and method == "GET":
                self._poll(item)
                return self._json(request, self._item_json(item))
            if rest == [] and method == "GET":
                return _html(f"<html><head><title>Queue item {item.id} [Jenkins]</title></head></html>")
        raise _Answer(404, "Not Found")

    def _poll(self, item: QueueItem) -> None:
        # Reading the item is what moves it through the queue in poll mode: tests decide how many
        # polls an item waits without any timing.
        if item.left or self._hold is not None or self.quiet_period is not None:
            return
        item.polls += 1
        if item.polls > self.waiting_polls + self.buildable_polls:
            self._start(item)

    def _phase(self, item: QueueItem) -> str:
        if item.left:
            return "left"
        if self._hold is not None:
            return "blocked"
        if self.quiet_period is not None:
            return "waiting"
        return "waiting" if item.polls <= self.waiting_polls else "buildable"

    def _item_json(self, item: QueueItem) -> dict[str, Any]:
        job = self._job(item.job)
        job_class, run_class = _CLASSES[job.kind]
        phase = self._phase(item)
        actions: list[dict[str, Any]] = []
        if item.params is not None:
            actions.append(_params_action(item.params))
        actions.append(_cause_action(item.user))
        data: dict[str, Any] = {
            "_class": {
                "waiting": "hudson.model.Queue$WaitingItem",
                "blocked": "hudson.model.Queue$BlockedItem",
                "buildable": "hudson.model.Queue$BuildableItem",
                "left": "hudson.model.Queue$LeftItem",
            }[phase],
            "actions": actions,
            "blocked": phase == "blocked",
            "buildable": phase == "buildable",
            "id": item.id,
            "inQueueSince": _ms(item.queued_at),
            "params": "".join(f"\n{k}={v}" for k, v in (item.params or {}).items()),
            "stuck": False,
            "task": {
                "_class": job_class,
                "name": job.path[-1],
                "url": self._job_url(job.path),
                "color": self._color(job),
            },
            "url": f"queue/item/{item.id}/",
            "why": None,
        }
        if phase == "waiting":
            quiet = self.quiet_period if self.quiet_period is not None else 5.0
            remaining = max(0.0, item.queued_at + quiet - self.now())
            data["timestamp"] = _ms(item.queued_at + quiet)
            data["why"] = f"In the quiet period. Expires in {remaining:.1f} sec"
        elif phase in ("blocked", "buildable"):
            data["buildableStartMilliseconds"] = _ms(item.queued_at)
            data["why"] = self._hold if phase == "blocked" else "Waiting for next available executor"
            if phase == "buildable":
                data["pending"] = False
        else:
            data["cancelled"] = item.cancelled
            data["executable"] = (
                None
                if item.build_number is None
                else {
                    "_class": run_class,
                    "number": item.build_number,
                    "url": self._build_url(job, item.build_number),
                }
            )
        return data

    # ------------------------------------------------------------------ jobs and builds

    async def _job_route(self, request: web.Request, segs: list[str]) -> web.StreamResponse:
        path: list[str] = []
        while len(segs) >= 2 and segs[0] == "job":
            path.append(segs[1])
            segs = segs[2:]
        item = self._items.get(tuple(path))
        if item is None or (len(segs) == 1 and segs[0] == "job"):
            raise _Answer(404, "Not Found")
        method = request.method
        if isinstance(item, _Folder):
            if segs == [] and method == "GET":
                return _html(f"<html><head><title>{html.escape(path[-1])} [Jenkins]</title></head></html>")
            if segs == ["api", "json"] and method == "GET":
                return self._json(request, self._folder_json(item))
            raise _Answer(404, "Not Found")
        job = item
        if segs == [] and method == "GET":
            return _html(f"<html><head><title>{html.escape(job.full_name)} [Jenkins]</title></head></html>")
        if segs == ["api", "json"] and method == "GET":
            return self._json(request, self._job_json(job, full="tree" in request.query))
        if segs[0] in ("build", "buildWithParameters") and len(segs) == 1:
            if method != "POST":
                raise _Answer(405, "This URL requires POST")
            return await self._trigger(request, job, with_params=segs[0] == "buildWithParameters")
        build = self._resolve_build(job, segs[0])
        rest = segs[1:]
        if rest == [] and method == "GET":
            return _html(
                f"<html><head><title>{html.escape(job.full_name)} #{build.number} [Jenkins]</title></head></html>"
            )
        if rest == ["api", "json"] and method == "GET":
            return self._json(request, self._build_json(job, build))
        if rest == ["consoleText"] and method == "GET":
            return web.Response(body=bytes(build.log), content_type="text/plain", charset="utf-8")
        if rest == ["logText", "progressiveText"] and method == "GET":
            return self._progressive(request, build)
        if rest == ["testReport", "api", "json"] and method == "GET":
            report = self._report_json(build)
            if report is None:
                raise _Answer(404, "Not Found")
            return self._json(request, report)
        if rest and rest[0] == "artifact" and method == "GET":
            return await self._artifact(request, job, build, "/".join(rest[1:]))
        if rest == ["stop"] and method == "POST":
            user = self._need_build_permission(request)
            if build.building:
                self._abort(build, user)
            # forwardToPreviousPage(): back to the Referer, else "." = the build page (served above).
            raise web.HTTPFound(request.headers.get("Referer") or self._build_url(job, build.number))
        raise _Answer(404, "Not Found")

    async def _artifact(self, request: web.Request, job: _Job, build: EmulatedBuild, rel: str) -> web.StreamResponse:
        """``Run.doArtifact``: a DirectoryBrowserSupport over the build's archive (files, or a directory listing)."""
        content = build.artifacts.get(rel) if rel else None
        if content is None:
            prefix = f"{rel}/" if rel else ""
            below = sorted(p[len(prefix) :] for p in build.artifacts if p.startswith(prefix))
            if not below:
                raise _Answer(404, "Not Found")
            entries = sorted({p.split("/", 1)[0] for p in below})
            items = "".join(f'<li><a href="{quote(e)}">{html.escape(e)}</a></li>' for e in entries)
            title = html.escape(f"{job.full_name} #{build.number} /{rel}")
            return _html(f"<html><head><title>{title} [Jenkins]</title></head><body><ul>{items}</ul></body></html>")
        headers = {
            "Content-Type": mimetypes.guess_type(rel)[0] or "application/octet-stream",
            "X-Content-Type-Options": "nosniff",
            # DirectoryBrowserSupport's default (jenkins.security.ResourceDomainRootAction aside).
            "Content-Security-Policy": "sandbox; default-src 'none'; img-src 'self'; style-src 'self';",
            "Last-Modified": datetime.fromtimestamp(build.finished_at or build.started_at, tz=UTC).strftime(
                "%a, %d %b %Y %H:%M:%S GMT"
            ),
        }
        if self.artifact_content_length:
            return web.Response(body=content, headers=headers)
        resp = web.StreamResponse(headers=headers)
        resp.enable_chunked_encoding()
        try:
            await resp.prepare(request)
            for start in range(0, len(content), 64 * 1024):
                if start and self.artifact_drip:
                    await asyncio.sleep(self.artifact_drip)
                await resp.write(content[start : start + 64 * 1024])
            await resp.write_eof()
        except ConnectionError:
            pass  # the client stopped reading (a size limit): nothing to report
        return resp

    def _resolve_build(self, job: _Job, seg: str) -> EmulatedBuild:
        number: int | None = None
        if seg.isdigit():
            number = int(seg)
        elif seg in _PERMALINKS:
            ref = self._permalink(job, seg)
            number = ref.number if ref is not None else None
        if number is None or number not in job.builds:
            raise _Answer(404, "Not Found")
        return job.builds[number]

    async def _trigger(self, request: web.Request, job: _Job, *, with_params: bool) -> web.StreamResponse:
        user = self._need_build_permission(request)
        if job.disabled:
            raise _Answer(409, f"{job.full_name} is not buildable")
        query = {k: v for k, v in request.query.items() if k not in ("token", "delay", "cause")}
        given: dict[str, str]
        if with_params:
            if job.params is None:
                raise _Answer(400, f"{job.full_name} is not parameterized")
            given = query
        elif job.params is not None:
            # Stapler's getSubmittedForm(): /build on a parameterized job needs the `json` form field.
            form = await request.post() if request.body_exists else {}
            raw = form.get("json") if form else None
            if not isinstance(raw, str):
                raise _Answer(400, "This page expects a form submission" if query else "Nothing is submitted")
            try:
                submitted = json.loads(raw).get("parameter", [])
                if isinstance(submitted, dict):
                    submitted = [submitted]
                given = {str(p["name"]): str(p.get("value", "")) for p in submitted}
            except (ValueError, AttributeError, KeyError, TypeError):
                raise _Answer(400, "Malformed json form field") from None
        else:
            given = {}
        values = self._values(job, given)
        for existing in self._queue.values():
            if not existing.left and existing.job == job.full_name and existing.params == values:
                if with_params:
                    # ParameterizedJobMixIn: an equivalent item is already queued -> 303 to it.
                    raise web.HTTPSeeOther(f"{self.url}queue/item/{existing.id}/")
                return web.Response(status=201, headers={"Location": f"{self.url}queue/item/{existing.id}/"})
        item = QueueItem(next(self._queue_ids), job.full_name, values, user, self.now())
        self._queue[item.id] = item
        return web.Response(status=201, headers={"Location": f"{self.url}queue/item/{item.id}/"})

    def _values(self, job: _Job, given: Mapping[str, str]) -> dict[str, str] | None:
        if job.params is None:
            return None
        # Unknown names are ignored and missing ones take their defaults, as createValue() does.
        return {name: given.get(name, default) for name, default in job.params.items()}

    def _progressive(self, request: web.Request, build: EmulatedBuild) -> web.StreamResponse:
        try:
            start = int(request.query.get("start", "0"))
        except ValueError:
            start = 0
        data = bytes(build.log)
        if start < 0 or start > len(data):
            start = 0  # LargeText: "text rolled over", start again
        end = len(data)
        if build.building:
            cut = data.rfind(b"\n", start, end)
            end = cut + 1 if cut >= 0 else start  # only complete lines while the build still writes
        headers = {"X-Text-Size": str(end)}
        if build.building:
            headers["X-More-Data"] = "true"
        return web.Response(body=data[start:end], headers=headers, content_type="text/plain", charset="utf-8")

    # ------------------------------------------------------------------ state machine

    def _advance(self) -> None:
        now = self.now()
        for item_id, item in list(self._queue.items()):
            if item.left_at is not None:
                if now >= item.left_at + self.queue_ttl:
                    del self._queue[item_id]
            elif self.quiet_period is not None and self._hold is None and now >= item.queued_at + self.quiet_period:
                self._start(item)
        for it in self._items.values():
            if isinstance(it, _Job):
                for b in it.builds.values():
                    if b.building:
                        self._progress(b, now)

    def _start(self, item: QueueItem, script: BuildScript | None = None) -> EmulatedBuild:
        job = self._job(item.job)
        number = job.next_number
        job.next_number += 1
        params = dict(item.params or {})
        build = EmulatedBuild(
            job=job.full_name,
            number=number,
            queue_id=item.id,
            params=params,
            user=item.user,
            script=script or job.script,
            started_at=self.now(),
            branch=params.get("BRANCH") or (script or job.script).branch,
        )
        build.log += f"Started by user {item.user}\n".encode()
        job.builds[number] = build
        item.left_at = self.now()
        item.build_number = number
        self._queue[item.id] = item  # a left item stays readable until it expires
        self._progress(build, self.now())
        return build

    def _progress(self, b: EmulatedBuild, now: float) -> None:
        chunks = b.script.log
        duration = b.script.duration
        if duration is None:
            b.emitted = self._emit(b, len(chunks))
            return
        due = (
            len(chunks)
            if duration == 0
            else sum(1 for i in range(len(chunks)) if b.started_at + duration * i / len(chunks) <= now)
        )
        b.emitted = self._emit(b, due)
        if now >= b.started_at + duration:
            b.emitted = self._emit(b, len(chunks))
            self._finish(b, b.script.result, b.started_at + duration)

    def _emit(self, b: EmulatedBuild, upto: int) -> int:
        for chunk in b.script.log[b.emitted : upto]:
            b.log += chunk.encode()
        return max(b.emitted, upto)

    def _finish(self, b: EmulatedBuild, result: str, at: float) -> None:
        if result not in RESULTS:
            raise ValueError(f"result must be one of {RESULTS}")
        if b.log and not b.log.endswith(b"\n"):
            b.log += b"\n"
        if b.script.tests:
            b.log += b"Recording test results\n"
        if b.script.artifacts:
            b.log += b"Archiving artifacts\n"
            for rel, content in b.script.artifacts.items():
                b.artifacts[rel] = content.encode() if isinstance(content, str) else bytes(content)
        b.log += f"Finished: {result}\n".encode()
        b.result = result
        b.finished_at = at

    def _abort(self, b: EmulatedBuild, user: str) -> None:
        if b.log and not b.log.endswith(b"\n"):
            b.log += b"\n"
        b.log += f"Aborted by {user}\n".encode()
        b.aborted_by = user
        b.log += b"Finished: ABORTED\n"
        b.result = "ABORTED"
        b.finished_at = self.now()

    # ------------------------------------------------------------------ JSON shapes

    def _job(self, path: str) -> _Job:
        item = self._items.get(tuple(p for p in path.split("/") if p))
        if not isinstance(item, _Job):
            raise KeyError(
                f"no job {path!r}; jobs: {sorted('/'.join(p) for p, i in self._items.items() if isinstance(i, _Job))}"
            )
        return item

    def _job_url(self, path: Sequence[str]) -> str:
        return self.url + _job_rel(path)

    def _build_url(self, job: _Job, number: int) -> str:
        return f"{self._job_url(job.path)}{number}/"

    def _color(self, job: _Job) -> str:
        if job.disabled:
            return "disabled"
        builds = sorted(job.builds.items())
        done = [b for _, b in builds if not b.building]
        base = "notbuilt"
        if done:
            base = {"SUCCESS": "blue", "UNSTABLE": "yellow", "FAILURE": "red", "ABORTED": "aborted"}.get(
                done[-1].result or "", "notbuilt"
            )
        if builds and builds[-1][1].building:
            base += "_anime"
        return base

    def _permalink(self, job: _Job, which: str) -> EmulatedBuild | None:
        tests: dict[str, Callable[[EmulatedBuild], bool]] = {
            "lastBuild": lambda b: True,
            "lastCompletedBuild": lambda b: not b.building,
            "lastSuccessfulBuild": lambda b: b.result in ("SUCCESS", "UNSTABLE"),
            "lastFailedBuild": lambda b: b.result == "FAILURE",
            "lastStableBuild": lambda b: b.result == "SUCCESS",
            "lastUnstableBuild": lambda b: b.result == "UNSTABLE",
            "lastUnsuccessfulBuild": lambda b: b.result not in (None, "SUCCESS"),
        }
        for _, b in sorted(job.builds.items(), reverse=True):
            if tests[which](b):
                return b
        return None

    def _build_ref(self, job: _Job, b: EmulatedBuild | None, full: bool) -> dict[str, Any] | None:
        if b is None:
            return None
        if full:
            return self._build_json(job, b)
        return {"_class": _CLASSES[job.kind][1], "number": b.number, "url": self._build_url(job, b.number)}

    def _estimated_ms(self, job: _Job) -> int:
        last_ok = self._permalink(job, "lastSuccessfulBuild")
        if last_ok is None or last_ok.finished_at is None:
            return -1
        return _ms(last_ok.finished_at - last_ok.started_at)

    def _job_json(self, job: _Job, full: bool = False) -> dict[str, Any]:
        job_class, _ = _CLASSES[job.kind]
        newest = [b for _, b in sorted(job.builds.items(), reverse=True)]
        queued = [i for i in self._queue.values() if i.job == job.full_name and not i.left]
        props: list[dict[str, Any]] = []
        if job.params is not None:
            props.append(
                {
                    "_class": "hudson.model.ParametersDefinitionProperty",
                    "parameterDefinitions": [
                        {
                            "_class": "hudson.model.StringParameterDefinition",
                            "defaultParameterValue": {
                                "_class": "hudson.model.StringParameterValue",
                                "name": name,
                                "value": default,
                            },
                            "description": "",
                            "name": name,
                            "type": "StringParameterDefinition",
                        }
                        for name, default in job.params.items()
                    ],
                }
            )
        data: dict[str, Any] = {
            "_class": job_class,
            "actions": [{}, {"_class": "hudson.plugins.jobConfigHistory.JobConfigHistoryProjectAction"}],
            "description": "",
            "displayName": job.path[-1],
            "displayNameOrNull": None,
            "fullDisplayName": " » ".join(job.path),
            "fullName": job.full_name,
            "name": job.path[-1],
            "url": self._job_url(job.path),
            "buildable": not job.disabled,
            "builds": [self._build_ref(job, b, full) for b in newest[:100]],
            "color": self._color(job),
            "firstBuild": self._build_ref(job, newest[-1] if newest else None, full),
            "healthReport": [],
            "inQueue": bool(queued),
            "keepDependencies": False,
            "nextBuildNumber": job.next_number,
            "property": props,
            "queueItem": self._item_json(queued[0]) if queued else None,
            "concurrentBuild": True,
        }
        for link in _PERMALINKS:
            data[link] = self._build_ref(job, self._permalink(job, link), full)
        if job.kind == "pipeline":
            data["resumeBlocked"] = False
        return data

    def _folder_json(self, folder: _Folder) -> dict[str, Any]:
        return {
            "_class": _FOLDER_CLASS,
            "actions": [],
            "description": None,
            "displayName": folder.path[-1],
            "fullDisplayName": " » ".join(folder.path),
            "fullName": "/".join(folder.path),
            "name": folder.path[-1],
            "url": self._job_url(folder.path),
            "healthReport": [],
            "jobs": self._children(folder.path),
        }

    def _root_json(self) -> dict[str, Any]:
        return {
            "_class": "hudson.model.Hudson",
            "mode": "NORMAL",
            "nodeDescription": "the Jenkins controller's built-in node",
            "numExecutors": 2,
            "url": self.url,
            "useCrumbs": self.csrf,
            "useSecurity": True,
            "jobs": self._children(()),
        }

    def _children(self, parent: tuple[str, ...]) -> list[dict[str, Any]]:
        out = []
        for path, it in sorted(self._items.items()):
            if len(path) == len(parent) + 1 and path[: len(parent)] == parent:
                if isinstance(it, _Job):
                    out.append(
                        {
                            "_class": _CLASSES[it.kind][0],
                            "name": path[-1],
                            "url": self._job_url(path),
                            "color": self._color(it),
                        }
                    )
                else:
                    out.append({"_class": _FOLDER_CLASS, "name": path[-1], "url": self._job_url(path)})
        return out

    def _build_json(self, job: _Job, b: EmulatedBuild) -> dict[str, Any]:
        _, run_class = _CLASSES[job.kind]
        s = b.script
        actions: list[dict[str, Any]] = []
        if job.params is not None:
            actions.append(_params_action(b.params))
        actions.append(_cause_action(b.user))
        if s.commit and s.build_data:
            ref = f"refs/remotes/origin/{b.branch}"
            revision = {"SHA1": s.commit, "branch": [{"SHA1": s.commit, "name": ref}]}
            actions.append(
                {
                    "_class": "hudson.plugins.git.util.BuildData",
                    "buildsByBranchName": {
                        ref: {"buildNumber": b.number, "buildResult": None, "marked": revision, "revision": revision}
                    },
                    "lastBuiltRevision": revision,
                    "remoteUrls": [s.repo_url],
                    "scmName": "",
                }
            )
        actions.append({})  # actions without exported data show up like this (python-jenkins docstring)
        actions.append({"_class": "org.jenkinsci.plugins.displayurlapi.actions.RunDisplayAction"})
        if s.tests and not b.building:
            failed = sum(1 for c in s.tests if c.status in ("FAILED", "REGRESSION"))
            actions.append(
                {
                    "_class": "hudson.tasks.junit.TestResultAction",
                    "failCount": failed,
                    "skipCount": sum(1 for c in s.tests if c.status == "SKIPPED"),
                    "totalCount": len(s.tests),
                    "urlName": "testReport",
                }
            )
        changes: list[dict[str, Any]] = []
        if s.commit:
            changes.append(
                {
                    "_class": "hudson.plugins.git.GitChangeSet",
                    "affectedPaths": ["src/app.py"],
                    "commitId": s.commit,
                    "timestamp": _ms(b.started_at - 600),
                    "author": {"absoluteUrl": f"{self.url}user/{s.author}", "fullName": s.author},
                    "authorEmail": f"{s.author}@example.com",
                    "comment": s.message + "\n",
                    "date": datetime.fromtimestamp(b.started_at - 600, tz=UTC).strftime("%Y-%m-%d %H:%M:%S +0000"),
                    "id": s.commit,
                    "msg": s.message,
                    "paths": [{"editType": "edit", "file": "src/app.py"}],
                }
            )
        change_set = {"_class": "hudson.plugins.git.GitChangeSetList", "items": changes, "kind": "git"}
        previous = max((n for n in job.builds if n < b.number), default=None)
        following = min((n for n in job.builds if n > b.number), default=None)
        data: dict[str, Any] = {
            "_class": run_class,
            "actions": actions,
            "artifacts": _artifacts_json(b.artifacts),
            "building": b.building,
            "description": None,
            "displayName": f"#{b.number}",
            "duration": 0 if b.finished_at is None else _ms(b.finished_at - b.started_at),
            "estimatedDuration": self._estimated_ms(job),
            "executor": {"_class": "hudson.model.OneOffExecutor"} if b.building else None,
            "fullDisplayName": f"{' » '.join(job.path)} #{b.number}",
            "id": str(b.number),
            "keepLog": False,
            "number": b.number,
            "queueId": b.queue_id,
            "result": b.result,
            "timestamp": _ms(b.started_at),
            "url": self._build_url(job, b.number),
            "culprits": [{"absoluteUrl": f"{self.url}user/{s.author}", "fullName": s.author}] if s.commit else [],
        }
        if job.kind == "pipeline":
            # WorkflowRun: a list of change sets, only non-empty ones.
            data["changeSets"] = [change_set] if changes else []
            data["inProgress"] = b.building
            data["nextBuild"] = (
                None if following is None else {"number": following, "url": self._build_url(job, following)}
            )
            data["previousBuild"] = (
                None if previous is None else {"number": previous, "url": self._build_url(job, previous)}
            )
        else:
            # AbstractBuild: a single change set object, empty when nothing changed.
            data["builtOn"] = ""
            data["changeSet"] = change_set
        return data

    def _report_json(self, b: EmulatedBuild) -> dict[str, Any] | None:
        cases = b.script.tests
        if not cases or b.building:
            return None
        suites: dict[str, list[Case]] = {}
        for c in cases:
            suites.setdefault(c.suite, []).append(c)
        stamp = datetime.fromtimestamp(b.started_at, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return {
            "_class": "hudson.tasks.junit.TestResult",
            "testActions": [],
            "duration": round(sum(c.duration for c in cases), 3),
            "empty": False,
            "failCount": sum(1 for c in cases if c.status in ("FAILED", "REGRESSION")),
            "passCount": sum(1 for c in cases if c.status in ("PASSED", "FIXED")),
            "skipCount": sum(1 for c in cases if c.status == "SKIPPED"),
            "suites": [
                {
                    "cases": [_case_json(c, b.number) for c in members],
                    "duration": round(sum(c.duration for c in members), 3),
                    "enclosingBlockNames": [],
                    "enclosingBlocks": [],
                    "id": None,
                    "name": name,
                    "nodeId": None,
                    "properties": {},
                    "stderr": None,
                    "stdout": None,
                    "timestamp": stamp,
                }
                for name, members in suites.items()
            ],
        }


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------

_REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    409: "Conflict",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _job_rel(path: Sequence[str]) -> str:
    return "".join(f"job/{quote(p, safe='')}/" for p in path)


def _html(body: str, status: int = 200) -> web.Response:
    return web.Response(status=status, text=body, content_type="text/html", charset="utf-8")


def _error_page(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    # Jenkins' error pages are HTML; python-jenkins only looks at the status code (and quotes the body).
    text = html.escape(message)
    body = (
        f"<html><head><title>Error {status} {text}</title></head>"
        f"<body><h2>HTTP ERROR {status} {text}</h2><p>{text}</p></body></html>"
    )
    resp = _html(body, status)
    resp.headers.update(headers or {})
    return resp


def _params_action(values: Mapping[str, str]) -> dict[str, Any]:
    return {
        "_class": "hudson.model.ParametersAction",
        "parameters": [
            {"_class": "hudson.model.StringParameterValue", "name": k, "value": v} for k, v in values.items()
        ],
    }


def _cause_action(user: str) -> dict[str, Any]:
    return {
        "_class": "hudson.model.CauseAction",
        "causes": [
            {
                "_class": "hudson.model.Cause$UserIdCause",
                "shortDescription": f"Started by user {user}",
                "userId": user,
                "userName": user,
            }
        ],
    }


def _artifacts_json(artifacts: Mapping[str, bytes]) -> list[dict[str, Any]]:
    """``Run.getArtifacts()`` as exported: sorted, with the shortest path suffix that tells each apart."""
    paths = sorted(artifacts)
    split = {p: p.split("/") for p in paths}
    out = []
    for p in paths:
        parts = split[p]
        n = 1
        while n < len(parts) and any(q != p and split[q][-n:] == parts[-n:] for q in paths):
            n += 1
        out.append({"displayPath": "/".join(parts[-n:]), "fileName": parts[-1], "relativePath": p})
    return out


def junit_xml(cases: Sequence[Case], *, name: str = "tests") -> bytes:
    """The JUnit XML file (``<testsuites>``, one ``<testsuite>`` per `Case.suite`) that reports ``cases``."""
    suites: dict[str, list[Case]] = {}
    for c in cases:
        suites.setdefault(c.suite, []).append(c)

    def attr(value: object) -> str:
        return html.escape(str(value), quote=True)

    def counts(members: Sequence[Case]) -> str:
        failures = sum(1 for c in members if c.status in ("FAILED", "REGRESSION"))
        skipped = sum(1 for c in members if c.status == "SKIPPED")
        time_ = round(sum(c.duration for c in members), 3)
        return f'tests="{len(members)}" failures="{failures}" errors="0" skipped="{skipped}" time="{time_}"'

    lines = ['<?xml version="1.0" encoding="UTF-8"?>', f'<testsuites name="{attr(name)}" {counts(cases)}>']
    for suite, members in suites.items():
        lines.append(f'  <testsuite name="{attr(suite)}" {counts(members)}>')
        for c in members:
            head = f'    <testcase classname="{attr(c.class_name)}" name="{attr(c.name)}" time="{c.duration}"'
            if c.status in ("FAILED", "REGRESSION"):
                message = f' message="{attr(c.error_details)}"' if c.error_details is not None else ""
                body = html.escape(c.error_stack_trace or "", quote=False)
                lines.append(f'{head}><failure{message} type="AssertionError">{body}</failure></testcase>')
            elif c.status == "SKIPPED":
                message = f' message="{attr(c.skipped_message)}"' if c.skipped_message is not None else ""
                lines.append(f"{head}><skipped{message}/></testcase>")
            else:
                lines.append(f"{head}/>")
        lines.append("  </testsuite>")
    lines.append("</testsuites>")
    return ("\n".join(lines) + "\n").encode()


def _case_json(c: Case, number: int) -> dict[str, Any]:
    failing = c.status in ("FAILED", "REGRESSION")
    return {
        "testActions": [],
        "age": 1 if failing else 0,
        "className": c.class_name,
        "duration": c.duration,
        "errorDetails": c.error_details if failing else None,
        "errorStackTrace": c.error_stack_trace if failing else None,
        "failedSince": number if failing else 0,
        "name": c.name,
        "properties": {},
        "skipped": c.status == "SKIPPED",
        "skippedMessage": c.skipped_message if c.status == "SKIPPED" else None,
        "status": c.status,
        "stderr": None,
        "stdout": c.stdout,
    }


# --- ?tree= -------------------------------------------------------------------------------------

_Tree = dict[str, tuple["_Tree | None", "slice | None"]]


def _parse_tree(text: str) -> _Tree:
    """Parse Jenkins' ``tree`` syntax: ``a,b[c,d]{0,10},e[f[g]]``."""
    tree, pos = _parse_fields(text, 0)
    if pos != len(text):
        raise _Answer(400, f"bad tree parameter at {pos}: {text!r}")
    return tree


def _parse_fields(text: str, pos: int) -> tuple[_Tree, int]:
    out: _Tree = {}
    while pos < len(text):
        start = pos
        while pos < len(text) and text[pos] not in ",[]{}":
            pos += 1
        name = text[start:pos].strip()
        sub: _Tree | None = None
        rng: slice | None = None
        if pos < len(text) and text[pos] == "[":
            sub, pos = _parse_fields(text, pos + 1)
            if pos >= len(text) or text[pos] != "]":
                raise _Answer(400, f"unbalanced [ in tree {text!r}")
            pos += 1
        if pos < len(text) and text[pos] == "{":
            end = text.find("}", pos)
            if end < 0:
                raise _Answer(400, f"unbalanced {{ in tree {text!r}")
            lo, comma, hi = text[pos + 1 : end].partition(",")
            try:
                low = int(lo) if lo else None
                # {M,N} is a range, {M,} and {,N} are open ended, {N} is the single element N
                rng = slice(low, int(hi) if hi else None) if comma else slice(low, (low or 0) + 1)
            except ValueError:
                raise _Answer(400, f"bad range in tree {text!r}") from None
            pos = end + 1
        if name:
            out[name] = (sub, rng)
        if pos < len(text) and text[pos] == ",":
            pos += 1
            continue
        break
    return out, pos


def _apply_tree(value: Any, tree: _Tree | None) -> Any:
    if isinstance(value, list):
        return [_apply_tree(v, tree) for v in value]
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    if "_class" in value:
        out["_class"] = value["_class"]
    if tree is None:
        # A field named without a sub-tree: Jenkins renders nested objects as their _class only.
        return out
    for name, (sub, rng) in tree.items():
        if name not in value:
            continue
        v = value[name]
        if rng is not None and isinstance(v, list):
            v = v[rng]
        if isinstance(v, dict | list):
            v = _apply_tree(v, sub)
        out[name] = v
    return out
