"""Cards for the values of ports that more than one stage shows (a plan item from plan and feedback)."""

from __future__ import annotations

from pydantic import BaseModel

from bot import views as v
from bot.clock import iso
from bot.ports import ItemStatus, PlanItem


class ItemRef(BaseModel):
    """The value of a plan item's buttons."""

    key: str


def card_key(item: PlanItem) -> str:
    return f"plan:{item.key}"


def _buttons(item: PlanItem) -> v.Actions:
    ref = ItemRef(key=item.key).model_dump_json()
    buttons = []
    if item.assignee is None:
        buttons.append(v.Button("Assign to me", "plan.take", ref))
    buttons.append(v.Button("Done", "plan.done", ref, v.Style.PRIMARY))
    return v.Actions(tuple(buttons))


def compact(item: PlanItem) -> v.Message:
    """The small card that answers an item key or link pasted in a channel."""
    done = item.status is ItemStatus.DONE
    name = f"<{item.url}|{item.key}>" if item.url else item.key
    who = v.person(item.assignee) if item.assignee else "nobody yet"
    status = "✅ done" if done else ("❗ open, critical" if item.critical else "open")
    blocks: list[v.Block] = [v.Section(f"*{name}* {v.esc(item.title)}"), v.Context((f"{status} · assignee: {who}",))]
    if not done:
        blocks.append(_buttons(item))
    return v.Message(f"{item.key}: {item.title}", tuple(blocks))


def card(item: PlanItem) -> v.Message:
    """The item card posted when an item is created and edited in place afterwards."""
    done = item.status is ItemStatus.DONE
    title = f"{item.key} · {item.title}"
    fields = [
        ("Status", "✅ done" if done else "open"),
        ("Assignee", v.person(item.assignee) if item.assignee else "nobody yet"),
        ("Reporter", v.person(item.reporter)),
    ]
    if item.critical:
        fields.append(("Critical", "yes: closing it needs approval"))
    blocks: list[v.Block] = [v.Header(title), v.Section(fields=tuple(fields))]
    if item.url:
        blocks.append(v.Context((f"<{item.url}|Open in {item.tracker.capitalize()}>",)))
    if not done:
        blocks.append(_buttons(item))
    else:
        closer = v.person(item.closed_by) if item.closed_by else "someone"
        when = iso(item.closed_at.timestamp()) if item.closed_at else ""
        blocks.append(v.Context((f"Closed by {closer} {when}".strip(),)))
    return v.Message(f"{item.key}: {item.title}", tuple(blocks))
