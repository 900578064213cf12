"""insights: who decided what (the audit log), DORA metrics with a trend chart, and the weekly digest."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from bot import commands as c
from bot import views as v
from bot.approvals import Approval
from bot.clock import iso
from bot.context import Ctx, Services
from bot.dora import CHOICES, DAY, REPORT_YEAR, Dora, compute_with_weeks, human, pct
from bot.durations import format_left, parse_duration
from bot.errors import UsageError
from bot.jobs import JobCtx
from bot.ports import Series
from bot.router import CommandGroup
from bot.store import rows

group = CommandGroup("insights", "What happened, who decided, and how the team is doing.")

_ICON = {
    "ok": "✅",
    "refused": "⛔",
    "error": "⚠️",
    "requested": "🙋",
    "approved": "👍",
    "rejected": "👎",
    "expired": "⌛",
    "voided": "🚫",
    "withdrawn": "⏹️",
}
_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


@group.command(
    "audit", c.number("n", optional=True, default=10, max=100), id="insights.audit", examples=("audit", "audit 50")
)
async def audit(ctx: Ctx, n: int) -> v.Reply:
    """The last N audit entries (10 by default): who did what, where, and the outcome."""
    entries = await ctx.audit_log.recent(n)
    if not entries:
        return v.Reply.text("The audit log is empty.")
    lines = []
    for e in entries:
        reason = f" — {v.esc(e.reason[:140])}" if e.reason else ""
        target = f" `{v.esc((e.target or '')[:60])}`" if e.target else ""
        lines.append(f"{_ICON.get(e.outcome, '•')} `#{e.id}` {iso(e.at)} <@{e.actor}> *{e.action}*{target}{reason}")
    blocks: list[v.Block] = [v.Header(f"Audit log: last {len(entries)}")]
    for i in range(0, len(lines), 10):
        blocks.append(v.Section("\n".join(lines[i : i + 10])))
    blocks.append(v.Context(("`opsloop audit verify` checks the hash chain.",)))
    return v.Reply(v.Message(f"Audit log: last {len(entries)}", tuple(blocks)))


def dora_blocks(d: Dora, title: str) -> list[v.Block]:
    """The four keys and rework with their 2024 levels, and what opsloop chose to count."""
    m = d.metrics()
    lv = m.levels
    fields = (
        (
            "Deployment frequency",
            f"{m.frequency_per_day * 7:.1f} per week ({len(d.deployments)}) · *{lv['frequency']}*",
        ),
        ("Lead time for changes", f"{human(m.lead_time_s)} · *{lv['lead_time']}*"),
        ("Change failure rate", f"{pct(m.change_failure_rate)} · *{lv['change_failure_rate']}*"),
        (
            "Failed deployment recovery",
            f"{human(m.recovery_s)} · *{lv['recovery']}*"
            + (f" ({m.unrecovered} not recovered)" if m.unrecovered else ""),
        ),
        ("Rework rate", pct(m.rework_rate)),
    )
    return [
        v.Header(title[:150]),
        v.Section(fields=fields),
        v.Context((f"Levels: {REPORT_YEAR} State of DevOps clusters. Counted: " + "; ".join(CHOICES) + ".",)),
    ]


async def _dora(services: Services, service: str | None, days: int) -> tuple[Dora, list[tuple[float, Dora]]]:
    end = services.clock.now()
    start = end - days * DAY
    prod = services.config.insights.production

    def q(db: Any) -> tuple[Dora, list[tuple[float, Dora]]]:
        return compute_with_weeks(db, production=prod, start=start, end=end, service=service)

    return await services.store.read(q)


async def trend_chart(services: Services, trend: list[tuple[float, Dora]], title: str) -> bytes | None:
    """Deploys per week and change failure rate per week, as a PNG."""
    if services.charts is None or not any(d.deployments for _, d in trend):
        return None  # a chart of empty weeks says nothing the card does not
    deploys = Series((("metric", "deploys per week"),), tuple((t, float(len(d.deployments))) for t, d in trend))
    cfr = Series(
        (("metric", "change failure rate %"),), tuple((t, 100 * (d.change_failure_rate or 0.0)) for t, d in trend)
    )
    return await services.charts.line_chart(title, [deploys, cfr])


@group.command(
    "dora",
    c.word("service", optional=True),
    c.duration("window", optional=True),
    id="insights.dora",
    examples=("dora", "dora api 90d"),
)
async def dora(ctx: Ctx, service: str | None, window: timedelta | None) -> v.Reply:
    """DORA's four keys (and rework) from opsloop's own deploys and alerts, with a weekly trend chart."""
    if service is not None and service not in ctx.config.services:
        name = service
        try:
            window, service = window or parse_duration(name), None  # `dora 90d`: a window, no service
        except ValueError:
            if name.isdigit():  # `dora 7`: meant as days, most likely
                hint = f"for {name} days write `{name}d`"
                raise UsageError(f"`{name}` is neither a service nor a period: {hint}.") from None
            ctx.service(name)  # NotFound with the nearest names
    days = max(1, int((window or timedelta(days=30)).total_seconds() // DAY))
    d, trend = await _dora(ctx.services, service, days)
    title = f"DORA {service or 'all services'}, last {days} days ({ctx.config.insights.production})"
    png = await trend_chart(ctx.services, trend, title)
    if png is not None:
        await ctx.services.upload(
            ctx.channel, "dora.png", png, title=title, comment="Deploys and change failure rate per week"
        )
    return v.Reply(v.Message(title, tuple(dora_blocks(d, title))), visibility=v.Visibility.IN_CHANNEL)


# --- the weekly digest --------------------------------------------------------------------------------------


def week_key(ts: float) -> str:
    y, w, _ = datetime.fromtimestamp(ts, tz=UTC).isocalendar()
    return f"{y}-W{w:02d}"


def due(config_weekday: str, hour: int, now: float) -> bool:
    """Whether this moment is at or after the configured send time of its ISO week."""
    dt = datetime.fromtimestamp(now, tz=UTC)
    return (dt.weekday(), dt.hour) >= (_WEEKDAYS.index(config_weekday), hour)


def _by_env(counts: list[tuple[str, int]], production: str) -> str:
    """`prod 3 · staging 7`: production first, then the others by name; `none` for an empty week."""
    ordered = sorted(counts, key=lambda c: (c[0] != production, c[0]))
    return " · ".join(f"{env} {n}" for env, n in ordered) or "none"


async def digest_message(services: Services, now: float) -> v.Message:
    """Last week in numbers: deploys, failures, alerts by noise, open plan items, feedback, DORA."""
    start = now - 7 * DAY

    def q(db: Any) -> dict[str, Any]:
        def count(sql: str, *params: Any) -> int:
            return int(db.execute(sql, params).fetchone()[0])

        return {
            # Deploys proper (not rollbacks, scales or restarts), by environment: production is DORA's
            # share of them, and a week of staging deploys is worth seeing beside it.
            "deploys": db.execute(
                "SELECT env, count(*) FROM events WHERE kind = 'deploy.finished' AND at >= ?"
                " AND json_extract(detail, '$.ok') = 1 AND json_extract(detail, '$.action') = 'deploy'"
                " GROUP BY env ORDER BY env",
                (start,),
            ).fetchall(),
            "failed": count(
                "SELECT count(*) FROM events WHERE kind = 'deploy.finished' AND at >= ? AND"
                " json_extract(detail, '$.ok') = 0 AND json_extract(detail, '$.action') = 'deploy'",
                start,
            ),
            "rollbacks": count("SELECT count(*) FROM events WHERE kind = 'deploy.rolled_back' AND at >= ?", start),
            "noisy": rows(
                db,
                "SELECT title, count(*) AS n FROM alert_groups WHERE first_seen >= ? GROUP BY title"
                " ORDER BY n DESC LIMIT 5",
                (start,),
            ),
            "open_items": count("SELECT count(*) FROM plan_items WHERE status = 'open'"),
            "feedback": count("SELECT count(*) FROM feedback WHERE created_at >= ?", start),
        }

    facts = await services.store.read(q)
    d, _ = await _dora(services, None, 7)
    noisy = "\n".join(f"• {v.esc(r['title'])} ×{r['n']}" for r in facts["noisy"]) or "none 🎉"
    head = f"📊 Weekly digest, week {week_key(now)}"
    blocks: list[v.Block] = [
        v.Header(head),
        v.Section(
            fields=(
                ("Deploys", _by_env(facts["deploys"], services.config.insights.production)),
                ("Failed deploys", str(facts["failed"])),
                ("Rollbacks", str(facts["rollbacks"])),
                ("Open plan items", str(facts["open_items"])),
                ("Feedback received", str(facts["feedback"])),
            )
        ),
        v.Section(f"*Noisiest alerts*\n{noisy}"),
        *dora_blocks(d, "DORA, last 7 days")[1:],
    ]
    return v.Message(head, tuple(blocks))


@group.job("insights.digest")
async def digest_job(services: Services, jctx: JobCtx) -> None:
    """Post the weekly digest once per week (the week is claimed in the database before posting)."""
    cfg = services.config.insights.digest
    if cfg.channel is None:
        return
    now = services.clock.now()
    week = str(jctx.job.payload.get("week") or week_key(now))
    claimed = await services.store.write(
        lambda db: db.execute("INSERT OR IGNORE INTO digests_sent (week, at) VALUES (?, ?)", (week, now)).rowcount
    )
    if not claimed:
        return
    await services.post(cfg.channel, await digest_message(services, now), dedupe=f"digest:{week}")
    _, trend = await _dora(services, None, 56)
    png = await trend_chart(services, trend, "Deploys and change failure rate, last 8 weeks")
    if png is not None:
        await services.upload(cfg.channel, f"digest-{week}.png", png, title="DORA trend, 8 weeks")


@group.periodic(60.0)
async def schedule_digest(services: Services) -> bool:
    """Start this week's digest if it is due and not sent (called every minute by the app)."""
    cfg = services.config.insights.digest
    now = services.clock.now()
    if cfg.channel is None or not due(cfg.weekday, cfg.hour, now):
        return False
    week = week_key(now)
    sent = await services.store.read(
        lambda db: db.execute("SELECT 1 FROM digests_sent WHERE week = ?", (week,)).fetchone()
    )
    if sent:
        return False
    await services.jobs.submit("insights.digest", f"digest:{week}", {"week": week})
    return True


@group.command("digest", id="insights.digest", examples=("digest",))
async def digest(ctx: Ctx) -> v.Reply:
    """The weekly digest, now, for you (the scheduled one goes to `insights.digest.channel`)."""
    return v.Reply(await digest_message(ctx.services, ctx.clock.now()))


# --- App Home: a dashboard -----------------------------------------------------------------------------------


def _waiting(a: Approval, now: float, *, mine: bool = False) -> str:
    """A request on the dashboard: what, its votes, who asked (unless it was me), where its card is, how
    long it has left."""
    asker = "" if mine else f", asked by <@{a.requester}>"
    where = f" in {v.channel(a.channel)}" if a.channel else ""
    return (
        f"• {v.esc(a.summary[:200])} — {a.approvals} of {a.required}{asker}{where},"
        f" expires in {format_left(a.expires_at - now)}"
    )


@group.home(order=5)
async def dashboard(ctx: Ctx) -> list[v.Block]:
    """App Home: releases in flight and waiting for my approval, alerts firing for my services, DORA."""
    me = ctx.actor
    roles = await ctx.policy.roles_of(me)

    def q(db: Any) -> dict[str, Any]:
        return {
            "releases": rows(
                db,
                "SELECT id, action, service, env, version, state, requester, approval_id FROM releases"
                " WHERE state IN ('awaiting_approval', 'approved', 'deploying', 'baking')"
                " ORDER BY id DESC LIMIT 10",
            ),
            "alerts": rows(
                db,
                "SELECT id, title, severity, service, channel FROM alert_groups WHERE"
                " status = 'firing' ORDER BY last_change DESC LIMIT 10",
            ),
        }

    facts = await ctx.store.read(q)
    blocks: list[v.Block] = [v.Header("opsloop")]
    now = ctx.clock.now()
    # Not expired (a request nobody closed yet), not already voted on by me: what I can still decide.
    pending = await ctx.approvals.pending(now, limit=30)
    theirs = [a for a in pending if a.role in roles and a.requester != me and all(x.user != me for x in a.votes)]
    own = [a for a in pending if a.requester == me]
    if theirs:
        lines = [_waiting(a, now) for a in theirs[:10]]
        blocks.append(v.Section("*Waiting for your approval*\n" + "\n".join(lines)))
    if own:
        lines = [_waiting(a, now, mine=True) for a in own[:10]]
        blocks.append(v.Section("*Your requests waiting*\n" + "\n".join(lines)))
        blocks.append(v.Context(("Reject on a request's card withdraws it.",)))
    if facts["releases"]:
        lines = [
            f"• `{r['id']}` {r['action']} {v.esc(r['service'])} {v.esc(r['version'] or '')} → {r['env']}: "
            f"{r['state'].replace('_', ' ')}"
            for r in facts["releases"]
        ]
        blocks.append(v.Section("*Releases in flight*\n" + "\n".join(lines)))
    if facts["alerts"]:
        lines = [f"• {r['title']} ({r['severity']}) in {r['channel']}" for r in facts["alerts"]]
        blocks.append(v.Section("*Firing now*\n" + "\n".join(lines)))
    d, _ = await _dora(ctx.services, None, 30)
    blocks.append(
        v.Section(
            f"*Last 30 days:* {len(d.deployments)} deploys to {ctx.config.insights.production}, "
            f"lead time {human(d.lead_time_s)}, change failure rate {pct(d.change_failure_rate)}"
        )
    )
    return blocks
