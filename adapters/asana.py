"""Asana through the official `asana` 5.x SDK: the `Tracker` port (name "asana").

The SDK is synchronous (urllib3), so every call runs on the shared `BlockingPool` with a time limit,
and each HTTP request also carries a urllib3 timeout so a worker thread never hangs after we gave up.
(A plain number as the SDK's `_request_timeout` is silently ignored unless it is an `int`; a
`(connect, read)` tuple is honoured, so that is what we pass.) One `ApiClient` is shared by the pool's
threads: its urllib3 `PoolManager` is thread-safe and the API classes keep no per-call state.

The SDK's default retry strategy (5 retries, backoff factor 2, 429 included, honouring Retry-After)
can hold a chat command for minutes. It is replaced: connection failures and 500/502/503/504 answers to
GET and PUT are retried `retries` times with a short backoff; POSTs are never retried after they
reached Asana (a retried create could make two tasks); 429 is not retried but reported with the
Retry-After Asana sent, so the person in chat knows when to try again.

Choices, where Asana leaves room:

* Key = the task gid. `get`/`assign`/`close` also accept a pasted task URL
  (`https://app.asana.com/0/<project>/<task>` or `.../project/<p>/task/<task>`). A task outside the
  configured project counts as not found: the bot only touches its own project.
* `list` reads `GET /tasks?project=<gid>` (with `completed_since=now` for open and mine) and never the
  search endpoint: search is premium-only (402 otherwise) and eventually consistent, so an item made
  a second ago would be missing. The SDK's page iterator follows `next_page.offset`; at most
  `scan_limit` tasks are read, sorted newest first (Asana lists in project order), then cut to
  `limit`. `mine` filters on the assignee in code (the API cannot filter a project by assignee).
* `critical` = the workspace tag "critical" (found by name, created dark red on first use, cached).
  A tag, not a notes prefix: people see and filter it in Asana, and it survives edits of the notes.
* The reporter is written as the last line of the notes (`Opened from Slack by <@U…> (opsloop)`),
  since the bot's own user creates every task; reading parses it back, else maps `created_by` back to
  a Slack id, else "".
* Assignees map back to Slack ids; an Asana user no Slack user maps to shows as `asana:<name>`.
  `closed_at` is `completed_at`; `closed_by` maps `completed_by` back (the close call itself knows it).
* `close` sets `completed: true` and is idempotent; `assign` sets the one assignee Asana allows.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

import asana
from asana.rest import ApiException
from urllib3.exceptions import (
    ConnectTimeoutError,
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    ResponseError,
)
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.util.retry import Retry

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

TOOL = "Asana"
CRITICAL = "critical"
# Everything `_item` reads; `gid` always comes back. Nested fields keep the answers small.
FIELDS = ",".join(
    (
        "name",
        "notes",
        "completed",
        "completed_at",
        "completed_by.name",
        "created_at",
        "created_by",
        "assignee.name",
        "tags.name",
        "permalink_url",
        "projects",
    )
)
_FOOTER = "Opened from Slack by <@{user}> (opsloop)"
_FOOTER_RE = re.compile(r"Opened from Slack by <@([A-Z0-9]+)> \(opsloop\)\s*$")


class AsanaTracker:
    """`bot.ports.Tracker` for one Asana project."""

    name = "asana"

    def __init__(
        self,
        *,
        token: str,
        workspace: str,
        project: str,
        users: Mapping[str, str],
        pool: BlockingPool,
        timeout: float,
        host: str | None = None,
        token_env: str = "ASANA_TOKEN",
        retries: int = 2,
        page_size: int = 100,
        scan_limit: int = 1000,
    ) -> None:
        """`users` maps Slack user ids to Asana user gids; `host` replaces https://app.asana.com/api/1.0
        (an emulator in tests); `token_env` names the variable the token came from, for messages."""
        self._workspace = workspace
        self._project = project
        self._users = dict(users)
        self._slack_of = {gid: slack for slack, gid in self._users.items()}
        self._pool = pool
        self._timeout = timeout
        self._token_env = token_env
        self._page_size = max(1, min(page_size, 100))
        self._scan_limit = scan_limit
        # urllib3 timeouts per request: (connect, read); see the module docstring for why a tuple.
        self._request_timeout = (timeout, timeout)
        cfg = asana.Configuration()
        cfg.access_token = token
        if host:
            cfg.host = host.rstrip("/")
        cfg.retry_strategy = Retry(
            total=retries,
            connect=retries,
            read=0,  # a read timeout may mean the request was done: never send it twice
            status=retries,
            other=0,
            backoff_factor=0.2,
            status_forcelist=(500, 502, 503, 504),
            allowed_methods=frozenset({"GET", "PUT"}),
            raise_on_status=False,  # hand the last error answer to the SDK, which raises ApiException
            # A Retry-After on a 503 would make urllib3 sleep that long in a pool thread we already gave
            # up on; the two quick retries are all we try, then the error reaches the user.
            respect_retry_after_header=False,
        )
        self._client = asana.ApiClient(cfg)
        self._tasks = asana.TasksApi(self._client)
        self._tags = asana.TagsApi(self._client)
        self._people = asana.UsersApi(self._client)
        self._projects = asana.ProjectsApi(self._client)
        self._host = cfg.host
        self._tag_lock = threading.Lock()
        self._tag: str | None = None

    async def aclose(self) -> None:
        """Release the SDK's connections and its idle thread pool (`close` is the port's)."""
        self._client.rest_client.pool_manager.clear()
        pool = getattr(self._client, "pool", None)
        if pool is not None:
            pool.close()  # its threads are idle (we never use async_req); they exit on their own

    # ------------------------------------------------------------------ the port

    async def create(self, item: NewItem) -> PlanItem:
        """A task in the project: the title, the description (plus who opened it), the mapped assignee,
        and the "critical" tag when asked."""
        assignee = self._user(item.assignee) if item.assignee else None
        data: dict[str, Any] = {
            "name": item.title,
            "notes": _with_footer(item.description, item.reporter),
            "projects": [self._project],
        }
        if assignee:
            data["assignee"] = assignee

        def work() -> dict[str, Any]:
            if item.critical:
                data["tags"] = [self._critical_tag()]
            return _obj(self._tasks.create_task({"data": data}, {"opt_fields": FIELDS}, **self._kw()))

        return self._item(await self._run(work, "create a task"))

    async def get(self, key: str) -> PlanItem:
        """The task with that gid (or pasted URL); AdapterNotFound if the project has no such task."""
        gid = self._gid(key)
        return self._item(await self._run(lambda: self._fetch(gid), f"read task {gid}", gid=gid))

    async def list(self, which: ListFilter, user: str, limit: int = 20) -> Sequence[PlanItem]:
        """Tasks of the project, newest first: open ones, the user's open ones, or all."""
        mine = self._user(user) if which is ListFilter.MINE else None
        opts: dict[str, Any] = {"project": self._project, "opt_fields": FIELDS, "limit": self._page_size}
        if which is not ListFilter.ALL:
            opts["completed_since"] = "now"  # incomplete tasks only (none was completed after now)

        def work() -> list[dict[str, Any]]:
            pages = self._tasks.get_tasks(dict(opts), item_limit=self._scan_limit, **self._kw())
            found = [_obj(t) for t in pages]
            if mine is not None:
                found = [t for t in found if _obj_or_empty(t.get("assignee")).get("gid") == mine]
            return found

        items = [self._item(t) for t in await self._run(work, "list tasks")]
        items.sort(key=lambda i: i.created_at, reverse=True)
        return items[: max(limit, 0)]

    async def assign(self, key: str, user: str) -> PlanItem:
        """Make the user's mapped Asana user the task's assignee."""
        assignee = self._user(user)
        gid = self._gid(key)

        def work() -> dict[str, Any]:
            self._fetch(gid)  # the project check
            body = {"data": {"assignee": assignee}}
            return _obj(self._tasks.update_task(body, gid, {"opt_fields": FIELDS}, **self._kw()))

        return self._item(await self._run(work, f"assign task {gid}", gid=gid))

    async def close(self, key: str, by: str) -> PlanItem:
        """Mark the task completed (nothing happens when it already is)."""
        gid = self._gid(key)

        def work() -> tuple[dict[str, Any], bool]:
            task = self._fetch(gid)
            if task.get("completed") is True:
                return task, False
            body = {"data": {"completed": True}}
            return _obj(self._tasks.update_task(body, gid, {"opt_fields": FIELDS}, **self._kw())), True

        task, closed_now = await self._run(work, f"complete task {gid}", gid=gid)
        return self._item(task, closed_by=by if closed_now else None)

    async def check(self) -> str:
        """Reach Asana with the token; who we are, and that the project is in the workspace."""

        def work() -> tuple[dict[str, Any], dict[str, Any]]:
            me = _obj(self._people.get_user("me", {"opt_fields": "name,email"}, **self._kw()))
            project = _obj(self._projects.get_project(self._project, {"opt_fields": "name,workspace"}, **self._kw()))
            return me, project

        me, project = await self._run(work, "check", missing=f"no project {self._project} (integrations.asana.project)")
        ws = _obj_or_empty(project.get("workspace")).get("gid")
        if ws != self._workspace:
            raise AdapterError(
                TOOL,
                f"project {project.get('name')} is in workspace {ws}, not {self._workspace} "
                "(integrations.asana.workspace)",
            )
        return f"logged in to {TOOL} as {me.get('name') or me.get('email')}; new tasks go to {project.get('name')}"

    # ------------------------------------------------------------------ helpers (pool threads)

    def _kw(self) -> dict[str, Any]:
        return {"_request_timeout": self._request_timeout}

    def _fetch(self, gid: str) -> dict[str, Any]:
        task = _obj(self._tasks.get_task(gid, {"opt_fields": FIELDS}, **self._kw()))
        projects = {_obj_or_empty(p).get("gid") for p in _list(task.get("projects"))}
        if self._project not in projects:
            raise AdapterNotFound(TOOL, f"no task {gid} in project {self._project}")
        return task

    def _critical_tag(self) -> str:
        """The gid of the workspace's "critical" tag, made (dark red) the first time it is missing."""
        with self._tag_lock:  # two critical creates at once must not make two tags
            if self._tag is None:
                opts = {"opt_fields": "name", "limit": 100}
                tags = self._tags.get_tags_for_workspace(self._workspace, opts, **self._kw())
                found = [_obj(t) for t in tags if str(_obj(t).get("name", "")).strip().casefold() == CRITICAL]
                if found:
                    self._tag = str(found[0]["gid"])
                else:
                    body = {"data": {"name": CRITICAL, "color": "dark-red"}}
                    made = _obj(self._tags.create_tag_for_workspace(body, self._workspace, {}, **self._kw()))
                    self._tag = str(made["gid"])
            return self._tag

    # ------------------------------------------------------------------ helpers (loop)

    async def _run(self, fn: Callable[[], T], doing: str, *, gid: str | None = None, missing: str | None = None) -> T:
        """Run `fn` on the pool; every failure leaves as an AdapterError about `doing`.

        `gid` names the task the call is about (its 404 becomes "no task <gid>"); `missing` is the
        message of any other 404."""
        try:
            return await self._pool.run(TOOL, fn, timeout=self._timeout)
        except AdapterTimeout:
            raise AdapterTimeout(TOOL, f"no answer within {self._timeout:g} s ({doing})") from None
        except AdapterError:
            raise
        except ApiException as err:
            raise self._api_error(err, doing, gid, missing) from None
        except Urllib3Error as err:
            raise self._transport_error(err, doing) from None
        except (TypeError, KeyError, IndexError, AttributeError, ValueError) as err:
            # The SDK indexes the body it got without checking it: an HTML page or a cut-off JSON body
            # (a proxy, not Asana) fails inside it like this.
            raise AdapterError(
                TOOL, f"answered with something that is not Asana's API to {doing} ({type(err).__name__}: {err})"
            ) from err

    def _api_error(self, err: Any, doing: str, gid: str | None, missing: str | None) -> AdapterError:
        status = int(err.status or 0)
        message = _message(err.body) or str(err.reason or "")
        headers = err.headers or {}
        if status == 0:
            return AdapterUnavailable(TOOL, f"can't reach {self._host} ({message.splitlines()[0]})")
        if status == 401:
            return AdapterError(
                TOOL, f"refused the personal access token ({message or 'Not Authorized'}); check {self._token_env}"
            )
        if status == 402:
            return AdapterError(TOOL, f"answered 402 to {doing}: that needs a premium workspace ({message})")
        if status == 403:
            return AdapterError(TOOL, f"forbidden to {doing} ({message}): the token's user lacks access")
        if status == 404 or (status == 400 and gid is not None and "Not a recognized ID" in message):
            if gid is not None:
                return AdapterNotFound(TOOL, f"no task {gid}")
            return AdapterNotFound(TOOL, missing or f"found nothing to {doing} ({message})")
        if status == 429:
            after = headers.get("Retry-After")
            wait = f"try again in {after} s" if after else "try again in a minute"
            return AdapterError(TOOL, f"rate-limited ({message or 'too many requests'}); {wait}")
        if status in (502, 503, 504):
            return AdapterUnavailable(TOOL, f"answered {status} (unavailable) to {doing}")
        return AdapterError(TOOL, f"answered {status} ({message or 'no details'}) to {doing}")

    def _transport_error(self, err: Exception, doing: str) -> AdapterError:
        reason: Exception = err.reason if isinstance(err, MaxRetryError) and err.reason is not None else err
        # NewConnectionError is a ConnectTimeoutError subclass in urllib3: test it first.
        if isinstance(reason, NewConnectionError):
            text = str(reason).rsplit("new connection: ", 1)[-1]
            return AdapterUnavailable(TOOL, f"can't reach {self._host} ({text})")
        if isinstance(reason, ConnectTimeoutError | ReadTimeoutError):
            return AdapterTimeout(TOOL, f"no answer within {self._timeout:g} s ({doing})")
        if isinstance(reason, ResponseError):
            return AdapterUnavailable(TOOL, f"kept failing to {doing} ({reason})")
        if isinstance(reason, ProtocolError):
            return AdapterUnavailable(TOOL, f"the connection to {self._host} broke ({doing})")
        return AdapterUnavailable(TOOL, f"the connection to {self._host} failed ({type(reason).__name__}, {doing})")

    def _user(self, user: str) -> str:
        gid = self._users.get(user)
        if gid is None:
            raise AdapterError(
                TOOL,
                f"no Asana user is mapped to Slack user <@{user}>; add `{user}: <user gid>` "
                "under integrations.asana.users",
            )
        return gid

    def _gid(self, key: str) -> str:
        gid = _task_gid(key)
        if gid is None:
            raise AdapterNotFound(TOOL, f"no task {key} (Asana task ids are numbers)")
        return gid

    def _item(self, task: Mapping[str, Any], closed_by: str | None = None) -> PlanItem:
        notes = str(task.get("notes") or "")
        footer = _FOOTER_RE.search(notes)
        creator = _obj_or_empty(task.get("created_by")).get("gid")
        reporter = footer.group(1) if footer else self._slack_of.get(str(creator), "")
        assignee = self._person(task.get("assignee"))
        done = task.get("completed") is True
        closer = _obj_or_empty(task.get("completed_by")).get("gid")
        return PlanItem(
            key=str(task.get("gid", "")),
            title=str(task.get("name", "")),
            status=ItemStatus.DONE if done else ItemStatus.OPEN,
            reporter=reporter,
            assignee=assignee,
            critical=any(
                str(_obj_or_empty(t).get("name", "")).strip().casefold() == CRITICAL for t in _list(task.get("tags"))
            ),
            created_at=_time(task.get("created_at")) or datetime.fromtimestamp(0, tz=UTC),
            closed_at=_time(task.get("completed_at")) if done else None,
            closed_by=(closed_by or self._slack_of.get(str(closer))) if done else None,
            url=str(task["permalink_url"]) if task.get("permalink_url") else None,
            tracker=self.name,
        )

    def _person(self, value: object) -> str | None:
        user = _obj_or_empty(value)
        gid = user.get("gid")
        if not gid:
            return None
        return self._slack_of.get(str(gid)) or f"asana:{user.get('name') or gid}"


# ---------------------------------------------------------------------------------------------------------


def _task_gid(key: str) -> str | None:
    """The task gid in `key`: a gid, or a pasted task URL (classic /0/<project>/<task> or .../task/<gid>)."""
    text = key.strip().strip("<>")
    if text.isdigit():
        return text
    if "/" not in text:
        return None
    parts = [p for p in urlsplit(text if "://" in text else f"https://{text}").path.split("/") if p]
    if "task" in parts and parts.index("task") + 1 < len(parts):
        candidate = parts[parts.index("task") + 1]
    elif len(parts) >= 3 and parts[0] == "0":
        candidate = parts[2]
    else:
        return None
    return candidate if candidate.isdigit() else None


def _with_footer(description: str, reporter: str) -> str:
    footer = _FOOTER.format(user=reporter)
    return f"{description.rstrip()}\n\n{footer}" if description.strip() else footer


def _message(body: object) -> str:
    """The first message of an Asana error body (`{"errors": [{"message": ...}]}`)."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if not isinstance(body, str) or not body.strip():
        return ""
    try:
        data = json.loads(body)
    except ValueError:
        return body.strip()[:200]
    errors = data.get("errors") if isinstance(data, dict) else None
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        return str(errors[0].get("message") or "")
    return ""


def _time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _obj(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise AdapterError(TOOL, "answered with unexpected JSON (an object was expected)")
    return value


def _obj_or_empty(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []
