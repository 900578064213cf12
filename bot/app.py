"""The composition root: config -> adapters -> store -> jobs -> router -> transports.

This is the only module that names concrete adapters. `Opsloop` owns everything that runs (store
writer, outbox worker, jobs, the approval sweeper, the web server) and stops it in reverse order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from rich.console import Console

from adapters.alertmanager import AlertmanagerAPI, AlertmanagerWebhook
from adapters.charts import MatplotlibCharts
from adapters.command import CommandTarget
from adapters.grafana import GrafanaAPI, GrafanaWebhook
from adapters.junit import JUnitReader
from adapters.nagios import NagiosCommands, NagiosWebhook
from adapters.prometheus import PrometheusMetrics
from adapters.registry import DockerRegistry
from adapters.selenium import ChromiumBrowser
from adapters.splunk import SplunkSearch, SplunkWebhook
from adapters.tracker_local import LocalTracker
from adapters.travis import TravisCI
from adapters.trello import DEFAULT_URL as TRELLO_API
from adapters.trello import TrelloTracker
from bot import views as v
from bot.approvals import Approvals
from bot.audit import AuditLog
from bot.blocking import BlockingPool
from bot.clock import Clock, SystemClock
from bot.config import Config, Env, database_path, secret_values
from bot.console import ConsoleDirectory, ConsoleScreen, ConsoleSession, ConsoleSurface, ConsoleTransport
from bot.context import Services
from bot.errors import ConfigError
from bot.jobs import Job, JobRunner
from bot.metrics import Metrics
from bot.outbox import ChatTransport, Outbox, Pacing
from bot.policy import Policy
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
    TestResultsReader,
    Tracker,
    Warmable,
)
from bot.redact import Redactor, redact_own_logs
from bot.releases import end_expired_freezes
from bot.router import CommandGroup, Router
from bot.store import Store
from bot.web import build_web_app
from handlers import build as build_stage
from handlers import code, core, deploy, feedback, insights, monitor, plan, test

log = logging.getLogger(__name__)

GROUPS: tuple[CommandGroup, ...] = (
    core.group,
    plan.group,
    code.group,
    build_stage.group,
    test.group,
    deploy.group,
    monitor.group,
    feedback.group,
    insights.group,
)
SWEEP_SECONDS = 30.0
EVENT_MEMORY = 2 * 86400.0
OUTBOX_MEMORY = 7 * 86400.0


class _JobNotices:
    """Job failures and interruptions go to the job's thread (or channel)."""

    def __init__(self, services_ref: list[Services]) -> None:
        self._ref = services_ref

    async def _say(self, job: Job, text: str) -> None:
        services = self._ref[0]
        channel = job.channel or services.config.channels.default
        msg = v.Message(text, (v.Section(text),))
        await services.post(channel, msg, thread_ts=job.thread_ts, dedupe=f"job:{job.id}:{job.attempts}:end")

    async def job_failed(self, job: Job, message: str) -> None:
        await self._say(job, f":x: `{job.kind}` for `{job.key}` failed: {message}")

    async def job_interrupted(self, job: Job) -> None:
        who = f" <@{job.requester}>" if job.requester else ""
        await self._say(
            job,
            f":warning:{who} `{job.kind}` for `{job.key}` was interrupted by a restart of "
            "opsloop and did not finish; run it again if it is still needed.",
        )


@dataclass
class Tools:
    """The adapters the config asks for, by port."""

    ci: dict[str, CIServer] = field(default_factory=dict)
    test_reader: TestResultsReader | None = None
    browser: Browser | None = None
    charts: ChartRenderer | None = None
    alert_sources: dict[str, AlertSource] = field(default_factory=dict)
    alertmanager: AlertManager | None = None
    prometheus: MetricsSource | None = None
    nagios: MonitoringHost | None = None
    grafana: Dashboards | None = None
    splunk: LogSearch | None = None
    targets: dict[str, DeployTarget] = field(default_factory=dict)
    registry: Registry | None = None
    repos: dict[str, Repository] = field(default_factory=dict)
    trackers: dict[str, Tracker] = field(default_factory=dict)  # the external ones; `local` lives in the store

    def reachable(self) -> list[tuple[str, Any]]:
        """(config path, adapter) of everything `opsloop check` should reach."""
        out: list[tuple[str, Any]] = [(f"integrations.{name}", server) for name, server in self.ci.items()]
        for name in ("alertmanager", "prometheus", "nagios", "grafana", "splunk", "registry"):
            adapter = getattr(self, name)
            if adapter is not None:
                out.append((f"integrations.{name}", adapter))
        out.extend((f"deploy target {name}", t) for name, t in self.targets.items())
        out.extend((f"integrations.{name}", t) for name, t in self.trackers.items())
        seen: set[int] = set()
        for service, repo in self.repos.items():
            if id(repo) not in seen:
                seen.add(id(repo))
                out.append((f"services.{service}.repo", repo))
        return out

    async def close(self) -> None:
        """Release what the adapters hold (HTTP sessions, client threads)."""
        trackers = {id(t) for t in self.trackers.values()}
        for _, adapter in self.reachable():
            # A tracker's `close` closes a work item; trackers release with `aclose` or `shutdown`.
            names = ("aclose", "shutdown") if id(adapter) in trackers else ("aclose", "close")
            closer = next((getattr(adapter, n) for n in names if hasattr(adapter, n)), None)
            if closer is not None:
                result = closer()
                if asyncio.iscoroutine(result):
                    await result


@dataclass
class Opsloop:
    """A running opsloop: services, router and the tasks it owns."""

    config: Config
    env: Env
    services: Services
    router: Router
    store: Store
    transport: ChatTransport
    surface: Any
    tools: Tools = field(default_factory=Tools)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _runner: web.AppRunner | None = None
    port: int | None = None

    async def start(self) -> None:
        """Recover what a previous run left, then start delivering, running and sweeping."""
        await self.services.outbox.start(self.config.channel_names())
        await self.services.jobs.recover()
        await self.services.approvals.expire_due()
        self._tasks.append(asyncio.create_task(self._sweep(), name="approval-sweeper"))
        for target in self.tools.targets.values():
            if isinstance(target, Warmable):
                self._tasks.append(asyncio.create_task(target.warm(), name=f"warm-{target.name}"))
        for seconds, fn in self.router.periodics:
            self._tasks.append(asyncio.create_task(self._every(seconds, fn), name=f"every-{fn.__name__}"))

    async def _every(self, seconds: float, fn: Any) -> None:
        while True:
            try:
                await fn(self.services)
            except Exception:  # the next round tries again
                log.exception("periodic %s failed", getattr(fn, "__name__", fn))
            await asyncio.sleep(seconds)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            try:
                await self.services.approvals.expire_due()
                await end_expired_freezes(self.services)  # their notices say so when they run out
                await self.prune()
            except Exception:
                log.exception("periodic sweep failed")

    async def prune(self) -> None:
        """Forget what is only kept for deduplication once it is old enough not to come back."""
        now = self.services.clock.now()

        def tx(db: Any) -> None:
            # Slack retries an event for at most a few minutes (hours with Delayed Events on).
            db.execute("DELETE FROM seen_events WHERE at < ?", (now - EVENT_MEMORY,))
            # Delivered writes with a dedupe key keep it for a week; the rest (card edits, mostly) are
            # history nobody reads after an hour. message_refs stay for good.
            db.execute("DELETE FROM outbox WHERE state = 'sent' AND sent_at < ?", (now - OUTBOX_MEMORY,))
            db.execute(
                "DELETE FROM outbox WHERE state = 'sent' AND dedupe_key IS NULL AND sent_at < ?", (now - 3600.0,)
            )

        await self.services.store.write(tx)

    async def health(self) -> dict[str, Any]:
        """What /healthz reports."""
        depth = await self.services.outbox.depth()
        return {"status": "ok", "outbox_depth": depth}

    async def serve_http(self, host: str, port: int, bolt: Any = None) -> int:
        """Start the web server; return the bound port (port 0 picks a free one)."""
        app = build_web_app(
            self.router, self.services, webhook_token=self.env.webhook_token, bolt=bolt, health=self.health
        )
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1]) if sockets else port
        return self.port

    async def stop(self) -> None:
        """Stop in reverse order; queued writes and jobs stay in the database for next time."""
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
        await self.services.jobs.stop()
        await self.services.poller.stop()
        await self.services.outbox.stop()
        await self.tools.close()
        self.services.blocking.close()
        await self.store.close()


def build_tools(
    config: Config, pool: BlockingPool, *, base_dir: Path | None = None, redactor: Redactor | None = None
) -> Tools:
    """Construct the adapter of every configured integration (nothing is contacted yet).

    Every `*_env` that is not set is reported at once, with its config path."""
    problems: list[tuple[str, str]] = []

    def secret(variable: str | None, path: str) -> str | None:
        if variable is None:
            return None
        value = os.environ.get(variable)
        if not value:
            problems.append((path, f"{variable} is not set; export it with the secret it names"))
        return value

    i = config.integrations
    tools = Tools(
        test_reader=JUnitReader(pool),
        browser=ChromiumBrowser(pool),
        charts=MatplotlibCharts(pool),
        alert_sources={s.name: s for s in (AlertmanagerWebhook(), GrafanaWebhook(), NagiosWebhook(), SplunkWebhook())},
    )
    # The client libraries of the tools are imported only when a tool is configured: together they cost
    # a second of start-up and some 40 MiB that an opsloop without them never uses.
    if i.jenkins is not None:
        from adapters.jenkins import JenkinsCI

        token = secret(i.jenkins.token_env, "integrations.jenkins.token_env")
        tools.ci["jenkins"] = JenkinsCI(
            i.jenkins.url, i.jenkins.user, token, pool=pool, timeout=i.jenkins.timeout.total_seconds()
        )
    if i.travis is not None:
        token = secret(i.travis.token_env, "integrations.travis.token_env")
        tools.ci["travis"] = TravisCI(i.travis.url, token or "", timeout=i.travis.timeout.total_seconds())
    if i.alertmanager is not None:
        tools.alertmanager = AlertmanagerAPI(
            i.alertmanager.url,
            timeout=i.alertmanager.timeout.total_seconds(),
            token=secret(i.alertmanager.token_env, "integrations.alertmanager.token_env"),
        )
    if i.prometheus is not None:
        tools.prometheus = PrometheusMetrics(
            i.prometheus.url,
            pool=pool,
            timeout=i.prometheus.timeout.total_seconds(),
            token=secret(i.prometheus.token_env, "integrations.prometheus.token_env"),
        )
    if i.nagios is not None:
        tools.nagios = NagiosCommands(i.nagios.command_file, i.nagios.status_file, pool=pool)
    if i.grafana is not None:
        tools.grafana = GrafanaAPI(
            i.grafana.url,
            timeout=i.grafana.timeout.total_seconds(),
            token=secret(i.grafana.token_env, "integrations.grafana.token_env"),
        )
    if i.splunk is not None:
        token = secret(i.splunk.token_env, "integrations.splunk.token_env")
        tools.splunk = SplunkSearch(
            i.splunk.url, token=token or "", timeout=i.splunk.timeout.total_seconds(), verify_tls=i.splunk.verify_tls
        )
    if i.registry is not None:
        tools.registry = DockerRegistry(
            i.registry.url,
            user=i.registry.user,
            timeout=i.registry.timeout.total_seconds(),
            password=secret(i.registry.password_env, "integrations.registry.password_env"),
        )
    if i.kubernetes is not None:
        from adapters.kubernetes import KubernetesTarget

        k = i.kubernetes
        tools.targets["kubernetes"] = KubernetesTarget(
            pool=pool,
            kubeconfig=k.kubeconfig,
            context=k.context,
            in_cluster=k.in_cluster,
            timeout=k.timeout.total_seconds(),
        )
    base = base_dir or Path.cwd()
    commands = [s.deploy.command for s in config.services.values() if s.deploy and s.deploy.command]
    commands += [o.command for s in config.services.values() if s.deploy for o in s.deploy.envs.values() if o.command]
    cmd = i.command
    tools.targets["command"] = CommandTarget(
        redactor=redactor or Redactor(),
        pass_env=cmd.pass_env,
        commands=commands,
        version_file=str(base / cmd.version_file) if cmd.version_file else None,
        cwd=cmd.cwd or str(base),
    )
    clones: dict[str, Repository] = {}
    for name, svc in config.services.items():
        if svc.repo is None:
            continue
        where = svc.repo.url or str((base / (svc.repo.path or ".")).resolve())
        if where not in clones:
            from adapters.git import GitRepository

            clones[where] = GitRepository(
                pool=pool,
                url=svc.repo.url,
                branch=svc.repo.branch,
                path=None if svc.repo.url else where,
                cache_dir=str(base / ".opsloop-git"),
            )
        tools.repos[name] = clones[where]
    if i.jira is not None:
        from adapters.jira import JiraTracker

        j = i.jira
        tools.trackers["jira"] = JiraTracker(
            j.url,
            user=j.user,
            token=secret(j.token_env, "integrations.jira.token_env") or "",
            project=j.project,
            issue_type=j.issue_type,
            done=j.done,
            users=j.users,
            pool=pool,
            timeout=j.timeout.total_seconds(),
            token_env=j.token_env,
        )
    if i.trello is not None:
        t = i.trello
        tools.trackers["trello"] = TrelloTracker(
            key=secret(t.key_env, "integrations.trello.key_env") or "",
            token=secret(t.token_env, "integrations.trello.token_env") or "",
            board=t.board,
            todo_list=t.todo_list,
            done_list=t.done_list,
            users=t.users,
            timeout=t.timeout.total_seconds(),
            base_url=t.url or TRELLO_API,
            key_env=t.key_env,
            token_env=t.token_env,
        )
    if i.asana is not None:
        from adapters.asana import AsanaTracker

        a = i.asana
        tools.trackers["asana"] = AsanaTracker(
            token=secret(a.token_env, "integrations.asana.token_env") or "",
            workspace=a.workspace,
            project=a.project,
            users=a.users,
            pool=pool,
            timeout=a.timeout.total_seconds(),
            host=a.url,
            token_env=a.token_env,
        )
    if problems:
        raise ConfigError("environment", problems)
    return tools


async def build(
    config: Config,
    env: Env,
    *,
    transport: ChatTransport,
    directory: Directory,
    surface: Any,
    clock: Clock | None = None,
    pacing: Pacing | None = None,
    groups: Sequence[CommandGroup] = GROUPS,
) -> Opsloop:
    """Wire everything for one transport; the store is opened (migrations applied) here."""
    clock = clock or SystemClock()
    blocking = BlockingPool()  # every adapter on a sync library shares it (bounded, with timeouts)
    redactor = Redactor(secret_values(config, env))
    # Before the store opens: a missing secret stops us cleanly.
    tools = build_tools(config, blocking, base_dir=env.config_path.parent.resolve(), redactor=redactor)
    store = Store(database_path(config, env))
    await store.open()
    metrics = Metrics()
    outbox = Outbox(store, transport, metrics, clock, redactor, pacing)
    ref: list[Services] = []
    jobs = JobRunner(store, clock, metrics, _JobNotices(ref))
    policy = Policy(config, directory)
    audit = AuditLog(store, redactor, clock)
    approvals = Approvals(store, config, policy, jobs, outbox, audit, clock)
    trackers: dict[str, Tracker] = {"local": LocalTracker(store, config.plan.prefix, clock.now), **tools.trackers}
    services = Services(
        config=config,
        store=store,
        clock=clock,
        audit=audit,
        outbox=outbox,
        jobs=jobs,
        policy=policy,
        approvals=approvals,
        directory=directory,
        metrics=metrics,
        redactor=redactor,
        trackers=trackers,
        blocking=blocking,
        ci=tools.ci,
        test_reader=tools.test_reader,
        browser=tools.browser,
        charts=tools.charts,
        alert_sources=tools.alert_sources,
        alertmanager=tools.alertmanager,
        prometheus=tools.prometheus,
        nagios=tools.nagios,
        grafana=tools.grafana,
        splunk=tools.splunk,
        targets=tools.targets,
        registry=tools.registry,
        repos=tools.repos,
    )
    ref.append(services)
    router = Router(groups, services)
    redact_own_logs(redactor)  # after every stage and adapter module has made its logger
    return Opsloop(config, env, services, router, store, transport, surface, tools)


async def build_slack(config: Config, env: Env, **kw: Any) -> tuple[Opsloop, Any, Any]:
    """opsloop for Slack: returns (opsloop, bolt app, frontend)."""
    from bot.slack import SlackDirectory, SlackFrontend, SlackSurface, SlackTransport, bolt_app, web_client

    assert env.bot_token is not None
    client = web_client(env.bot_token, env.api_url)
    directory = SlackDirectory(client, group_ttl=config.slack.group_cache.total_seconds())
    ops = await build(
        config, env, transport=SlackTransport(client), directory=directory, surface=SlackSurface(client), **kw
    )
    bolt = bolt_app(client, env.signing_secret)
    frontend = SlackFrontend(ops.router, ops.services, client)
    frontend.register(bolt)
    return ops, bolt, frontend


async def build_console(
    config: Config, env: Env, out: Console | None = None, **kw: Any
) -> tuple[Opsloop, ConsoleSession]:
    """opsloop for the terminal: returns (opsloop, session)."""
    directory = ConsoleDirectory(config)
    screen = ConsoleScreen(out or Console(), directory)
    surface = ConsoleSurface()
    ops = await build(config, env, transport=ConsoleTransport(screen), directory=directory, surface=surface, **kw)
    session = ConsoleSession(ops.router, ops.services, screen, surface, directory, config)
    return ops, session


@contextlib.asynccontextmanager
async def running(ops: Opsloop) -> Any:
    """Start an Opsloop and stop it at the end of the block."""
    await ops.start()
    try:
        yield ops
    finally:
        await ops.stop()
