"""Fuzzing with hypothesis (issue 7, figure 6): commands, button values, modal submits and webhooks.

Everything goes through the real router and the real web app of one opsloop (console directory, a
transport that checks every Block Kit payload it is handed, tools configured at addresses where
nothing listens, a real git repository), in-process:

(a) the command grammar: arbitrary text, quotes, Slack escapes, huge inputs, every command's words
    followed by random tokens -> always a reply, never "Something went wrong on my side";
(b) every registered button with random and malformed values -> an answer with a reason;
(c) every registered modal submit with random values and private_metadata -> the same;
(d) every `/hooks/*` source with random and structurally mutated JSON (from valid payloads) -> never
    a 5xx, a 4xx always with a message, a 2xx stores the whole delivery and a 4xx stores nothing.

"No crash" means: no reply of the internal-error kind, no ERROR log record from opsloop's code (the
router, jobs, the outbox, the web layer), and every rendered message, reply and modal is valid Block
Kit. An AdapterError (a tool that is down) is an answer, not a crash.

The number of examples comes from the hypothesis profile named by OPSLOOP_FUZZ (`ci`, the default,
keeps the file under a minute; `soak` runs over 100,000 examples: `make fuzz`). With
OPSLOOP_FUZZ_REPORT=FILE the counts per fuzzer and every failure are written to FILE (Markdown).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import platform
import subprocess
import time
from collections import Counter
from collections.abc import Coroutine, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given, settings
from hypothesis import strategies as st

from bot import rendering
from bot import views as v
from bot.app import GROUPS, Opsloop, build
from bot.console import ConsoleDirectory
from bot.context import Quoted
from bot.outbox import Pacing
from bot.router import Click, Invocation, Submission, SubmitErrors
from bot.store import rows
from bot.web import build_web_app
from tests.adapters.test_nagios import payload as nagios_payload
from tests.emulators.grafana import DOCS_EXAMPLE as GRAFANA_EXAMPLE
from tests.emulators.slack import validate_blocks, validate_view
from tests.emulators.splunk import DOCS_EXAMPLE as SPLUNK_EXAMPLE
from tests.support import ALICE, BOB, CAROL, DAVE, EVE, config_data, free_port, make_config, make_env

T = TypeVar("T")

PROFILE = os.environ.get("OPSLOOP_FUZZ", "ci")
REPORT = os.environ.get("OPSLOOP_FUZZ_REPORT")
FUZZ = settings.get_profile(PROFILE)
HOOK_TOKEN = "fuzz-hook-token"
INTERNAL = "Something went wrong on my side"

# How the profile's max_examples is shared out: weight per fuzzer (the soak run multiplies them out to
# well over 100,000 examples in total).
WEIGHTS = {
    "commands_anything": 1.0,
    "commands_by_words": 2.0,
    "commands_huge": 0.25,
    "buttons": 2.0,
    "buttons_shaped": 1.0,
    "submits": 1.0,
    "hooks_mutated": 1.5,
    "hooks_random": 0.5,
}

COUNTS: Counter[str] = Counter()
HUGE_SECONDS: list[float] = []  # how long each huge command took to answer
FAILURES: dict[str, list[str]] = {}


def fuzz_settings(name: str) -> settings:
    return settings(FUZZ, max_examples=max(1, int(FUZZ.max_examples * WEIGHTS[name])))


def fail(fuzzer: str, what: str, given_input: Any) -> None:
    """Record a failure (for the report) and fail the example (so hypothesis shrinks it)."""
    FAILURES.setdefault(fuzzer, []).append(f"{what} <- {given_input!r:.600}")
    raise AssertionError(f"{fuzzer}: {what}\ninput: {given_input!r:.2000}")


# --- the opsloop under test ---------------------------------------------------------------------------------


class _Errors(logging.Handler):
    """ERROR records of opsloop's own loggers: each one is a crash somewhere."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.split(".")[0] in ("bot", "handlers", "adapters"):
            self.records.append(record)

    def take(self) -> list[str]:
        out = []
        for r in self.records:
            exc = r.exc_info[1] if r.exc_info else None
            out.append(f"{r.name}: {r.getMessage()}" + (f" [{type(exc).__name__}: {exc}]" if exc else ""))
        self.records.clear()
        return out


class CheckingTransport:
    """The outbox's delivery: checks every payload against Slack's Block Kit rules, keeps nothing else."""

    paced = False

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.delivered = 0
        self._ts = 0

    def _check(self, payload: dict[str, Any], what: str) -> None:
        self.delivered += 1
        errors = validate_blocks(payload.get("blocks", []))
        if not str(payload.get("text", "")).strip() and not payload.get("blocks"):
            errors.append("empty message")
        if errors:
            self.problems.append(f"{what}: {errors[:3]} in {json.dumps(payload)[:400]}")

    async def post(
        self, channel: str, payload: dict[str, Any], *, thread_ts: str | None, marker: str
    ) -> tuple[str, str]:
        self._check(payload, "post")
        self._ts += 1
        return channel, f"{1700000000 + self._ts}.000100"

    async def update(self, channel: str, ts: str, payload: dict[str, Any]) -> None:
        self._check(payload, "update")

    async def ephemeral(self, channel: str, user: str, payload: dict[str, Any], *, thread_ts: str | None) -> None:
        self._check(payload, "ephemeral")

    async def publish_home(self, user: str, view: dict[str, Any]) -> None:
        errors = validate_view(view, surface="home")
        if errors:
            self.problems.append(f"home: {errors[:3]}")

    async def respond(self, url: str, payload: dict[str, Any]) -> None:
        self._check(payload, "respond")

    async def upload(self, channel: str, payload: dict[str, Any], *, thread_ts: str | None) -> None:
        self.delivered += 1

    async def find_posted(
        self, channel: str, thread_ts: str | None, marker: str, since: float
    ) -> tuple[str, str] | None:
        return None

    async def pin(self, channel: str, ts: str, *, pinned: bool) -> None:
        self.delivered += 1

    async def channel_id(self, channel: str) -> str:
        return channel


class CheckingSurface:
    """Modals are rendered and checked, then forgotten; no message can be read back."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.opened: list[v.Modal] = []

    async def open_modal(self, trigger_id: str | None, modal: v.Modal, *, user: str, channel: str) -> None:
        try:
            errors = validate_view(rendering.modal(modal), surface="modal")
        except ValueError as err:
            errors = [str(err)]
        if errors:
            self.problems.append(f"modal {modal.callback}: {errors[:3]}")
        self.opened.append(modal)
        del self.opened[:-20]

    async def quote(self, channel: str, ts: str) -> Quoted | None:
        return None


def _git_repo(path: Path) -> None:
    def git(*args: str) -> None:
        subprocess.run(
            ["git", "-c", "user.name=Dev", "-c", "user.email=dev@example.com", *args],
            cwd=path,
            check=True,
            capture_output=True,
        )

    path.mkdir()
    git("init", "-q", "-b", "main")
    for i, tag in enumerate(("v1.0.0", "v1.1.0", "v1.2.0")):
        (path / "app.py").write_text(f"VERSION = {i}\n")
        (path / f"mod{i}.py").write_text("x = 1\n")
        git("add", ".")
        git("commit", "-q", "-m", f"OPS-{i + 1}: change {i}")
        git("tag", tag)


def fuzz_config(tmp: Path) -> dict[str, Any]:
    """The demo's people and policy, a service with every kind of tool, and tools nobody answers for."""
    _git_repo(tmp / "repo")
    dead = f"http://127.0.0.1:{free_port()}"  # connection refused, at once
    data = config_data(tmp / "opsloop.db")
    data["channels"]["alerts"] = "#alerts"
    data["permissions"].update({"deploy.*": ["developers"], "monitor.*": ["developers", "approvers"]})
    data["services"] = {
        "api": {
            "channel": "#team-api",
            "repo": {"path": str(tmp / "repo"), "branch": "main", "ticket_url": "https://jira.example/browse/{key}"},
            "build": {"ci": "jenkins", "job": "shop/api-build"},
            "deploy": {"target": "command", "command": ["true", "{service}", "{version}", "{env}"], "timeout": "20s"},
            "alerts": {"match": {"service": "api"}},
        },
        "web": {"channel": "#team-web"},
    }
    data["environments"] = {
        "staging": {},
        "prod": {
            "approvals": {"required": 1, "from": "approvers", "expire_after": "30m"},
            "requires": {"passed_in": ["staging"]},
            "break_glass": ["admins"],
        },
    }
    data["integrations"] = {
        "command": {"version_file": str(tmp / "versions" / "{service}-{env}")},
        "jenkins": {"url": dead, "user": "bot", "timeout": "2s"},
        "prometheus": {"url": dead, "timeout": "2s"},
        "alertmanager": {"url": dead, "timeout": "2s"},
        "grafana": {"url": dead, "timeout": "2s", "panels": {"latency": "abc/2"}},
        "splunk": {"url": dead, "timeout": "2s"},
        "nagios": {"command_file": str(tmp / "nagios.cmd"), "status_file": str(tmp / "status.dat")},
    }
    data["feedback"] = {"reactions": {"bulb": "feedback", "bug": "ticket"}}
    return data


class Rig:
    """One opsloop on its own event loop; examples run on it one at a time."""

    def __init__(self, tmp: Path) -> None:
        (tmp / "versions").mkdir(parents=True, exist_ok=True)
        self.tmp = tmp
        self.runner = asyncio.Runner()
        self.errors = _Errors()
        logging.getLogger().addHandler(self.errors)
        self.transport = CheckingTransport()
        self.surface = CheckingSurface()
        self.ops: Opsloop = self.run(self._build(fuzz_config(tmp)))
        self.client: TestClient[Any, Any] = self.run(self._client())
        self.seeded: dict[str, list[Any]] = {}

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.runner.run(coro)

    async def _build(self, data: dict[str, Any]) -> Opsloop:
        cfg = make_config(data["storage"]["path"], **{k: val for k, val in data.items() if k != "storage"})
        env = make_env(self.tmp, OPSLOOP_WEBHOOK_TOKEN=HOOK_TOKEN)
        ops = await build(
            cfg,
            env,
            transport=self.transport,
            directory=ConsoleDirectory(cfg),
            surface=self.surface,
            pacing=Pacing.unpaced(),
        )
        await ops.start()
        return ops

    async def _client(self) -> TestClient[Any, Any]:
        app = build_web_app(self.ops.router, self.ops.services, webhook_token=HOOK_TOKEN)
        client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1", port=0))
        await client.start_server()
        return client

    def problems(self) -> list[str]:
        """Crashes seen since the last call: error logs, invalid payloads, invalid modals."""
        out = self.errors.take() + self.transport.problems + self.surface.problems
        self.transport.problems.clear()
        self.surface.problems.clear()
        return out

    def close(self) -> None:
        async def down() -> None:
            await self.client.close()
            try:
                await self.ops.services.jobs.wait_idle(timeout=20)
            except TimeoutError:
                pass
            await self.ops.stop()

        try:
            self.run(down())
        finally:
            self.runner.close()
            logging.getLogger().removeHandler(self.errors)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    with pytest.MonkeyPatch.context() as mp:
        for k in list(os.environ):
            if k.startswith(("SLACK_", "OPSLOOP_")) or k.lower().endswith("_proxy"):
                mp.delenv(k)
        r = Rig(tmp_path_factory.mktemp("fuzz"))
        r.run(_seed(r))
        r.problems()
        try:
            yield r
        finally:
            r.close()


PEOPLE = [ALICE, BOB, CAROL, DAVE, EVE, "U0NOBODY"]
CHANNELS = ["#ops", "#team-api", "#alerts", "C0OPS", "D0DM"]


async def _seed(r: Rig) -> None:
    """Things for buttons to point at: plan items, feedback, alert groups, an approval, a release."""
    router, s = r.ops.router, r.ops.services

    async def say(text: str, who: str = ALICE) -> str:
        reply = await router.command(Invocation(who, "#ops", text, source="console"), r.surface)
        return reply.message.text

    await say('plan new "Seeded item"')
    await say('plan new "Critical seeded item" critical')
    await say("plan done OPS-2")  # an approval waits
    await say('feedback "Seeded feedback"')
    await say("deploy api v1.1.0 to staging", DAVE)
    for source, body in VALID_HOOKS.items():
        if source != "jenkins":
            await r.client.post(f"/hooks/{source}", json=body, headers={"Authorization": f"Bearer {HOOK_TOKEN}"})
    await s.jobs.wait_idle(timeout=30)
    await s.outbox.drain(timeout=30)
    ids = await s.store.read(
        lambda db: {
            "group": [x["id"] for x in rows(db, "SELECT id FROM alert_groups")],
            "approval": [x["id"] for x in rows(db, "SELECT id FROM approvals")],
            "release": [x["id"] for x in rows(db, "SELECT id FROM releases")],
            "feedback": [x["id"] for x in rows(db, "SELECT id FROM feedback")],
        }
    )
    r.seeded = ids


# --- (a) the command grammar ----------------------------------------------------------------------------------

SPECS = [s for g in GROUPS for s in g.commands]
WORDS = sorted({" ".join(s.words) for s in SPECS})
VOCABULARY = sorted(
    {w for s in SPECS for w in s.words}
    | {ch for s in SPECS for p in s.params for ch in p.choices}
    | {p.name for s in SPECS for p in s.params}
    | {"api", "web", "nope", "staging", "prod", "dev", "to", "force", "all", "mine", "open", "critical"}
)

_slack_id = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=1, max_size=11)
_label = st.text(st.characters(blacklist_characters=">"), max_size=20)
_numbers = st.one_of(
    st.integers(-(10**30), 10**30).map(str),
    st.integers(0, 5).map(str),
    st.sampled_from(["0", "-0", "+1", "1e9", "1_000", "١٢", "0x10", "#3", "#-1", "#", "9" * 40, "nan", "inf"]),
)
_durations = st.one_of(
    st.sampled_from(["1h", "30m", "2h30m", "1d", "0s", "-1h", "1w", "99999999999d", "1e3h", "h", "10", "1.5h"]),
    st.builds(lambda n, u: f"{n}{u}", st.integers(-(10**20), 10**20), st.sampled_from(["s", "m", "h", "d", "w", "y"])),
)
_versions = st.one_of(
    st.sampled_from(["v1.0.0", "v1.1.0", "v1.2.0", "1.2.0", "HEAD", "main", "HEAD~1", "v9.9.9", "--help"]),
    st.sampled_from(["--upload-pack=touch /tmp/pwned", "-c", "../../etc/passwd", "v1.0.0^{tree}", "@{-1}", ":/x"]),
    st.builds(lambda a, b: f"{a}..{b}", st.sampled_from(["v1.0.0", "HEAD", "", "x", "-p", "v9"]), st.text(max_size=8)),
)
_tokens = st.one_of(
    st.sampled_from(VOCABULARY),
    st.sampled_from(WORDS),
    st.text(max_size=12).filter(lambda t: t.strip() != ""),
    st.text(st.characters(), min_size=1, max_size=30),
    st.builds(
        lambda q, t, e: f"{q}{t}{e}",
        st.sampled_from(['"', "“", "”", "„"]),
        st.text(max_size=20),
        st.sampled_from(['"', "”", "“", ""]),
    ),
    st.builds(
        lambda i, n: f"<@{i}|{n}>" if n else f"<@{i}>", st.from_regex(r"[UW][A-Z0-9]{1,11}", fullmatch=True), _label
    ),
    st.sampled_from(
        [f"<@{p}>" for p in PEOPLE] + ["@alice", "@bob", "@carol", "@eve", "@ghost", "@", "@@", "<@>", "<@U"]
    ),
    st.builds(lambda i, n: f"<#C{i}|{n}>", _slack_id, _label),
    st.builds(lambda n: f"<!subteam^S0SRE|{n}>", _label),
    st.sampled_from(["<!here>", "<!channel>", "<!everyone>", "<!date^1392734382^{date}|Feb 18>", "<>", "<<>>", "<|>"]),
    st.builds(
        lambda u, lab: f"<{u}|{lab}>" if lab else f"<{u}>",
        st.sampled_from(
            [
                "https://jira.example/browse/OPS-1",
                "https://trello.com/c/AbCdEfGh/1-x",
                "https://app.asana.com/0/1/1234567890123/f",
                "http://x",
                "mailto:a@b.c",
                "https://example.com/" + "a" * 300,
            ]
        ),
        _label,
    ),
    st.builds(
        lambda k, val: f"{k}={val}", st.from_regex(r"[A-Za-z_][\w.\-]{0,8}", fullmatch=True), st.text(max_size=10)
    ),
    st.builds(
        lambda p, n: f"{p}-{n}", st.sampled_from(["OPS", "ops", "X", "ABCDEFGHIJK", "1"]), st.integers(-5, 10**25)
    ),
    _numbers,
    _durations,
    _versions,
    st.sampled_from(['alertname="X"', 'service=~"api|web"', "a!=b", "x=~(", "=", 'a="', "up{job='x'}", "rate(x[5m])"]),
)
_space = st.sampled_from([" ", "  ", "\t", "\n", "\u00a0", "\u3000", " \u200b "])


@st.composite
def command_lines(draw: st.DrawFn) -> str:
    words = draw(st.sampled_from(WORDS))
    if draw(st.booleans()):
        words = "".join(ch.upper() if draw(st.booleans()) else ch for ch in words)
    parts = [words, *draw(st.lists(_tokens, max_size=8))]
    return "".join(p + draw(_space) for p in parts).strip() if draw(st.booleans()) else " ".join(parts)


def _reply_problems(reply: v.Reply | None, *, required: bool = False) -> list[str]:
    """What is wrong with an answer: none at all (when one is due), the internal-error apology, no text,
    invalid Block Kit."""
    if reply is None:
        return ["no reply"] if required else []
    out = []
    if INTERNAL in reply.message.text:
        out.append(f"internal error: {reply.message.text}")
    payload = rendering.reply(reply)
    if not payload["text"].strip():
        out.append("a reply without text")
    errors = validate_blocks(payload["blocks"])
    if errors:
        out.append(f"invalid Block Kit in the reply: {errors[:3]}")
    return out


def _before(r: Rig) -> None:
    """Problems nobody has claimed yet come from background work (jobs, the outbox) of earlier examples:
    they are failures too, reported at the end (test_report), not blamed on this example."""
    late = r.problems()
    if late:
        FAILURES.setdefault("background", []).extend(late)


def _after(r: Rig, fuzzer: str, given_input: Any, problems: list[str]) -> None:
    """Count the example; fail it with everything that went wrong during it."""
    COUNTS[fuzzer] += 1
    problems = problems + r.problems()
    if problems:
        fail(fuzzer, "; ".join(problems)[:1500], given_input)


def _run_command(r: Rig, fuzzer: str, text: str, actor: str, channel: str, source: str) -> None:
    _before(r)
    reply = r.run(r.ops.router.command(Invocation(actor, channel, text, source=source), r.surface))
    _after(r, fuzzer, (text, actor, channel, source), _reply_problems(reply, required=True))


_actor = st.sampled_from(PEOPLE)
_channel = st.sampled_from(CHANNELS)
_source = st.sampled_from(["slash", "mention", "console"])


@fuzz_settings("commands_anything")
@given(text=st.one_of(st.text(), st.lists(_tokens, max_size=10).map(" ".join)), actor=_actor, channel=_channel)
def test_any_text_gets_a_reply(rig: Rig, text: str, actor: str, channel: str) -> None:
    _run_command(rig, "commands_anything", text, actor, channel, "slash")


@fuzz_settings("commands_by_words")
@given(text=command_lines(), actor=_actor, channel=_channel, source=_source)
def test_every_command_with_random_arguments_gets_a_reply(
    rig: Rig, text: str, actor: str, channel: str, source: str
) -> None:
    _run_command(rig, "commands_by_words", text, actor, channel, source)


@fuzz_settings("commands_huge")
@given(
    words=st.sampled_from(WORDS),
    filler=st.sampled_from(["a", "é", "😀", '"', "<@U1>", "x=y", "OPS-1 ", " ", "\u200b", "<", "“"]),
    n=st.integers(1000, 200_000),
    quoted=st.booleans(),
)
def test_huge_inputs_get_a_reply(rig: Rig, words: str, filler: str, n: int, quoted: bool) -> None:
    body = filler * (n // len(filler))
    text = f'{words} "{body}"' if quoted else f"{words} {body}"
    _before(rig)
    started = time.perf_counter()
    reply = rig.run(rig.ops.router.command(Invocation(ALICE, "#ops", text), rig.surface))
    problems = _reply_problems(reply, required=True)
    # Slack wants the ack within 3 s however long the text: reported (the slowest), never asserted.
    HUGE_SECONDS.append(time.perf_counter() - started)
    _after(rig, "commands_huge", f"{words} {filler!r}*{n}" + (" (quoted)" if quoted else ""), problems)


# --- (b) buttons -----------------------------------------------------------------------------------------

ACTIONS = [a for g in GROUPS for a in g.actions]
ACTION_IDS = sorted(a.id for a in ACTIONS)

_json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([2**63, 2**63 - 1, -(2**63) - 1, 10**100, 0, -1]),
    st.floats(allow_nan=False),
    st.text(max_size=30),
    st.sampled_from(["1", "1e400", "OPS-1", "", " ", "null", "-1"]),
)
_json = st.recursive(
    _json_scalars,
    lambda kids: st.one_of(st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=8), kids, max_size=4)),
    max_leaves=12,
)
FIELD_NAMES = sorted(
    {name for a in ACTIONS if a.value for name in a.value.model_fields}
    | {name for g in GROUPS for s in g.submits if s.metadata for name in s.metadata.model_fields}
)


def _raw_values() -> st.SearchStrategy[str]:
    """Values that are not what any button sends: JSON of other shapes, broken JSON, plain text."""
    return st.one_of(
        st.text(max_size=60),
        _json.map(json.dumps),
        st.dictionaries(st.sampled_from(FIELD_NAMES), _json, max_size=4).map(json.dumps),
        st.sampled_from(['{"group": 1', "{", "[]", '""', "0", "null", "{}", '{"id": NaN}', "\x00", '{"a":1}{}']),
        st.sampled_from(['{"group": 1e400}', '{"id": 99999999999999999999999999}', '{"group": "1"}']),
        st.builds(lambda n: '{"group": ' + "9" * n + "}", st.integers(15, 5000)),
    )


def _field_value(annotation: Any, seeded: list[Any]) -> st.SearchStrategy[Any]:
    """A value of the right type (mostly): ids that exist, ids that don't, extremes."""
    text = str(annotation)
    if "int" in text:
        return st.one_of(
            st.sampled_from(seeded or [1]),
            st.integers(-3, 20),
            st.sampled_from([2**31, 2**53, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 10**30, -(10**30)]),
            st.none() if "None" in text else st.integers(0, 3),
        )
    return st.one_of(
        st.sampled_from([str(x) for x in seeded] or ["1"]),
        st.sampled_from(["OPS-1", "OPS-2", "OPS-999", "api", "prod", "staging", "up", "down", "#ops", "C0OPS", ""]),
        st.sampled_from(["1700000000.000100", "1.2", "abc", "x" * 5000]),
        st.text(max_size=40),
    )


SEED_FIELD = {"group": "group", "release": "release", "id": None}


@st.composite
def shaped_values(draw: st.DrawFn, model: Any, seeded: dict[str, list[Any]]) -> str:
    """A JSON object with the model's field names: right or wrong types, fields missing or extra."""
    out: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        if draw(st.integers(0, 9)) == 0:
            continue  # missing
        pool = seeded.get(SEED_FIELD.get(name) or "", [])
        if name == "id":
            pool = seeded.get("approval", []) + seeded.get("feedback", [])
        out[name] = draw(_field_value(info.annotation, pool)) if draw(st.integers(0, 5)) else draw(_json)
    if draw(st.integers(0, 5)) == 0:
        out[draw(st.text(max_size=6))] = draw(_json)
    return json.dumps(out)


async def _click(r: Rig, action_id: str, value: str, actor: str, channel: str) -> v.Reply | None:
    return await r.ops.router.click(
        Click(actor, channel, action_id, value, message_ts="1700000000.000100", trigger_id="T1"), r.surface
    )


def _check_click(r: Rig, fuzzer: str, action_id: str, value: str, actor: str, channel: str) -> None:
    _before(r)
    reply = r.run(_click(r, action_id, value, actor, channel))
    _after(r, fuzzer, (action_id, value, actor), _reply_problems(reply))


@fuzz_settings("buttons")
@given(
    action=st.one_of(
        st.sampled_from(ACTION_IDS),
        st.sampled_from(ACTION_IDS).map(lambda a: f"{a}~{3}"),
        st.text(max_size=20),
    ),
    value=_raw_values(),
    actor=_actor,
    channel=_channel,
)
def test_buttons_with_malformed_values_answer_with_a_reason(
    rig: Rig, action: str, value: str, actor: str, channel: str
) -> None:
    _check_click(rig, "buttons", action, value, actor, channel)


@fuzz_settings("buttons_shaped")
@given(data=st.data(), action=st.sampled_from(ACTIONS), actor=_actor, channel=_channel)
def test_buttons_with_wrong_or_extreme_fields_answer_with_a_reason(
    rig: Rig, data: st.DataObject, action: Any, actor: str, channel: str
) -> None:
    value = data.draw(shaped_values(action.value, rig.seeded)) if action.value else data.draw(st.text())
    _check_click(rig, "buttons_shaped", action.id, value, actor, channel)


# --- (c) modal submissions ------------------------------------------------------------------------------------

SUBMITS = [s for g in GROUPS for s in g.submits]


async def _submit(r: Rig, callback: str, values: dict[str, str | None], meta: str, actor: str) -> Any:
    try:
        return await r.ops.router.submit(Submission(actor, callback, values, meta), r.surface, "#ops")
    except SubmitErrors as err:
        return err


_input_text = st.one_of(
    st.none(),
    st.text(max_size=40),
    _durations,
    st.sampled_from(['alertname="X"', 'service=~"api|web" env="prod"', "x=~(", "a", " ", "", "x" * 4000]),
)


@fuzz_settings("submits")
@given(
    data=st.data(),
    spec=st.sampled_from(SUBMITS),
    actor=_actor,
    extra=st.dictionaries(st.text(max_size=8), _input_text, max_size=3),
)
def test_modal_submits_answer_with_a_reason(
    rig: Rig, data: st.DataObject, spec: Any, actor: str, extra: dict[str, str | None]
) -> None:
    names = ["matchers", "duration", "reason", "note", "text", "kind", "tracker", "title", "rating"]
    values = {n: data.draw(_input_text) for n in names if data.draw(st.booleans())} | extra
    if spec.metadata is not None and data.draw(st.integers(0, 2)):
        meta = data.draw(shaped_values(spec.metadata, rig.seeded))
    else:
        meta = data.draw(_raw_values())
    _before(rig)
    result = rig.run(_submit(rig, spec.callback, values, meta, actor))
    if isinstance(result, SubmitErrors):
        ok = result.errors and all(str(m).strip() for m in result.errors.values())
        problems = [] if ok else [f"field errors without a message: {result.errors}"]
    else:
        problems = _reply_problems(result)
    _after(rig, "submits", (spec.callback, values, meta, actor), problems)


# --- (d) webhooks -------------------------------------------------------------------------------------------

ALERTMANAGER_EXAMPLE: dict[str, Any] = {
    "receiver": "opsloop",
    "status": "firing",
    "alerts": [
        {
            "status": "firing",
            "labels": {"alertname": "HighLatency", "service": "api", "severity": "critical", "env": "prod"},
            "annotations": {"summary": "p99 over 1s", "runbook_url": "https://runbooks/latency"},
            "startsAt": "2026-11-26T04:22:05.094824942Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus:9090/graph?g0.expr=up%3D%3D0&g0.tab=1",
            "fingerprint": "b2017badd404dfce",
        },
        {
            "status": "resolved",
            "labels": {"alertname": "HighLatency", "service": "api", "severity": "critical", "env": "staging"},
            "annotations": {"description": "better now"},
            "startsAt": "2026-11-26T04:00:00Z",
            "endsAt": "2026-11-26T04:30:00Z",
        },
    ],
    "groupLabels": {"alertname": "HighLatency"},
    "commonLabels": {"alertname": "HighLatency", "service": "api"},
    "commonAnnotations": {},
    "externalURL": "http://alertmanager:9093",
    "version": "4",
    "groupKey": '{}/{alertname=~".+"}:{alertname="HighLatency"}',
    "truncatedAlerts": 0,
}
NAGIOS_EXAMPLE = nagios_payload()  # a service PROBLEM as opsloop-nagios-notify posts it
JENKINS_EXAMPLE: dict[str, Any] = {
    "name": "api-build",
    "display_name": "api-build",
    "url": "job/shop/job/api-build/",
    "build": {
        "full_url": "http://ci.example/job/shop/job/api-build/1/",
        "number": 1,
        "queue_id": 7,
        "timestamp": 1795667043000,
        "duration": 0,
        "phase": "STARTED",
        "url": "job/shop/job/api-build/1/",
        "parameters": {"DEPLOY": "yes"},
        "log": "",
        "notes": "",
        "artifacts": {},
        "scm": {"url": "https://git/x.git", "branch": "origin/main", "commit": "abc123", "changes": [], "culprits": []},
    },
}
VALID_HOOKS: dict[str, dict[str, Any]] = {
    "alertmanager": ALERTMANAGER_EXAMPLE,
    "grafana": GRAFANA_EXAMPLE,
    "nagios": NAGIOS_EXAMPLE,
    "splunk": SPLUNK_EXAMPLE,
    "jenkins": JENKINS_EXAMPLE,
}
SOURCES = sorted(VALID_HOOKS)
TABLES = ("alerts", "alert_groups", "events", "builds", "jobs", "hook_deliveries", "outbox")


@st.composite
def mutated(draw: st.DrawFn, node: Any, depth: int = 0) -> Any:
    """A structural mutation of a valid payload: values replaced, keys dropped or added, types changed,
    lists emptied or repeated; most of the payload stays valid so the checks deep inside are reached."""
    roll = draw(st.integers(0, 99))
    if roll < 6:
        return draw(_json)  # anything at all in this place
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, val in node.items():
            r2 = draw(st.integers(0, 19))
            if r2 == 0:
                continue  # the field is missing
            out[k] = draw(mutated(val, depth + 1)) if r2 < 8 else val
        if draw(st.integers(0, 9)) == 0:
            out[draw(st.text(max_size=10))] = draw(_json)
        return out
    if isinstance(node, list):
        items = [draw(mutated(x, depth + 1)) for x in node]
        r3 = draw(st.integers(0, 9))
        if r3 == 0:
            return []
        if r3 == 1 and items:
            return items * draw(st.integers(2, 60))
        return items
    if isinstance(node, str):
        return draw(
            st.one_of(
                st.just(node),
                st.text(max_size=30),
                st.sampled_from(["", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "2026-13-45T99:99:99Z"]),
                st.sampled_from(["-999999999-01-01T00:00:00Z", "2026-11-26T04:22:05+99:00", "1e400", "x" * 5000]),
                st.sampled_from(["firing", "resolved", "RECOVERY", "ACKNOWLEDGEMENT", "CRITICAL", "OK", "4", "1"]),
                st.sampled_from(["COMPLETED", "FINALIZED", "QUEUED", "SUCCESS", "FAILURE", "alerting", "ok"]),
            )
        )
    if isinstance(node, bool) or node is None:
        return draw(_json_scalars)
    if isinstance(node, int | float):
        return draw(
            st.one_of(
                st.integers(-3, 10),
                st.sampled_from([2**63, -(2**63) - 1, 10**30, -(10**30), 2**31, 1e308, -1.5, 0.5, 10**20]),
                _json_scalars,
            )
        )
    return node


async def _counts(r: Rig) -> dict[str, int]:
    def q(db: Any) -> dict[str, int]:
        return {t: int(db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]) for t in TABLES}

    return await r.ops.services.store.read(q)


async def _orphans(r: Rig) -> list[str]:
    """Rows that only part of a delivery could have left: alerts without their group, builds without their job."""

    def q(db: Any) -> list[str]:
        bad = []
        n = db.execute("SELECT count(*) FROM alerts WHERE group_id NOT IN (SELECT id FROM alert_groups)").fetchone()[0]
        if n:
            bad.append(f"{n} alerts without their group")
        n = db.execute(
            "SELECT count(*) FROM builds WHERE job_id IS NOT NULL AND job_id NOT IN (SELECT id FROM jobs)"
        ).fetchone()[0]
        if n:
            bad.append(f"{n} builds whose watch job is missing")
        return bad

    return await r.ops.services.store.read(q)


async def _post(r: Rig, source: str, body: bytes, token: str = HOOK_TOKEN) -> tuple[int, Any]:
    async with r.client.post(
        f"/hooks/{source}",
        data=body,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    ) as resp:
        raw = await resp.read()
        try:
            return resp.status, json.loads(raw)
        except ValueError:
            return resp.status, raw


def _check_hook(r: Rig, fuzzer: str, source: str, body: bytes) -> None:
    given_input = (source, body[:3000])

    async def go() -> tuple[int, Any, dict[str, int], dict[str, int], list[str]]:
        before = await _counts(r)
        status, answer = await _post(r, source, body)
        after = await _counts(r)
        return status, answer, before, after, await _orphans(r)

    status, answer, before, after, orphans = r.run(go())
    message = answer.get("message") if isinstance(answer, dict) else None
    if status >= 500:
        fail(fuzzer, f"HTTP {status}: {answer!r:.300}", given_input)
    if not isinstance(message, str) or not message.strip():
        fail(fuzzer, f"HTTP {status} without a message: {answer!r:.300}", given_input)
    if 400 <= status < 500:
        stored = {t: after[t] - before[t] for t in TABLES if after[t] != before[t] and t not in ("jobs", "outbox")}
        if stored:
            fail(fuzzer, f"HTTP {status} ({message}) but rows were stored: {stored}", given_input)
    if orphans:
        fail(fuzzer, f"half-stored delivery: {orphans}", given_input)
    _after(r, fuzzer, given_input, [])


@fuzz_settings("hooks_mutated")
@given(data=st.data(), source=st.sampled_from(SOURCES))
def test_mutated_webhook_payloads_never_fail_the_server(rig: Rig, data: st.DataObject, source: str) -> None:
    body = data.draw(mutated(VALID_HOOKS[source]))
    _check_hook(rig, "hooks_mutated", source, json.dumps(body).encode())


@fuzz_settings("hooks_random")
@given(
    source=st.sampled_from([*SOURCES, "nope", "", "..%2f"]),
    body=st.one_of(
        _json.map(lambda x: json.dumps(x).encode()),
        st.binary(max_size=200),
        st.text(max_size=200).map(str.encode),
        st.sampled_from([b"", b"{", b"[" * 5000, b'{"a":' * 3000, b"\xff\xfe", b"1e999999", b"NaN", b"-Infinity"]),
        st.builds(lambda n: b"[" * n + b"]" * n, st.integers(100, 100_000)),
    ),
)
def test_random_webhook_bodies_never_fail_the_server(rig: Rig, source: str, body: bytes) -> None:
    if not source or "/" in source or "%" in source:
        source = "nope"
    _check_hook(rig, "hooks_random", source, body)


# --- the report --------------------------------------------------------------------------------------------


def test_report(rig: Rig) -> None:
    """Last in the file: wait for the work the examples started, check it ended cleanly, write the report."""

    async def settle() -> list[str]:
        """Jobs still running after a minute, other than build watches: a Jenkins webhook example makes a
        watch that polls the unreachable Jenkins with backoff until its outage grace ends, by design."""
        sql = "SELECT id, kind, key FROM jobs WHERE state IN ('queued', 'running') AND kind != 'build.watch'"
        deadline = time.monotonic() + 60
        while running := await rig.ops.services.store.read(lambda db: rows(db, sql)):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        await rig.ops.services.outbox.drain(timeout=60)
        return [f"job {r['id']} ({r['kind']} {r['key']}) still running" for r in running]

    late = rig.run(settle()) + rig.problems()
    if late:
        FAILURES.setdefault("jobs and outbox after the examples", []).extend(late)
    if REPORT:
        _write_report(Path(REPORT))
    assert not late, late


def _write_report(path: Path) -> None:
    total = sum(COUNTS.values())
    lines = [
        "# Fuzzing (hypothesis): commands, buttons, modal submits, webhooks",
        "",
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()})",
        f"- profile: `{PROFILE}` (OPSLOOP_FUZZ), hypothesis max_examples {FUZZ.max_examples} x weight per fuzzer",
        f"- command: `OPSLOOP_FUZZ={PROFILE} pytest tests/reliability/test_fuzz.py` (or `make fuzz`)",
        "",
        "| fuzzer | examples run | failures |",
        "|---|---:|---:|",
    ]
    for name in WEIGHTS:
        lines.append(f"| {name} | {COUNTS[name]:,} | {len(FAILURES.get(name, []))} |")
    lines.append(f"| **total** | **{total:,}** | **{sum(len(f) for f in FAILURES.values())}** |")
    lines.append("")
    if HUGE_SECONDS:
        lines.append(
            f"Huge commands (1,000 to 200,000 characters): slowest answer {max(HUGE_SECONDS):.2f} s, "
            f"median {sorted(HUGE_SECONDS)[len(HUGE_SECONDS) // 2]:.3f} s (Slack's limit for the ack: 3 s)."
        )
        lines.append("")
    if FAILURES:
        lines.append("## Failures")
        for name, items in FAILURES.items():
            lines.append(f"### {name}")
            lines.extend(f"- `{x[:800]}`" for x in items[:20])
    else:
        lines.append("No failures: every command, click and submit got an answer, no webhook got a 5xx.")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
