"""Issue 7, figure 3: SIGKILL at random moments, restart, and nothing is lost, doubled or left unsaid.

A real `opsloop run` process serves the Slack emulator; the Kubernetes and Jenkins emulators live in
this process, so they (and Slack) outlive every opsloop and remember what really happened. Each cycle
picks one kind of activity, starts it, SIGKILLs opsloop after a random delay (seeded), starts it again,
and finishes the activity the way people and tools would (a click that got no answer is clicked again;
Alertmanager sends a webhook again until it is answered). Then it checks:

* approvals: every click that was answered counts on the card; one deploy per request (PATCHes of
  that image in the Kubernetes emulator);
* rollouts and build watches: the same card ends with the result; a job that was running when opsloop
  died says in its thread that it was picked up again (or, if it cannot be, that it was interrupted);
  one build in Jenkins per `build` command;
* alert storms: every alert whose webhook was answered is stored once, one card per group;
* outbox delivery: every answered `plan new` has exactly one card.

`OPSLOOP_KILLS` cycles (5 in `make test`; `python -m bench.crashes` runs 50 and writes the figure).
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import random
import re
import sqlite3
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.emulators.jenkins import BuildScript, JenkinsEmulator
from tests.emulators.kubernetes import KubernetesEmulator
from tests.emulators.slack import SlackEmulator
from tests.reliability.hooks import HOOK_TOKEN, fingerprint, notification, notify
from tests.reliability.test_restart import Proc
from tests.support import ALICE, BOB, CAROL, DAVE, config_data, find_button, slack_workspace

pytestmark = pytest.mark.slow

KILLS = int(os.environ.get("OPSLOOP_KILLS", "5"))
SEED = int(os.environ.get("OPSLOOP_SEED", "20261126"))
WRITE_RESULTS = os.environ.get("OPSLOOP_RESULTS") == "1"  # read now: each test's environment is cleaned
RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "crashes.md"
IMAGE = "registry.example.com/shop/api"
VERSIONS = ("1.1.0", "1.2.0", "1.3.0")
APR = "C0APR"
OPS = "C0OPS"
SCENARIOS = ("approval", "rollout", "build watch", "alert storm", "outbox delivery")


def config(kubeconfig: Path, jenkins: JenkinsEmulator) -> dict[str, Any]:
    return config_data(
        "opsloop.db",
        roles={"admins": [ALICE], "approvers": [CAROL, DAVE], "deployers": [BOB, ALICE], "developers": [ALICE, BOB]},
        permissions={"plan.*": ["developers"], "deploy.*": ["deployers"]},
        services={
            "api": {
                "deploy": {
                    "target": "kubernetes",
                    "namespace": "shop",
                    "deployment": "api",
                    "container": "api",
                    "image": IMAGE,
                    "timeout": "2m",
                },
                "build": {"ci": "jenkins", "job": "api-build"},
            }
        },
        environments={
            "staging": {},
            "prod": {"approvals": {"required": 2, "from": "approvers", "expire_after": "30m"}, "bake": {"minutes": 0}},
        },
        integrations={
            "kubernetes": {"kubeconfig": str(kubeconfig), "context": "emulator", "timeout": "5s"},
            "jenkins": {"url": jenkins.url, "user": jenkins.user, "token_env": "T_JENKINS_TOKEN", "poll": 0.2},
        },
        # A storm here is many alerts at once on purpose; the digest is figure 9's subject.
        alerts={"storm": {"groups_per_minute": 100_000}},
    )


@dataclass
class Cycle:
    scenario: str
    delay: float
    running_jobs: list[dict[str, Any]]
    restart_s: float
    problems: list[str]


@dataclass
class Crashes:
    """The world the cycles act on, and what they counted."""

    p: Proc
    emu: SlackEmulator
    k8s: KubernetesEmulator
    jenkins: JenkinsEmulator
    tmp: Path
    rng: random.Random
    cycles: list[Cycle] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    n: int = 0
    patch_mark: int = 0  # PATCHes of the Deployment before this cycle's deploy

    # --- talking to opsloop as Slack and Alertmanager do; None when opsloop died before answering

    async def command(self, text: str, user: str) -> int | None:
        try:
            res = await self.emu.send_command(self.p.url, text, user_id=user, timeout=10)
        except (aiohttp.ClientError, TimeoutError):
            return None
        return res.status

    async def click(self, channel: str, ts: str, label: str, user: str) -> int | None:
        el = find_button(self.emu.message(channel, ts).blocks, label)
        try:
            res = await self.emu.send_action(
                self.p.url,
                user_id=user,
                action_id=el["action_id"],
                value=el["value"],
                channel_id=channel,
                message_ts=ts,
                timeout=10,
            )
        except (aiohttp.ClientError, TimeoutError):
            return None
        return res.status

    async def alert(self, name: str) -> int | None:
        try:
            return await notify(self.p.hooks, notification(name, "api"))
        except (aiohttp.ClientError, TimeoutError):
            return None

    # --- reading what happened

    def db(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        """Read opsloop's database (between a kill and a restart, or while it runs: WAL readers are fine)."""
        con = sqlite3.connect(f"file:{self.tmp / 'opsloop.db'}?mode=ro", uri=True, timeout=10)
        con.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in con.execute(sql, params)]
        finally:
            con.close()

    def patches_to(self, version: str) -> int:
        """PATCHes of the Deployment setting this version's image since the cycle's deploy was requested:
        the deploys that really happened."""
        image = f"{IMAGE}:{version}"
        patches = self.k8s.requests_to("/deployments/api", "PATCH")[self.patch_mark :]
        return sum(image in json.dumps(r.body) for r in patches)

    def text(self, channel: str, ts: str) -> str:
        msg = self.emu.message(channel, ts)
        return msg.text + json.dumps(msg.blocks, ensure_ascii=False)

    def thread(self, channel: str, ts: str) -> str:
        return "\n".join(m.text for m in self.emu.replies(channel, ts))


async def until(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


# --- the activities: each runs `act` with a kill somewhere inside, then `finish` after the restart ----------


async def crash_during(c: Crashes, scenario: str, act: Awaitable[Any], window: float) -> Cycle:
    """Run `act`, SIGKILL opsloop after a random part of `window`, note the jobs it left running, restart."""
    delay = c.rng.uniform(0.0, window)
    task = asyncio.ensure_future(act)
    await asyncio.sleep(delay)
    await c.p.kill()
    try:
        await asyncio.wait_for(task, 15)
    except TimeoutError:
        pass
    running = c.db("SELECT * FROM jobs WHERE state = 'running'")
    started = time.monotonic()
    await c.p.start()
    cycle = Cycle(scenario, delay, running, time.monotonic() - started, [])
    c.cycles.append(cycle)
    return cycle


async def approval(c: Crashes) -> None:
    version = await request_deploy(c)
    card = await deploy_card(c, version)
    answered: dict[str, int | None] = {}

    async def clicks() -> None:
        for user in (CAROL, DAVE):
            answered[user] = await c.click(APR, card.ts, "Approve", user)

    cycle = await crash_during(c, "approval", clicks(), 0.6)
    for user in (CAROL, DAVE):
        if answered.get(user) != 200:  # no answer: the person clicks again
            assert await c.click(APR, card.ts, "Approve", user) == 200
    await finish_deploy(c, cycle, card, version)
    text = c.text(APR, card.ts)
    for user in (CAROL, DAVE):
        if f"<@{user}> ✅" not in text:
            cycle.problems.append(f"approval of {user} lost on the card")
    c.counts["approvals"] += 2


async def rollout(c: Crashes) -> None:
    version = await request_deploy(c)
    card = await deploy_card(c, version)
    for user in (CAROL, DAVE):
        assert await c.click(APR, card.ts, "Approve", user) == 200

    async def rolling() -> None:
        await until(lambda: c.patches_to(version) >= 1, 20, "the rollout to start")

    cycle = await crash_during(c, "rollout", rolling(), 2.0)
    await finish_deploy(c, cycle, card, version)


async def request_deploy(c: Crashes) -> str:
    current = c.k8s.image("shop", "api").rsplit(":", 1)[1]
    version = c.rng.choice([v for v in VERSIONS if v != current])
    c.patch_mark = len(c.k8s.requests_to("/deployments/api", "PATCH"))
    assert await c.command(f"deploy api {version} to prod", BOB) == 200
    return version


async def deploy_card(c: Crashes, version: str) -> Any:
    def card() -> Any:
        found = [m for m in c.emu.top_level(APR) if m.text.startswith(f"Deploy api {version} → prod")]
        return found[-1] if found and "waiting for approval" in found[-1].text else None

    await until(lambda: card() is not None, 20, f"the card of {version}")
    return card()


async def finish_deploy(c: Crashes, cycle: Cycle, card: Any, version: str) -> None:
    try:
        await until(lambda: "✅ done" in c.emu.message(APR, card.ts).text, 60, f"deploy of {version} to finish")
    except AssertionError:
        releases = c.db("SELECT id, version, state, started_at, progress FROM releases ORDER BY id DESC LIMIT 2")
        jobs = c.db("SELECT id, kind, key, state, error, attempts FROM jobs ORDER BY id DESC LIMIT 3")
        raise AssertionError(
            f"deploy of {version} did not finish (killed {cycle.delay:.2f} s in; running then: "
            f"{[j['kind'] for j in cycle.running_jobs]}); card: {c.text(APR, card.ts)[:600]}; "
            f"thread: {c.thread(APR, card.ts)}; releases: {releases}; jobs: {jobs}"
        ) from None
    await until(lambda: c.k8s.rollout_complete("shop", "api"), 30, "the cluster to settle")
    if c.patches_to(version) != 1:
        cycle.problems.append(f"{c.patches_to(version)} PATCHes of {version} (one deploy expected)")
    c.counts["deploys"] += 1
    if any(j["kind"] == "deploy.run" for j in cycle.running_jobs):
        await until(lambda: "restarted" in c.thread(APR, card.ts), 20, "the deploy thread to say it was resumed")
        c.counts["reconciled jobs"] += 1


async def build_watch(c: Crashes) -> None:
    before = len(builds_triggered(c))

    def cards() -> list[Any]:
        return [m for m in c.emu.top_level(OPS) if m.text.startswith("Build api")]

    seen = len(cards())
    assert await c.command("build api", ALICE) == 200
    await until(lambda: len(cards()) > seen, 20, "the build card")
    card = cards()[-1]

    async def watching() -> None:
        await asyncio.sleep(3)

    cycle = await crash_during(c, "build watch", watching(), 2.5)

    def ended() -> bool:
        text = c.text(OPS, card.ts)
        return "success" in text or "restarted while starting" in text

    await until(ended, 30, "the build card to end")
    triggered = len(builds_triggered(c)) - before
    if triggered > 1:
        cycle.problems.append(f"{triggered} builds started for one command")
    if any(j["kind"] == "build.watch" for j in cycle.running_jobs) and "restarted while starting" not in c.text(
        OPS, card.ts
    ):
        await until(lambda: "restarted" in c.thread(OPS, card.ts), 20, "the build thread to say it was resumed")
        c.counts["reconciled jobs"] += 1
    c.counts["builds"] += 1


def builds_triggered(c: Crashes) -> list[Any]:
    return [r for r in c.jenkins.requests if r.method == "POST" and r.path.endswith(("/build", "/buildWithParameters"))]


async def alert_storm(c: Crashes) -> None:
    names = [f"Storm{c.n}x{i}" for i in range(c.rng.randint(5, 15))]
    answered: dict[str, int | None] = {}

    async def storm() -> None:
        async def one(name: str) -> None:
            answered[name] = await c.alert(name)

        await asyncio.gather(*(one(n) for n in names))

    cycle = await crash_during(c, "alert storm", storm(), 0.5)
    for name in names:  # Alertmanager sends a notification again until it is answered
        if answered.get(name) not in (200, 202):
            assert await c.alert(name) in (200, 202)

    def carded(name: str) -> int:
        return sum(bool(re.search(rf"\b{name}\b", m.text)) for m in c.emu.top_level(OPS) if m.bot_id)

    try:
        # Cards go out at Slack's pace (about one post a second per channel): allow for all of them.
        await until(lambda: all(carded(n) >= 1 for n in names), 30 + 2 * len(names), "a card for every alert")
    except AssertionError:
        missing = [n for n in names if not carded(n)]
        groups = [g for g in c.db("SELECT * FROM alert_groups") if g["title"] in missing]
        outbox = c.db("SELECT id, ref_key, state, attempts, error FROM outbox WHERE ref_key LIKE 'alerts:%'")
        raise AssertionError(f"no card for {missing}; groups: {groups}; outbox: {outbox}; sent: {answered}") from None
    stored = Counter(r["fingerprint"] for r in c.db("SELECT fingerprint FROM alerts"))
    for name in names:
        if stored[fingerprint(name)] != 1:
            cycle.problems.append(f"alert {name} stored {stored[fingerprint(name)]} times")
        if carded(name) != 1:
            cycle.problems.append(f"alert {name} has {carded(name)} cards")
    c.counts["alerts"] += len(names)


async def outbox_delivery(c: Crashes) -> None:
    titles = [f"Crash item {c.n}.{i}" for i in range(c.rng.randint(3, 8))]
    answered: dict[str, int | None] = {}
    # Slack carries a post out, then answers late: a kill then leaves opsloop unsure it was posted.
    c.emu.slow("chat.postMessage", c.rng.uniform(0.0, 0.6), process_first=True)

    async def commands() -> None:
        for title in titles:
            answered[title] = await c.command(f'plan new "{title}"', ALICE)

    cycle = await crash_during(c, "outbox delivery", commands(), 1.5)
    c.emu.clear_faults()

    def cards(title: str) -> int:
        return sum(m.text.endswith(f": {title}") for m in c.emu.top_level(OPS))

    acked = [t for t in titles if answered.get(t) == 200]
    await until(lambda: all(cards(t) >= 1 for t in acked), 30, "a card for every answered command")
    await asyncio.sleep(0.5)  # a duplicate would arrive now
    for title in titles:
        if cards(title) > 1 or (title in acked and cards(title) != 1):
            cycle.problems.append(f"{title!r}: {cards(title)} cards (answered: {title in acked})")
    c.counts["messages"] += len(acked)


async def other_jobs_said(c: Crashes, cycle: Cycle) -> None:
    """A running job of any other kind must not stay `running`; if it was given up, its thread says so."""
    for job in cycle.running_jobs:
        if job["kind"] in ("deploy.run", "build.watch"):
            continue
        [now] = c.db("SELECT * FROM jobs WHERE id = ?", (job["id"],))
        if now["state"] == "running":
            cycle.problems.append(f"job {job['kind']} {job['key']} still running after the restart")
        elif now["state"] == "interrupted":
            said = f"`{job['kind']}` for `{job['key']}` was interrupted"
            channel = c.emu.messages(job["channel"]) if job["channel"] else []
            if not any(said in m.text for m in channel):
                cycle.problems.append(f"job {job['kind']} {job['key']} interrupted without a word")
            c.counts["reconciled jobs"] += 1


SCENARIO: dict[str, Callable[[Crashes], Awaitable[None]]] = {
    "approval": approval,
    "rollout": rollout,
    "build watch": build_watch,
    "alert storm": alert_storm,
    "outbox delivery": outbox_delivery,
}


async def run_crashes(tmp: Path, kills: int, seed: int) -> Crashes:
    """`kills` cycles of activity, SIGKILL and restart against fresh emulators; the counts and problems."""
    async with (
        SlackEmulator(enforce_rate_limits=False) as emu,
        KubernetesEmulator(tick_interval=0.25) as k8s,
        JenkinsEmulator() as jenkins,
    ):
        slack_workspace(emu)
        k8s.add_deployment("shop", "api", f"{IMAGE}:1.1.0", replicas=3)
        jenkins.add_job("api-build", script=BuildScript(duration=2.0, log=["compiling\n", "testing\n", "done\n"]))
        kubeconfig = k8s.kubeconfig(tmp / "kubeconfig", context="emulator")
        environ = {"T_JENKINS_TOKEN": jenkins.token, "OPSLOOP_WEBHOOK_TOKEN": HOOK_TOKEN}
        p = Proc(tmp, emu, config(kubeconfig, jenkins), environ)
        c = Crashes(p, emu, k8s, jenkins, tmp, random.Random(seed))
        try:
            await p.start()
            order = [SCENARIOS[i % len(SCENARIOS)] for i in range(kills)]
            c.rng.shuffle(order)
            for i, scenario in enumerate(order):
                c.n = i
                try:
                    await SCENARIO[scenario](c)
                except AssertionError as err:  # a stuck activity: note it, and stop (what follows would wait too)
                    if c.cycles and c.cycles[-1].scenario == scenario and len(c.cycles) == i + 1:
                        c.cycles[-1].problems.append(str(err))
                    else:
                        c.cycles.append(Cycle(scenario, 0.0, [], 0.0, [str(err)]))
                    break
                await other_jobs_said(c, c.cycles[-1])
        finally:
            await p.stop()
        return c


def render(c: Crashes, kills: int, seed: int, command: str) -> str:
    load = os.getloadavg()
    by = Counter(cy.scenario for cy in c.cycles)
    restarts = sorted(cy.restart_s for cy in c.cycles)
    problems = [f"{cy.scenario}: {p}" for cy in c.cycles for p in cy.problems]
    jobs = Counter(j["kind"] for cy in c.cycles for j in cy.running_jobs)
    running = ", ".join(f"{k}: {v}" for k, v in sorted(jobs.items()))
    lines = [
        "# Crashes (issue 7, figure 3)",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} CPUs, "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}. Seed {seed}. Reproduce: `{command}`.",
        "",
        f"{len(c.cycles)} SIGKILLs of `opsloop run`, each followed by a restart: "
        + ", ".join(f"{n} during {s}" for s, n in sorted(by.items()))
        + ".",
        "",
        "| checked | count |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in sorted(c.counts.items())),
        f"| jobs running at a kill | {sum(jobs.values())} ({running}) |",
        f"| problems (lost, doubled, unsaid) | {len(problems)} |",
        "",
        f"Restart to healthy: median {restarts[len(restarts) // 2]:.2f} s, max {restarts[-1]:.2f} s (a figure, "
        "not a bar)."
        if restarts
        else "",
    ]
    lines += [f"- {p}" for p in problems]
    return "\n".join(lines) + "\n"


async def test_random_sigkills_lose_nothing_double_nothing_and_say_so(tmp_path: Path) -> None:
    c = await run_crashes(tmp_path, KILLS, SEED)
    if WRITE_RESULTS:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        cmd = f"OPSLOOP_RESULTS=1 OPSLOOP_KILLS={KILLS} .venv/bin/python -m pytest tests/reliability/test_crashes.py"
        RESULTS.write_text(render(c, KILLS, SEED, cmd))
    assert [f"{cy.scenario}: {p}" for cy in c.cycles for p in cy.problems] == []
    assert len(c.cycles) == KILLS
