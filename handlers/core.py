"""Core commands: help (generated from the handlers' docstrings), whoami, and the approval buttons."""

from __future__ import annotations

import difflib
import weakref

from pydantic import BaseModel

from bot import commands as c
from bot import views as v
from bot.context import Ctx
from bot.errors import UsageError
from bot.router import CommandGroup, Router

group = CommandGroup("core", "Help, who you are, approvals.")
_HELP: weakref.WeakKeyDictionary[Router, dict[str | None, v.Reply]] = weakref.WeakKeyDictionary()


@group.command(
    "help",
    c.rest("topic", optional=True, metavar="STAGE|COMMAND"),
    id="core.help",
    examples=("help", "help plan", "help rollback", "help code diff"),
)
async def help_(ctx: Ctx, topic: str | None) -> v.Reply:
    """List what I can do; `help STAGE` shows one stage in detail, `help COMMAND` one command."""
    # The registry is fixed once the router exists, so each topic's help is built once.
    cache = _HELP.setdefault(ctx.router, {})
    key = " ".join(topic.lower().split()) if topic else None
    if key not in cache:
        cache[key] = _build_help(ctx, key)
    return cache[key]


# The DevOps loop's names for stages that opsloop files under another: operating (status, scale, restart)
# and releasing are the deploy stage's commands.
_STAGE_NAMES = {"operate": "deploy", "release": "deploy"}


def _described(s: c.CommandSpec) -> v.Section:
    body = f"*`{s.usage()}`*\n{s.summary}"
    if s.details:
        body += f"\n{s.details}"
    if s.examples:
        body += "\n_Examples:_ " + ", ".join(f"`{e}`" for e in s.examples)
    return v.Section(body)


def _build_help(ctx: Ctx, topic: str | None) -> v.Reply:
    groups = [g for g in ctx.router.groups if any(not s.hidden for s in g.commands)]
    if topic is None:
        blocks: list[v.Block] = [
            v.Header("opsloop commands"),
            v.Context(
                (
                    "Type `/ops COMMAND`, mention me, or message me directly. "
                    "`help STAGE` or `help COMMAND` to learn more.",
                )
            ),
        ]
        for g in groups:
            lines = [f"`{s.usage()}` — {s.summary}" for s in g.commands if not s.hidden]
            blocks.append(v.Section(f"*{g.stage}* — {g.doc}\n" + "\n".join(lines)))
        return v.Reply(v.Message("opsloop commands", tuple(blocks)))
    t = _STAGE_NAMES.get(topic, topic)
    chosen = next((g for g in groups if g.stage == t), None)
    if chosen is not None:
        blocks = [v.Header(f"{chosen.stage}: {chosen.doc}")]
        blocks += [_described(s) for s in chosen.commands if not s.hidden]
        return v.Reply(v.Message(f"help: {chosen.stage}", tuple(blocks)))
    # A command by its first words: just those commands (`help rollback`, `help code diff`), and where the
    # rest of their stage is.
    typed = tuple(t.split())
    owners = [(g, s) for g in groups for s in g.commands if not s.hidden and s.words[: len(typed)] == typed]
    if owners:
        homes = sorted({g.stage for g, _ in owners})
        blocks = [v.Header(f"help: {t}"), *(_described(s) for _, s in owners)]
        blocks.append(v.Context((" · ".join(f"part of *{st}*: `help {st}` shows the rest" for st in homes),)))
        return v.Reply(v.Message(f"help: {t}", tuple(blocks)))
    words = [" ".join(s.words[: len(typed)]) for g in groups for s in g.commands if not s.hidden]
    topics = list(dict.fromkeys([g.stage for g in groups] + words))
    close = difflib.get_close_matches(t, topics, n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(f'`help {x}`' for x in close)}?" if close else ""
    raise UsageError(f"There is no stage or command `{topic}`.{hint} Stages: {', '.join(g.stage for g in groups)}.")


@group.command("whoami", id="core.whoami")
async def whoami(ctx: Ctx) -> v.Reply:
    """Show your user id, your roles and what you may approve."""
    roles = sorted(await ctx.policy.roles_of(ctx.actor))
    approvable = [f"`{k}`" for k, rule in sorted(ctx.config.approvals.items()) if rule.from_ in roles]
    # Releases are approved by environment (environments.ENV.approvals), not by a key of `approvals:`.
    approvable += [
        f"releases to `{env}`"
        for env, rules in ctx.config.environments.items()
        if rules.approvals.required and rules.approvals.from_ in roles
    ]
    person = await ctx.directory.person(ctx.actor)
    fields = (
        ("User", f"<@{ctx.actor}> (`{ctx.actor}`)"),
        ("Name", v.esc(person.name)),
        ("Roles", ", ".join(f"`{r}`" for r in roles) or "none (everyone's commands only)"),
        ("May approve", ", ".join(approvable) or "nothing"),
    )
    return v.Reply(v.Message(f"You are {person.name}", (v.Section(fields=fields),)))


class ApprovalRef(BaseModel):
    """The value of an Approve/Reject button."""

    id: str


async def _vote(ctx: Ctx, ref: ApprovalRef, decision: str) -> v.Reply:
    result = await ctx.approvals.vote(ref.id, ctx.actor, decision, channel=ctx.channel, message_ts=ctx.message_ts)
    return v.Reply.text(result.message)


@group.action("approval.approve", value=ApprovalRef)
async def approve(ctx: Ctx, ref: ApprovalRef) -> v.Reply:
    """Approve a request (who may is decided by the request's rule)."""
    return await _vote(ctx, ref, "approve")


@group.action("approval.reject", value=ApprovalRef)
async def reject(ctx: Ctx, ref: ApprovalRef) -> v.Reply:
    """Reject a request."""
    return await _vote(ctx, ref, "reject")
