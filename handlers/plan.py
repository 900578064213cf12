"""plan: work items in the built-in tracker (or another configured one), with cards that update in place."""

from __future__ import annotations

import hashlib
import logging
import re

from bot import commands as c
from bot import views as v
from bot.approvals import Subject
from bot.cards import ItemRef, card, card_key, compact
from bot.context import Ctx, Services
from bot.errors import Conflict, NotConfigured, NotFound
from bot.jobs import JobCtx
from bot.ports import AdapterError, AdapterNotFound, ItemStatus, ListFilter, NewItem, PlanItem, Tracker
from bot.router import ChatEvent, CommandGroup

log = logging.getLogger(__name__)

TRACKERS = ("local", "jira", "trello", "asana")
UNFURL_MAX = 3  # keys answered per message: a pasted list is not a request for a dozen cards
# A link as Slack writes it (<url> or <url|label>), or a KEY-12 word: in the order they appear.
_MENTIONED = re.compile(r"<(https?://[^>|\s]+)(?:\|[^>]*)?>|(?<![\w/.-])([A-Z][A-Z0-9_]{0,9}-\d{1,9})(?![\w-])")

group = CommandGroup("plan", "Track work: create, assign and close plan items.")


async def _get(tracker: Tracker, key: str) -> PlanItem:
    try:
        return await tracker.get(key)
    except AdapterNotFound:
        raise NotFound(f"There is no plan item {key}. `plan list` shows the open ones.") from None


async def fingerprint(services: Services, subject: str) -> str:
    """What an approval of closing an item is bound to: its title, status and criticality."""
    key = subject.removeprefix("plan:")
    item = await _get(services.tracker_for(key), key)
    facts = f"{item.key}|{item.title}|{item.status}|{item.critical}"
    return hashlib.sha256(facts.encode()).hexdigest()[:16]


@group.job("plan.close")
async def close_job(services: Services, jctx: JobCtx) -> None:
    """Close an item once its approval is complete, then update both cards."""
    key = jctx.job.key.removeprefix("plan:")
    by = str(jctx.job.payload.get("by") or jctx.job.requester or "opsloop")
    item = await services.tracker_for(key).close(key, by)
    await services.update(card_key(item), card(item))
    approval_id = str(jctx.job.payload.get("approval", ""))
    if approval_id:
        text = f"{item.key} is closed."
        await services.post(
            jctx.job.channel or services.config.channels.default,
            v.Message(text, (v.Section(text),)),
            thread_key=f"approval:{approval_id}",
            dedupe=f"plan.closed:{approval_id}",
        )


group.approval("plan.done", job="plan.close", fingerprint=fingerprint)


@group.command(
    "plan new",
    c.text("title"),
    c.mention("who", optional=True),
    c.choice("tracker", TRACKERS, default=""),
    c.flag("critical"),
    examples=('plan new "Fix login" @alice', 'plan new "Rotate certs" critical', 'plan new "Flaky checkout" jira'),
)
async def new(ctx: Ctx, title: str, who: str | None, tracker: str, critical: bool) -> v.Reply:
    """Create a plan item and post its card here.

    `critical` items need an approval before they can be closed. Without a tracker name the item
    goes to the default tracker (`plan.tracker`)."""
    item = await ctx.tracker(tracker or None).create(
        NewItem(title=title, reporter=ctx.actor, assignee=who, critical=critical)
    )
    await ctx.post(card(item), key=card_key(item), dedupe=f"post:{card_key(item)}")
    return v.Reply.text(f"Created *{item.key}*: {v.esc(item.title)}")


@group.command(
    "plan list",
    c.choice("which", ("open", "mine", "all"), default="open"),
    c.choice("tracker", TRACKERS, default=""),
    examples=("plan list", "plan list mine", "plan list open trello"),
)
async def list_(ctx: Ctx, which: str, tracker: str) -> v.Reply:
    """List plan items: open (default), mine, or all; of the default tracker or the one named."""
    items = await ctx.tracker(tracker or None).list(ListFilter(which), ctx.actor, limit=20)
    if not items:
        what = {"open": "No open plan items", "mine": "No plan items of yours", "all": "No plan items yet"}[which]
        return v.Reply.text(f'{what}. Create one with `plan new "title"`.')
    blocks: list[v.Block] = [v.Header(f"Plan items ({which})")]
    for it in items:
        who = v.person(it.assignee) if it.assignee else "_unassigned_"
        mark = "✅ " if it.status is ItemStatus.DONE else ("❗ " if it.critical else "")
        button = None
        if it.status is ItemStatus.OPEN and it.assignee is None:
            button = v.Button("Assign to me", "plan.take", ItemRef(key=it.key).model_dump_json())
        blocks.append(v.Section(f"{mark}*{it.key}* {v.esc(it.title)} — {who}", button=button))
    return v.Reply(v.Message(f"{len(items)} plan items", tuple(blocks)))


@group.command("plan show", c.key())
async def show(ctx: Ctx, key: str) -> v.Reply:
    """Show one item with its buttons."""
    return v.Reply(card(await _get(ctx.services.tracker_for(key), key)))


async def _assign(ctx: Ctx, key: str, who: str) -> PlanItem:
    tracker = ctx.services.tracker_for(key)
    item = await _get(tracker, key)
    if item.status is ItemStatus.DONE:
        raise Conflict(f"{item.key} is already done.")
    item = await tracker.assign(item.key, who)
    await ctx.update(card_key(item), card(item))
    return item


@group.command("plan assign", c.key(), c.mention("who"), examples=("plan assign OPS-3 @bob",))
async def assign(ctx: Ctx, key: str, who: str) -> v.Reply:
    """Assign an item to someone."""
    item = await _assign(ctx, key, who)
    return v.Reply.text(f"{item.key} is now assigned to <@{who}>.")


async def _done(ctx: Ctx, key: str) -> v.Reply:
    tracker = ctx.services.tracker_for(key)
    item = await _get(tracker, key)
    if item.status is ItemStatus.DONE:
        raise Conflict(f"{item.key} is already done.")
    rule = ctx.approvals.rule("plan.done")
    if item.critical and rule is not None:
        subject = Subject(
            f"plan:{item.key}",
            f"Close *{item.key}* {v.esc(item.title)} (critical)",
            await fingerprint(ctx.services, f"plan:{item.key}"),
        )
        where = ctx.config.channels.approvals or ctx.channel
        approval, created = await ctx.approvals.request(
            "plan.done", subject, requester=ctx.actor, channel=where, action={"by": ctx.actor}
        )
        if not created:
            return v.Reply.text(f"{item.key} already waits for approval (request `{approval.id}`).")
        return v.Reply.text(
            f"{item.key} is critical: closing it needs {v.count(rule.required, 'approval')} from `{rule.from_}`. "
            f"I asked in {where} (request `{approval.id}`)."
        )
    item = await tracker.close(item.key, ctx.actor)
    await ctx.update(card_key(item), card(item))
    return v.Reply.text(f"{item.key} is done.")


@group.command("plan done", c.key(), examples=("plan done OPS-3",))
async def done(ctx: Ctx, key: str) -> v.Reply:
    """Close an item (critical items ask for approval first)."""
    return await _done(ctx, key)


@group.action("plan.take", value=ItemRef, policy="plan.assign")
async def take(ctx: Ctx, ref: ItemRef) -> v.Reply:
    """Button: assign the item to whoever clicked."""
    item = await _assign(ctx, ref.key, ctx.actor)
    return v.Reply.text(f"{item.key} is yours now.")


@group.action("plan.done", value=ItemRef)
async def done_button(ctx: Ctx, ref: ItemRef) -> v.Reply:
    """Button: close the item (same rules as `plan done`)."""
    return await _done(ctx, ref.key)


@group.home(order=10)
async def home(ctx: Ctx) -> list[v.Block]:
    """App Home: the open items, yours first."""
    items = await ctx.tracker().list(ListFilter.OPEN, ctx.actor, limit=15)
    blocks: list[v.Block] = [v.Header("Open plan items")]
    if not items:
        blocks.append(v.Section('Nothing open. `/ops plan new "title"` creates an item.'))
        return blocks
    mine = [i for i in items if i.assignee == ctx.actor]
    rest = [i for i in items if i.assignee != ctx.actor]
    for it in [*mine, *rest]:
        who = "you" if it.assignee == ctx.actor else (v.person(it.assignee) if it.assignee else "_unassigned_")
        blocks.append(
            v.Section(
                f"*{it.key}* {v.esc(it.title)} — {who}",
                button=v.Button("Done", "plan.done", ItemRef(key=it.key).model_dump_json()),
            )
        )
    return blocks


def keys_mentioned(services: Services, text: str) -> list[str]:
    """Item keys of configured trackers in a message: links to items, and KEY-12 words with the
    built-in prefix or the Jira project (other ABC-12 words are too often something else)."""
    ours = {services.config.plan.prefix}
    jira = services.config.integrations.jira
    if jira is not None:
        ours.add(jira.project.upper())
    found: list[str] = []
    for m in _MENTIONED.finditer(text):
        link, word = m.group(1), m.group(2)
        key = c.key_of_link(link) if link else (word if word.partition("-")[0] in ours else None)
        if key and key not in found:
            found.append(key)
    return found[:UNFURL_MAX]


@group.event("plan.unfurl", "message")
async def unfurl(ctx: Ctx, ev: ChatEvent) -> None:
    """An item key or link pasted in a channel is answered in its thread with a small card."""
    if not ctx.config.plan.unfurl:
        return None
    keys = keys_mentioned(ctx.services, ev.text)
    if not keys or not (await ctx.policy.check(ev.actor, "plan.show")).allowed:
        return None  # nobody asked, so a refusal would only be noise
    for key in keys:
        try:
            item = await ctx.services.tracker_for(key).get(key)
        except (AdapterNotFound, NotConfigured):
            continue
        except AdapterError as err:  # the tracker is down: the message was not a request to us
            log.info("unfurl of %s skipped: %s", key, err)
            continue
        await ctx.post(
            compact(item),
            channel=ev.channel,
            thread_ts=ev.thread_ts or ev.message_ts,
            dedupe=f"unfurl:{ev.channel}:{ev.message_ts}:{item.key}",
        )
    return None
