"""deploy: checks, approvals, rollout, bake and rollback of releases; locks and freezes; operate commands.

A release goes: checking -> (refused | awaiting_approval -> approved | approved) -> deploying ->
(failed | baking -> (rolled_back | succeeded)). `deploy.prepare` runs the checks off the ack path;
the approval engine (kind `deploy.release`) renders this stage's own card on every change and starts
`deploy.run` once the quorum is reached; `deploy.run` rolls out, bakes and rolls back, and is
resumable: after a restart it re-attaches to a Kubernetes rollout and finishes the same card.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import sqlite3
from datetime import timedelta
from typing import Any

from pydantic import BaseModel
from sqlite_utils import Database

from bot import commands as c
from bot import views as v
from bot.approvals import Approval, ApprovalState, Subject, decision_notice
from bot.approvals import load_in as load_approval
from bot.audit import AuditEntry, Outcome
from bot.clock import iso
from bot.config import ApprovalRule
from bot.context import Ctx, Services
from bot.durations import format_duration
from bot.errors import Conflict, NotAllowed, NotConfigured, UsageError, UserError
from bot.jobs import JobCtx
from bot.ports import AdapterError, DeployProgress, DeployResult, WorkloadStatus
from bot.releases import (
    ACTIVE,
    DONE,
    WAITING,
    Check,
    Release,
    card,
    changelog_json,
    checks_json,
    end_expired_freezes,
    end_freeze_in,
    environment,
    fingerprint,
    freeze_notice,
    freeze_of,
    image_path,
    load,
    load_in,
    lock_of,
    release_from,
    run_checks,
    target_for,
    target_spec,
)
from bot.router import CommandGroup, SubmitErrors
from bot.smoke import run_smoke, smoke_card
from bot.store import one, rows

group = CommandGroup("deploy", "Deploy with checks and approvals, roll back, lock and freeze environments.")

_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+\-]{0,127}$")
OVERRIDABLE = {"freeze", "lock", "alerts", "tests"}  # what a break-glass `force` may step over
BAKE_POLL = 2.0


# --- the card ---------------------------------------------------------------------------------------------


def _ticket_url(services: Services, service: str) -> str | None:
    svc = services.config.services.get(service)
    return svc.repo.ticket_url if svc and svc.repo else None


def _revisions(services: Services, r: Release) -> bool:
    """Whether the target of `r` keeps revisions to roll back to (asked of it as configured now, since a
    Rollback click goes to the target as configured then)."""
    try:
        return target_for(services, target_spec(services.config, r.service, r.env)).revisions
    except NotConfigured:
        return False


def show_in(services: Services, db: Database, r: Release, now: float) -> None:
    """Post or edit the release card inside a transaction."""
    a = load_approval(db, r.approval_id) if r.approval_id else None
    services.post_in(
        db,
        r.channel,
        card(r, a, now=now, ticket_url=_ticket_url(services, r.service), revisions=_revisions(services, r)),
        key=r.key,
        dedupe=f"post:{r.key}",
    )


async def show(services: Services, release_id: int) -> Release:
    """Edit the release card to match the row."""
    now = services.clock.now()

    def tx(db: Database) -> Release:
        r = load_in(db, release_id)
        show_in(services, db, r, now)
        return r

    r = await services.store.write(tx)
    services.outbox.kick()
    return r


async def save(services: Services, release_id: int, **fields: Any) -> Release:
    """Update a release row and its card in one transaction."""
    now = services.clock.now()

    def tx(db: Database) -> Release:
        if fields:
            sets = ", ".join(f"{k} = :{k}" for k in fields)
            db.execute(
                f"UPDATE releases SET {sets}, updated_at = :now WHERE id = :id",
                {**fields, "now": now, "id": release_id},
            )
        r = load_in(db, release_id)
        show_in(services, db, r, now)
        return r

    r = await services.store.write(tx)
    services.outbox.kick()
    return r


async def thread(services: Services, r: Release, text: str, dedupe: str | None = None) -> None:
    """A line in the release thread."""
    await services.post(r.channel, v.Message(text, (v.Section(text),)), thread_key=r.key, dedupe=dedupe)


def _event_in(db: Database, kind: str, r: Release, now: float, ok: bool, **detail: Any) -> None:
    db.execute(
        "INSERT INTO events (at, kind, service, env, ref, actor, detail) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            now,
            kind,
            r.service,
            r.env,
            r.version,
            r.requester,
            json.dumps(
                {"release": r.id, "ok": ok, "action": r.action, "from": r.from_version, "digest": r.digest, **detail}
            ),
        ),
    )


# --- approval kind ----------------------------------------------------------------------------------------


def _release_id(subject: str) -> int:
    return int(subject.removeprefix("release:"))


async def live_fingerprint(services: Services, subject: str) -> str:
    """The artifact as it is now: a changed digest voids the approvals."""
    r = await load(services, _release_id(subject))
    digest = r.digest
    spec = target_spec(services.config, r.service, r.env)
    if r.action == "deploy" and spec.image and services.registry is not None and r.version:
        try:
            digest = await services.registry.digest(image_path(spec.image), r.version)
        except AdapterError:
            digest = "unavailable"
    return fingerprint(r.service, r.version if r.action != "scale" else str(r.replicas), digest, r.env, r.action)


async def live_recheck(services: Services, subject: str) -> str | None:
    """At click time: freeze, lock and firing alerts again (unless the requester broke glass)."""
    r = await load(services, _release_id(subject))
    if r.break_glass:
        return None
    fr = await freeze_of(services, r.env)
    if fr is not None:
        return f"{r.env} is frozen until {iso(fr.until)}: {fr.reason}"
    lk = await lock_of(services, r.env)
    if lk is not None and lk.holder != r.requester:
        return f"<@{lk.holder}> holds the lock on {r.env}"
    rules = environment(services.config, r.env)
    if rules.requires.no_firing:
        from bot.releases import firing_for

        firing = await firing_for(services, r.service, r.env, list(rules.requires.no_firing))
        if firing:
            return "alerts fire for it now: " + "; ".join(firing[:3])
    return None


def on_approval_change(services: Services, db: Database, a: Approval, now: float) -> None:
    """The engine changed a request: mirror it on the release row and card."""
    r = load_in(db, _release_id(a.subject))
    if a.state is ApprovalState.PENDING and r.approval_id != a.id and r.state in WAITING:
        # A new request: linked in the transaction that made it, so the card never shows "waiting for
        # approval" without its buttons, not even after a crash at the wrong moment.
        db.execute(
            "UPDATE releases SET approval_id = ?, state = 'awaiting_approval', updated_at = ? WHERE id = ?",
            (a.id, now, r.id),
        )
        r = load_in(db, r.id)
    state = {
        ApprovalState.APPROVED: "approved",
        ApprovalState.REJECTED: "rejected",
        ApprovalState.EXPIRED: "expired",
        ApprovalState.VOID: "cancelled",
        ApprovalState.WITHDRAWN: "cancelled",
    }.get(a.state, r.state)
    if state != r.state and r.state in WAITING:
        msg = r.message
        if a.state is ApprovalState.VOID:
            msg = f"The approvals are void: {a.decided_reason}. Request it again."
        elif a.state is ApprovalState.WITHDRAWN:
            msg = "Withdrawn by its requester before anyone approved it."
        if state == "approved":
            _end_bake_in(services, db, r, now)
        try:
            db.execute(
                "UPDATE releases SET state = ?, message = ?, updated_at = ? WHERE id = ?", (state, msg, now, r.id)
            )
        except sqlite3.IntegrityError:
            # Another release of this service and environment is active: the database keeps them apart.
            raise Conflict(
                f"Another release of {r.service} in {r.env} is running; approve this one after it."
            ) from None
        r = load_in(db, r.id)
        _tell_requester_in(services, db, r, a)
    show_in(services, db, r, now)


def _tell_requester_in(services: Services, db: Database, r: Release, a: Approval) -> None:
    """The decision in the release thread, to the requester by name (see `decision_notice`)."""
    notice = decision_notice(a)
    if notice is not None:
        services.post_in(db, r.channel, notice, thread_key=r.key, dedupe=f"{r.key}:decided")


group.approval(
    "deploy.release", job="deploy.run", fingerprint=live_fingerprint, recheck=live_recheck, on_change=on_approval_change
)


# --- requesting -------------------------------------------------------------------------------------------


# What frees a service and environment that a release holds, by that release's state.
_UNTIL_FREE = {
    "checking": "Its checks take a moment; try again then.",
    "awaiting_approval": "It waits for approval: its approvers decide, or its requester withdraws it with Reject.",
    "baking": "It is baking: wait for the bake to end, or roll it back.",
}


def _busy_in(db: Database, service: str, env: str) -> Release | None:
    """The newest release of `service` in `env` that is being checked, waits or runs."""
    marks = ",".join("?" for _ in (*ACTIVE, *WAITING))
    r = one(
        db,
        f"SELECT * FROM releases WHERE service = ? AND env = ? AND state IN ({marks}) ORDER BY id DESC",
        (service, env, *ACTIVE, *WAITING),
    )
    return release_from(r) if r else None


async def _busy(services: Services, service: str, env: str) -> Release | None:
    return await services.store.read(lambda db: _busy_in(db, service, env))


async def _break_glass(ctx: Ctx, env: str, force: bool, reason: str | None) -> str | None:
    if not force:
        return None
    rules = environment(ctx.config, env)
    if not reason:
        raise UsageError('Breaking glass needs a reason: `force "why it can\'t wait"`.')
    roles = await ctx.policy.roles_of(ctx.actor)
    if not set(rules.break_glass) & roles:
        need = " or ".join(f"`{r}`" for r in rules.break_glass) or "a role listed in its `break_glass`"
        raise NotAllowed(f"Only {need} may break glass in {env}; you can't force this.")
    return reason


async def request(
    ctx: Ctx,
    action: str,
    service: str,
    env: str,
    *,
    version: str | None = None,
    replicas: int | None = None,
    force: bool = False,
    reason: str | None = None,
    rollback_of: int | None = None,
) -> Release:
    """Record a release and hand it to `deploy.prepare` (the checks run there, off the ack path)."""
    ctx.service(service)
    rules = environment(ctx.config, env)
    spec = target_spec(ctx.config, service, env)
    target = target_for(ctx.services, spec)
    if action in ("scale", "restart") and not target.operates:
        # Said now, not after someone approved a release that could only fail.
        raise UserError(f"{service} in {env} is deployed by a command, which can't {action} it: use its own tools.")
    if version is not None and not _VERSION.match(version):
        raise UsageError(f"`{version}` is not a version (letters, digits, `.`, `-`, `_`, `+`).")
    glass = await _break_glass(ctx, env, force, reason)
    why = ctx.redactor.text(reason)[:500] if reason else None
    channel = rules.channel or ctx.config.channels.approvals or ctx.channel
    now = ctx.clock.now()
    services = ctx.services

    def tx(db: Database) -> tuple[Release, int]:
        # Asked inside the write, so two requests at the same moment can't both find the way free.
        busy = _busy_in(db, service, env)
        # A rollback may be asked for while a release bakes (it ends that bake when it starts), but
        # not beside another rollback, nor while something is rolling out.
        if busy is not None and (action != "rollback" or busy.action == "rollback" or busy.state in ACTIVE[:2]):
            raise Conflict(
                f"<@{busy.requester}> holds {service} in {env}: release {busy.id} ({busy.title}) is "
                f"{busy.state.replace('_', ' ')}. {_UNTIL_FREE.get(busy.state, 'Wait for it.')}"
            )
        cur = db.execute(
            "INSERT INTO releases (action, service, env, version, replicas, requester, state, channel, break_glass,"
            " reason, rollback_of, image, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, 'checking', ?, ?, ?, ?, ?, ?, ?)",
            (
                action,
                service,
                env,
                version,
                replicas,
                ctx.actor,
                channel,
                glass,
                why,
                rollback_of,
                spec.image,
                now,
                now,
            ),
        )
        r = load_in(db, int(cur.lastrowid or 0))
        show_in(services, db, r, now)
        services.audit.append_in(
            db,
            AuditEntry(
                ctx.actor,
                f"deploy.{action}",
                Outcome.REQUESTED,
                ctx.channel,
                r.title,
                f"break glass: {glass}" if glass else (f"why: {why}" if why else None),
                {"release": r.id},
            ),
        )
        job = services.jobs.enqueue_in(
            db, "deploy.prepare", r.key, {"release": r.id}, requester=ctx.actor, channel=channel
        )
        db.execute("UPDATE releases SET job_id = ? WHERE id = ?", (job, r.id))
        return r, job

    r, job = await services.store.write(tx)
    services.outbox.kick()
    await services.jobs.launch(job)
    return r


# Resumable: the checks may run again after a restart (a release left `checking` would hold the
# service and environment for good), and asking for approval again joins the open request.
@group.job("deploy.prepare", timeout=600, resumable=True)
async def prepare(services: Services, jctx: JobCtx) -> None:
    """Run the checks; refuse with the reasons, ask for approvals, or start right away."""
    r = await load(services, int(jctx.job.payload["release"]))
    if r.state != "checking":
        return
    rules = environment(services.config, r.env)
    if r.action in ("deploy", "rollback") and r.version:
        report = await run_checks(services, r.service, r.version, r.env, r.requester)
    else:
        report = await run_checks_operate(services, r)
    blocking = report.blocking
    checks = report.checks
    if r.break_glass:
        stepped = [ch for ch in blocking if ch.name.split()[0] in OVERRIDABLE]
        blocking = [ch for ch in blocking if ch not in stepped]
        # What the requester stepped over stays on the card, as a warning rather than a blocker.
        checks = [
            Check(ch.name, False, f"{ch.detail} (overridden: break glass)", None, blocking=False)
            if ch in stepped
            else ch
            for ch in checks
        ]
    fields: dict[str, Any] = {
        "checks": checks_json(checks),
        "digest": report.digest,
        "from_version": report.running,
        "changelog": changelog_json(report.changelog),
        "takes_out": changelog_json(report.takes_out),
        "tests": json.dumps(report.tests) if report.tests else None,
    }
    if blocking:
        why = "; ".join(f"{ch.name}: {ch.detail}" for ch in blocking)
        r = await save(services, r.id, state="refused", message=f"Not deployed: {why}", **fields)
        await services.audit.record(
            AuditEntry(r.requester, f"deploy.{r.action}", Outcome.REFUSED, r.channel, r.title, why, {"release": r.id})
        )
        overrides = sorted({ch.override for ch in blocking if ch.override})
        text = f"❌ {r.title} was refused: {why}" + (f"\nOverride: {'; '.join(overrides)}" if overrides else "")
        await services.outbox.ephemeral(
            jctx.job.channel or r.channel,
            r.requester,
            {"text": text, "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text[:2900]}}]},
        )
        return
    r = await save(services, r.id, **fields)
    if rules.approvals.required > 0:
        rule = ApprovalRule.model_validate(
            {
                "required": rules.approvals.required,
                "from": rules.approvals.from_ or "approvers",
                "self_approval": rules.approvals.self_approval,
                "expire_after": rules.approvals.expire_after,
            }
        )
        subject = Subject(
            r.key,
            r.title,
            fingerprint(r.service, r.version if r.action != "scale" else str(r.replicas), r.digest, r.env, r.action),
        )
        # The engine links the request to the release and shows its buttons (`on_approval_change`).
        await services.approvals.request("deploy.release", subject, requester=r.requester, channel=r.channel, rule=rule)
        return
    now = services.clock.now()

    def start(db: Database) -> None:
        _end_bake_in(services, db, r, now)
        db.execute("UPDATE releases SET state = 'approved', updated_at = ? WHERE id = ?", (now, r.id))
        show_in(services, db, load_in(db, r.id), now)

    try:
        await services.store.write(start)
    except sqlite3.IntegrityError:
        await save(services, r.id, state="refused", message="Another release of it is running now.")
        return
    services.outbox.kick()
    await services.jobs.submit(
        "deploy.run", f"deploy:{r.service}@{r.env}", {"release": r.id}, requester=r.requester, channel=r.channel
    )


async def run_checks_operate(services: Services, r: Release) -> Any:
    """Scale and restart check only freezes and locks (the artifact does not change)."""
    from bot.releases import CheckReport

    report = CheckReport(checks=[])
    fr = await freeze_of(services, r.env)
    if fr is not None:
        report.checks.append(Check("freeze", False, f"{r.env} is frozen until {iso(fr.until)}: {fr.reason}"))
    lk = await lock_of(services, r.env)
    if lk is not None and lk.holder != r.requester:
        report.checks.append(Check("lock", False, f"<@{lk.holder}> holds the lock on {r.env}"))
    spec = target_spec(services.config, r.service, r.env)
    try:
        report.running = await target_for(services, spec).running_version(spec)
    except AdapterError as err:
        report.checks.append(Check("target", False, str(err)))
    return report


# --- running ----------------------------------------------------------------------------------------------


class _Progress:
    """Rollout progress to the card (coalesced by the outbox) and warnings to the thread (once each)."""

    def __init__(self, services: Services, r: Release) -> None:
        self.s, self.r = services, r
        self.seen: set[str] = set()

    async def __call__(self, p: DeployProgress) -> None:
        data = {
            "message": p.message,
            "desired": p.desired,
            "updated": p.updated,
            "available": p.available,
            "events": list(p.events),
        }
        await save(self.s, self.r.id, progress=json.dumps(data))
        for e in p.events:
            if e not in self.seen:
                self.seen.add(e)
                await thread(self.s, self.r, f"⚠️ {self.s.redactor.text(e)}")
        if p.output:
            await thread(self.s, self.r, "```" + self.s.redactor.text(p.output)[-2800:] + "```")


def _end_bake_in(services: Services, db: Database, r: Release, now: float) -> None:
    """A rollback starting: the release it rolls back stops baking and ends as rolled back."""
    if r.action != "rollback":
        return
    found = one(
        db,
        "SELECT * FROM releases WHERE service = ? AND env = ? AND state = 'baking' AND id != ?",
        (r.service, r.env, r.id),
    )
    if found is None:
        return
    baked = release_from(found)
    db.execute(
        "UPDATE releases SET state = 'rolled_back', message = ?, ended_by = ?, finished_at = ?, updated_at = ?"
        " WHERE id = ?",
        (f"Rolled back by release {r.id}, requested by <@{r.requester}>.", r.id, now, now, baked.id),
    )
    if r.rollback_of is None:
        db.execute("UPDATE releases SET rollback_of = ? WHERE id = ?", (baked.id, r.id))
    baked = load_in(db, baked.id)
    _event_in(db, "deploy.rolled_back", baked, now, False, reason=f"rolled back by release {r.id}")
    show_in(services, db, baked, now)


def _rollback_failed_in(services: Services, db: Database, r: Release, now: float) -> None:
    """A rollback that ended a bake went wrong: the release it meant to undo is not rolled back, and
    its version may well still be running. It stays a failure (its bake is what failed), said as it is."""
    if r.action != "rollback" or r.rollback_of is None:
        return
    done = db.execute(
        "UPDATE releases SET state = 'failed', message = ?, updated_at = ?"
        " WHERE id = ? AND state = 'rolled_back' AND ended_by = ?",
        (
            f"Release {r.id} tried to roll this back and failed; this version may still be running."
            f" Check `status {r.service}` before anything else.",
            now,
            r.rollback_of,
            r.id,
        ),
    )
    if done.rowcount == 1:
        show_in(services, db, load_in(db, r.rollback_of), now)


def _mark_rolled_back_in(services: Services, db: Database, r: Release, now: float) -> None:
    """A rollback went well: the release it undid (when it had ended well) is rolled back now."""
    if r.rollback_of is None:
        return
    old = one(db, "SELECT * FROM releases WHERE id = ? AND state = 'succeeded'", (r.rollback_of,))
    if old is None:
        return
    db.execute(
        "UPDATE releases SET state = 'rolled_back', message = ?, ended_by = ?, updated_at = ? WHERE id = ?",
        (f"Rolled back by release {r.id}, requested by <@{r.requester}>.", r.id, now, old["id"]),
    )
    undone = load_in(db, old["id"])
    _event_in(db, "deploy.rolled_back", undone, now, False, reason=f"rolled back by release {r.id}")
    show_in(services, db, undone, now)


@group.job("deploy.run", resumable=True, timeout=6 * 3600)
async def run(services: Services, jctx: JobCtx) -> None:
    """Roll out, smoke-check, bake (rolling back on alerts when configured) and report."""
    release_id = int(jctx.job.payload.get("release") or _release_id(jctx.job.key))
    try:
        await _run(services, jctx, release_id)
    except Exception as err:
        # Never leave a release `deploying` behind a failed job: it would hold the service for good.
        r = await load(services, release_id)
        if r.state in ACTIVE:
            await _finish(services, r, "failed", f"opsloop stopped following it: {err}")
        raise


async def _run(services: Services, jctx: JobCtx, release_id: int) -> None:
    r = await load(services, release_id)
    if r.state in DONE:
        return
    spec = target_spec(services.config, r.service, r.env)
    target = target_for(services, spec)
    progress = _Progress(services, r)
    if r.state == "approved":
        r = await save(services, r.id, state="deploying", started_at=services.clock.now())
        result = await _act(services, r, target, spec, progress)
    elif r.state == "deploying":
        if not target.resumable:
            await _finish(
                services,
                r,
                "interrupted",
                "opsloop restarted during the rollout; the command's result "
                "is unknown, check the target before deploying again",
            )
            return
        try:
            running = await target.running_version(spec)
        except AdapterError:
            running = None
        if r.action == "deploy" and r.version and r.from_version and running == r.from_version != r.version:
            # Killed after the approvals but before the target was changed: nothing rolled out, so the
            # approved deploy is carried out now rather than lost (setting an image twice is one rollout).
            await thread(
                services,
                r,
                "↪️ opsloop restarted before the rollout began; starting it now.",
                dedupe=f"{r.key}:resume:{jctx.job.attempts}",
            )
            result = await _act(services, r, target, spec, progress)
        else:
            await thread(
                services,
                r,
                "↪️ opsloop restarted; following the rollout again.",
                dedupe=f"{r.key}:resume:{jctx.job.attempts}",
            )
            # A rollback to "the previous revision" has no version of its own: follow what is rolling out.
            try:
                version = r.version or running or ""
                result = await target.resume(spec, version, progress)
            except AdapterError as err:
                result = DeployResult(False, str(err))
    elif r.state == "baking":
        result = DeployResult(True, "rolled out before the restart")
    else:
        return
    if not result.ok:
        await _finish(services, r, "failed", result.message)
        return
    if r.action == "rollback" and not r.version:
        # `kubectl rollout undo` style: now we know which version that was.
        try:
            running = await target.running_version(spec)
        except AdapterError:
            running = None
        if running:
            r = await save(services, r.id, version=running)
    if r.state != "baking":
        r = await _rolled_out(services, r, result)
    if r.action != "deploy":
        await _finish(services, r, "succeeded", result.message)
        return
    if not await _smoke(services, r, target, spec, progress):
        return
    if not await _bake(services, r, target, spec, progress):
        return
    r = await load(services, r.id)
    r = await _finish(services, r, "succeeded", "Baked without trouble." if r.bake_until else result.message)
    if r.state == "succeeded":
        await _ask_how_it_went(services, r)


async def _act(services: Services, r: Release, target: Any, spec: Any, progress: _Progress) -> DeployResult:
    try:
        if r.action == "deploy":
            image = (
                f"{spec.image}:{r.version}@{r.digest}"
                if spec.image and r.digest
                else (f"{spec.image}:{r.version}" if spec.image else None)
            )
            return await target.deploy(spec, r.version or "", image, progress)  # type: ignore[no-any-return]
        if r.action == "rollback":
            image = f"{spec.image}:{r.version}" if spec.image and r.version else None
            return await target.rollback(spec, r.version, image, progress)  # type: ignore[no-any-return]
        if r.action == "scale":
            await target.scale(spec, int(r.replicas or 0))
            return DeployResult(True, f"scaled to {r.replicas}")
        return await target.restart(spec, progress)  # type: ignore[no-any-return]
    except AdapterError as err:
        return DeployResult(False, str(err))


async def _rolled_out(services: Services, r: Release, result: DeployResult) -> Release:
    now = services.clock.now()

    def tx(db: Database) -> Release:
        _event_in(db, "deploy.finished", r, now, True, revision=result.revision)
        db.execute("UPDATE releases SET message = ?, updated_at = ? WHERE id = ?", (result.message, now, r.id))
        return load_in(db, r.id)

    r = await services.store.write(tx)
    await thread(services, r, f"✅ Rolled out: {result.message}", dedupe=f"{r.key}:rolled-out")
    return r


async def _finish(services: Services, r: Release, state: str, message: str) -> Release:
    now = services.clock.now()

    def tx(db: Database) -> Release | None:
        # Only a release still under way ends here: one a rollback has already ended keeps its state.
        marks = ",".join("?" for _ in ACTIVE)
        done = db.execute(
            "UPDATE releases SET state = ?, message = ?, finished_at = ?, updated_at = ?"
            f" WHERE id = ? AND state IN ({marks})",
            (state, services.redactor.text(message)[:2500], now, now, r.id, *ACTIVE),
        )
        if done.rowcount != 1:
            return None
        cur = load_in(db, r.id)
        if state == "succeeded" and cur.action == "rollback":
            _mark_rolled_back_in(services, db, cur, now)
        if state in ("failed", "interrupted"):
            _event_in(db, "deploy.finished", cur, now, False, reason=message[:300])
            _rollback_failed_in(services, db, cur, now)
        if state == "rolled_back":
            _event_in(db, "deploy.rolled_back", cur, now, False, reason=message[:300])
        services.audit.append_in(
            db,
            AuditEntry(
                r.requester,
                f"deploy.{r.action}",
                Outcome.OK if state == "succeeded" else Outcome.ERROR,
                r.channel,
                r.title,
                message,
                {"release": r.id, "state": state},
            ),
        )
        show_in(services, db, cur, now)
        return cur

    ended = await services.store.write(tx)
    services.outbox.kick()
    if ended is None:
        return await load(services, r.id)
    cur = ended
    icon = {"succeeded": "✅", "failed": "❌", "rolled_back": "↩️", "interrupted": "⚠️"}.get(state, "•")
    await thread(services, cur, f"{icon} {cur.title}: {state.replace('_', ' ')}. {message}", dedupe=f"{r.key}:end")
    return cur


async def _smoke(services: Services, r: Release, target: Any, spec: Any, progress: _Progress) -> bool:
    svc = services.config.services.get(r.service)
    if svc is None or svc.smoke is None:
        return True
    try:
        outcome = await run_smoke(services.config, services.browser, r.service, r.env)
    except Exception as err:  # a smoke check that cannot run is reported, not fatal
        await thread(services, r, f"⚠️ The smoke check could not run: {err}")
        return True
    await services.post(r.channel, smoke_card(outcome), thread_key=r.key, dedupe=f"{r.key}:smoke")
    for i, page in enumerate(outcome.results):
        if not page.ok and page.screenshot:
            await services.upload(
                r.channel,
                f"smoke-{r.service}-{r.env}-{i + 1}.png",
                page.screenshot,
                title=page.url,
                comment=f"❌ {page.message}",
                thread_key=r.key,
            )
    if outcome.ok:
        return True
    rules = environment(services.config, r.env)
    if rules.bake.auto_rollback:
        await _auto_rollback(services, r, target, spec, progress, "the smoke check failed")
        return False
    await thread(services, r, "❌ The smoke check failed; the Rollback button on the card undoes this release.")
    return True


async def _bake(services: Services, r: Release, target: Any, spec: Any, progress: _Progress) -> bool:
    rules = environment(services.config, r.env)
    if rules.bake.minutes <= 0:
        return True
    until = r.bake_until or (services.clock.now() + rules.bake.minutes * 60)
    r = await save(services, r.id, state="baking", bake_until=until)
    started = r.started_at or r.created_at
    posted: set[int] = set()
    while services.clock.now() < until:
        current = await load(services, r.id)
        if current.state != "baking":
            return False  # a rollback took over (it ended the bake and says so on the card)
        groups = await services.store.read(
            lambda db: rows(
                db,
                "SELECT id, title, severity, status FROM alert_groups WHERE service = ? AND (env = ? OR env IS NULL)"
                " AND first_seen >= ? ORDER BY id",
                (r.service, r.env, started),
            )
        )
        for g in groups:
            if g["id"] in posted:
                continue
            posted.add(g["id"])
            await thread(
                services,
                r,
                f"🚨 During the bake: *{v.esc(g['title'])}* ({g['severity']})",
                dedupe=f"{r.key}:bake-alert:{g['id']}",
            )
            rolls_back = g["severity"] in rules.bake.rollback_on and g["status"] == "firing"
            if rolls_back and rules.bake.auto_rollback:
                why = f"{g['title']} ({g['severity']}) fired during the bake"
                await _auto_rollback(services, r, target, spec, progress, why)
                return False
        await asyncio.sleep(BAKE_POLL)
    return True


async def _auto_rollback(services: Services, r: Release, target: Any, spec: Any, progress: _Progress, why: str) -> None:
    await thread(services, r, f"↩️ Rolling back automatically: {why}.", dedupe=f"{r.key}:auto-rollback")
    to = r.from_version
    image = f"{spec.image}:{to}" if spec.image and to else None
    try:
        result = await target.rollback(spec, None if target.revisions else to, image, progress)
    except AdapterError as err:
        result = DeployResult(False, str(err))
    if result.ok:
        await _finish(services, r, "rolled_back", f"Rolled back to {to or 'the previous revision'}: {why}.")
    else:
        await _finish(services, r, "failed", f"The automatic rollback failed too ({result.message}); {why}.")


# --- how did it go ----------------------------------------------------------------------------------------


class Rating(BaseModel):
    release: int
    rating: str


class ReleaseRef(BaseModel):
    release: int


async def _ask_how_it_went(services: Services, r: Release) -> None:
    buttons = tuple(
        v.Button(label, "deploy.rate", Rating(release=r.id, rating=val).model_dump_json())
        for val, label in (("good", "👍 Smooth"), ("meh", "😐 Bumpy"), ("bad", "👎 Bad"))
    )
    text = f"<@{r.requester}> {r.title} is done. How did it go?"
    await services.post(
        r.channel,
        v.Message(
            text,
            (
                v.Section(text),
                v.Actions(
                    (*buttons, v.Button("Add a note…", "deploy.note", ReleaseRef(release=r.id).model_dump_json()))
                ),
            ),
        ),
        thread_key=r.key,
        dedupe=f"{r.key}:how",
    )


async def _record_feedback(ctx: Ctx, release_id: int, rating: str | None, note: str) -> None:
    r = await load(ctx.services, release_id)
    text = note or {"good": "Smooth release", "meh": "Bumpy release", "bad": "Bad release"}.get(rating or "", "")
    now = ctx.clock.now()
    await ctx.store.write(
        lambda db: db.execute(
            "INSERT INTO feedback (text, author, channel, source, created_at, release_id, rating)"
            " VALUES (?, ?, ?, 'release', ?, ?, ?)",
            (ctx.redactor.text(text)[:4000], ctx.actor, r.channel, now, r.id, rating),
        )
    )
    # The answer appears with the release: a line in its thread, beside the rollout and the bake.
    icon = {"good": "🟢", "meh": "🟡", "bad": "🔴"}.get(rating or "", "📝")
    await thread(ctx.services, r, f"{icon} <@{ctx.actor}>: {v.esc(ctx.redactor.text(text)[:2000])}")


@group.action("deploy.rate", value=Rating, policy="feedback.send")
async def rate(ctx: Ctx, value: Rating) -> v.Reply:
    """Button: how the release went (kept as feedback linked to it)."""
    await _record_feedback(ctx, value.release, value.rating, "")
    return v.Reply.text("Thanks, noted on the release.")


class NoteMeta(BaseModel):
    release: int


@group.action("deploy.note", value=ReleaseRef, policy="feedback.send")
async def note(ctx: Ctx, ref: ReleaseRef) -> None:
    """Button: a form for a note about the release."""
    # Starts from one's own rating of it, if one pressed a rating button already: the note adds to it.
    said = await ctx.store.read(
        lambda db: one(
            db,
            "SELECT rating FROM feedback WHERE release_id = ? AND author = ? AND rating IS NOT NULL"
            " ORDER BY id DESC LIMIT 1",
            (ref.release, ctx.actor),
        )
    )
    await ctx.open_modal(
        v.Modal(
            title="How did it go?",
            callback="deploy.note_submit",
            submit="Send",
            inputs=(
                v.Choice(
                    "rating",
                    "Overall",
                    (("good", "Smooth"), ("meh", "Bumpy"), ("bad", "Bad")),
                    said["rating"] if said else "good",
                ),
                v.TextInput("note", "Note", multiline=True, optional=True),
            ),
            metadata=NoteMeta(release=ref.release).model_dump_json(),
        )
    )


@group.submit("deploy.note_submit", metadata=NoteMeta, policy="feedback.send")
async def note_submit(ctx: Ctx, values: dict[str, str | None], meta: NoteMeta) -> v.Reply:
    """Form submit: the release note."""
    rating = values.get("rating")
    if rating not in ("good", "meh", "bad"):
        raise SubmitErrors({"rating": "Pick one."})
    await _record_feedback(ctx, meta.release, rating, (values.get("note") or "").strip())
    return v.Reply.text("Thanks, noted on the release.")


# --- commands ---------------------------------------------------------------------------------------------


@group.command(
    "deploy",
    c.word("service"),
    c.word("version"),
    c.choice("to", ("to",)),
    c.word("env"),
    c.flag("force"),
    c.text("reason", optional=True),
    id="deploy.run",
    examples=("deploy api 1.4.2 to staging", 'deploy api 1.4.2 to prod force "hotfix for INC-7"'),
)
async def deploy(ctx: Ctx, service: str, version: str, to: str, env: str, force: bool, reason: str | None) -> v.Reply:
    """Deploy VERSION of SERVICE to ENV: checks, approvals (where ENV needs them), rollout, bake.

    A "REASON" is shown on the card for the approvers and kept in the audit. `force "reason"` breaks glass
    over a freeze, a lock, firing alerts or red tests; only roles in the environment's `break_glass` may,
    and it is audited and shown on the card."""
    r = await request(ctx, "deploy", service, env, version=version, force=force, reason=reason)
    return v.Reply.text(f"Checking release {r.id}: {r.title}. Its card in {r.channel} follows it from here.")


@group.command(
    "rollback",
    c.word("service"),
    c.word("env"),
    c.choice("to", ("to",), default="to"),
    c.word("version", optional=True),
    id="deploy.rollback",
    examples=("rollback api prod", "rollback api prod to 1.4.1"),
)
async def rollback(ctx: Ctx, service: str, env: str, to: str, version: str | None) -> v.Reply:
    """Roll SERVICE in ENV back: to VERSION, or to the previous revision."""
    r = await _rollback(ctx, service, env, version)
    return v.Reply.text(f"Rolling back {service} in {env} (release {r.id}); the card in {r.channel} follows it.")


async def _rollback(ctx: Ctx, service: str, env: str, version: str | None, of: int | None = None) -> Release:
    ctx.service(service)
    environment(ctx.config, env)
    busy = await _busy(ctx.services, service, env)
    if busy is not None and busy.state == "baking":
        # The release being baked is what we roll back; it ends as rolled back when the rollback
        # starts (after its approvals, where the environment wants them), not before.
        of = of or busy.id
        version = version or busy.from_version
    elif busy is not None and busy.state in ACTIVE:
        raise Conflict(f"Release {busy.id} of {service} in {env} is {busy.state}; wait for it to end.")
    if of is None:
        # What runs now: the newest finished release, when it is a deploy that went well.
        last = await ctx.store.read(
            lambda db: one(
                db,
                "SELECT id, action, state FROM releases WHERE service = ? AND env = ? AND action IN"
                " ('deploy', 'rollback') AND state IN ('succeeded', 'baking', 'rolled_back', 'failed')"
                " ORDER BY id DESC LIMIT 1",
                (service, env),
            )
        )
        if last is not None and last["action"] == "deploy" and last["state"] in ("succeeded", "baking"):
            of = int(last["id"])
    spec = target_spec(ctx.config, service, env)
    if version is None and spec.kind == "command":
        # A command target has no revisions of its own: go back to what ran before the release undone. Not
        # the newest deploy's "before": a refused or failed one names what runs now.
        undone = await load(ctx.services, of) if of is not None else None
        if undone is None or not undone.from_version or undone.from_version == undone.version:
            raise UsageError(f"Say which version: `rollback {service} {env} to VERSION` (no earlier version is known).")
        version = undone.from_version
    return await request(ctx, "rollback", service, env, version=version, rollback_of=of)


class RollbackRef(BaseModel):
    service: str
    env: str
    release: int | None = None
    group: int | None = None


@group.action("deploy.rollback", value=RollbackRef)
async def rollback_button(ctx: Ctx, ref: RollbackRef) -> v.Reply:
    """Button: roll back the release (on the release card and on alerts that followed it)."""
    r = await _rollback(ctx, ref.service, ref.env, None, ref.release)
    return v.Reply.text(f"Rolling back {ref.service} in {ref.env} (release {r.id}).")


@group.command("deploy status", c.word("service", optional=True), examples=("deploy status", "deploy status api"))
async def status(ctx: Ctx, service: str | None) -> v.Reply:
    """Recent releases (all services, or one), newest first."""
    await end_expired_freezes(ctx.services)  # their notices say they ended, as this answer will
    where, params = ("WHERE service = ?", (service,)) if service else ("", ())
    found = [
        release_from(r)
        for r in await ctx.store.read(
            lambda db: rows(db, f"SELECT * FROM releases {where} ORDER BY id DESC LIMIT 15", params)
        )
    ]
    if not found:
        return v.Reply.text("No releases yet.")
    lines = [
        f"`{r.id}` {v.esc(r.title)} — *{r.state.replace('_', ' ')}* · <@{r.requester}> · {iso(r.created_at)}"
        for r in found
    ]
    locks = await ctx.store.read(lambda db: rows(db, "SELECT * FROM locks"))
    freezes = await ctx.store.read(lambda db: rows(db, "SELECT * FROM freezes WHERE until > ?", (ctx.clock.now(),)))
    notes = [f"🔒 {x['env']} locked by <@{x['holder']}>" for x in locks]
    notes += [f"🧊 {x['env']} frozen until {iso(x['until'])}" for x in freezes]
    blocks: list[v.Block] = [v.Header("Releases"), v.Section("\n".join(lines))]
    if notes:
        blocks.append(v.Context(tuple(notes[:10])))
    return v.Reply(v.Message("Releases", tuple(blocks)))


@group.command(
    "lock",
    c.word("env"),
    c.text("reason", optional=True),
    id="deploy.lock",
    examples=('lock prod "migrating the database"',),
)
async def lock(ctx: Ctx, env: str, reason: str | None) -> v.Reply:
    """Hold ENV: nobody else deploys there until you unlock it."""
    environment(ctx.config, env)
    now = ctx.clock.now()
    holder = await lock_of(ctx.services, env)
    if holder is not None:
        raise Conflict(f"<@{holder.holder}> already holds {env} since {iso(holder.at)}.")
    try:
        await ctx.store.write(
            lambda db: db.execute(
                "INSERT INTO locks (env, holder, reason, at) VALUES (?, ?, ?, ?)", (env, ctx.actor, reason, now)
            )
        )
    except sqlite3.IntegrityError:
        raise Conflict(f"Someone locked {env} a moment ago.") from None
    # Said to the channel, so in the third person: "You hold" would read as everyone's lock.
    why = f": {v.esc(reason)}" if reason else ""
    return v.Reply.text(
        f"🔒 <@{ctx.actor}> holds {env}{why}. Deploys there by anyone else are refused until `unlock {env}`.",
        public=True,
    )


@group.command("unlock", c.word("env"), id="deploy.unlock", examples=("unlock prod",))
async def unlock(ctx: Ctx, env: str) -> v.Reply:
    """Release your hold of ENV (a break-glass role may release anyone's)."""
    rules = environment(ctx.config, env)
    holder = await lock_of(ctx.services, env)
    if holder is None:
        raise Conflict(f"{env} is not locked.")
    if holder.holder != ctx.actor and not set(rules.break_glass) & await ctx.policy.roles_of(ctx.actor):
        raise NotAllowed(f"<@{holder.holder}> holds {env}; only they or a break-glass role can unlock it.")
    await ctx.store.write(lambda db: db.execute("DELETE FROM locks WHERE env = ?", (env,)))
    whose = "" if holder.holder == ctx.actor else f" <@{ctx.actor}> released <@{holder.holder}>'s hold."
    return v.Reply.text(f"🔓 {env} is free.{whose}", public=True)


@group.command(
    "freeze",
    c.word("env"),
    # Longer is more likely a slip of the finger (400d for 4d); `lock ENV` holds an environment open-ended.
    c.duration("duration", longest=timedelta(days=90)),
    c.text("reason"),
    id="deploy.freeze",
    examples=('freeze prod 2d "end of quarter"',),
)
async def freeze(ctx: Ctx, env: str, duration: Any, reason: str) -> v.Reply:
    """Stop deploys to ENV for a while; a notice stays in the approvals channel until it ends."""
    environment(ctx.config, env)
    now = ctx.clock.now()
    until = now + duration.total_seconds()
    key = f"freeze:{env}:{secrets.token_hex(6)}"  # one notice per freeze, however close together they come
    # The notice is pinned while the freeze lasts. It is edited (and unpinned) when the freeze is lifted
    # or replaced, and when the periodic sweep, a check, `deploy status` or `unfreeze` finds it run out.
    channel = ctx.config.channels.approvals or ctx.config.channels.default
    services = ctx.services

    def tx(db: Database) -> None:
        # A freeze replacing another: the old notice says so, rather than promising a stale end.
        old = one(db, "SELECT until FROM freezes WHERE env = ?", (env,))
        if old is not None:
            how = (
                f"ended at {iso(old['until'])}"
                if old["until"] <= now
                else f"replaced by a freeze by <@{ctx.actor}> until {iso(until)}"
            )
            end_freeze_in(services, db, env, how)
        db.execute(
            "INSERT INTO freezes (env, until, reason, by, at, notice_key) VALUES (?, ?, ?, ?, ?, ?)",
            (env, until, reason, ctx.actor, now, key),
        )
        services.post_in(db, channel, freeze_notice(env, until, reason, ctx.actor), key=key, dedupe=f"post:{key}")
        services.outbox.pin_in(db, key)  # pinned while the freeze lasts; unpinned when it ends

    await ctx.store.write(tx)
    ctx.services.outbox.kick()
    return v.Reply.text(f"🧊 {env} is frozen for {format_duration(duration)}.", public=True)


@group.command("unfreeze", c.word("env"), id="deploy.unfreeze", examples=("unfreeze prod",))
async def unfreeze(ctx: Ctx, env: str) -> v.Reply:
    """Lift a freeze of ENV."""
    environment(ctx.config, env)
    if await freeze_of(ctx.services, env) is None:  # ends one that has run out, notice and all
        raise Conflict(f"{env} is not frozen.")
    services = ctx.services
    if not await ctx.store.write(lambda db: end_freeze_in(services, db, env, f"lifted early by <@{ctx.actor}>")):
        raise Conflict(f"{env} is not frozen.")
    ctx.services.outbox.kick()
    return v.Reply.text(f"🧊 {env} is open again.", public=True)


# --- operate ----------------------------------------------------------------------------------------------


@group.command(
    "status",
    c.word("service"),
    c.word("env", optional=True),
    id="operate.status",
    examples=("status api", "status api prod"),
)
async def service_status(ctx: Ctx, service: str, env: str | None) -> v.Reply:
    """The running version and pods of SERVICE per environment."""
    ctx.service(service)
    envs = [env] if env else list(ctx.config.environments)
    if env:
        environment(ctx.config, env)
    blocks: list[v.Block] = [v.Header(f"{service}")]

    async def read(e: str) -> WorkloadStatus | AdapterError:
        spec = target_spec(ctx.config, service, e)
        try:
            return await target_for(ctx.services, spec).status(spec)
        except AdapterError as err:
            return err

    # All environments at once: the answer takes one timeout at most, not one per environment (the
    # Kubernetes client is made outside the calls' timeouts, so they do not wait on each other's start-up).
    for e, st in zip(envs, await asyncio.gather(*(read(e) for e in envs)), strict=True):
        if isinstance(st, AdapterError):
            blocks.append(v.Section(f"*{e}*: could not be read ({v.esc(str(st))})"))
            continue
        pods = "\n".join(
            f"{'🟢' if p.ready else '🔴'} `{v.esc(p.name)}` {v.esc(p.status)}"
            + (f", {p.restarts} restarts" if p.restarts else "")
            for p in st.pods[:10]
        )
        line = f"*{e}*: " + (f"`{v.esc(st.version)}`" if st.version else "no version known")
        if st.counts_replicas:
            line += f" — {st.ready}/{st.desired} ready"
        if st.message:
            line += f"\n_{v.esc(st.message)}_"
        blocks.append(v.Section(line + (f"\n{pods}" if pods else "")))
    return v.Reply(v.Message(f"Status of {service}", tuple(blocks)))


@group.command(
    "scale",
    c.word("service"),
    c.word("env"),
    c.number("replicas", min=0, max=500),
    id="operate.scale",
    examples=("scale api prod 6",),
)
async def scale(ctx: Ctx, service: str, env: str, replicas: int) -> v.Reply:
    """Set the replica count (ENV's approvals apply)."""
    r = await request(ctx, "scale", service, env, replicas=replicas)
    return v.Reply.text(f"{r.title}: the card in {r.channel} follows it (release {r.id}).")


@group.command("restart", c.word("service"), c.word("env"), id="operate.restart", examples=("restart api staging",))
async def restart(ctx: Ctx, service: str, env: str) -> v.Reply:
    """Restart the pods one by one (ENV's approvals apply)."""
    r = await request(ctx, "restart", service, env)
    return v.Reply.text(f"{r.title}: the card in {r.channel} follows it (release {r.id}).")
