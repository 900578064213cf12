"""The generic approval engine: N distinct approvers from a role, requester excluded, expiry, bound to
a fingerprint of the subject, idempotent under double clicks and retries.

A stage registers an `ApprovalKind` (how to fingerprint its subject now, which live signals to check at
click time, which job runs once approved). Votes are rows with a (request, user) primary key; the
pending -> approved transition is a conditional UPDATE and the execution row has the request as its
primary key, so however many clicks arrive, the action runs once. The request, each vote, the
transition, the job row and the audit entry commit in one transaction.
"""

from __future__ import annotations

import enum
import json
import secrets
import sqlite3
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlite_utils import Database

from bot import rendering
from bot import views as v
from bot.audit import AuditEntry, AuditLog, Outcome
from bot.clock import Clock, iso
from bot.config import ApprovalRule, Config
from bot.durations import format_left
from bot.errors import Conflict, NotAllowed, NotFound
from bot.jobs import JobRunner
from bot.outbox import Outbox
from bot.policy import Policy
from bot.ports import SqlStore
from bot.store import one, rows


class ApprovalState(enum.StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"
    VOID = "void"
    WITHDRAWN = "withdrawn"  # by its requester, with Reject


@dataclass(frozen=True)
class Subject:
    """What is being approved: a stable key, a line for people, and a fingerprint of its facts."""

    key: str
    summary: str
    fingerprint: str


@dataclass(frozen=True)
class ApprovalKind:
    """How a stage plugs into the engine."""

    policy_key: str
    job_kind: str
    fingerprint: Callable[[str], Awaitable[str]]
    recheck: Callable[[str], Awaitable[str | None]] | None = None
    # Renders the kind's own card inside the transaction that changed the request (deploys show a
    # release card with changelog and tests instead of the generic one).
    on_change: Callable[[Database, Approval, float], None] | None = None


@dataclass(frozen=True)
class Vote:
    user: str
    vote: str
    at: float


@dataclass(frozen=True)
class Approval:
    id: str
    policy_key: str
    subject: str
    fingerprint: str
    summary: str
    requester: str
    state: ApprovalState
    required: int
    role: str
    self_approval: bool
    expires_at: float
    created_at: float
    decided_at: float | None
    decided_reason: str | None
    channel: str | None
    thread_ts: str | None
    action: Mapping[str, Any]
    votes: tuple[Vote, ...] = ()

    @property
    def approvals(self) -> int:
        return sum(1 for x in self.votes if x.vote == "approve")

    @property
    def card_key(self) -> str:
        return f"approval:{self.id}"


@dataclass(frozen=True)
class VoteResult:
    approval: Approval
    message: str
    executed_job: int | None = None


def _load(db: Database, approval_id: str) -> Approval | None:
    r = one(db, "SELECT * FROM approvals WHERE id = ?", (approval_id,))
    if r is None:
        return None
    votes = tuple(
        Vote(x["user"], x["vote"], x["at"])
        for x in rows(db, "SELECT * FROM approval_votes WHERE approval_id = ? ORDER BY at, user", (approval_id,))
    )
    return Approval(
        id=r["id"],
        policy_key=r["policy_key"],
        subject=r["subject"],
        fingerprint=r["fingerprint"],
        summary=r["summary"],
        requester=r["requester"],
        state=ApprovalState(r["state"]),
        required=r["required"],
        role=r["role"],
        self_approval=bool(r["self_approval"]),
        expires_at=r["expires_at"],
        created_at=r["created_at"],
        decided_at=r["decided_at"],
        decided_reason=r["decided_reason"],
        channel=r["channel"],
        thread_ts=r["thread_ts"],
        action=json.loads(r["action"]),
        votes=votes,
    )


def load_in(db: Database, approval_id: str) -> Approval | None:
    """A request inside a running transaction."""
    return _load(db, approval_id)


def decision_notice(a: Approval) -> v.Message | None:
    """What the requester is told by name when their request is decided (None while it is pending): the
    card changes in place, and an edit notifies nobody."""
    who = f"<@{a.requester}>"
    voters = ", ".join(f"<@{x.user}>" for x in a.votes if x.vote == "approve") or "the approvers"
    text = {
        ApprovalState.APPROVED: f"✅ {who}, approved by {voters}: carrying it out.",
        ApprovalState.REJECTED: f"🚫 {who}, {a.decided_reason or 'rejected'}.",
        ApprovalState.EXPIRED: f"⌛ {who}, nobody approved it in time. Ask again when it is still wanted.",
        ApprovalState.VOID: f"{who}, the approvals are void ({a.decided_reason or 'no reason given'}). Ask again.",
        ApprovalState.WITHDRAWN: f"⏹️ {who} withdrew the request; nothing will be done.",
    }.get(a.state)
    return v.Message(text, (v.Section(text),)) if text else None


def card(a: Approval, now: float) -> v.Message:
    """The approval card: what, who asked, the rule, the votes so far, and buttons while pending."""
    head = {
        ApprovalState.PENDING: "Approval needed",
        ApprovalState.APPROVED: "Approved",
        ApprovalState.REJECTED: "Rejected",
        ApprovalState.EXPIRED: "Expired",
        ApprovalState.VOID: "Void",
        ApprovalState.WITHDRAWN: "Withdrawn",
    }[a.state]
    votes = ", ".join(f"<@{x.user}> {'✅' if x.vote == 'approve' else '❌'}" for x in a.votes) or "none yet"
    blocks: list[v.Block] = [
        v.Header(f"{head}: {a.policy_key}"),
        v.Section(a.summary),
        v.Section(
            fields=(
                ("Requested by", f"<@{a.requester}>"),
                ("Needs", f"{a.required} from `{a.role}`" + ("" if a.self_approval else " (not the requester)")),
                ("Votes", votes),
                ("Expires", iso(a.expires_at) if a.state is ApprovalState.PENDING else "—"),
            )
        ),
    ]
    if a.state is ApprovalState.PENDING:
        left = max(0.0, a.expires_at - now)
        blocks.append(
            v.Actions(
                (
                    v.Button("Approve", "approval.approve", json.dumps({"id": a.id}), v.Style.PRIMARY),
                    v.Button(
                        "Reject",
                        "approval.reject",
                        json.dumps({"id": a.id}),
                        v.Style.DANGER,
                        confirm=v.Confirm("Reject?", f"Reject this request by <@{a.requester}>?", "Reject"),
                    ),
                )
            )
        )
        blocks.append(v.Context((f"Request `{a.id}` · expires in {format_left(left)} · {WITHDRAW_HINT}",)))
    else:
        blocks.append(v.Context((f"Request `{a.id}` · {a.state.value}: {a.decided_reason or ''}",)))
    return v.Message(f"{head}: {a.summary}", tuple(blocks))


WITHDRAW_HINT = "its requester can withdraw it with Reject"


class Approvals:
    """See the module docstring."""

    def __init__(
        self,
        store: SqlStore,
        config: Config,
        policy: Policy,
        jobs: JobRunner,
        outbox: Outbox,
        audit: AuditLog,
        clock: Clock,
    ) -> None:
        self._store = store
        self._config = config
        self._policy = policy
        self._jobs = jobs
        self._outbox = outbox
        self._audit = audit
        self._clock = clock
        self._kinds: dict[str, ApprovalKind] = {}

    def register(self, kind: ApprovalKind) -> None:
        """Make a kind of approval known (one per policy key)."""
        if kind.policy_key in self._kinds:
            raise ValueError(f"approval kind {kind.policy_key} is registered twice")
        self._kinds[kind.policy_key] = kind

    def rule(self, policy_key: str) -> ApprovalRule | None:
        """The configured rule, or None when the action needs no approval."""
        return self._config.approvals.get(policy_key)

    async def pending(self, now: float, limit: int = 20) -> list[Approval]:
        """Open requests that have not expired, the soonest to expire first."""

        def q(db: Database) -> list[Approval]:
            ids = db.execute(
                "SELECT id FROM approvals WHERE state = 'pending' AND expires_at > ? ORDER BY expires_at LIMIT ?",
                (now, limit),
            ).fetchall()
            return [a for (i,) in ids if (a := _load(db, i)) is not None]

        return await self._store.read(q)

    async def get(self, approval_id: str) -> Approval:
        """A request by id."""
        a = await self._store.read(lambda db: _load(db, approval_id))
        if a is None:
            raise NotFound(f"There is no approval request `{approval_id}`.")
        return a

    async def request(
        self,
        policy_key: str,
        subject: Subject,
        *,
        requester: str,
        channel: str,
        rule: ApprovalRule | None = None,
        thread_ts: str | None = None,
        action: Mapping[str, Any] | None = None,
    ) -> tuple[Approval, bool]:
        """Open a request and post its card; return (request, created). A pending request for the same
        subject and fingerprint is returned instead; one with another fingerprint is voided first."""
        rule = rule or self.rule(policy_key)
        if rule is None:
            raise ValueError(f"no approval rule for {policy_key}")
        if policy_key not in self._kinds:
            raise ValueError(f"no approval kind registered for {policy_key}")
        now = self._clock.now()

        def tx(db: Database) -> tuple[Approval, bool]:
            existing = one(
                db, "SELECT id, fingerprint FROM approvals WHERE subject = ? AND state = 'pending'", (subject.key,)
            )
            if existing and existing["fingerprint"] == subject.fingerprint and existing["id"]:
                a = _load(db, existing["id"])
                if a is not None and a.expires_at > now:
                    return a, False
            if existing:
                self._close_in(db, existing["id"], ApprovalState.VOID, "replaced by a newer request", now)
            approval_id = secrets.token_hex(5)
            db.execute(
                "INSERT INTO approvals (id, policy_key, subject, fingerprint, summary, requester, state, required,"
                " role, self_approval, expires_at, created_at, channel, thread_ts, action)"
                " VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    approval_id,
                    policy_key,
                    subject.key,
                    subject.fingerprint,
                    subject.summary,
                    requester,
                    rule.required,
                    rule.from_,
                    int(rule.self_approval),
                    now + rule.expire_after.total_seconds(),
                    now,
                    channel,
                    thread_ts,
                    json.dumps(dict(action or {})),
                ),
            )
            self._audit.append_in(
                db,
                AuditEntry(
                    requester,
                    policy_key,
                    Outcome.REQUESTED,
                    channel,
                    subject.key,
                    f"needs {v.count(rule.required, 'approval')} from {rule.from_}",
                    {"approval": approval_id},
                ),
            )
            a = _load(db, approval_id)
            assert a is not None
            self._show(db, a, now, first=True)
            return a, True

        result = await self._store.write(tx)
        self._outbox.kick()
        return result

    async def _check_card(self, a: Approval, channel: str, message_ts: str) -> None:
        kind = self._kinds.get(a.policy_key)
        key = a.subject if kind is not None and kind.on_change is not None else a.card_key
        ref = await self._outbox.ref(key)
        if ref is None:
            return  # not posted yet (or posted by an older version): nothing to compare with
        # A card the outbox found again after a restart is known by the channel's configured name
        # (`#approvals`), not its id; its ts alone then names it (a ts is a message's time to the
        # microsecond, and the click came signed from a message that carries this request's button).
        same_channel = ref.channel == channel or not v.is_channel_id(ref.channel)
        if not same_channel or ref.ts != message_ts:
            raise NotAllowed(
                f"This button does not belong to request `{a.id}`'s card in {v.channel(ref.channel)}, so the click "
                "doesn't count; use the buttons on that card."
            )

    def _close_in(self, db: Database, approval_id: str, state: ApprovalState, reason: str, now: float) -> bool:
        cur = db.execute(
            "UPDATE approvals SET state = ?, decided_at = ?, decided_reason = ? WHERE id = ? AND state = 'pending'",
            (str(state), now, reason, approval_id),
        )
        if cur.rowcount != 1:
            return False
        a = _load(db, approval_id)
        if a is not None:
            self._show(db, a, now)
        return True

    def _close_audited_in(
        self, db: Database, a: Approval, state: ApprovalState, reason: str, now: float, user: str, channel: str | None
    ) -> None:
        """Close a request a click found expired or changed, and say so in the audit log."""
        if self._close_in(db, a.id, state, reason, now):
            outcome = Outcome.EXPIRED if state is ApprovalState.EXPIRED else Outcome.VOIDED
            self._audit.append_in(
                db, AuditEntry(user, a.policy_key, outcome, channel, a.subject, reason, {"approval": a.id})
            )

    def _show(self, db: Database, a: Approval, now: float, *, first: bool = False) -> None:
        """Post or edit what people see of a request: the kind's own card, or the generic one."""
        kind = self._kinds.get(a.policy_key)
        if kind is not None and kind.on_change is not None:
            kind.on_change(db, a, now)
        elif first:
            self._outbox.post_in(
                db,
                a.channel or "",
                rendering.message(card(a, now)),
                key=a.card_key,
                thread_ts=a.thread_ts,
                dedupe=f"post:{a.card_key}",
            )
        else:
            self._outbox.update_in(db, a.card_key, rendering.message(card(a, now)))
            if (notice := decision_notice(a)) is not None:
                self._outbox.post_in(
                    db,
                    a.channel or "",
                    rendering.message(notice),
                    thread_key=a.card_key,
                    dedupe=f"{a.card_key}:decided",
                )

    async def vote(
        self,
        approval_id: str,
        user: str,
        decision: str,
        *,
        channel: str | None = None,
        message_ts: str | None = None,
    ) -> VoteResult:
        """Record one person's approve/reject; run the action when the quorum is reached.

        A click (channel and message_ts given) counts only on the request's own card, so a button
        payload replayed from another message or channel is refused. Refusals raise
        NotAllowed/Conflict with the reason and are audited by the caller."""
        if decision not in ("approve", "reject"):
            raise ValueError(decision)
        a = await self.get(approval_id)
        now = self._clock.now()
        if channel is not None and message_ts is not None:
            await self._check_card(a, channel, message_ts)
        if a.state is not ApprovalState.PENDING:
            raise Conflict(
                f"This request is already {a.state.value}" + (f" ({a.decided_reason})." if a.decided_reason else ".")
            )
        if now >= a.expires_at:
            await self._store.write(
                lambda db: self._close_audited_in(db, a, ApprovalState.EXPIRED, "expired", now, user, channel)
            )
            self._outbox.kick()
            raise Conflict(f"This request expired at {iso(a.expires_at)}; ask again.")
        # Reject by the one who asked withdraws the request: no role needed to take back one's own.
        withdraw = decision == "reject" and user == a.requester
        if user == a.requester and not a.self_approval and not withdraw:
            raise NotAllowed(
                f"You asked for this, so your vote doesn't count; someone else from `{a.role}` has to decide."
                " (Reject withdraws it.)"
            )
        if not withdraw and not await self._policy.in_role(user, a.role):
            raise NotAllowed(f"Only members of `{a.role}` can decide on this request, and you are not one.")
        kind = self._kinds.get(a.policy_key)
        if decision == "approve" and kind is not None:
            current = await kind.fingerprint(a.subject)
            if current != a.fingerprint:
                reason = "what was to be approved changed after the request"
                await self._store.write(
                    lambda db: self._close_audited_in(db, a, ApprovalState.VOID, reason, now, user, channel)
                )
                self._outbox.kick()
                raise Conflict(f"{reason[0].upper()}{reason[1:]}, so the request is void. Ask again.")
            if kind.recheck is not None:
                blocked = await kind.recheck(a.subject)
                if blocked:
                    raise NotAllowed(f"Can't approve now: {blocked}")

        def tx(db: Database) -> tuple[Approval, str, int | None]:
            if withdraw:
                msg, outcome, job_id = self._withdraw_in(db, a, user, now)
            else:
                msg, outcome, job_id = self._count_in(db, a, kind, user, decision, now)
            self._audit.append_in(
                db,
                AuditEntry(
                    user,
                    f"approval.{decision}",
                    outcome,
                    channel,
                    a.subject,
                    msg,
                    {"approval": a.id, "policy_key": a.policy_key},
                ),
            )
            final = _load(db, a.id)
            assert final is not None
            return final, msg, job_id

        final, msg, job_id = await self._store.write(tx)
        self._outbox.kick()
        if job_id is not None:
            await self._jobs.launch(job_id)
        return VoteResult(final, msg, job_id)

    def _withdraw_in(self, db: Database, a: Approval, user: str, now: float) -> tuple[str, Outcome, int | None]:
        """The requester takes the request back: closed, nothing carried out."""
        if not self._close_in(db, a.id, ApprovalState.WITHDRAWN, f"withdrawn by <@{user}>", now):
            raise Conflict("This request was decided a moment ago.")
        return "Withdrawn; nothing will be done.", Outcome.WITHDRAWN, None

    def _count_in(
        self, db: Database, a: Approval, kind: ApprovalKind | None, user: str, decision: str, now: float
    ) -> tuple[str, Outcome, int | None]:
        """One approver's vote: a reject closes the request; the last approval needed closes it and queues
        its job (once: a primary key, not a hope); any other approval is counted on the card."""
        try:
            db.execute(
                "INSERT INTO approval_votes (approval_id, user, vote, at) VALUES (?, ?, ?, ?)",
                (a.id, user, decision, now),
            )
        except sqlite3.IntegrityError:
            raise Conflict("You already voted on this request.") from None
        fresh = _load(db, a.id)
        assert fresh is not None
        if fresh.state is not ApprovalState.PENDING:
            raise Conflict(f"This request is already {fresh.state.value}.")
        if decision == "reject":
            self._close_in(db, a.id, ApprovalState.REJECTED, f"rejected by <@{user}>", now)
            return "Rejected.", Outcome.REJECTED, None
        if fresh.approvals < fresh.required:
            self._show(db, fresh, now)
            return f"Your approval is recorded; {fresh.required - fresh.approvals} more needed.", Outcome.APPROVED, None
        self._close_in(db, a.id, ApprovalState.APPROVED, f"approved by {fresh.approvals}", now)
        try:
            db.execute("INSERT INTO approval_executions (approval_id, at) VALUES (?, ?)", (a.id, now))
        except sqlite3.IntegrityError:
            raise Conflict("This request was already carried out.") from None
        job_id: int | None = None
        if kind is not None:
            job_id = self._jobs.enqueue_in(
                db,
                kind.job_kind,
                a.subject,
                {**a.action, "approval": a.id},
                requester=a.requester,
                channel=a.channel,
                thread_ts=a.thread_ts,
            )
            db.execute("UPDATE approval_executions SET job_id = ? WHERE approval_id = ?", (job_id, a.id))
        return "Approved; carrying it out now.", Outcome.APPROVED, job_id

    async def expire_due(self) -> list[Approval]:
        """Mark every pending request past its expiry as expired and update its card."""
        now = self._clock.now()

        def tx(db: Database) -> list[Approval]:
            due = rows(db, "SELECT id FROM approvals WHERE state = 'pending' AND expires_at <= ?", (now,))
            out = []
            for r in due:
                if self._close_in(db, r["id"], ApprovalState.EXPIRED, "expired", now):
                    a = _load(db, r["id"])
                    if a is not None:
                        self._audit.append_in(
                            db,
                            AuditEntry(
                                "opsloop",
                                a.policy_key,
                                Outcome.EXPIRED,
                                a.channel,
                                a.subject,
                                "no quorum in time",
                                {"approval": a.id},
                            ),
                        )
                        out.append(a)
            return out

        expired = await self._store.write(tx)
        if expired:
            self._outbox.kick()
        return expired

    async def refresh_card(self, approval_id: str) -> None:
        """Re-render a request's card (after its action finished, say)."""
        now = self._clock.now()

        def tx(db: Database) -> None:
            a = _load(db, approval_id)
            if a is not None:
                self._show(db, a, now)

        await self._store.write(tx)
        self._outbox.kick()
