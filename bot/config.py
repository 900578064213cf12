"""Typed configuration: YAML for the shape of the team, the environment for secrets.

`load_config` reports every problem at once, each with its path (`environments.prod.approvals.required`)
and a hint, so a bad config is fixed in one pass. Secrets never live in the YAML: a key such as
`token` must be written `token_env: VARIABLE` and the value is read from the environment.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from bot.durations import parse_duration
from bot.errors import ConfigError

EVERYONE = "everyone"
_SECRET_KEYS = re.compile(r"^(token|password|secret|api_key|apikey|signing_secret|client_secret)$", re.I)
_USER_ID = re.compile(r"^[UW][A-Z0-9]{2,}$")
_GROUP = re.compile(r"^(@[\w.-]+|S[A-Z0-9]{2,})$")


def _duration(value: Any) -> Any:
    if isinstance(value, str):
        return parse_duration(value)
    if isinstance(value, int | float):
        return timedelta(seconds=value)
    return value


Duration = Annotated[timedelta, BeforeValidator(_duration)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class Storage(_Model):
    path: str = Field("opsloop.db", description="SQLite file, relative to the config file")


class Channels(_Model):
    default: str = Field("#ops", description="where replies and cards go when nothing else is set")
    approvals: str | None = Field(None, description="approval cards (default: the requester's channel)")
    feedback: str | None = Field(None, description="feedback cards (default: `default`)")
    alerts: str | None = None


class ApprovalRule(_Model):
    """N distinct approvers from a role; the requester never counts unless self_approval."""

    required: int = Field(1, ge=1, le=10)
    from_: str = Field(alias="from", description="role whose members may approve")
    self_approval: bool = False
    expire_after: Duration = Field(timedelta(minutes=30), description="e.g. 30m, 2h")


TrackerName = Literal["local", "jira", "trello", "asana"]


class PlanConfig(_Model):
    prefix: str = Field("OPS", pattern=r"^[A-Z][A-Z0-9]{0,9}$", description="key prefix: OPS-12")
    tracker: TrackerName = Field("local", description="default tracker for `plan new`")
    unfurl: bool = Field(
        True, description="answer an item key or link pasted in a channel with a small card (in its thread)"
    )


class FeedbackConfig(_Model):
    reactions: dict[str, Literal["feedback", "ticket"]] = Field(
        default_factory=dict,
        description="emoji name (without colons) -> what reacting with it files: feedback, or a ticket in "
        "the tracker of the channel's service",
    )


class ConsoleConfig(_Model):
    """Who exists in `opsloop console`, where there is no Slack to ask."""

    user: str = Field("me", description="the acting user at start (a name from `people`)")
    channel: str = "#ops"
    people: dict[str, str] = Field(default_factory=dict, description="name -> user id")
    groups: dict[str, list[str]] = Field(default_factory=dict, description="@handle -> user ids")


class SlackConfig(_Model):
    group_cache: Duration = Field(timedelta(minutes=10), description="how long user-group members are cached")


class JenkinsConfig(_Model):
    """A Jenkins server, driven through python-jenkins with an API token."""

    url: str = Field(description="e.g. https://ci.example.com/")
    user: str | None = Field(None, description="the user the API token belongs to")
    token_env: str | None = Field(None, description="environment variable holding the API token")
    timeout: Duration = Field(timedelta(seconds=10), description="per request; a hung Jenkins never blocks opsloop")
    poll: Duration = Field(timedelta(seconds=5), description="how often a watched build is polled (backs off)")


class TravisConfig(_Model):
    """Travis CI through its API v3."""

    url: str = "https://api.travis-ci.com"
    token_env: str | None = Field(None, description="environment variable holding the API token")
    timeout: Duration = Field(timedelta(seconds=10))
    poll: Duration = Field(timedelta(seconds=10))


class PrometheusConfig(_Model):
    url: str = Field(description="e.g. http://prometheus:9090")
    token_env: str | None = Field(None, description="bearer token, if Prometheus sits behind a proxy that wants one")
    timeout: Duration = Field(timedelta(seconds=10))


class AlertmanagerConfig(_Model):
    url: str = Field(description="e.g. http://alertmanager:9093")
    token_env: str | None = None
    timeout: Duration = Field(timedelta(seconds=10))


class GrafanaConfig(_Model):
    url: str = Field(description="e.g. https://grafana.example.com")
    token_env: str | None = Field(None, description="service account token")
    timeout: Duration = Field(timedelta(seconds=30), description="rendering a panel can be slow")
    panels: dict[str, str] = Field(default_factory=dict, description="name -> DASHBOARD_UID/PANEL_ID for `graph`")


class NagiosConfig(_Model):
    command_file: str = Field("/var/lib/nagios4/rw/nagios.cmd", description="the external command FIFO")
    status_file: str = Field("/var/lib/nagios4/status.dat")


class SplunkConfig(_Model):
    url: str = Field(description="management port, e.g. https://splunk:8089")
    token_env: str | None = Field(None, description="authentication token (sent as Bearer)")
    timeout: Duration = Field(timedelta(seconds=30))
    verify_tls: bool = True


class KubernetesConfig(_Model):
    kubeconfig: str | None = Field(None, description="path of a kubeconfig (default ~/.kube/config)")
    context: str | None = Field(None, description="default context; environments may name their own")
    in_cluster: bool = Field(False, description="use the pod's service account instead of a kubeconfig")
    timeout: Duration = Field(timedelta(seconds=10), description="per API request")


class RegistryConfig(_Model):
    url: str = Field(description="e.g. https://registry.example.com")
    user: str | None = None
    password_env: str | None = Field(None, description="password or token for basic/bearer auth")
    timeout: Duration = Field(timedelta(seconds=10))


class JiraConfig(_Model):
    url: str = Field(description="https://your-site.atlassian.net or a Server/Data Center base URL")
    user: str | None = Field(None, description="Cloud: the account email; Server/DC: the user name")
    token_env: str = Field(description="API token (Cloud) or personal access token / password (Server/DC)")
    project: str = Field(description="project key for `plan new`, e.g. OPS")
    issue_type: str = "Task"
    done: str = Field("Done", description="name of the transition (or status) that closes an issue")
    users: dict[str, str] = Field(default_factory=dict, description="Slack user id -> Jira accountId/username")
    timeout: Duration = Field(timedelta(seconds=15))


class TrelloConfig(_Model):
    url: str | None = Field(None, description="API base (default https://api.trello.com/1/)")
    key_env: str = Field(description="API key")
    token_env: str = Field(description="API token")
    board: str = Field(description="board id")
    todo_list: str = Field("To Do", description="list (name or id) where new cards go")
    done_list: str = Field("Done", description="list (name or id) that means done")
    users: dict[str, str] = Field(default_factory=dict, description="Slack user id -> Trello member id")
    timeout: Duration = Field(timedelta(seconds=15))


class AsanaConfig(_Model):
    url: str | None = Field(None, description="API base (default https://app.asana.com/api/1.0)")
    token_env: str = Field(description="personal access token")
    workspace: str = Field(description="workspace gid")
    project: str = Field(description="project gid for new tasks")
    users: dict[str, str] = Field(default_factory=dict, description="Slack user id -> Asana user gid")
    timeout: Duration = Field(timedelta(seconds=15))


class CommandTargetConfig(_Model):
    """How `target: command` deploys run (the command itself is per service)."""

    pass_env: list[str] = Field(default_factory=list, description="environment variables the command may see")
    version_file: str | None = Field(
        None, description="file ({service}, {env} filled in) opsloop writes the deployed version to and reads back"
    )
    cwd: str | None = Field(None, description="working directory (default: the config file's directory)")


class Integrations(_Model):
    """The tools opsloop talks to; each section is optional."""

    command: CommandTargetConfig = CommandTargetConfig()

    jira: JiraConfig | None = None
    trello: TrelloConfig | None = None
    asana: AsanaConfig | None = None

    kubernetes: KubernetesConfig | None = None
    registry: RegistryConfig | None = None

    jenkins: JenkinsConfig | None = None
    travis: TravisConfig | None = None
    prometheus: PrometheusConfig | None = None
    alertmanager: AlertmanagerConfig | None = None
    grafana: GrafanaConfig | None = None
    nagios: NagiosConfig | None = None
    splunk: SplunkConfig | None = None


class BuildConfig(_Model):
    """How a service is built."""

    ci: Literal["jenkins", "travis"] = "jenkins"
    job: str = Field(description="Jenkins job path (folder/name) or Travis repository slug (owner/repo)")
    branch: str | None = Field(None, description="default branch to build")
    params: dict[str, str] = Field(default_factory=dict, description="default build parameters")
    junit: str | None = Field(None, description="JUnit XML file (glob) to read when the CI publishes no report")
    junit_artifacts: str | None = Field(
        None,
        description="JUnit XML files the build archives (Jenkins only): Ant-style globs of their relativePath,"
        " comma-separated, e.g. `target/surefire-reports/*.xml, **/test-results/*.xml`; read when the CI"
        " publishes no test report",
    )

    @field_validator("junit_artifacts")
    @classmethod
    def _artifacts_need_jenkins(cls, value: str | None, info: Any) -> str | None:  # info: ValidationInfo
        if value and info.data.get("ci") == "travis":
            raise ValueError("needs Jenkins: Travis CI's API serves no build artifacts; use `junit` for files on disk")
        return value


class SmokePage(_Model):
    """One page of a browser smoke check; `{env}` in the URL is the environment name."""

    url: str
    text: str | None = Field(None, description="text the page must contain")
    css: str | None = Field(None, description="CSS selector that must match an element")
    timeout: Duration = Field(timedelta(seconds=15))


class SmokeConfig(_Model):
    pages: list[SmokePage] = Field(min_length=1)


class AfterFirings(_Model):
    """Only card a group once its alerts fired `firings` times within `within` (flapping guard)."""

    firings: int = Field(2, ge=1)
    within: Duration = Field(timedelta(minutes=10))


class AlertRoute(_Model):
    """Where alerts whose labels match go, and how loud they may be."""

    match: dict[str, str] = Field(default_factory=dict, description="labels that must be equal")
    match_re: dict[str, str] = Field(default_factory=dict, description="labels that must match a regex")
    channel: str | None = None
    min_severity: Literal["critical", "warning", "info"] = "info"
    after: AfterFirings | None = None


class StormConfig(_Model):
    groups_per_minute: int = Field(10, ge=1, description="more new groups than this in a channel -> one digest")


class AlertsConfig(_Model):
    """The alert pipeline: routes (first match wins), storm mode, release correlation."""

    channel: str | None = Field(None, description="default channel (else channels.alerts, else channels.default)")
    routes: list[AlertRoute] = Field(default_factory=list)
    storm: StormConfig = StormConfig()
    correlate_within: Duration = Field(timedelta(minutes=30), description="a release this recent is named")
    silence_hours: list[int] = Field(default_factory=lambda: [1, 4, 24])


class RepoConfig(_Model):
    """Where a service's code lives; versions map to tags (v1.2.3 or 1.2.3) or commit SHAs."""

    path: str | None = Field(None, description="a local clone")
    url: str | None = Field(None, description="a clone URL (kept as a cached bare clone)")
    branch: str = "main"
    ticket_url: str | None = Field(None, description="link for ticket keys, e.g. https://jira/browse/{key}")


class DeployEnvOverride(_Model):
    namespace: str | None = None
    deployment: str | None = None
    context: str | None = None
    command: list[str] | None = None


class DeployConfig(_Model):
    """How a service is deployed: a Kubernetes Deployment, or a command (no shell; placeholders
    {service} {version} {env} {image} are filled in as whole arguments)."""

    target: Literal["kubernetes", "command"] = "kubernetes"
    namespace: str | None = None
    deployment: str | None = None
    container: str | None = None
    image: str | None = Field(None, description="image repository, e.g. registry.example.com/shop/api")
    command: list[str] = Field(default_factory=list)
    timeout: Duration = Field(timedelta(minutes=10))
    envs: dict[str, DeployEnvOverride] = Field(default_factory=dict)


class ServiceConfig(_Model):
    """A service: how it is built, checked, deployed and watched."""

    channel: str | None = Field(None, description="the team's channel for this service's cards")
    build: BuildConfig | None = None
    smoke: SmokeConfig | None = None
    tracker: TrackerName | None = Field(None, description="where this service's tickets go (default: plan.tracker)")
    repo: RepoConfig | None = None
    deploy: DeployConfig | None = None
    alerts: AlertRoute | None = Field(None, description="route for this service's alerts (match defaults to service)")


class EnvApprovals(_Model):
    required: int = Field(0, ge=0, le=10, description="0: no approval needed")
    from_: str | None = Field(None, alias="from", description="role whose members may approve")
    self_approval: bool = False
    expire_after: Duration = Field(timedelta(minutes=30))


class EnvRequires(_Model):
    passed_in: list[str] = Field(default_factory=list, description="environments the version must be live in")
    tests: Literal["green", "any"] = "any"
    no_firing: list[Literal["critical", "warning", "info"]] = Field(default_factory=list)


def _critical_only() -> list[Literal["critical", "warning", "info"]]:
    return ["critical"]


class EnvBake(_Model):
    minutes: float = Field(0, ge=0, description="how long to watch alerts after a rollout (0: no bake)")
    rollback_on: list[Literal["critical", "warning", "info"]] = Field(default_factory=_critical_only)
    auto_rollback: bool = False


class EnvironmentConfig(_Model):
    """A deploy environment and its safety rules."""

    approvals: EnvApprovals = EnvApprovals()
    requires: EnvRequires = EnvRequires()
    bake: EnvBake = EnvBake()
    break_glass: list[str] = Field(default_factory=list, description="roles that may override a freeze or lock")
    channel: str | None = Field(None, description="where its release threads go (default channels.approvals)")


class DigestConfig(_Model):
    channel: str | None = Field(None, description="where the weekly digest goes; none: no digest")
    weekday: Literal["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"] = "monday"
    hour: int = Field(9, ge=0, le=23, description="UTC hour it is sent at")


class InsightsConfig(_Model):
    production: str = Field("prod", description="the environment whose deploys DORA counts")
    digest: DigestConfig = DigestConfig()


class Config(_Model):
    """The whole opsloop configuration (opsloop.yml)."""

    storage: Storage = Storage()
    channels: Channels = Channels()
    roles: dict[str, list[str]] = Field(
        default_factory=dict, description="role -> Slack user ids (U…/W…) or user groups (@handle or S…)"
    )
    permissions: dict[str, list[str]] = Field(
        default_factory=dict,
        description="command id or pattern (plan.*, audit.list) -> roles allowed; `everyone` for all",
    )
    approvals: dict[str, ApprovalRule] = Field(
        default_factory=dict, description="policy key (plan.done) -> approval rule"
    )
    plan: PlanConfig = PlanConfig()
    feedback: FeedbackConfig = FeedbackConfig()
    alerts: AlertsConfig = AlertsConfig()
    insights: InsightsConfig = InsightsConfig()
    console: ConsoleConfig = ConsoleConfig()
    slack: SlackConfig = SlackConfig()
    services: dict[str, ServiceConfig] = Field(default_factory=dict)
    environments: dict[str, EnvironmentConfig] = Field(default_factory=dict)
    integrations: Integrations = Integrations()

    def channel_names(self) -> set[str]:
        """Every channel the config names as `#name` (`channels.*` and any `channel` setting)."""
        found: set[str] = set()

        def walk(node: Any, key: str = "", parent: str = "") -> None:
            if isinstance(node, dict):
                for k, v in node.items():
                    walk(v, str(k), key)
            elif isinstance(node, list):
                for v in node:
                    walk(v, key, parent)
            elif isinstance(node, str) and node.startswith("#") and (key == "channel" or parent == "channels"):
                found.add(node)

        walk(self.model_dump())
        return found

    @model_validator(mode="after")
    def _trackers_are_configured(self) -> Config:
        wanted = [("plan.tracker", self.plan.tracker)]
        wanted += [(f"services.{n}.tracker", s.tracker) for n, s in self.services.items() if s.tracker]
        for path, name in wanted:
            if name != "local" and getattr(self.integrations, name) is None:
                raise ValueError(f"{path} is `{name}`, but there is no `integrations.{name}` section")
        return self

    @field_validator("roles")
    @classmethod
    def _members_look_like_ids(cls, roles: dict[str, list[str]]) -> dict[str, list[str]]:
        for role, members in roles.items():
            if role == EVERYONE:
                raise ValueError(f"`{EVERYONE}` is built in; pick another role name")
            for m in members:
                if not (_USER_ID.match(m) or _GROUP.match(m)):
                    raise ValueError(
                        f"role `{role}`: `{m}` is neither a user id (U…/W…) nor a user group (@handle or S…)"
                    )
        return roles


@dataclass(frozen=True)
class Env:
    """The environment contract of DESIGN.md section 4."""

    bot_token: str | None
    signing_secret: str | None
    app_token: str | None
    api_url: str
    config_path: Path
    db: str | None
    webhook_token: str | None
    http_host: str
    http_port: int

    @classmethod
    def read(cls, environ: Mapping[str, str] | None = None, config_path: str | None = None) -> Env:
        """Read the environment; `config_path` (from `--config`) wins over OPSLOOP_CONFIG."""
        e = os.environ if environ is None else environ
        port_text = e.get("OPSLOOP_HTTP_PORT", "3000")
        try:
            port = int(port_text)
        except ValueError:
            raise ConfigError("environment", [("OPSLOOP_HTTP_PORT", f"`{port_text}` is not a port number")]) from None
        api_url = e.get("SLACK_API_URL") or "https://slack.com/api/"
        if not api_url.endswith("/"):
            api_url += "/"
        return cls(
            bot_token=e.get("SLACK_BOT_TOKEN") or None,
            signing_secret=e.get("SLACK_SIGNING_SECRET") or None,
            app_token=e.get("SLACK_APP_TOKEN") or None,
            api_url=api_url,
            config_path=Path(config_path or e.get("OPSLOOP_CONFIG") or "opsloop.yml"),
            db=e.get("OPSLOOP_DB") or None,
            webhook_token=e.get("OPSLOOP_WEBHOOK_TOKEN") or None,
            http_host=e.get("OPSLOOP_HTTP_HOST") or "127.0.0.1",
            http_port=port,
        )

    def secrets(self) -> list[str]:
        """Every secret value known from the environment, for redaction."""
        return [s for s in (self.bot_token, self.signing_secret, self.app_token, self.webhook_token) if s]


def _secret_literals(node: Any, path: str = "") -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    if isinstance(node, dict):
        for k, v in node.items():
            p = f"{path}.{k}" if path else str(k)
            if isinstance(k, str) and _SECRET_KEYS.match(k) and isinstance(v, str):
                problems.append(
                    (
                        p,
                        f"secrets don't belong in the YAML: write `{k}_env: SOME_VARIABLE` and set that variable",
                    )
                )
            else:
                problems.extend(_secret_literals(v, p))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            problems.extend(_secret_literals(v, f"{path}[{i}]"))
    return problems


def _cross_checks(data: dict[str, Any]) -> list[tuple[str, str]]:
    """References between sections, checked on the raw data so they show up with the schema errors."""

    def section(name: str) -> dict[str, Any]:
        value = data.get(name)
        return value if isinstance(value, dict) else {}

    problems: list[tuple[str, str]] = []
    known_roles = set(section("roles")) | {EVERYONE}
    for pattern, roles in section("permissions").items():
        for r in roles if isinstance(roles, list) else []:
            if r not in known_roles:
                problems.append((f"permissions.{pattern}", f"unknown role `{r}`; define it under `roles`"))
    for key, rule in section("approvals").items():
        role = rule.get("from") if isinstance(rule, dict) else None
        if isinstance(role, str) and role not in section("roles"):
            problems.append((f"approvals.{key}.from", f"unknown role `{role}`; define it under `roles`"))
    integrations = section("integrations")
    for name, svc in section("services").items():
        build = svc.get("build") if isinstance(svc, dict) else None
        if isinstance(build, dict):
            ci = build.get("ci", "jenkins")
            if isinstance(ci, str) and ci not in integrations:
                problems.append(
                    (f"services.{name}.build.ci", f"`{ci}` is not configured: add it under `integrations.{ci}`")
                )
    console = section("console")
    people = console.get("people") if isinstance(console.get("people"), dict) else {}
    if people and console.get("user", "me") not in people:
        problems.append(("console.user", f"`{console.get('user', 'me')}` is not one of console.people"))
    return problems


def parse_config(data: Any, source: str = "config") -> Config:
    """Validate already-loaded YAML data; raise ConfigError listing every problem."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, [("(top)", "the config must be a mapping of sections (storage:, roles:, …)")])
    problems = _secret_literals(data)
    cfg: Config | None = None
    try:
        cfg = Config.model_validate(data)
    except ValidationError as err:
        for e in err.errors():
            path = ".".join(str(p) for p in e["loc"]) or "(top)"
            msg = e["msg"]
            if e["type"] == "extra_forbidden":
                msg = "unknown key; check the spelling (`opsloop config schema` lists every key)"
            problems.append((path, msg))
    problems.extend(_cross_checks(data))
    if problems:
        raise ConfigError(source, problems)
    assert cfg is not None
    return cfg


def load_config(path: Path) -> Config:
    """Read and validate a YAML config file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            str(path), [("(file)", "no such file; pass --config FILE or set OPSLOOP_CONFIG (see examples/demo.yml)")]
        ) from None
    except OSError as err:
        raise ConfigError(str(path), [("(file)", f"cannot read it: {err.strerror}")]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(file)"
        raise ConfigError(str(path), [(where, f"not valid YAML: {getattr(err, 'problem', err)}")]) from None
    return parse_config(data, str(path))


def database_path(cfg: Config, env: Env) -> Path:
    """OPSLOOP_DB wins; otherwise `storage.path` relative to the config file's directory."""
    if env.db:
        return Path(env.db)
    p = Path(cfg.storage.path).expanduser()
    return p if p.is_absolute() else env.config_path.parent / p


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the config file."""
    return Config.model_json_schema(by_alias=True)


def secret_values(config: Config, env: Env) -> list[str]:
    """Every secret this process knows, from the environment and the `*_env` indirections."""
    values = list(env.secrets())

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for k, val in node.items():
                if isinstance(k, str) and k.endswith("_env") and isinstance(val, str) and os.environ.get(val):
                    values.append(os.environ[val])
                else:
                    walk(val)
        elif isinstance(node, list):
            for x in node:
                walk(x)

    walk(config.model_dump(by_alias=True))
    return values
