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
from bot.ports import NewItem, Tracker
from bot.router import HANDLED, ChatEvent, CommandGroup, Handled, ShortcutCall, SubmitErrors

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
    message_ts: str | None = None
    release_id: int | None = None
    rating: str | None = None


class FeedbackRef(BaseModel):
    """The value of the "Make it a plan item" button."""

    id: int


class ShortcutMeta(BaseModel):
    """What the "Send to opsloop" form remembers about the message it came from."""

    channel: str
    message_ts: str


def _fb(r: dict[str, Any]) -> Feedback:
    return Feedback(
        r["id"],
        r["text"],
        r["author"],
        r["channel"],
        r["source"],
        r["created_at"],
        r["plan_key"],
        r.get("message_ts"),
        r.get("release_id"),
        r.get("rating"),
    )


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
    ctx: Ctx, text: str, source: str, *, author: str | None = None, message_ts: str | None = None, once: bool = False
) -> Feedback:
    """Store one piece of feedback (secrets redacted) and post its card to the feedback channel.

    With `once`, a message already filed from the same source is returned as it is (two people
    reacting at the same moment file it once)."""
    fb, _ = await _record(ctx, text, source, author=author, message_ts=message_ts, once=once)
    return fb


async def _record(
    ctx: Ctx, text: str, source: str, *, author: str | None, message_ts: str | None, once: bool
) -> tuple[Feedback, bool]:
    clean = ctx.redactor.text(text.strip())[:MAX_TEXT]
    now = ctx.clock.now()
    who = author or ctx.actor

    def tx(db: Any) -> tuple[dict[str, Any], bool]:
        if once:
            seen = _rows(
                db,
                "SELECT * FROM feedback WHERE channel = ? AND message_ts = ? AND source = ?",
                (ctx.channel, message_ts, source),
            )
            if seen:
                return seen[0], False
        cur = db.execute(
            "INSERT INTO feedback (text, author, channel, message_ts, source, created_at) VALUES (?, ?, ?, ?, ?, ?)",
            (clean, who, ctx.channel, message_ts, source, now),
        )
        return _rows(db, "SELECT * FROM feedback WHERE id = ?", (cur.lastrowid,))[0], True

    row, created = await ctx.store.write(tx)
    fb = _fb(row)
    if created:
        channel = ctx.config.channels.feedback or ctx.config.channels.default
        await ctx.post(card(fb), channel=channel, key=card_key(fb), dedupe=f"post:{card_key(fb)}")
    return fb, created


@group.command(
    "feedback", c.text("text"), id="feedback.send", examples=('feedback "The deploy card should show the diff"',)
)
async def send(ctx: Ctx, text: str) -> v.Reply:
    """Send feedback to the team; it is kept and can become a plan item."""
    fb = await record(ctx, text, "command")
    return v.Reply.text(f"Thanks! Recorded as feedback #{fb.id}.")


def _listing(title: str, found: list[Feedback]) -> v.Reply:
    blocks: list[v.Block] = [v.Header(f"{title} ({len(found)})")]
    for fb in found:
        button = (
            None
            if fb.plan_key
            else v.Button("Make it a plan item", "feedback.promote", FeedbackRef(id=fb.id).model_dump_json())
        )
        status = f" → *{fb.plan_key}*" if fb.plan_key else ""
        about = f" _(release #{fb.release_id}: {fb.rating})_" if fb.release_id and fb.rating else ""
        blocks.append(v.Section(f"*#{fb.id}* <@{fb.author}>{status}{about}: {v.esc(fb.text[:300])}", button=button))
    return v.Reply(v.Message(f"{len(found)} feedback items", tuple(blocks)))


@group.command("feedback list", c.number("n", optional=True, default=10, max=50))
async def list_(ctx: Ctx, n: int) -> v.Reply:
    """The most recent feedback (10 unless you say how many)."""
    found = [
        _fb(r)
        for r in await ctx.store.read(lambda db: _rows(db, "SELECT * FROM feedback ORDER BY id DESC LIMIT ?", (n,)))
    ]
    if not found:
        return v.Reply.text('No feedback yet. `feedback "text"` sends some.')
    return _listing("Recent feedback", found)


MAX_SEARCH_WORD = 200


@group.command("feedback search", c.text("words"), examples=('feedback search "deploy card"', "feedback search slow"))
async def search(ctx: Ctx, words: str) -> v.Reply:
    """Feedback whose text has all the words (newest first, at most 20)."""
    terms = [w for w in words.lower().split() if w][:8]
    if not terms:
        return v.Reply.text("Give me a word to look for.")
    if any(len(t) > MAX_SEARCH_WORD for t in terms):
        # SQLite refuses LIKE patterns over 50,000 bytes; no feedback word is anywhere near this long.
        return v.Reply.text(f"A search word can be at most {MAX_SEARCH_WORD} characters long.")
    # LIKE with escaped wildcards: the words are data, never SQL.
    where = " AND ".join(["lower(text) LIKE ? ESCAPE '\\'"] * len(terms))
    params = tuple("%" + t.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%" for t in terms)
    found = [
        _fb(r)
        for r in await ctx.store.read(
            lambda db: _rows(db, f"SELECT * FROM feedback WHERE {where} ORDER BY id DESC LIMIT 20", params)
        )
    ]
    if not found:
        return v.Reply.text(f"No feedback mentions {v.esc(' '.join(terms))}.")
    return _listing(f"Feedback about {v.esc(' '.join(terms))}", found)


async def promote_to_plan(ctx: Ctx, feedback_id: int, tracker: Tracker | None = None) -> str:
    """Turn feedback into a plan item once (in `tracker`, else the default one); return the item key."""
    tracker = tracker or ctx.tracker()
    found = await ctx.store.read(lambda db: _rows(db, "SELECT * FROM feedback WHERE id = ?", (feedback_id,)))
    if not found:
        raise NotFound(f"There is no feedback #{feedback_id}.")
    fb = _fb(found[0])
    if fb.plan_key:
        raise Conflict(f"Feedback #{fb.id} is already plan item {fb.plan_key}.")
    first_line = (fb.text.strip().splitlines() or ["Feedback"])[0]
    title = first_line if len(first_line) <= 80 else first_line[:79] + "…"
    item = await tracker.create(
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
        await tracker.close(item.key, ctx.actor)
        raise Conflict(f"Feedback #{fb.id} was promoted by someone else a moment ago.")
    await ctx.post(plan_card(item), key=plan_card_key(item), dedupe=f"post:{plan_card_key(item)}")
    promoted = Feedback(fb.id, fb.text, fb.author, fb.channel, fb.source, fb.created_at, item.key)
    await ctx.update(card_key(promoted), card(promoted))
    return item.key


@group.command(
    "feedback promote",
    c.number("id", max=10**9),
    c.choice("tracker", ("local", "jira", "trello", "asana"), default=""),
    examples=("feedback promote 12", "feedback promote 12 jira"),
)
async def promote_command(ctx: Ctx, id: int, tracker: str) -> v.Reply:
    """Make a plan item from feedback #ID, in the default tracker or the one named."""
    await ctx.authorize("plan.new")
    key = await promote_to_plan(ctx, id, ctx.tracker(tracker or None))
    return v.Reply.text(f"Feedback #{id} is now plan item *{key}*.")


@group.event("feedback.reaction", "reaction")
async def on_reaction(ctx: Ctx, ev: ChatEvent) -> v.Reply | Handled | None:
    """A configured reaction (`feedback.reactions`) files the message as feedback, or as a ticket in
    the tracker of the channel's service; once per message, with a link back to it."""
    what = ctx.config.feedback.reactions.get(ev.reaction)
    if what is None:
        return None
    await ctx.authorize("feedback.send" if what == "feedback" else "plan.new")
    quoted = await ctx.surface.quote(ev.channel, ev.message_ts)
    if quoted is None:
        return v.Reply.text(
            f"I couldn't read the message you reacted to with :{ev.reaction}: (invite me to the channel?), "
            "so nothing was filed."
        )
    text = quoted.text.strip() or "(a message without text)"
    if quoted.link:
        text += f"\n\n{quoted.link}"
    fb, created = await _record(
        ctx, text, f"reaction:{what}", author=quoted.author or ev.author, message_ts=ev.message_ts, once=True
    )
    if what == "feedback":
        if not created:
            return None  # someone filed it already; a second reaction is just agreement
        await ctx.post(
            v.Reply.text(f"Filed as feedback #{fb.id} by <@{ctx.actor}>.").message,
            channel=ev.channel,
            thread_ts=ev.message_ts,
            dedupe=f"reaction.filed:{fb.id}",
        )
        return HANDLED
    if fb.plan_key:
        return None
    service = ctx.services.service_of_channel(ev.channel, quoted.channel_name)
    try:
        key = await promote_to_plan(ctx, fb.id, ctx.services.tracker_of(service))
    except Conflict:
        return None  # promoted by a simultaneous reaction
    await ctx.post(
        v.Reply.text(f"Filed as plan item *{key}* by <@{ctx.actor}>.").message,
        channel=ev.channel,
        thread_ts=ev.message_ts,
        dedupe=f"reaction.ticket:{fb.id}",
    )
    return HANDLED


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
    if kind == "plan":
        # The form is open to everyone; what it files is not: a plan item needs plan.new, as the
        # promote button and command do. Checked before anything is stored.
        await ctx.authorize("plan.new")
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
