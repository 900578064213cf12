"""A strict Asana REST API emulator for tests: users, projects, tags and tasks.

One aiohttp server on 127.0.0.1 (port 0, read back) answering the part of
``https://app.asana.com/api/1.0`` a chat-ops tracker uses, spoken to by the real ``asana`` 5.x SDK with
``Configuration.host = emu.host``. Facts come from the reference sheet
(``reference/operate-monitor-plan-apis.md`` sections 0 item 19 and 6.3), the SDK
(``asana/api/tasks_api.py``, ``asana/pagination/page_iterator.py``) and Asana's API docs.

Use::

    async with AsanaEmulator() as emu:
        ws = emu.add_workspace("Acme")
        project = emu.add_project("Ops", ws)
        alice = emu.add_user("Alice", ws)
        t = AsanaTracker(token=emu.token, workspace=ws.gid, project=project.gid,
                         users={"U0ALICE": alice.gid}, pool=pool, timeout=2, host=emu.host)

Routes (the names that fault injection and ``seen`` use), under ``/api/1.0``:

* ``me``: ``GET /users/me`` (and ``user``: ``GET /users/{gid}``); ``project``: ``GET /projects/{gid}``;
* ``tasks``: ``GET /tasks``; ``create_task``: ``POST /tasks``; ``task``: ``GET /tasks/{gid}``;
  ``update_task``: ``PUT /tasks/{gid}``;
* ``tags``: ``GET /workspaces/{gid}/tags``; ``create_tag``: ``POST /workspaces/{gid}/tags``;
* ``search``: ``GET /workspaces/{gid}/tasks/search``: 402 (premium only) unless ``emu.premium``; then
  a plain name match that only sees tasks older than ``search_lag`` seconds of the virtual clock (the
  index is eventually consistent on Asana).

Strict where Asana is strict:

* ``Authorization: Bearer <token>``: none or another -> 401 ``Not Authorized``;
* every error is ``{"errors": [{"message": ..., "help": ...}]}``;
* ``POST``/``PUT`` bodies must be JSON ``{"data": {...}}`` (else 400); answers are ``{"data": ...}``;
  ``POST`` answers 201;
* ``GET /tasks`` needs ``project``, ``tag`` or ``assignee`` + ``workspace`` (else 400); ``limit`` must be
  1..100; with ``limit`` the answer carries ``next_page`` (``{"offset", "path", "uri"}``, ``null`` on the
  last page); an ``offset`` is only valid for the same query; ``completed_since`` (``now`` or an
  ISO 8601 time) keeps tasks that are incomplete or were completed (strictly) after it;
* records are compact (``gid``, ``name``, ``resource_type``, ``resource_subtype``) in lists and full
  in single-task answers, unless ``opt_fields`` says otherwise: then ``gid`` plus the listed fields,
  nested with dots (``assignee.name``); an object named without sub-fields comes as
  ``{"gid", "resource_type"}``;
* a task needs ``workspace`` or ``projects`` (400 ``You should specify one of workspace, parent,
  projects``); gids in ``projects``, ``assignee`` (or ``me``), ``tags`` must exist in the task's
  workspace (400 ``<field>: Not a recognized ID: <gid>``); ``projects``/``tags`` cannot be changed
  with ``PUT`` (400); a gid in a path that is not a number -> 400 ``<name>: Not a recognized ID``, an
  unknown one -> 404 ``Unknown object: <gid>`` (the emulator's wording);
* tag colours are Asana's (``dark-red``, ``light-blue``, ... or null).

Emulator choices: gids count up from 1200000000000001; ``emu.now`` is a virtual clock (UTC, starts
2026-01-01, ``advance(s)``) for ``created_at``/``completed_at``; tasks list in creation order;
``permalink_url`` is ``https://app.asana.com/0/<project>/<task>``.

Fault injection: ``fail_next(route, status=500, count=1, message=None, retry_after=None)`` (429 says
Asana's "You have made too many requests recently. Please, be chill." and sends ``Retry-After``,
30 s unless given), ``slow(route, seconds, count=None)``, ``down()``/``up()``. Records: ``requests``
(method, path, query, headers, body, status, route), ``server_errors``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode

from aiohttp import web

__all__ = ["AsanaEmulator", "EmuProject", "EmuTag", "EmuTask", "EmuUser", "EmuWorkspace", "Seen"]

Json = dict[str, Any]
HELP = "For more information on API status codes and how to handle them, read the docs on errors: https://developers.asana.com/docs/errors"
TAG_COLORS = frozenset(
    f"{tone}-{hue}"
    for tone in ("dark", "light")
    for hue in ("pink", "green", "blue", "red", "teal", "brown", "orange", "purple", "warm-gray")
)
CHILL = "You have made too many requests recently. Please, be chill."


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


# ----------------------------------------------------------------------------------------------
# Records visible to tests
# ----------------------------------------------------------------------------------------------


@dataclass
class Seen:
    """One HTTP request as the emulator received and answered it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    status: int = 0
    route: str = ""


@dataclass
class EmuWorkspace:
    gid: str
    name: str


@dataclass
class EmuUser:
    gid: str
    name: str
    email: str
    workspaces: list[str] = field(default_factory=list)


@dataclass
class EmuProject:
    gid: str
    name: str
    workspace: str


@dataclass
class EmuTag:
    gid: str
    name: str
    workspace: str
    color: str | None = None


@dataclass
class EmuTask:
    gid: str
    name: str
    workspace: str
    created_at: datetime
    created_by: str
    notes: str = ""
    completed: bool = False
    completed_at: datetime | None = None
    completed_by: str | None = None
    assignee: str | None = None
    projects: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    modified_at: datetime | None = None


@dataclass
class _Fault:
    status: int
    message: str | None
    retry_after: int | None
    remaining: int


@dataclass
class _Slow:
    seconds: float
    remaining: int | None


class _Error(Exception):
    """An Asana-shaped error answer."""

    def __init__(self, status: int, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after

    def response(self) -> web.Response:
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else None
        body = {"errors": [{"message": self.message, "help": HELP}]}
        return web.json_response(body, status=self.status, headers=headers)


Handler = Callable[[web.Request, list[str], dict[str, str], Json], Awaitable[tuple[int, Any]]]


class AsanaEmulator:
    """See the module docstring. Use ``async with AsanaEmulator() as emu:``."""

    def __init__(
        self,
        *,
        token: str = "2/1200000000000001/1200000000000002:0123456789abcdef",
        start: datetime = datetime(2026, 1, 1, tzinfo=UTC),
        premium: bool = False,
        search_lag: float = 30.0,
    ) -> None:
        self.token = token
        self.now = start
        self.premium = premium
        self.search_lag = search_lag
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._down = False
        self._gids = itertools.count(1200000000000001)

        self.workspaces: dict[str, EmuWorkspace] = {}
        self.users: dict[str, EmuUser] = {}
        self.projects: dict[str, EmuProject] = {}
        self.tags: dict[str, EmuTag] = {}
        self.tasks: dict[str, EmuTask] = {}
        self.me = self.add_user("opsloop bot", None, email="opsloop@example.com")

        self.requests: list[Seen] = []
        self.server_errors: list[str] = []
        self._faults: dict[str, list[_Fault]] = {}
        self._slow: dict[str, _Slow] = {}

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> AsanaEmulator:
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
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            self._site = None

    async def __aenter__(self) -> AsanaEmulator:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def host(self) -> str:
        """What ``asana.Configuration().host`` is on Asana: ``https://app.asana.com/api/1.0``."""
        if not self.port:
            raise RuntimeError("AsanaEmulator is not started")
        return f"http://127.0.0.1:{self.port}/api/1.0"

    def advance(self, seconds: float) -> None:
        """Move the virtual clock (``created_at``, ``completed_at``, the search lag)."""
        self.now += timedelta(seconds=seconds)

    # ------------------------------------------------------------------ set-up

    def _gid(self) -> str:
        return str(next(self._gids))

    def add_workspace(self, name: str = "Acme") -> EmuWorkspace:
        """A workspace the bot's user belongs to."""
        ws = EmuWorkspace(self._gid(), name)
        self.workspaces[ws.gid] = ws
        self.me.workspaces.append(ws.gid)
        return ws

    def add_user(self, name: str, workspace: EmuWorkspace | None, *, email: str | None = None) -> EmuUser:
        u = EmuUser(self._gid(), name, email or f"{name.split()[0].lower()}@example.com")
        if workspace is not None:
            u.workspaces.append(workspace.gid)
        self.users[u.gid] = u
        return u

    def add_project(self, name: str, workspace: EmuWorkspace) -> EmuProject:
        p = EmuProject(self._gid(), name, workspace.gid)
        self.projects[p.gid] = p
        return p

    def add_tag(self, name: str, workspace: EmuWorkspace, color: str | None = None) -> EmuTag:
        t = EmuTag(self._gid(), name, workspace.gid, color)
        self.tags[t.gid] = t
        return t

    def add_task(
        self,
        name: str,
        project: EmuProject,
        *,
        notes: str = "",
        assignee: EmuUser | None = None,
        completed: bool = False,
        tags: tuple[EmuTag, ...] = (),
        created_by: EmuUser | None = None,
    ) -> EmuTask:
        """Seed a task in ``project`` (as if made in Asana's UI by ``created_by``)."""
        task = EmuTask(
            gid=self._gid(),
            name=name,
            workspace=project.workspace,
            created_at=self.now,
            created_by=(created_by or self.me).gid,
            notes=notes,
            assignee=assignee.gid if assignee else None,
            projects=[project.gid],
            tags=[t.gid for t in tags],
            modified_at=self.now,
        )
        if completed:
            task.completed, task.completed_at, task.completed_by = True, self.now, task.created_by
        self.tasks[task.gid] = task
        return task

    # ------------------------------------------------------------------ faults

    def fail_next(
        self,
        route: str = "*",
        *,
        status: int = 500,
        count: int = 1,
        message: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        """The next ``count`` requests to ``route`` answer ``status`` with an Asana error body."""
        if status == 429 and retry_after is None:
            retry_after = 30
        self._faults.setdefault(route, []).append(_Fault(status, message, retry_after, count))

    def slow(self, route: str, seconds: float, count: int | None = None) -> None:
        """Delay the answers of ``route`` (``"*"``: every route) by ``seconds``."""
        self._slow[route] = _Slow(seconds, count)

    def clear_faults(self) -> None:
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
        query = dict(parse_qsl(request.rel_url.raw_query_string, keep_blank_values=True))
        raw = await request.read()
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode("utf-8", "replace")
        seen = Seen(request.method, raw_path, query, dict(request.headers), body)
        self.requests.append(seen)
        try:
            if request.headers.get("Authorization") != f"Bearer {self.token}":
                raise _Error(401, "Not Authorized")
            route, handler, parts = self._resolve(request.method, raw_path)
            seen.route = route
            slow = self._take_slow(route)
            if slow is not None:
                await asyncio.sleep(slow.seconds)
            fault = self._take_fault(route)
            if fault is not None:
                text = fault.message or (CHILL if fault.status == 429 else f"emulated {fault.status}")
                raise _Error(fault.status, text, retry_after=fault.retry_after)
            data: Json = {}
            if request.method in ("POST", "PUT"):
                if not isinstance(body, dict) or not isinstance(body.get("data"), dict):
                    raise _Error(400, 'Request data must be a JSON object of the form {"data": {...}}')
                data = body["data"]
            status, result = await handler(request, parts, query, data)
            response = web.json_response(result, status=status)
        except _Error as err:
            response = err.response()
        except Exception as err:  # an emulator bug: answer 500 and keep it for the test to see
            self.server_errors.append(f"{request.method} {raw_path}: {type(err).__name__}: {err}")
            response = _Error(500, "emulator error").response()
        seen.status = response.status
        return response

    def _resolve(self, method: str, raw_path: str) -> tuple[str, Handler, list[str]]:
        prefix = "/api/1.0/"
        if not raw_path.startswith(prefix):
            raise _Error(404, "No matching route for request")
        p = [unquote(x) for x in raw_path[len(prefix) :].strip("/").split("/")]
        n = len(p)
        table: list[tuple[str, str, bool, Handler]] = [
            ("GET", "me", p == ["users", "me"], self._get_user),
            ("GET", "user", n == 2 and p[0] == "users" and p[1] != "me", self._get_user),
            ("GET", "project", n == 2 and p[0] == "projects", self._get_project),
            ("GET", "tasks", p == ["tasks"], self._get_tasks),
            ("POST", "create_task", p == ["tasks"], self._post_task),
            ("GET", "task", n == 2 and p[0] == "tasks", self._get_task),
            ("PUT", "update_task", n == 2 and p[0] == "tasks", self._put_task),
            ("GET", "tags", n == 3 and p[0] == "workspaces" and p[2] == "tags", self._get_tags),
            ("POST", "create_tag", n == 3 and p[0] == "workspaces" and p[2] == "tags", self._post_tag),
            ("GET", "search", n == 4 and p[0] == "workspaces" and p[2:] == ["tasks", "search"], self._search),
        ]
        for m, name, ok, handler in table:
            if ok and m == method:
                return name, handler, p
        raise _Error(404, "No matching route for request")

    # ------------------------------------------------------------------ lookups

    def _lookup(self, table: Mapping[str, Any], gid: str, what: str) -> Any:
        if not gid.isdigit():
            raise _Error(400, f"{what}: Not a recognized ID: {gid}")
        found = table.get(gid)
        if found is None:
            raise _Error(404, f"Unknown object: {gid}")
        return found

    def _ref(self, table: Mapping[str, Any], gid: Any, what: str) -> Any:
        """A gid given in a body or filter: unknown -> 400, as Asana answers for bad references."""
        found = table.get(str(gid)) if isinstance(gid, str) and gid.isdigit() else None
        if found is None:
            raise _Error(400, f"{what}: Not a recognized ID: {gid}")
        return found

    def _user_ref(self, value: Any, workspace: str, what: str = "assignee") -> str | None:
        if value is None:
            return None
        user: EmuUser = self.me if value == "me" else self._ref(self.users, value, what)
        if workspace not in user.workspaces:
            raise _Error(400, f"{what}: user {user.gid} is not in the task's workspace")
        return user.gid

    # ------------------------------------------------------------------ representations

    def _user_json(self, gid: str | None) -> Json | None:
        if gid is None:
            return None
        u = self.users[gid]
        return {"gid": u.gid, "resource_type": "user", "name": u.name}

    def _task_json(self, t: EmuTask) -> Json:
        projects = [self.projects[p] for p in t.projects]
        ws = self.workspaces[t.workspace]
        return {
            "gid": t.gid,
            "resource_type": "task",
            "resource_subtype": "default_task",
            "name": t.name,
            "notes": t.notes,
            "completed": t.completed,
            "completed_at": _iso(t.completed_at),
            "completed_by": self._user_json(t.completed_by),
            "created_at": _iso(t.created_at),
            "created_by": {"gid": t.created_by, "resource_type": "user"},
            "modified_at": _iso(t.modified_at or t.created_at),
            "assignee": self._user_json(t.assignee),
            "due_on": None,
            "projects": [{"gid": p.gid, "resource_type": "project", "name": p.name} for p in projects],
            "memberships": [
                {"project": {"gid": p.gid, "resource_type": "project", "name": p.name}, "section": None}
                for p in projects
            ],
            "tags": [{"gid": g, "resource_type": "tag", "name": self.tags[g].name} for g in t.tags],
            "workspace": {"gid": ws.gid, "resource_type": "workspace", "name": ws.name},
            "permalink_url": f"https://app.asana.com/0/{t.projects[0] if t.projects else 0}/{t.gid}",
        }

    @staticmethod
    def _select(full: Json, opt_fields: str | None, compact: tuple[str, ...] | None) -> Json:
        """Asana's output options: the compact or full record, or `gid` plus the `opt_fields`."""
        if not opt_fields:
            return {k: full[k] for k in compact if k in full} if compact else full
        return _project_fields(full, [f.strip() for f in opt_fields.split(",") if f.strip()])

    # ------------------------------------------------------------------ pagination

    def _page(self, items: list[Json], query: Mapping[str, str], path: str) -> Json:
        """One page of `items` as Asana answers it: `data` and, with `limit`, `next_page`."""
        if "limit" not in query:
            if "offset" in query:
                raise _Error(400, "offset: An offset needs a limit")
            return {"data": items}
        try:
            limit = int(query["limit"])
        except ValueError:
            raise _Error(400, f"limit: Not a number: {query['limit']}") from None
        if not 1 <= limit <= 100:
            raise _Error(400, "limit: Must be between 1 and 100")
        # The offset token is bound to the query without paging parameters, as Asana's are.
        signature = hashlib.sha256(
            json.dumps(sorted((k, v) for k, v in query.items() if k not in ("offset", "limit"))).encode()
        ).hexdigest()[:16]
        start = 0
        if "offset" in query:
            try:
                decoded = json.loads(base64.urlsafe_b64decode(query["offset"].encode()))
                if decoded["q"] != signature:
                    raise ValueError("another query")
                start = int(decoded["i"])
            except (ValueError, KeyError, TypeError):
                raise _Error(400, "offset: Your pagination token is invalid for this request") from None
        end = start + limit
        page: Json = {"data": items[start:end], "next_page": None}
        if end < len(items):
            token = base64.urlsafe_b64encode(json.dumps({"i": end, "q": signature}).encode()).decode()
            rest = {k: v for k, v in query.items() if k != "offset"}
            rel = f"{path}?{urlencode({**rest, 'offset': token})}"
            page["next_page"] = {"offset": token, "path": rel, "uri": f"https://app.asana.com/api/1.0{rel}"}
        return page

    # ------------------------------------------------------------------ handlers

    async def _get_user(self, request: web.Request, p: list[str], q: dict[str, str], data: Json) -> tuple[int, Any]:
        user: EmuUser = self.me if p[1] == "me" else self._lookup(self.users, p[1], "user")
        full = {
            "gid": user.gid,
            "resource_type": "user",
            "name": user.name,
            "email": user.email,
            "workspaces": [
                {"gid": w, "resource_type": "workspace", "name": self.workspaces[w].name} for w in user.workspaces
            ],
        }
        return 200, {"data": self._select(full, q.get("opt_fields"), None)}

    async def _get_project(self, request: web.Request, p: list[str], q: dict[str, str], data: Json) -> tuple[int, Any]:
        project: EmuProject = self._lookup(self.projects, p[1], "project")
        ws = self.workspaces[project.workspace]
        full = {
            "gid": project.gid,
            "resource_type": "project",
            "name": project.name,
            "workspace": {"gid": ws.gid, "resource_type": "workspace", "name": ws.name},
            "permalink_url": f"https://app.asana.com/0/{project.gid}/list",
        }
        return 200, {"data": self._select(full, q.get("opt_fields"), None)}

    def _since(self, value: str) -> datetime:
        if value == "now":
            return self.now
        try:
            t = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise _Error(400, f"completed_since: Not a valid date-time: {value}") from None
        return t if t.tzinfo else t.replace(tzinfo=UTC)

    async def _get_tasks(self, request: web.Request, p: list[str], q: dict[str, str], data: Json) -> tuple[int, Any]:
        tasks = list(self.tasks.values())
        if "project" in q:
            project: EmuProject = self._ref(self.projects, q["project"], "project")
            tasks = [t for t in tasks if project.gid in t.projects]
        elif "tag" in q:
            tag: EmuTag = self._ref(self.tags, q["tag"], "tag")
            tasks = [t for t in tasks if tag.gid in t.tags]
        elif "assignee" in q and "workspace" in q:
            ws: EmuWorkspace = self._ref(self.workspaces, q["workspace"], "workspace")
            who = self.me.gid if q["assignee"] == "me" else self._ref(self.users, q["assignee"], "assignee").gid
            tasks = [t for t in tasks if t.workspace == ws.gid and t.assignee == who]
        else:
            raise _Error(
                400, "Must specify exactly one of project, tag, section, user task list, or assignee + workspace"
            )
        if "completed_since" in q:
            since = self._since(q["completed_since"])
            # Strictly after: on Asana "now" is later than any completion it could list, while the
            # virtual clock may not have moved since the task was completed.
            tasks = [t for t in tasks if not t.completed or (t.completed_at is not None and t.completed_at > since)]
        items = [
            self._select(self._task_json(t), q.get("opt_fields"), ("gid", "name", "resource_type", "resource_subtype"))
            for t in tasks
        ]
        return 200, self._page(items, q, "/tasks")

    async def _get_task(self, request: web.Request, p: list[str], q: dict[str, str], data: Json) -> tuple[int, Any]:
        task: EmuTask = self._lookup(self.tasks, p[1], "task")
        return 200, {"data": self._select(self._task_json(task), q.get("opt_fields"), None)}

    def _check_text(self, data: Json, name: str) -> None:
        if name in data and not isinstance(data[name], str):
            raise _Error(400, f"{name}: Not a string: {data[name]!r}")

    async def _post_task(self, request: web.Request, p: list[str], q: dict[str, str], data: Json) -> tuple[int, Any]:
        projects_in = data.get("projects", [])
        if not isinstance(projects_in, list):
            raise _Error(400, "projects: Not a list")
        projects: list[EmuProject] = [self._ref(self.projects, g, "projects") for g in projects_in]
        if "workspace" in data:
            workspace = self._ref(self.workspaces, data["workspace"], "workspace").gid
        elif projects:
            workspace = projects[0].workspace
        else:
            raise _Error(400, "You should specify one of workspace, parent, projects")
        if any(x.workspace != workspace for x in projects):
            raise _Error(400, "projects: All projects must be in the task's workspace")
        for name in ("name", "notes"):
            self._check_text(data, name)
        tags_in = data.get("tags", [])
        if not isinstance(tags_in, list):
            raise _Error(400, "tags: Not a list")
        tags: list[EmuTag] = [self._ref(self.tags, g, "tags") for g in tags_in]
        if any(t.workspace != workspace for t in tags):
            raise _Error(400, "tags: All tags must be in the task's workspace")
        completed = data.get("completed", False)
        if not isinstance(completed, bool):
            raise _Error(400, "completed: Not a boolean")
        task = EmuTask(
            gid=self._gid(),
            name=data.get("name", ""),
            workspace=workspace,
            created_at=self.now,
            created_by=self.me.gid,
            notes=data.get("notes", ""),
            assignee=self._user_ref(data.get("assignee"), workspace),
            projects=[x.gid for x in projects],
            tags=[t.gid for t in tags],
            modified_at=self.now,
        )
        if completed:
            task.completed, task.completed_at, task.completed_by = True, self.now, self.me.gid
        self.tasks[task.gid] = task
        return 201, {"data": self._select(self._task_json(task), q.get("opt_fields"), None)}

    async def _put_task(self, request: web.Request, p: list[str], q: dict[str, str], data: Json) -> tuple[int, Any]:
        task: EmuTask = self._lookup(self.tasks, p[1], "task")
        for name in ("projects", "tags", "workspace", "memberships"):
            if name in data:
                raise _Error(400, f"{name}: Cannot write this property with PUT; use the dedicated endpoint")
        for name in ("name", "notes"):
            self._check_text(data, name)
        if "completed" in data and not isinstance(data["completed"], bool):
            raise _Error(400, "completed: Not a boolean")
        if "assignee" in data:
            task.assignee = self._user_ref(data["assignee"], task.workspace)
        if "name" in data:
            task.name = data["name"]
        if "notes" in data:
            task.notes = data["notes"]
        if "completed" in data and data["completed"] != task.completed:
            task.completed = data["completed"]
            task.completed_at = self.now if task.completed else None
            task.completed_by = self.me.gid if task.completed else None
        task.modified_at = self.now
        return 200, {"data": self._select(self._task_json(task), q.get("opt_fields"), None)}

    async def _get_tags(self, request: web.Request, p: list[str], q: dict[str, str], data: Json) -> tuple[int, Any]:
        ws: EmuWorkspace = self._lookup(self.workspaces, p[1], "workspace")
        items = [
            self._select(
                {"gid": t.gid, "resource_type": "tag", "name": t.name, "color": t.color},
                q.get("opt_fields"),
                ("gid", "name", "resource_type"),
            )
            for t in self.tags.values()
            if t.workspace == ws.gid
        ]
        return 200, self._page(items, q, f"/workspaces/{ws.gid}/tags")

    async def _post_tag(self, request: web.Request, p: list[str], q: dict[str, str], data: Json) -> tuple[int, Any]:
        ws: EmuWorkspace = self._lookup(self.workspaces, p[1], "workspace")
        name = data.get("name")
        if not isinstance(name, str) or not name:
            raise _Error(400, "name: Missing input")
        color = data.get("color")
        if color is not None and color not in TAG_COLORS:
            raise _Error(400, f"color: Not a valid enum value: {color}")
        tag = self.add_tag(name, ws, color)
        full = {"gid": tag.gid, "resource_type": "tag", "name": tag.name, "color": tag.color}
        return 201, {"data": self._select(full, q.get("opt_fields"), None)}

    async def _search(self, request: web.Request, p: list[str], q: dict[str, str], data: Json) -> tuple[int, Any]:
        ws: EmuWorkspace = self._lookup(self.workspaces, p[1], "workspace")
        if not self.premium:
            raise _Error(402, "Search is only available to premium users.")
        text = q.get("text", "").casefold()
        indexed_before = self.now - timedelta(seconds=self.search_lag)
        hits = [
            t
            for t in self.tasks.values()
            if t.workspace == ws.gid and text in t.name.casefold() and t.created_at <= indexed_before
        ]
        compact = ("gid", "name", "resource_type", "resource_subtype")
        return 200, {"data": [self._select(self._task_json(t), q.get("opt_fields"), compact) for t in hits[:100]]}


def _project_fields(full: Json, paths: list[str]) -> Json:
    """`gid` plus the dotted `paths` of `full`; objects named alone come as gid + resource_type."""
    out: Json = {"gid": full["gid"]} if "gid" in full else {}
    groups: dict[str, list[str]] = {}
    for path in paths:
        head, _, rest = path.partition(".")
        groups.setdefault(head, [])
        if rest:
            groups[head].append(rest)
    for head, subs in groups.items():
        if head not in full:
            continue
        value = full[head]
        out[head] = _project_value(value, subs)
    return out


def _project_value(value: Any, subs: list[str]) -> Any:
    if isinstance(value, list):
        return [_project_value(v, subs) for v in value]
    if isinstance(value, dict):
        if subs:
            return _project_fields(value, subs)
        return {k: value[k] for k in ("gid", "resource_type") if k in value} or value
    return value
