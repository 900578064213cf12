"""Jira (Cloud or Server/Data Center) through the `jira` client: the `Tracker` port.

The client (pycontribs `jira` 3.10) is synchronous and speaks REST API v2, where descriptions and
comments are plain strings. Every call runs on the shared `BlockingPool` with a time limit, and each
pool thread gets its own `JIRA` client (threading.local) rather than one client behind a lock:
`requests.Session` is not meant to be shared between threads, and a lock would let one hung call
(the pool cannot kill its thread) stall every later Jira call until its socket gives up. The cost is
one `GET serverInfo` (and one `GET field`) per thread that talks to Jira.

Choices (the reasons are in the comments where they are made):

* The client is built lazily, on the pool, on first use: its constructor fetches `serverInfo` (to
  learn `deploymentType`, which decides the search endpoint and how users are named), so a Jira that
  is down when opsloop starts only fails the calls that need it, with `AdapterUnavailable`. A failed
  construction is not cached; the next call tries again.
* `max_retries=0`: the client's `ResilientSession` sleeps 10·2ⁿ s after a connection error and
  2×Retry-After (or 10·2ⁿ s) after a 429 before retrying, on the pool thread. Those sleeps outlast
  any sensible time limit, so they would only hold pool threads; a 429 is reported at once instead
  ("rate limited; try again in N s") and the person in chat retries.
* `timeout` bounds the whole operation (create = POST + GET; close = GET + GET transitions + POST +
  GET), and every HTTP request gets it as its socket timeout, so a thread left behind by a timed-out
  operation is freed soon after.
* Auth: with `user` set, HTTP basic `user:token` (Cloud: account email + API token; Server/DC: user
  name + password); without `user`, the token is sent as a bearer token (a Server/DC personal
  access token). Cloud API tokens do not work as bearer tokens.
* Users: `users` maps Slack user ids to Jira users: accountIds on Cloud, user names on Server/DC.
  Assignees are sent in the deployment's shape (`{"accountId": ...}` / `{"name": ...}`). A Slack
  user without a mapping is an `AdapterError` telling where to add one. Reading back, a Jira user
  found in the mapping becomes the Slack id again; anyone else is shown by display name.
* `critical`: priority "Highest" when the site has that priority (`GET /priority`, read once); when
  the site lacks it, or the project refuses it at create time (its priority scheme leaves it out,
  or the create screen has no priority field: 400 with `errors.priority`), the issue is created
  again with the label `critical` instead, and that project is remembered as label-only. Reading
  back, an issue is critical when its priority is "Highest" or it has the label `critical`.
* `close` applies the transition named `done` (or, failing that, the one leading to a status of
  that name), fills a required resolution on its screen ("Done" if offered, else the first one),
  and returns an issue already in a done-category status as it is.
* The reporter of a created issue is the account opsloop uses (setting another reporter needs the
  "Modify Reporter" permission, which bot accounts rarely have).
* Assigning uses `PUT /issue/{key}/assignee` with the mapped id directly: `JIRA.assign_issue()` first
  looks the string up through user search, which on Cloud matches names and emails, not accountIds.

Every failure leaves as an `AdapterError` naming Jira and the issue or variable: 401 -> the
credentials of `user` were rejected (check the token variable); 404 -> `AdapterNotFound("no issue
OPS-1")`; 429 -> rate limited; unreachable -> `AdapterUnavailable`; no answer in time ->
`AdapterTimeout`.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

import requests
from jira import JIRA, JIRAError

from bot.blocking import BlockingPool
from bot.ports import (
    AdapterError,
    AdapterNotFound,
    AdapterTimeout,
    AdapterUnavailable,
    ItemStatus,
    ListFilter,
    NewItem,
    PlanItem,
)

T = TypeVar("T")
log = logging.getLogger(__name__)

TOOL = "Jira"
CRITICAL_PRIORITY = "Highest"
CRITICAL_LABEL = "critical"
SUMMARY_MAX = 255  # Jira refuses longer summaries
PAGE_MAX = 100  # Jira Cloud's largest search page when fields are asked for
# Only what a PlanItem needs: `*all` would also carry comments, changelog-sized custom fields, etc.
FIELDS = ("summary", "status", "assignee", "reporter", "priority", "labels", "created", "resolutiondate")
_KEY = re.compile(r"^[A-Z][A-Z0-9_]*-[1-9][0-9]*$")


@dataclass(frozen=True)
class _About:
    """What a call is about, for the messages of the errors it may raise."""

    subject: str  # "issue OPS-1", "the search of project OPS"
    missing: str  # the AdapterNotFound message: "no issue OPS-1"
    after_timeout: str = ""  # what may have happened anyway when a write timed out


def _issue_about(key: str, doing: str = "", after_timeout: str = "") -> _About:
    return _About(f"{doing} {key}".strip(), f"no issue {key}", after_timeout)


class JiraTracker:
    """A Jira project as opsloop's work tracker."""

    name = "jira"

    def __init__(
        self,
        url: str,
        *,
        user: str | None,
        token: str,
        project: str,
        issue_type: str = "Task",
        done: str = "Done",
        users: Mapping[str, str],
        pool: BlockingPool,
        timeout: float,
        token_env: str = "the Jira token variable",
        max_retries: int = 0,
    ) -> None:
        self.url = url.rstrip("/")
        self._user = user or None
        self._token = token
        self.project = project.upper()
        self._issue_type = issue_type
        self._done = done
        self._users = dict(users)  # Slack id -> Jira accountId (Cloud) / user name (Server)
        # Jira id -> Slack id; the first Slack id wins when two map to the same Jira user.
        self._slack: dict[str, str] = {}
        for slack_id, jira_id in self._users.items():
            self._slack.setdefault(jira_id, slack_id)
        self._pool = pool
        self._timeout = timeout
        self._token_env = token_env
        self._max_retries = max_retries
        self._local = threading.local()
        self._clients: list[Any] = []
        self._clients_lock = threading.Lock()
        # Facts learnt once and shared by the threads (a race only repeats a cheap lookup).
        self._has_priority: bool | None = None  # does the site have CRITICAL_PRIORITY
        self._label_only = False  # the project refused CRITICAL_PRIORITY: mark critical by label

    # ------------------------------------------------------------------ plumbing

    def _client(self) -> Any:
        """This thread's client, created on first use (its constructor asks Jira for serverInfo)."""
        client = getattr(self._local, "client", None)
        if client is None:
            auth: dict[str, Any] = (
                {"basic_auth": (self._user, self._token)} if self._user else {"token_auth": self._token}
            )
            # The constructor sets the level of the "jira" logger (INFO) every time; keep the operator's.
            jira_log = logging.getLogger("jira")
            level = jira_log.level
            try:
                client = JIRA(
                    server=self.url,
                    max_retries=self._max_retries,
                    timeout=self._timeout,
                    get_server_info=True,
                    **auth,
                )
            finally:
                jira_log.setLevel(level)
            self._local.client = client
            with self._clients_lock:
                self._clients.append(client)
        return client

    async def _run(self, about: _About, fn: Callable[[Any], T]) -> T:
        """Run `fn(client)` on the pool; every failure becomes an AdapterError about `about`."""

        def work() -> T:
            return fn(self._client())

        try:
            return await self._pool.run(TOOL, work, timeout=self._timeout)
        except AdapterTimeout:
            raise self._timeout_error(about) from None
        except AdapterError:
            raise
        except Exception as exc:
            raise self._error(exc, about) from exc

    def shutdown(self) -> None:
        """Close the HTTP sessions of every client (call after the pool has stopped).

        Not `close`: that name belongs to the Tracker port (closing an issue)."""
        with self._clients_lock:
            clients, self._clients = self._clients, []
        for c in clients:
            c.close()

    @staticmethod
    def _cloud(client: Any) -> bool:
        return getattr(client, "deploymentType", None) == "Cloud"

    def _key(self, key: str) -> str:
        """`OPS-12`, `ops-12` or `12` (in the configured project) -> `OPS-12`; AdapterNotFound otherwise."""
        k = key.strip().upper()
        if k.isdigit():
            k = f"{self.project}-{int(k)}"
        if not _KEY.match(k):
            # Never put arbitrary text into a URL path: it is no key, so there is no such issue.
            raise AdapterNotFound(TOOL, f"no issue {key.strip()!r}: a Jira key looks like {self.project}-12")
        return k

    def _jira_user(self, slack_id: str) -> str:
        """The Jira user mapped to a Slack user, or an AdapterError saying where to map one."""
        found = self._users.get(slack_id)
        if not found:
            raise AdapterError(TOOL, f"no Jira user is mapped to <@{slack_id}>; add it under integrations.jira.users")
        return found

    def _user_ref(self, client: Any, jira_id: str) -> dict[str, str]:
        return {"accountId": jira_id} if self._cloud(client) else {"name": jira_id}

    def _person(self, user: Any) -> str | None:
        """A Jira user JSON -> the Slack id mapped to it, else its display name (None: nobody)."""
        if not isinstance(user, dict):
            return None
        for ident in (user.get("accountId"), user.get("name"), user.get("key")):
            if ident and ident in self._slack:
                return self._slack[ident]
        name = user.get("displayName") or user.get("name") or user.get("accountId")
        return str(name) if name else None

    def _item(self, raw: Mapping[str, Any], **changes: Any) -> PlanItem:
        """An issue's JSON (with FIELDS) -> PlanItem."""
        f: Mapping[str, Any] = raw.get("fields") or {}
        key = str(raw["key"])
        category = ((f.get("status") or {}).get("statusCategory") or {}).get("key")
        done = category == "done"
        priority = (f.get("priority") or {}).get("name")
        labels = f.get("labels") or []
        item = PlanItem(
            key=key,
            title=str(f.get("summary") or ""),
            status=ItemStatus.DONE if done else ItemStatus.OPEN,
            reporter=self._person(f.get("reporter")) or "unknown",
            assignee=self._person(f.get("assignee")),
            critical=priority == CRITICAL_PRIORITY or CRITICAL_LABEL in labels,
            created_at=_parse_time(f.get("created")) or datetime.fromtimestamp(0, tz=UTC),
            closed_at=_parse_time(f.get("resolutiondate")) if done else None,
            url=f"{self.url}/browse/{key}",
            tracker=self.name,
        )
        return replace(item, **changes) if changes else item

    # ------------------------------------------------------------------ errors

    def _error(self, exc: BaseException, about: _About) -> AdapterError:
        """Map jira / requests failures to the AdapterError family."""
        # ConnectTimeout is both a Timeout and a ConnectionError: treat it as the timeout it is.
        if isinstance(exc, requests.Timeout):
            return self._timeout_error(about)
        if isinstance(exc, requests.ConnectionError):
            return AdapterUnavailable(TOOL, f"cannot reach {self.url} ({_reason(exc)})")
        if isinstance(exc, JIRAError):
            if exc.status_code is None:  # raised by the client itself, not by an answer
                return AdapterError(TOOL, f"{exc.text or 'client error'} ({about.subject})")
            return self._http_error(exc.status_code, exc, about)
        # serverInfo without versionNumbers, a page without issues; JSON of another shape (a list where the
        # client reads an object's fields).
        if isinstance(exc, KeyError | AttributeError | TypeError):
            return AdapterError(TOOL, f"{self.url} answered something that is not Jira's API ({about.subject})")
        if isinstance(exc, ValueError):  # a JSON decode error: a proxy's or login page
            return AdapterError(
                TOOL, f"{self.url} answered something that is not JSON ({about.subject}); is it the Jira base URL?"
            )
        return AdapterError(TOOL, f"{type(exc).__name__}: {exc} ({about.subject})")

    def _timeout_error(self, about: _About) -> AdapterTimeout:
        note = f"; {about.after_timeout}" if about.after_timeout else ""
        return AdapterTimeout(TOOL, f"no answer from {self.url} within {self._timeout:g} s ({about.subject}){note}")

    def _http_error(self, status: int, exc: JIRAError, about: _About) -> AdapterError:
        # Never str(exc): JIRAError's text carries the request and response headers.
        detail = _messages(exc)
        if status == 401:
            who = self._user or "the personal access token"
            return AdapterError(TOOL, f"rejected the credentials of {who} (401; check the {self._token_env} variable)")
        if status == 403:
            who = self._user or "the personal access token's user"
            return AdapterError(TOOL, f"refused {about.subject} to {who} (403: {detail or 'forbidden'})")
        if status == 404:
            return AdapterNotFound(TOOL, about.missing)
        if status == 429:
            after = _retry_after(exc)
            wait = f"try again in {after} s" if after else "try again in a minute"
            return AdapterError(TOOL, f"is rate limiting opsloop (429) on {about.subject}; {wait}")
        if status == 409:
            return AdapterError(TOOL, f"is busy with another change of {about.subject} (409); try again")
        if status in (502, 503, 504):
            return AdapterUnavailable(TOOL, f"{self.url} answered {status} on {about.subject}; Jira may be restarting")
        if 400 <= status < 500:
            return AdapterError(TOOL, f"refused {about.subject} ({status}: {detail or 'bad request'})")
        return AdapterError(TOOL, f"answered {status} on {about.subject}" + (f": {detail}" if detail else ""))

    # ------------------------------------------------------------------ Tracker

    async def create(self, item: NewItem) -> PlanItem:
        """Create an issue in the project; the assignee is mapped from Slack, `critical` as documented."""
        assignee = self._jira_user(item.assignee) if item.assignee else None  # before any request
        title = " ".join(item.title.split())  # Jira refuses line breaks in a summary
        description = item.description
        if len(title) > SUMMARY_MAX:
            # Keep the whole title: the summary gets what fits, the description the rest.
            description = f"{title}\n\n{description}".strip()
            title = title[: SUMMARY_MAX - 1] + "…"
        about = _About(
            f"creating an issue in project {self.project}",
            f"no project {self.project} (or no issue type {self._issue_type!r} in it)",
            "the issue may have been created anyway: check the project before trying again",
        )

        def work(client: Any) -> dict[str, Any]:
            fields: dict[str, Any] = {
                "project": {"key": self.project},  # a dict, so the client skips its project lookups
                "issuetype": {"name": self._issue_type},
                "summary": title,
            }
            if description:
                fields["description"] = description  # API v2: a plain string, not ADF
            if assignee:
                fields["assignee"] = self._user_ref(client, assignee)
            by_priority = item.critical and not self._label_only and self._site_has_priority(client)
            if item.critical:
                fields.update(
                    {"priority": {"name": CRITICAL_PRIORITY}} if by_priority else {"labels": [CRITICAL_LABEL]}
                )
            try:
                return dict(client.create_issue(fields=fields).raw)
            except JIRAError as exc:
                if not (by_priority and exc.status_code == 400 and "priority" in _field_errors(exc)):
                    raise
            # The project's scheme or create screen refuses the priority (nothing was created).
            log.info(
                "Jira project %s refuses priority %s; marking critical issues by label", self.project, CRITICAL_PRIORITY
            )
            self._label_only = True
            del fields["priority"]
            fields["labels"] = [CRITICAL_LABEL]
            return dict(client.create_issue(fields=fields).raw)

        return self._item(await self._run(about, work))

    def _site_has_priority(self, client: Any) -> bool:
        if self._has_priority is None:
            names = {str(p.raw.get("name")) for p in client.priorities()}
            self._has_priority = CRITICAL_PRIORITY in names
        return self._has_priority

    async def get(self, key: str) -> PlanItem:
        """The issue, or AdapterNotFound."""
        k = self._key(key)
        raw = await self._run(_issue_about(k, "reading"), lambda c: c.issue(k, fields=",".join(FIELDS)).raw)
        return self._item(raw)

    async def list(self, which: ListFilter, user: str, limit: int = 20) -> Sequence[PlanItem]:
        """Open issues, the user's open issues, or all issues of the project; newest first."""
        clauses = [f"project = {_jql_value(self.project)}"]
        if which is not ListFilter.ALL:
            clauses.append("statusCategory != Done")
        if which is ListFilter.MINE:
            clauses.append(f"assignee = {_jql_value(self._jira_user(user))}")
        jql = " AND ".join(clauses) + " ORDER BY created DESC"
        if limit <= 0:
            return []
        about = _About(f"the search of project {self.project}", f"no project {self.project}")

        def work(client: Any) -> list[dict[str, Any]]:
            found: list[dict[str, Any]] = []
            if self._cloud(client):
                # Cloud: /search/jql pages with nextPageToken (the old /search answers 410 there).
                token: str | None = None
                while len(found) < limit:
                    page = client.enhanced_search_issues(
                        jql,
                        nextPageToken=token,
                        maxResults=min(limit - len(found), PAGE_MAX),
                        fields=list(FIELDS),  # a fresh list: the client rewrites it in place
                        json_result=True,
                    )
                    found.extend(_page_issues(page))
                    token = page.get("nextPageToken")
                    if not token or page.get("isLast"):
                        break
            else:
                # Server/DC: /search pages with startAt and reports the total.
                start = 0
                while len(found) < limit:
                    page = client.search_issues(
                        jql,
                        startAt=start,
                        maxResults=min(limit - len(found), PAGE_MAX),
                        fields=list(FIELDS),
                        json_result=True,
                    )
                    issues = _page_issues(page)
                    found.extend(issues)
                    start += len(issues)
                    if not issues or start >= int(page.get("total") or 0):
                        break
            return found[:limit]

        return [self._item(raw) for raw in await self._run(about, work)]

    async def assign(self, key: str, user: str) -> PlanItem:
        """Assign the issue to the Jira user mapped to a Slack user."""
        k = self._key(key)
        jira_id = self._jira_user(user)

        def work(client: Any) -> dict[str, Any]:
            # The dedicated endpoint needs only the "Assign Issues" permission (an edit would need the
            # field on the edit screen); see the module docstring for why not assign_issue().
            url = client._get_url(f"issue/{k}/assignee")
            client._session.put(url, data=json.dumps(self._user_ref(client, jira_id)))
            return dict(client.issue(k, fields=",".join(FIELDS)).raw)

        return self._item(await self._run(_issue_about(k, "assigning"), work))

    async def close(self, key: str, by: str) -> PlanItem:
        """Move the issue to done with the `done` transition (an issue already done is returned as is)."""
        k = self._key(key)

        def work(client: Any) -> tuple[dict[str, Any], bool]:
            raw = dict(client.issue(k, fields=",".join(FIELDS)).raw)
            if _category(raw) == "done":
                return raw, False
            status = ((raw.get("fields") or {}).get("status") or {}).get("name", "?")
            offered = client.transitions(k, expand="transitions.fields")
            chosen = _pick_transition(offered, self._done)
            if chosen is None:
                raise AdapterError(TOOL, _no_transition(k, self._done, status, offered))
            fields = _screen_fields(k, chosen)
            client.transition_issue(k, str(chosen["id"]), fields=fields)
            after = dict(client.issue(k, fields=",".join(FIELDS)).raw)
            if _category(after) != "done":
                now = ((after.get("fields") or {}).get("status") or {}).get("name", "?")
                raise AdapterError(
                    TOOL,
                    f"transition {chosen.get('name')!r} moved {k} to {now!r}, which Jira does not count as done;"
                    " set integrations.jira.done to the transition that finishes an issue",
                )
            return after, True

        raw, changed = await self._run(
            _issue_about(k, "closing", "the issue may have been closed anyway: check it before trying again"), work
        )
        if not changed:
            return self._item(raw)
        item = self._item(raw, closed_by=by)
        return item if item.closed_at else replace(item, closed_at=datetime.now(UTC))

    async def comment(self, key: str, text: str) -> str:
        """Add a comment (plain text: API v2); the comment's link."""
        k = self._key(key)

        def work(client: Any) -> str:
            return str(client.add_comment(k, text).raw.get("id", ""))

        comment_id = await self._run(_issue_about(k, "commenting on", "the comment may have been added anyway"), work)
        return f"{self.url}/browse/{k}?focusedCommentId={comment_id}"

    async def check(self) -> str:
        """Reach Jira; a line saying which Jira and who we are there."""

        def work(client: Any) -> str:
            me = client.myself()
            kind = getattr(client, "deploymentType", None) or "Server"
            return f"Jira {kind} at {self.url} as {me.get('displayName') or me.get('name') or '?'}"

        return await self._run(_About(f"the check of {self.url}", f"no Jira API at {self.url}"), work)


# --- helpers -------------------------------------------------------------------------------------------


def _jql_value(value: str) -> str:
    """A JQL string literal: accountIds contain `:` and names may contain spaces or quotes."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _parse_time(value: Any) -> datetime | None:
    """Jira's `2026-01-01T00:00:00.000+0000` (Python 3.11 reads the offset without a colon)."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return None


def _category(raw: Mapping[str, Any]) -> str | None:
    f = raw.get("fields") or {}
    key = ((f.get("status") or {}).get("statusCategory") or {}).get("key")
    return str(key) if key else None


def _pick_transition(offered: Sequence[Mapping[str, Any]], done: str) -> Mapping[str, Any] | None:
    """The transition named `done`, else the one leading to a status named `done` (case-insensitive)."""
    want = done.strip().lower()
    for t in offered:
        if str(t.get("name", "")).lower() == want:
            return t
    for t in offered:
        if str((t.get("to") or {}).get("name", "")).lower() == want:
            return t
    return None


def _no_transition(key: str, done: str, status: str, offered: Sequence[Mapping[str, Any]]) -> str:
    if not offered:
        return (
            f"cannot close {key}: no transitions are available from status {status!r}"
            " (does the account have the Transition Issues permission?)"
        )
    names = ", ".join(f"{t.get('name')!r} (to {(t.get('to') or {}).get('name', '?')})" for t in offered)
    return (
        f"cannot close {key}: no transition {done!r} from status {status!r}; available: {names}."
        " Set integrations.jira.done to one of them"
    )


def _screen_fields(key: str, transition: Mapping[str, Any]) -> dict[str, Any] | None:
    """Values for the required fields of a transition's screen (`expand=transitions.fields`)."""
    out: dict[str, Any] = {}
    missing: list[str] = []
    for fid, meta in (transition.get("fields") or {}).items():
        if not isinstance(meta, dict) or not meta.get("required") or meta.get("hasDefaultValue"):
            continue
        allowed = [v for v in meta.get("allowedValues") or [] if isinstance(v, dict)]
        if fid == "resolution" and allowed:
            # Classic Server workflows ask for a resolution on their "Done"/"Resolve" screens.
            best = next((v for v in allowed if str(v.get("name", "")).lower() == "done"), allowed[0])
            out[fid] = {"name": best["name"]} if "name" in best else {"id": best["id"]}
        else:
            missing.append(str(meta.get("name") or fid))
    if missing:
        raise AdapterError(
            TOOL,
            f"cannot close {key}: transition {transition.get('name')!r} requires {', '.join(missing)},"
            " which opsloop cannot fill in",
        )
    return out or None


def _page_issues(page: object) -> list[dict[str, Any]]:
    """The issues of one search page. A page without its `issues` list is not Jira answering (a proxy's
    page, an empty or cut-off body): reading it as "no issues" would hide the fault."""
    issues = page.get("issues") if isinstance(page, dict) else None
    if not isinstance(issues, list) or not all(isinstance(x, dict) for x in issues):
        raise AdapterError(TOOL, "answered the search with unexpected JSON (no list of issues)")
    return issues


def _body(exc: JIRAError) -> Mapping[str, Any]:
    response = getattr(exc, "response", None)
    if response is None:
        return {}
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _field_errors(exc: JIRAError) -> Mapping[str, Any]:
    errors = _body(exc).get("errors")
    return errors if isinstance(errors, dict) else {}


def _messages(exc: JIRAError) -> str:
    """Jira's error messages (`errorMessages` and `errors`), or the client's summary of them."""
    body = _body(exc)
    parts = [str(m) for m in body.get("errorMessages") or [] if m]
    parts += [f"{k}: {v}" for k, v in _field_errors(exc).items()]
    text = "; ".join(parts) or (exc.text or "")
    return text[:300]


def _retry_after(exc: JIRAError) -> int | None:
    response = getattr(exc, "response", None)
    raw = response.headers.get("Retry-After") if response is not None else None
    try:
        return max(1, int(raw)) if raw is not None else None
    except ValueError:
        return None


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
