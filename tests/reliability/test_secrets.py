"""Figure 8 of issue 7: planted secrets never reach Slack, the audit log, the store or the logs.

One opsloop serves Slack over signed HTTP (the Slack emulator), with a Jenkins emulator, a command
deploy target, the Alertmanager webhook and a Prometheus stand-in. Secrets of every shape we know are
planted where opsloop reads text it did not write:

* a build log (the Jenkins console of a failing build, shown on its card and by `build log`);
* command output (the deploy target's stdout and stderr, when it fails);
* an alert's annotations and labels (an Alertmanager webhook);
* an error message (Prometheus answering an error that echoes them back).

The secrets: a Slack bot token, a GitHub token, an AWS access key id and secret key, the configured
Jenkins API token, a password inside a URL, and opsloop's own configured secrets (bot token, signing
secret, webhook token). After each scenario every sink is searched for every secret:

* Slack: every Web API call the emulator received (all parameters), every ack body, every
  response_url post and every uploaded file;
* the audit table, and every text column of every table of the store;
* the logs: every record opsloop and its libraries emitted (the raw message and its traceback) and the
  output of the handler `opsloop run` logs through.

Each scenario also checks that the text around the secrets did arrive (a marker line), so a redaction
is proven, not an omission. With OPSLOOP_RESULTS=1 the figure is written to bench/results/secrets.md.
"""

from __future__ import annotations

import io
import json
import logging
import os
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from bot.cli import log_handler
from bot.store import rows
from tests.emulators.jenkins import BuildScript, JenkinsEmulator
from tests.emulators.slack import SlackEmulator
from tests.reliability.support_figures import all_text, md_cell, provenance, write_figure
from tests.support import SlackHarness, slack_ops, slack_workspace, wait_until

MODULE_LOOP = pytest.mark.asyncio(loop_scope="module")
HOOK_TOKEN = "hook-secret-123"  # what tests.support.slack_ops configures as OPSLOOP_WEBHOOK_TOKEN

# Secrets of recognisable shapes, and ones only known because they are configured.
SHAPED = {
    "Slack bot token": "xoxb-2231412-98765432100-Zx9Yw8Vu7Ts6Rq5Po4Nm3Lk2",
    "GitHub token": "ghp_R4nd0mT0k3nF0rTh3T3stAbCdEfGh1234567",
    "AWS access key id": "AKIAQ3EGRZ7XPLANTED1",
    "AWS secret access key": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYPLANTEDKEY",
    "password in a URL": "Pl4nted-Passw0rd",
}


def leaky_text(secrets: dict[str, str], where: str) -> str:
    """Lines as builds, scripts, monitors and tools really print them, each holding a secret."""
    return "\n".join(
        [
            f"MARKER-{where} starting",
            f"export SLACK_BOT_TOKEN={secrets['Slack bot token']}",
            f"using token {secrets['Slack bot token']} for notifications",
            f"git clone https://x-access-token:{secrets['GitHub token']}@github.com/shop/api.git",
            f"GITHUB_TOKEN is {secrets['GitHub token']}",
            f"AWS_ACCESS_KEY_ID={secrets['AWS access key id']}",
            f"AWS_SECRET_ACCESS_KEY={secrets['AWS secret access key']}",
            f"aws_secret_access_key = {secrets['AWS secret access key']}",
            f"curl -u opsloop:{secrets['Jenkins API token']} https://ci.example.com/job/api/build",
            f"Jenkins token: {secrets['Jenkins API token']}",
            f"pushing to https://deploy:{secrets['password in a URL']}@registry.example.com/shop/api",
            f"opsloop env: {secrets['opsloop bot token']} {secrets['signing secret']} {secrets['webhook token']}",
            f"MARKER-{where} done",
        ]
    )


# --- the sinks ---------------------------------------------------------------------------------------------


class Records(logging.Handler):
    """Every record, as any other handler (pytest's caplog, one an operator adds) would print it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s: %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        # What pytest's caplog and any standard formatter would print: the message and the traceback.
        self.lines.append(self.format(record))


@dataclass
class Rig:
    h: SlackHarness
    emu: SlackEmulator
    jenkins: JenkinsEmulator
    secrets: dict[str, str]
    records: Records
    produced: io.StringIO  # what `opsloop run`'s log handler wrote
    findings: list[tuple[str, str, str, str]] = field(default_factory=list)  # scenario, secret, sink, excerpt
    scenarios: list[tuple[str, int]] = field(default_factory=list)  # scenario, texts searched


def slack_texts(emu: SlackEmulator) -> list[tuple[str, str]]:
    out = [(f"Web API {c.method}", json.dumps(c.params, ensure_ascii=False)) for c in emu.calls]
    out += [("ack body", r.body_text) for r in emu.inbound]
    out += [("response_url post", json.dumps(r.body, ensure_ascii=False)) for r in emu.responses]
    out += [("uploaded file", f.content.decode("utf-8", "replace") + (f.initial_comment or "")) for f in emu.files]
    return out


async def sinks(rig: Rig) -> list[tuple[str, str]]:
    tables = await all_text(rig.h.services)
    out = slack_texts(rig.emu)
    out += [(f"table {t}", text) for t, texts in tables.items() for text in texts]
    out += [("log record", line) for line in rig.records.lines]
    out += [("opsloop run's log output", rig.produced.getvalue())]
    return out


async def check(rig: Rig, scenario: str, marker: str) -> None:
    """Search every sink for every secret; the marker must have reached Slack (proof the text flowed)."""
    await rig.h.settle()
    found = await sinks(rig)
    rig.scenarios.append((scenario, len(found)))
    assert any(marker in text for where, text in found if not where.startswith(("table", "log"))), (
        f"{marker} never reached Slack: the scenario did not run as meant"
    )
    leaks = []
    for name, secret in rig.secrets.items():
        for where, text in found:
            i = text.find(secret)
            if i >= 0:
                excerpt = text[max(0, i - 60) : i + len(secret) + 20]
                leaks.append((scenario, name, where, excerpt))
    rig.findings += [x for x in leaks if x not in rig.findings]
    assert not leaks, "\n".join(f"{n} in {w}: …{e}…" for _, n, w, e in leaks[:20])


# --- the opsloop under test --------------------------------------------------------------------------------


async def tools_that_echo(secrets: dict[str, str]) -> web.AppRunner:
    """A Prometheus whose every query fails with an error that repeats secrets back (a proxy that echoes
    the Authorization header, a parser that quotes the whole query and its credentials), and an
    Alertmanager whose API fails with a 500 that quotes them too."""

    async def query(request: web.Request) -> web.Response:
        said = (
            f"MARKER-tool-error: parse error: unexpected identifier; request carried "
            f"Authorization: Bearer {secrets['GitHub token']} from https://deploy:{secrets['password in a URL']}"
            f"@proxy.example.com with key {secrets['AWS access key id']} and token {secrets['Slack bot token']} "
            f"and {secrets['Jenkins API token']}"
        )
        return web.json_response({"status": "error", "errorType": "bad_data", "error": said}, status=400)

    async def alertmanager(request: web.Request) -> web.Response:
        # Alertmanager's API failing with a plain-text 500 that quotes what it was sent.
        said = (
            f"MARKER-tool-500: internal error storing silence for https://am:{secrets['password in a URL']}"
            f"@alertmanager.example.com: {secrets['Slack bot token']} {secrets['AWS access key id']} "
            f"{secrets['Jenkins API token']} {secrets['webhook token']}"
        )
        return web.Response(text=said, status=500)

    app = web.Application()
    app.router.add_route("*", "/api/v1/{tail:.*}", query)
    app.router.add_route("*", "/api/v2/{tail:.*}", alertmanager)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rig(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    tmp = tmp_path_factory.mktemp("secrets")
    records = Records()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(records)
    root.setLevel(logging.DEBUG)
    mp = pytest.MonkeyPatch()
    try:
        async with SlackEmulator() as emu, JenkinsEmulator() as jenkins:
            slack_workspace(emu)
            secrets = {
                **SHAPED,
                "Jenkins API token": jenkins.token,
                "opsloop bot token": emu.bot_token,
                "signing secret": emu.signing_secret,
                "webhook token": HOOK_TOKEN,
            }
            mp.setenv("SECRETS_JENKINS_TOKEN", jenkins.token)
            leaky = leaky_text(secrets, "build-log")
            jenkins.add_job(
                "api-build",
                {"BRANCH": "main"},
                script=BuildScript(duration=0.2, result="FAILURE", log=[line + "\n" for line in leaky.splitlines()]),
            )
            script = tmp / "deploy.sh"
            script.write_text(
                "#!/bin/sh\ncat <<'EOF'\n"
                + leaky_text(secrets, "command-output")
                + '\nEOF\necho "stderr: $AWS_KEY" >&2\nexit 3\n'
            )
            script.chmod(script.stat().st_mode | stat.S_IXUSR)
            mp.setenv("AWS_KEY", secrets["AWS access key id"])
            prom = await tools_that_echo(secrets)
            prom_port = prom.addresses[0][1]
            (tmp / "versions").mkdir()
            cfg: dict[str, Any] = {
                "channels": {"default": "#ops", "approvals": "#approvals", "alerts": "#ops"},
                "services": {
                    "api": {
                        "build": {"ci": "jenkins", "job": "api-build"},
                        "deploy": {"target": "command", "command": [str(script), "{service}", "{version}", "{env}"]},
                        "alerts": {"match": {"service": "api"}},
                    }
                },
                "environments": {"staging": {}},
                "integrations": {
                    "jenkins": {
                        "url": jenkins.url,
                        "user": jenkins.user,
                        "token_env": "SECRETS_JENKINS_TOKEN",
                        "timeout": 5,
                        "poll": 0.05,
                    },
                    "prometheus": {"url": f"http://127.0.0.1:{prom_port}", "timeout": 5},
                    "alertmanager": {"url": f"http://127.0.0.1:{prom_port}", "timeout": 5},
                    "command": {"version_file": str(tmp / "versions" / "{service}-{env}")},
                },
            }
            async with slack_ops(tmp, emu, **cfg) as h:
                produced = io.StringIO()
                handler = log_handler(produced, h.services.redactor)
                root.addHandler(handler)
                rig = Rig(h, emu, jenkins, secrets, records, produced)
                try:
                    yield rig
                finally:
                    root.removeHandler(handler)
                    write_figure("secrets", render(rig))
            await prom.cleanup()
    finally:
        mp.undo()
        root.removeHandler(records)
        root.setLevel(old_level)


# --- the scenarios -----------------------------------------------------------------------------------------


@MODULE_LOOP
async def test_build_log(rig: Rig) -> None:
    await rig.h.command("build api")
    await wait_until(lambda: bool(rig.jenkins.job_builds("api-build")), what="a build")
    await wait_until(
        lambda: any("fail" in json.dumps(c.params).lower() for c in rig.emu.calls if c.method.startswith("chat.")),
        timeout=20,
        what="the failed build's card",
    )
    await rig.h.command("build log api #1")
    await check(rig, "build log (Jenkins console)", "MARKER-build-log")


@MODULE_LOOP
async def test_command_output(rig: Rig) -> None:
    await rig.h.command("deploy api v1.0.0 to staging")
    await rig.h.settle()
    await check(rig, "command output (deploy target stdout/stderr)", "MARKER-command-output")


@MODULE_LOOP
async def test_alert_annotations(rig: Rig) -> None:
    s = rig.secrets
    annotations = {
        "summary": f"MARKER-alert API errors; token {s['Slack bot token']} rejected",
        "description": leaky_text(s, "alert"),
        "runbook_url": f"https://ops:{s['password in a URL']}@wiki.example.com/runbooks/api",
    }
    labels = {"alertname": "ApiErrors", "service": "api", "severity": "critical", "key": s["AWS access key id"]}
    body = {
        "receiver": "opsloop",
        "status": "firing",
        "alerts": [
            {
                "status": "firing",
                "labels": labels,
                "annotations": annotations,
                "startsAt": "2026-11-26T04:22:05.094824942Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": f"http://admin:{s['password in a URL']}@prometheus.example.com/graph",
                "fingerprint": "a1b2c3d4e5f60718",
            }
        ],
        "groupLabels": {"alertname": "ApiErrors"},
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": "http://alertmanager.example.com",
        "version": "4",
        "groupKey": '{}:{alertname="ApiErrors"}',
        "truncatedAlerts": 0,
    }
    url = rig.h.url.replace("/slack/events", "/hooks/alertmanager")
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, json=body, headers={"Authorization": f"Bearer {HOOK_TOKEN}"}) as resp,
    ):
        assert resp.status < 300, await resp.text()
    await rig.h.settle()
    await rig.h.command("alerts")
    await check(rig, "alert annotations and labels (Alertmanager webhook)", "MARKER-alert")


@MODULE_LOOP
async def test_tool_error_message(rig: Rig) -> None:
    res = await rig.h.command("query up")
    assert res.status == 200
    await check(rig, "error message (Prometheus echoing them)", "MARKER-tool-error")


@MODULE_LOOP
async def test_tool_error_500(rig: Rig) -> None:
    await rig.h.command('silence alertname=ApiErrors 1h "fix rolling out"')
    await rig.h.command("silences")
    await check(rig, "error message (Alertmanager answering 500 with them)", "MARKER-tool-500")


@MODULE_LOOP
async def test_the_audit_log_saw_every_scenario(rig: Rig) -> None:
    actions = await rig.h.services.store.read(lambda db: [r["action"] for r in rows(db, "SELECT action FROM audit")])
    assert {"build.run", "build.log", "deploy.run", "monitor.query", "monitor.alerts", "monitor.silence"} <= set(
        actions
    )
    assert os.environ.get("SECRETS_JENKINS_TOKEN") == rig.secrets["Jenkins API token"]


def render(rig: Rig) -> str:
    lines = [
        "# Secrets (issue 7, figure 8)",
        "",
        provenance("OPSLOOP_RESULTS=1 .venv/bin/python -m pytest tests/reliability/test_secrets.py"),
        "",
        f"{len(rig.secrets)} secrets planted ({', '.join(rig.secrets)}) in {len(rig.scenarios)} scenarios; "
        f"after each, every sink searched for every secret. Leaks found: {len(rig.findings)} (bar: 0).",
        "",
        "| scenario | texts searched (Slack calls, acks, files, table cells, log records) | leaks |",
        "|---|---|---|",
    ]
    for scenario, searched in rig.scenarios:
        n = sum(1 for f in rig.findings if f[0] == scenario)
        lines.append(f"| {scenario} | {searched} | {n} |")
    if rig.findings:
        lines += ["", "| scenario | secret | sink | excerpt |", "|---|---|---|---|"]
        for scenario, name, where, excerpt in rig.findings[:60]:
            lines.append(f"| {md_cell(scenario)} | {name} | {md_cell(where)} | {md_cell(excerpt, 120)} |")
    return "\n".join(lines) + "\n"


def test_the_log_handler_masks_exception_text_too() -> None:
    """A traceback carries the exception's message (a tool's error, a URL with a password): the handler
    `opsloop run` logs through masks it as well as the message."""
    from bot.redact import Redactor

    out = io.StringIO()
    handler = log_handler(out, Redactor(["configured-secret-value"]))
    log = logging.getLogger("tests.secrets.handler")
    log.addHandler(handler)
    log.propagate = False
    try:
        try:
            raise RuntimeError(f"connect https://u:{SHAPED['password in a URL']}@db failed; configured-secret-value")
        except RuntimeError:
            log.exception("tool failed with %s", SHAPED["GitHub token"])
    finally:
        log.removeHandler(handler)
        log.propagate = True
    text = out.getvalue()
    assert "tool failed" in text and "RuntimeError" in text
    for secret in (SHAPED["password in a URL"], SHAPED["GitHub token"], "configured-secret-value"):
        assert secret not in text, text


def test_own_loggers_mask_before_any_handler(caplog: pytest.LogCaptureFixture) -> None:
    """What opsloop's own loggers emit is masked in the record itself, so pytest's caplog (or any handler
    an operator adds) never sees a secret either; the traceback too."""
    from bot.redact import Redactor, redact_own_logs

    redact_own_logs(Redactor(["configured-secret-value"]))
    log = logging.getLogger("bot.router")
    with caplog.at_level(logging.INFO, logger="bot.router"):
        try:
            raise RuntimeError(f"tool said: token={SHAPED['GitHub token']} configured-secret-value")
        except RuntimeError as err:
            log.error("query by U0ALICE failed: %s", err, exc_info=err)
    assert caplog.records and "query by U0ALICE failed" in caplog.text and "RuntimeError" in caplog.text
    for secret in (SHAPED["GitHub token"], "configured-secret-value"):
        assert secret not in caplog.text, caplog.text
