"""Releases: a deploy, rollback, scale or restart of one service in one environment, with its checks,
changelog, approvals and rollout, all on one card that is the parent of the release thread.

Shared by the deploy and operate stages (which create and run releases) and the monitor stage (whose
alert cards name the release that came shortly before). Locks and freezes of environments live here
too, because every check of every release asks about them."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from sqlite_utils import Database

from bot import rendering
from bot import views as v
from bot.approvals import WITHDRAW_HINT, Approval, ApprovalState
from bot.clock import iso
from bot.config import Config, EnvironmentConfig
from bot.durations import format_left
from bot.errors import NotConfigured, NotFound
from bot.ports import AdapterError, AdapterNotFound, Commit, DeployTarget, TargetSpec
from bot.store import one, rows
from bot.test_history import INCOMPLETE, notes_of

if TYPE_CHECKING:
    from bot.context import Services

ACTIVE = ("approved", "deploying", "baking")
WAITING = ("checking", "awaiting_approval")
DONE = ("succeeded", "failed", "rolled_back", "rejected", "expired", "refused", "cancelled", "interrupted")
_STATE_LINE = {
    "checking": "🔎 checking",
    "awaiting_approval": "⏳ waiting for approval",
    "approved": "✅ approved, starting",
    "deploying": "🚚 rolling out",
    "baking": "🍞 baking",
    "succeeded": "✅ done",
    "failed": "❌ failed",
    "rolled_back": "↩️ rolled back",
    "rejected": "🚫 rejected",
    "expired": "⌛ approval expired",
    "refused": "⛔ refused by the checks",
    "cancelled": "⏹️ cancelled",
    "interrupted": "⚠️ interrupted by a restart",
}


@dataclass(frozen=True)
class Check:
    """One pre-deploy check: what, whether it passed, why, and how it could be overridden."""

    name: str
    ok: bool
    detail: str
    override: str | None = None
    blocking: bool = True


@dataclass
class Release:
    id: int
    action: str  # deploy | rollback | scale | restart
    service: str
    env: str
    version: str | None
    image: str | None
    digest: str | None
    from_version: str | None
    replicas: int | None
    requester: str
    state: str
    approval_id: str | None
    channel: str
    checks: list[Check]
    changelog: list[dict[str, Any]]
    takes_out: list[dict[str, Any]]
    tests: dict[str, Any] | None
    progress: dict[str, Any] | None
    message: str | None
    break_glass: str | None
    rollback_of: int | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    bake_until: float | None
    reason: str | None = None  # why, in the requester's words (also `break_glass` when it overrides)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"release:{self.id}"

    @property
    def title(self) -> str:
        if self.action == "deploy":
            return f"Deploy {self.service} {self.version} → {self.env}"
        if self.action == "rollback":
            return f"Rollback {self.service} in {self.env}" + (f" to {self.version}" if self.version else "")
        if self.action == "scale":
            return f"Scale {self.service} in {self.env} to {self.replicas}"
        return f"Restart {self.service} in {self.env}"


def release_from(r: dict[str, Any]) -> Release:
    """A release from its row."""
    return Release(
        id=r["id"],
        action=r["action"],
        service=r["service"],
        env=r["env"],
        version=r["version"],
        image=r["image"],
        digest=r["digest"],
        from_version=r["from_version"],
        replicas=r["replicas"],
        requester=r["requester"],
        state=r["state"],
        approval_id=r["approval_id"],
        channel=r["channel"],
        checks=[Check(**c) for c in json.loads(r["checks"])],
        changelog=json.loads(r["changelog"]),
        takes_out=json.loads(r["takes_out"]),
        tests=json.loads(r["tests"]) if r["tests"] else None,
        progress=json.loads(r["progress"]) if r["progress"] else None,
        message=r["message"],
        break_glass=r["break_glass"],
        reason=r["reason"],
        rollback_of=r["rollback_of"],
        created_at=r["created_at"],
        started_at=r["started_at"],
        finished_at=r["finished_at"],
        bake_until=r["bake_until"],
    )


def load_in(db: Database, release_id: int) -> Release:
    """A release inside a running transaction."""
    r = one(db, "SELECT * FROM releases WHERE id = ?", (release_id,))
    if r is None:
        raise NotFound(f"There is no release {release_id}.")
    return release_from(r)


async def load(services: Services, release_id: int) -> Release:
    """A release by id."""
    return await services.store.read(lambda db: load_in(db, release_id))


def fingerprint(service: str, version: str | None, digest: str | None, env: str, action: str = "deploy") -> str:
    """What an approval is bound to: the exact artifact, and where it goes."""
    return hashlib.sha256(f"{action}|{service}|{version}|{digest}|{env}".encode()).hexdigest()[:20]


# --- configuration --------------------------------------------------------------------------------------


def environment(config: Config, env: str) -> EnvironmentConfig:
    """An environment's rules; NotFound with the configured names otherwise."""
    e = config.environments.get(env)
    if e is None:
        known = ", ".join(f"`{k}`" for k in config.environments) or "none (add `environments:` to the config)"
        raise NotFound(f"There is no environment `{env}`. Configured: {known}.")
    return e


def target_spec(config: Config, service: str, env: str) -> TargetSpec:
    """How `service` is deployed in `env` (the service's deploy section with the environment's overrides)."""
    svc = config.services.get(service)
    if svc is None or svc.deploy is None:
        raise NotConfigured(f"`{service}` has no deploy: add `services.{service}.deploy` (target, namespace, …).")
    d = svc.deploy
    o = d.envs.get(env)
    return TargetSpec(
        service=service,
        env=env,
        kind=d.target,
        namespace=(o.namespace if o and o.namespace else d.namespace),
        deployment=(o.deployment if o and o.deployment else d.deployment) or service,
        container=d.container or service,
        image=d.image,
        context=(o.context if o and o.context else None)
        or (config.integrations.kubernetes.context if config.integrations.kubernetes else None),
        argv=tuple(o.command if o and o.command else d.command),
        timeout_s=d.timeout.total_seconds(),
    )


def target_for(services: Services, spec: TargetSpec) -> DeployTarget:
    """The adapter for a target kind."""
    t = services.targets.get(spec.kind)
    if t is None:
        hint = "`integrations.kubernetes`" if spec.kind == "kubernetes" else "a `command` in the service's deploy"
        raise NotConfigured(f"The {spec.kind} deploy target isn't configured: add {hint}.")
    return t


# --- locks and freezes --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lock:
    env: str
    holder: str
    reason: str | None
    at: float


@dataclass(frozen=True)
class Freeze:
    env: str
    until: float
    reason: str
    by: str
    at: float


async def lock_of(services: Services, env: str) -> Lock | None:
    r = await services.store.read(lambda db: one(db, "SELECT * FROM locks WHERE env = ?", (env,)))
    return Lock(r["env"], r["holder"], r["reason"], r["at"]) if r else None


async def freeze_of(services: Services, env: str) -> Freeze | None:
    """The freeze of `env` in force now; one that has run out is ended here (its notice says so)."""
    now = services.clock.now()
    r = await services.store.read(lambda db: one(db, "SELECT * FROM freezes WHERE env = ?", (env,)))
    if r is None:
        return None
    if r["until"] <= now:
        await end_expired_freezes(services)
        return None
    return Freeze(r["env"], r["until"], r["reason"], r["by"], r["at"])


def freeze_notice(env: str, until: float, reason: str, by: str, ended: str | None = None) -> v.Message:
    """The notice of a freeze in the approvals channel; `ended` says how it ended (struck through then)."""
    what = f"{env} is frozen until {iso(until)} by <@{by}>: {v.esc(reason)}"
    text = f"🧊 ~{what}~ — {ended}" if ended else f"🧊 *{env} is frozen* until {iso(until)} by <@{by}>: {v.esc(reason)}"
    return v.Message(text, (v.Section(text),))


def end_freeze_in(services: Services, db: Database, env: str, how: str, *, expired_only: bool = False) -> bool:
    """Remove the freeze of `env` and edit its notice to say `how` it ended; False if there was none."""
    r = one(
        db,
        "SELECT * FROM freezes WHERE env = ?" + (" AND until <= ?" if expired_only else ""),
        (env, services.clock.now()) if expired_only else (env,),
    )
    if r is None:
        return False
    db.execute("DELETE FROM freezes WHERE env = ?", (env,))
    if r["notice_key"]:
        services.outbox.update_in(
            db, r["notice_key"], rendering.message(freeze_notice(env, r["until"], r["reason"], r["by"], how))
        )
        services.outbox.pin_in(db, r["notice_key"], pinned=False)
    return True


async def end_expired_freezes(services: Services) -> int:
    """End the freezes that have run out (their notices say when); how many ended."""
    now = services.clock.now()
    due = await services.store.read(lambda db: rows(db, "SELECT env, until FROM freezes WHERE until <= ?", (now,)))
    if not due:
        return 0

    def tx(db: Database) -> int:
        return sum(end_freeze_in(services, db, d["env"], f"ended at {iso(d['until'])}", expired_only=True) for d in due)

    ended = await services.store.write(tx)
    services.outbox.kick()
    return ended


# --- checks ---------------------------------------------------------------------------------------------


@dataclass
class CheckReport:
    checks: list[Check]
    digest: str | None = None
    running: str | None = None
    changelog: list[Commit] = field(default_factory=list)
    takes_out: list[Commit] = field(default_factory=list)  # running now, not in the version asked for
    tests: dict[str, Any] | None = None
    firing: list[str] = field(default_factory=list)

    @property
    def blocking(self) -> list[Check]:
        return [c for c in self.checks if not c.ok and c.blocking]


def image_path(image: str) -> str:
    """`registry.example.com/shop/api` -> `shop/api` (the repository name the registry API wants)."""
    first, _, rest = image.partition("/")
    return rest if rest and ("." in first or ":" in first or first == "localhost") else image


async def version_deployed(services: Services, service: str, env: str, version: str) -> bool:
    """Whether `version` of `service` was deployed successfully to `env`."""
    r = await services.store.read(
        lambda db: one(
            db,
            "SELECT id FROM events WHERE kind = 'deploy.finished' AND service = ? AND env = ? AND ref = ?"
            " AND json_extract(detail, '$.ok') = 1 LIMIT 1",
            (service, env, version),
        )
    )
    return r is not None


async def tests_of_commit(services: Services, service: str, sha: str) -> dict[str, Any] | None:
    """Counts of the newest build of `sha` that has stored results or was found to have incomplete ones;
    `incomplete` holds why its results are missing or partial (empty when they are whole)."""

    def q(db: Database) -> dict[str, Any] | None:
        # A build whose report could not be read at all has no results, only its `tests.incomplete`
        # note: it still counts as the newest word on this commit, so an older green build can't stand in.
        b = one(
            db,
            "SELECT b.id, b.label FROM builds b WHERE b.service = ? AND b.commit_sha = ? AND ("
            " EXISTS (SELECT 1 FROM test_results t WHERE t.build_id = b.id) OR EXISTS (SELECT 1 FROM events e"
            " WHERE e.kind = ? AND json_extract(e.detail, '$.build') = b.id"
            " AND json_array_length(json_extract(e.detail, '$.notes')) > 0)) ORDER BY b.id DESC LIMIT 1",
            (service, sha, INCOMPLETE),
        )
        if b is None:
            return None
        counts = {
            r["status"]: r["n"]
            for r in rows(
                db, "SELECT status, count(*) AS n FROM test_results WHERE build_id = ? GROUP BY status", (b["id"],)
            )
        }
        return {
            "id": b["id"],
            "build": b["label"],
            "passed": counts.get("passed", 0),
            "failed": counts.get("failed", 0),
            "skipped": counts.get("skipped", 0),
        }

    found = await services.store.read(q)
    if found is None:
        return None
    found["incomplete"] = list(await notes_of(services, int(found.pop("id"))))
    if not found["incomplete"] and not (found["passed"] or found["failed"] or found["skipped"]):
        return None  # a later clean read that found nothing either: no results
    return found


def tests_check(t: dict[str, Any] | None, sha: str, override: str | None = None) -> Check:
    """Whether the tests of a version are green: results of its newest build, all there, none failed."""
    if t is None:
        return Check("tests", False, f"no test results for {sha[:10]}; build it first", override)
    counts = f"{t['passed']} passed, {t['failed']} failed"
    if t.get("incomplete"):
        # Green can't be told from part of the results: what could not be read may be what failed.
        why = "; ".join(str(n).rstrip(".") for n in t["incomplete"][:3])
        more = len(t["incomplete"]) - 3
        return Check(
            "tests",
            False,
            f"the results of build {t['build']} are incomplete ({counts} of what could be read): {why}"
            + (f"; and {more} more" if more > 0 else "")
            + ". Build it again to get all of them",
            override,
        )
    return Check("tests", t["failed"] == 0, f"{counts} in build {t['build']}", override)


async def firing_for(services: Services, service: str, env: str, severities: list[str]) -> list[str]:
    """Titles of alert groups firing now for the service in `env` (or without an env) at those severities."""
    if not severities:
        return []
    marks = ",".join("?" for _ in severities)
    found = await services.store.read(
        lambda db: rows(
            db,
            f"SELECT title, severity FROM alert_groups WHERE status = 'firing' AND service = ? AND"
            f" (env = ? OR env IS NULL) AND severity IN ({marks})",
            (service, env, *severities),
        )
    )
    return [f"{r['title']} ({r['severity']})" for r in found]


async def run_checks(services: Services, service: str, version: str, env: str, requester: str) -> CheckReport:
    """Everything that must hold before `version` of `service` goes to `env`, each with its reason."""
    config = services.config
    rules = environment(config, env)
    spec = target_spec(config, service, env)
    report = CheckReport(checks=[])
    svc = config.services[service]
    # The artifact: the tag must exist, and its digest is what approvals are bound to.
    if spec.image and services.registry is not None:
        try:
            report.digest = await services.registry.digest(image_path(spec.image), version)
            report.checks.append(Check("image", True, f"`{spec.image}:{version}` is {report.digest[:19]}…"))
        except AdapterNotFound:
            report.checks.append(Check("image", False, f"the registry has no `{spec.image}:{version}`"))
        except AdapterError as err:
            report.checks.append(Check("image", False, f"the registry could not be asked: {err}"))
    for earlier in rules.requires.passed_in:
        ok = await version_deployed(services, service, earlier, version)
        report.checks.append(
            Check(
                f"passed in {earlier}",
                ok,
                f"{version} {'went' if ok else 'never went'} to {earlier}"
                + ("" if ok else f"; deploy it to {earlier} first"),
            )
        )
    repo = services.repos.get(service)
    sha: str | None = None
    if repo is not None:
        try:
            sha = await repo.resolve(version)
        except AdapterError as err:
            report.checks.append(Check("version", False, str(err)))
    glass = " or ".join(f"`{r}`" for r in rules.break_glass)
    override = f'a member of {glass} can add `force "reason"`' if rules.break_glass else None
    if rules.requires.tests == "green":
        if sha is None:
            report.checks.append(Check("tests", False, "no commit is known for this version, so no test results"))
        else:
            report.tests = await tests_of_commit(services, service, sha)
            report.checks.append(tests_check(report.tests, sha, override))
    elif sha is not None:
        report.tests = await tests_of_commit(services, service, sha)
    fr = await freeze_of(services, env)
    if fr is not None:
        report.checks.append(Check("freeze", False, f"{env} is frozen until {iso(fr.until)}: {fr.reason}", override))
    lk = await lock_of(services, env)
    if lk is not None and lk.holder != requester:
        report.checks.append(
            Check(
                "lock",
                False,
                f"<@{lk.holder}> holds the lock on {env}" + (f": {lk.reason}" if lk.reason else ""),
                override,
            )
        )
    report.firing = await firing_for(services, service, env, list(rules.requires.no_firing))
    if rules.requires.no_firing:
        report.checks.append(
            Check(
                "alerts",
                not report.firing,
                "nothing firing" if not report.firing else "firing now: " + "; ".join(report.firing[:5]),
            )
        )
    try:
        report.running = await target_for(services, spec).running_version(spec)
    except AdapterError as err:
        report.checks.append(Check("target", False, f"the current version could not be read: {err}"))
    if report.running is not None and report.running == version:
        # Allowed (a restart by redeploy, a tag rebuilt), but a reviewer should know nothing new goes out.
        report.checks.append(
            Check("redeploy", False, f"{env} already runs {version}; this deploys it again", blocking=False)
        )
    if repo is not None and sha is not None:
        try:
            report.changelog = await repo.commits_between(report.running, version, limit=100)
        except AdapterError:
            report.changelog = await repo.commits_between(None, version, limit=20)
        if report.running and report.running != version:
            try:
                report.takes_out = await repo.commits_between(version, report.running, limit=100)
            except AdapterError:  # what runs is not in the repository (built elsewhere): nothing to say
                pass
    del svc
    return report


# --- the card -------------------------------------------------------------------------------------------


def _ticket_links(text: str, tickets: list[str], ticket_url: str | None) -> str:
    for t in tickets:
        if ticket_url:
            text = text.replace(t, f"<{ticket_url.replace('{key}', t)}|{t}>")
    return text


def _goes_back_somewhere(r: Release, revisions: bool) -> bool:
    """Whether rolling this release back has something to go back to: a version that ran before it (for a
    target that keeps `revisions`, its earlier revision, even under the same tag)."""
    return r.from_version is not None and (r.from_version != r.version or revisions)


def _commits(title: str, commits: list[dict[str, Any]], ticket_url: str | None) -> v.Section:
    """A list of commits on the card: the first ten, and how many more."""
    shown = []
    for c in commits[:10]:
        subject = _ticket_links(v.esc(c.get("subject", "")[:120]), c.get("tickets", []), ticket_url)
        shown.append(f"`{c.get('sha', '')[:8]}` {subject} — {v.esc(c.get('author', ''))}")
    more = len(commits) - 10
    return v.Section(f"{title}\n" + "\n".join(shown) + (f"\n…and {more} more" if more > 0 else ""))


def card(
    r: Release, a: Approval | None, *, now: float, ticket_url: str | None = None, revisions: bool = False
) -> v.Message:
    """The release card: what, from what to what, checks, changelog, tests, approvals, rollout, buttons;
    `revisions` when its target can go back to a previous revision by itself (see DeployTarget)."""
    head = f"🚀 {r.title}" if r.action == "deploy" else f"🛠️ {r.title}"
    state = _STATE_LINE.get(r.state, r.state)
    if r.state == "baking" and r.bake_until:
        state += f" until {iso(r.bake_until)}"
    fields: list[tuple[str, str]] = [("State", state), ("Requested by", f"<@{r.requester}>")]
    if r.action in ("deploy", "rollback"):
        to = f"`{v.esc(r.version or 'previous')}`"
        if r.from_version:
            moves = f"`{v.esc(r.from_version)}` → {to}"
        elif r.state == "checking":  # what runs now is one of the things being checked
            moves = f"→ {to}"
        else:
            moves = f"{to} (what ran before is not known)"
        fields.append(("Version", moves))
    if r.digest:
        fields.append(("Image", f"`{v.esc(r.digest[:19])}…`"))
    blocks: list[v.Block] = [v.Header(head[:150]), v.Section(fields=tuple(fields))]
    if r.break_glass:
        # The reason is what people typed (escaped); the mention is ours, so it stays a mention.
        blocks.append(v.Section(f"⚠️ *Break glass* by <@{r.requester}>: {v.esc(r.break_glass)}"))
    elif r.reason:
        blocks.append(v.Section(f"💬 *Why*: {v.esc(r.reason)}"))
    if r.checks:
        lines = [
            f"{'✅' if c.ok else ('❌' if c.blocking else '⚠️')} *{v.esc(c.name)}*: {v.esc(c.detail)}"
            + (f" _({v.esc(c.override)})_" if (c.override and not c.ok) else "")
            for c in r.checks
        ]
        blocks.append(v.Section("*Checks*\n" + "\n".join(lines)))
    if r.changelog:
        blocks.append(_commits(f"*Changes ({len(r.changelog)})*", r.changelog, ticket_url))
    if r.takes_out:
        what = f"*Takes out ({len(r.takes_out)})*: running now, not in `{v.esc(r.version or '?')}`"
        blocks.append(_commits(what, r.takes_out, ticket_url))
    if r.tests:
        t = r.tests
        blocks.append(
            v.Context(
                (
                    f"🧪 tests of this version: {t['passed']} passed, {t['failed']} failed, "
                    f"{t['skipped']} skipped (build {t['build']})"
                    + (" — ⚠️ incomplete: some results could not be read" if t.get("incomplete") else ""),
                )
            )
        )
    if r.progress:
        p = r.progress
        counts = ""
        if p.get("desired") is not None:
            # `updated` is unknown (None) until the controller has observed the new spec.
            updated = (
                f"{p['updated']}/{p['desired']} updated" if p.get("updated") is not None else f"{p['desired']} desired"
            )
            counts = f" ({updated}, {p.get('available') or 0} available)"
        # Once the rollout is over its last report stays (pods, warnings), named as such: "deploying (2 s)"
        # under a done release read as if it were still going.
        label = "Rollout" if r.state == "deploying" else "Last rollout report"
        lines = [f"*{label}:* {v.esc(str(p.get('message', '')))}{counts}"]
        lines.extend(f"⚠️ {v.esc(e)}" for e in p.get("events", [])[:5])
        blocks.append(v.Section("\n".join(lines)))
    if r.message:
        blocks.append(v.Section(v.esc(r.message[:2500])))
    buttons: list[v.Button] = []
    if a is not None:
        votes = ", ".join(f"<@{x.user}> {'✅' if x.vote == 'approve' else '❌'}" for x in a.votes) or "none yet"
        need = f"{a.approvals} of {a.required} from `{a.role}`" + ("" if a.self_approval else " (not the requester)")
        blocks.append(v.Section(fields=(("Approvals", need), ("Votes", votes))))
        if a.state is ApprovalState.PENDING:
            ref = json.dumps({"id": a.id})
            buttons.append(v.Button("Approve", "approval.approve", ref, v.Style.PRIMARY))
            buttons.append(
                v.Button(
                    "Reject",
                    "approval.reject",
                    ref,
                    v.Style.DANGER,
                    confirm=v.Confirm("Reject?", f"Reject this {r.action}?", "Reject"),
                )
            )
            blocks.append(v.Context((f"expires in {format_left(a.expires_at - now)} · {WITHDRAW_HINT}",)))
    # After a failed deploy the target may be half changed (pods that can't pull their image): rolling
    # back is what one wants then, as after a success or during the bake. Not when nothing ran before it:
    # there is nothing to go back to, and a button that can only answer "which version?" misleads.
    if (
        (r.state in ("baking", "succeeded") and r.action in ("deploy", "rollback"))
        or (r.state == "failed" and r.action == "deploy")
    ) and _goes_back_somewhere(r, revisions):
        buttons.append(
            v.Button(
                "Rollback",
                "deploy.rollback",
                json.dumps({"service": r.service, "env": r.env, "release": r.id}),
                v.Style.DANGER,
                confirm=v.Confirm("Roll back?", f"Roll {r.service} in {r.env} back?", "Roll back"),
            )
        )
    if buttons:
        blocks.append(v.Actions(tuple(buttons)))
    blocks.append(v.Context((f"release `{r.id}` · {iso(r.created_at)}",)))
    return v.Message(f"{r.title}: {state}", tuple(blocks))


def checks_json(checks: list[Check]) -> str:
    return json.dumps([asdict(c) for c in checks])


def changelog_json(commits: list[Commit]) -> str:
    return json.dumps(
        [
            {
                "sha": c.sha,
                "author": c.author,
                "date": c.date.isoformat(),
                "subject": c.subject,
                "tickets": list(c.tickets),
            }
            for c in commits
        ]
    )
