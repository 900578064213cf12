"""A real Nagios Core 4 (Debian `nagios4-core`) in the foreground, in a temporary directory, for tests.

    async with nagios_server(url="http://127.0.0.1:PORT", token="secret") as nagios:
        nagios.service_result(2, "CRITICAL - down")   # a passive result: HARD at once, so it notifies
        await nagios.wait_status("servicestatus", lambda s: s["current_state"] == "2")
        ...

One host and one service, both passive, so a test decides their state by writing
`PROCESS_*_CHECK_RESULT` into the command file instead of waiting for a plugin. With
`active_service=True` the service is checked actively instead, every second, by a plugin (a small
script) that answers what the test last wrote with `set_service_check(code, output)`. With
`max_check_attempts 1` every result is a HARD state, and Nagios notifies at once. Notifications go
through `scripts/opsloop-nagios-notify`, wired as in its docstring (environment macros, `url=` and
`token=` in a config file, since Nagios passes its own, deliberately bare, environment on to it). The
minimal config is the one in reference/operate-monitor-plan-apis.md §4.6, with `interval_length=1`
and a 1 s status update, plus Debian's `illegal_macro_output_chars`, so tests show that the
environment route is not affected by it.

The directory is a short one under /tmp, not pytest's tmp_path: Nagios's query socket lives in it
and a Unix socket path may not exceed 107 bytes. Nagios runs in a session of its own; at the end it
gets SIGTERM, then SIGKILL after 10 s, and whatever is left of its session is killed, so no worker
or notification script outlives the test. When the body of the `async with` fails, the tail of nagios.log is printed, so
pytest shows it beside the failure.

Runs as root (`nagios_user=root`, which 4.4.6 accepts) or as any other user (Nagios keeps the user
it was started as). When /usr/sbin/nagios4 is missing, `need_nagios()` skips the test, or fails it
when OPSLOOP_REQUIRE_SERVERS=1.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import os
import pwd
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from tests.conftest import require_servers

NAGIOS = "/usr/sbin/nagios4"
NOTIFY_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "opsloop-nagios-notify"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0

NAGIOS_CFG = """\
log_file={d}/var/nagios.log
cfg_file={d}/objects.cfg
object_cache_file={d}/var/objects.cache
precached_object_file={d}/var/objects.precache
status_file={d}/var/status.dat
status_update_interval=1
nagios_user={user}
nagios_group={group}
check_external_commands=1
command_file={d}/var/rw/nagios.cmd
query_socket={d}/var/rw/nagios.qh
lock_file={d}/var/nagios.lock
temp_file={d}/var/nagios.tmp
temp_path={d}/var
check_result_path={d}/var/spool/checkresults
retain_state_information=0
state_retention_file={d}/var/retention.dat
interval_length=1
service_inter_check_delay_method=n
host_inter_check_delay_method=n
max_service_check_spread=1
max_host_check_spread=1
check_result_reaper_frequency=1
enable_notifications=1
enable_environment_macros=1
enable_flap_detection=0
use_syslog=0
illegal_macro_output_chars=`~$&|'"<>
"""

# `define x {` on its own line, one directive per line, `}` alone: the layout that parsed (§4.6).
OBJECTS_CFG = """\
define timeperiod {{
  timeperiod_name 24x7
  alias 24x7
  sunday 00:00-24:00
  monday 00:00-24:00
  tuesday 00:00-24:00
  wednesday 00:00-24:00
  thursday 00:00-24:00
  friday 00:00-24:00
  saturday 00:00-24:00
}}
define command {{
  command_name passive-only
  command_line /bin/true
}}
define command {{
  command_name check-state-file
  command_line {d}/check-state {d}/service.state
}}
define command {{
  command_name notify-opsloop
  command_line {script} --config {d}/opsloop-notify.conf
}}
define contact {{
  contact_name opsloop
  host_notifications_enabled 1
  service_notifications_enabled 1
  host_notification_period 24x7
  service_notification_period 24x7
  host_notification_options d,u,r,f,s
  service_notification_options w,u,c,r,f,s
  host_notification_commands notify-opsloop
  service_notification_commands notify-opsloop
}}
define host {{
  host_name {host}
  address 127.0.0.1
  check_command passive-only
  active_checks_enabled 0
  passive_checks_enabled 1
  max_check_attempts 1
  check_interval 60
  check_period 24x7
  contacts opsloop
  notification_period 24x7
  notification_interval 0
  notification_options d,u,r,f,s
}}
define service {{
  host_name {host}
  service_description {service}
  check_command {service_check}
  active_checks_enabled {service_active}
  passive_checks_enabled 1
  check_freshness 0
  max_check_attempts 1
  check_interval {service_interval}
  retry_interval 1
  check_period 24x7
  contacts opsloop
  notification_period 24x7
  notification_interval 0
  notification_options w,u,c,r,f,s
}}
"""


# The active check of `active_service=True`: "<exit code> <output>" from the state file, as a plugin
# prints and exits. A state file that cannot be read is UNKNOWN, as a broken plugin would be.
CHECK_SCRIPT = """\
#!/bin/sh
read -r code output < "$1" || { echo "UNKNOWN - cannot read $1"; exit 3; }
echo "$output"
exit "$code"
"""


def need_nagios() -> None:
    """Skip (or, with OPSLOOP_REQUIRE_SERVERS=1, fail) when Nagios is not installed."""
    if os.path.isfile(NAGIOS) and os.access(NAGIOS, os.X_OK):
        return
    reason = f"{NAGIOS} not installed (apt-get install --no-install-recommends nagios4-core)"
    if require_servers():
        pytest.fail(f"OPSLOOP_REQUIRE_SERVERS=1 but {reason}")
    pytest.skip(reason)


def status_blocks(text: str) -> list[tuple[str, dict[str, str]]]:
    """status.dat as (kind, fields) pairs; the tests' own reader, independent of the adapter's."""
    blocks: list[tuple[str, dict[str, str]]] = []
    current: dict[str, str] | None = None
    for line in text.splitlines():
        line = line.strip()
        if current is None:
            if line.endswith("{"):  # only outside a block: a comment may end in "{" too
                current = {}
                blocks.append((line[:-1].strip(), current))
        elif line == "}":
            current = None
        elif "=" in line:
            key, _, value = line.partition("=")
            current[key] = value
    return blocks


class NagiosServer:
    """A running Nagios: its files, and ways to drive it and wait for it."""

    def __init__(self, root: Path, host: str, service: str, proc: asyncio.subprocess.Process) -> None:
        self.root = root
        self.host = host
        self.service = service
        self.proc = proc
        self.command_file = str(root / "var" / "rw" / "nagios.cmd")
        self.status_file = str(root / "var" / "status.dat")
        self.log_file = root / "var" / "nagios.log"
        self.output_file = root / "nagios.out"

    # --- driving it

    def command(self, text: str) -> None:
        """Write one external command (`[now] text`). Non-blocking: the FIFO has a reader while Nagios runs."""
        fd = os.open(self.command_file, os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.write(fd, f"[{int(time.time())}] {text}\n".encode())
        finally:
            os.close(fd)

    def service_result(self, code: int, output: str) -> None:
        """A passive service check result: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN."""
        self.command(f"PROCESS_SERVICE_CHECK_RESULT;{self.host};{self.service};{code};{output}")

    def set_service_check(self, code: int, output: str) -> None:
        """What the active service check (`active_service=True`) answers from its next run on:
        0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN. Replaced atomically, so a check never reads half of it."""
        _write_state(self.root, code, output)

    def notify_to(self, url: str, token: str) -> None:
        """Send notifications to another opsloop (the script reads its config file on every run)."""
        _write_notify_conf(self.root, url, token)

    def host_result(self, code: int, output: str) -> None:
        """A passive host check result: 0 UP, 1 DOWN, 2 UNREACHABLE."""
        self.command(f"PROCESS_HOST_CHECK_RESULT;{self.host};{code};{output}")

    async def stop(self) -> None:
        """Stop Nagios now (the end of `nagios_server` does it anyway); its files stay until then."""
        await _stop(self.proc)

    # --- looking at it

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def status(self, kind: str) -> dict[str, str]:
        """The first `kind` block of status.dat (`info`, `programstatus`, `hoststatus`, `servicestatus`)."""
        try:
            text = Path(self.status_file).read_text(errors="replace")
        except FileNotFoundError:
            return {}
        return next((fields for k, fields in status_blocks(text) if k == kind), {})

    async def wait_status(
        self, kind: str, pred: Callable[[dict[str, str]], bool], timeout: float = 20.0
    ) -> dict[str, str]:
        """Poll status.dat until `pred(block)` holds; the block."""
        deadline = time.monotonic() + timeout
        while True:
            fields = self.status(kind)
            if fields and pred(fields):
                return fields
            if time.monotonic() > deadline:
                raise AssertionError(f"status.dat {kind} never matched; last: {fields}\n{self.log_tail()}")
            await asyncio.sleep(0.1)

    async def wait_log(self, text: str, timeout: float = 20.0) -> str:
        """Poll nagios.log until it contains `text`; the log."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.log()
            if text in log:
                return log
            if time.monotonic() > deadline:
                raise AssertionError(f"nagios.log never showed {text!r}\n{self.log_tail()}")
            await asyncio.sleep(0.1)


def _write_config(root: Path, *, url: str, token: str, host: str, service: str, active_service: bool) -> Path:
    for sub in ("var/rw", "var/spool/checkresults"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    cfg = root / "nagios.cfg"
    cfg.write_text(NAGIOS_CFG.format(d=root, user=user, group=group))
    check = root / "check-state"
    check.write_text(CHECK_SCRIPT)
    check.chmod(0o755)
    _write_state(root, 0, "OK - nothing written yet")
    (root / "objects.cfg").write_text(
        OBJECTS_CFG.format(
            d=root,
            script=NOTIFY_SCRIPT,
            host=host,
            service=service,
            service_check="check-state-file" if active_service else "passive-only",
            service_active=int(active_service),
            service_interval=1 if active_service else 60,
        )
    )
    _write_notify_conf(root, url, token)
    return cfg


def _write_notify_conf(root: Path, url: str, token: str) -> None:
    conf = root / "opsloop-notify.conf"
    tmp = root / "opsloop-notify.conf.tmp"
    # A short timeout and one retry keep a failing delivery from holding a Nagios worker long.
    tmp.write_text(f"# written by tests/nagios_server.py\nurl={url}\ntoken={token}\ntimeout=5\nretries=1\n")
    tmp.chmod(0o600)
    tmp.replace(conf)


def _write_state(root: Path, code: int, output: str) -> None:
    if "\n" in output:
        raise ValueError("one line of plugin output, please")
    tmp = root / "service.state.tmp"
    tmp.write_text(f"{code} {output}\n")
    tmp.replace(root / "service.state")


def _fifo_has_reader(path: str) -> bool:
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:  # ENOENT before Nagios makes it, ENXIO until its command worker opens it
        return False
    return True


def _session_members(sid: int) -> list[int]:
    """Live processes of the session Nagios leads. Its workers (and the notification scripts they
    run) each get a process group of their own, but they stay in this session."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:  # gone meanwhile
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state ppid pgrp session ...
        if int(fields[3]) == sid and fields[0] != "Z":
            members.append(int(entry))
    return members


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    # After a clean shutdown nothing is left; after a kill the workers linger until they notice. They
    # were started by this Nagios (start_new_session made it lead a session of its own), so they go too.
    deadline = time.monotonic() + STOP_TIMEOUT
    while members := _session_members(proc.pid):
        for pid in members:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise AssertionError(f"Nagios processes {members} survived SIGKILL")
        await asyncio.sleep(0.05)


@asynccontextmanager
async def nagios_server(
    *, url: str, token: str, host: str = "web01", service: str = "HTTP", active_service: bool = False
) -> AsyncIterator[NagiosServer]:
    """Start Nagios, wait until it writes status.dat and reads its command file, stop it afterwards."""
    need_nagios()
    root = Path(tempfile.mkdtemp(prefix="opsloop-nagios-"))
    cfg = _write_config(root, url=url, token=token, host=host, service=service, active_service=active_service)
    # A bare environment: the notification script must get its settings from its config file, as it
    # would under a system service, not from the test's environment.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(root)}
    with open(root / "nagios.out", "wb") as out:  # a file, not a pipe nobody drains
        proc = await asyncio.create_subprocess_exec(
            NAGIOS, str(cfg), cwd=root, env=env, stdout=out, stderr=asyncio.subprocess.STDOUT, start_new_session=True
        )
    server = NagiosServer(root, host, service, proc)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not (os.path.exists(server.status_file) and _fifo_has_reader(server.command_file)):
            if proc.returncode is not None or time.monotonic() > deadline:
                output = server.output_file.read_text(errors="replace")
                what = f"exited with {proc.returncode}" if proc.returncode is not None else "did not start"
                raise AssertionError(f"Nagios {what} within {START_TIMEOUT:g} s:\n{output}\n{server.log_tail()}")
            await asyncio.sleep(0.05)
        try:
            yield server
        except BaseException as err:
            if not isinstance(err, pytest.skip.Exception):
                print(f"--- nagios.log ({root}) ---\n{server.log_tail(60)}")
            raise
    finally:
        await _stop(proc)
        shutil.rmtree(root, ignore_errors=True)
