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


def card(item: PlanItem) -> v.Message:
    """The item card posted when an item is created and edited in place afterwards."""
    done = item.status is ItemStatus.DONE
    title = f"{item.key} · {item.title}"
    fields = [
        ("Status", "✅ done" if done else "open"),
        ("Assignee", f"<@{item.assignee}>" if item.assignee else "nobody yet"),
        ("Reporter", f"<@{item.reporter}>"),
    ]
    if item.critical:
        fields.append(("Critical", "yes: closing it needs approval"))
    blocks: list[v.Block] = [v.Header(title), v.Section(fields=tuple(fields))]
    ref = ItemRef(key=item.key).model_dump_json()
    if not done:
        buttons = []
        if item.assignee is None:
            buttons.append(v.Button("Assign to me", "plan.take", ref))
        buttons.append(v.Button("Done", "plan.done", ref, v.Style.PRIMARY))
        blocks.append(v.Actions(tuple(buttons)))
    else:
        closer = f"<@{item.closed_by}>" if item.closed_by else "someone"
        when = iso(item.closed_at.timestamp()) if item.closed_at else ""
        blocks.append(v.Context((f"Closed by {closer} {when}".strip(),)))
    return v.Message(f"{item.key}: {item.title}", tuple(blocks))
