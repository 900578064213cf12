"""Jenkins through python-jenkins: the `CIServer` port.

python-jenkins is synchronous (requests) and not thread-safe per instance (one `requests.Session`,
a lazily fetched crumb), so every call runs on the shared `BlockingPool` with a time limit, and each
pool thread gets its own `jenkins.Jenkins` (threading.local). Each client fetches its crumb once and
keeps the session cookie it was issued with, which Jenkins >= 2.176.2 requires.

Reads go through `Jenkins.jenkins_request` with paths built here instead of the `get_*_info`
helpers: those turn every HTTP error (a 503 while Jenkins restarts, say) into "does not exist",
while `jenkins_request` keeps the status, so a restarting Jenkins is not reported as a missing job.
Writes use the helpers (`build_job`, `stop_build`), whose error behaviour is what we map.

Every failure leaves as an `AdapterError` naming Jenkins and the job: unreachable ->
`AdapterUnavailable`, no answer in time -> `AdapterTimeout`, 404 -> `AdapterNotFound`.

Archived files (`BuildArtifacts`): the build's `artifacts[].relativePath` from its JSON, each fetched
from `<job>/<n>/artifact/<relativePath>` through the same client (auth, crumb, session cookie, the
per-request timeout). Downloads stream: a file over the caller's byte limit is refused from its
Content-Length or as soon as that many bytes arrived, and a whole download gets `download_timeout`
seconds, checked in the pool thread too, so an abandoned download does not keep reading.
"""

from __future__ import annotations

import html
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import quote

import jenkins
import requests

from bot.blocking import BlockingPool
from bot.ports import (
    AdapterError,
    AdapterNotFound,
    AdapterTimeout,
    AdapterUnavailable,
    Artifact,
    Build,
    BuildRef,
    BuildState,
    LogChunk,
    TestCaseResult,
    TestReport,
    TestStatus,
)

T = TypeVar("T")
log = logging.getLogger(__name__)

TOOL = "Jenkins"
BRANCH_PARAM = "BRANCH"  # the branch of `build SERVICE branch=x` goes here when the job defines it
REQUEST_PARAM = "OPSLOOP_REQUEST"  # unique per trigger when defined, so Jenkins never merges two requests
_BRANCH_PARAMS = (BRANCH_PARAM, "GIT_BRANCH", "BRANCH_NAME")
_STATES = {
    "SUCCESS": BuildState.SUCCESS,
    "UNSTABLE": BuildState.UNSTABLE,
    "FAILURE": BuildState.FAILURE,
    "ABORTED": BuildState.ABORTED,
    "NOT_BUILT": BuildState.NOT_BUILT,
}
_CASE_STATUS = {
    # junit-plugin >= 1363 exports only PASSED/FAILED/SKIPPED; older ones also REGRESSION/FIXED.
    "PASSED": TestStatus.PASSED,
    "FIXED": TestStatus.PASSED,
    "FAILED": TestStatus.FAILED,
    "REGRESSION": TestStatus.FAILED,
    "SKIPPED": TestStatus.SKIPPED,
}
_DOWNLOAD_CHUNK = 64 * 1024
# "Error in request. Possibly authentication failed [401]: Unauthorized\n<body>" (jenkins_request)
_STATUS_IN_MESSAGE = re.compile(r"\[(\d{3})\]: ?([^\n]*)\n?(.*)", re.S)
_TITLE = re.compile(r"<title>(.*?)</title>", re.S | re.I)


@dataclass(frozen=True)
class _About:
    """What a call is about, for the messages of the errors it may raise."""

    subject: str  # "job `api`", "build #7 of job `api`"
    missing: str  # the AdapterNotFound message: "no job `api`"
    after_timeout: str = ""  # what may have happened anyway when a write timed out


def _job_about(job: str) -> _About:
    return _About(f"job `{job}`", f"no job `{job}`")


def _build_about(job: str, number: int) -> _About:
    return _About(f"build #{number} of job `{job}`", f"no build #{number} of job `{job}`")


class _DownloadTimeout(AdapterTimeout):
    """A time limit that the pool thread itself noticed (`_run` passes it on as it is)."""


def _artifact_about(job: str, number: int, path: str) -> _About:
    return _About(
        f"artifact `{path}` of build #{number} of job `{job}`",
        f"build #{number} of job `{job}` has no artifact `{path}` (deleted, or never archived)",
    )


def _size(n: int) -> str:
    for unit, k in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= k:
            return f"{n / k:.1f}".removesuffix(".0") + f" {unit}"
    return f"{n} bytes"


def job_path(job: str) -> str:
    """`a/b/app` -> `job/a/job/b/job/app/` (folders, each name URL-quoted), relative to the root."""
    parts = [p for p in job.split("/") if p]
    if not parts:
        raise AdapterNotFound(TOOL, "no job ``: the job name is empty")
    return "".join(f"job/{quote(p, safe='')}/" for p in parts)


class JenkinsCI:
    """A Jenkins server, driven with a user's API token through python-jenkins."""

    name = "jenkins"

    def __init__(
        self,
        url: str,
        user: str | None,
        token: str | None,
        *,
        pool: BlockingPool,
        timeout: float,
        download_timeout: float | None = None,
    ) -> None:
        self.url = url if url.endswith("/") else url + "/"
        self._user = user
        self._token = token
        self._pool = pool
        self._timeout = timeout  # per request (connect, and each read)
        # A whole artifact download; each of its reads still gets `timeout`.
        self._download_timeout = download_timeout if download_timeout is not None else max(60.0, timeout)
        self._local = threading.local()
        self._clients: list[Any] = []
        self._clients_lock = threading.Lock()
        # job -> parameter name -> default (None when Jenkins shows none, e.g. passwords); read once.
        self._definitions: dict[str, dict[str, str | None]] = {}

    # ------------------------------------------------------------------ plumbing

    def _client(self) -> Any:
        """This thread's python-jenkins client (created on first use)."""
        client = getattr(self._local, "client", None)
        if client is None:
            # python-jenkins' default timeout is "none at all": always pass ours, per request.
            client = jenkins.Jenkins(self.url, username=self._user, password=self._token, timeout=self._timeout)
            self._local.client = client
            with self._clients_lock:
                self._clients.append(client)
        return client

    async def _run(self, about: _About, fn: Callable[[Any], T], *, timeout: float | None = None) -> T:
        """Run `fn(client)` on the pool; every failure becomes an AdapterError about `about`."""

        def work() -> T:
            return fn(self._client())

        limit = self._timeout if timeout is None else timeout
        try:
            return await self._pool.run(TOOL, work, timeout=limit)
        except _DownloadTimeout:
            raise
        except AdapterTimeout:
            raise self._timeout_error(about, limit) from None
        except AdapterError:
            raise
        except Exception as exc:
            raise self._error(exc, about) from exc

    def _get(self, client: Any, rel: str, params: Mapping[str, str | int] | None = None) -> requests.Response:
        """GET `rel` (relative to the root) with auth, crumb and timeout, as python-jenkins does."""
        req = requests.Request("GET", self.url + rel, params=dict(params or {}))
        response: requests.Response = client.jenkins_request(req)
        return response

    def _get_json(self, client: Any, rel: str, tree: str | None = None) -> Any:
        data = self._get(client, rel + "api/json", {"tree": tree} if tree else {"depth": 0}).json()
        if not isinstance(data, dict):
            # Every Jenkins api/json answer is an object; a list or a number comes from something else.
            raise _NotAnObject(rel)
        return data

    def _error(self, exc: BaseException, about: _About) -> AdapterError:
        """Map python-jenkins / requests failures to the AdapterError family."""
        # ConnectTimeout is both a Timeout and a ConnectionError: treat it as the timeout it is.
        if isinstance(exc, jenkins.TimeoutException | requests.Timeout):
            return self._timeout_error(about)
        if isinstance(exc, requests.ConnectionError):
            return AdapterUnavailable(TOOL, f"cannot reach {self.url} ({_reason(exc)})")
        if isinstance(exc, jenkins.NotFoundException):
            return AdapterNotFound(TOOL, about.missing)
        if isinstance(exc, requests.HTTPError) and exc.response is not None:
            # python-jenkins re-raises statuses other than 401/403/404/500 as raw HTTPError.
            r = exc.response
            return self._http_error(r.status_code, r.reason or "", r.text, about)
        if isinstance(exc, jenkins.EmptyResponseException):
            return AdapterError(TOOL, f"gave no queue item for {about.subject}: an identical build is already queued")
        if isinstance(exc, jenkins.JenkinsException):
            text = str(exc)
            m = _STATUS_IN_MESSAGE.search(text)
            if m:
                return self._http_error(int(m[1]), m[2], m[3], about)
            if "does not exist" in text:
                return AdapterNotFound(TOOL, about.missing)
            return AdapterError(TOOL, f"{text.splitlines()[0] if text else type(exc).__name__} ({about.subject})")
        if isinstance(exc, _NotAnObject):
            return AdapterError(TOOL, f"answered JSON that is not a Jenkins object for {about.subject}")
        if isinstance(exc, ValueError):  # requests' JSONDecodeError: a proxy page, not Jenkins
            return AdapterError(TOOL, f"answered something that is not JSON for {about.subject}")
        return AdapterError(TOOL, f"{type(exc).__name__}: {exc} ({about.subject})")

    def _timeout_error(self, about: _About, seconds: float | None = None) -> AdapterTimeout:
        note = f"; {about.after_timeout}" if about.after_timeout else ""
        limit = self._timeout if seconds is None else seconds
        return AdapterTimeout(TOOL, f"no answer from {self.url} within {limit:g} s ({about.subject}){note}")

    def _http_error(self, status: int, reason: str, body: str, about: _About) -> AdapterError:
        detail = _page_message(body)
        if status == 404:
            return AdapterNotFound(TOOL, about.missing)
        if status == 401:
            return AdapterError(TOOL, f"rejected the credentials of user {self._user or 'anonymous'} (401)")
        if status == 403:
            if "crumb" in detail.lower():
                return AdapterError(TOOL, f"refused the request for {about.subject} (403: {detail})")
            if self._user is None:
                return AdapterError(TOOL, f"requires a user and API token (403: {detail or reason})")
            return AdapterError(
                TOOL, f"rejected the credentials of user {self._user} for {about.subject} (403: {detail or reason})"
            )
        text = f"answered {status} {reason}".rstrip() + f" for {about.subject}"
        # A page that only repeats the status line adds nothing.
        return AdapterError(TOOL, f"{text}: {detail}" if detail and detail.lower() != reason.lower() else text)

    def close(self) -> None:
        """Close the HTTP sessions of every client (call after the pool has stopped)."""
        with self._clients_lock:
            clients, self._clients = self._clients, []
        for c in clients:
            session = getattr(c, "_session", None)
            if session is not None:
                session.close()

    # ------------------------------------------------------------------ CIServer

    async def trigger(self, job: str, params: Mapping[str, str], branch: str | None = None) -> BuildRef:
        """Queue a build; the ref carries the queue item id.

        `branch` goes in as the BRANCH parameter only when the job defines one (a multibranch job
        names the branch in its path instead). A parameterized job gets its defaults when nothing
        else is sent, since Jenkins refuses a parameterless trigger of it; OPSLOOP_REQUEST, when the
        job defines it, gets a fresh value so Jenkins never folds this request into a queued one.
        """
        # The POST may reach Jenkins even when its answer does not reach us.
        about = replace(_job_about(job), after_timeout="the build may have been queued anyway")
        path = job_path(job)
        definitions = await self._parameter_definitions(job)
        payload = self._payload(job, definitions, params, branch)
        try:
            queue_id = await self._run(about, lambda c: c.build_job(job, payload))
        except AdapterError:
            # The job may have been reconfigured (parameters added or removed): read it again next time.
            self._definitions.pop(job, None)
            raise
        log.info("jenkins: queued %s as item %s (%s)", job, queue_id, path)
        return BuildRef(ci=self.name, job=job, queue_id=str(queue_id))

    async def _parameter_definitions(self, job: str) -> dict[str, str | None]:
        cached = self._definitions.get(job)
        if cached is not None:
            return cached
        tree = "property[parameterDefinitions[name,defaultParameterValue[value]]]"
        data = await self._run(_job_about(job), lambda c: self._get_json(c, job_path(job), tree))
        definitions: dict[str, str | None] = {}
        for prop in data.get("property") or []:
            for d in (prop or {}).get("parameterDefinitions") or []:
                if not isinstance(d, dict) or not d.get("name"):
                    continue
                default = (d.get("defaultParameterValue") or {}).get("value")
                definitions[str(d["name"])] = None if default is None else _text(default)
        self._definitions[job] = definitions
        return definitions

    def _payload(
        self, job: str, definitions: Mapping[str, str | None], params: Mapping[str, str], branch: str | None
    ) -> dict[str, str] | None:
        if not definitions:
            if params:
                raise AdapterError(TOOL, f"job `{job}` takes no parameters; got {', '.join(sorted(params))}")
            if branch:
                log.info("jenkins: job %s has no %s parameter; building its configured branch", job, BRANCH_PARAM)
            return None  # -> POST .../build
        unknown = sorted(k for k in params if k not in definitions)
        if unknown:
            # Jenkins silently ignores unknown parameters; a typo would build the default instead.
            raise AdapterError(
                TOOL,
                f"job `{job}` has no parameter {', '.join(f'`{k}`' for k in unknown)}; "
                f"it takes {', '.join(definitions)}",
            )
        payload = dict(params)
        if branch:
            if BRANCH_PARAM in definitions:
                payload.setdefault(BRANCH_PARAM, branch)
            else:
                log.info("jenkins: job %s has no %s parameter; building its configured branch", job, BRANCH_PARAM)
        if REQUEST_PARAM in definitions:
            payload[REQUEST_PARAM] = uuid.uuid4().hex
        if not payload:
            # An empty dict would make python-jenkins POST `/build`, which Jenkins answers with
            # 400 "Nothing is submitted" for a parameterized job: send the defaults instead.
            payload = {k: v for k, v in definitions.items() if v is not None}
        if not payload:
            # No defaults visible (password parameters): one empty value still selects
            # buildWithParameters, and Jenkins fills the others from their defaults.
            payload = {next(iter(definitions)): ""}
        return payload

    async def locate(self, ref: BuildRef) -> BuildRef:
        """Follow the queue item: the build number once it runs, `cancelled` if it never will."""
        if ref.number is not None or ref.cancelled or ref.queue_id is None:
            return ref
        queue_id = int(ref.queue_id)
        about = _About(f"queue item {queue_id} of job `{ref.job}`", f"no queue item {queue_id} of job `{ref.job}`")
        try:
            item = await self._run(about, lambda c: self._get_json(c, f"queue/item/{queue_id}/"))
        except AdapterNotFound:
            # Jenkins forgets a queue item about five minutes after it left the queue; by then
            # the build is in the job's history with its queueId.
            number = await self._number_from_history(ref.job, queue_id)
            if number is None:
                raise AdapterNotFound(
                    TOOL, f"queue item {queue_id} of job `{ref.job}` is gone and no recent build came from it"
                ) from None
            return replace(ref, number=number, why=None)
        executable = item.get("executable")
        if isinstance(executable, dict) and executable.get("number") is not None:
            return replace(ref, number=int(executable["number"]), why=None)
        if item.get("cancelled"):
            return replace(ref, cancelled=True, why=None)
        return replace(ref, why=item.get("why") or None)

    async def _number_from_history(self, job: str, queue_id: int) -> int | None:
        data = await self._run(_job_about(job), lambda c: self._get_json(c, job_path(job), "builds[number,queueId]"))
        for b in data.get("builds") or []:
            if isinstance(b, dict) and b.get("queueId") == queue_id:
                return int(b["number"])
        return None

    async def build(self, job: str, number: int) -> Build:
        """One build, as Jenkins reports it now."""
        rel = f"{job_path(job)}{number}/"
        data = await self._run(_build_about(job, number), lambda c: self._get_json(c, rel))
        return self._to_build(job, data)

    async def last_build(self, job: str, *, successful: bool = False) -> Build | None:
        """The newest build (or newest successful one, UNSTABLE included as Jenkins counts it)."""
        link = "lastSuccessfulBuild" if successful else "lastBuild"
        data = await self._run(_job_about(job), lambda c: self._get_json(c, job_path(job), f"{link}[number]"))
        ref = data.get(link)
        if not isinstance(ref, dict) or ref.get("number") is None:
            return None
        return await self.build(job, int(ref["number"]))

    async def log(self, job: str, number: int, start: int = 0) -> LogChunk:
        """Console text from byte offset `start` (progressiveText: only whole lines while running)."""
        rel = f"{job_path(job)}{number}/logText/progressiveText"
        r = await self._run(_build_about(job, number), lambda c: self._get(c, rel, {"start": start}))
        body = r.content
        try:
            next_offset = int(r.headers.get("X-Text-Size", ""))
        except ValueError:
            next_offset = start + len(body)
        return LogChunk(
            text=body.decode("utf-8", "replace"),
            next_offset=next_offset,
            more=r.headers.get("X-More-Data", "").lower() == "true",
        )

    async def test_report(self, job: str, number: int) -> TestReport | None:
        """The build's JUnit report, or None when it published none (Jenkins answers 404)."""
        rel = f"{job_path(job)}{number}/testReport/"
        try:
            data = await self._run(_build_about(job, number), lambda c: self._get_json(c, rel))
        except AdapterNotFound:
            return None
        suites: list[Any] = list(data.get("suites") or [])
        for child in data.get("childReports") or []:  # matrix / maven jobs aggregate their children
            suites.extend(((child or {}).get("result") or {}).get("suites") or [])
        return TestReport(tuple(_cases(suites)))

    # ------------------------------------------------------------------ BuildArtifacts

    async def artifacts(self, job: str, number: int) -> tuple[Artifact, ...]:
        """What the build archived (`artifacts` of its JSON; empty while it runs or without any)."""
        rel = f"{job_path(job)}{number}/"
        tree = "artifacts[relativePath,fileName]"
        data = await self._run(_build_about(job, number), lambda c: self._get_json(c, rel, tree))
        out: list[Artifact] = []
        for a in data.get("artifacts") or []:
            if not isinstance(a, dict) or not a.get("relativePath"):
                continue
            path = str(a["relativePath"])
            out.append(Artifact(path=path, name=str(a.get("fileName") or path.rsplit("/", 1)[-1])))
        return tuple(out)

    async def artifact(self, job: str, number: int, path: str, *, max_bytes: int) -> bytes:
        """One archived file, streamed and refused once it is over `max_bytes`."""
        about = _artifact_about(job, number, path)
        parts = path.split("/")
        if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise AdapterError(TOOL, f"`{path}` is not a relative artifact path")
        url = f"{self.url}{job_path(job)}{number}/artifact/" + "/".join(quote(p, safe="") for p in parts)
        limit = self._download_timeout
        # The pool's limit is the backstop; the thread stops itself at `limit` (see _download).
        return await self._run(
            about, lambda c: self._download(c, url, about, max_bytes, limit), timeout=limit + self._timeout
        )

    def _download(self, client: Any, url: str, about: _About, max_bytes: int, limit: float) -> bytes:
        """GET `url` as a stream (in a pool thread), at most `max_bytes` of it, within `limit` seconds."""
        deadline = time.monotonic() + limit
        response: requests.Response = client.jenkins_request(requests.Request("GET", url), stream=True)
        with response:  # closes the connection too when we stop early
            length = response.headers.get("Content-Length", "")
            if length.isdigit() and int(length) > max_bytes:
                raise self._too_big(about, int(length), max_bytes)
            data = bytearray()
            try:
                # iter_content undoes a Content-Encoding, so the limit counts what we would keep.
                for chunk in response.iter_content(_DOWNLOAD_CHUNK):
                    data += chunk
                    if len(data) > max_bytes:
                        raise self._too_big(about, None, max_bytes)
                    if time.monotonic() > deadline:
                        raise _DownloadTimeout(TOOL, f"{about.subject} took longer than {limit:g} s to download")
            except requests.ConnectionError as exc:
                # requests reports a read timeout in the middle of a body as a ConnectionError.
                if "timed out" in str(exc).lower():
                    raise _DownloadTimeout(
                        TOOL, f"{about.subject} stopped arriving: nothing for {self._timeout:g} s"
                    ) from None
                raise
        return bytes(data)

    def _too_big(self, about: _About, size: int | None, limit: int) -> AdapterError:
        # The exact size when Jenkins gave one ("64 KiB" beside "over 64 KiB" would read as a contradiction).
        what = f"is {size:,} bytes" if size is not None else f"passed {limit:,} bytes while downloading"
        return AdapterError(TOOL, f"{about.subject} {what}; artifacts over {_size(limit)} are not downloaded")

    async def abort(self, job: str, number: int) -> None:
        """Stop a running build (Jenkins answers 302 to the build page; requests follows it)."""
        about = replace(_build_about(job, number), after_timeout="the build may stop anyway")
        await self._run(about, lambda c: c.stop_build(job, number))

    async def check(self) -> str:
        """Who we are there: `Jenkins 2.479.3 at https://ci.example.com/ as opsloop`."""

        def probe(c: Any) -> tuple[str, str]:
            # whoami first: get_version() sends no credentials until another call resolved them.
            me = c.get_whoami()
            return str(c.get_version()), str(me.get("id") or me.get("fullName") or "?")

        version, who = await self._run(_About(f"the server at {self.url}", f"nothing at {self.url}"), probe)
        return f"Jenkins {version} at {self.url} as {who}"

    # ------------------------------------------------------------------ JSON -> values

    def _to_build(self, job: str, data: Mapping[str, Any]) -> Build:
        number = int(data["number"])
        result = data.get("result")
        # A pipeline may set its result while still running: `building` decides.
        if data.get("building") or result is None:
            state = BuildState.RUNNING
        else:
            state = _STATES.get(str(result), BuildState.FAILURE)
        actions = [a for a in data.get("actions") or [] if isinstance(a, dict)]
        parameters = _parameters(actions)
        timestamp = data.get("timestamp")
        estimated = data.get("estimatedDuration")
        failed_tests, total_tests = _test_counts(actions)
        return Build(
            ci=self.name,
            job=job,
            number=number,
            label=f"#{number}",
            state=state,
            url=data.get("url"),
            started_at=datetime.fromtimestamp(timestamp / 1000, tz=UTC) if isinstance(timestamp, int | float) else None,
            duration_s=None if not state.finished else float(data.get("duration") or 0) / 1000,
            estimated_s=float(estimated) / 1000 if isinstance(estimated, int | float) and estimated > 0 else None,
            commit=_commit(actions, data),
            branch=_branch(parameters, actions),
            cause=_cause(actions),
            parameters=parameters,
            failed_tests=failed_tests,
            total_tests=total_tests,
        )


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"  # as Jenkins' BooleanParameterValue prints it
    return str(value)


def _reason(exc: BaseException) -> str:
    """A short reason for a failed connection: the interesting part of urllib3's nested message."""
    text = str(exc)
    for needle, reason in (
        ("Connection refused", "connection refused"),
        ("Name or service not known", "name does not resolve"),
        ("nodename nor servname", "name does not resolve"),
        ("Temporary failure in name resolution", "name does not resolve"),
        ("NameResolutionError", "name does not resolve"),
        ("CERTIFICATE_VERIFY_FAILED", "TLS certificate not trusted"),
        ("Connection reset", "connection reset"),
        ("RemoteDisconnected", "connection closed without an answer"),
        ("Network is unreachable", "network unreachable"),
        ("No route to host", "no route to host"),
    ):
        if needle in text:
            return reason
    if isinstance(exc, requests.exceptions.SSLError):
        return "TLS error"
    return type(exc).__name__


def _page_message(body: str) -> str:
    """The message of a Jenkins error page: its <title> without `Error NNN` and ` [Jenkins]`."""
    m = _TITLE.search(body or "")
    text = html.unescape(m[1]) if m else ""
    if not m and body and "<" not in body[:200]:
        text = body.strip().splitlines()[0] if body.strip() else ""
    text = re.sub(r"^\s*Error\s+\d{3}\s*", "", text)
    text = re.sub(r"\s*\[Jenkins\]\s*$", "", text).strip()
    return text[:200]


def _parameters(actions: Sequence[Mapping[str, Any]]) -> tuple[tuple[str, str], ...]:
    out: list[tuple[str, str]] = []
    for a in actions:
        for p in a.get("parameters") or []:
            # Password parameters export no value: leave them out rather than show an empty one.
            if isinstance(p, dict) and p.get("name") and p.get("value") is not None:
                out.append((str(p["name"]), _text(p["value"])))
    return tuple(out)


def _cause(actions: Sequence[Mapping[str, Any]]) -> str | None:
    for a in actions:
        for c in a.get("causes") or []:
            if isinstance(c, dict) and c.get("shortDescription"):
                return str(c["shortDescription"])
    return None


def _test_counts(actions: Sequence[Mapping[str, Any]]) -> tuple[int | None, int | None]:
    for a in actions:
        if "totalCount" in a and "failCount" in a:
            return int(a["failCount"]), int(a["totalCount"])
    return None, None


def _build_data(actions: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    # The first BuildData is the job's own checkout; shared libraries add theirs after it.
    for a in actions:
        rev = a.get("lastBuiltRevision")
        if isinstance(rev, dict) and rev.get("SHA1"):
            return rev
    return None


def _commit(actions: Sequence[Mapping[str, Any]], data: Mapping[str, Any]) -> str | None:
    # BuildData names the revision that was built; change sets only list what changed since the
    # previous build (empty on a rebuild), so they are the fallback.
    rev = _build_data(actions)
    if rev is not None:
        return str(rev["SHA1"])
    sets = data.get("changeSets")
    if not isinstance(sets, list):
        single = data.get("changeSet")  # freestyle builds: one object, not a list
        sets = [single] if isinstance(single, dict) else []
    items = [i for s in sets if isinstance(s, dict) for i in s.get("items") or [] if isinstance(i, dict)]
    items = [i for i in items if i.get("commitId") or i.get("id")]
    if not items:
        return None
    newest = max(items, key=lambda i: i.get("timestamp") or 0) if all("timestamp" in i for i in items) else items[-1]
    return str(newest.get("commitId") or newest.get("id"))


def _branch(parameters: Sequence[tuple[str, str]], actions: Sequence[Mapping[str, Any]]) -> str | None:
    values = dict(parameters)
    for name in _BRANCH_PARAMS:
        if values.get(name):
            return values[name]
    rev = _build_data(actions)
    branches = rev.get("branch") if rev is not None else None
    if isinstance(branches, list) and branches and isinstance(branches[0], dict) and branches[0].get("name"):
        name = str(branches[0]["name"])
        for prefix in ("refs/remotes/origin/", "refs/heads/", "origin/"):
            if name.startswith(prefix):
                return name[len(prefix) :]
        return name
    return None


def _cases(suites: Sequence[Any]) -> list[TestCaseResult]:
    out: list[TestCaseResult] = []
    for suite in suites:
        if not isinstance(suite, dict):
            continue
        suite_name = str(suite.get("name") or "")
        for c in suite.get("cases") or []:
            if not isinstance(c, dict):
                continue
            status = _CASE_STATUS.get(str(c.get("status") or "").upper())
            if status is None:  # no status exported: derive it as CaseResult.isPassed() does
                if c.get("skipped"):
                    status = TestStatus.SKIPPED
                elif c.get("errorDetails") is not None or c.get("errorStackTrace") is not None:
                    status = TestStatus.FAILED
                else:
                    status = TestStatus.PASSED
            message = c.get("skippedMessage") if status is TestStatus.SKIPPED else c.get("errorDetails")
            out.append(
                TestCaseResult(
                    suite=suite_name,
                    classname=str(c.get("className") or ""),
                    name=str(c.get("name") or ""),
                    status=status,
                    duration_s=float(c.get("duration") or 0.0),
                    message=None if message is None else str(message),
                    details=None if c.get("errorStackTrace") is None else str(c["errorStackTrace"]),
                )
            )
    return out


class _NotAnObject(TypeError):
    """An api/json answer that parsed but is not a JSON object."""
