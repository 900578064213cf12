"""Figure 7 of issue 7: every command, button, form and shortcut against every role of the demo policy.

The policy is examples/demo.yml's own (`roles`, `permissions`, `console.groups`), loaded from the file;
only the parts that touch the machine are moved into a temporary directory. Each role gets a person who
holds that role and nothing else (the approver role twice: directly and through the `@sre` group), plus
someone with no role; the demo's own people (who hold several roles) are checked as well.

Everything registered in the router (bot.app.GROUPS) is run by each of them through opsloop's router,
the same path as Slack and the console, and compared with EXPECTED, a table written out by hand: a new
command or button fails the test until someone decides who may use it. A refusal must say why (name the
rule and the role that would allow it), and every decision, allowed or refused, must be one row of the
audit log with that outcome and reason.

Then `opsloop audit verify` (the CLI, in a subprocess) is run on copies of the database tampered with
in every way we know: a field edited, a row deleted, two rows swapped, a forged row inserted (naively
and with a correctly recomputed hash), rows cut from the end; it must exit 1 and name the first broken
row. With OPSLOOP_RESULTS=1 the matrix is written to bench/results/authz.md.
"""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml
from rich.console import Console

from bot import audit as audit_mod
from bot.app import GROUPS, Opsloop, build_console
from bot.config import Env, parse_config
from bot.outbox import Pacing
from bot.router import Click, Invocation, ShortcutCall, Submission, SubmitErrors
from bot.store import rows
from tests.reliability.support_figures import md_cell, provenance, write_figure
from tests.support import ALICE, BOB, CAROL, DAVE, EVE, clean_environ

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "demo.yml"
MODULE_LOOP = pytest.mark.asyncio(loop_scope="module")

# One person per role of the demo, holding only that role.
ADMIN, APPROVER, SRE, DEV, NOBODY = "U0ONLYADM", "U0ONLYAPR", "U0ONLYSRE", "U0ONLYDEV", EVE
ROLE_PEOPLE = {
    ADMIN: "admins",
    APPROVER: "approvers",
    SRE: "approvers (via @sre)",
    DEV: "developers",
    NOBODY: "no role",
}
# The demo's own people and the role people above they must act like (their roles combined).
DEMO_PEOPLE = {
    ALICE: ("alice", (ADMIN, DEV)),
    BOB: ("bob", (APPROVER, DEV)),
    CAROL: ("carol", (SRE, DEV)),
    DAVE: ("dave", (DEV,)),
}

# --- the expected table: who may do what under examples/demo.yml ------------------------------------------
# Read: `permissions:` of the demo has "insights.audit": [admins], "plan.*": [developers],
# "feedback.*": [everyone]; no rule means everyone. Buttons, forms and shortcuts are checked against
# their own policy key (a button that files a plan item needs plan.new), and a command or form that
# makes a plan item out of feedback needs plan.new as well.

ALL = frozenset(ROLE_PEOPLE)
DEVS = frozenset({DEV})
ADMINS = frozenset({ADMIN})

EXPECTED: dict[str, frozenset[str]] = {
    # commands
    "core.help": ALL,
    "core.whoami": ALL,
    "plan.new": DEVS,
    "plan.list": DEVS,
    "plan.show": DEVS,
    "plan.assign": DEVS,
    "plan.done": DEVS,
    "code.log": ALL,
    "code.diff": ALL,
    "code.pending": ALL,
    "code.who": ALL,
    "build.run": ALL,
    "build.status": ALL,
    "build.log": ALL,
    "build.abort": ALL,
    "test.report": ALL,
    "test.flaky": ALL,
    "test.smoke": ALL,
    "deploy.run": ALL,
    "deploy.rollback": ALL,
    "deploy.status": ALL,
    "deploy.lock": ALL,
    "deploy.unlock": ALL,
    "deploy.freeze": ALL,
    "deploy.unfreeze": ALL,
    "operate.status": ALL,
    "operate.scale": ALL,
    "operate.restart": ALL,
    "monitor.alerts": ALL,
    "monitor.silence": ALL,
    "monitor.silences": ALL,
    "monitor.query": ALL,
    "monitor.graph": ALL,
    "monitor.search": ALL,
    "feedback.send": ALL,
    "feedback.list": ALL,
    "feedback.search": ALL,
    "feedback.promote": DEVS,  # makes a plan item: plan.new
    "insights.audit": ADMINS,
    "insights.dora": ALL,
    "insights.digest": ALL,
    # buttons
    "click:approval.approve": ALL,  # who may approve is the approval's own rule, checked by its handler
    "click:approval.reject": ALL,
    "click:plan.take": DEVS,
    "click:plan.done": DEVS,
    "click:build.abort": ALL,
    "click:build.rerun": ALL,
    "click:build.log": ALL,
    "click:build.open": ALL,
    "click:deploy.rate": ALL,
    "click:deploy.note": ALL,
    "click:deploy.rollback": ALL,
    "click:alert.silence": ALL,
    "click:alert.silence_form": ALL,
    "click:alert.unsilence": ALL,
    "click:alert.unsnooze": ALL,
    "click:alert.ack": ALL,
    "click:alert.resolve": ALL,
    "click:alert.runbook": ALL,
    "click:alert.graph": ALL,
    "click:alert.ticket": DEVS,
    "click:alert.expire_silence": ALL,
    "click:feedback.promote": DEVS,
    # forms and shortcuts
    "submit:deploy.note_submit": ALL,
    "submit:alert.silence_submit": ALL,
    "submit:feedback.message_submit": ALL,
    "submit:feedback.message_submit as plan": DEVS,
    "shortcut:feedback.message": ALL,
}

# What each entry is run with: a command line, or a button value, or a form's values and metadata.
# Ids point at nothing that exists, so an allowed dispatch answers quickly ("no such …") and changes
# nothing; authorization is decided before that.
LINES = {
    "core.help": "help",
    "core.whoami": "whoami",
    "plan.new": 'plan new "Authorization probe"',
    "plan.list": "plan list",
    "plan.show": "plan show OPS-999",
    "plan.assign": "plan assign OPS-999 <@U0DAVE>",
    "plan.done": "plan done OPS-999",
    "code.log": "code log nope",
    "code.diff": "code diff nope v1.0.0..v1.1.0",
    "code.pending": "code pending nope prod",
    "code.who": "code who src/ nope",
    "build.run": "build nope",
    "build.status": "build status nope",
    "build.log": "build log nope #1",
    "build.abort": "build abort nope #1",
    "test.report": "test report nope",
    "test.flaky": "test flaky",
    "test.smoke": "test smoke nope staging",
    "deploy.run": "deploy nope v1.0.0 to staging",
    "deploy.rollback": "rollback nope staging",
    "deploy.status": "deploy status",
    "deploy.lock": 'lock dev "probe"',
    "deploy.unlock": "unlock dev",
    "deploy.freeze": 'freeze dev 1h "probe"',
    "deploy.unfreeze": "unfreeze dev",
    "operate.status": "status nope",
    "operate.scale": "scale nope staging 2",
    "operate.restart": "restart nope staging",
    "monitor.alerts": "alerts",
    "monitor.silence": 'silence alertname=Probe 1h "probe"',
    "monitor.silences": "silences",
    "monitor.query": "query up",
    "monitor.graph": "graph abc/1",
    "monitor.search": "search error",
    "feedback.send": 'feedback "probe"',
    "feedback.list": "feedback list",
    "feedback.search": 'feedback search "probe"',
    "feedback.promote": "feedback promote 999",
    "insights.audit": "audit",
    "insights.dora": "dora",
    "insights.digest": "digest",
}
VALUES: dict[str, dict[str, Any]] = {
    "approval.approve": {"id": "999"},
    "approval.reject": {"id": "999"},
    "plan.take": {"key": "OPS-999"},
    "plan.done": {"key": "OPS-999"},
    "build.abort": {"id": 999},
    "build.rerun": {"id": 999},
    "build.log": {"id": 999},
    "build.open": {"id": 999},
    "deploy.rate": {"release": 999, "rating": "good"},
    "deploy.note": {"release": 999},
    "deploy.rollback": {"service": "nope", "env": "staging"},
    "alert.silence": {"group": 999, "hours": 1},
    "alert.silence_form": {"group": 999},
    "alert.unsilence": {"group": 999},
    "alert.unsnooze": {"group": 999},
    "alert.ack": {"group": 999},
    "alert.resolve": {"group": 999},
    "alert.runbook": {"group": 999},
    "alert.graph": {"group": 999},
    "alert.ticket": {"group": 999},
    "alert.expire_silence": {"id": "nope"},
    "feedback.promote": {"id": 999},
}
SUBMITS: dict[str, tuple[str, dict[str, str | None], dict[str, Any]]] = {
    # row: (callback, values, metadata)
    "submit:deploy.note_submit": ("deploy.note_submit", {"text": "probe"}, {"release": 999}),
    "submit:alert.silence_submit": (
        "alert.silence_submit",
        {"matchers": 'alertname="Probe"', "duration": "1h", "reason": "probe"},
        {"group": 999, "channel": "#ops"},
    ),
    "submit:feedback.message_submit": (
        "feedback.message_submit",
        {"text": "probe", "as": "feedback"},
        {"channel": "#ops", "message_ts": "1700000000.000100"},
    ),
    "submit:feedback.message_submit as plan": (
        "feedback.message_submit",
        {"text": "probe", "as": "plan"},
        {"channel": "#ops", "message_ts": "1700000000.000100"},
    ),
}


def registry() -> set[str]:
    """Every entry point the router registers, named as the audit log names them."""
    out: set[str] = set()
    for g in GROUPS:
        out |= {s.id for s in g.commands}
        out |= {f"click:{a.id}" for a in g.actions}
        out |= {f"submit:{s.callback}" for s in g.submits}
        out |= {f"shortcut:{s.callback}" for s in g.shortcuts}
    return out


# --- the demo opsloop ------------------------------------------------------------------------------------


def demo_data(tmp: Path) -> dict[str, Any]:
    """examples/demo.yml with its policy untouched; storage, the repository and the deploy command moved."""
    data: dict[str, Any] = yaml.safe_load(DEMO.read_text())
    data["storage"] = {"path": str(tmp / "demo.db")}
    data["roles"] = {role: list(members) for role, members in data["roles"].items()}
    data["roles"]["admins"].append(ADMIN)
    data["roles"]["approvers"].append(APPROVER)
    data["roles"]["developers"].append(DEV)
    data["console"]["groups"]["@sre"] = [*data["console"]["groups"]["@sre"], SRE]
    data["console"]["people"].update({"adm": ADMIN, "apr": APPROVER, "sre": SRE, "dev": DEV})
    for svc in data["services"].values():
        svc["repo"] = {"path": str(tmp / "no-repo"), "branch": "main"}
        svc["deploy"]["command"] = ["true", "{service}", "{version}", "{env}"]
    data["environments"]["dev"] = {}
    data["integrations"]["command"] = {"version_file": str(tmp / "versions" / "{service}-{env}")}
    return data


@dataclass
class Decision:
    entry: str
    actor: str
    allowed: bool
    answer: str
    audit: dict[str, Any] | None


@dataclass
class Rig:
    ops: Opsloop
    tmp: Path
    config_file: Path
    decisions: list[Decision]
    people_checked: int = 0  # decisions of the demo's own people, checked against their roles combined


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rig(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    tmp = tmp_path_factory.mktemp("authz")
    data = demo_data(tmp)
    config_file = tmp / "demo.yml"
    config_file.write_text(yaml.safe_dump(data))
    cfg = parse_config(data)
    env = Env.read({"OPSLOOP_CONFIG": str(config_file), "OPSLOOP_DB": str(tmp / "demo.db")})
    out = Console(file=io.StringIO(), width=200, color_system=None)
    ops, _session = await build_console(cfg, env, out=out, pacing=Pacing.unpaced())
    await ops.start()
    rig = Rig(ops, tmp, config_file, [])
    try:
        yield rig
    finally:
        await ops.services.jobs.wait_idle(timeout=30)
        await ops.stop()
        write_figure("authz", render(rig))


async def newest_audit(ops: Opsloop) -> dict[str, Any] | None:
    found = await ops.services.store.read(lambda db: rows(db, "SELECT * FROM audit ORDER BY id DESC LIMIT 1"))
    return found[0] if found else None


async def dispatch(ops: Opsloop, entry: str, actor: str) -> str:
    """Run one entry point as `actor`; the text of the answer ('' when there is none)."""
    router, surface = ops.router, ops.surface
    if entry in LINES:
        reply = await router.command(Invocation(actor, "#ops", LINES[entry], source="console"), surface)
        return reply.message.text
    if entry.startswith("click:"):
        action = entry.removeprefix("click:")
        answer = await router.click(Click(actor, "#ops", action, json.dumps(VALUES[action])), surface)
        return answer.message.text if answer else ""
    if entry.startswith("submit:"):
        callback, values, meta = SUBMITS[entry]
        try:
            answer = await router.submit(Submission(actor, callback, values, json.dumps(meta)), surface, "#ops")
        except SubmitErrors as err:
            return f"form errors: {err}"
        return answer.message.text if answer else ""
    callback = entry.removeprefix("shortcut:")
    call = ShortcutCall(actor, callback, "#ops", "1700000000.000100", "probe text", DAVE, trigger_id="1.2.3")
    answer = await router.shortcut(call, surface)
    return answer.message.text if answer else ""


def audit_action(entry: str) -> str:
    return entry.split(" ", 1)[0]  # "submit:feedback.message_submit as plan" is audited by its callback


@MODULE_LOOP
async def test_the_table_covers_everything_the_router_registers(rig: Rig) -> None:
    table = {audit_action(e) for e in EXPECTED}
    assert table == registry(), (
        f"decide who may use: {sorted(registry() - table)}; no longer registered: {sorted(table - registry())}"
    )
    assert set(LINES) | {f"click:{a}" for a in VALUES} | set(SUBMITS) | {"shortcut:feedback.message"} == set(EXPECTED)


@MODULE_LOOP
@pytest.mark.parametrize("entry", sorted(EXPECTED))
async def test_each_role_is_allowed_or_refused_as_the_table_says(rig: Rig, entry: str) -> None:
    problems = []
    for actor, role in ROLE_PEOPLE.items():
        before = await newest_audit(rig.ops)
        answer = await dispatch(rig.ops, entry, actor)
        await rig.ops.services.jobs.wait_idle(timeout=20)
        row = await newest_audit(rig.ops)
        if row is None or (before is not None and row["id"] == before["id"]):
            problems.append(f"{role}: no audit row")
            rig.decisions.append(Decision(entry, actor, False, answer, None))
            continue
        refused = row["outcome"] == "refused"
        rig.decisions.append(Decision(entry, actor, not refused, answer, row))
        want = actor in EXPECTED[entry]
        if row["actor"] != actor or row["action"] != audit_action(entry):
            problems.append(f"{role}: audit row is {row['actor']} {row['action']}")
        if refused == want:
            problems.append(f"{role}: expected {'allowed' if want else 'refused'}, got {row['outcome']}: {answer!r}")
        if refused:
            # The refusal names the rule and what would allow it, to the user and in the audit log.
            if "rule `" not in answer or "needs the role" not in answer:
                problems.append(f"{role}: refusal does not say why: {answer!r}")
            if row["reason"] is None or row["reason"] not in answer:
                problems.append(f"{role}: audit reason {row['reason']!r} is not what the user read")
    assert not problems, "\n".join(problems)


@MODULE_LOOP
@pytest.mark.parametrize("person", sorted(DEMO_PEOPLE))
async def test_the_demo_people_get_what_their_roles_give(rig: Rig, person: str) -> None:
    name, like = DEMO_PEOPLE[person]
    wrong = []
    for entry in sorted(EXPECTED):
        await dispatch(rig.ops, entry, person)
        await rig.ops.services.jobs.wait_idle(timeout=20)
        row = await newest_audit(rig.ops)
        assert row is not None and row["actor"] == person
        want = any(p in EXPECTED[entry] for p in like)
        rig.people_checked += 1
        if (row["outcome"] != "refused") != want:
            wrong.append(f"{entry}: expected {'allowed' if want else 'refused'}, got {row['outcome']}: {row['reason']}")
    assert not wrong, f"{name}:\n" + "\n".join(wrong)


@MODULE_LOOP
async def test_every_decision_is_in_an_intact_audit_log(rig: Rig) -> None:
    assert rig.decisions, "run the matrix first"
    assert (await rig.ops.services.audit.verify()).ok
    refused = [d for d in rig.decisions if not d.allowed]
    assert refused and all(d.audit and d.audit["reason"] for d in refused)


# --- tampering -------------------------------------------------------------------------------------------


async def _verify(rig: Rig, db: Path) -> tuple[int, str]:
    """`opsloop audit verify` in a subprocess, on `db`."""
    env = {**clean_environ(), "OPSLOOP_CONFIG": str(rig.config_file), "OPSLOOP_DB": str(db)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "audit",
        "verify",
        "--config",
        str(rig.config_file),
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def _edit(c: sqlite3.Connection) -> int:
    first = int(c.execute("SELECT min(id) FROM audit WHERE outcome = 'refused'").fetchone()[0])
    c.execute("UPDATE audit SET outcome = 'ok', reason = NULL WHERE id = ?", (first,))
    return first


def _delete(c: sqlite3.Connection) -> int:
    c.execute("DELETE FROM audit WHERE id = 7")
    return 8


def _swap(c: sqlite3.Connection) -> int:
    # Two neighbours exchange places: each keeps its hashes, the ids say the other order.
    c.execute("UPDATE audit SET id = -1 WHERE id = 10")
    c.execute("UPDATE audit SET id = 10 WHERE id = 11")
    c.execute("UPDATE audit SET id = 11 WHERE id = -1")
    return 10


def _insert_naive(c: sqlite3.Connection) -> int:
    last = c.execute("SELECT max(id), hash FROM audit").fetchone()
    c.execute(
        "INSERT INTO audit (id, at, actor, channel, action, target, outcome, reason, detail, prev_hash, hash)"
        " VALUES (?, 0, 'U0ONLYDEV', '#ops', 'insights.audit', NULL, 'ok', NULL, '{}', ?, ?)",
        (last[0] + 1, last[1], "f" * 64),
    )
    return int(last[0]) + 1


def _append_rehashed(c: sqlite3.Connection) -> int:
    """A forger who knows the scheme appends a correctly chained row (but cannot move the head)."""
    last_id, last_hash = c.execute("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
    fields = {**FORGED, "id": last_id + 1}
    c.execute(INSERT, {**fields, "prev": last_hash, "hash": audit_mod._digest(last_hash, fields)})
    return int(last_id) + 1


FORGED = {
    "id": 0,
    "at": 1.0,
    "actor": NOBODY,
    "channel": "#ops",
    "action": "insights.audit",
    "target": None,
    "outcome": "ok",
    "reason": None,
    "detail": "{}",
}
INSERT = (
    "INSERT INTO audit (id, at, actor, channel, action, target, outcome, reason, detail, prev_hash, hash)"
    " VALUES (:id, :at, :actor, :channel, :action, :target, :outcome, :reason, :detail, :prev, :hash)"
)


def _insert_rehashed(c: sqlite3.Connection) -> int:
    """A forger who knows the scheme: shifts rows 13.. up and writes row 13 with a correct hash."""
    c.execute("UPDATE audit SET id = -id WHERE id >= 13")
    c.execute("UPDATE audit SET id = -id + 1 WHERE id < 0")
    prev = c.execute("SELECT hash FROM audit WHERE id = 12").fetchone()[0]
    fields = {**FORGED, "id": 13}
    c.execute(INSERT, {**fields, "prev": prev, "hash": audit_mod._digest(prev, fields)})
    return 14  # the row after the forged one no longer links


def _cut_end(c: sqlite3.Connection) -> int:
    last = c.execute("SELECT max(id) FROM audit").fetchone()[0]
    c.execute("DELETE FROM audit WHERE id >= ?", (last - 2,))
    return int(last) - 2


TAMPERING = {
    "edit a row (a refusal made to look allowed)": _edit,
    "delete a row": _delete,
    "reorder two rows": _swap,
    "insert a forged row at the end": _insert_naive,
    "append a forged row, hash recomputed": _append_rehashed,
    "insert a forged row in the middle, hash recomputed": _insert_rehashed,
    "cut rows from the end": _cut_end,
}
TAMPER_RESULTS: dict[str, tuple[int, str]] = {}


@MODULE_LOOP
async def test_audit_verify_names_the_first_broken_row(rig: Rig) -> None:
    """Each kind of tampering on its own copy; the copies are verified side by side (the CLI takes a few
    seconds to start on a busy machine)."""
    copies: dict[str, tuple[Path, int]] = {}
    for i, (kind, tamper) in enumerate(TAMPERING.items()):
        copy = rig.tmp / f"tampered-{i}.db"
        # SQLite's backup API: a consistent copy of the live database, write-ahead log included.
        with sqlite3.connect(rig.tmp / "demo.db") as src, sqlite3.connect(copy) as dst:
            src.backup(dst)
        with sqlite3.connect(copy) as c:
            assert c.execute("SELECT count(*) FROM audit").fetchone()[0] > 20
            copies[kind] = (copy, tamper(c))
    untouched = rig.tmp / "untouched.db"
    with sqlite3.connect(rig.tmp / "demo.db") as src, sqlite3.connect(untouched) as dst:
        src.backup(dst)
    runs = await asyncio.gather(_verify(rig, untouched), *(_verify(rig, copy) for copy, _ in copies.values()))
    rc, out = runs[0]
    assert rc == 0 and "audit log intact" in out, out
    problems = []
    for (kind, (_, first_bad)), (rc, out) in zip(copies.items(), runs[1:], strict=True):
        TAMPER_RESULTS[kind] = (rc, out.strip())
        if rc != 1 or f"BROKEN at row {first_bad}:" not in out:
            problems.append(f"{kind}: expected exit 1 naming row {first_bad}; got {rc}: {out}")
    assert not problems, "\n".join(problems)


def render(rig: Rig) -> str:
    entries = sorted({d.entry for d in rig.decisions})
    cell = {(d.entry, d.actor): d for d in rig.decisions}
    refused = sum(1 for d in rig.decisions if not d.allowed)
    lines = [
        "# Authorization matrix and audit tampering (issue 7, figure 7)",
        "",
        provenance("OPSLOOP_RESULTS=1 .venv/bin/python -m pytest tests/reliability/test_authz.py"),
        "",
        f"Policy: examples/demo.yml. {len(entries)} entry points (commands, buttons, forms, shortcuts) × "
        f"{len(ROLE_PEOPLE)} roles = {len(rig.decisions)} decisions checked against the table in the test "
        f"({refused} refused, each with its reason in the answer and in the audit log), plus "
        f"{rig.people_checked} decisions of the demo's {len(DEMO_PEOPLE)} people (several roles each) checked "
        "against their roles combined. Mismatches: 0 (a mismatch fails the test).",
        "",
        "| entry | " + " | ".join(ROLE_PEOPLE.values()) + " |",
        "|---|" + "---|" * len(ROLE_PEOPLE),
    ]
    for e in entries:
        marks = []
        for actor in ROLE_PEOPLE:
            d = cell.get((e, actor))
            marks.append("?" if d is None else ("allowed" if d.allowed else "**refused**"))
        lines.append(f"| `{e}` | " + " | ".join(marks) + " |")
    example = next((d for d in rig.decisions if not d.allowed), None)
    if example:
        lines += ["", f"A refusal as the user reads it: {md_cell(example.answer, 300)}"]
    lines += [
        "",
        "## `opsloop audit verify` on tampered copies",
        "",
        "| tampering | exit | what it said |",
        "|---|---|---|",
    ]
    for kind, (rc, out) in TAMPER_RESULTS.items():
        lines.append(f"| {kind} | {rc} | {md_cell(out, 200)} |")
    return "\n".join(lines) + "\n"
