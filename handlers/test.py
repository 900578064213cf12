"""test: build test reports (compared with the previous build), flaky tests, browser smoke checks."""

from __future__ import annotations

from bot import commands as c
from bot import views as v
from bot.builds import BuildRow, row_from
from bot.context import Ctx, Services
from bot.errors import NotFound
from bot.jobs import JobCtx
from bot.ports import TestReport, TestStatus
from bot.router import CommandGroup
from bot.smoke import pages_for, run_smoke, smoke_card
from bot.store import one
from bot.test_history import (
    collect_tests,
    compare,
    flaky_tests,
    notes_of,
    previous_build_with_results,
    results_of,
)

group = CommandGroup("test", "Test results of builds, flaky tests, and browser smoke checks.")

FAILURES_PER_MESSAGE = 8


async def _build_row(ctx: Ctx, service: str, number: int | None) -> BuildRow:
    svc = ctx.service(service)
    if number is None:
        r = await ctx.store.read(
            lambda db: one(
                db,
                "SELECT * FROM builds WHERE service = ? AND number IS NOT NULL AND finished_at IS NOT NULL"
                " ORDER BY id DESC LIMIT 1",
                (service,),
            )
        )
    else:
        r = await ctx.store.read(
            lambda db: one(
                db,
                "SELECT * FROM builds WHERE service = ? AND (number = ? OR label = ?) ORDER BY id DESC LIMIT 1",
                (service, number, f"#{number}"),
            )
        )
    if r is None:
        which = f"#{number}" if number else "finished"
        if svc.build is None:  # `build SERVICE` would only say it is not configured
            raise NotFound(
                f"I have no {which} build of `{service}`, and it has no CI job to start one: "
                f"add `services.{service}.build` (ci and job) to the config."
            )
        raise NotFound(f"I have no {which} build of `{service}`; start one with `build {service}`.")
    return row_from(r)


def _case_line(case_id: str, report: TestReport, flaky: set[str]) -> str:
    case = next((c for c in report.cases if c.id == case_id), None)
    mark = " _(flaky)_" if case_id in flaky else ""
    first = ""
    if case is not None and (case.message or case.details):
        first = (case.message or case.details or "").strip().splitlines()[0][:300]
    return f"• `{v.esc(case_id)}`{mark}" + (f"\n  ```{first.replace('```', '')}```" if first else "")


@group.command(
    "test report",
    c.word("service"),
    c.number("number", optional=True, max=10**9),
    examples=("test report api", "test report api #42"),
)
async def report(ctx: Ctx, service: str, number: int | None) -> v.Reply:
    """Summarise a build's tests here; failures with their error lines go in the thread.

    Compared with the previous build that has results: new failures and fixed tests. Tests that look
    flaky (see `test flaky`) are marked."""
    row = await _build_row(ctx, service, number)
    current = await results_of(ctx.services, row.id)
    notes = await notes_of(ctx.services, row.id)
    if current is None:
        collected = await collect_tests(ctx.services, row)
        current, notes = collected.report, collected.notes
    if current is None:
        why = " ".join(notes) or "No report in the CI, and no `junit` or `junit_artifacts` files configured."
        raise NotFound(f"{row.name} published no test results. {why}")
    prev_id = await previous_build_with_results(ctx.services, row)
    previous = await results_of(ctx.services, prev_id) if prev_id else None
    diff = compare(current, previous)
    flaky = {f.test_id for f in await flaky_tests(ctx.services, service)}
    passed, failed, skipped = (current.count(s) for s in (TestStatus.PASSED, TestStatus.FAILED, TestStatus.SKIPPED))
    icon = "✅" if not failed else "❌"
    head = f"{icon} Tests of {row.name}: {passed} passed, {failed} failed, {skipped} skipped"
    fields = [
        ("New failures", str(len(diff.new_failures))),
        ("Fixed", str(len(diff.fixed))),
        ("Still failing", str(len(diff.still_failing))),
        ("Flaky here", str(len(flaky & {c.id for c in current.failed}))),
    ]
    body: list[v.Block] = [v.Header(head), v.Section(fields=tuple(fields))]
    if diff.new_failures:
        body.append(v.Section("*New failures:* " + ", ".join(f"`{v.esc(t)}`" for t in diff.new_failures[:15])))
    if diff.fixed:
        body.append(v.Section("*Fixed:* " + ", ".join(f"`{v.esc(t)}`" for t in diff.fixed[:15])))
    body.append(
        v.Context(
            (
                ("compared with the previous build" if previous else "no earlier results to compare")
                + ("; failures in the thread" if failed else ""),
            )
        )
    )
    if notes:
        # Results may be partial (a file that was not JUnit XML, too big, or gone): say so beside them.
        body.append(v.Context(tuple(f"⚠️ {v.esc(n)}" for n in notes[:9])))
    key = f"tests:{row.id}"
    await ctx.post(v.Message(head, tuple(body)), key=key)
    failures = sorted(c.id for c in current.failed)
    for i in range(0, len(failures), FAILURES_PER_MESSAGE):
        chunk = failures[i : i + FAILURES_PER_MESSAGE]
        text = "\n".join(_case_line(t, current, flaky) for t in chunk)
        await ctx.post(
            v.Message(f"Failures {i + 1}-{i + len(chunk)}", (v.Section(text),)),
            thread_key=key,
            dedupe=f"{key}:failures:{i}",
        )
    return v.Reply.text(f"Posted the test report of {row.name} here.")


@group.command("test flaky", c.word("service", optional=True), examples=("test flaky", "test flaky api"))
async def flaky(ctx: Ctx, service: str | None) -> v.Reply:
    """Tests that passed and failed on the same commit, or flip often, from the stored results."""
    if service:
        ctx.service(service)
    found = await flaky_tests(ctx.services, service)
    if not found:
        where = f" of `{service}`" if service else ""
        return v.Reply.text(f"No flaky tests{where} in the stored results.")
    lines = [f"• `{v.esc(f.test_id)}` ({v.esc(f.service)}): {f.why}, flip rate {f.rate:.0%}" for f in found[:25]]
    more = f"\n…and {len(found) - 25} more" if len(found) > 25 else ""
    return v.Reply(
        v.Message(
            f"{len(found)} flaky tests", (v.Header(f"Flaky tests ({len(found)})"), v.Section("\n".join(lines) + more))
        )
    )


@group.command("test smoke", c.word("service"), c.word("env"), examples=("test smoke web staging",))
async def smoke(ctx: Ctx, service: str, env: str) -> v.Reply:
    """Check the service's pages in a real headless browser; screenshots of failures go in the thread."""
    ctx.service(service)
    envs = ctx.config.environments
    if envs and env not in envs:
        raise NotFound(f"There is no environment `{env}`. Configured: {', '.join(f'`{e}`' for e in envs)}.")
    pages = pages_for(ctx.config, service, env)  # refuse here when nothing is configured
    job_id = await ctx.jobs.submit(
        "test.smoke",
        f"smoke:{service}:{env}",
        {"service": service, "env": env},
        requester=ctx.actor,
        channel=ctx.channel,
    )
    await ctx.post(
        v.Message(
            f"Smoke check of {service} in {env}: running",
            (v.Section(f"🔄 Smoke check of *{v.esc(service)}* in *{v.esc(env)}*: checking {len(pages)} page(s)…"),),
        ),
        key=f"smoke:{job_id}",
    )
    return v.Reply.text(f"Checking {v.count(len(pages), 'page')} of {service} in {env}; the result replaces the card.")


@group.job("test.smoke")
async def smoke_job(services: Services, jctx: JobCtx) -> None:
    """Run a smoke check and report it, with a screenshot of each failed page."""
    service, env = str(jctx.job.payload["service"]), str(jctx.job.payload["env"])
    outcome = await run_smoke(services.config, services.browser, service, env)
    key = f"smoke:{jctx.job.id}"
    channel = jctx.job.channel or services.config.channels.default
    await services.post(channel, smoke_card(outcome), key=key)
    for i, r in enumerate(outcome.results):
        if not r.ok and r.screenshot:
            await services.upload(
                channel,
                f"smoke-{service}-{env}-{i + 1}.png",
                r.screenshot,
                title=f"{r.url} ({env})",
                comment=f"❌ {r.message}",
                thread_key=key,
            )
