"""What a handler is handed: who acts, where, the ports and core services, and helpers to answer."""

from __future__ import annotations

import base64
import difflib
import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from bot import rendering
from bot import views as v
from bot.approvals import Approvals
from bot.audit import AuditEntry, AuditLog, Outcome
from bot.blocking import BlockingPool
from bot.clock import Clock
from bot.config import Config, ServiceConfig
from bot.errors import NotConfigured, NotFound
from bot.jobs import JobRunner
from bot.metrics import Metrics
from bot.outbox import Outbox
from bot.policy import Policy
from bot.poller import Poller
from bot.ports import (
    AlertManager,
    AlertSource,
    Browser,
    ChartRenderer,
    CIServer,
    Dashboards,
    DeployTarget,
    Directory,
    LogSearch,
    MetricsSource,
    MonitoringHost,
    Registry,
    Repository,
    SqlStore,
    TestResultsReader,
    Tracker,
)
from bot.redact import Redactor

if TYPE_CHECKING:
    from bot.alerts import AlertPipeline
    from bot.router import Router


@dataclass(frozen=True)
class Quoted:
    """A message someone wrote, read back from the chat (for a reaction that files it)."""

    text: str
    author: str | None
    link: str | None
    channel_name: str | None = None  # "team-api", to find the service whose channel it is


class Surface(Protocol):
    """Interaction a transport offers beyond messages: modals (Slack views.open, console prompts), and
    reading a message back."""

    async def open_modal(self, trigger_id: str | None, modal: v.Modal, *, user: str, channel: str) -> None: ...

    async def quote(self, channel: str, ts: str) -> Quoted | None:
        """The message at `ts` with its permalink; None when it can't be read (gone, no access)."""
        ...


@dataclass
class Services:
    """The core services and ports, built once by `bot.app`."""

    config: Config
    store: SqlStore
    clock: Clock
    audit: AuditLog
    outbox: Outbox
    jobs: JobRunner
    policy: Policy
    approvals: Approvals
    directory: Directory
    metrics: Metrics
    redactor: Redactor
    trackers: dict[str, Tracker] = field(default_factory=dict)
    blocking: BlockingPool = field(default_factory=BlockingPool)
    ci: dict[str, CIServer] = field(default_factory=dict)
    test_reader: TestResultsReader | None = None
    browser: Browser | None = None
    poller: Poller = field(default_factory=Poller)
    alert_sources: dict[str, AlertSource] = field(default_factory=dict)
    alertmanager: AlertManager | None = None
    prometheus: MetricsSource | None = None
    charts: ChartRenderer | None = None
    nagios: MonitoringHost | None = None
    grafana: Dashboards | None = None
    splunk: LogSearch | None = None
    targets: dict[str, DeployTarget] = field(default_factory=dict)
    registry: Registry | None = None
    repos: dict[str, Repository] = field(default_factory=dict)

    @functools.cached_property
    def alerts(self) -> AlertPipeline:
        """The alert pipeline (built on first use; it needs the other services)."""
        from bot.alerts import AlertPipeline

        return AlertPipeline(self)

    async def post(
        self,
        channel: str,
        msg: v.Message,
        *,
        key: str | None = None,
        thread_key: str | None = None,
        thread_ts: str | None = None,
        dedupe: str | None = None,
    ) -> None:
        """Post a message through the outbox; with `key`, later `update(key)` edits it in place."""
        await self.outbox.post(
            channel, rendering.message(msg), key=key, thread_key=thread_key, thread_ts=thread_ts, dedupe=dedupe
        )

    async def update(self, key: str, msg: v.Message) -> bool:
        """Edit the message posted under `key`; False if there is none."""
        return await self.outbox.update(key, rendering.message(msg))

    def post_in(self, db: Any, channel: str, msg: v.Message, **kw: Any) -> None:
        """Queue a post inside a running write, so it commits (or not) with the change it reports."""
        self.outbox.post_in(db, channel, rendering.message(msg), **kw)

    async def upload(
        self,
        channel: str,
        filename: str,
        content: str | bytes,
        *,
        title: str = "",
        comment: str = "",
        thread_key: str | None = None,
        thread_ts: str | None = None,
    ) -> None:
        """Upload a file (a long log, a screenshot) through the outbox; text is redacted like any message."""
        payload: dict[str, str] = {"filename": filename, "title": title or filename, "comment": comment}
        if isinstance(content, bytes):
            payload["content_b64"] = base64.b64encode(content).decode()
        else:
            payload["content"] = content
        await self.store.write(
            lambda db: self.outbox.upload_in(db, channel, payload, thread_key=thread_key, thread_ts=thread_ts)
        )
        self.outbox.kick()

    def service(self, name: str) -> ServiceConfig:
        """A configured service; NotFound with the nearest names otherwise."""
        svc = self.config.services.get(name)
        if svc is not None:
            return svc
        known = sorted(self.config.services)
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" Did you mean `{close[0]}`?" if close else ""
        listed = ", ".join(f"`{k}`" for k in known) or "none yet (add them under `services:`)"
        raise NotFound(f"There is no service `{name}`.{hint} Configured: {listed}.")

    def tracker(self, name: str | None = None) -> Tracker:
        """The named tracker, or the configured default; NotConfigured if absent."""
        name = name or self.config.plan.tracker
        t = self.trackers.get(name)
        if t is None:
            known = ", ".join(sorted(self.trackers)) or "none"
            raise NotConfigured(
                f"The tracker `{name}` isn't configured (configured: {known}). "
                f"Add it under `integrations.{name}` or use `plan.tracker: local`."
            )
        return t

    def service_of_channel(self, *names: str | None) -> str | None:
        """The service whose `channel` is one of `names` (an id, or a name with or without #)."""
        wanted = {n for n in names if n} | {f"#{n}" for n in names if n and not n.startswith("#")}
        for name, svc in self.config.services.items():
            if svc.channel and svc.channel in wanted:
                return name
        return None

    def tracker_of(self, service: str | None) -> Tracker:
        """The tracker a service files its items in (`services.X.tracker`), else the default."""
        svc = self.config.services.get(service) if service else None
        return self.tracker(svc.tracker if svc else None)

    def tracker_for(self, key: str) -> Tracker:
        """The tracker an item key belongs to, told by its shape: the built-in prefix (OPS-12), the
        Jira project (ABC-12), a Trello short link (8 letters and digits), an Asana gid (long
        number). A bare number, or a shape two trackers share, goes to the default tracker."""
        default = self.config.plan.tracker
        i = self.config.integrations
        owners: list[str] = []
        prefix, dash, number = key.partition("-")
        if dash and number.isdigit():
            if prefix == self.config.plan.prefix:
                owners.append("local")
            if i.jira is not None and prefix == i.jira.project.upper():
                owners.append("jira")
            if not owners and i.jira is not None:
                owners.append("jira")  # another Jira project the same site may hold
        elif key.isdigit():
            if len(key) >= 10 and i.asana is not None:
                owners.append("asana")
        elif len(key) == 8 and key.isalnum() and i.trello is not None:
            owners.append("trello")
        name = owners[0] if len(owners) == 1 else default
        return self.tracker(name)


@dataclass
class Ctx:
    """One invocation: a command, a click, a submit or a shortcut."""

    actor: str
    channel: str
    services: Services
    surface: Surface
    router: Router
    thread_ts: str | None = None
    trigger_id: str | None = None
    response_url: str | None = None
    message_ts: str | None = None
    source: str = "slash"

    @property
    def config(self) -> Config:
        return self.services.config

    @property
    def policy(self) -> Policy:
        return self.services.policy

    @property
    def approvals(self) -> Approvals:
        return self.services.approvals

    @property
    def jobs(self) -> JobRunner:
        return self.services.jobs

    @property
    def directory(self) -> Directory:
        return self.services.directory

    @property
    def store(self) -> SqlStore:
        return self.services.store

    @property
    def clock(self) -> Clock:
        return self.services.clock

    @property
    def metrics(self) -> Metrics:
        return self.services.metrics

    @property
    def audit_log(self) -> AuditLog:
        return self.services.audit

    @property
    def redactor(self) -> Redactor:
        return self.services.redactor

    def service(self, name: str) -> ServiceConfig:
        """A configured service (see Services.service)."""
        return self.services.service(name)

    def tracker(self, name: str | None = None) -> Tracker:
        """The tracker to use (see Services.tracker)."""
        return self.services.tracker(name)

    async def authorize(self, key: str) -> None:
        """Raise NotAllowed (with the reason) unless the actor may do `key`; for handlers that decide
        what they do only after reading the event (a reaction may file feedback or a ticket)."""
        await self.router.authorize(self.actor, key)

    async def post(
        self,
        msg: v.Message,
        *,
        channel: str | None = None,
        key: str | None = None,
        thread_key: str | None = None,
        thread_ts: str | None = None,
        dedupe: str | None = None,
    ) -> None:
        """Post a message (through the outbox); with `key`, later `update(key)` edits it in place."""
        await self.services.post(
            channel or self.channel, msg, key=key, thread_key=thread_key, thread_ts=thread_ts, dedupe=dedupe
        )

    async def update(self, key: str, msg: v.Message) -> bool:
        """Edit the message posted under `key`; False if there is none."""
        return await self.services.update(key, msg)

    async def tell(self, text: str) -> None:
        """A private note to the acting user in this channel."""
        await self.services.outbox.ephemeral(
            self.channel, self.actor, rendering.message(v.Message(text, (v.Section(text),))), self.thread_ts
        )

    async def open_modal(self, modal: v.Modal) -> None:
        """Open a form for the acting user."""
        await self.surface.open_modal(self.trigger_id, modal, user=self.actor, channel=self.channel)

    async def audit(
        self,
        action: str,
        outcome: Outcome,
        *,
        target: str | None = None,
        reason: str | None = None,
        detail: dict[str, object] | None = None,
    ) -> None:
        """Record a decision in the audit log."""
        await self.services.audit.record(
            AuditEntry(self.actor, action, outcome, self.channel, target, reason, detail or {})
        )
