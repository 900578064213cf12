"""Nagios: the notification script, the webhook model, the command writer and status.dat reader, and a
real Nagios (Debian nagios4-core) sending notifications through the script to a stand-in for opsloop.

The stand-in (`Catcher`) plays opsloop's `/hooks/nagios`: it checks the bearer token as bot/web.py
does and keeps every JSON body, so the tests see exactly what opsloop would be handed.
"""

from __future__ import annotations

import ast
import asyncio
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from pydantic import ValidationError

from adapters.nagios import NagiosCommands, NagiosWebhook, parse_status, severity_of
from bot.blocking import BlockingPool
from bot.ports import AdapterError, AdapterNotFound, AdapterUnavailable, Alert, AlertStatus, Severity
from tests.nagios_server import NOTIFY_SCRIPT, nagios_server
from tests.support import free_port, wait_until

TOKEN = "hook-secret-123"

# Everything a shell, a JSON string or Nagios's command parser could trip over, in one value.
HOSTILE_COMMENT = 'it\'s "bad"; rm -rf / & echo $HOME `id` <b>|x</b> ~ \\ {"a": 1} ünïcödé ✓ 🚨'
HOSTILE_OUTPUT = 'CRITICAL - it\'s "down" & $PATH; <script> `x` ~ ✓'


# --- the stand-in for opsloop's /hooks/nagios ---------------------------------------------------------


class Catcher:
    """An aiohttp server that accepts what opsloop's webhook route would accept."""

    def __init__(self, token: str = TOKEN) -> None:
        self.token = token
        self.bodies: list[dict[str, Any]] = []
        self.requests: list[dict[str, str]] = []  # path, authorization, content type of every request
        self.answers: list[int] = []  # statuses to answer first, before behaving normally
        self.hang = False
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _hook(self, request: web.Request) -> web.Response:
        self.requests.append(
            {
                "path": request.path,
                "authorization": request.headers.get("Authorization", ""),
                "content_type": request.headers.get("Content-Type", ""),
            }
        )
        if self.hang:
            await asyncio.sleep(3600)
        if self.answers:
            return web.json_response({"ok": False, "message": "try again later"}, status=self.answers.pop(0))
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response(
                {
                    "ok": False,
                    "message": "missing or wrong token: send `Authorization: Bearer <OPSLOOP_WEBHOOK_TOKEN>`",
                },
                status=401,
            )
        self.bodies.append(json.loads(await request.read()))
        return web.json_response({"ok": True, "message": "1 alert"})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hooks/{source}", self._hook)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait_for(
        self, pred: Callable[[dict[str, Any]], bool], what: str, timeout: float = 30.0
    ) -> dict[str, Any]:
        """The first body matching `pred`, waiting for it."""
        await wait_until(lambda: any(pred(b) for b in self.bodies), timeout=timeout, what=what)
        return next(b for b in self.bodies if pred(b))


@pytest.fixture
async def catcher() -> AsyncIterator[Catcher]:
    c = Catcher()
    await c.start()
    yield c
    await c.stop()


@pytest.fixture
async def pool() -> AsyncIterator[BlockingPool]:
    p = BlockingPool(workers=2, default_timeout=10)
    yield p
    p.close()


# --- the notification script --------------------------------------------------------------------------


def nagios_env(**macros: str | bytes) -> dict[str, str | bytes]:
    """What Nagios would export for a service PROBLEM, with `macros` (names without NAGIOS_) changed."""
    base: dict[str, str | bytes] = {
        "NOTIFICATIONTYPE": "PROBLEM",
        "HOSTNAME": "web01",
        "HOSTSTATE": "UP",
        "HOSTSTATETYPE": "HARD",
        "SERVICEDESC": "HTTP",
        "SERVICESTATE": "CRITICAL",
        "SERVICESTATETYPE": "HARD",
        "SERVICEOUTPUT": "CRITICAL - connection refused",
        "LONGSERVICEOUTPUT": "",
        "SERVICEPERFDATA": "time=5s;1;2",
        "LONGDATETIME": "Thu Nov 26 04:24:03 UTC 2026",
        "TIMET": "1795667043",
        "LASTSERVICESTATECHANGE": "1795667040",
        "SERVICEPROBLEMID": "7",
        "LASTSERVICEPROBLEMID": "0",
        "NOTIFICATIONAUTHOR": "",
        "NOTIFICATIONCOMMENT": "",
        "SERVICENOTIFICATIONNUMBER": "1",
        "SERVICEATTEMPT": "1",
        # Host macros are set during service notifications too; the script must not pick them.
        "HOSTOUTPUT": "PING OK",
        "HOSTPROBLEMID": "0",
        "HOSTNOTIFICATIONNUMBER": "0",
    }
    base.update(macros)
    return {f"NAGIOS_{k}": v for k, v in base.items()}


async def run_script(
    env: Mapping[str, str | bytes], *args: str, url: str | None = None, token: str | None = TOKEN
) -> tuple[int, str, str]:
    """Run the script as Nagios would (a fresh process, only the given environment); (rc, stdout, stderr).

    Asynchronous on purpose: the catcher answering it runs on this same event loop.
    """
    full: dict[str, str | bytes] = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env}
    if url is not None:
        full["OPSLOOP_URL"] = url
    if token is not None:
        full["OPSLOOP_WEBHOOK_TOKEN"] = token
    proc = await asyncio.create_subprocess_exec(
        str(NOTIFY_SCRIPT),
        *args,
        env=full,  # bytes values are fine on POSIX
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def test_the_script_is_executable_and_uses_the_standard_library_only() -> None:
    text = NOTIFY_SCRIPT.read_text()
    assert text.startswith("#!/usr/bin/env python3\n")
    assert os.access(NOTIFY_SCRIPT, os.X_OK)
    imported = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            imported.add(node.module.split(".")[0])
    assert imported and imported <= sys.stdlib_module_names, imported - sys.stdlib_module_names
    # The wiring is documented where an operator looks first.
    assert "define command" in text and "define contact" in text and "enable_environment_macros=1" in text


async def test_hostile_values_arrive_intact(catcher: Catcher) -> None:
    env = nagios_env(
        NOTIFICATIONTYPE="ACKNOWLEDGEMENT",
        SERVICEOUTPUT=HOSTILE_OUTPUT,
        LONGSERVICEOUTPUT='line 1 "quoted"\nline 2 & $x; `y`',
        NOTIFICATIONAUTHOR='alice O\'Brien; "ops"',
        NOTIFICATIONCOMMENT=HOSTILE_COMMENT + "\nsecond line",
    )
    rc, _, err = await run_script(env, url=catcher.url + "/")
    assert (rc, err) == (0, "")
    [body] = catcher.bodies
    assert body == {
        "type": "ACKNOWLEDGEMENT",
        "host": "web01",
        "host_state": "UP",
        "service": "HTTP",
        "service_state": "CRITICAL",
        "state_type": "HARD",
        "output": HOSTILE_OUTPUT,
        "long_output": 'line 1 "quoted"\nline 2 & $x; `y`',
        "perfdata": "time=5s;1;2",
        "time": "Thu Nov 26 04:24:03 UTC 2026",
        "timet": 1795667043,
        "last_state_change": 1795667040,
        "problem_id": 7,
        "last_problem_id": 0,
        "author": 'alice O\'Brien; "ops"',
        "comment": HOSTILE_COMMENT + "\nsecond line",
        "notification_number": 1,
        "attempt": 1,
    }
    [req] = catcher.requests
    assert req == {"path": "/hooks/nagios", "authorization": f"Bearer {TOKEN}", "content_type": "application/json"}


async def test_a_host_notification_takes_the_host_macros(catcher: Catcher) -> None:
    env = nagios_env(
        HOSTSTATE="DOWN",
        HOSTOUTPUT="PING CRITICAL - 100% loss",
        HOSTPERFDATA="rta=0ms",
        HOSTPROBLEMID="3",
        LASTHOSTPROBLEMID="1",
        LASTHOSTSTATECHANGE="1795667000",
        HOSTNOTIFICATIONNUMBER="2",
        HOSTATTEMPT="1",
        HOSTSTATETYPE="SOFT",
    )
    del env["NAGIOS_SERVICEDESC"]  # Nagios does not set it for host notifications
    rc, _, err = await run_script(env, url=catcher.url)
    assert (rc, err) == (0, "")
    [body] = catcher.bodies
    assert body["service"] is None and body["service_state"] is None
    assert (body["host_state"], body["output"], body["perfdata"]) == ("DOWN", "PING CRITICAL - 100% loss", "rta=0ms")
    assert (body["problem_id"], body["last_problem_id"], body["notification_number"]) == (3, 1, 2)
    assert (body["state_type"], body["last_state_change"]) == ("SOFT", 1795667000)


async def test_settings_come_from_the_config_file_before_the_environment(catcher: Catcher, tmp_path: Path) -> None:
    conf = tmp_path / "notify.conf"
    conf.write_text(f"# opsloop\n\nurl = {catcher.url}\ntoken={TOKEN}\ntimeout=3\n")
    # The environment holds a wrong URL and token: the file wins.
    rc, _, err = await run_script(nagios_env(), "--config", str(conf), url="http://127.0.0.1:1", token="wrong")
    assert (rc, err) == (0, "")
    assert len(catcher.bodies) == 1 and catcher.requests[0]["authorization"] == f"Bearer {TOKEN}"


async def test_a_full_hook_url_is_used_as_it_is(catcher: Catcher) -> None:
    rc, _, _ = await run_script(nagios_env(), url=catcher.url + "/hooks/nagios")
    assert rc == 0 and catcher.requests[0]["path"] == "/hooks/nagios"


async def test_a_wrong_token_fails_at_once_with_one_line_that_hides_the_token(catcher: Catcher) -> None:
    rc, _, err = await run_script(nagios_env(), url=catcher.url, token="not-the-token-456")
    assert rc == 1
    assert err.count("\n") == 1 and err.startswith("opsloop-nagios-notify: PROBLEM for web01/HTTP not delivered")
    assert "401" in err and "wrong token" in err
    assert "not-the-token-456" not in err
    assert len(catcher.requests) == 1  # a 4xx is not retried
    assert catcher.bodies == []


async def test_5xx_answers_are_retried(catcher: Catcher) -> None:
    catcher.answers = [503]
    rc, _, err = await run_script(nagios_env(), "--retries", "2", url=catcher.url)
    assert (rc, err) == (0, "")
    assert len(catcher.requests) == 2 and len(catcher.bodies) == 1


async def test_giving_up_after_the_retries_says_why(catcher: Catcher) -> None:
    catcher.answers = [502, 502]
    rc, _, err = await run_script(nagios_env(), "--retries", "1", url=catcher.url)
    assert rc == 1 and "opsloop answered 502: try again later (after 2 attempts)" in err
    assert err.count("\n") == 1


async def test_nobody_listening_is_a_failure_with_a_message() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    rc, _, err = await run_script(nagios_env(), "--retries", "1", "--timeout", "2", url=url)
    assert rc == 1
    assert f"cannot reach {url}/hooks/nagios" in err and "(after 2 attempts)" in err
    assert err.count("\n") == 1


async def test_a_server_that_never_answers_times_out(catcher: Catcher) -> None:
    catcher.hang = True
    rc, _, err = await run_script(nagios_env(), "--retries", "0", "--timeout", "0.5", url=catcher.url)
    assert rc == 1 and "no answer from" in err and "within 0.5 s" in err


@pytest.mark.parametrize(
    ("env", "args", "message"),
    [
        (nagios_env(), (), "no opsloop URL: set OPSLOOP_URL"),
        ({}, (), "NAGIOS_NOTIFICATIONTYPE is not set"),
        (nagios_env(), ("--config", "/nonexistent/notify.conf"), "cannot read config /nonexistent/notify.conf"),
    ],
)
async def test_misconfiguration_exits_2(env: dict[str, str], args: tuple[str, ...], message: str) -> None:
    rc, _, err = await run_script(env, *args, url=None)
    assert rc == 2 and message in err and err.count("\n") == 1


async def test_a_missing_token_and_a_bad_config_line_exit_2(tmp_path: Path) -> None:
    rc, _, err = await run_script(nagios_env(), url="http://127.0.0.1:1", token=None)
    assert rc == 2 and "no webhook token: set OPSLOOP_WEBHOOK_TOKEN" in err
    conf = tmp_path / "bad.conf"
    conf.write_text("url http://x\n")
    rc, _, err = await run_script(nagios_env(), "--config", str(conf))
    assert rc == 2 and "line 1: expected key=value" in err


async def test_bytes_that_are_not_utf8_do_not_lose_the_alert(catcher: Catcher) -> None:
    env = nagios_env(SERVICEOUTPUT=b"CRITICAL - caf\xe9 down")  # Latin-1 from an old plugin
    rc, _, err = await run_script(env, url=catcher.url)
    assert (rc, err) == (0, "")
    assert catcher.bodies[0]["output"] == "CRITICAL - caf\ufffd down"


async def test_print_shows_the_json_without_sending() -> None:
    rc, out, _ = await run_script(nagios_env(NOTIFICATIONCOMMENT="ünï ✓"), "--print", url=None, token=None)
    assert rc == 0
    body = json.loads(out)
    assert body["type"] == "PROBLEM" and body["comment"] == "ünï ✓" and body["problem_id"] == 7


# --- the webhook model --------------------------------------------------------------------------------


def payload(**changes: Any) -> dict[str, Any]:
    """A service PROBLEM as the script posts it."""
    body: dict[str, Any] = {
        "type": "PROBLEM",
        "host": "web01",
        "host_state": "UP",
        "service": "HTTP",
        "service_state": "CRITICAL",
        "state_type": "HARD",
        "output": "CRITICAL - connection refused",
        "long_output": "",
        "perfdata": "time=5s;1;2",
        "time": "Thu Nov 26 04:24:03 UTC 2026",
        "timet": 1795667043,
        "last_state_change": 1795667040,
        "problem_id": 7,
        "last_problem_id": 0,
        "author": "",
        "comment": "",
        "notification_number": 1,
        "attempt": 1,
    }
    body.update(changes)
    return body


def one(body: Any) -> Alert:
    batch = NagiosWebhook().parse(body)
    assert batch.source == "nagios" and len(batch.alerts) == 1
    return batch.alerts[0]


def test_a_service_problem_fires() -> None:
    batch = NagiosWebhook().parse(payload(long_output="detail 1\ndetail 2"))
    [a] = batch.alerts
    assert (a.source, a.fingerprint, a.name, a.status) == ("nagios", "web01/HTTP", "web01/HTTP", AlertStatus.FIRING)
    assert (a.severity, a.group_key) == (Severity.CRITICAL, "nagios:web01")
    assert a.labels == (("host", "web01"), ("nagios_service", "HTTP"), ("state", "CRITICAL"), ("state_type", "HARD"))
    assert (a.summary, a.value) == ("CRITICAL - connection refused", "time=5s;1;2")
    assert a.starts_at == datetime.fromtimestamp(1795667040, UTC) and a.ends_at is None
    assert a.annotation("description") == "detail 1\ndetail 2"
    assert a.annotation("nagios_problem_id") == "7"
    assert a.annotation("nagios_event") == ""  # a state change, not an event
    assert batch.group_labels == (("host", "web01"),)


@pytest.mark.parametrize(("problem_id", "last_problem_id"), [(7, 0), (0, 7)])
def test_a_recovery_resolves_the_same_fingerprint(problem_id: int, last_problem_id: int) -> None:
    # 4.4.6 sends the recovered problem's id as problem_id (observed); Nagios's docs put it in the
    # last_problem_id of a RECOVERY. Either way it names the problem that ended.
    a = one(
        payload(
            type="RECOVERY",
            service_state="OK",
            output="HTTP OK",
            problem_id=problem_id,
            last_problem_id=last_problem_id,
        )
    )
    assert (a.fingerprint, a.status, a.severity) == ("web01/HTTP", AlertStatus.RESOLVED, Severity.INFO)
    assert a.ends_at == datetime.fromtimestamp(1795667043, UTC) and a.starts_at is None
    assert a.annotation("nagios_problem_id") == "7"
    assert a.annotation("nagios_event") == ""


def test_an_acknowledgement_keeps_firing_and_says_who_and_why() -> None:
    a = one(payload(type="ACKNOWLEDGEMENT", author="alice", comment=HOSTILE_COMMENT))
    assert (a.status, a.severity) == (AlertStatus.FIRING, Severity.CRITICAL)
    assert a.annotation("nagios_event") == "ACKNOWLEDGEMENT"
    assert (a.annotation("nagios_author"), a.annotation("nagios_comment")) == ("alice", HOSTILE_COMMENT)


@pytest.mark.parametrize(
    ("kind", "state", "status"),
    [
        ("FLAPPINGSTART", "WARNING", AlertStatus.FIRING),
        ("FLAPPINGSTOP", "OK", AlertStatus.RESOLVED),
        ("DOWNTIMESTART", "CRITICAL", AlertStatus.FIRING),
        ("DOWNTIMEEND", "OK", AlertStatus.RESOLVED),
        ("DOWNTIMECANCELLED", "UNKNOWN", AlertStatus.FIRING),
        ("CUSTOM", "CRITICAL", AlertStatus.FIRING),
        ("SOMETHINGNEW", "OK", AlertStatus.RESOLVED),
    ],
)
def test_other_notifications_keep_the_current_status(kind: str, state: str, status: AlertStatus) -> None:
    a = one(payload(type=kind, service_state=state, author="dave", comment="deploy window"))
    assert a.status is status and a.annotation("nagios_event") == kind
    assert a.annotation("nagios_author") == "dave" and a.annotation("nagios_comment") == "deploy window"


def test_a_host_notification_is_keyed_by_the_host() -> None:
    a = one(payload(service=None, service_state=None, host_state="DOWN", output="PING CRITICAL"))
    assert (a.fingerprint, a.name, a.group_key) == ("web01", "web01", "nagios:web01")
    assert a.severity is Severity.CRITICAL and a.status is AlertStatus.FIRING
    assert a.labels == (("host", "web01"), ("state", "DOWN"), ("state_type", "HARD"))


@pytest.mark.parametrize(
    ("state", "severity"),
    [
        ("CRITICAL", Severity.CRITICAL),
        ("DOWN", Severity.CRITICAL),
        ("UNREACHABLE", Severity.CRITICAL),
        ("WARNING", Severity.WARNING),
        ("UNKNOWN", Severity.WARNING),
        ("OK", Severity.INFO),
        ("UP", Severity.INFO),
        ("PENDING", Severity.INFO),
        ("critical", Severity.CRITICAL),
    ],
)
def test_severity(state: str, severity: Severity) -> None:
    assert severity_of(state) is severity


def test_strings_and_blanks_and_extra_fields_are_tolerated() -> None:
    # A hand-written curl command (§4.2 of the reference) sends every macro as a string, some empty.
    a = one(
        {
            "type": "PROBLEM",
            "host": "web01",
            "service": "HTTP",
            "service_state": "WARNING",
            "timet": "1795667043",
            "last_state_change": "",
            "problem_id": "",
            "statetype": "HARD",
            "contact": "opsloop",
        }
    )
    assert a.severity is Severity.WARNING and a.starts_at == datetime.fromtimestamp(1795667043, UTC)
    assert a.annotation("nagios_problem_id") == "" and a.value is None
    empty_service = one(payload(service="", service_state="", host_state="UNREACHABLE"))
    assert empty_service.fingerprint == "web01" and empty_service.severity is Severity.CRITICAL


@pytest.mark.parametrize(
    "body",
    [
        payload(host=""),
        payload(type=""),
        {k: v for k, v in payload().items() if k != "host"},
        payload(timet="yesterday"),
        ["not", "an", "object"],
        "PROBLEM",
    ],
)
def test_malformed_payloads_raise_validation_errors(body: Any) -> None:
    with pytest.raises(ValidationError):
        NagiosWebhook().parse(body)


# --- status.dat ---------------------------------------------------------------------------------------

STATUS_DAT = """\
########################################
#          NAGIOS STATUS FILE
########################################

info {{
	created={created}
	version=4.4.6
	last_update_check=0
	}}

programstatus {{
	nagios_pid=655
	program_start=1795677103
	enable_notifications={notifications}
	}}

hoststatus {{
	host_name=web01
	has_been_checked=1
	current_state=0
	plugin_output=PING OK
	}}

hoststatus {{
	host_name=db01
	has_been_checked=1
	current_state=1
	plugin_output=PING CRITICAL - rta=1 {{
	}}

hoststatus {{
	host_name=new01
	has_been_checked=0
	current_state=0
	}}

servicestatus {{
	host_name=web01
	service_description=HTTP
	has_been_checked=1
	current_state=2
	plugin_output=CRITICAL - a=b==c
	problem_has_been_acknowledged=0
	}}

servicestatus {{
	host_name=web01
	service_description=Disk /var
	has_been_checked=1
	current_state=1
	}}

servicestatus {{
	host_name=db01
	service_description=HTTP
	has_been_checked=1
	current_state=3
	}}

servicestatus {{
	host_name=new01
	service_description=HTTP
	has_been_checked=0
	current_state=0
	}}

servicecomment {{
	host_name=web01
	service_description=HTTP
	comment_data=see INC-42; it's "bad" {{
	}}
"""


def write_status(path: Path, *, age: int = 3, notifications: int = 1) -> None:
    path.write_text(STATUS_DAT.format(created=int(time.time()) - age, notifications=notifications))


def test_parse_status_keeps_values_whole() -> None:
    blocks = list(parse_status(STATUS_DAT.format(created=1, notifications=1)))
    assert [k for k, _ in blocks][:3] == ["info", "programstatus", "hoststatus"]
    assert len(blocks) == 10
    services = [f for k, f in blocks if k == "servicestatus"]
    assert services[0]["plugin_output"] == "CRITICAL - a=b==c"
    assert blocks[3][1]["plugin_output"] == "PING CRITICAL - rta=1 {"
    assert blocks[-1][1]["comment_data"] == 'see INC-42; it\'s "bad" {'


@pytest.fixture
def fifo_dir() -> Iterator[Path]:
    # Short and private: FIFOs and status files of one test.
    with tempfile.TemporaryDirectory(prefix="nagios-unit-") as d:
        yield Path(d)


@pytest.fixture
def nagios_files(fifo_dir: Path) -> tuple[str, str]:
    cmd, status = fifo_dir / "nagios.cmd", fifo_dir / "status.dat"
    os.mkfifo(cmd)
    write_status(status)
    return str(cmd), str(status)


@pytest.mark.parametrize(
    ("host", "service", "state"),
    [
        ("web01", "HTTP", "CRITICAL"),
        ("web01", "Disk /var", "WARNING"),
        ("db01", "HTTP", "UNKNOWN"),
        ("new01", "HTTP", "PENDING"),
        ("web01", None, "UP"),
        ("db01", None, "DOWN"),
        ("new01", None, "PENDING"),
    ],
)
async def test_status(
    pool: BlockingPool, nagios_files: tuple[str, str], host: str, service: str | None, state: str
) -> None:
    nagios = NagiosCommands(*nagios_files, pool=pool)
    assert await nagios.status(host, service) == state


async def test_unknown_hosts_and_services_are_not_found(pool: BlockingPool, nagios_files: tuple[str, str]) -> None:
    nagios = NagiosCommands(*nagios_files, pool=pool)
    with pytest.raises(AdapterNotFound, match="Nagios: has no service `SSH` on host `web01`"):
        await nagios.status("web01", "SSH")
    with pytest.raises(AdapterNotFound, match="has no host `web99`"):
        await nagios.status("web99", None)


async def test_a_missing_status_file_is_unavailable(pool: BlockingPool, fifo_dir: Path) -> None:
    nagios = NagiosCommands(str(fifo_dir / "nagios.cmd"), str(fifo_dir / "status.dat"), pool=pool)
    with pytest.raises(AdapterUnavailable, match=re.escape(f"status file {fifo_dir}/status.dat does not exist")):
        await nagios.status("web01", "HTTP")
    with pytest.raises(AdapterUnavailable, match="does not exist"):
        await nagios.check()


# --- the command writer -------------------------------------------------------------------------------


class Reader:
    """The reading end of a test FIFO, like Nagios's command worker (read-write, so it never sees EOF)."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)

    def read(self) -> bytes:
        try:
            return os.read(self.fd, 65536)
        except BlockingIOError:
            return b""

    def close(self) -> None:
        os.close(self.fd)


@pytest.fixture
def reader(nagios_files: tuple[str, str]) -> Iterator[Reader]:
    r = Reader(nagios_files[0])
    yield r
    r.close()


async def test_acknowledge_writes_one_sticky_notifying_persistent_command(
    pool: BlockingPool, nagios_files: tuple[str, str], reader: Reader
) -> None:
    nagios = NagiosCommands(*nagios_files, pool=pool)
    before = int(time.time())
    await nagios.acknowledge("web01", "HTTP", "alice", 'Investigating; see INC-42 & "it\'s" $HOME ✓')
    line = reader.read().decode()
    m = re.fullmatch(r"\[(\d+)\] (.*)\n", line, re.S)
    assert m is not None, line
    assert before <= int(m.group(1)) <= int(time.time())
    assert m.group(2) == 'ACKNOWLEDGE_SVC_PROBLEM;web01;HTTP;2;1;1;alice;Investigating; see INC-42 & "it\'s" $HOME ✓'

    await nagios.acknowledge("db01", None, "bob", "rebooting")
    assert re.fullmatch(r"\[\d+\] ACKNOWLEDGE_HOST_PROBLEM;db01;2;1;1;bob;rebooting\n", reader.read().decode())


@pytest.mark.parametrize(
    ("host", "service", "author", "comment", "message"),
    [
        ("web01\n[0] SHUTDOWN_PROGRAM", "HTTP", "alice", "x", "host containing"),
        ("web01", "HTTP;2;1;1;mallory;owned", "alice", "x", "service containing"),
        ("web01", "HTTP", "alice;2", "x", "author containing"),
        ("web01", "HTTP", "alice", "fine\n[0] DISABLE_NOTIFICATIONS", "comment containing a line break"),
        ("web01", "HTTP", "alice", "fine\r[0] DISABLE_NOTIFICATIONS", "comment containing a line break"),
        ("web01", "HTTP\r", "alice", "x", "service containing"),
        ("web01", "HTTP", "alice", "cut\0here", "NUL"),
        ("web01", "HTTP", "alice", "   ", "needs a comment"),
        ("", None, "alice", "x", "a host"),
        ("web01", "", "alice", "x", "a host"),
        ("web01", "HTTP", "alice", "x" * 5000, "shorten the comment"),
    ],
)
async def test_acknowledge_refuses_what_would_break_out_of_its_field(
    pool: BlockingPool,
    nagios_files: tuple[str, str],
    reader: Reader,
    host: str,
    service: str | None,
    author: str,
    comment: str,
    message: str,
) -> None:
    nagios = NagiosCommands(*nagios_files, pool=pool)
    with pytest.raises(AdapterError, match=re.escape(message)) as info:
        await nagios.acknowledge(host, service, author, comment)
    assert type(info.value) is AdapterError and str(info.value).startswith("Nagios: ")
    assert reader.read() == b""  # nothing at all was written


async def test_acknowledging_an_unknown_service_writes_nothing(
    pool: BlockingPool, nagios_files: tuple[str, str], reader: Reader
) -> None:
    nagios = NagiosCommands(*nagios_files, pool=pool)
    with pytest.raises(AdapterNotFound, match="service `SSH` on host `web01`"):
        await nagios.acknowledge("web01", "SSH", "alice", "x")
    assert reader.read() == b""


async def test_without_status_file_the_fifo_decides(
    pool: BlockingPool, nagios_files: tuple[str, str], reader: Reader
) -> None:
    os.unlink(nagios_files[1])  # Nagios has just started and not written it yet
    await NagiosCommands(*nagios_files, pool=pool).acknowledge("web01", "HTTP", "alice", "x")
    assert reader.read().endswith(b"ACKNOWLEDGE_SVC_PROBLEM;web01;HTTP;2;1;1;alice;x\n")


async def test_a_fifo_nobody_reads_means_nagios_is_not_running(
    pool: BlockingPool, nagios_files: tuple[str, str]
) -> None:
    nagios = NagiosCommands(*nagios_files, pool=pool)
    path = nagios_files[0]
    # A blocking open would hang here (and end as AdapterTimeout from the pool), not fail at once.
    with pytest.raises(AdapterUnavailable, match=re.escape(f"Nagios: is not running (nobody reads {path})")):
        await nagios.acknowledge("web01", "HTTP", "alice", "x")
    with pytest.raises(AdapterUnavailable, match="is not running"):
        await nagios.check()


async def test_a_missing_command_file_names_the_path(pool: BlockingPool, fifo_dir: Path) -> None:
    write_status(fifo_dir / "status.dat")
    path = str(fifo_dir / "rw" / "nagios.cmd")
    nagios = NagiosCommands(path, str(fifo_dir / "status.dat"), pool=pool)
    with pytest.raises(AdapterUnavailable, match=re.escape(f"command file {path} does not exist")):
        await nagios.acknowledge("web01", "HTTP", "alice", "x")


async def test_a_regular_file_is_not_written_to(pool: BlockingPool, fifo_dir: Path) -> None:
    write_status(fifo_dir / "status.dat")
    path = fifo_dir / "nagios.cmd"
    path.write_text("")
    nagios = NagiosCommands(str(path), str(fifo_dir / "status.dat"), pool=pool)
    with pytest.raises(AdapterError, match="is not a FIFO"):
        await nagios.acknowledge("web01", "HTTP", "alice", "x")
    assert path.read_text() == ""


async def test_check_reports_version_and_age(pool: BlockingPool, nagios_files: tuple[str, str], reader: Reader) -> None:
    nagios = NagiosCommands(*nagios_files, pool=pool)
    text = await nagios.check()
    m = re.fullmatch(r"Nagios 4\.4\.6, status updated (\d+) s ago", text)
    assert m is not None, text
    assert int(m.group(1)) >= 3
    assert reader.read() == b""  # checking writes no command
    write_status(Path(nagios_files[1]), notifications=0)
    assert (await nagios.check()).endswith(", notifications disabled")


# --- a real Nagios ------------------------------------------------------------------------------------


@pytest.mark.servers
async def test_real_nagios_problem_ack_recovery_round_trip(catcher: Catcher, pool: BlockingPool) -> None:
    webhook = NagiosWebhook()
    async with nagios_server(url=catcher.url, token=TOKEN) as server:
        nagios = NagiosCommands(server.command_file, server.status_file, pool=pool)
        assert re.fullmatch(r"Nagios 4\.\d+\.\d+, status updated \d+ s ago", await nagios.check())

        # CRITICAL: Nagios runs the script, which posts a PROBLEM.
        server.service_result(2, f"{HOSTILE_OUTPUT}|time=5.1s;1;2")
        problem = await catcher.wait_for(lambda b: b["type"] == "PROBLEM", "the PROBLEM notification")
        assert catcher.requests[0]["authorization"] == f"Bearer {TOKEN}"
        assert (problem["host"], problem["service"], problem["service_state"]) == ("web01", "HTTP", "CRITICAL")
        # Debian's illegal_macro_output_chars is set, yet the environment macro keeps quotes, & and $.
        # Only the `;` is Nagios's own doing: it turns `;` in plugin output into `:` when it reads it.
        assert problem["output"] == HOSTILE_OUTPUT.replace(";", ":")
        assert problem["perfdata"] == "time=5.1s;1;2"
        assert problem["state_type"] == "HARD" and problem["problem_id"] > 0
        fired = webhook.parse(problem).alerts[0]
        assert (fired.fingerprint, fired.status, fired.severity) == (
            "web01/HTTP",
            AlertStatus.FIRING,
            Severity.CRITICAL,
        )
        await server.wait_status("servicestatus", lambda s: s["current_state"] == "2")
        assert await nagios.status("web01", "HTTP") == "CRITICAL"

        # Acknowledge through the adapter: the ACKNOWLEDGEMENT comes back with author and comment intact.
        await nagios.acknowledge("web01", "HTTP", "alice O'Brien", HOSTILE_COMMENT)
        ack = await catcher.wait_for(lambda b: b["type"] == "ACKNOWLEDGEMENT", "the ACKNOWLEDGEMENT notification")
        assert (ack["author"], ack["comment"]) == ("alice O'Brien", HOSTILE_COMMENT)
        acked = webhook.parse(ack).alerts[0]
        assert acked.status is AlertStatus.FIRING and acked.fingerprint == fired.fingerprint
        assert acked.annotation("nagios_event") == "ACKNOWLEDGEMENT"
        assert acked.annotation("nagios_author") == "alice O'Brien"
        assert acked.annotation("nagios_comment") == HOSTILE_COMMENT
        status = await server.wait_status("servicestatus", lambda s: s["problem_has_been_acknowledged"] == "1")
        assert status["acknowledgement_type"] == "2"  # sticky
        assert "EXTERNAL COMMAND: ACKNOWLEDGE_SVC_PROBLEM;web01;HTTP;2;1;1;alice O'Brien;" in server.log()

        # OK again: a RECOVERY for the same problem.
        server.service_result(0, "HTTP OK - 200 in 0.01 s")
        recovery = await catcher.wait_for(lambda b: b["type"] == "RECOVERY", "the RECOVERY notification")
        # Nagios 4.4.6 clears the problem id only after notifying, so the RECOVERY still carries it.
        assert recovery["problem_id"] == problem["problem_id"] and recovery["service_state"] == "OK"
        resolved = webhook.parse(recovery).alerts[0]
        assert (resolved.fingerprint, resolved.status) == ("web01/HTTP", AlertStatus.RESOLVED)
        assert resolved.annotation("nagios_problem_id") == fired.annotation("nagios_problem_id")
        await server.wait_status("servicestatus", lambda s: s["current_state"] == "0")
        assert await nagios.status("web01", "HTTP") == "OK"
        assert [b["type"] for b in catcher.bodies] == ["PROBLEM", "ACKNOWLEDGEMENT", "RECOVERY"]
        assert all(r["authorization"] == f"Bearer {TOKEN}" for r in catcher.requests)


@pytest.mark.servers
async def test_real_nagios_host_down_ack_and_up(catcher: Catcher, pool: BlockingPool) -> None:
    async with nagios_server(url=catcher.url, token=TOKEN, host="db01", service="Disk /var") as server:
        nagios = NagiosCommands(server.command_file, server.status_file, pool=pool)
        server.host_result(1, "PING CRITICAL - Packet loss = 100%|pl=100%")
        problem = await catcher.wait_for(lambda b: b["type"] == "PROBLEM", "the host PROBLEM")
        assert (problem["host"], problem["service"], problem["host_state"]) == ("db01", None, "DOWN")
        assert (problem["output"], problem["perfdata"]) == ("PING CRITICAL - Packet loss = 100%", "pl=100%")
        alert = NagiosWebhook().parse(problem).alerts[0]
        assert (alert.fingerprint, alert.severity, alert.group_key) == ("db01", Severity.CRITICAL, "nagios:db01")

        await server.wait_status("hoststatus", lambda s: s["current_state"] == "1")
        assert await nagios.status("db01", None) == "DOWN"
        await nagios.acknowledge("db01", None, "bob", "rebooting; back in 5")
        ack = await catcher.wait_for(lambda b: b["type"] == "ACKNOWLEDGEMENT", "the host ACKNOWLEDGEMENT")
        assert (ack["service"], ack["author"], ack["comment"]) == (None, "bob", "rebooting; back in 5")
        await server.wait_status("hoststatus", lambda s: s["problem_has_been_acknowledged"] == "1")

        server.host_result(0, "PING OK")
        recovery = await catcher.wait_for(lambda b: b["type"] == "RECOVERY", "the host RECOVERY")
        assert NagiosWebhook().parse(recovery).alerts[0].status is AlertStatus.RESOLVED
        # A service name with a space and a slash works in status and commands alike.
        assert await nagios.status("db01", "Disk /var") == "PENDING"


@pytest.mark.servers
async def test_real_nagios_logs_a_failed_delivery(catcher: Catcher) -> None:
    catcher.token = "a-different-token"  # opsloop would refuse the script's token
    async with nagios_server(url=catcher.url, token=TOKEN) as server:
        server.service_result(2, "CRITICAL - down")
        log = await server.wait_log("opsloop-nagios-notify: PROBLEM for web01/HTTP not delivered")
        assert "opsloop answered 401" in log
        assert TOKEN not in log
        assert catcher.bodies == []


@pytest.mark.servers
async def test_real_nagios_stopped_is_unavailable_not_a_hang(catcher: Catcher, pool: BlockingPool) -> None:
    async with nagios_server(url=catcher.url, token=TOKEN) as server:
        nagios = NagiosCommands(server.command_file, server.status_file, pool=pool)
        await nagios.check()
        await server.stop()
        # A clean shutdown removes status.dat but leaves the FIFO; with nobody reading it, a blocking
        # open would hang until Nagios came back.
        assert Path(server.command_file).exists() and not Path(server.status_file).exists()
        with pytest.raises(AdapterUnavailable, match=re.escape(f"is not running (nobody reads {server.command_file})")):
            await nagios.acknowledge("web01", "HTTP", "alice", "x")
        with pytest.raises(AdapterUnavailable, match="does not exist"):
            await nagios.check()
        with pytest.raises(AdapterUnavailable, match="does not exist"):
            await nagios.status("web01", "HTTP")


@pytest.mark.servers
async def test_real_nagios_killed_leaves_a_stale_status_that_check_sees_through(
    catcher: Catcher, pool: BlockingPool
) -> None:
    async with nagios_server(url=catcher.url, token=TOKEN) as server:
        nagios = NagiosCommands(server.command_file, server.status_file, pool=pool)
        server.proc.kill()  # a crash: no clean-up, status.dat stays
        await server.proc.wait()
        await server.stop()  # its workers and command worker too
        assert Path(server.status_file).exists()
        with pytest.raises(AdapterUnavailable, match="is not running"):
            await nagios.check()
        with pytest.raises(AdapterUnavailable, match="is not running"):
            await nagios.acknowledge("web01", "HTTP", "alice", "x")
        assert await nagios.status("web01", "HTTP") == "PENDING"  # the last state it wrote
