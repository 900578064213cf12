"""feedback: collect what people say (a command, a message shortcut) and turn it into plan items."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from bot import commands as c
from bot import views as v
from bot.cards import card as plan_card
from bot.cards import card_key as plan_card_key
from bot.clock import iso
from bot.context import Ctx
from bot.errors import Conflict, NotFound
from bot.ports import NewItem
from bot.router import CommandGroup, ShortcutCall, SubmitErrors

group = CommandGroup("feedback", "Collect feedback from chat and turn it into work.")

MAX_TEXT = 4000


@dataclass(frozen=True)
class Feedback:
    id: int
    text: str
    author: str
    channel: str | None
    source: str
    created_at: float
    plan_key: str | None


class FeedbackRef(BaseModel):
    """The value of the "Make it a plan item" button."""

    id: int


class ShortcutMeta(BaseModel):
    """What the "Send to opsloop" form remembers about the message it came from."""

    channel: str
    message_ts: str


def _fb(r: dict[str, Any]) -> Feedback:
    return Feedback(r["id"], r["text"], r["author"], r["channel"], r["source"], r["created_at"], r["plan_key"])


def _rows(db: Any, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    cur = db.execute(sql, params)
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


def card_key(fb: Feedback) -> str:
    return f"feedback:{fb.id}"


def card(fb: Feedback) -> v.Message:
    """The feedback card, with its promote button until it becomes a plan item."""
    quote = "\n".join(f"> {line}" for line in v.esc(fb.text).splitlines() or [""])
    blocks: list[v.Block] = [
        v.Section(f"*Feedback #{fb.id}* from <@{fb.author}>\n{quote}"),
    ]
    if fb.plan_key:
        blocks.append(v.Context((f"Now plan item *{fb.plan_key}*",)))
    else:
        blocks.append(
            v.Actions((v.Button("Make it a plan item", "feedback.promote", FeedbackRef(id=fb.id).model_dump_json()),))
        )
    blocks.append(v.Context((f"via {fb.source} · {iso(fb.created_at)}",)))
    return v.Message(f"Feedback #{fb.id}: {fb.text[:150]}", tuple(blocks))


async def record(
    ctx: Ctx, text: str, source: str, *, author: str | None = None, message_ts: str | None = None
) -> Feedback:
    """Store one piece of feedback (secrets redacted) and post its card to the feedback channel."""
    clean = ctx.redactor.text(text.strip())[:MAX_TEXT]
    now = ctx.clock.now()
    who = author or ctx.actor

    def tx(db: Any) -> dict[str, Any]:
        cur = db.execute(
            "INSERT INTO feedback (text, author, channel, message_ts, source, created_at) VALUES (?, ?, ?, ?, ?, ?)",
            (clean, who, ctx.channel, message_ts, source, now),
        )
        return _rows(db, "SELECT * FROM feedback WHERE id = ?", (cur.lastrowid,))[0]

    fb = _fb(await ctx.store.write(tx))
    channel = ctx.config.channels.feedback or ctx.config.channels.default
    await ctx.post(card(fb), channel=channel, key=card_key(fb), dedupe=f"post:{card_key(fb)}")
    return fb


@group.command(
    "feedback", c.text("text"), id="feedback.send", examples=('feedback "The deploy card should show the diff"',)
)
async def send(ctx: Ctx, text: str) -> v.Reply:
    """Send feedback to the team; it is kept and can become a plan item."""
    fb = await record(ctx, text, "command")
    return v.Reply.text(f"Thanks! Recorded as feedback #{fb.id}.")


@group.command("feedback list", c.number("n", optional=True, default=10, max=50))
async def list_(ctx: Ctx, n: int) -> v.Reply:
    """The most recent feedback (10 unless you say how many)."""
    found = [
        _fb(r)
        for r in await ctx.store.read(lambda db: _rows(db, "SELECT * FROM feedback ORDER BY id DESC LIMIT ?", (n,)))
    ]
    if not found:
        return v.Reply.text('No feedback yet. `feedback "text"` sends some.')
    blocks: list[v.Block] = [v.Header(f"Recent feedback ({len(found)})")]
    for fb in found:
        button = (
            None
            if fb.plan_key
            else v.Button("Make it a plan item", "feedback.promote", FeedbackRef(id=fb.id).model_dump_json())
        )
        status = f" → *{fb.plan_key}*" if fb.plan_key else ""
        blocks.append(v.Section(f"*#{fb.id}* <@{fb.author}>{status}: {v.esc(fb.text[:300])}", button=button))
    return v.Reply(v.Message(f"{len(found)} feedback items", tuple(blocks)))


async def promote_to_plan(ctx: Ctx, feedback_id: int) -> str:
    """Turn feedback into a plan item once; return the item key."""
    found = await ctx.store.read(lambda db: _rows(db, "SELECT * FROM feedback WHERE id = ?", (feedback_id,)))
    if not found:
        raise NotFound(f"There is no feedback #{feedback_id}.")
    fb = _fb(found[0])
    if fb.plan_key:
        raise Conflict(f"Feedback #{fb.id} is already plan item {fb.plan_key}.")
    first_line = (fb.text.strip().splitlines() or ["Feedback"])[0]
    title = first_line if len(first_line) <= 80 else first_line[:79] + "…"
    item = await ctx.tracker().create(
        NewItem(
            title=title,
            reporter=ctx.actor,
            description=f"From feedback #{fb.id} by <@{fb.author}>:\n{fb.text}",
        )
    )

    def tx(db: Any) -> int:
        # Only the first promotion wins; a double click finds plan_key set and creates nothing more.
        return int(
            db.execute("UPDATE feedback SET plan_key = ? WHERE id = ? AND plan_key IS NULL", (item.key, fb.id)).rowcount
        )

    if await ctx.store.write(tx) != 1:
        await ctx.tracker().close(item.key, ctx.actor)
        raise Conflict(f"Feedback #{fb.id} was promoted by someone else a moment ago.")
    await ctx.post(plan_card(item), key=plan_card_key(item), dedupe=f"post:{plan_card_key(item)}")
    promoted = Feedback(fb.id, fb.text, fb.author, fb.channel, fb.source, fb.created_at, item.key)
    await ctx.update(card_key(promoted), card(promoted))
    return item.key


@group.action("feedback.promote", value=FeedbackRef, policy="plan.new")
async def promote(ctx: Ctx, ref: FeedbackRef) -> v.Reply:
    """Button: make a plan item from a piece of feedback."""
    key = await promote_to_plan(ctx, ref.id)
    return v.Reply.text(f"Feedback #{ref.id} is now plan item *{key}*.")


@group.shortcut(
    "feedback.message", name="Send to opsloop", description="Keep this message as feedback or make it a plan item"
)
async def from_message(ctx: Ctx, call: ShortcutCall) -> None:
    """Message shortcut: open a form prefilled with the message."""
    await ctx.open_modal(
        v.Modal(
            title="Send to opsloop",
            callback="feedback.message_submit",
            intro=f"From <@{call.message_user}>'s message" if call.message_user else "From a message",
            inputs=(
                v.TextInput("text", "Text", multiline=True, initial=call.message_text[:3000]),
                v.Choice("as", "Keep it as", (("feedback", "Feedback"), ("plan", "A plan item")), initial="feedback"),
            ),
            submit="Send",
            metadata=ShortcutMeta(channel=call.channel, message_ts=call.message_ts).model_dump_json(),
        )
    )


@group.submit("feedback.message_submit", metadata=ShortcutMeta, policy="feedback.send")
async def message_submit(ctx: Ctx, values: dict[str, str | None], meta: ShortcutMeta) -> v.Reply | None:
    """Form submit: store the text as feedback, or as feedback promoted to a plan item."""
    text = (values.get("text") or "").strip()
    if not text:
        raise SubmitErrors({"text": "Write something to send."})
    kind = values.get("as") or "feedback"
    if kind not in ("feedback", "plan"):
        raise SubmitErrors({"as": "Choose feedback or a plan item."})
    ctx.channel = meta.channel
    fb = await record(ctx, text, "shortcut", message_ts=meta.message_ts)
    if kind == "plan":
        key = await promote_to_plan(ctx, fb.id)
        await ctx.tell(f"Sent: feedback #{fb.id}, now plan item *{key}*.")
    else:
        await ctx.tell(f"Sent: feedback #{fb.id}. Thanks!")
    return None


@group.home(order=20)
async def home(ctx: Ctx) -> list[v.Block]:
    """App Home: the latest feedback."""
    found = [
        _fb(r) for r in await ctx.store.read(lambda db: _rows(db, "SELECT * FROM feedback ORDER BY id DESC LIMIT 5"))
    ]
    blocks: list[v.Block] = [v.Divider(), v.Header("Recent feedback")]
    if not found:
        blocks.append(v.Section('No feedback yet. `/ops feedback "text"` sends some.'))
    for fb in found:
        status = f" → *{fb.plan_key}*" if fb.plan_key else ""
        blocks.append(v.Section(f"*#{fb.id}* <@{fb.author}>{status}: {v.esc(fb.text[:200])}"))
    return blocks
