"""build: trigger CI builds and follow each one in a single message, from queued to its result.

A build is a row of the `builds` table and a card keyed `build:<id>`. The `build.watch` job triggers
it (unless it was started elsewhere), then hands it to the shared poller; a Jenkins notification only
nudges that poller, so a build announced by webhook and by polling is still one card. The watch is
resumable: after a restart it re-attaches by queue item or build number and finishes the same card.
When the build ends, its test results (the CI's report, or the JUnit files it archived) are collected,
kept, and shown on the card with what changed since the previous build.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, Field

from bot import commands as c
from bot import views as v
from bot.builds import BuildRow, ci_for, inserted, load, record_event, row_from
from bot.context import Ctx, Services
from bot.durations import format_duration
from bot.errors import Conflict, NotConfigured, NotFound, UsageError
from bot.jobs import JobCtx
from bot.poller import Progress
from bot.ports import AdapterNotFound, Build, BuildRef, BuildState, CIServer
from bot.router import CommandGroup, HookResult
from bot.store import one
from bot.test_history import TestSummary, collect_tests, summarize

group = CommandGroup("build", "Trigger CI builds (Jenkins, Travis CI) and follow them to the result.")

LOG_TAIL_LINES = 40
TESTS_SHOWN = 10  # failing (and fixed) tests named on a card; `test report` has them all
NOTES_SHOWN = 5
LOG_MAX_BYTES = 5 * 1024 * 1024
_ICON = {
    BuildState.QUEUED: "⏳",
    BuildState.RUNNING: "🔄",
    BuildState.SUCCESS: "✅",
    BuildState.UNSTABLE: "🟡",
    BuildState.FAILURE: "❌",
    BuildState.ABORTED: "⏹️",
    BuildState.NOT_BUILT: "⚪",
    BuildState.CANCELLED: "⏹️",
}


class BuildRefValue(BaseModel):
    """The value of a build card's buttons."""

    id: int


def _dur(seconds: float | None) -> str:
    return format_duration(timedelta(seconds=int(seconds))) if seconds else "0s"


def _test_name(test_id: str) -> str:
    return f"`{v.esc(test_id if len(test_id) <= 150 else test_id[:149] + '…')}`"


def tests_blocks(row: BuildRow, t: TestSummary) -> list[v.Block]:
    """The test results of a finished build, for its card."""
    more_cmd = "`" + " ".join(x for x in ("test report", row.service or row.job, row.label) if x) + "`"
    if t.total:
        icon = "✅" if not t.failed else "❌"
        lines = [f"*Tests:* {icon} {t.counts}"]
        new, flaky = set(t.new_failures), set(t.flaky)
        for test_id in t.failing[:TESTS_SHOWN]:
            tags = [tag for tag, on in (("new", test_id in new), ("flaky", test_id in flaky)) if on]
            lines.append(f"• {_test_name(test_id)}" + (f" _({', '.join(tags)})_" if tags else ""))
        if len(t.failing) > TESTS_SHOWN:
            lines.append(f"…and {len(t.failing) - TESTS_SHOWN} more failing: {more_cmd}")
        if t.fixed:
            fixed = ", ".join(_test_name(x) for x in t.fixed[:TESTS_SHOWN])
            extra = f" and {len(t.fixed) - TESTS_SHOWN} more" if len(t.fixed) > TESTS_SHOWN else ""
            lines.append(f"*Fixed since {v.esc(t.previous or 'the previous build')}:* {fixed}{extra}")
    else:
        lines = [f"*Tests:* none in {v.esc(t.source)}" if t.source else "*Tests:* no results"]
    blocks: list[v.Block] = [v.Section("\n".join(lines))]
    about: list[str] = []
    if t.total:
        if t.previous:
            about.append(
                f"compared with {v.esc(t.previous)}: {len(t.new_failures)} new"
                f" failure{'' if len(t.new_failures) == 1 else 's'}, {len(t.fixed)} fixed,"
                f" {len(t.still_failing)} still failing, {len(t.flaky)} flaky"
            )
        else:
            about.append("no earlier results to compare with")
        if t.source:
            about.append(f"from {v.esc(t.source)}")
    notes = [f"⚠️ {v.esc(n)}" for n in t.notes[:NOTES_SHOWN]]
    if len(t.notes) > NOTES_SHOWN:
        notes.append(f"…and {len(t.notes) - NOTES_SHOWN} more problems reading the results")
    if about:
        blocks.append(v.Context(("; ".join(about),)))
    if notes:
        blocks.append(v.Context(tuple(notes)))
    return blocks


def card(row: BuildRow, *, typical_s: float | None, now: float, tests: TestSummary | None = None) -> v.Message:
    """The one message that follows a build (with its test results once it finished and they are known)."""
    head = f"{row.service or row.job} {row.label or ''}".strip()
    ref = BuildRefValue(id=row.id).model_dump_json()
    buttons: list[v.Button] = []
    if row.state in ("requested", "triggering"):
        status = "⏳ requested, starting it…"
    elif row.state == "lost":
        status = "❔ opsloop restarted while starting this build; check the CI before starting another"
    else:
        state = BuildState(row.state)
        if state is BuildState.QUEUED:
            status = "⏳ queued"
        elif state is BuildState.RUNNING:
            elapsed = now - (row.started_at or now)
            usual = f" (usually ~{_dur(typical_s)})" if typical_s else ""
            # Minutes only: a label that changed on every poll would be a card edit on every poll.
            status = (
                f"🔄 running for {_dur(max(60.0, elapsed // 60 * 60)) if elapsed >= 60 else 'under a minute'}{usual}"
            )
        else:
            status = f"{_ICON[state]} {state.value.replace('_', ' ')}"
            if row.duration_s:
                status += f" in {_dur(row.duration_s)}"
        if state in (BuildState.QUEUED, BuildState.RUNNING):
            buttons.append(
                v.Button(
                    "Abort",
                    "build.abort",
                    ref,
                    v.Style.DANGER,
                    confirm=v.Confirm("Abort the build?", f"Abort {v.esc(head)}?", "Abort"),
                )
            )
        else:
            buttons.append(v.Button("Re-run", "build.rerun", ref, v.Style.PRIMARY))
            buttons.append(v.Button("Show log", "build.log", ref))
    link = v.Button.link("Open", "build.open", ref, row.url)
    if link is not None and not row.finished:
        buttons.append(link)
    fields: list[tuple[str, str]] = [("Status", status)]
    if row.branch:
        fields.append(("Branch", f"`{v.esc(row.branch)}`"))
    if row.commit:
        fields.append(("Commit", f"`{v.esc(row.commit[:12])}`"))
    cause = f"<@{row.requester}>" if row.requester else (v.esc(row.cause) if row.cause else None)
    if cause:
        fields.append(("Started by", cause))
    params = {k: val for k, val in row.params.items() if k != "OPSLOOP_REQUEST"}
    if params:
        fields.append(("Parameters", ", ".join(f"`{v.esc(k)}={v.esc(val)}`" for k, val in sorted(params.items()))))
    blocks: list[v.Block] = [v.Header(f"Build {head}"), v.Section(fields=tuple(fields))]
    text = f"Build {head}: {status}"
    if tests is not None and row.finished:
        blocks.extend(tests_blocks(row, tests))
        text += f"; tests: {tests.counts}" if tests.total else "; no test results"
    if buttons:
        blocks.append(v.Actions(tuple(buttons)))
    blocks.append(v.Context((f"{row.ci} · `{v.esc(row.job)}`",)))
    return v.Message(text, tuple(blocks))


async def typical_duration(services: Services, ci: CIServer, job: str) -> float | None:
    """The duration of the last successful build, for "running for 2m (usually ~5m)"."""
    try:
        last = await ci.last_build(job, successful=True)
    except Exception:
        return None
    return last.duration_s if last else None


async def refresh_card(services: Services, row: BuildRow, typical_s: float | None = None) -> None:
    """Edit the build's card to match its row."""
    await services.update(row.key, card(row, typical_s=typical_s, now=services.clock.now()))


# --- starting and watching ----------------------------------------------------------------------------


async def start(ctx: Ctx, service: str, params: dict[str, str], branch: str | None) -> BuildRow:
    """Record a requested build, post its card, and hand it to the watch job."""
    build = ctx.service(service).build
    if build is None:
        raise NotConfigured(f"`{service}` has no build: add `services.{service}.build` (ci and job) to the config.")
    ci_for(ctx.services, build.ci)  # refuse now, not in the job, when the CI isn't configured
    merged = {**build.params, **params}
    branch = branch or build.branch
    channel = ctx.channel
    now = ctx.clock.now()
    services = ctx.services

    def tx(db: Any) -> tuple[BuildRow, int]:
        cur = db.execute(
            "INSERT INTO builds (service, ci, job, state, requester, channel, params, branch, created_at, updated_at)"
            " VALUES (?, ?, ?, 'requested', ?, ?, ?, ?, ?, ?)",
            (service, build.ci, build.job, ctx.actor, channel, json.dumps(merged), branch, now, now),
        )
        row = inserted(db, cur.lastrowid)
        services.post_in(db, channel, card(row, typical_s=None, now=now), key=row.key, dedupe=f"post:{row.key}")
        job_id = services.jobs.enqueue_in(
            db, "build.watch", f"build:{row.ci}:{row.job}", {"build": row.id}, requester=ctx.actor, channel=channel
        )
        db.execute("UPDATE builds SET job_id = ? WHERE id = ?", (job_id, row.id))
        return row, job_id

    row, job_id = await services.store.write(tx)
    services.outbox.kick()
    await services.jobs.launch(job_id)
    return row


async def _save(services: Services, row: BuildRow, **changes: Any) -> BuildRow:
    cols = {
        "queue_id",
        "number",
        "label",
        "state",
        "branch",
        "commit_sha",
        "cause",
        "url",
        "started_at",
        "finished_at",
        "duration_s",
    }
    assert set(changes) <= cols, changes
    now = services.clock.now()
    sets = ", ".join(f"{k} = :{k}" for k in changes)
    await services.store.write(
        lambda db: db.execute(
            f"UPDATE builds SET {sets}, updated_at = :now WHERE id = :id", {**changes, "now": now, "id": row.id}
        )
    )
    renamed = {("commit" if k == "commit_sha" else k): val for k, val in changes.items()}
    return replace(row, **renamed)


def _from_build(b: Build) -> dict[str, Any]:
    return {
        "number": b.number,
        "label": b.label,
        "state": b.state.value,
        "url": b.url,
        "commit_sha": b.commit,
        "branch": b.branch,
        "cause": b.cause,
        "started_at": b.started_at.timestamp() if b.started_at else None,
        "duration_s": b.duration_s,
    }


@group.job("build.watch", resumable=True, timeout=24 * 3600)
async def watch_job(services: Services, jctx: JobCtx) -> None:
    """Trigger (unless already started elsewhere) and follow one build to its result."""
    row = await load(services, int(jctx.job.payload["build"]))
    if row.finished:
        # opsloop stopped after the build ended but perhaps before its tests were read (idempotent).
        await report_tests(services, row)
        return
    ci = ci_for(services, row.ci)
    if row.queue_id is None and row.number is None:
        if row.state == "triggering":
            # We may or may not have reached the CI before the restart: starting it again could run
            # the build twice, so say so and let a person decide.
            row = await _save(services, row, state="lost")
            await refresh_card(services, row)
            return
        row = await _save(services, row, state="triggering")
        ref = await ci.trigger(row.job, row.params, row.branch)
        row = await _save(services, row, queue_id=ref.queue_id, state=BuildState.QUEUED.value)
        await refresh_card(services, row)
    elif jctx.resumed:
        # The card alone would just go on changing; say why it went quiet for a while.
        text = "↪️ opsloop restarted; following the build again."
        await services.post(
            row.channel,
            v.Message(text, (v.Section(text),)),
            thread_key=row.key,
            dedupe=f"{row.key}:resume:{jctx.job.attempts}",
        )
    typical = await typical_duration(services, ci, row.job)
    config = services.config.integrations
    base = (
        config.jenkins.poll
        if row.ci == "jenkins" and config.jenkins
        else config.travis.poll
        if row.ci == "travis" and config.travis
        else timedelta(seconds=5)
    ).total_seconds()
    state = {"row": row}

    async def poll() -> Progress[BuildRow]:
        cur = state["row"]
        if cur.number is None:
            ref = await ci.locate(BuildRef(cur.ci, cur.job, queue_id=cur.queue_id))
            if ref.cancelled:
                cur = await _save(services, cur, state=BuildState.CANCELLED.value, finished_at=services.clock.now())
                state["row"] = cur
                await refresh_card(services, cur, typical)
                return Progress(final=cur, changed=True)
            if ref.number is None:
                return Progress()
            cur = await _save(services, cur, number=ref.number, state=BuildState.RUNNING.value)
            await record_event(services, cur, "build.started")
        b = await ci.build(cur.job, cur.number)  # type: ignore[arg-type]
        fresh = {k: val for k, val in _from_build(b).items() if val is not None}
        stored = {
            "number": cur.number,
            "label": cur.label,
            "state": cur.state,
            "url": cur.url,
            "commit_sha": cur.commit,
            "branch": cur.branch,
            "cause": cur.cause,
            "started_at": cur.started_at,
            "duration_s": cur.duration_s,
        }
        changes = {k: val for k, val in fresh.items() if stored.get(k) != val}
        if b.state.finished:
            changes["finished_at"] = services.clock.now()
        before = cur
        if changes:  # an unchanged build costs no write
            cur = await _save(services, cur, **changes)
            state["row"] = cur
        changed = (before.state, before.commit) != (cur.state, cur.commit)
        if changed and cur.state != BuildState.QUEUED.value:
            await record_event(services, cur, "build.started")  # once per build (announced builds too)
        # The card changes when the build does, or when its "running for" minute does; the outbox also
        # drops an edit that would not change what Slack shows.
        await refresh_card(services, cur, typical)
        return Progress(final=cur if b.state.finished else None, changed=changed)

    final = await services.poller.watch(cur_key(row), poll, interval=base, ceiling=max(60.0, base))
    await record_event(services, final, "build.finished")
    await report_tests(services, final, typical)


async def report_tests(services: Services, row: BuildRow, typical_s: float | None = None) -> None:
    """Collect a finished build's test results, keep them, and show them on its card."""
    if row.number is None:
        return
    collected = await collect_tests(services, row)  # tool failures come back as notes, not errors
    summary = await summarize(services, row, collected)
    if summary is not None:
        await services.update(row.key, card(row, typical_s=typical_s, now=services.clock.now(), tests=summary))


def cur_key(row: BuildRow) -> str:
    """The poller key of a build (what a webhook nudges)."""
    return f"{row.ci}:{row.job}:{row.number}" if row.number is not None else f"{row.ci}:queue:{row.queue_id}"


# --- commands -------------------------------------------------------------------------------------------


def _split_params(params: dict[str, str]) -> tuple[dict[str, str], str | None]:
    params = dict(params)
    return params, params.pop("branch", None)


@group.command(
    "build",
    c.word("service"),
    c.pairs(),
    id="build.run",
    examples=("build api", "build api branch=release-1.4 SKIP_TESTS=true"),
)
async def run(ctx: Ctx, service: str, params: dict[str, str]) -> v.Reply:
    """Start the service's CI job (with parameters) and follow it in one message here."""
    rest, branch = _split_params(params)
    row = await start(ctx, service, rest, branch)
    return v.Reply.text(
        f"Starting a build of *{v.esc(service)}*"
        + (f" on `{v.esc(branch)}`" if branch else "")
        + f"; the card below follows it (build {row.id})."
    )


async def _find(ctx: Ctx, service: str, number: int | None) -> tuple[BuildRow | None, CIServer, str]:
    svc = ctx.service(service)
    if svc.build is None:
        raise NotConfigured(f"`{service}` has no build configured (`services.{service}.build`).")
    ci = ci_for(ctx.services, svc.build.ci)
    job = svc.build.job
    if number is None:
        r = await ctx.store.read(
            lambda db: one(
                db, "SELECT * FROM builds WHERE service = ? AND number IS NOT NULL ORDER BY id DESC LIMIT 1", (service,)
            )
        )
    else:
        r = await ctx.store.read(
            lambda db: one(
                db,
                "SELECT * FROM builds WHERE ci = ? AND job = ? AND (number = ? OR label = ?)",
                (ci.name, job, number, f"#{number}"),
            )
        )
    return (row_from(r) if r else None), ci, job


async def _build_or_404(ci: CIServer, job: str, number: int | None, service: str) -> Build:
    try:
        b = await ci.build(job, number) if number is not None else await ci.last_build(job)
    except AdapterNotFound:
        b = None
    if b is None:
        raise NotFound(f"{ci.name} has no build {'#' + str(number) if number else ''} of `{service}` (`{job}`).")
    return b


@group.command(
    "build status",
    c.word("service"),
    c.number("number", optional=True, max=10**9, min=1),
    examples=("build status api", "build status api #42"),
)
async def status(ctx: Ctx, service: str, number: int | None) -> v.Reply:
    """Show the state of the latest (or a given) build of a service."""
    row, ci, job = await _find(ctx, service, number)
    if row is not None:
        typical = await typical_duration(ctx.services, ci, job) if not row.finished else None
        tests = await summarize(ctx.services, row) if row.finished else None
        return v.Reply(card(row, typical_s=typical, now=ctx.clock.now(), tests=tests))
    b = await _build_or_404(ci, job, number, service)
    fake = BuildRow(
        0,
        service,
        ci.name,
        job,
        None,
        b.number,
        b.label,
        b.state.value,
        None,
        ctx.channel,
        dict(b.parameters),
        b.branch,
        b.commit,
        b.cause,
        b.url,
        b.started_at.timestamp() if b.started_at else None,
        None,
        b.duration_s,
        ctx.clock.now(),
    )
    msg = card(fake, typical_s=b.estimated_s, now=ctx.clock.now())
    return v.Reply(v.Message(msg.text, tuple(x for x in msg.blocks if not isinstance(x, v.Actions))))


async def read_log(services: Services, ci: CIServer, job: str, number: int) -> tuple[str, bool]:
    """The whole console log so far (capped), redacted; and whether it was cut."""
    parts: list[str] = []
    size, start, cut = 0, 0, False
    while True:
        chunk = await ci.log(job, number, start)
        parts.append(chunk.text)
        size += len(chunk.text)
        if size > LOG_MAX_BYTES:
            cut = True
            break
        if not chunk.more or chunk.next_offset <= start:
            break
        start = chunk.next_offset
        if not chunk.text:
            break
    return services.redactor.text("".join(parts)), cut


async def _show_log(ctx: Ctx, service: str | None, ci: CIServer, job: str, number: int, label: str) -> v.Reply:
    text, cut = await read_log(ctx.services, ci, job, number)
    lines = text.rstrip("\n").splitlines()
    tail = "\n".join(lines[-LOG_TAIL_LINES:]) or "(the log is empty)"
    name = f"{service or job} {label}"
    if len(lines) > LOG_TAIL_LINES:
        await ctx.services.upload(
            ctx.channel,
            f"{(service or job).replace('/', '-')}-{number}.log",
            text,
            title=f"Log of {name}" + (" (first 5 MB)" if cut else ""),
            comment=f"Full log of {name} ({len(lines)} lines)",
        )
        note = f"Last {LOG_TAIL_LINES} of {len(lines)} lines; the whole log is attached as a file."
    else:
        note = f"{len(lines)} lines."
    return v.Reply(v.Message(f"Log of {name}", (v.Header(f"Log of {name}"), v.Code(tail), v.Context((note,)))))


@group.command("build log", c.word("service"), c.number("number", max=10**9), examples=("build log api #42",))
async def log_(ctx: Ctx, service: str, number: int) -> v.Reply:
    """The tail of a build's console log (the whole log is attached as a file when it is long)."""
    row, ci, job = await _find(ctx, service, number)
    b_number = row.number if row and row.number is not None else (await _build_or_404(ci, job, number, service)).number
    return await _show_log(ctx, service, ci, job, b_number, f"#{number}")


@group.command("build abort", c.word("service"), c.number("number", max=10**9), examples=("build abort api #42",))
async def abort(ctx: Ctx, service: str, number: int) -> v.Reply:
    """Abort a running build."""
    row, ci, job = await _find(ctx, service, number)
    target = row.number if row and row.number is not None else (await _build_or_404(ci, job, number, service)).number
    await ci.abort(job, target)
    if row is not None:
        ctx.services.poller.nudge(cur_key(row))
    return v.Reply.text(f"Asked {ci.name} to abort {service} #{number}.")


# --- buttons --------------------------------------------------------------------------------------------


@group.action("build.abort", value=BuildRefValue)
async def abort_button(ctx: Ctx, ref: BuildRefValue) -> v.Reply:
    """Button: abort this build."""
    row = await load(ctx.services, ref.id)
    if row.finished:
        raise Conflict(f"{row.name} already finished ({row.state}).")
    ci = ci_for(ctx.services, row.ci)
    if row.number is None:
        raise Conflict(f"{row.name} has not started yet; abort it once it runs (or cancel it in {ci.name}).")
    await ci.abort(row.job, row.number)
    ctx.services.poller.nudge(cur_key(row))
    return v.Reply.text(f"Asked {ci.name} to abort {row.name}.")


@group.action("build.rerun", value=BuildRefValue, policy="build.run")
async def rerun(ctx: Ctx, ref: BuildRefValue) -> v.Reply:
    """Button: start the same build again (same branch and parameters)."""
    row = await load(ctx.services, ref.id)
    if row.service is None:
        raise UsageError("This build's job is not a configured service, so I can't start it again from here.")
    params = {k: val for k, val in row.params.items() if k != "OPSLOOP_REQUEST"}
    new = await start(ctx, row.service, params, row.branch)
    return v.Reply.text(f"Started {row.service} again (build {new.id}).")


@group.action("build.log", value=BuildRefValue)
async def log_button(ctx: Ctx, ref: BuildRefValue) -> v.Reply:
    """Button: show the end of this build's log."""
    row = await load(ctx.services, ref.id)
    if row.number is None:
        raise Conflict(f"{row.name} has no log yet.")
    return await _show_log(
        ctx, row.service, ci_for(ctx.services, row.ci), row.job, row.number, row.label or f"#{row.number}"
    )


@group.action("build.open", value=BuildRefValue)
async def open_link(ctx: Ctx, ref: BuildRefValue) -> None:
    """Button with a link: Slack opens the URL; the click itself needs no answer."""
    return None


# --- Jenkins notifications -------------------------------------------------------------------------------


class _Scm(BaseModel):
    commit: str | None = None
    branch: str | None = None


class _JenkinsBuild(BaseModel):
    number: int
    phase: str
    status: str | None = None
    full_url: str | None = None
    url: str | None = None
    scm: _Scm | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)


class JenkinsNotification(BaseModel):
    """The Notification plugin's JSON (phases QUEUED, STARTED, COMPLETED, FINALIZED)."""

    name: str
    url: str = ""
    build: _JenkinsBuild


def job_path(note: JenkinsNotification) -> str:
    """`job/a/job/b/` -> `a/b` (folders), falling back to the plain name."""
    parts = [p for p in note.url.strip("/").split("/") if p]
    names = [parts[i + 1] for i in range(len(parts) - 1) if parts[i] == "job"]
    return "/".join(names) or note.name


@group.hook("jenkins")
async def jenkins_hook(services: Services, payload: Any) -> HookResult:
    """A build announced by Jenkins: nudge its watch, or start following it if nobody asked in chat."""
    note = JenkinsNotification.model_validate(payload)
    job = job_path(note)
    number = note.build.number
    service = next(
        (
            name
            for name, s in services.config.services.items()
            if s.build is not None and s.build.ci == "jenkins" and s.build.job == job
        ),
        None,
    )
    channel = (services.config.services[service].channel if service else None) or services.config.channels.default
    now = services.clock.now()
    if "jenkins" not in services.ci:
        return HookResult(202, "Jenkins isn't configured in opsloop; notification ignored")

    def tx(db: Any) -> tuple[str, int | None, BuildRow | None]:
        fresh = db.execute(
            "INSERT OR IGNORE INTO hook_deliveries (source, key, at) VALUES ('jenkins', ?, ?)",
            (f"{job}#{number}:{note.build.phase}", now),
        ).rowcount
        if not fresh:
            return "duplicate", None, None
        existing = one(db, "SELECT * FROM builds WHERE ci = 'jenkins' AND job = ? AND number = ?", (job, number))
        if existing is not None:
            return "known", None, row_from(existing)
        state = BuildState.QUEUED.value if note.build.phase == "QUEUED" else BuildState.RUNNING.value
        params = {k: str(val) for k, val in note.build.parameters.items()}
        cur = db.execute(
            "INSERT INTO builds (service, ci, job, number, label, state, channel, params, branch, commit_sha, cause,"
            " url, started_at, created_at, updated_at) VALUES (?, 'jenkins', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                service,
                job,
                number,
                f"#{number}",
                state,
                channel,
                json.dumps(params),
                note.build.scm.branch if note.build.scm else None,
                note.build.scm.commit if note.build.scm else None,
                "Started outside chat",
                note.build.full_url,
                now,
                now,
                now,
            ),
        )
        row = inserted(db, cur.lastrowid)
        services.post_in(db, channel, card(row, typical_s=None, now=now), key=row.key, dedupe=f"post:{row.key}")
        job_id = services.jobs.enqueue_in(db, "build.watch", f"build:jenkins:{job}", {"build": row.id}, channel=channel)
        db.execute("UPDATE builds SET job_id = ? WHERE id = ?", (job_id, row.id))
        return "new", job_id, row

    outcome, job_id, row = await services.store.write(tx)
    services.outbox.kick()
    if outcome == "duplicate":
        return HookResult(200, "already seen")
    if outcome == "new" and job_id is not None:
        await services.jobs.launch(job_id)
        return HookResult(202, f"following {job} #{number}")
    assert row is not None
    services.poller.nudge(cur_key(row))
    return HookResult(202, f"{job} #{number} updated")
