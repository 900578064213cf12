"""Travis CI through its API v3, with aiohttp (no thread pool: the client is async).

`job` is the repository slug (`owner/repo`); it travels %2F-encoded as one path segment, which the
API requires. The `number` of a `BuildRef`/`Build` is Travis's build *id* (what the API calls take);
people see `Build.label`, the repository's build number (`#42`).

Choices, where the API leaves room:

* Triggering posts a *request*; the ref carries the request id until `locate` finds its build.
  Parameters become `env.global` entries (`K=V`, the value shell-quoted because Travis exports
  them through a shell) merged with `merge_mode: deep_merge_append`, so the repository's own
  `.travis.yml` env stays. The request message is `opsloop: K=V ...`.
* `last_build` asks `GET /repo/{slug}/builds?limit=1&sort_by=id:desc&build.event_type=push,api,cron`
  (plus `&build.state=passed` for the last successful one): the newest build of any branch, leaving
  out pull-request builds, which test a merge commit that is on no branch.
* `log` concatenates the job logs in job order (`--- job 42.2 ---` headers when there are several
  jobs) and `start` is a character offset into that text. While the build runs, the text stops at
  the first unfinished job, so it only ever grows and offsets stay valid even when jobs run in
  parallel. An offset beyond the end means the build was restarted (Travis clears the logs then):
  the text starts again from 0. Logs come as JSON (`content`), which is what travis-api renders
  for `Accept: application/json`; ANSI colours are left for the renderer.
* `abort` is idempotent: a build that already finished (or finishes while we ask) is left alone,
  so a double click on "Abort" is not an error.
* Build durations are wall-clock (`finished_at - started_at`); Travis's own `duration` is the sum
  of the job durations and is only used when a timestamp is missing.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import aiohttp
from yarl import URL

from bot.ports import (
    AdapterError,
    AdapterNotFound,
    AdapterTimeout,
    AdapterUnavailable,
    Build,
    BuildRef,
    BuildState,
    LogChunk,
    TestReport,
)

TOOL = "Travis CI"

_FINISHED = frozenset({"passed", "failed", "errored", "canceled"})
_STATES: dict[str, BuildState] = {
    "passed": BuildState.SUCCESS,
    "failed": BuildState.FAILURE,
    "errored": BuildState.FAILURE,
    "canceled": BuildState.ABORTED,
    "started": BuildState.RUNNING,
    "created": BuildState.QUEUED,
    "received": BuildState.QUEUED,
    "queued": BuildState.QUEUED,
    "ready": BuildState.QUEUED,
}
_NOT_STARTED = frozenset({"created", "received", "queued", "ready"})
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_EVENTS = {"api": "API request", "push": "push", "pull_request": "pull request", "cron": "cron job"}


class TravisCI:
    """`bot.ports.CIServer` for Travis CI (API v3)."""

    name = "travis"

    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout: float,
        session: aiohttp.ClientSession | None = None,
        web_url: str | None = None,
    ) -> None:
        """`url` is the API (https://api.travis-ci.com); `web_url` the prefix of build pages
        (default: https://app.travis-ci.com/github for the public API, none otherwise)."""
        self._url = url.rstrip("/")
        self._token = token
        self._timeout = timeout
        self._session = session
        self._owns_session = session is None
        self._web_url = web_url.rstrip("/") if web_url else _default_web_url(self._url)

    async def close(self) -> None:
        """Close the HTTP session if this adapter created it."""
        if self._owns_session and self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None if self._owns_session else self._session

    # ------------------------------------------------------------------ the port

    async def trigger(self, job: str, params: Mapping[str, str], branch: str | None = None) -> BuildRef:
        """Post a request for a build of `branch` (default: the repository's) with `params` as env vars."""
        for key in params:
            if not _ENV_NAME.match(key):
                raise AdapterError(TOOL, f"`{key}` can't be an environment variable name (letters, digits and _)")
        words = " ".join(f"{k}={v}" for k, v in params.items())
        message = f"opsloop: {words}" if words else "opsloop: build requested from chat"
        request: dict[str, Any] = {"message": message}
        if branch:
            request["branch"] = branch
        if params:
            request["merge_mode"] = "deep_merge_append"
            request["config"] = {"env": {"global": [f"{k}={shlex.quote(v)}" for k, v in params.items()]}}
        data = await self._call("POST", f"/repo/{_seg(job)}/requests", slug=job, body={"request": request})
        req = _obj(data.get("request"))
        rid = req.get("id")
        if rid is None:
            # Older servers left the id out of the 202; find the request by the message we sent.
            rid = await self._find_request(job, message)
        return BuildRef(ci=self.name, job=job, queue_id=str(rid))

    async def locate(self, ref: BuildRef) -> BuildRef:
        """Follow the request until it has a build (`number` = build id) or was rejected."""
        if ref.number is not None or ref.cancelled or ref.queue_id is None:
            return ref
        data = await self._call(
            "GET",
            f"/repo/{_seg(ref.job)}/request/{_seg(ref.queue_id)}",
            slug=ref.job,
            missing=f"no request {ref.queue_id} for `{ref.job}`",
        )
        builds = [_obj(b) for b in _list(data.get("builds"))]
        ids = [b["id"] for b in builds if isinstance(b.get("id"), int)]
        if ids:
            return replace(ref, number=min(ids), why=None)
        if data.get("result") == "rejected":
            return replace(ref, cancelled=True, why=_rejection(data.get("message")))
        state = data.get("state") or "pending"
        return replace(ref, why=f"{TOOL} has not turned the request into a build yet (request {state})")

    async def build(self, job: str, number: int) -> Build:
        """The build with id `number`; AdapterNotFound if it is not a build of `job`."""
        data = await self._get_build(job, number)
        return self._to_build(job, data)

    async def last_build(self, job: str, *, successful: bool = False) -> Build | None:
        """The newest non-pull-request build (of any state, or `passed` only), None if there is none."""
        query = {"limit": "1", "sort_by": "id:desc", "build.event_type": "push,api,cron"}
        if successful:
            query["build.state"] = "passed"
        data = await self._call("GET", f"/repo/{_seg(job)}/builds", slug=job, query=query)
        builds = _list(data.get("builds"))
        return self._to_build(job, _obj(builds[0])) if builds else None

    async def log(self, job: str, number: int, start: int = 0) -> LogChunk:
        """Job logs of build `number` joined in job order, from character `start`; `more` while it runs."""
        data = await self._get_build(job, number, include="job.state,job.number")
        finished = data.get("state") in _FINISHED
        jobs = [_obj(j) for j in _list(data.get("jobs"))]
        text = ""
        for j in jobs:
            jstate = j.get("state")
            # Without the job's state (a server ignoring `include`) only a finished build is safe.
            done = finished or (jstate in _FINISHED if isinstance(jstate, str) else False)
            if len(jobs) > 1:
                if text and not text.endswith("\n"):
                    text += "\n"
                text += f"--- job {j.get('number') or j.get('id')} ---\n"
            text += await self._job_log(job, j, jstate)
            if not done:
                break  # later jobs' text would shift when this one grows
        if start < 0 or start > len(text):
            start = 0  # restarted: the logs were cleared and began again
        return LogChunk(text=text[start:], next_offset=len(text), more=not finished)

    async def test_report(self, job: str, number: int) -> TestReport | None:
        """Always None: Travis CI has no test report API."""
        return None

    async def abort(self, job: str, number: int) -> None:
        """Cancel build `number`; nothing happens when it already finished."""
        data = await self._get_build(job, number)
        if data.get("state") in _FINISHED:
            return
        # 409: it finished between our two requests, which is what we wanted anyway.
        await self._call(
            "POST", f"/build/{int(number)}/cancel", slug=job, missing=f"no build {number} in `{job}`", tolerate=(409,)
        )

    async def check(self) -> str:
        """Reach the API with the token; who we are there."""
        data = await self._call("GET", "/user")
        return f"logged in to {TOOL} at {self._url} as {data.get('login') or data.get('id')}"

    # ------------------------------------------------------------------ helpers

    async def _get_build(self, job: str, number: int, include: str | None = None) -> dict[str, Any]:
        data = await self._call(
            "GET",
            f"/build/{int(number)}",
            slug=job,
            query={"include": include} if include else None,
            missing=f"no build {number} in `{job}` (or the token can't see it)",
        )
        owner = _obj(data.get("repository")).get("slug")
        if isinstance(owner, str) and owner.lower() != job.lower():
            # A build id of another repository: never show (or cancel) it as this one's.
            raise AdapterNotFound(TOOL, f"build {number} is not a build of `{job}` (it belongs to `{owner}`)")
        return data

    async def _job_log(self, slug: str, job: Mapping[str, Any], state: object) -> str:
        jid = job.get("id")
        if not isinstance(jid, int):
            raise AdapterError(TOOL, f"sent a job without an id in a build of {slug}")
        try:
            data = await self._call("GET", f"/job/{jid}/log", slug=slug)
        except AdapterNotFound:
            if state in _NOT_STARTED:
                return ""  # no log before the job starts
            raise AdapterNotFound(TOOL, f"no log for job {jid} of `{slug}` (expired or removed?)") from None
        content = data.get("content")
        if isinstance(content, str):
            return content
        parts = sorted((_obj(p) for p in _list(data.get("log_parts"))), key=lambda p: int(p.get("number") or 0))
        return "".join(str(p.get("content") or "") for p in parts)

    async def _find_request(self, job: str, message: str) -> int:
        data = await self._call("GET", f"/repo/{_seg(job)}/requests", slug=job, query={"limit": "10"})
        for r in (_obj(x) for x in _list(data.get("requests"))):
            if r.get("message") == message and isinstance(r.get("id"), int):
                return int(r["id"])
        raise AdapterError(TOOL, f"accepted the build request for {job} but did not say which request it is")

    def _to_build(self, job: str, d: Mapping[str, Any]) -> Build:
        raw_state = str(d.get("state") or "")
        started = _time(d.get("started_at"))
        finished = _time(d.get("finished_at"))
        state = _STATES.get(raw_state, BuildState.RUNNING if started else BuildState.QUEUED)
        duration: float | None = None
        if state.finished:
            if started and finished:
                duration = (finished - started).total_seconds()
            elif isinstance(d.get("duration"), int | float):
                duration = float(d["duration"])
        bid = d.get("id")
        if not isinstance(bid, int):
            raise AdapterError(TOOL, f"sent a build without an id for {job}")
        event = str(d.get("event_type") or "")
        who = _obj(d.get("created_by")).get("login")
        cause = _EVENTS.get(event, event) or None
        if cause and who:
            cause = f"{cause} by {who}"
        return Build(
            ci=self.name,
            job=job,
            number=bid,
            label=f"#{d.get('number') or bid}",
            state=state,
            url=f"{self._web_url}/{job}/builds/{bid}" if self._web_url else None,
            started_at=started,
            duration_s=duration,
            commit=_obj(d.get("commit")).get("sha") or None,
            branch=_obj(d.get("branch")).get("name") or None,
            cause=cause,
        )

    def _session_now(self) -> aiohttp.ClientSession:
        if self._session is None or (self._owns_session and self._session.closed):
            # trust_env: honour HTTPS_PROXY / NO_PROXY like the other tools' clients do.
            self._session = aiohttp.ClientSession(trust_env=True)
            self._owns_session = True
        return self._session

    async def _call(
        self,
        method: str,
        path: str,
        *,
        slug: str | None = None,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        missing: str | None = None,
        tolerate: tuple[int, ...] = (),
    ) -> dict[str, Any]:
        """One API call with the timeout; Travis's errors become the AdapterError family.

        `missing` is the message of a 404 that is not about the repository; a status in `tolerate`
        answers an empty dict instead of an error."""
        raw = self._url + path
        if query:
            raw += "?" + urlencode(query, safe=",")
        # encoded=True: the %2F of the slug must reach the server as is, not as a second segment.
        url = URL(raw, encoded=True)
        headers = {
            "Travis-API-Version": "3",
            "Authorization": f"token {self._token}",
            "Accept": "application/json",
            "User-Agent": "opsloop",
        }
        what = f"{method} {path}"
        try:
            async with self._session_now().request(
                method,
                url,
                headers=headers,
                json=body,
                timeout=aiohttp.ClientTimeout(total=self._timeout),
            ) as resp:
                status = resp.status
                text = await resp.text(errors="replace")
        except TimeoutError:
            raise AdapterTimeout(TOOL, f"no answer within {self._timeout:g} s ({what})") from None
        except aiohttp.ClientConnectorError as err:
            reason = err.os_error.strerror or str(err.os_error)
            raise AdapterUnavailable(TOOL, f"can't reach {self._url} ({reason})") from err
        except aiohttp.ClientError as err:
            raise AdapterUnavailable(TOOL, f"the connection to {self._url} broke ({type(err).__name__})") from err
        if status in tolerate:
            return {}
        data: Any = None
        try:
            data = json.loads(text) if text.strip() else {}
        except ValueError:
            if status < 400:
                raise AdapterError(
                    TOOL, f"answered {status} with something that is not JSON to {what} (is {self._url} the API?)"
                ) from None
        if status < 400:
            if not isinstance(data, dict):
                raise AdapterError(TOOL, f"answered {what} with unexpected JSON")
            return data
        raise self._error(status, data if isinstance(data, dict) else {}, what, slug, missing)

    def _error(
        self, status: int, err: Mapping[str, Any], what: str, slug: str | None, missing: str | None
    ) -> AdapterError:
        etype = str(err.get("error_type") or "")
        emsg = str(err.get("error_message") or "")
        if status == 404:
            if err.get("resource_type") == "repository" and slug:
                text = f"no repository `{slug}` (or the token can't see it)"
            else:
                text = missing or f"found nothing at {what}" + (f" ({emsg})" if emsg else "")
            return AdapterNotFound(TOOL, text)
        if status == 429:
            limit = err.get("max_requests")
            per = _per(err.get("per_seconds"))
            amount = f" ({limit} per {per})" if limit else ""
            return AdapterError(TOOL, f"refused: request limit reached{amount} for {slug or 'the repository'}")
        if status in (401, 403) and etype in ("login_required", "wrong_credentials", ""):
            return AdapterError(TOOL, f"refused the API token ({emsg or status}); check the token opsloop uses")
        if status == 403:
            return AdapterError(TOOL, f"refused: the token may not do this on {slug or 'Travis CI'} ({emsg})")
        if status == 406 and etype == "repository_inactive":
            return AdapterError(TOOL, f"refused: repository {slug} is not active on Travis CI (activate it first)")
        if status in (502, 503, 504):
            return AdapterUnavailable(TOOL, f"answered {status} (unavailable) to {what}")
        detail = f"{etype}: {emsg}" if etype or emsg else "no details"
        return AdapterError(TOOL, f"answered {status} ({detail}) to {what}" + (f" for {slug}" if slug else ""))


# ---------------------------------------------------------------------------------------------------------


def _seg(value: str) -> str:
    """One path segment: `org/app` -> `org%2Fapp`, as the API requires."""
    return quote(value, safe="")


def _default_web_url(api: str) -> str | None:
    host = urlsplit(api).hostname or ""
    if host == "api.travis-ci.com":
        return "https://app.travis-ci.com/github"
    return None


def _obj(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> Sequence[Any]:
    return value if isinstance(value, list) else []


def _time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _per(seconds: object) -> str:
    names = {3600: "hour", 86400: "day", 60: "minute"}
    if isinstance(seconds, int) and seconds in names:
        return names[seconds]
    return f"{seconds} s" if seconds else "hour"


def _rejection(message: object) -> str:
    # The request's message is ours unless Travis put a reason there.
    if isinstance(message, str) and message and not message.startswith("opsloop"):
        return f"{TOOL} rejected the request: {message}"
    return f"{TOOL} rejected the request (see the repository's Requests page on Travis CI for why)"
