"""The alert pipeline: normalize -> dedupe -> group -> route -> card, for every source.

Sources turn their payloads into `Alert`s (adapters). Here, in one transaction per delivery: each alert
is upserted by (source, fingerprint), so a repeat changes nothing; its group (the source's group key)
is created on first sight with a channel from the routes; the group's card is posted once and then
only edited (firing, more alerts, resolved, silenced, acknowledged), with one thread message per alert
the first time it fires. Noise control: a route's minimum severity, "only after N firings within M",
snooze, and storm mode: when a channel receives more new groups per minute than configured, new groups
join one digest card (counts by alert name and severity, top groups) instead of getting their own cards.
Nothing is dropped: every alert is reachable from a card or a thread.

A digest's thread holds *pages* of PAGE_GROUPS groups each (in the order the groups came): per group its
state, its counts, one line per alert (the labels that tell its alerts apart, and the summary) and the
group's own buttons. A storm of 300 groups is 30 thread posts, then edits; one post per group would queue
for minutes behind Slack's one message per second per channel, while edits (chat.update) have their own,
larger budget and coalesce (the outbox keeps only the newest pending edit of a message). A page stays
under Slack's block-character ceiling: each group has GROUP_CHARS on it, and alerts that do not fit go
to the page's continuation messages in the same thread, so every alert stays visible. Pages are rendered
off the delivery's write: a delivery only marks its groups dirty, and the pipeline renders each dirty
digest (header and touched pages) at most once per DIGEST_REFRESH, so a storm costs a page render per
second, not one per delivery.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from sqlite_utils import Database

from bot import views as v
from bot.clock import iso
from bot.config import AlertRoute, Config
from bot.durations import format_seconds
from bot.ports import Alert, AlertBatch, AlertStatus, Severity
from bot.store import one, rows

if TYPE_CHECKING:
    from bot.context import Services

log = logging.getLogger(__name__)

_RANK = {s.value: s.rank for s in Severity}
_FIRING = AlertStatus.FIRING.value  # a plain str: an enum member's .value is a property lookup, in loops per alert
_ICON = {"critical": "🔴", "warning": "🟠", "info": "🔵"}
# A card lists its group's alerts up to this many characters (one section), so that in a storm every alert
# is on its card at once, while the thread's detail messages queue behind Slack's 1 message/s per channel.
CARD_ALERT_CHARS = 2_500
STORM_WINDOW = 60.0
DIGEST_IDLE = 300.0  # a digest stays open this long after its last group
PAGE_GROUPS = 10  # groups per page of a digest's thread
# Slack refuses a message over about 13.2k block characters (msg_blocks_too_long, below every documented
# per-block limit): a page keeps its text under PAGE_CHARS, GROUP_CHARS per group, buttons aside.
PAGE_CHARS = 10_000
GROUP_CHARS = PAGE_CHARS // PAGE_GROUPS
SECTION_CHARS = 2_900  # a section's text is at most 3000 characters
DIGEST_REFRESH = 1.0  # seconds between two renders of the dirty pages
# json.dumps's text, without its per-call keyword handling and circular-reference bookkeeping: three
# per stored alert (labels, annotations, links), plain dicts and lists of strings.
_json = json.JSONEncoder(check_circular=False).encode
_SET_TIMES = "value = ?, ends_at = ?, starts_at = ?, last_seen = ?, firings = firings + ? WHERE id = ?"
_SET_STATUS = f"UPDATE alerts SET status = ?, {_SET_TIMES}"
_SET_ALL = f"UPDATE alerts SET group_id = ?, status = ?, severity = ?, summary = ?, {_SET_TIMES}"
_CATCH_ALL = AlertRoute()  # read only, never changed: one, not a new model per delivery


@dataclass(frozen=True)
class Group:
    """An alert group and its card's state."""

    id: int
    key: str
    source: str
    title: str
    channel: str
    status: str
    severity: str
    service: str | None
    env: str | None
    labels: dict[str, str]
    shown: bool
    digest_id: int | None
    first_seen: float
    last_change: float
    resolved_at: float | None
    silence_id: str | None
    silenced_by: str | None
    silence_until: float | None
    acked_by: str | None
    snoozed_until: float | None
    ticket: str | None
    release: dict[str, Any] | None
    truncated: int

    @property
    def card_key(self) -> str:
        return f"alerts:{self.id}"

    @property
    def firing(self) -> bool:
        return self.status == _FIRING

    def snoozed(self, now: float) -> float | None:
        """When the group's snooze ends, while it is snoozed at `now`; None otherwise."""
        return self.snoozed_until if self.snoozed_until is not None and self.snoozed_until > now else None


def _group(r: dict[str, Any]) -> Group:
    return Group(
        id=r["id"],
        key=r["key"],
        source=r["source"],
        title=r["title"],
        channel=r["channel"],
        status=r["status"],
        severity=r["severity"],
        service=r["service"],
        env=r["env"],
        labels=json.loads(r["labels"]),
        shown=bool(r["shown"]),
        digest_id=r["digest_id"],
        first_seen=r["first_seen"],
        last_change=r["last_change"],
        resolved_at=r["resolved_at"],
        silence_id=r["silence_id"],
        silenced_by=r["silenced_by"],
        silence_until=r["silence_until"],
        acked_by=r["acked_by"],
        snoozed_until=r["snoozed_until"],
        ticket=r["ticket"],
        release=json.loads(r["release"]) if r["release"] else None,
        truncated=r["truncated"],
    )


@dataclass(frozen=True)
class StoredAlert:
    id: int
    source: str
    fingerprint: str
    status: str
    name: str
    severity: str
    labels: dict[str, str]
    annotations: dict[str, str]
    summary: str
    value: str | None
    links: list[list[str]]
    generator_url: str | None
    starts_at: float | None
    ends_at: float | None


class ShownAlert(Protocol):
    """What a digest page and a group's buttons read of an alert: a StoredAlert, or the narrower PageAlert."""

    @property
    def status(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def labels(self) -> dict[str, str]: ...
    @property
    def summary(self) -> str: ...
    @property
    def annotations(self) -> dict[str, str]: ...
    @property
    def generator_url(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class PageAlert:
    """An alert as a storm digest page reads it: only what the page shows (a page holds up to 500)."""

    status: str
    name: str
    labels: dict[str, str]
    summary: str
    annotations: dict[str, str]
    generator_url: str | None


def _alert(r: dict[str, Any]) -> StoredAlert:
    return StoredAlert(
        id=r["id"],
        source=r["source"],
        fingerprint=r["fingerprint"],
        status=r["status"],
        name=r["name"],
        severity=r["severity"],
        labels=json.loads(r["labels"]),
        annotations=json.loads(r["annotations"]),
        summary=r["summary"],
        value=r["value"],
        links=json.loads(r["links"]),
        generator_url=r["generator_url"],
        starts_at=r["starts_at"],
        ends_at=r["ends_at"],
    )


@dataclass(frozen=True)
class Ingested:
    alerts: int
    new_groups: int
    changed_groups: int


def _digest_of(keys: Sequence[str]) -> str:
    return hashlib.sha1("\n".join(keys).encode(), usedforsecurity=False).hexdigest()


def _ts(d: datetime | None) -> float | None:
    return d.timestamp() if d else None


def _matches(route: AlertRoute, labels: dict[str, str]) -> bool:
    if any(labels.get(k) != val for k, val in route.match.items()):
        return False
    return all(re.fullmatch(rx, labels.get(k, "")) for k, rx in route.match_re.items())


# Sources that never say an alert has ended (Splunk's webhook alert action fires, and that is all): their
# cards get a Resolve button, or they would show "firing" for good.
NEVER_RESOLVE = frozenset({"splunk"})


@dataclass(frozen=True)
class Offer:
    """What a card's buttons may offer, from the config: the silence lengths; real silences only where
    Alertmanager's API is configured (elsewhere the same buttons snooze the group in opsloop, and say
    so); Graph only where a Prometheus is configured to draw it (the button would only say it isn't)."""

    silence_hours: Sequence[int] = (1, 4, 24)
    graphs: bool = True
    silences: bool = True

    def silences_for(self, g: Group) -> bool:
        """Whether a silence of this group can be a real one in Alertmanager (else it is a snooze here)."""
        return self.silences and g.source == "alertmanager"


def alert_buttons(g: Group, offer: Offer, runbook: str | None, has_query: bool, now: float) -> list[v.Button]:
    """The card's buttons for the group's current state."""
    ref = json.dumps({"group": g.id})
    out: list[v.Button] = []
    if g.firing:
        real = offer.silences_for(g)
        if g.silence_id:
            out.append(v.Button("Unsilence", "alert.unsilence", ref))
        elif g.snoozed(now):
            out.append(v.Button("Unsnooze", "alert.unsnooze", ref))
        else:
            out.extend(
                v.Button(
                    f"{'Silence' if real else 'Snooze'} {h}h", "alert.silence", json.dumps({"group": g.id, "hours": h})
                )
                for h in offer.silence_hours
            )
            if real:  # the form writes Alertmanager matchers
                out.append(v.Button("Silence…", "alert.silence_form", ref))
        if not g.acked_by:
            out.append(v.Button("Acknowledge", "alert.ack", ref, v.Style.PRIMARY))
        if g.source in NEVER_RESOLVE:
            out.append(v.Button("Resolve", "alert.resolve", ref))
    if (link := v.Button.link("Runbook", "alert.runbook", ref, runbook)) is not None:
        out.append(link)
    if has_query and offer.graphs:
        out.append(v.Button("Graph", "alert.graph", ref))
    if g.release and g.firing:
        out.append(
            v.Button(
                "Rollback",
                "deploy.rollback",
                json.dumps({"service": g.release.get("service"), "env": g.release.get("env"), "group": g.id}),
                v.Style.DANGER,
                confirm=v.Confirm(
                    "Roll back?",
                    f"Roll {g.release.get('service')} in {g.release.get('env')} back to the"
                    " version before this release?",
                    "Roll back",
                ),
            )
        )
    if not g.ticket:
        out.append(v.Button("Create ticket", "alert.ticket", ref))
    return out


def group_buttons(g: Group, alerts: Sequence[ShownAlert], offer: Offer, now: float) -> list[v.Button]:
    """The group's buttons, with Runbook and Graph when one of its alerts has a runbook or a query."""
    runbook = next((a.annotations.get("runbook_url") for a in alerts if a.annotations.get("runbook_url")), None)
    has_query = any(a.generator_url and "g0.expr=" in a.generator_url for a in alerts)
    return alert_buttons(g, offer, runbook, has_query, now)


def _span(g: Group, alerts: Sequence[StoredAlert]) -> tuple[float, float | None]:
    """When the group started firing and, once resolved, when it stopped: by the source's own times where it
    gave them (a page can arrive long after the alert started), never later than opsloop saw either."""
    start = min([a.starts_at for a in alerts if a.starts_at] + [g.first_seen])
    if g.firing or not g.resolved_at:
        return start, None
    ends = [a.ends_at for a in alerts if a.ends_at and a.ends_at >= start]
    return start, min(max(ends), g.resolved_at) if ends else g.resolved_at


def card(g: Group, alerts: Sequence[StoredAlert], *, now: float, offer: Offer = Offer()) -> v.Message:
    """The group's card: state, counts, the first few alerts, who acted, and the buttons."""
    firing = [a for a in alerts if a.status == _FIRING]
    resolved = [a for a in alerts if a.status != _FIRING]
    head = f"{_ICON.get(g.severity, '🔥')} FIRING: {g.title}" if g.firing else f"✅ RESOLVED: {g.title}"
    fields: list[tuple[str, str]] = [
        ("Severity", g.severity),
        ("Alerts", f"{len(firing)} firing, {len(resolved)} resolved"),
    ]
    if g.service:
        fields.append(("Service", f"`{v.esc(g.service)}`" + (f" in `{v.esc(g.env)}`" if g.env else "")))
    start, end = _span(g, alerts)
    since = iso(start)
    if end is not None:
        since += f" · resolved after {format_seconds(end - start)}"
    fields.append(("Since", since))
    blocks: list[v.Block] = [v.Header(head[:150]), v.Section(fields=tuple(fields))]
    listed = [
        f"{'🔥' if a.status == _FIRING else '✅'} *{v.esc(a.name)}* {v.esc(a.summary[:200])}" for a in firing + resolved
    ]
    shown = _fit(listed, CARD_ALERT_CHARS)
    lines = listed[:shown]
    if shown < len(listed):
        lines.append(f"…and {len(listed) - shown} more in the thread")
    if g.truncated:
        lines.append(f"_(the source left out {g.truncated} alerts of this group)_")
    if lines:
        blocks.append(v.Section("\n".join(lines)))
    notes = []
    if g.release:
        r = g.release
        after = start - float(r.get("at", start))
        when = f"started {round(after / 60)} min after" if after >= 0 else "started while rolling out"
        notes.append(
            f"🚀 {when} {v.esc(str(r.get('service')))} {v.esc(str(r.get('version')))}"
            f" to {v.esc(str(r.get('env')))}" + (f" by <@{r['by']}>" if r.get("by") else "")
        )
    if g.silence_id and g.silence_until and g.silence_until > now:
        notes.append(f"🔕 silenced by <@{g.silenced_by}> until {iso(g.silence_until)}")
    if g.acked_by:
        notes.append(
            f"👀 acknowledged by <@{g.acked_by}>"
            if g.acked_by.startswith(("U", "W"))
            else f"👀 acknowledged by {v.esc(g.acked_by)}"
        )
    if snoozed := g.snoozed(now):
        notes.append(f"💤 snoozed until {iso(snoozed)}")
    if g.ticket:
        notes.append(f"🎫 ticket {v.esc(g.ticket)}")
    if notes:
        blocks.append(v.Context(tuple(notes[:10])))
    buttons = group_buttons(g, alerts, offer, now)
    if buttons:
        blocks.append(v.Actions(tuple(buttons)))
    blocks.append(v.Context((f"{g.source} · group `{g.id}`",)))
    return v.Message(head, tuple(blocks))


def detail(a: StoredAlert) -> v.Message:
    """One alert in its group's thread: labels, value, links."""
    labels = " ".join(f"`{v.esc(k)}={v.esc(val)}`" for k, val in sorted(a.labels.items()))[:2500]
    lines = [f"🔥 *{v.esc(a.name)}* ({a.severity}) {v.esc(a.summary[:500])}", labels]
    if a.value:
        lines.append(f"value: `{v.esc(a.value[:200])}`")
    links = " · ".join(f"<{url}|{v.esc(what)}>" for what, url in a.links if url.startswith(("http://", "https://")))
    if links:
        lines.append(links)
    return v.Message(f"{a.name}: {a.summary[:150]}", (v.Section("\n".join(lines)),))


def details(alerts: Sequence[StoredAlert]) -> list[v.Message]:
    """The thread messages for alerts new to a group in one delivery: one message for one alert, else
    several alerts to a message (each its own section, under PAGE_CHARS), so that a delivery of ten new
    alerts costs one post of Slack's one per second per channel, not ten."""
    if len(alerts) <= 1:
        return [detail(a) for a in alerts]
    out: list[v.Message] = []
    batch: list[v.Block] = []
    names: list[str] = []
    used = 0
    for a in alerts:
        section = detail(a).blocks[0]
        assert isinstance(section, v.Section)
        if batch and (used + len(section.text) > PAGE_CHARS or len(batch) >= 40):
            out.append(v.Message(f"{len(batch)} alerts: {', '.join(sorted(set(names)))}"[:150], tuple(batch)))
            batch, names, used = [], [], 0
        batch.append(section)
        names.append(a.name)
        used += len(section.text)
    out.append(v.Message(f"{len(batch)} alerts: {', '.join(sorted(set(names)))}"[:150], tuple(batch)))
    return out


@dataclass(frozen=True)
class DigestSummary:
    """What a storm digest shows, counted by SQLite: a digest may hold hundreds of groups, and it is
    re-rendered on every delivery that touches one of them."""

    groups: int
    firing: int
    alerts: int
    by_severity: dict[str, int]
    by_name: tuple[tuple[str, int], ...]  # the 8 most common titles, ties in the order the groups came
    top: tuple[tuple[str, bool, int], ...]  # (title, firing, alerts) of the 5 biggest groups

    @classmethod
    def of(cls, db: Database, digest_id: int) -> DigestSummary:
        # One pass, no JSON: each group's title, state, severity and its number of alerts (counted on
        # the alerts_group index), in the order the groups came.
        groups = db.execute(
            "SELECT g.title, g.status = 'firing', g.severity,"
            " (SELECT count(*) FROM alerts a WHERE a.group_id = g.id)"
            " FROM alert_groups g WHERE g.digest_id = ? ORDER BY g.id",
            (digest_id,),
        ).fetchall()
        by_severity = Counter(severity for _, _, severity, _ in groups)
        by_name = Counter(title for title, _, _, _ in groups).most_common(8)
        top = sorted(groups, key=lambda g: -g[3])[:5]
        return cls(
            groups=len(groups),
            firing=sum(1 for g in groups if g[1]),
            alerts=sum(g[3] for g in groups),
            by_severity=dict(by_severity),
            by_name=tuple(by_name),
            top=tuple((title, bool(firing), n) for title, firing, _, n in top),
        )


def digest_card(channel: str, summary: DigestSummary, started: float) -> v.Message:
    """One card for a storm: counts by alert name and severity, and the biggest groups."""
    head = f"🌩️ Alert storm in {channel}: {summary.groups} groups, {summary.alerts} alerts"
    sev = ", ".join(
        f"{_ICON.get(s, '')} {s} {n}" for s, n in sorted(summary.by_severity.items(), key=lambda x: _RANK.get(x[0], 9))
    )
    names = "\n".join(f"• {v.esc(n)} ×{c}" for n, c in summary.by_name)
    tops = "\n".join(f"• {'🔥' if firing else '✅'} {v.esc(title)} — {n} alerts" for title, firing, n in summary.top)
    return v.Message(
        head,
        (
            v.Header(head[:150]),
            v.Section(
                fields=(
                    ("Firing groups", str(summary.firing)),
                    ("Resolved groups", str(summary.groups - summary.firing)),
                    ("By severity", sev or "—"),
                    ("Since", iso(started)),
                ),
            ),
            v.Section(f"*By alert*\n{names}"),
            v.Section(f"*Biggest groups*\n{tops}"),
            v.Context(
                (
                    f"Every group is in the thread, {PAGE_GROUPS} to a page: its alerts by the labels that tell"
                    " them apart, and its own buttons.",
                )
            ),
        ),
    )


def telling_labels(alerts: Sequence[ShownAlert], group_labels: dict[str, str]) -> list[str]:
    """The label names that tell a group's alerts apart (those whose values differ); for a single alert,
    its labels other than the group's own and its name and severity."""
    if len(alerts) > 1:
        # A label tells them apart when some alert's (name, value) differs from the first alert's: a set
        # operation per alert instead of a set of values per label name.
        first = alerts[0].labels.items()
        keys: set[str] = set()
        for a in alerts[1:]:
            keys.update(k for k, _ in a.labels.items() ^ first)
        return sorted(keys)
    skip = {*group_labels, "alertname", "severity"}
    return sorted(k for a in alerts for k in a.labels if k not in skip)


def alert_line(a: ShownAlert, keys: Sequence[str]) -> str:
    """One alert on a digest page: state, the labels that identify it, its summary."""
    mark = "🔥" if a.status == _FIRING else "✅"
    have = a.labels
    labels = " ".join([f"{k}={have[k]}" for k in keys if k in have])[:100]
    ident = f"`{v.esc(labels)}` " if labels else ""
    return f"{mark} {ident}{v.esc(a.summary[:120]) or v.esc(a.name)}"


def _fit(lines: Sequence[str], budget: int) -> int:
    """How many of `lines` fit in `budget` characters, newlines included."""
    used = 0
    for n, line in enumerate(lines):
        used += len(line) + 1
        if used > budget:
            return n
    return len(lines)


def page_group(g: Group, alerts: Sequence[ShownAlert], *, now: float, offer: Offer) -> tuple[list[v.Block], list[str]]:
    """A group on a digest page (its section and its buttons, at most GROUP_CHARS of text), and the
    lines of the alerts that did not fit, for its overflow messages."""
    n_firing = sum(1 for a in alerts if a.status == _FIRING)
    state = f"{_ICON.get(g.severity, '🔥')} FIRING" if g.firing else "✅ RESOLVED"
    head = (
        f"{state}: *{v.esc(g.title)}* · {g.severity} · {n_firing} firing, {len(alerts) - n_firing} resolved"
        f" · group `{g.id}`"
    )
    notes = []
    if g.silence_id and g.silence_until and g.silence_until > now:
        notes.append(f"🔕 silenced by <@{g.silenced_by}>")
    if g.acked_by:
        notes.append(f"👀 <@{g.acked_by}>" if g.acked_by.startswith(("U", "W")) else f"👀 {v.esc(g.acked_by)}")
    if snoozed := g.snoozed(now):
        notes.append(f"💤 until {iso(snoozed)}")
    if g.ticket:
        notes.append(f"🎫 {v.esc(g.ticket)}")
    if g.truncated:
        notes.append(f"the source left out {g.truncated} alerts")
    if notes:
        head += " · " + " · ".join(notes)
    keys = telling_labels(alerts, g.labels)
    lines = [alert_line(a, keys) for a in alerts]
    more_note = "…and {} more in the messages below this page"
    room = GROUP_CHARS - len(head) - 1
    fit = _fit(lines, room)
    if fit < len(lines):
        fit = _fit(lines, room - len(more_note) - 8)
    body = [head, *lines[:fit]]
    if fit < len(lines):
        body.append(more_note.format(len(lines) - fit))
    blocks: list[v.Block] = [v.Section("\n".join(body))]
    buttons = group_buttons(g, alerts, offer, now)
    if buttons:
        blocks.append(v.Actions(tuple(buttons)))
    return blocks, lines[fit:]


def digest_page(
    page: int, groups: Sequence[tuple[Group, Sequence[ShownAlert]]], *, now: float, offer: Offer
) -> tuple[v.Message, dict[int, list[str]]]:
    """Page `page` (from 0) of a digest's thread, and the overflow lines per group id.

    Each group keeps its buttons on the page: a page of PAGE_GROUPS groups is 1 + 2 * PAGE_GROUPS blocks
    (a section and an actions row each), well under Slack's 50, and the router strips the `~n` suffix
    that makes the repeated action ids unique within the message."""
    first = page * PAGE_GROUPS + 1
    head = f"Storm page {page + 1}: groups {first}–{first + len(groups) - 1}"
    blocks: list[v.Block] = [v.Context((head,))]
    overflow: dict[int, list[str]] = {}
    for g, alerts in groups:
        part, rest = page_group(g, alerts, now=now, offer=offer)
        blocks.extend(part)
        if rest:
            overflow[g.id] = rest
    firing = sum(1 for g, _ in groups if g.firing)
    return v.Message(f"{head} ({firing} firing)", tuple(blocks)), overflow


def overflow_messages(groups: Sequence[Group], overflow: dict[int, list[str]], page: int) -> list[v.Message]:
    """The alerts that a page's groups had no room for, group by group: sections of at most SECTION_CHARS,
    messages of at most PAGE_CHARS (a page of ten 50-alert groups is the page and about three of these)."""
    head = f"Storm page {page + 1}, continued"
    messages: list[v.Message] = []
    sections: list[v.Block] = []
    used = len(head)

    def flush() -> None:
        nonlocal sections, used
        if sections:
            messages.append(v.Message(f"{head} ({len(messages) + 1})", (v.Context((head,)), *sections)))
        sections, used = [], len(head)

    for g in groups:
        lines = [f"More of *{v.esc(g.title)}* (group `{g.id}`):", *overflow.get(g.id, ())]
        if len(lines) == 1:
            continue
        i = 0
        while i < len(lines):
            n = max(1, _fit(lines[i:], SECTION_CHARS))
            chunk = "\n".join(lines[i : i + n])
            if used + len(chunk) > PAGE_CHARS or len(sections) >= 40:
                flush()
            sections.append(v.Section(chunk))
            used += len(chunk)
            i += n
    flush()
    return messages


@dataclass(frozen=True)
class _Page:
    """A page of a digest's thread to render: its number (from 0) and its groups' ids."""

    digest_id: int
    channel: str
    key: str
    number: int
    groups: tuple[int, ...]


class AlertPipeline:
    """See the module docstring."""

    def __init__(self, services: Services) -> None:
        self.s = services
        # digest id -> group ids whose page needs a new render. Only the store's writer thread touches
        # it (the deliveries' writes mark, the render's write takes); the loop only asks if it is empty.
        self._dirty: dict[int, set[int]] = {}
        self._rendered_all = False  # the first render after a start redoes whole digests (a crash may
        # have lost marks)
        self._render_task: asyncio.Task[None] | None = None
        self._last_render = 0.0

    @property
    def config(self) -> Config:
        return self.s.config

    @property
    def offer(self) -> Offer:
        """What the cards' buttons offer under this config."""
        i = self.config.integrations
        return Offer(tuple(self.config.alerts.silence_hours), i.prometheus is not None, i.alertmanager is not None)

    def default_channel(self) -> str:
        c = self.config
        return c.alerts.channel or c.channels.alerts or c.channels.default

    def route(self, labels: dict[str, str]) -> AlertRoute:
        """The first route whose matchers hold (service routes first), or a catch-all."""
        for name, svc in self.config.services.items():
            if svc.alerts is not None:
                r = (
                    svc.alerts
                    if (svc.alerts.match or svc.alerts.match_re)
                    else svc.alerts.model_copy(update={"match": {"service": name}})
                )
                if _matches(r, labels):
                    return r if r.channel else r.model_copy(update={"channel": svc.channel})
        for r in self.config.alerts.routes:
            if _matches(r, labels):
                return r
        return _CATCH_ALL

    async def ingest(self, batch: AlertBatch) -> Ingested:
        """Store one delivery and update (or post) every card it touches, in one transaction."""
        now = self.s.clock.now()
        result = await self.s.store.write(lambda db: self._ingest(db, batch, now))
        self.s.outbox.kick()
        self._schedule_render()
        return result

    def _schedule_render(self) -> None:
        """Render the dirty digest pages soon: now if the last render is DIGEST_REFRESH old, else then."""
        if not self._dirty or self._render_task is not None:
            return
        delay = max(0.0, self._last_render + DIGEST_REFRESH - time.monotonic())
        self._render_task = asyncio.create_task(self._render_later(delay), name="alerts-digest-render")
        self.s.outbox.track(self._render_task)

    async def _render_later(self, delay: float) -> None:
        try:
            if delay > 0:
                await asyncio.sleep(delay)
            self._last_render = time.monotonic()
            self._render_task = None  # marks made from here on get a render of their own
            # The digests' cards and the list of pages in one write, then each page in a write of its own:
            # the store's writer serves what was queued meanwhile (a slash command's audit row) between
            # two pages instead of after all of them.
            pages = await self.s.store.write(self._render_cards)
            self.s.outbox.kick()
            for page in pages:
                await self.s.store.write(partial(self._render_page, page=page))
                self.s.outbox.kick()
        except Exception:
            log.exception("rendering storm digests failed; the next delivery retries")
        finally:
            if self._render_task is not None and self._render_task is asyncio.current_task():
                self._render_task = None
        self._schedule_render()

    def _ingest(self, db: Database, batch: AlertBatch, now: float) -> Ingested:
        touched: dict[int, set[int]] = {}  # group id -> alert ids new to it or changed
        created: set[int] = set()
        changed_groups: set[int] = set()
        routes: dict[str, tuple[AlertRoute, int]] = {}  # group key -> route and its severity floor
        # Looked up once per delivery, not once per alert (a delivery holds a whole group): the groups by
        # key, the stored alerts by fingerprint, and the firings to count per group. Each is kept up to
        # date below, so a later alert of the same delivery sees what an earlier one changed. New alerts
        # and changed ones are written with one executemany each.
        groups: dict[str, dict[str, Any] | None] = {}
        known = self._stored(db, batch)
        firings: dict[int, tuple[AlertRoute, int]] = {}
        inserts: dict[tuple[str, str], tuple[Any, ...]] = {}  # newest wins if a delivery repeats an alert
        insert_routes: dict[tuple[str, str], AlertRoute] = {}
        changes: list[tuple[str, tuple[Any, ...]]] = []  # (UPDATE statement, its parameters)
        repeats: list[tuple[float, int]] = []
        redacted = self.s.redactor.texts(a.summary for a in batch.alerts)
        for a in batch.alerts:
            gkey = f"{a.source}:{a.group_key}"
            if gkey not in routes:
                r = self.route(dict(a.labels))
                routes[gkey] = (r, Severity(r.min_severity).rank)
            route, floor = routes[gkey]
            if gkey not in groups:
                groups[gkey] = one(db, "SELECT id, status FROM alert_groups WHERE key = ?", (gkey,))
            g = groups[gkey]
            ref = (a.source, a.fingerprint)
            prev = known.get(ref)
            firing = a.status is AlertStatus.FIRING
            if g is None and prev is None and not firing:
                # Something ended that never began here (a recovery after a restart of the source, an
                # event on a healthy object): Alertmanager sends nothing for such a group, nor do we.
                continue
            if g is None:
                gid = self._new_group(db, a, gkey, route, batch, now, a.severity.rank <= floor)
                created.add(gid)
                groups[gkey] = {"id": gid, "status": _FIRING}
            else:
                gid = int(g["id"])
                if firing and g["status"] != _FIRING:
                    # A new incident on a resolved group: the old acknowledgement owned the old one (Nagios
                    # drops its acknowledgement at recovery too), so the card asks for an owner again.
                    db.execute("UPDATE alert_groups SET acked_by = NULL, acked_at = NULL WHERE id = ?", (gid,))
            # Only Nagios tells of an acknowledgement made on its side (another source's annotation of that
            # name acknowledges nothing).
            if g is not None and a.source == "nagios" and a.annotation("nagios_event") == "ACKNOWLEDGEMENT":
                author = a.annotation("nagios_author") or "Nagios"
                db.execute(
                    "UPDATE alert_groups SET acked_by = coalesce(acked_by, ?), acked_at = coalesce(acked_at, ?)"
                    " WHERE id = ?",
                    (author, now, gid),
                )
                changed_groups.add(gid)
            status = _FIRING if firing else a.status.value
            if prev is None:
                insert_routes[ref] = route
                inserts[ref] = (
                    a.source,
                    a.fingerprint,
                    gid,
                    status,
                    a.name,
                    a.severity,  # a StrEnum: stored as its text
                    _json(dict(a.labels)),
                    _json(dict(a.annotations)),
                    redacted[a.summary][:2000],
                    a.value,
                    _json(a.links) if a.links else "[]",  # pairs as arrays
                    a.generator_url,
                    _ts(a.starts_at),
                    _ts(a.ends_at),
                    now,
                    now,
                )
            elif prev["status"] != status or prev["group_id"] != gid:
                # The stored summary is the redacted one: the same text needs no second redaction.
                summary = prev["summary"] if prev["summary"] == a.summary else redacted[a.summary][:2000]
                times = (a.value, _ts(a.ends_at), _ts(a.starts_at), now, 1 if firing else 0, prev["id"])
                if (prev["group_id"], prev["severity"], prev["summary"]) == (gid, a.severity, summary):
                    # Most changes are a status (firing <-> resolved): leaving group_id out of the SET spares
                    # SQLite the foreign-key check and the columns it would rewrite unchanged (~7 -> 4 µs a row).
                    changes.append((_SET_STATUS, (status, *times)))
                else:
                    changes.append((_SET_ALL, (gid, status, a.severity, summary, *times)))
                known[ref] = {**prev, "status": status, "group_id": gid, "severity": a.severity, "summary": summary}
                changed_groups.add(gid)
                if firing:
                    touched.setdefault(gid, set()).add(int(prev["id"]))
                    firings[gid] = (route, firings.get(gid, (route, 0))[1] + 1)
            else:
                # A repeat notification: nothing to say, only that we heard it again.
                repeats.append((now, prev["id"]))
        if inserts:
            for (gid, status, alert_id), route in zip(
                self._insert_alerts(db, list(inserts.values())), (insert_routes[ref] for ref in inserts), strict=True
            ):
                touched.setdefault(gid, set()).add(alert_id)
                if status == _FIRING:
                    firings[gid] = (route, firings.get(gid, (route, 0))[1] + 1)
        for sql, run in itertools.groupby(changes, key=lambda c: c[0]):  # in order: a later change wins
            db.conn.executemany(sql, [params for _, params in run])
        if repeats:
            db.conn.executemany("UPDATE alerts SET last_seen = ? WHERE id = ?", repeats)
        for gid, (route, n) in firings.items():
            self._count_firing(db, gid, route, now, n)
        if batch.truncated and batch.alerts:
            gkey = f"{batch.alerts[0].source}:{batch.alerts[0].group_key}"
            db.execute("UPDATE alert_groups SET truncated = ? WHERE key = ?", (batch.truncated, gkey))
        for gid in set(touched) | changed_groups | created:
            self._refresh_group(db, gid, now, new=gid in created, new_alerts=touched.get(gid, set()))
        return Ingested(len(batch.alerts), len(created), len(changed_groups - created))

    @staticmethod
    def _insert_alerts(db: Database, values: list[tuple[Any, ...]]) -> list[tuple[int, str, int]]:
        """Insert new alerts with one executemany; (group id, status, alert id) of each, in order."""
        before = db.execute("SELECT coalesce(max(id), 0) FROM alerts").fetchone()[0]
        db.conn.executemany(
            "INSERT INTO alerts (source, fingerprint, group_id, status, name, severity, labels, annotations,"
            " summary, value, links, generator_url, starts_at, ends_at, first_seen, last_seen)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            values,
        )
        # SQLite gives a new row the largest rowid so far plus one: in this one writer's transaction the
        # rows are before+1 … before+n. Checked, and read back if that ever does not hold.
        last = db.execute("SELECT last_insert_rowid()").fetchone()[0]
        if last == before + len(values):
            return [(v[2], v[3], before + 1 + i) for i, v in enumerate(values)]
        ids = {
            (r[0], r[1]): r[2]
            for r in db.execute("SELECT source, fingerprint, id FROM alerts WHERE id > ?", (before,)).fetchall()
        }
        return [(v[2], v[3], ids[(v[0], v[1])]) for v in values]

    @staticmethod
    def _stored(db: Database, batch: AlertBatch) -> dict[tuple[str, str], dict[str, Any]]:
        """The stored alerts of a delivery by (source, fingerprint), read in a few queries."""
        fingerprints: dict[str, set[str]] = {}
        for a in batch.alerts:
            fingerprints.setdefault(a.source, set()).add(a.fingerprint)
        out: dict[tuple[str, str], dict[str, Any]] = {}
        for source, fps in fingerprints.items():
            ordered = sorted(fps)
            for i in range(0, len(ordered), 500):  # well under SQLite's limit of bound parameters
                chunk = ordered[i : i + 500]
                for r in rows(
                    db,
                    "SELECT id, status, group_id, severity, summary, fingerprint FROM alerts WHERE source = ?"
                    " AND fingerprint"
                    f" IN ({', '.join('?' * len(chunk))})",
                    (source, *chunk),
                ):
                    out[(source, r.pop("fingerprint"))] = r
        return out

    def _new_group(
        self, db: Database, a: Alert, gkey: str, route: AlertRoute, batch: AlertBatch, now: float, visible: bool
    ) -> int:
        labels = dict(batch.group_labels) or {"alertname": a.name}
        title = a.name
        # Group labels the name already says (Nagios names a service `web01/HTTP`, grouped by host) are left out.
        words = set(re.split(r"[\s/:]+", a.name))
        extra = [val for k, val in sorted(labels.items()) if k != "alertname" and val not in words]
        if extra:
            title = f"{a.name} ({', '.join(extra)})"
        service = a.label("service") or a.label("app") or None
        env = a.label("env") or a.label("environment") or None
        channel = route.channel or self.default_channel()
        # The source's start where it gave one: a page that arrives late is not blamed on a release made since.
        started = min(_ts(a.starts_at) or now, now)
        release = self._release(db, service, env, started)
        cur = db.execute(
            "INSERT INTO alert_groups (key, source, title, channel, status, severity, service, env, labels, shown,"
            " first_seen, last_change, fire_window, release) VALUES (?, ?, ?, ?, 'firing', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                gkey,
                a.source,
                title[:140],
                channel,
                a.severity.value,
                service,
                env,
                json.dumps(labels),
                1 if visible and route.after is None else 0,
                now,
                now,
                now,
                json.dumps(release) if release else None,
            ),
        )
        return int(cur.lastrowid or 0)

    def _release(self, db: Database, service: str | None, env: str | None, started: float) -> dict[str, Any] | None:
        """The release of the service (in the env) that finished at most `correlate_within` before the alert
        started, or was still rolling out then; never one begun after the alert had started."""
        if not service:
            return None
        since = started - self.config.alerts.correlate_within.total_seconds()
        r = one(
            db,
            "SELECT e.* FROM events e LEFT JOIN releases r ON r.id = json_extract(e.detail, '$.release')"
            " WHERE e.kind = 'deploy.finished' AND e.service = ? AND e.at >= ? AND (e.at <= ? OR r.started_at <= ?)"
            + (" AND e.env = ?" if env else "")
            + " ORDER BY e.at DESC LIMIT 1",
            (service, since, started, started, env) if env else (service, since, started, started),
        )
        if r is None:
            return None
        detail = json.loads(r["detail"])
        return {
            "service": service,
            "env": r["env"],
            "version": r["ref"],
            "by": r["actor"],
            "at": r["at"],
            "release": detail.get("release"),
        }

    def _count_firing(self, db: Database, gid: int, route: AlertRoute, now: float, n: int = 1) -> None:
        """Count `n` firings of a group (all of one delivery, so at the same `now`) for its route's
        "only after N firings within M" rule; the group is shown once the count reaches N."""
        g = one(db, "SELECT fire_count, fire_window, shown, severity FROM alert_groups WHERE id = ?", (gid,))
        assert g is not None
        after = route.after
        if after is None or g["shown"]:
            db.execute("UPDATE alert_groups SET fire_count = fire_count + ? WHERE id = ?", (n, gid))
            return
        window = after.within.total_seconds()
        count, start = int(g["fire_count"]), float(g["fire_window"] or now)
        if now - start > window:
            count, start = 0, now
        count += n
        show = count >= after.firings and Severity(g["severity"]).rank <= Severity(route.min_severity).rank
        db.execute(
            "UPDATE alert_groups SET fire_count = ?, fire_window = ?, shown = ? WHERE id = ?",
            (count, start, int(show), gid),
        )

    def _digest_for(self, db: Database, channel: str, now: float) -> int | None:
        """The open storm digest of a channel, opening one when the rate says so."""
        open_digest = one(
            db,
            "SELECT id FROM alert_digests WHERE channel = ? AND last_at >= ? ORDER BY id DESC",
            (channel, now - DIGEST_IDLE),
        )
        recent = db.execute(
            "SELECT count(*) FROM alert_groups WHERE channel = ? AND first_seen >= ?", (channel, now - STORM_WINDOW)
        ).fetchone()[0]
        if open_digest is not None and recent > 1:
            db.execute("UPDATE alert_digests SET last_at = ? WHERE id = ?", (now, open_digest["id"]))
            return int(open_digest["id"])
        if recent > self.config.alerts.storm.groups_per_minute:
            cur = db.execute(
                "INSERT INTO alert_digests (channel, started_at, last_at) VALUES (?, ?, ?)", (channel, now, now)
            )
            return int(cur.lastrowid or 0)
        return None

    def _refresh_group(self, db: Database, gid: int, now: float, *, new: bool, new_alerts: set[int]) -> None:
        gr = one(db, "SELECT * FROM alert_groups WHERE id = ?", (gid,))
        assert gr is not None
        # The group's state needs only the severities that fire (on the alerts_group index, no JSON);
        # the alerts themselves are read only when a card is drawn.
        severities = [
            r[0]
            for r in db.execute(
                "SELECT DISTINCT severity FROM alerts WHERE group_id = ? AND status = 'firing'", (gid,)
            ).fetchall()
        ]
        firing = bool(severities)
        status = _FIRING if firing else AlertStatus.RESOLVED.value
        severity = min(severities, key=lambda s: _RANK.get(s, 9), default=gr["severity"])
        resolved_at = None if firing else (gr["resolved_at"] or now)
        if (status, severity, resolved_at) != (gr["status"], gr["severity"], gr["resolved_at"]):
            db.execute(
                "UPDATE alert_groups SET status = ?, severity = ?, resolved_at = ?, last_change = ? WHERE id = ?",
                (status, severity, resolved_at, now, gid),
            )
            if status != gr["status"]:
                self._event(db, gr, "alert.resolved" if status == "resolved" else "alert.fired", now)
            gr = {**gr, "status": status, "severity": severity, "resolved_at": resolved_at, "last_change": now}
        if new and gr["status"] == "firing":
            self._event(db, gr, "alert.fired", now)
        if not gr["shown"]:
            return  # below the route's bar (severity, firings): stored, listed by `alerts`, no card
        if gr["digest_id"] is None and new:
            digest = self._digest_for(db, gr["channel"], now)
            if digest is not None:
                db.execute("UPDATE alert_groups SET digest_id = ? WHERE id = ?", (digest, gid))
                gr = {**gr, "digest_id": digest}
        if gr["digest_id"] is not None:
            self._dirty.setdefault(int(gr["digest_id"]), set()).add(gid)
            return
        g = _group(gr)
        alerts = [
            _alert(r)
            for r in rows(db, "SELECT * FROM alerts WHERE group_id = ? ORDER BY status = 'firing' DESC, id", (gid,))
        ]
        message = card(g, alerts, now=now, offer=self.offer)
        self.s.post_in(db, g.channel, message, key=g.card_key, dedupe=f"post:{g.card_key}")
        if g.snoozed(now):
            return
        fresh = [a for a in alerts if a.id in new_alerts]
        for n, message in enumerate(details(fresh)):
            # The same alert firing again with the same start (a redelivery) is not posted twice.
            keys = sorted(f"{a.source}:{a.fingerprint}:{a.starts_at}" for a in fresh)
            dedupe = f"alert:{keys[0]}" if len(keys) == 1 else f"alerts:{_digest_of(keys)}:{n}"
            self.s.post_in(db, g.channel, message, thread_key=g.card_key, dedupe=dedupe)

    def _render_cards(self, db: Database) -> list[_Page]:
        """Take the dirty marks and update each dirty digest's card (in the writer); the pages to render."""
        dirty, self._dirty = self._dirty, {}
        try:
            pages = self._cards(db, dirty, whole=not self._rendered_all)
        except BaseException:
            self._mark(dirty)  # the write is rolled back: the marks stay for next time
            raise
        self._rendered_all = True
        return pages

    def _mark(self, dirty: dict[int, set[int]]) -> None:
        for digest_id, gids in dirty.items():
            self._dirty.setdefault(digest_id, set()).update(gids)

    def _cards(self, db: Database, dirty: dict[int, set[int]], *, whole: bool) -> list[_Page]:
        out: list[_Page] = []
        for digest_id, gids in sorted(dirty.items()):
            d = one(db, "SELECT * FROM alert_digests WHERE id = ?", (digest_id,))
            if d is None:  # its write was rolled back
                continue
            channel, key = d["channel"], f"digest:{digest_id}"
            summary = DigestSummary.of(db, digest_id)
            self.s.post_in(db, channel, digest_card(channel, summary, d["started_at"]), key=key, dedupe=f"post:{key}")
            ids = [
                r[0]
                for r in db.execute(
                    "SELECT id FROM alert_groups WHERE digest_id = ? ORDER BY id", (digest_id,)
                ).fetchall()
            ]
            position = {gid: i for i, gid in enumerate(ids)}
            numbers = (
                range((len(ids) + PAGE_GROUPS - 1) // PAGE_GROUPS)
                if whole
                else sorted({position[g] // PAGE_GROUPS for g in gids if g in position})
            )
            out += [
                _Page(digest_id, channel, key, n, tuple(ids[n * PAGE_GROUPS : (n + 1) * PAGE_GROUPS])) for n in numbers
            ]
        return out

    def _render_page(self, db: Database, page: _Page) -> None:
        """Post or edit one page of a digest's thread, and its groups' overflow messages (in the writer)."""
        try:
            self._page(db, page)
        except BaseException:
            self._mark({page.digest_id: set(page.groups)})
            raise

    def _page(self, db: Database, page: _Page) -> None:
        marks = ", ".join("?" * len(page.groups))
        ids = list(page.groups)
        groups = [_group(r) for r in rows(db, f"SELECT * FROM alert_groups WHERE id IN ({marks}) ORDER BY id", ids)]
        by_group: dict[int, list[ShownAlert]] = {gid: [] for gid in ids}
        # Only what a page shows (a page holds up to 500 alerts; each column read is an object per alert):
        # labels are the one JSON column decoded, all of the page's in one parse; the runbook comes from
        # SQLite.
        found = db.execute(
            "SELECT group_id, status, name, labels, summary, generator_url,"
            f" json_extract(annotations, '$.runbook_url') FROM alerts WHERE group_id IN ({marks}) ORDER BY id",
            ids,
        ).fetchall()
        labels = json.loads("[" + ",".join([r[3] for r in found]) + "]")
        for (gid, status, name, _, summary, generator_url, runbook), lab in zip(found, labels, strict=True):
            annotations = {"runbook_url": runbook} if runbook else {}
            by_group[gid].append(PageAlert(status, name, lab, summary, annotations, generator_url))
        message, overflow = digest_page(
            page.number,
            [(g, by_group[g.id]) for g in groups],
            now=self.s.clock.now(),
            offer=self.offer,
        )
        page_key = f"{page.key}:page:{page.number + 1}"
        self.s.post_in(db, page.channel, message, key=page_key, thread_key=page.key, dedupe=f"post:{page_key}")
        for n, more in enumerate(overflow_messages(groups, overflow, page.number), start=1):
            more_key = f"{page_key}:more:{n}"
            self.s.post_in(db, page.channel, more, key=more_key, thread_key=page.key, dedupe=f"post:{more_key}")

    def _event(self, db: Database, gr: dict[str, Any], kind: str, now: float) -> None:
        db.execute(
            "INSERT INTO events (at, kind, service, env, ref, detail) VALUES (?, ?, ?, ?, ?, ?)",
            (
                now,
                kind,
                gr["service"],
                gr["env"],
                str(gr["id"]),
                json.dumps({"group": gr["id"], "title": gr["title"], "severity": gr["severity"]}),
            ),
        )

    # --- what people do to a group ------------------------------------------------------------------

    async def get(self, group_id: int) -> Group | None:
        """A group by id."""
        r = await self.s.store.read(lambda db: one(db, "SELECT * FROM alert_groups WHERE id = ?", (group_id,)))
        return _group(r) if r else None

    async def alerts_of(self, group_id: int) -> list[StoredAlert]:
        """Every alert of a group, firing first."""
        found = await self.s.store.read(
            lambda db: rows(
                db, "SELECT * FROM alerts WHERE group_id = ? ORDER BY status = 'firing' DESC, id", (group_id,)
            )
        )
        return [_alert(r) for r in found]

    async def resolve(self, group_id: int) -> bool:
        """Mark a group's firing alerts resolved, for a person closing what its source never will; the card and
        the MTTR figure follow as if the source had said so. False when nothing in the group was firing."""
        now = self.s.clock.now()

        def tx(db: Database) -> bool:
            ended = db.execute(
                "UPDATE alerts SET status = 'resolved', ends_at = ?, last_seen = ?"
                " WHERE group_id = ? AND status = 'firing'",
                (now, now, group_id),
            )
            if ended.rowcount == 0:
                return False
            self._refresh_group(db, group_id, now, new=False, new_alerts=set())
            return True

        done = await self.s.store.write(tx)
        if done:
            self.s.outbox.kick()
            self._schedule_render()
        return done

    async def change(self, group_id: int, event: str | None = None, actor: str | None = None, **fields: Any) -> Group:
        """Set fields of a group (silence, ack, snooze, ticket), record the event, and refresh its card."""
        allowed = {"silence_id", "silenced_by", "silence_until", "acked_by", "acked_at", "snoozed_until", "ticket"}
        assert set(fields) <= allowed, fields
        now = self.s.clock.now()

        def tx(db: Database) -> Group:
            if fields:
                sets = ", ".join(f"{k} = :{k}" for k in fields)
                db.execute(
                    f"UPDATE alert_groups SET {sets}, last_change = :now WHERE id = :id",
                    {**fields, "now": now, "id": group_id},
                )
            gr = one(db, "SELECT * FROM alert_groups WHERE id = ?", (group_id,))
            assert gr is not None
            if event:
                db.execute(
                    "INSERT INTO events (at, kind, service, env, ref, actor, detail) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        now,
                        event,
                        gr["service"],
                        gr["env"],
                        str(group_id),
                        actor,
                        json.dumps(
                            {
                                "group": group_id,
                                **{k: val for k, val in fields.items() if isinstance(val, str | int | float)},
                            }
                        ),
                    ),
                )
            self._refresh_group(db, group_id, now, new=False, new_alerts=set())
            return _group(gr)

        g = await self.s.store.write(tx)
        self.s.outbox.kick()
        self._schedule_render()
        return g

    async def firing(self, limit: int = 200) -> list[tuple[Group, list[StoredAlert]]]:
        """Groups firing now with their firing alerts, most severe first."""

        def q(db: Database) -> list[tuple[Group, list[StoredAlert]]]:
            gs = [
                _group(r)
                for r in rows(
                    db, "SELECT * FROM alert_groups WHERE status = 'firing' ORDER BY last_change DESC LIMIT ?", (limit,)
                )
            ]
            out = []
            for g in gs:
                out.append(
                    (
                        g,
                        [
                            _alert(r)
                            for r in rows(
                                db, "SELECT * FROM alerts WHERE group_id = ? AND status = 'firing' ORDER BY id", (g.id,)
                            )
                        ],
                    )
                )
            out.sort(key=lambda x: (_RANK.get(x[0].severity, 9), -x[0].last_change))
            return out

        return await self.s.store.read(q)
