"""A stateful Jira REST API v2 emulator for tests (Jira Cloud or Jira Server/Data Center).

One aiohttp server on 127.0.0.1 (port 0, read back) that answers the part of Jira's REST API v2 the
`jira` client (pycontribs, 3.10.x) uses for plan items: server info, the caller, fields, priorities,
projects, issues (create, read, assignee, transitions, comments) and JQL search. Facts come from the
reference sheet (``reference/operate-monitor-plan-apis.md`` section 0 item 18 and section 6.1) and
from ``pycontribs/jira@3.10.5 jira/client.py``.

Use::

    async with JiraEmulator(deployment="Cloud") as emu:
        emu.add_user("acc-alice", "Alice Doe")
        emu.add_project("OPS")
        issue = emu.add_issue("OPS", "Disk full on web01", assignee="acc-alice")
        client = JIRA(emu.url, basic_auth=(emu.user, emu.token), max_retries=0)

``deployment`` decides what differs between the two products:

* ``GET /rest/api/2/serverInfo`` reports ``deploymentType`` ``"Cloud"`` or ``"Server"`` (Data
  Center reports ``"Server"`` too); the client picks its search endpoint from it;
* search: Cloud serves ``/rest/api/2/search/jql`` with ``nextPageToken`` pagination and answers the
  old ``/rest/api/2/search`` with **410** (CHANGE-2046); Server serves ``/rest/api/2/search`` with
  ``startAt``/``maxResults``/``total`` and has no ``/search/jql`` (404). Cloud refuses a JQL query
  without any restriction (400, "Unbounded JQL queries are not allowed here") and returns only
  ``id`` for each issue unless ``fields`` are asked for, as the new endpoint does;
* users: Cloud identifies users by ``accountId`` (user JSON has ``accountId``, no ``name``), Server
  by user name (``name`` and a separate ``key`` such as ``JIRAUSER10100``). JQL values, issue
  ``assignee``/``reporter`` fields and the assignee PUT use that identifier: ``{"accountId": ...}``
  on Cloud, ``{"name": ...}`` on Server; the other shape is refused with 400 (the real Server would
  silently unassign on ``{"accountId": ...}``: the emulator is stricter on purpose);
* auth: Cloud takes only HTTP basic ``email:API token`` (``emu.user``/``emu.token``); Server takes
  a bearer personal access token (``emu.token``) or basic ``user name:password``
  (``emu.user``/``emu.password``). Wrong credentials -> 401 on every route (Cloud: text body
  "Client must be authenticated to access this resource."; Server: JSON ``errorMessages`` and
  ``X-Seraph-LoginReason: AUTHENTICATED_FAILED``). No credentials: only ``serverInfo`` answers,
  every other route is 401.

Strict where Jira is strict (every error has Jira's shape ``{"errorMessages": [...], "errors": {...}}``):

* unknown issue -> 404 "Issue does not exist or you do not have permission to see it."; unknown
  project -> 404 "No project could be found with key 'X'.";
* POST/PUT bodies must be ``Content-Type: application/json`` (415 otherwise);
* create: project, issue type and summary are required (400 with ``errors.<field>``); summary at
  most 255 characters and without line breaks; ``description`` must be a plain string (v2; an ADF
  document is refused); labels must not contain spaces; ``priority`` must be one of the site's
  priorities allowed in the project (``add_project(priorities=...)``), and a project created with
  ``priority_on_screen=False`` refuses any priority with "Field 'priority' cannot be set. It is not
  on the appropriate screen, or unknown.", as it does for any field it does not know;
* assignees must exist and be assignable (``add_user(assignable=False)``) -> 400 ``errors.assignee``;
* transitions are per status of a project's workflow (``EmuProject.workflow``: status name ->
  transitions; the key ``"*"`` holds global transitions, offered from every status except their
  target). The default is Jira's simplified workflow: global transitions ``11 To Do``,
  ``21 In Progress``, ``31 Done``. Posting a transition that is not offered from the issue's status
  -> 400 "Transition id '31' is not valid for this issue."; a transition with ``required`` fields
  (``EmuTransition(required=("resolution",))``) -> 400 ``errors.resolution`` "Resolution is
  required." unless the body sets it; fields the transition screen lacks are refused. Entering a
  status of category ``done`` sets ``resolution`` (the given one, else "Done") and
  ``resolutiondate``; leaving it clears both. ``GET .../transitions?expand=transitions.fields``
  describes the screen fields (``required``, ``allowedValues``);
* JQL: the subset the adapter uses, and a little more: clauses joined by ``AND`` of
  ``project``, ``status``, ``statusCategory``, ``assignee``, ``reporter``, ``priority``, ``labels``
  with ``=``, ``!=``, ``IN (...)``, ``NOT IN (...)``, ``IS [NOT] EMPTY``/``NULL``; values bare or
  quoted (``"..."``, ``'...'``, backslash escapes); ``currentUser()``; ``ORDER BY created|updated|key
  [ASC|DESC]``. Values must exist ("The value 'x' does not exist for the field 'assignee'.");
  anything else (``OR``, ``NOT``, parentheses, ``~``, ``>``, unknown fields, other sort keys) is a
  400 ``errorMessages`` answer rather than a silent wrong result.

Pagination: pages hold at most ``page_cap`` issues (default 50) whatever ``maxResults`` asks, as
Jira caps pages; a test sets ``page_cap`` low to make the client page. Cloud's ``nextPageToken`` is
bound to its query: a token from another query -> 400 "The provided next page token is invalid or
expired." (the emulator's wording).

Time: ``emu.now`` (UTC, starts 2026-01-01T00:00:00Z) is the clock of ``created``/``updated``/
``resolutiondate`` and comment times. Each new issue moves it by one second, so ``ORDER BY created``
is never a tie; ``advance(s)`` moves it by hand. Times are rendered as Jira does:
``2026-01-01T00:00:00.000+0000``.

Fault injection (routes: ``serverInfo``, ``myself``, ``field``, ``priority``, ``project``,
``create`` (POST issue), ``issue`` (GET issue), ``assignee``, ``transitions`` (GET),
``transition`` (POST), ``comment``, ``search``, ``search/jql`` or ``"*"``):

* ``fail_next(route, status=500, count=1, retry_after=None, message=None)``: Jira-shaped error
  answers (429 says "Rate limit exceeded." unless ``message`` is given; ``retry_after`` sets the
  ``Retry-After`` header);
* ``slow(route, seconds, count=None)``: delay answers; the request still takes effect afterwards
  even when the client gave up meanwhile (a timed-out create may have created the issue);
* ``down()`` / ``up()``: stop listening (connection refused) and cut kept-alive connections; ``up()``
  listens again on the same port with all state kept.

Records: ``emu.requests`` (every HTTP request: method, raw path, query, headers, JSON body, status,
route, authenticated user), ``emu.server_errors`` (emulator bugs, answered with 500), the objects
(``emu.issue(key)``, ``emu.project(key)``, ``emu.users``) and ``seen(route, method)``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hashlib
import itertools
import json
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote

from aiohttp import web

__all__ = [
    "EmuComment",
    "EmuIssue",
    "EmuProject",
    "EmuStatus",
    "EmuTransition",
    "EmuUser",
    "JiraEmulator",
    "Seen",
]

Json = dict[str, Any]
Deployment = Literal["Cloud", "Server"]

_CATEGORIES: dict[str, Json] = {
    "new": {"id": 2, "key": "new", "colorName": "blue-gray", "name": "To Do"},
    "indeterminate": {"id": 4, "key": "indeterminate", "colorName": "yellow", "name": "In Progress"},
    "done": {"id": 3, "key": "done", "colorName": "green", "name": "Done"},
}
_PRIORITIES = ("Highest", "High", "Medium", "Low", "Lowest")
_RESOLUTIONS = ("Done", "Won't Do", "Duplicate", "Cannot Reproduce")
# Fields the emulator knows: id -> (name, JQL clause names, navigable). `comment` is not navigable.
_FIELDS: dict[str, tuple[str, tuple[str, ...], bool]] = {
    "summary": ("Summary", ("summary",), True),
    "description": ("Description", ("description",), True),
    "status": ("Status", ("status",), True),
    "statuscategorychangedate": ("Status Category Changed", ("statusCategoryChangedDate",), True),
    "assignee": ("Assignee", ("assignee",), True),
    "reporter": ("Reporter", ("reporter",), True),
    "creator": ("Creator", ("creator",), True),
    "priority": ("Priority", ("priority",), True),
    "labels": ("Labels", ("labels",), True),
    "created": ("Created", ("created", "createdDate"), True),
    "updated": ("Updated", ("updated", "updatedDate"), True),
    "resolution": ("Resolution", ("resolution",), True),
    "resolutiondate": ("Resolved", ("resolutiondate", "resolved"), True),
    "project": ("Project", ("project",), True),
    "issuetype": ("Issue Type", ("issuetype", "type"), True),
    "comment": ("Comment", ("comment",), False),
}
# Fields a create screen offers (beyond the required project/issuetype/summary).
_CREATE_FIELDS = frozenset({"description", "assignee", "reporter", "priority", "labels"})
_UNAUTHENTICATED = "You are not authenticated. Authentication required to perform this operation."
_NO_ISSUE = "Issue does not exist or you do not have permission to see it."


def _jira_time(t: datetime | None) -> str | None:
    """Jira's timestamp format: milliseconds and a +hhmm offset without a colon."""
    if t is None:
        return None
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}" + t.strftime("%z")


# ----------------------------------------------------------------------------------------------
# Records visible to tests
# ----------------------------------------------------------------------------------------------


@dataclass
class Seen:
    """One HTTP request as the emulator received and answered it."""

    method: str
    path: str  # raw path, still percent-encoded
    query: dict[str, str]  # a repeated parameter (fields=a&fields=b) is joined with ","
    headers: dict[str, str]
    body: Any
    status: int = 0
    route: str = ""
    user: str | None = None  # the authenticated user's id, None when refused or anonymous


@dataclass
class EmuUser:
    """A Jira user: ``id`` is the accountId (Cloud) or the user name (Server)."""

    id: str
    display_name: str
    email: str | None = None
    key: str = ""  # Server's user key (JIRAUSER1xxxx); unused on Cloud
    assignable: bool = True
    active: bool = True


@dataclass(frozen=True)
class EmuStatus:
    id: str
    name: str
    category: str  # new | indeterminate | done


@dataclass(frozen=True)
class EmuTransition:
    """A workflow transition to status ``to``; ``required`` names fields its screen requires."""

    id: str
    name: str
    to: str
    required: tuple[str, ...] = ()


@dataclass
class EmuProject:
    id: str
    key: str
    name: str
    issue_types: dict[str, str]  # name -> id
    priorities: tuple[str, ...] | None = None  # None: every site priority
    priority_on_screen: bool = True
    workflow: dict[str, list[EmuTransition]] = field(default_factory=dict)
    next_number: int = 1


@dataclass
class EmuComment:
    id: str
    author: str
    body: str
    created: datetime


@dataclass
class EmuIssue:
    id: str
    key: str
    project: EmuProject
    issue_type: str
    summary: str
    status: str
    reporter: str
    created: datetime
    updated: datetime
    description: str | None = None
    assignee: str | None = None
    priority: str | None = "Medium"
    labels: list[str] = field(default_factory=list)
    resolution: str | None = None
    resolution_date: datetime | None = None
    status_changed: datetime | None = None
    comments: list[EmuComment] = field(default_factory=list)
    transitions_done: list[str] = field(default_factory=list)  # names of the transitions applied


@dataclass
class _Fault:
    status: int
    message: str
    retry_after: int | None
    remaining: int


@dataclass
class _Slow:
    seconds: float
    remaining: int | None


class _Error(Exception):
    """A Jira-shaped error answer."""

    def __init__(
        self,
        status: int,
        messages: Iterable[str] = (),
        errors: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.status = status
        self.body: Json = {"errorMessages": list(messages), "errors": dict(errors or {})}
        self.headers = headers or {}
        super().__init__(f"{status}: {self.body}")


class _JqlError(_Error):
    def __init__(self, message: str) -> None:
        super().__init__(400, [message])


# ----------------------------------------------------------------------------------------------
# JQL (the subset documented in the module docstring)
# ----------------------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
      | (?P<op>!=|!~|>=|<=|=|~|>|<)
      | (?P<punct>[(),])
      | (?P<word>[^\s"'(),=!<>~]+)
    )""",
    re.X,
)
_JQL_FIELDS = {
    "project": "project",
    "status": "status",
    "statuscategory": "statusCategory",
    "assignee": "assignee",
    "reporter": "reporter",
    "priority": "priority",
    "labels": "labels",
}
_SORT_FIELDS = {"created": "created", "updated": "updated", "key": "key", "issuekey": "key"}


@dataclass(frozen=True)
class _Tok:
    kind: str  # str | op | punct | word
    text: str
    pos: int

    @property
    def upper(self) -> str:
        return self.text.upper() if self.kind == "word" else ""


@dataclass(frozen=True)
class _Clause:
    field: str  # canonical JQL name
    op: str  # = | != | in | not in | is | is not
    values: tuple[str | None, ...]  # None stands for EMPTY


@dataclass(frozen=True)
class _Query:
    clauses: tuple[_Clause, ...]
    order: tuple[tuple[str, bool], ...]  # (field, descending)


def _tokens(jql: str) -> list[_Tok]:
    out: list[_Tok] = []
    pos = 0
    while pos < len(jql):
        if jql[pos:].strip() == "":
            break
        m = _TOKEN.match(jql, pos)
        if m is None or m.end() == pos:
            char = jql[pos:].lstrip()[:1]
            raise _JqlError(f"Error in the JQL Query: The character '{char}' is a reserved JQL character.")
        kind = m.lastgroup or "word"
        text = m.group(kind)
        if kind == "str":
            text = re.sub(r"\\(.)", r"\1", text[1:-1])
        out.append(_Tok(kind, text, m.start(kind)))
        pos = m.end()
    return out


def _parse_jql(jql: str, current_user: str) -> _Query:
    toks = _tokens(jql)
    i = 0

    def peek() -> _Tok | None:
        return toks[i] if i < len(toks) else None

    def take(what: str) -> _Tok:
        nonlocal i
        t = peek()
        if t is None:
            raise _JqlError(f"Error in the JQL Query: Expecting {what} but got the end of the query.")
        i += 1
        return t

    def unsupported(t: _Tok) -> _JqlError:
        return _JqlError(
            f"Error in the JQL Query: the emulator does not understand '{t.text}' (at character {t.pos + 1})."
        )

    def value() -> str | None:
        t = take("a value")
        if t.kind == "str":
            return t.text
        if t.kind != "word":
            raise _JqlError(f"Error in the JQL Query: Expecting a value but got '{t.text}'.")
        nxt = peek()
        if nxt is not None and nxt.kind == "punct" and nxt.text == "(":
            take("(")
            close = take("')'")
            if close.text != ")" or t.text.lower() != "currentuser":
                raise unsupported(t)
            return current_user
        if t.upper in ("EMPTY", "NULL"):
            return None
        return t.text

    clauses: list[_Clause] = []
    order: list[tuple[str, bool]] = []
    while peek() is not None:
        t = take("a field")
        if t.upper == "ORDER":
            if take("'by'").upper != "BY":
                raise _JqlError("Error in the JQL Query: Expecting 'by' after 'order'.")
            while True:
                f = take("a field to sort by")
                name = _SORT_FIELDS.get(f.text.lower())
                if name is None:
                    raise _JqlError(f"Not able to sort using field '{f.text}'.")
                desc = False
                nxt = peek()
                if nxt is not None and nxt.upper in ("ASC", "DESC"):
                    desc = take("a direction").upper == "DESC"
                order.append((name, desc))
                nxt = peek()
                if nxt is None:
                    break
                if nxt.kind == "punct" and nxt.text == ",":
                    take(",")
                    continue
                raise unsupported(nxt)
            break
        if clauses:
            if t.upper != "AND":
                raise unsupported(t)
            t = take("a field")
        if t.kind not in ("word", "str") or t.upper in ("OR", "NOT", "AND"):
            raise unsupported(t)
        name = _JQL_FIELDS.get(t.text.lower())
        if name is None:
            raise _JqlError(f"Field '{t.text}' does not exist or you do not have permission to view it.")
        op_tok = take("an operator")
        if op_tok.kind == "op" and op_tok.text in ("=", "!="):
            clauses.append(_Clause(name, op_tok.text, (value(),)))
        elif op_tok.upper == "IS":
            nxt = peek()
            negate = nxt is not None and nxt.upper == "NOT"
            if negate:
                take("NOT")
            v = take("EMPTY")
            if v.upper not in ("EMPTY", "NULL"):
                raise _JqlError(f"Error in the JQL Query: Expecting EMPTY or NULL after IS but got '{v.text}'.")
            clauses.append(_Clause(name, "is not" if negate else "is", (None,)))
        elif op_tok.upper in ("IN", "NOT"):
            negate = op_tok.upper == "NOT"
            if negate and take("IN").upper != "IN":
                raise unsupported(op_tok)
            if take("'('").text != "(":
                raise _JqlError("Error in the JQL Query: Expecting '(' after IN.")
            values: list[str | None] = []
            while True:
                values.append(value())
                sep = take("',' or ')'")
                if sep.text == ")":
                    break
                if sep.text != ",":
                    raise unsupported(sep)
            clauses.append(_Clause(name, "not in" if negate else "in", tuple(values)))
        else:
            raise unsupported(op_tok)
    return _Query(tuple(clauses), tuple(order))


# ----------------------------------------------------------------------------------------------
# The emulator
# ----------------------------------------------------------------------------------------------

Handler = Callable[[web.Request, list[str], Any], Awaitable[web.StreamResponse]]


class JiraEmulator:
    """See the module docstring. Use ``async with JiraEmulator(deployment=...) as emu:``."""

    def __init__(
        self,
        *,
        deployment: Deployment = "Cloud",
        user: str | None = None,
        token: str = "jira-test-token",
        password: str = "jira-test-password",
        bot_id: str | None = None,
        page_cap: int = 50,
        start: datetime = datetime(2026, 1, 1, tzinfo=UTC),
    ) -> None:
        if deployment not in ("Cloud", "Server"):
            raise ValueError(f"deployment is Cloud or Server, not {deployment!r}")
        self.deployment: Deployment = deployment
        self.cloud = deployment == "Cloud"
        # Cloud: the account's email; Server: the user name (basic auth with `password`).
        self.user = user or ("opsloop-bot@example.com" if self.cloud else "opsloop")
        self.token = token  # Cloud API token; Server personal access token (bearer)
        self.password = password  # Server basic auth only
        self.page_cap = page_cap
        self.now = start

        self.port = 0
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._down = False

        self.priorities: list[str] = list(_PRIORITIES)
        self.resolutions: list[str] = list(_RESOLUTIONS)
        self.statuses: dict[str, EmuStatus] = {}
        defaults = (("10000", "To Do", "new"), ("3", "In Progress", "indeterminate"), ("10001", "Done", "done"))
        for sid, name, cat in defaults:
            self.statuses[name.lower()] = EmuStatus(sid, name, cat)
        self.users: dict[str, EmuUser] = {}
        self._user_keys = itertools.count(10100)
        self.projects: dict[str, EmuProject] = {}
        self._project_ids = itertools.count(10000)
        self.issues: dict[str, EmuIssue] = {}  # issue id -> issue
        self._issue_ids = itertools.count(10001)
        self._comment_ids = itertools.count(10100)

        self.bot = self.add_user(
            bot_id or ("712020:opsloop-bot" if self.cloud else self.user),
            "opsloop bot",
            email=self.user if self.cloud else f"{self.user}@example.com",
        )

        self.requests: list[Seen] = []
        self.server_errors: list[str] = []
        self._faults: dict[str, list[_Fault]] = {}
        self._slow: dict[str, _Slow] = {}

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> JiraEmulator:
        """Listen on 127.0.0.1 on a free port (read back into ``port``)."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # A short shutdown: handlers held by ``slow`` are cut off instead of delaying ``stop``.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await self._site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        """Stop the server."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            self._site = None

    async def __aenter__(self) -> JiraEmulator:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        """The site's base URL, as configured in ``integrations.jira.url``."""
        if not self.port:
            raise RuntimeError("JiraEmulator is not started")
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ set-up

    def add_user(
        self, user_id: str, display_name: str, *, email: str | None = None, assignable: bool = True
    ) -> EmuUser:
        """Add a user; ``user_id`` is the accountId (Cloud) or user name (Server)."""
        key = f"JIRAUSER{next(self._user_keys)}"
        user = EmuUser(user_id, display_name, email=email, key=key, assignable=assignable)
        self.users[user_id] = user
        return user

    def add_status(self, name: str, category: str, status_id: str | None = None) -> EmuStatus:
        """Add a workflow status of category ``new``, ``indeterminate`` or ``done``."""
        if category not in _CATEGORIES:
            raise ValueError(f"a status category is one of {sorted(_CATEGORIES)}, not {category!r}")
        status = EmuStatus(status_id or str(20000 + len(self.statuses)), name, category)
        self.statuses[name.lower()] = status
        return status

    def add_project(
        self,
        key: str,
        *,
        name: str | None = None,
        issue_types: Iterable[str] = ("Task", "Bug", "Story"),
        priorities: Iterable[str] | None = None,
        priority_on_screen: bool = True,
        workflow: dict[str, list[EmuTransition]] | None = None,
    ) -> EmuProject:
        """Add a project. ``priorities``: the priorities its scheme allows (None: all of the site's)."""
        types = {t: str(10000 + i) for i, t in enumerate(issue_types)}
        project = EmuProject(
            id=str(next(self._project_ids)),
            key=key,
            name=name or f"{key} project",
            issue_types=types,
            priorities=None if priorities is None else tuple(priorities),
            priority_on_screen=priority_on_screen,
            workflow=workflow
            if workflow is not None
            else {
                "*": [
                    EmuTransition("11", "To Do", "To Do"),
                    EmuTransition("21", "In Progress", "In Progress"),
                    EmuTransition("31", "Done", "Done"),
                ]
            },
        )
        self.projects[key.upper()] = project
        return project

    def project(self, key: str) -> EmuProject:
        """The project with that key (KeyError if none)."""
        return self.projects[key.upper()]

    def add_issue(
        self,
        project: str,
        summary: str,
        *,
        status: str = "To Do",
        assignee: str | None = None,
        reporter: str | None = None,
        priority: str | None = "Medium",
        labels: Iterable[str] = (),
        description: str | None = None,
        issue_type: str = "Task",
    ) -> EmuIssue:
        """Seed an issue (no validation beyond names existing); the clock moves one second."""
        p = self.project(project)
        st = self.statuses[status.lower()]
        for who in (assignee, reporter):
            if who is not None and who not in self.users:
                raise KeyError(f"no user {who!r}: add_user first")
        issue = self._new_issue(p, issue_type, summary, reporter or self.bot.id)
        issue.description = description
        issue.assignee = assignee
        issue.priority = priority
        issue.labels = list(labels)
        self._set_status(issue, st, None)
        self.now += timedelta(seconds=1)  # the next issue is newer: ORDER BY created never ties
        return issue

    def issue(self, key: str) -> EmuIssue:
        """The issue with that key or id (KeyError if none)."""
        found = self._find_issue(key)
        if found is None:
            raise KeyError(key)
        return found

    def advance(self, seconds: float) -> None:
        """Move the clock."""
        self.now += timedelta(seconds=seconds)

    def _new_issue(self, p: EmuProject, issue_type: str, summary: str, reporter: str) -> EmuIssue:
        issue = EmuIssue(
            id=str(next(self._issue_ids)),
            key=f"{p.key}-{p.next_number}",
            project=p,
            issue_type=issue_type,
            summary=summary,
            status=self._initial_status(p).name,
            reporter=reporter,
            created=self.now,
            updated=self.now,
            status_changed=self.now,
        )
        p.next_number += 1
        self.issues[issue.id] = issue
        return issue

    def _initial_status(self, p: EmuProject) -> EmuStatus:
        return self.statuses["to do"]

    def _set_status(self, issue: EmuIssue, status: EmuStatus, resolution: str | None) -> None:
        was_done = self.statuses[issue.status.lower()].category == "done"
        issue.status = status.name
        issue.updated = self.now
        if status.category == "done":
            if not was_done or resolution:
                issue.resolution = resolution or "Done"
                issue.resolution_date = self.now
        else:
            issue.resolution = None
            issue.resolution_date = None
        if was_done != (status.category == "done") or issue.status_changed is None:
            issue.status_changed = self.now

    def _find_issue(self, key_or_id: str) -> EmuIssue | None:
        if key_or_id in self.issues:
            return self.issues[key_or_id]
        # Keys are case-insensitive in the REST API (/issue/ops-1 finds OPS-1).
        want = key_or_id.upper()
        return next((i for i in self.issues.values() if i.key == want), None)

    # ------------------------------------------------------------------ faults

    def fail_next(
        self,
        route: str = "*",
        *,
        status: int = 500,
        count: int = 1,
        retry_after: int | None = None,
        message: str | None = None,
    ) -> None:
        """The next ``count`` requests to ``route`` answer ``status`` with a Jira error body."""
        text = message or ("Rate limit exceeded." if status == 429 else f"emulated {status}")
        self._faults.setdefault(route, []).append(_Fault(status, text, retry_after, count))

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

    # ------------------------------------------------------------------ assertion helpers

    def seen(self, route: str | None = None, method: str | None = None) -> list[Seen]:
        """Logged requests, optionally only those of one route and/or method."""
        return [
            s for s in self.requests if (route is None or s.route == route) and (method is None or s.method == method)
        ]

    # ------------------------------------------------------------------ JSON shapes

    def _user_json(self, user_id: str | None, *, me: bool = False) -> Json | None:
        if user_id is None:
            return None
        u = self.users[user_id]
        if self.cloud:
            out: Json = {
                "self": f"{self.url}/rest/api/2/user?accountId={u.id}",
                "accountId": u.id,
                "accountType": "atlassian",
                "displayName": u.display_name,
                "active": u.active,
                "timeZone": "Etc/UTC",
            }
            if me and u.email:  # Cloud hides other people's email addresses by default
                out["emailAddress"] = u.email
            return out
        return {
            "self": f"{self.url}/rest/api/2/user?username={u.id}",
            "name": u.id,
            "key": u.key,
            "emailAddress": u.email or "",
            "displayName": u.display_name,
            "active": u.active,
            "timeZone": "Etc/UTC",
        }

    def _status_json(self, name: str) -> Json:
        s = self.statuses[name.lower()]
        cat = _CATEGORIES[s.category]
        return {
            "self": f"{self.url}/rest/api/2/status/{s.id}",
            "description": "",
            "name": s.name,
            "id": s.id,
            "statusCategory": {"self": f"{self.url}/rest/api/2/statuscategory/{cat['id']}", **cat},
        }

    def _priority_json(self, name: str) -> Json:
        pid = str(self.priorities.index(name) + 1) if name in self.priorities else "0"
        return {"self": f"{self.url}/rest/api/2/priority/{pid}", "name": name, "id": pid}

    def _project_json(self, p: EmuProject) -> Json:
        return {
            "self": f"{self.url}/rest/api/2/project/{p.id}",
            "id": p.id,
            "key": p.key,
            "name": p.name,
            "projectTypeKey": "software",
            "issueTypes": [self._issue_type_json(p, n) for n in p.issue_types],
        }

    def _issue_type_json(self, p: EmuProject, name: str) -> Json:
        tid = p.issue_types[name]
        return {"self": f"{self.url}/rest/api/2/issuetype/{tid}", "id": tid, "name": name, "subtask": False}

    def _comment_json(self, issue: EmuIssue, c: EmuComment) -> Json:
        author = self._user_json(c.author)
        return {
            "self": f"{self.url}/rest/api/2/issue/{issue.id}/comment/{c.id}",
            "id": c.id,
            "author": author,
            "body": c.body,
            "updateAuthor": author,
            "created": _jira_time(c.created),
            "updated": _jira_time(c.created),
        }

    def _all_fields(self, issue: EmuIssue) -> Json:
        return {
            "summary": issue.summary,
            "description": issue.description,
            "status": self._status_json(issue.status),
            "statuscategorychangedate": _jira_time(issue.status_changed),
            "assignee": self._user_json(issue.assignee),
            "reporter": self._user_json(issue.reporter),
            "creator": self._user_json(issue.reporter),
            "priority": self._priority_json(issue.priority) if issue.priority else None,
            "labels": list(issue.labels),
            "created": _jira_time(issue.created),
            "updated": _jira_time(issue.updated),
            "resolution": {"name": issue.resolution} if issue.resolution else None,
            "resolutiondate": _jira_time(issue.resolution_date),
            "project": {k: v for k, v in self._project_json(issue.project).items() if k != "issueTypes"},
            "issuetype": self._issue_type_json(issue.project, issue.issue_type),
            "comment": {
                "comments": [self._comment_json(issue, c) for c in issue.comments],
                "maxResults": len(issue.comments),
                "total": len(issue.comments),
                "startAt": 0,
            },
        }

    def _issue_json(self, issue: EmuIssue, wanted: set[str] | None) -> Json:
        """The issue with the fields in ``wanted``; None: the id alone (Cloud's search without ``fields``)."""
        if wanted is None:
            return {"id": issue.id}
        every = self._all_fields(issue)
        return {
            "expand": "renderedFields,names,schema,operations,editmeta,changelog,versionedRepresentations",
            "id": issue.id,
            "self": f"{self.url}/rest/api/2/issue/{issue.id}",
            "key": issue.key,
            "fields": {k: v for k, v in every.items() if k in wanted},
        }

    @staticmethod
    def _wanted_fields(raw: str) -> set[str]:
        """Jira's ``fields`` parameter: field ids, ``*all``, ``*navigable`` and ``-id`` to leave one out."""
        spec = [s.strip() for s in raw.split(",") if s.strip()]
        wanted: set[str] = set()
        for s in spec:
            if s == "*all":
                wanted |= set(_FIELDS)
            elif s == "*navigable":
                wanted |= {k for k, (_, _, nav) in _FIELDS.items() if nav}
            elif s in _FIELDS:
                wanted.add(s)
            # Unknown names (and "id", "key") are ignored, as Jira does.
        for s in spec:
            if s.startswith("-"):
                wanted.discard(s[1:])
        return wanted

    # ------------------------------------------------------------------ HTTP

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self._down:
            # Kept-alive connections survive a closed listening socket; cut them like a dead host.
            if request.transport is not None:
                request.transport.close()
            raise web.HTTPServiceUnavailable()
        raw_path = request.raw_path.split("?", 1)[0]
        pairs = parse_qsl(request.rel_url.raw_query_string, keep_blank_values=True)
        query: dict[str, str] = {}
        for k, v in pairs:
            query[k] = f"{query[k]},{v}" if k in query else v
        body: Any = None
        raw = await request.read()
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode("utf-8", "replace")
        seen = Seen(request.method, raw_path, query, dict(request.headers), body)
        self.requests.append(seen)
        try:
            route, handler, args = self._resolve(request.method, raw_path)
            seen.route = route
            seen.user = self._authenticate(request, route)
            slow = self._take_slow(route)
            if slow is not None:
                await asyncio.sleep(slow.seconds)
            fault = self._take_fault(route)
            if fault is not None:
                headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
                raise _Error(fault.status, [fault.message], headers=headers)
            if request.method in ("POST", "PUT") and not request.content_type.startswith("application/json"):
                raise _Error(415, [f"Unsupported Media Type: {request.content_type or 'none'}"])
            response = await handler(request, args, body)
        except _Unauthorized as err:
            response = err.response
        except _Error as err:
            response = web.json_response(err.body, status=err.status, headers=err.headers)
        except Exception as err:  # an emulator bug: answer 500 and keep it for the test to see
            self.server_errors.append(f"{request.method} {raw_path}: {type(err).__name__}: {err}")
            response = web.json_response({"errorMessages": ["emulator error"], "errors": {}}, status=500)
        seen.status = response.status
        return response

    def _resolve(self, method: str, raw_path: str) -> tuple[str, Handler, list[str]]:
        parts = [unquote(p) for p in raw_path.split("/") if p]
        # /rest/api/2/... (and /rest/api/latest/..., the same API); v3 is not emulated.
        if len(parts) < 4 or parts[:2] != ["rest", "api"] or parts[2] not in ("2", "latest"):
            raise _Error(404, [f"null for uri: {raw_path}"])
        rest = parts[3:]
        table: list[tuple[str, tuple[str, ...], str, Handler]] = [
            ("GET", ("serverInfo",), "serverInfo", self._server_info),
            ("GET", ("myself",), "myself", self._myself),
            ("GET", ("field",), "field", self._fields),
            ("GET", ("priority",), "priority", self._priorities),
            ("GET", ("project",), "project", self._projects),
            ("GET", ("project", "*"), "project", self._project),
            ("POST", ("issue",), "create", self._create),
            ("GET", ("issue", "*"), "issue", self._get_issue),
            ("PUT", ("issue", "*", "assignee"), "assignee", self._assign),
            ("GET", ("issue", "*", "transitions"), "transitions", self._transitions),
            ("POST", ("issue", "*", "transitions"), "transition", self._transition),
            ("GET", ("issue", "*", "comment"), "comment", self._comments),
            ("POST", ("issue", "*", "comment"), "comment", self._add_comment),
            ("GET", ("search",), "search", self._search),
            ("POST", ("search",), "search", self._search),
            ("GET", ("search", "jql"), "search/jql", self._search_jql),
            ("POST", ("search", "jql"), "search/jql", self._search_jql),
        ]
        path_matched = False
        for m, pattern, route, handler in table:
            if len(pattern) != len(rest) or any(p != "*" and p != r for p, r in zip(pattern, rest, strict=True)):
                continue
            path_matched = True
            if m == method:
                return route, handler, [r for p, r in zip(pattern, rest, strict=True) if p == "*"]
        if path_matched:
            raise _Error(405, [f"Method {method} is not allowed for {raw_path}"])
        raise _Error(404, [f"null for uri: {raw_path}"])

    def _authenticate(self, request: web.Request, route: str) -> str | None:
        header = request.headers.get("Authorization", "")
        scheme, _, cred = header.partition(" ")
        ok = False
        if scheme.lower() == "basic":
            try:
                user, _, secret = base64.b64decode(cred, validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                user, secret = "", ""
            if self.cloud:
                ok = user.lower() == self.user.lower() and secret == self.token
            else:
                ok = user == self.user and secret == self.password
        elif scheme.lower() == "bearer":
            # Cloud API tokens are not bearer tokens; Server/DC personal access tokens are.
            ok = not self.cloud and cred == self.token
        elif not header and route == "serverInfo":
            return None  # serverInfo answers anonymous callers
        if ok:
            return self.bot.id
        raise _Unauthorized(self.cloud, basic=scheme.lower() == "basic")

    def _issue_or_404(self, key: str) -> EmuIssue:
        issue = self._find_issue(key)
        if issue is None:
            raise _Error(404, [_NO_ISSUE])
        return issue

    # ------------------------------------------------------------------ routes: site

    async def _server_info(self, request: web.Request, args: list[str], body: Any) -> web.StreamResponse:
        if self.cloud:
            info: Json = {"version": "1001.0.0-SNAPSHOT", "versionNumbers": [1001, 0, 0], "buildNumber": 100289}
        else:
            info = {"version": "9.12.2", "versionNumbers": [9, 12, 2], "buildNumber": 9120002}
        return web.json_response(
            {
                "baseUrl": self.url,
                **info,
                "deploymentType": self.deployment,
                "buildDate": "2026-01-01T00:00:00.000+0000",
                "serverTime": _jira_time(self.now),
                "scmInfo": "0" * 40,
                "serverTitle": "Jira",
            }
        )

    async def _myself(self, request: web.Request, args: list[str], body: Any) -> web.StreamResponse:
        return web.json_response(self._user_json(self.bot.id, me=True))

    async def _fields(self, request: web.Request, args: list[str], body: Any) -> web.StreamResponse:
        return web.json_response(
            [
                {
                    "id": fid,
                    "key": fid,
                    "name": name,
                    "custom": False,
                    "orderable": fid not in ("status", "created", "updated", "resolutiondate", "creator"),
                    "navigable": nav,
                    "searchable": True,
                    "clauseNames": list(clauses),
                    "schema": {"type": "string", "system": fid},
                }
                for fid, (name, clauses, nav) in _FIELDS.items()
            ]
        )

    async def _priorities(self, request: web.Request, args: list[str], body: Any) -> web.StreamResponse:
        return web.json_response(
            [{**self._priority_json(n), "statusColor": "#cccccc", "description": n} for n in self.priorities]
        )

    async def _projects(self, request: web.Request, args: list[str], body: Any) -> web.StreamResponse:
        return web.json_response([self._project_json(p) for p in self.projects.values()])

    async def _project(self, request: web.Request, args: list[str], body: Any) -> web.StreamResponse:
        key = args[0]
        p = self.projects.get(key.upper()) or next((p for p in self.projects.values() if p.id == key), None)
        if p is None:
            raise _Error(404, [f"No project could be found with key '{key}'."])
        return web.json_response(self._project_json(p))

    # ------------------------------------------------------------------ routes: issues

    async def _get_issue(self, request: web.Request, args: list[str], body: Any) -> web.StreamResponse:
        issue = self._issue_or_404(args[0])
        wanted = self._wanted_fields(self._fields_param(request) or "*all")
        return web.json_response(self._issue_json(issue, wanted))

    @staticmethod
    def _fields_param(request: web.Request) -> str | None:
        values = request.rel_url.query.getall("fields", [])
        return ",".join(values) if values else None

    def _user_ref(self, value: Any, what: str) -> str | None:
        """The user id in an assignee/reporter value of the deployment's shape (None: nobody)."""
        if value is None:
            return None
        id_key, other = ("accountId", "name") if self.cloud else ("name", "accountId")
        if not isinstance(value, dict) or (other in value and id_key not in value):
            raise _Error(400, errors={what: f"Specify the user by '{id_key}' ({self.deployment})."})
        uid = value.get(id_key)
        if uid is None:
            return None
        if not isinstance(uid, str) or uid not in self.users:
            raise _Error(400, errors={what: f"User '{uid}' does not exist."})
        return uid

    async def _create(self, request: web.Request, args: list[str], body: Any) -> web.StreamResponse:
        if not isinstance(body, dict) or not isinstance(body.get("fields"), dict):
            raise _Error(400, ["Can not deserialize instance of issue: expected an object with `fields`."])
        f: Json = body["fields"]
        errors: dict[str, str] = {}
        p: EmuProject | None = None
        proj = f.get("project")
        if isinstance(proj, dict):
            if "key" in proj:
                p = self.projects.get(str(proj["key"]).upper())
            elif "id" in proj:
                p = next((x for x in self.projects.values() if x.id == str(proj["id"])), None)
        if p is None:
            errors["project"] = "Specify a valid project ID or key"
        itype: str | None = None
        it = f.get("issuetype")
        if p is not None and isinstance(it, dict):
            if "name" in it and it["name"] in p.issue_types:
                itype = str(it["name"])
            elif "id" in it:
                itype = next((n for n, i in p.issue_types.items() if i == str(it["id"])), None)
        if itype is None:
            errors["issuetype"] = "Specify an issue type"
        summary = f.get("summary")
        if not isinstance(summary, str) or not summary.strip():
            errors["summary"] = "You must specify a summary of the issue."
        elif len(summary) > 255:
            errors["summary"] = "Summary must be less than 255 characters."
        elif "\n" in summary or "\r" in summary:
            errors["summary"] = "The summary is invalid because it contains newline characters."
        description = f.get("description")
        if description is not None and not isinstance(description, str):
            errors["description"] = "Operation value must be a string"
        labels = f.get("labels", [])
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            errors["labels"] = "Operation value must be an array of strings"
        else:
            bad = next((x for x in labels if " " in x or not x), None)
            if bad is not None:
                errors["labels"] = f"The label '{bad}' contains spaces which is invalid."
        priority: str | None = "Medium"
        if "priority" in f:
            pr = f["priority"]
            name = pr.get("name") if isinstance(pr, dict) else None
            if isinstance(pr, dict) and name is None and "id" in pr:
                idx = int(pr["id"]) - 1 if str(pr["id"]).isdigit() else -1
                name = self.priorities[idx] if 0 <= idx < len(self.priorities) else None
            if p is not None and not p.priority_on_screen:
                errors["priority"] = "Field 'priority' cannot be set. It is not on the appropriate screen, or unknown."
            elif name not in self.priorities or (p is not None and name not in (p.priorities or self.priorities)):
                errors["priority"] = "Specify a valid 'id' or 'name' for Priority"
            else:
                priority = name
        for name in f:
            if name not in _CREATE_FIELDS | {"project", "issuetype", "summary"}:
                errors[name] = f"Field '{name}' cannot be set. It is not on the appropriate screen, or unknown."
        assignee = reporter = None
        try:
            assignee = self._user_ref(f.get("assignee"), "assignee")
            if assignee is not None and not self.users[assignee].assignable:
                errors["assignee"] = f"User '{assignee}' cannot be assigned issues."
            reporter = self._user_ref(f.get("reporter"), "reporter")
        except _Error as err:
            errors.update(err.body["errors"])
        if errors:
            raise _Error(400, errors=errors)
        assert p is not None and itype is not None and isinstance(summary, str)
        issue = self._new_issue(p, itype, summary, reporter or self.bot.id)
        issue.description = description
        issue.assignee = assignee
        issue.priority = priority
        issue.labels = list(labels)
        self.now += timedelta(seconds=1)  # the next issue is newer: ORDER BY created never ties
        return web.json_response(
            {"id": issue.id, "key": issue.key, "self": f"{self.url}/rest/api/2/issue/{issue.id}"}, status=201
        )

    async def _assign(self, request: web.Request, args: list[str], body: Any) -> web.StreamResponse:
        issue = self._issue_or_404(args[0])
        if not isinstance(body, dict):
            raise _Error(400, ["Can not deserialize the assignee: expected an object."])
        uid = self._user_ref(body, "assignee")
        if uid is not None and not self.users[uid].assignable:
            raise _Error(400, errors={"assignee": f"User '{uid}' cannot be assigned issues."})
        issue.assignee = uid
        issue.updated = self.now
        return web.Response(status=204)

    def _available(self, issue: EmuIssue) -> list[EmuTransition]:
        wf = issue.project.workflow
        here = issue.status.lower()
        own = [t for t in wf.get(issue.status, wf.get(here, []))]
        global_ = [t for t in wf.get("*", []) if t.to.lower() != here]
        return own + global_

    def _transition_json(self, t: EmuTransition, with_fields: bool) -> Json:
        out: Json = {
            "id": t.id,
            "name": t.name,
            "to": self._status_json(t.to),
            "hasScreen": bool(t.required),
            "isGlobal": False,
            "isInitial": False,
            "isAvailable": True,
            "isConditional": False,
            "isLooped": False,
        }
        if with_fields:
            fields: Json = {}
            for name in t.required:
                fields[name] = {
                    "required": True,
                    "schema": {"type": name, "system": name},
                    "name": _FIELDS.get(name, (name.title(),))[0],
                    "key": name,
                    "hasDefaultValue": False,
                    "operations": ["set"],
                }
                if name == "resolution":
                    fields[name]["allowedValues"] = [
                        {"self": f"{self.url}/rest/api/2/resolution/{10000 + i}", "id": str(10000 + i), "name": r}
                        for i, r in enumerate(self.resolutions)
                    ]
            out["fields"] = fields
        return out

    async def _transitions(self, request: web.Request, args: list[str], body: Any) -> web.StreamResponse:
        issue = self._issue_or_404(args[0])
        with_fields = "transitions.fields" in request.rel_url.query.get("expand", "")
        only = request.rel_url.query.get("transitionId")
        ts = [t for t in self._available(issue) if only is None or t.id == only]
        return web.json_response(
            {"expand": "transitions", "transitions": [self._transition_json(t, with_fields) for t in ts]}
        )

    async def _transition(self, request: web.Request, args: list[str], body: Any) -> web.StreamResponse:
        issue = self._issue_or_404(args[0])
        tr = body.get("transition") if isinstance(body, dict) else None
        if not isinstance(tr, dict) or "id" not in tr:
            raise _Error(400, ["Missing 'transition' identifier"])
        tid = str(tr["id"])
        t = next((t for t in self._available(issue) if t.id == tid), None)
        if t is None:
            raise _Error(400, [f"Transition id '{tid}' is not valid for this issue."])
        fields = body.get("fields") or {}
        if not isinstance(fields, dict):
            raise _Error(400, ["Can not deserialize the transition fields: expected an object."])
        errors: dict[str, str] = {}
        for name in fields:
            if name not in t.required:
                errors[name] = f"Field '{name}' cannot be set. It is not on the appropriate screen, or unknown."
        resolution: str | None = None
        for name in t.required:
            value = fields.get(name)
            if value is None:
                errors[name] = f"{_FIELDS.get(name, (name.title(),))[0]} is required."
            elif name == "resolution":
                rname = value.get("name") if isinstance(value, dict) else None
                if isinstance(value, dict) and rname is None and "id" in value:
                    idx = int(str(value["id"])) - 10000 if str(value["id"]).isdigit() else -1
                    rname = self.resolutions[idx] if 0 <= idx < len(self.resolutions) else None
                if rname not in self.resolutions:
                    errors[name] = "Specify a valid 'id' or 'name' for Resolution"
                resolution = rname
        if errors:
            raise _Error(400, errors=errors)
        update = body.get("update") or {}
        for op in update.get("comment", []) if isinstance(update, dict) else []:
            text = op.get("add", {}).get("body") if isinstance(op, dict) else None
            if isinstance(text, str) and text:
                issue.comments.append(EmuComment(str(next(self._comment_ids)), self.bot.id, text, self.now))
        self._set_status(issue, self.statuses[t.to.lower()], resolution)
        issue.transitions_done.append(t.name)
        return web.Response(status=204)

    async def _comments(self, request: web.Request, args: list[str], body: Any) -> web.StreamResponse:
        issue = self._issue_or_404(args[0])
        comments = [self._comment_json(issue, c) for c in issue.comments]
        n = len(comments)
        return web.json_response({"startAt": 0, "maxResults": n, "total": n, "comments": comments})

    async def _add_comment(self, request: web.Request, args: list[str], body: Any) -> web.StreamResponse:
        issue = self._issue_or_404(args[0])
        text = body.get("body") if isinstance(body, dict) else None
        if text is not None and not isinstance(text, str):
            raise _Error(400, errors={"comment": "Operation value must be a string"})
        if not text or not text.strip():
            raise _Error(400, errors={"comment": "Comment body can not be empty!"})
        c = EmuComment(str(next(self._comment_ids)), self.bot.id, text, self.now)
        issue.comments.append(c)
        issue.updated = self.now
        return web.json_response(self._comment_json(issue, c), status=201)

    # ------------------------------------------------------------------ routes: search

    def _params(self, request: web.Request, body: Any) -> dict[str, Any]:
        """Search parameters from the query string (GET) or the JSON body (POST)."""
        if request.method == "POST":
            if not isinstance(body, dict):
                raise _Error(400, ["Request body must be a JSON object."])
            out = dict(body)
            if isinstance(out.get("fields"), list):
                out["fields"] = ",".join(str(x) for x in out["fields"])
            return out
        q = request.rel_url.query
        params: dict[str, Any] = {k: q.get(k) for k in q}
        fields = self._fields_param(request)
        if fields is not None:
            params["fields"] = fields
        return params

    @staticmethod
    def _int_param(params: dict[str, Any], name: str, default: int) -> int:
        raw = params.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except (TypeError, ValueError):
            raise _Error(400, [f"The value '{raw}' is not valid for the parameter '{name}'."]) from None
        if value < 0:
            raise _Error(400, [f"The value '{raw}' is not valid for the parameter '{name}'."])
        return value

    async def _search(self, request: web.Request, args: list[str], body: Any) -> web.StreamResponse:
        if self.cloud:
            raise _Error(
                410,
                [
                    "The requested API has been removed. Please migrate to the /rest/api/3/search/jql API. "
                    "A full migration guideline is available at https://developer.atlassian.com/changelog/#CHANGE-2046"
                ],
            )
        params = self._params(request, body)
        found = self._run_jql(str(params.get("jql") or ""))
        start = self._int_param(params, "startAt", 0)
        size = min(self._int_param(params, "maxResults", 50), self.page_cap)
        wanted = self._wanted_fields(str(params.get("fields") or "*navigable"))
        page = found[start : start + size]
        return web.json_response(
            {
                "expand": "schema,names",
                "startAt": start,
                "maxResults": size,
                "total": len(found),
                "issues": [self._issue_json(i, wanted) for i in page],
            }
        )

    async def _search_jql(self, request: web.Request, args: list[str], body: Any) -> web.StreamResponse:
        if not self.cloud:
            raise _Error(404, [f"null for uri: {request.raw_path.split('?', 1)[0]}"])
        params = self._params(request, body)
        jql = str(params.get("jql") or "")
        found = self._run_jql(jql, bounded=True)
        size = min(self._int_param(params, "maxResults", 50) or 50, self.page_cap)
        start = self._read_token(params.get("nextPageToken"), jql)
        # The enhanced search returns issue ids only unless fields are asked for.
        wanted = self._wanted_fields(str(params["fields"])) if params.get("fields") else None
        page = found[start : start + size]
        more = start + size < len(found)
        out: Json = {"issues": [self._issue_json(i, wanted) for i in page], "isLast": not more}
        if more:
            out["nextPageToken"] = self._make_token(start + size, jql)
        return web.json_response(out)

    @staticmethod
    def _jql_digest(jql: str) -> str:
        return hashlib.sha1(jql.encode()).hexdigest()[:12]

    def _make_token(self, offset: int, jql: str) -> str:
        raw = json.dumps({"q": self._jql_digest(jql), "at": offset}).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def _read_token(self, token: Any, jql: str) -> int:
        if not token:
            return 0
        try:
            text = str(token)
            data = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
            if data["q"] == self._jql_digest(jql) and isinstance(data["at"], int):
                return int(data["at"])
        except (ValueError, KeyError, TypeError, binascii.Error):
            pass
        raise _Error(400, ["The provided next page token is invalid or expired."])

    def _run_jql(self, jql: str, *, bounded: bool = False) -> list[EmuIssue]:
        query = _parse_jql(jql, self.bot.id)
        if bounded and not query.clauses:
            raise _Error(
                400, ["Unbounded JQL queries are not allowed here. Please add a search restriction to your query."]
            )
        for c in query.clauses:
            self._check_values(c)
        found = [i for i in self.issues.values() if all(self._matches(i, c) for c in query.clauses)]
        found.sort(key=lambda i: int(i.id))
        for name, desc in reversed(query.order):
            found.sort(key=functools.partial(self._sort_key, name=name), reverse=desc)
        return found

    @staticmethod
    def _sort_key(issue: EmuIssue, name: str) -> Any:
        if name == "key":
            prefix, _, number = issue.key.rpartition("-")
            return (prefix, int(number))
        return issue.created if name == "created" else issue.updated

    def _check_values(self, c: _Clause) -> None:
        for v in c.values:
            if v is None:
                continue
            ok = True
            if c.field == "project":
                ok = v.upper() in self.projects or any(p.id == v for p in self.projects.values())
            elif c.field == "status":
                ok = v.lower() in self.statuses
            elif c.field == "statusCategory":
                ok = self._category_key(v) is not None
            elif c.field in ("assignee", "reporter"):
                ok = v in self.users
            elif c.field == "priority":
                ok = v in self.priorities
            if not ok:
                raise _Error(400, [f"The value '{v}' does not exist for the field '{c.field}'."])

    @staticmethod
    def _category_key(v: str) -> str | None:
        for key, cat in _CATEGORIES.items():
            if v.lower() in (key, str(cat["name"]).lower(), str(cat["id"])):
                return key
        return None

    def _field_values(self, issue: EmuIssue, name: str) -> set[str]:
        """What a clause compares with: lower-cased, empty when the field is empty."""
        if name == "project":
            return {issue.project.key.lower(), issue.project.id}
        if name == "status":
            return {issue.status.lower()}
        if name == "statusCategory":
            return {self.statuses[issue.status.lower()].category}
        if name == "assignee":
            return {issue.assignee.lower()} if issue.assignee else set()
        if name == "reporter":
            return {issue.reporter.lower()} if issue.reporter else set()
        if name == "priority":
            return {issue.priority.lower()} if issue.priority else set()
        if name == "labels":
            return {label.lower() for label in issue.labels}
        raise AssertionError(name)

    def _matches(self, issue: EmuIssue, c: _Clause) -> bool:
        have = self._field_values(issue, c.field)
        wanted: set[str] = set()
        for v in c.values:
            if v is None:
                continue
            wanted.add((self._category_key(v) or v.lower()) if c.field == "statusCategory" else v.lower())
        if c.op == "is":
            return not have
        if c.op == "is not":
            return bool(have)
        hit = bool(have & wanted) or (None in c.values and not have)
        # Jira: `field != x` and `NOT IN` never match issues whose field is empty.
        if c.op in ("!=", "not in"):
            return bool(have) and not hit
        return hit


class _Unauthorized(Exception):
    """A 401 answer in the deployment's shape."""

    def __init__(self, cloud: bool, *, basic: bool) -> None:
        super().__init__("401")
        if cloud:
            self.response: web.StreamResponse = web.Response(
                status=401, text="Client must be authenticated to access this resource.", content_type="text/plain"
            )
        else:
            headers = {"X-Seraph-LoginReason": "AUTHENTICATED_FAILED" if basic else "AUTHENTICATION_DENIED"}
            self.response = web.json_response(
                {"errorMessages": [_UNAUTHENTICATED], "errors": {}}, status=401, headers=headers
            )
