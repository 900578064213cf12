"""monitor: alerts from every source as cards, silences, acknowledgements, queries, charts and searches."""

from __future__ import annotations

import re
import urllib.parse
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from bot import commands as c
from bot import views as v
from bot.alerts import StoredAlert
from bot.audit import Outcome
from bot.clock import iso
from bot.context import Ctx, Services
from bot.durations import MAX_DURATION, format_duration, parse_duration
from bot.errors import Conflict, NotConfigured, NotFound, ToolFailed, UsageError
from bot.ports import AdapterError, AdapterTimeout, AlertManager, Matcher, NewItem, QueryResult
from bot.router import CommandGroup, HookResult, SubmitErrors
from bot.web import HookRejected

group = CommandGroup("monitor", "Alerts, silences, metrics, charts and log searches.")


def _silence_failed(err: AdapterError, unchanged: str = "") -> ToolFailed:
    """What to say when Alertmanager did not take a silence. A timeout is not a refusal: the request
    was sent, and Alertmanager may still create the silence when it answers."""
    note = f" ({unchanged})" if unchanged else ""
    if isinstance(err, AdapterTimeout):
        return ToolFailed(
            f"Alertmanager did not answer in time{note}; the silence may still be created when it does: "
            f"look with `/ops silences` before trying again. ({err})"
        )
    return ToolFailed(f"Alertmanager did not create the silence{note}: {err}")


_MATCHER = re.compile(r'^([A-Za-z_][A-Za-z0-9_]*)(=~|!~|!=|=)"?(.*?)"?$')
QUERY_ROWS = 15


# --- webhooks -------------------------------------------------------------------------------------------


async def _ingest(services: Services, source: str, payload: Any) -> HookResult:
    parser = services.alert_sources.get(source)
    if parser is None:
        raise HookRejected(f"{source} alerts are not enabled in this opsloop", 404)
    try:
        batch = parser.parse(payload)
    except ValidationError:
        raise  # the web layer names the field that is wrong
    except ValueError as err:
        raise HookRejected(f"{source} payload not understood: {err}") from None
    result = await services.alerts.ingest(batch)
    services.metrics.hooks.labels(source=f"{source}_alerts", status="ok").inc(result.alerts)
    return HookResult(200, f"{result.alerts} alerts, {result.new_groups} new groups")


@group.hook("alertmanager")
async def alertmanager_hook(services: Services, payload: Any) -> HookResult:
    """Alertmanager's webhook receiver (payload version 4)."""
    return await _ingest(services, "alertmanager", payload)


@group.hook("grafana")
async def grafana_hook(services: Services, payload: Any) -> HookResult:
    """Grafana's webhook contact point."""
    return await _ingest(services, "grafana", payload)


@group.hook("nagios")
async def nagios_hook(services: Services, payload: Any) -> HookResult:
    """Nagios, through scripts/opsloop-nagios-notify."""
    return await _ingest(services, "nagios", payload)


@group.hook("splunk")
async def splunk_hook(services: Services, payload: Any) -> HookResult:
    """Splunk's webhook alert action (token in the query string)."""
    return await _ingest(services, "splunk", payload)


# --- helpers ----------------------------------------------------------------------------------------------


def parse_matchers(tokens: list[str]) -> list[Matcher]:
    """`name=value`, `name!=value`, `name=~regex`, `name!~regex`; UsageError otherwise."""
    out = []
    for t in tokens:
        m = _MATCHER.match(t)
        if m is None:
            raise UsageError(f'`{t}` is not a matcher; write it like alertname=HighLatency or service=~"api|web".')
        name, op, value = m.groups()
        if op in ("=~", "!~"):
            try:
                re.compile(value)
            except re.error as err:
                raise UsageError(f"`{t}`: `{value}` is not a valid regular expression ({err}).") from None
        out.append(Matcher(name, value, is_regex=op in ("=~", "!~"), is_equal=op in ("=", "=~")))
    return out


def _am(services: Services) -> AlertManager:
    if services.alertmanager is None:
        raise NotConfigured("Alertmanager isn't configured: add `integrations.alertmanager.url`.")
    return services.alertmanager


async def _group_or_404(ctx: Ctx, group_id: int) -> Any:
    g = await ctx.services.alerts.get(group_id)
    if g is None:
        raise NotFound(f"There is no alert group {group_id}.")
    return g


class GroupRef(BaseModel):
    group: int


class SilenceRef(BaseModel):
    group: int
    # The card offers a few hours; a forged value must not reach past what a date can hold.
    hours: int = Field(ge=1, le=int(MAX_DURATION.total_seconds()) // 3600)


class SilenceId(BaseModel):
    id: str


async def _claim(ctx: Ctx, group_id: int, column: str) -> bool:
    """Mark the group's `column` (`silence_id` or `ticket`) as being set, `''` until the tool answers.

    Only the click that wins this claim calls the tool: a double click, a Slack retry or a redelivered
    envelope arrive together, and checking the group first would let each of them through."""
    assert column in ("silence_id", "ticket")
    sql = f"UPDATE alert_groups SET {column} = '' WHERE id = ? AND {column} IS NULL"
    return bool(await ctx.services.store.write(lambda db: db.execute(sql, (group_id,)).rowcount))


async def _unclaim(ctx: Ctx, group_id: int, column: str) -> None:
    """Give a claim back when the tool refused, so the button works again."""
    assert column in ("silence_id", "ticket")
    sql = f"UPDATE alert_groups SET {column} = NULL WHERE id = ? AND {column} = ''"
    await ctx.services.store.write(lambda db: db.execute(sql, (group_id,)))


async def _silence_group(ctx: Ctx, group_id: int, duration: timedelta, reason: str) -> str:
    g = await _group_or_404(ctx, group_id)
    if not g.firing:
        raise Conflict(f"Group {group_id} is resolved; there is nothing to silence.")
    until = ctx.clock.now() + duration.total_seconds()
    if not ctx.services.alerts.offer.silences_for(g):
        # Without an Alertmanager to ask (another source, or only its webhook set up), the button still
        # quiets the group: in opsloop, and it says so.
        await ctx.services.alerts.change(group_id, "alert.snoozed", ctx.actor, snoozed_until=until)
        why = (
            f"{g.source} has no silences I can set"
            if g.source != "alertmanager"
            else "Alertmanager's API isn't configured (`integrations.alertmanager.url`), so I can't silence it there"
        )
        return (
            f"{why}, so I snoozed the group in opsloop for "
            f"{format_duration(duration)} (its card stays, no thread messages)."
        )
    matchers = [Matcher(k, val) for k, val in sorted(g.labels.items())] or [Matcher("alertname", g.title)]
    silence_id = await _silence_for(ctx, group_id, matchers, until, reason)
    return f"Silenced {', '.join(str(m) for m in matchers)} for {format_duration(duration)} (silence `{silence_id}`)."


async def _create_silence(ctx: Ctx, matchers: list[Matcher], until: float, reason: str) -> str:
    """A silence in Alertmanager, made in the name of the person asking; its id."""
    ends = datetime.fromtimestamp(until, tz=UTC)
    return await _am(ctx.services).silence(matchers, ends, created_by=f"opsloop:{ctx.actor}", comment=reason)


async def _silence_for(ctx: Ctx, group_id: int, matchers: list[Matcher], until: float, reason: str) -> str:
    """Create the group's silence in Alertmanager and show it on the card; its id.

    The group is claimed first, so a double click, a Slack retry or a form submitted twice creates one
    silence; a refusal gives the claim back and leaves the card as it was."""
    if not await _claim(ctx, group_id, "silence_id"):
        raise Conflict(f"Group {group_id} is already silenced (or being silenced by someone else right now).")
    try:
        silence_id = await _create_silence(ctx, matchers, until, reason)
    except BaseException as err:
        await _unclaim(ctx, group_id, "silence_id")
        if isinstance(err, AdapterError):
            raise _silence_failed(err, "the card is unchanged") from None
        raise
    await ctx.services.alerts.change(
        group_id, "alert.silenced", ctx.actor, silence_id=silence_id, silenced_by=ctx.actor, silence_until=until
    )
    return silence_id


# --- buttons ----------------------------------------------------------------------------------------------


@group.action("alert.silence", value=SilenceRef, policy="monitor.silence")
async def silence_button(ctx: Ctx, ref: SilenceRef) -> v.Reply:
    """Button: silence this group for N hours (a real Alertmanager silence)."""
    who = await ctx.directory.person(ctx.actor)
    text = await _silence_group(ctx, ref.group, timedelta(hours=ref.hours), f"from chat by {who.name}")
    return v.Reply.text(text)


class SilenceForm(BaseModel):
    group: int
    channel: str


@group.action("alert.silence_form", value=GroupRef, policy="monitor.silence")
async def silence_form(ctx: Ctx, ref: GroupRef) -> None:
    """Button: a form for matchers, duration and reason."""
    _am(ctx.services)  # refused before the form is filled in, not after
    g = await _group_or_404(ctx, ref.group)
    matchers = " ".join(f'{k}="{val}"' for k, val in sorted(g.labels.items()))
    await ctx.open_modal(
        v.Modal(
            title="Silence",
            callback="alert.silence_submit",
            submit="Silence",
            intro=f"Silence *{v.esc(g.title)}*",
            inputs=(
                v.TextInput("matchers", "Matchers", initial=matchers, placeholder='alertname="X" service=~"api|web"'),
                v.TextInput("duration", "Duration", initial="2h", placeholder="30m, 2h, 1d"),
                v.TextInput("reason", "Reason", multiline=True, placeholder="why it is fine to be quiet"),
            ),
            metadata=SilenceForm(group=g.id, channel=ctx.channel).model_dump_json(),
        )
    )


@group.submit("alert.silence_submit", metadata=SilenceForm, policy="monitor.silence")
async def silence_submit(ctx: Ctx, values: dict[str, str | None], meta: SilenceForm) -> v.Reply:
    """Form submit: create the silence as written."""
    errors: dict[str, str] = {}
    try:
        matchers = parse_matchers((values.get("matchers") or "").split())
        if not matchers:
            errors["matchers"] = "Give at least one matcher."
    except UsageError as err:
        errors["matchers"] = str(err)
        matchers = []
    try:
        duration = parse_duration(values.get("duration") or "")
    except ValueError as err:
        errors["duration"] = str(err)
        duration = timedelta(0)
    reason = (values.get("reason") or "").strip()
    if not reason:
        errors["reason"] = "Say why, so the next person knows."
    if errors:
        raise SubmitErrors(errors)
    ctx.channel = meta.channel
    until = ctx.clock.now() + duration.total_seconds()
    silence_id = await _silence_for(ctx, meta.group, matchers, until, reason)
    return v.Reply.text(f"Silence `{silence_id}` is on until {iso(until)}.")


@group.action("alert.unsilence", value=GroupRef, policy="monitor.silence")
async def unsilence(ctx: Ctx, ref: GroupRef) -> v.Reply:
    """Button: end this group's silence now."""
    g = await _group_or_404(ctx, ref.group)
    if not g.silence_id:
        raise Conflict("This group is not silenced.")
    try:
        await _am(ctx.services).expire(g.silence_id)
    except AdapterError as err:
        if "not found" not in str(err).lower():
            raise ToolFailed(f"I couldn't end the silence, the card is unchanged: {err}") from None
    await ctx.services.alerts.change(
        ref.group, "alert.unsilenced", ctx.actor, silence_id=None, silenced_by=None, silence_until=None
    )
    return v.Reply.text("The silence is over.")


@group.action("alert.unsnooze", value=GroupRef, policy="monitor.silence")
async def unsnooze(ctx: Ctx, ref: GroupRef) -> v.Reply:
    """Button: end this group's snooze now; its news goes to the thread again."""
    g = await _group_or_404(ctx, ref.group)
    if not g.snoozed(ctx.clock.now()):
        raise Conflict("This group is not snoozed.")
    await ctx.services.alerts.change(ref.group, "alert.unsnoozed", ctx.actor, snoozed_until=None)
    return v.Reply.text("The snooze is over; new alerts of this group show in its thread again.")


@group.action("alert.ack", value=GroupRef, policy="monitor.ack")
async def ack(ctx: Ctx, ref: GroupRef) -> v.Reply:
    """Button: say you own this; for Nagios alerts the acknowledgement goes to Nagios too."""
    g = await _group_or_404(ctx, ref.group)
    if g.acked_by:
        raise Conflict(f"<@{g.acked_by}> already acknowledged it.")
    note = ""
    nagios = ctx.services.nagios
    if g.source == "nagios" and nagios is None:
        # Who owns it is worth recording even when Nagios can't be told; the answer says what it missed.
        note = (
            " Nagios was not told (it keeps notifying): add `integrations.nagios` (command_file, status_file)"
            " to send acknowledgements there too."
        )
    elif g.source == "nagios" and nagios is not None:
        who = await ctx.directory.person(ctx.actor)
        for a in await ctx.services.alerts.alerts_of(g.id):
            if a.status == "firing":
                try:
                    await nagios.acknowledge(
                        a.labels.get("host", ""),
                        a.labels.get("nagios_service") or None,
                        who.name,
                        f"acknowledged in chat by {who.name} (opsloop)",
                    )
                except AdapterError as err:
                    raise ToolFailed(f"Nagios did not take the acknowledgement, nothing changed: {err}") from None
        note = " Nagios has it too."
    await ctx.services.alerts.change(ref.group, "alert.acked", ctx.actor, acked_by=ctx.actor, acked_at=ctx.clock.now())
    return v.Reply.text(f"You own it now.{note}")


@group.action("alert.resolve", value=GroupRef, policy="monitor.ack")
async def resolve(ctx: Ctx, ref: GroupRef) -> v.Reply:
    """Button: mark resolved an alert whose source never says it ended (Splunk); if it fires again, so does the card."""
    g = await _group_or_404(ctx, ref.group)
    if not await ctx.services.alerts.resolve(g.id):
        raise Conflict(f"Group {g.id} is not firing; nothing to resolve.")
    return v.Reply.text(f"Marked resolved. If {g.source} fires it again, the card says so.")


@group.action("alert.runbook", value=GroupRef)
async def runbook(ctx: Ctx, ref: GroupRef) -> None:
    """Button with a link: Slack opens the runbook; the click needs no answer."""
    return None


def promql_of(a: StoredAlert) -> str | None:
    """The expression of a Prometheus alert, from its generatorURL (`g0.expr=`)."""
    if not a.generator_url:
        return None
    q = urllib.parse.parse_qs(urllib.parse.urlsplit(a.generator_url).query)
    return q.get("g0.expr", [None])[0]


async def _chart(services: Services, title: str, promql: str, span: timedelta) -> bytes:
    if services.prometheus is None:
        raise NotConfigured("Prometheus isn't configured: add `integrations.prometheus.url`.")
    if services.charts is None:
        raise NotConfigured("Charts are not available.")
    end = datetime.now(tz=UTC)
    step = max(15.0, span.total_seconds() / 240)
    result = await services.prometheus.query_range(promql, end - span, end, step)
    return await services.charts.line_chart(title, result.series)


@group.action("alert.graph", value=GroupRef, policy="monitor.query")
async def graph_button(ctx: Ctx, ref: GroupRef) -> v.Reply:
    """Button: the alert's expression over the last hour, as a chart in the thread."""
    g = await _group_or_404(ctx, ref.group)
    alerts = await ctx.services.alerts.alerts_of(g.id)
    promql = next((q for q in map(promql_of, alerts) if q), None)
    if promql is None:
        raise NotFound("This alert carries no PromQL to draw (no generatorURL with an expression).")
    png = await _chart(ctx.services, g.title, promql, timedelta(hours=1))
    await ctx.services.upload(
        g.channel,
        f"alert-{g.id}.png",
        png,
        title=f"{g.title}: last hour",
        comment=f"`{v.esc(promql)}`",
        thread_key=g.card_key,
    )
    return v.Reply.text("The chart is in the alert's thread.")


@group.action("alert.ticket", value=GroupRef, policy="plan.new")
async def ticket(ctx: Ctx, ref: GroupRef) -> v.Reply:
    """Button: open a plan item for this alert group."""
    g = await _group_or_404(ctx, ref.group)
    if g.ticket:
        raise Conflict(f"This group already has ticket {g.ticket}.")
    if not await _claim(ctx, g.id, "ticket"):
        raise Conflict("A ticket for this group is already being created.")
    alerts = await ctx.services.alerts.alerts_of(g.id)
    summary = "\n".join(f"- {a.name}: {a.summary}" for a in alerts[:20])
    try:
        item = await ctx.tracker().create(
            NewItem(
                title=f"Alert: {g.title}"[:120],
                reporter=ctx.actor,
                description=f"From alert group {g.id} ({g.source}):\n{summary}",
            )
        )
    except BaseException:
        await _unclaim(ctx, g.id, "ticket")
        raise
    await ctx.services.alerts.change(ref.group, "alert.ticketed", ctx.actor, ticket=item.key)
    return v.Reply.text(f"Created *{item.key}* for this alert.")


# --- commands ---------------------------------------------------------------------------------------------


def _filter(tokens: list[str]) -> tuple[list[Matcher], list[str]]:
    matchers = [t for t in tokens if _MATCHER.match(t)]
    words = [t.lower() for t in tokens if t not in matchers]
    return parse_matchers(matchers), words


def _matches(labels: dict[str, str], name: str, matchers: list[Matcher], words: list[str]) -> bool:
    for m in matchers:
        val = labels.get(m.name, "")
        hit = bool(re.fullmatch(m.value, val)) if m.is_regex else val == m.value
        if hit != m.is_equal:
            return False
    text = (name + " " + " ".join(labels.values())).lower()
    return all(w in text for w in words)


@group.command(
    "alerts",
    c.rest("filter", optional=True, metavar="FILTER"),
    id="monitor.alerts",
    examples=("alerts", "alerts service=api", "alerts latency"),
)
async def alerts(ctx: Ctx, filter: str | None) -> v.Reply:
    """What fires now: the groups opsloop knows, and what Alertmanager has that it doesn't.

    FILTER: label matchers (`service=api`, `severity=~"crit.*"`) and/or words to look for."""
    tokens = [t.text for t in c.tokenize(filter or "")]
    matchers, words = _filter(tokens)
    lines = []
    seen: set[str] = set()
    for g, firing in await ctx.services.alerts.firing():
        if not any(_matches(a.labels, a.name, matchers, words) for a in firing) and (matchers or words):
            continue
        seen.update(a.fingerprint for a in firing)
        marks = ("🔕" if g.silence_id else "") + ("👀" if g.acked_by else "")
        until = g.snoozed(ctx.clock.now())
        snoozed = f" _(snoozed until {iso(until)})_" if until else ""
        lines.append(
            f"{marks}*{v.esc(g.title)}* ({g.severity}, {len(firing)} firing) in {v.esc(g.channel)} — group `{g.id}`"
            + snoozed
        )
    extra = 0
    if ctx.services.alertmanager is not None:
        try:
            live = await ctx.services.alertmanager.alerts(matchers, silenced=False)
        except AdapterError as err:
            lines.append(f"_(Alertmanager could not be asked: {v.esc(str(err))})_")
            live = []
        for a in live:
            if a.fingerprint in seen or not _matches(dict(a.labels), a.name, [], words):
                continue
            extra += 1
            if extra <= 10:
                lines.append(f"◦ *{v.esc(a.name)}* ({a.severity}) {v.esc(a.summary[:100])} _(Alertmanager only)_")
    if not lines:
        return v.Reply.text("Nothing is firing" + (" that matches." if tokens else ". 🎉"))
    head = f"Firing now ({len(lines)})"
    chunks = [v.Section("\n".join(lines[i : i + 12])) for i in range(0, min(len(lines), 48), 12)]
    return v.Reply(v.Message(head, (v.Header(head), *chunks)))


def _and(items: list[str]) -> str:
    """`a`, `a and b`, `a, b and c`."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


@group.command(
    "silence",
    c.rest("spec", metavar='MATCHERS DURATION "REASON"'),
    id="monitor.silence",
    examples=('silence alertname=HighLatency service=api 2h "fix is rolling out"',),
)
async def silence(ctx: Ctx, spec: str) -> v.Reply:
    """Create an Alertmanager silence: label matchers, how long, and why."""
    tokens = c.tokenize(spec)
    reasons = [t.text for t in tokens if t.quoted]
    rest = [t.text for t in tokens if not t.quoted]
    duration = None
    why_not: str | None = None  # what a word that looks like a duration got wrong (`99y`, `0h`)
    for t in list(rest):
        try:
            duration = parse_duration(t)
            rest.remove(t)
            break
        except ValueError as err:
            if why_not is None and t[:1].isdigit():
                why_not = str(err)
    usage = 'Usage: `silence MATCHERS DURATION "REASON"`, e.g. silence alertname=HighLatency 2h "deploying the fix"'
    if duration is None and why_not:
        raise UsageError(f"{why_not}.\n{usage}")
    missing = [
        what
        for what, there in (
            ("label matchers (like `alertname=HighLatency`)", rest),
            ("a duration (like `2h`)", duration is not None),
            ("a reason in quotes", reasons),
        )
        if not there
    ]
    if missing or duration is None:
        raise UsageError(f"I need {_and(missing)}.\n{usage}")
    matchers = parse_matchers(rest)
    until = ctx.clock.now() + duration.total_seconds()
    try:
        silence_id = await _create_silence(ctx, matchers, until, reasons[0])
    except AdapterError as err:
        raise _silence_failed(err) from None
    await ctx.audit(
        "monitor.silence.created",
        Outcome.OK,
        target=silence_id,
        detail={"matchers": [str(m) for m in matchers], "until": datetime.fromtimestamp(until, tz=UTC).isoformat()},
    )
    return v.Reply.text(
        f"Silence `{silence_id}` on {' '.join(str(m) for m in matchers)} until {iso(until)}.", public=True
    )


@group.command("silences", id="monitor.silences")
async def silences(ctx: Ctx) -> v.Reply:
    """The active silences in Alertmanager, with a button to end each."""
    found = [s for s in await _am(ctx.services).silences() if s.state in ("active", "pending")]
    if not found:
        return v.Reply.text("No active silences.")
    blocks: list[v.Block] = [v.Header(f"Active silences ({len(found)})")]
    for s in found[:20]:
        text = (
            f"`{v.esc(' '.join(str(m) for m in s.matchers))}` until {iso(s.ends_at.timestamp())}\n"
            f"_{v.esc(s.comment[:200])}_ — {v.esc(s.created_by)}"
        )
        blocks.append(
            v.Section(text, button=v.Button("End", "alert.expire_silence", SilenceId(id=s.id).model_dump_json()))
        )
    return v.Reply(v.Message(f"{len(found)} silences", tuple(blocks)))


@group.action("alert.expire_silence", value=SilenceId, policy="monitor.silence")
async def expire_silence(ctx: Ctx, ref: SilenceId) -> v.Reply:
    """Button: end a silence."""
    try:
        await _am(ctx.services).expire(ref.id)
    except AdapterError as err:
        raise ToolFailed(f"Alertmanager did not end it: {err}") from None
    return v.Reply.text(f"Silence `{ref.id}` ended.")


def _value_table(result: QueryResult) -> str:
    if result.kind in ("scalar", "string"):
        return f"{result.scalar}"
    lines = []
    for s in result.series[:QUERY_ROWS]:
        labels = ", ".join(f'{k}="{val}"' for k, val in s.labels) or "{}"
        value = s.points[-1][1] if s.points else float("nan")
        lines.append(f"{labels}  {value:g}")
    if len(result.series) > QUERY_ROWS:
        lines.append(f"… {len(result.series) - QUERY_ROWS} more series")
    return "\n".join(lines) or "(no data)"


@group.command(
    "query",
    c.rest("promql", metavar="PROMQL [RANGE]"),
    id="monitor.query",
    examples=("query up", "query rate(http_requests_total[5m]) 6h"),
)
async def query(ctx: Ctx, promql: str) -> v.Reply:
    """Ask Prometheus: the value now, or a chart when a range (like 6h) ends the line."""
    if ctx.services.prometheus is None:
        raise NotConfigured("Prometheus isn't configured: add `integrations.prometheus.url`.")
    expr, _, last = promql.rstrip().rpartition(" ")
    span = None
    if expr:
        try:
            span = parse_duration(last)
        except ValueError:
            expr = promql
    else:
        expr = promql
    try:
        if span is None:
            result = await ctx.services.prometheus.query(expr)
            return v.Reply(v.Message(f"{expr}", (v.Section(f"`{v.esc(expr)}`"), v.Code(_value_table(result)))))
        png = await _chart(ctx.services, expr, expr, span)
    except AdapterError as err:
        raise ToolFailed(str(err)) from None
    await ctx.services.upload(
        ctx.channel, "query.png", png, title=f"{expr} ({last})", comment=f"`{v.esc(expr)}` over {last}"
    )
    return v.Reply.text(f"Chart of `{v.esc(expr)}` over {last} posted here.")


@group.command(
    "graph",
    c.word("panel", metavar="DASHBOARD/PANEL"),
    c.duration("span", optional=True),
    id="monitor.graph",
    examples=("graph abc123/4", "graph latency 6h"),
)
async def graph(ctx: Ctx, panel: str, span: timedelta | None) -> v.Reply:
    """A Grafana panel as a picture (dashboard uid/panel id, or a name from `integrations.grafana.panels`)."""
    if ctx.services.grafana is None:
        raise NotConfigured("Grafana isn't configured: add `integrations.grafana.url` and `token_env`.")
    grafana_cfg = ctx.config.integrations.grafana
    ref = (grafana_cfg.panels.get(panel) if grafana_cfg else None) or panel
    uid, _, pid = ref.partition("/")
    if not pid.isdigit():
        raise UsageError(f"`{panel}` is not DASHBOARD_UID/PANEL_ID (like abc123/4) nor a configured panel name.")
    minutes = int((span or timedelta(hours=1)).total_seconds() // 60)
    try:
        png = await ctx.services.grafana.render(uid, int(pid), minutes=minutes)
    except AdapterError as err:
        raise ToolFailed(str(err)) from None
    await ctx.services.upload(
        ctx.channel,
        f"grafana-{uid}-{pid}.png",
        png,
        title=f"Grafana {ref}",
        comment=f"Panel {pid} of `{v.esc(uid)}`, last {format_duration(timedelta(minutes=minutes))}",
    )
    return v.Reply.text("The panel is posted here.")


@group.command(
    "search",
    c.rest("spl", metavar="QUERY"),
    id="monitor.search",
    examples=("search index=main error | stats count by host",),
)
async def search(ctx: Ctx, spl: str) -> v.Reply:
    """Search Splunk (last 15 minutes): the first rows as a table, all of them as a CSV file."""
    if ctx.services.splunk is None:
        raise NotConfigured("Splunk isn't configured: add `integrations.splunk.url` and `token_env`.")
    try:
        result = await ctx.services.splunk.search(spl)
    except AdapterError as err:
        raise ToolFailed(str(err)) from None
    if not result.rows:
        return v.Reply.text("No results in the last 15 minutes.")
    cols = result.columns
    widths = [min(40, max([len(c)] + [len(r[i]) for r in result.rows[:QUERY_ROWS]])) for i, c in enumerate(cols)]
    table = [" ".join(c.ljust(w)[:w] for c, w in zip(cols, widths, strict=False))]
    for r in result.rows[:QUERY_ROWS]:
        table.append(" ".join(val.ljust(w)[:w] for val, w in zip(r, widths, strict=False)))
    note = f"{len(result.rows)} rows" + (" (more were cut)" if result.truncated else "")
    if len(result.rows) > QUERY_ROWS:
        import csv
        import io

        buf = io.StringIO()
        csv.writer(buf).writerows([cols, *result.rows])
        await ctx.services.upload(
            ctx.channel,
            "search.csv",
            buf.getvalue(),
            title="Splunk search results",
            comment=f"All {len(result.rows)} rows",
        )
        note += "; all rows are in the attached CSV"
    return v.Reply(
        v.Message(f"Splunk: {note}", (v.Section(f"`{v.esc(spl[:300])}`"), v.Code("\n".join(table)), v.Context((note,))))
    )
