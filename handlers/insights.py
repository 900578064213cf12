"""insights: what happened and who decided (the audit log); DORA and digests come with later stages."""

from __future__ import annotations

from bot import commands as c
from bot import views as v
from bot.clock import iso
from bot.context import Ctx
from bot.router import CommandGroup

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
}


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
