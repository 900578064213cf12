"""Ports: one Protocol per capability, the value types that cross them, and the AdapterError family.

Handlers see only these; adapters implement them and import nothing else from the core. Values that
cross a port are our own frozen dataclasses, never raw JSON or client-library objects.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar, runtime_checkable

T = TypeVar("T")


# --- errors -----------------------------------------------------------------------------------------


class AdapterError(Exception):
    """A tool failed; the message names the tool and what it answered."""

    def __init__(self, tool: str, message: str) -> None:
        self.tool = tool
        super().__init__(f"{tool}: {message}")


class AdapterUnavailable(AdapterError):
    """The tool could not be reached (connection refused, DNS, TLS)."""


class AdapterTimeout(AdapterError):
    """The tool did not answer in time."""


class AdapterNotFound(AdapterError):
    """The tool answered that the named thing does not exist."""


# --- storage ---------------------------------------------------------------------------------------


class SqlStore(Protocol):
    """Transactional access to the SQLite store; functions run on the store's own threads.

    The argument handed to `fn` is a `sqlite_utils.Database`; `write` runs `fn` in a transaction that
    is committed before the call returns.
    """

    async def read(self, fn: Callable[[Any], T]) -> T: ...

    async def write(self, fn: Callable[[Any], T]) -> T: ...

    def submit(self, fn: Callable[[Any], T]) -> asyncio.Future[T]:
        """Queue a write without waiting; the future resolves when it is committed."""
        ...


# --- plan -------------------------------------------------------------------------------------------


class ItemStatus(enum.StrEnum):
    OPEN = "open"
    DONE = "done"


@dataclass(frozen=True)
class PlanItem:
    """One work item of a tracker."""

    key: str
    title: str
    status: ItemStatus
    reporter: str
    assignee: str | None
    critical: bool
    created_at: datetime
    closed_at: datetime | None = None
    closed_by: str | None = None
    url: str | None = None
    tracker: str = "local"


@dataclass(frozen=True)
class NewItem:
    """What is needed to create a plan item."""

    title: str
    reporter: str
    assignee: str | None = None
    critical: bool = False
    description: str = ""


class ListFilter(enum.StrEnum):
    OPEN = "open"
    MINE = "mine"
    ALL = "all"


class Tracker(Protocol):
    """A work tracker: the built-in one, Jira, Trello or Asana."""

    name: str

    async def create(self, item: NewItem) -> PlanItem: ...

    async def get(self, key: str) -> PlanItem:
        """Raise `AdapterNotFound` when there is no such item."""
        ...

    async def list(self, which: ListFilter, user: str, limit: int = 20) -> Sequence[PlanItem]: ...

    async def assign(self, key: str, user: str) -> PlanItem: ...

    async def close(self, key: str, by: str) -> PlanItem: ...


# --- people -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Person:
    """A chat user as the directory knows them."""

    id: str
    name: str
    is_bot: bool = False
    is_guest: bool = False
    deleted: bool = False


class Directory(Protocol):
    """Who is who: user names and user-group membership (cached by the implementation)."""

    async def person(self, user_id: str) -> Person: ...

    async def group_members(self, group: str) -> frozenset[str]:
        """Members of a user group given as `@handle` or its id; empty when unknown."""
        ...

    async def find(self, name: str) -> str | None:
        """The user id for a name typed in chat (`@alice` without Slack's escaping), if known."""
        ...


# --- build ------------------------------------------------------------------------------------------------


class BuildState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCESS = "success"
    UNSTABLE = "unstable"
    FAILURE = "failure"
    ABORTED = "aborted"
    NOT_BUILT = "not_built"
    CANCELLED = "cancelled"  # left the queue without running

    @property
    def finished(self) -> bool:
        return self not in (BuildState.QUEUED, BuildState.RUNNING)


@dataclass(frozen=True)
class BuildRef:
    """A triggered build: while queued only `queue_id` is known (Jenkins queue item, Travis request id)."""

    ci: str
    job: str
    queue_id: str | None = None
    number: int | None = None  # the CI's id of the build (Jenkins build number, Travis build id)
    cancelled: bool = False
    why: str | None = None  # why it still waits, as the CI says it


@dataclass(frozen=True)
class Build:
    """One build as the CI reports it."""

    ci: str
    job: str
    number: int
    label: str  # what people call it: "#7" (Jenkins), "#42" (Travis build number)
    state: BuildState
    url: str | None = None
    started_at: datetime | None = None
    duration_s: float | None = None  # None while running
    estimated_s: float | None = None
    commit: str | None = None
    branch: str | None = None
    cause: str | None = None  # "Started by user alice"
    parameters: tuple[tuple[str, str], ...] = ()
    failed_tests: int | None = None
    total_tests: int | None = None


@dataclass(frozen=True)
class LogChunk:
    """Console text from an offset (the CI's unit: bytes for Jenkins, characters for Travis); `more` while
    the build still writes."""

    text: str
    next_offset: int
    more: bool


class TestStatus(enum.StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class TestCaseResult:
    suite: str
    classname: str
    name: str
    status: TestStatus
    duration_s: float = 0.0
    message: str | None = None  # the failure/error/skip message
    details: str | None = None  # the stack trace or element text

    @property
    def id(self) -> str:
        return f"{self.classname}.{self.name}" if self.classname else self.name


@dataclass(frozen=True)
class TestReport:
    cases: tuple[TestCaseResult, ...]

    def count(self, status: TestStatus) -> int:
        return sum(1 for c in self.cases if c.status is status)

    @property
    def failed(self) -> tuple[TestCaseResult, ...]:
        return tuple(c for c in self.cases if c.status is TestStatus.FAILED)


class CIServer(Protocol):
    """A CI server (Jenkins, Travis CI). `job` is the CI's job path (Jenkins) or repository slug (Travis)."""

    name: str

    async def trigger(self, job: str, params: Mapping[str, str], branch: str | None = None) -> BuildRef:
        """Start a build; the ref carries the queue item (or request) until the build exists."""
        ...

    async def locate(self, ref: BuildRef) -> BuildRef:
        """The ref again, with `number` once the build started, `cancelled` if it never will."""
        ...

    async def build(self, job: str, number: int) -> Build: ...

    async def last_build(self, job: str, *, successful: bool = False) -> Build | None: ...

    async def log(self, job: str, number: int, start: int = 0) -> LogChunk: ...

    async def test_report(self, job: str, number: int) -> TestReport | None:
        """The build's test results, or None when it published none."""
        ...

    async def abort(self, job: str, number: int) -> None: ...

    async def check(self) -> str:
        """Reach the server; a line saying who we are there, or AdapterError."""
        ...


@dataclass(frozen=True)
class Artifact:
    """A file a build archived (Jenkins `archiveArtifacts`)."""

    path: str  # relative to the build's artifact root, `/`-separated (Jenkins `relativePath`)
    name: str  # the file name


@runtime_checkable
class BuildArtifacts(Protocol):
    """A CI that keeps files of its builds and serves them (Jenkins). Travis CI's API has no artifacts
    (its `artifacts` addon uploads to S3), so `TravisCI` does not implement this."""

    async def artifacts(self, job: str, number: int) -> tuple[Artifact, ...]:
        """What the build archived; empty while it runs or when it archived nothing."""
        ...

    async def artifact(self, job: str, number: int, path: str, *, max_bytes: int) -> bytes:
        """One archived file. AdapterNotFound when it is not there (any more); AdapterError, without
        reading further, when it is larger than `max_bytes`."""
        ...


class TestResultsReader(Protocol):
    """JUnit XML (or another format) -> TestReport."""

    async def parse(self, data: bytes, source: str = "") -> TestReport: ...

    async def read(self, path: str) -> TestReport: ...


# --- browser checks --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PageCheck:
    """Open `url`; expect `text` in the page and/or an element matching `css`, within `timeout_s`."""

    url: str
    text: str | None = None
    css: str | None = None
    timeout_s: float = 15.0


@dataclass(frozen=True)
class PageResult:
    url: str
    ok: bool
    message: str  # "found `ok`" or why not
    duration_s: float
    title: str = ""
    screenshot: bytes | None = None  # PNG, when the check failed and a page was there


class Browser(Protocol):
    """A headless browser that checks pages."""

    async def check(self, pages: Sequence[PageCheck]) -> tuple[PageResult, ...]: ...


# --- operate and monitor ---------------------------------------------------------------------------------


class AlertStatus(enum.StrEnum):
    FIRING = "firing"
    RESOLVED = "resolved"


class Severity(enum.StrEnum):
    """Normalised severities, most severe first in `RANK`."""

    CRITICAL = "critical"
    WARNING = "warning"
    INFO = "info"

    @property
    def rank(self) -> int:
        """0 for the most severe."""
        return _SEVERITY_RANK[self.value]


_SEVERITY_RANK = {"critical": 0, "warning": 1, "info": 2}  # asked per alert: made once


@dataclass(frozen=True)
class Alert:
    """One alert from any source, in one shape.

    `fingerprint` identifies the alert within its source (Alertmanager's label hash, Nagios host/service,
    a hash of a Splunk search and its result row); `group_key` the group its card belongs to."""

    source: str  # alertmanager | grafana | nagios | splunk
    fingerprint: str
    status: AlertStatus
    name: str  # alertname, "host/service", search name
    severity: Severity
    group_key: str
    labels: tuple[tuple[str, str], ...] = ()
    annotations: tuple[tuple[str, str], ...] = ()
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    summary: str = ""
    value: str | None = None
    links: tuple[tuple[str, str], ...] = ()  # (what, url): source, dashboard, panel, results, runbook
    generator_url: str | None = None  # Prometheus graph link (holds the PromQL of the alert)

    def label(self, name: str, default: str = "") -> str:
        return next((v for k, v in self.labels if k == name), default)

    def annotation(self, name: str, default: str = "") -> str:
        return next((v for k, v in self.annotations if k == name), default)


@dataclass(frozen=True)
class AlertBatch:
    """What one webhook delivery carried: alerts of one group (or of several, for sources without groups)."""

    source: str
    alerts: tuple[Alert, ...]
    group_labels: tuple[tuple[str, str], ...] = ()
    truncated: int = 0  # alerts the source left out (Alertmanager's max_alerts)


class AlertSource(Protocol):
    """Turns one source's webhook payload into alerts. Malformed payloads raise pydantic.ValidationError
    or ValueError with a reason; unknown extra fields are tolerated."""

    name: str

    def parse(self, payload: Any) -> AlertBatch: ...


@dataclass(frozen=True)
class Matcher:
    """A label matcher as Alertmanager understands it."""

    name: str
    value: str
    is_regex: bool = False
    is_equal: bool = True

    def __str__(self) -> str:
        op = ("=~" if self.is_regex else "=") if self.is_equal else ("!~" if self.is_regex else "!=")
        return f'{self.name}{op}"{self.value}"'


@dataclass(frozen=True)
class Silence:
    id: str
    matchers: tuple[Matcher, ...]
    starts_at: datetime
    ends_at: datetime
    created_by: str
    comment: str
    state: str  # active | pending | expired


class AlertManager(Protocol):
    """Alertmanager's API v2: what fires now, and silences."""

    async def alerts(self, matchers: Sequence[Matcher] = (), *, silenced: bool = True) -> list[Alert]: ...

    async def silence(self, matchers: Sequence[Matcher], ends_at: datetime, created_by: str, comment: str) -> str:
        """Create a silence; its id."""
        ...

    async def expire(self, silence_id: str) -> None: ...

    async def silences(self) -> list[Silence]: ...

    async def check(self) -> str: ...


@dataclass(frozen=True)
class Series:
    labels: tuple[tuple[str, str], ...]
    points: tuple[tuple[float, float], ...]  # (unix seconds, value)


@dataclass(frozen=True)
class QueryResult:
    """A PromQL result: `kind` is vector, matrix, scalar or string."""

    kind: str
    series: tuple[Series, ...] = ()
    scalar: str | None = None


class MetricsSource(Protocol):
    """Prometheus (or a compatible API)."""

    async def query(self, promql: str, at: datetime | None = None) -> QueryResult: ...

    async def query_range(self, promql: str, start: datetime, end: datetime, step_s: float) -> QueryResult: ...

    async def check(self) -> str: ...


class ChartRenderer(Protocol):
    """Draws series as a PNG."""

    async def line_chart(self, title: str, series: Sequence[Series], *, unit: str = "") -> bytes: ...


class MonitoringHost(Protocol):
    """Nagios: acknowledge problems and read status."""

    async def acknowledge(self, host: str, service: str | None, author: str, comment: str) -> None: ...

    async def status(self, host: str, service: str | None) -> str:
        """OK / WARNING / CRITICAL / UNKNOWN (UP / DOWN for hosts); AdapterNotFound if unknown."""
        ...

    async def check(self) -> str: ...


class Dashboards(Protocol):
    """Grafana: render a panel as PNG (AdapterError when no image renderer is installed)."""

    async def render(
        self, dashboard_uid: str, panel_id: int, *, minutes: int = 60, width: int = 1000, height: int = 500
    ) -> bytes: ...

    async def check(self) -> str: ...


@dataclass(frozen=True)
class SearchResult:
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    truncated: bool = False


class LogSearch(Protocol):
    """Splunk: run a search and return its rows."""

    async def search(
        self, query: str, *, earliest: str = "-15m", latest: str = "now", limit: int = 1000
    ) -> SearchResult: ...

    async def check(self) -> str: ...


# --- code and deploy ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Commit:
    sha: str
    author: str
    date: datetime
    subject: str
    tickets: tuple[str, ...] = ()  # keys like ABC-123 found in the message
    merge: bool = False  # more than one parent

    @property
    def short(self) -> str:
        return self.sha[:10]


@dataclass(frozen=True)
class FileChange:
    """One file that differs between two versions; the line counts are None for a binary file."""

    path: str
    added: int | None
    deleted: int | None
    old_path: str | None = None  # where the file was before a rename

    @property
    def lines(self) -> int:
        """Lines added plus lines deleted (0 for a binary file)."""
        return (self.added or 0) + (self.deleted or 0)


@dataclass(frozen=True)
class AuthorStat:
    """How many commits one author made to a path, and the date of the newest one."""

    author: str
    commits: int
    last: datetime


class Repository(Protocol):
    """A service's git repository: versions are tags (v1.2.3 or 1.2.3) or commit SHAs."""

    async def resolve(self, version: str) -> str:
        """The commit SHA of a version; AdapterNotFound when the repository has no such tag or commit."""
        ...

    async def commits_between(self, old: str | None, new: str, limit: int = 200) -> list[Commit]:
        """Commits in `new` that are not in `old` (all of `new`'s history when old is None), newest first."""
        ...

    async def log(self, ref: str = "HEAD", limit: int = 10) -> list[Commit]:
        """The last `limit` commits of a branch, tag or SHA, newest first."""
        ...

    async def count_between(self, old: str | None, new: str) -> int:
        """How many commits `commits_between(old, new)` would list without a limit."""
        ...

    async def files_changed(self, old: str, new: str) -> list[FileChange]:
        """Files changed on the way from `old` to `new` (from their common ancestor to `new`, as
        `git diff old...new`), with line counts; renames are followed."""
        ...

    async def authors_of(self, path: str, ref: str = "HEAD", limit: int = 500) -> list[AuthorStat]:
        """Who changed `path` (a file or directory, relative to the repository root) in the last
        `limit` non-merge commits of `ref` that touch it; most commits first. AdapterError for a path
        that could be read as an option or leaves the repository."""
        ...

    async def check(self) -> str: ...


class Registry(Protocol):
    """A container registry (Docker Registry HTTP API v2)."""

    async def digest(self, repository: str, tag: str) -> str:
        """`sha256:…` of the tag's manifest; AdapterNotFound when the tag does not exist."""
        ...

    async def tags(self, repository: str) -> list[str]: ...

    async def check(self) -> str: ...


@dataclass(frozen=True)
class TargetSpec:
    """Where and how one service is deployed in one environment (from the config)."""

    service: str
    env: str
    kind: str  # kubernetes | command
    namespace: str | None = None
    deployment: str | None = None
    container: str | None = None
    image: str | None = None  # repository, e.g. registry.example.com/shop/api
    context: str | None = None  # kubeconfig context
    argv: tuple[str, ...] = ()  # command target; {service} {version} {env} {image} are substituted
    timeout_s: float = 600.0


@dataclass(frozen=True)
class DeployProgress:
    """A snapshot of a rollout, for the card: what the target says now."""

    message: str
    desired: int | None = None
    updated: int | None = None
    available: int | None = None
    events: tuple[str, ...] = ()  # warnings such as "ImagePullBackOff: ..." or "CrashLoopBackOff: ..."
    output: str = ""  # new output lines of a command target


@dataclass(frozen=True)
class DeployResult:
    ok: bool
    message: str
    revision: str | None = None  # the target's own revision (ReplicaSet revision), when it has one


ProgressFn = Callable[[DeployProgress], Awaitable[None]]


@dataclass(frozen=True)
class PodInfo:
    name: str
    ready: bool
    status: str
    restarts: int
    version: str | None


@dataclass(frozen=True)
class WorkloadStatus:
    version: str | None  # the tag (or digest) of the running image
    image: str | None
    desired: int
    ready: int
    available: int
    pods: tuple[PodInfo, ...] = ()
    message: str = ""
    counts_replicas: bool = True  # False: desired/ready/available mean nothing (a command target)


@runtime_checkable
class Warmable(Protocol):
    """A tool whose first call is slow for reasons of its own (a client that imports its API lazily);
    opsloop warms it in the background at start, so that first call keeps its timeout."""

    async def warm(self) -> None: ...


class DeployTarget(Protocol):
    """Kubernetes or a command (helm, ansible, a script)."""

    name: str
    resumable: bool  # can `resume` re-attach to a rollout after a restart
    operates: bool  # can `scale` and `restart` the workload (a command target can't)
    revisions: bool  # can roll back to its previous revision without being told a version (rollout undo)

    async def running_version(self, spec: TargetSpec) -> str | None: ...

    async def deploy(self, spec: TargetSpec, version: str, image: str | None, progress: ProgressFn) -> DeployResult:
        """Roll out `version` (`image` is the full reference, ideally with digest) and wait for the result."""
        ...

    async def resume(self, spec: TargetSpec, version: str, progress: ProgressFn) -> DeployResult:
        """Wait for a rollout started before a restart; NotImplemented-style AdapterError when impossible."""
        ...

    async def rollback(
        self, spec: TargetSpec, to_version: str | None, image: str | None, progress: ProgressFn
    ) -> DeployResult:
        """Back to `to_version` (or the previous revision when None) and wait for the result."""
        ...

    async def status(self, spec: TargetSpec) -> WorkloadStatus: ...

    async def scale(self, spec: TargetSpec, replicas: int) -> None: ...

    async def restart(self, spec: TargetSpec, progress: ProgressFn) -> DeployResult: ...

    async def check(self) -> str: ...
