"""Nagios Core 4: notifications in (`NagiosWebhook`), acknowledgements out and status (`NagiosCommands`).

Notifications arrive as the JSON that `scripts/opsloop-nagios-notify` posts to `/hooks/nagios` (it
reads Nagios's environment macros, which, unlike command-line macros, arrive unmodified).
`NagiosWebhook.parse` turns one notification into one `Alert`:

* `fingerprint` and `name` are `host/service`, or `host` for a host notification; `group_key` is
  `nagios:<host>`, so a host's problems share one card.
* PROBLEM fires and RECOVERY resolves. Every other type (ACKNOWLEDGEMENT, FLAPPINGSTART/STOP/DISABLED,
  DOWNTIMESTART/END/CANCELLED, CUSTOM, and any type a later Nagios adds) is an *event* about an alert,
  not a change of it. The adapter keeps no state, so it takes the alert's current status from the
  state Nagios sends with every notification: OK/UP is resolved, anything else firing. Such alerts
  carry the annotation `nagios_event=<type>`; PROBLEM and RECOVERY never do, so "has `nagios_event`"
  is how the pipeline tells "acknowledged by alice" apart from a state change. `nagios_author` and
  `nagios_comment` hold who acknowledged (or scheduled the downtime) and why, when Nagios gives them.
* severity: CRITICAL/DOWN/UNREACHABLE critical, WARNING/UNKNOWN warning, anything else (OK, UP,
  PENDING) info, from the service state (host state for host notifications).
* labels `host`, `service` (service notifications only), `state`, `state_type`; `summary` is the first
  line of plugin output, `value` the perfdata; `description` annotates the long output and
  `nagios_problem_id` the problem the notification is about, which correlates a PROBLEM with its
  RECOVERY. It is `problem_id`, else `last_problem_id`: Nagios 4.4.6 still sends the recovered
  problem's id as the current one in a RECOVERY (observed), while its documentation puts it in the
  last one.
* `starts_at` (firing alerts only) is when the state last changed, falling back to the notification
  time for PROBLEMs; a RECOVERY's `ends_at` is its notification time.

`NagiosCommands` writes external commands into Nagios's command FIFO and reads `status.dat`, both on
the blocking pool (a FIFO write and a multi-megabyte file read are blocking calls):

* The FIFO is opened with O_WRONLY|O_NONBLOCK. A blocking open would hang until Nagios starts, and the
  FIFO stays on disk after Nagios stops; with O_NONBLOCK the open fails at once with ENXIO instead.
  `check()` opens it too (writing nothing): status.dat is removed by a clean stop but left behind by
  a crash, so only the FIFO tells whether Nagios runs now.
* Each command is one `write()` of at most PIPE_BUF (4096) bytes: the kernel makes such a write atomic,
  so it cannot interleave with commands from other writers (CGIs, scripts); longer ones are refused.
* A field holding `\\n` or `\\r` would end the command and start another one; a `;` (except in the
  comment, which Nagios reads to end of line) would shift the fields. Both are refused before anything
  is written. So are NUL (it would cut the C string) and an empty comment (Nagios rejects it, and only
  its log would say so).
* Acknowledgements are sticky (`2`: stays until the service is OK again; `1` would mean "normal",
  cleared by any state change), notify (`1`: the ACKNOWLEDGEMENT notification comes back to opsloop
  and updates the card) and persistent (`1`: the comment survives a restart).
* Before acknowledging, status.dat is consulted: an unknown host or service is AdapterNotFound, since
  Nagios would ignore the command silently. The problem state is *not* checked: status.dat is
  rewritten only every `status_update_interval` (10 s on Debian), so a problem that was just notified
  may not be in it yet; Nagios ignores an acknowledgement of an OK service anyway.
* `status` answers OK/WARNING/CRITICAL/UNKNOWN for services, UP/DOWN/UNREACHABLE for hosts, and PENDING
  for an object Nagios has not checked yet (its `current_state` 0 would otherwise read as OK).
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from bot.blocking import BlockingPool
from bot.ports import (
    AdapterError,
    AdapterNotFound,
    AdapterUnavailable,
    Alert,
    AlertBatch,
    AlertStatus,
    Severity,
)

TOOL = "Nagios"

PIPE_BUF = 4096  # POSIX minimum is 512; Linux's is 4096, and Nagios runs on Linux here
_EAGAIN_WAIT = 2.0  # a full pipe drains within milliseconds while Nagios runs

_CRITICAL = frozenset({"CRITICAL", "DOWN", "UNREACHABLE"})
_WARNING = frozenset({"WARNING", "UNKNOWN"})
_RECOVERED = frozenset({"OK", "UP"})
_TRANSITIONS = {"PROBLEM": AlertStatus.FIRING, "RECOVERY": AlertStatus.RESOLVED}

_SERVICE_STATES = {"0": "OK", "1": "WARNING", "2": "CRITICAL", "3": "UNKNOWN"}
_HOST_STATES = {"0": "UP", "1": "DOWN", "2": "UNREACHABLE"}


# --- notifications in ------------------------------------------------------------------------------


def _blank_to_none(value: Any) -> Any:
    """Nagios leaves some macros empty; an empty string means "absent", not a value."""
    if isinstance(value, str) and not value.strip():
        return None
    return value


# The last second datetime can hold (9999-12-31T23:59:59Z): a later epoch cannot be shown on a card.
_MAX_EPOCH = 253_402_300_799


def _epoch_in_range(value: int | None) -> int | None:
    if value is not None and not 0 <= value <= _MAX_EPOCH:
        raise ValueError(f"{value} is not a Unix time between 1970 and 9999")
    return value


_OptInt = Annotated[int | None, BeforeValidator(_blank_to_none)]
_OptEpoch = Annotated[int | None, BeforeValidator(_blank_to_none), AfterValidator(_epoch_in_range)]
_OptStr = Annotated[str | None, BeforeValidator(_blank_to_none)]


class NagiosNotification(BaseModel):
    """What `opsloop-nagios-notify` posts; unknown fields are ignored so the script may grow."""

    model_config = ConfigDict(extra="ignore")

    type: str = Field(min_length=1)
    host: str = Field(min_length=1)
    host_state: str = ""
    service: _OptStr = None
    service_state: _OptStr = None
    state_type: str = ""
    output: str = ""
    long_output: str = ""
    perfdata: str = ""
    time: str = ""
    timet: _OptEpoch = None
    last_state_change: _OptEpoch = None
    problem_id: _OptInt = None
    last_problem_id: _OptInt = None
    author: str = ""
    comment: str = ""
    notification_number: _OptInt = None
    attempt: _OptInt = None

    @property
    def state(self) -> str:
        """The state this notification is about: the service's, or the host's for host notifications."""
        return ((self.service_state if self.service else self.host_state) or "").upper()


def _at(epoch: int | None) -> datetime | None:
    # Nagios uses 0 for "never"; that is not a time anyone wants on a card.
    return datetime.fromtimestamp(epoch, UTC) if epoch else None


def severity_of(state: str) -> Severity:
    """Nagios state -> our severity."""
    state = state.upper()
    if state in _CRITICAL:
        return Severity.CRITICAL
    if state in _WARNING:
        return Severity.WARNING
    return Severity.INFO


class NagiosWebhook:
    """`bot.ports.AlertSource` for the JSON of `scripts/opsloop-nagios-notify`."""

    name = "nagios"

    def parse(self, payload: Any) -> AlertBatch:
        """One notification -> a batch of one alert; pydantic.ValidationError when malformed."""
        n = NagiosNotification.model_validate(payload)
        kind = n.type.strip().upper()
        state = n.state
        status = _TRANSITIONS.get(kind)
        annotations: list[tuple[str, str]] = []
        if status is None:
            status = AlertStatus.RESOLVED if state in _RECOVERED else AlertStatus.FIRING
            annotations.append(("nagios_event", kind))
        if n.author:
            annotations.append(("nagios_author", n.author))
        if n.comment:
            annotations.append(("nagios_comment", n.comment))
        if n.long_output:
            annotations.append(("description", n.long_output))
        problem = n.problem_id or n.last_problem_id
        if problem:
            annotations.append(("nagios_problem_id", str(problem)))

        key = f"{n.host}/{n.service}" if n.service else n.host
        labels = [("host", n.host)]
        if n.service:
            # Not `service`: that label names an opsloop service (routing, releases), this is Nagios's.
            labels.append(("nagios_service", n.service))
        labels += [("state", state), ("state_type", n.state_type.upper())]
        starts = _at(n.last_state_change) or (_at(n.timet) if kind == "PROBLEM" else None)
        alert = Alert(
            source=self.name,
            fingerprint=key,
            status=status,
            name=key,
            severity=severity_of(state),
            group_key=f"nagios:{n.host}",
            labels=tuple(labels),
            annotations=tuple(annotations),
            starts_at=starts if status is AlertStatus.FIRING else None,
            ends_at=_at(n.timet) if kind == "RECOVERY" else None,
            summary=n.output,
            value=n.perfdata or None,
        )
        return AlertBatch(source=self.name, alerts=(alert,), group_labels=(("host", n.host),))


# --- status.dat ------------------------------------------------------------------------------------


def parse_status(text: str) -> Iterator[tuple[str, dict[str, str]]]:
    """The blocks of a status.dat: `(kind, fields)` for each `kind {` ... `}`.

    Values run to the end of the line and may hold `=` (plugin output does); Nagios writes the file
    to a temporary name and renames it, so a reader never sees half of one.
    """
    kind: str | None = None
    fields: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if kind is None:
            if line.endswith("{"):
                kind, fields = line[:-1].strip(), {}
        elif line == "}":
            yield kind, fields
            kind = None
        else:
            key, sep, value = raw.lstrip().partition("=")
            if sep:
                fields[key] = value


def _describe(host: str, service: str | None) -> str:
    return f"service `{service}` on host `{host}`" if service else f"host `{host}`"


def _state_name(fields: dict[str, str], service: str | None) -> str:
    if fields.get("has_been_checked") == "0":
        return "PENDING"
    code = fields.get("current_state", "")
    names = _SERVICE_STATES if service else _HOST_STATES
    return names.get(code, f"state {code}")


# --- commands out ----------------------------------------------------------------------------------


class NagiosCommands:
    """`bot.ports.MonitoringHost` through the external command FIFO and status.dat."""

    name = "nagios"

    def __init__(self, command_file: str, status_file: str, *, pool: BlockingPool, timeout: float = 10.0) -> None:
        self.command_file = command_file
        self.status_file = status_file
        self._pool = pool
        self._timeout = timeout

    async def acknowledge(self, host: str, service: str | None, author: str, comment: str) -> None:
        """Acknowledge a host or service problem: sticky, notifying, persistent."""
        line = self._ack_line(host, service, author, comment)
        await self._pool.run(TOOL, self._acknowledge_sync, host, service, line, timeout=self._timeout)

    async def status(self, host: str, service: str | None) -> str:
        """OK / WARNING / CRITICAL / UNKNOWN (UP / DOWN / UNREACHABLE for hosts), or PENDING."""
        fields = await self._pool.run(TOOL, self._find_sync, host, service, timeout=self._timeout)
        return _state_name(fields, service)

    async def check(self) -> str:
        """Version and freshness, e.g. `Nagios 4.4.6, status updated 3 s ago`; AdapterUnavailable when
        Nagios is not running."""
        return await self._pool.run(TOOL, self._check_sync, timeout=self._timeout)

    # The rest runs on the pool.

    @staticmethod
    def _ack_line(host: str, service: str | None, author: str, comment: str) -> bytes:
        """The command line, or AdapterError if any argument would break out of its field."""
        fields = [("host", host), ("author", author)]
        if service is not None:
            fields.append(("service", service))
        for what, value in fields:
            if any(c in value for c in ";\n\r\0"):
                raise AdapterError(TOOL, f"refusing to send a {what} containing `;`, a line break or NUL: {value!r}")
        if any(c in comment for c in "\n\r\0"):
            raise AdapterError(TOOL, "refusing to send a comment containing a line break or NUL")
        if not host.strip() or (service is not None and not service.strip()):
            raise AdapterError(TOOL, "a host (and, for a service, its name) is needed to acknowledge")
        if not comment.strip():
            raise AdapterError(TOOL, "an acknowledgement needs a comment (Nagios rejects one without)")
        target = (
            f"ACKNOWLEDGE_SVC_PROBLEM;{host};{service}" if service is not None else f"ACKNOWLEDGE_HOST_PROBLEM;{host}"
        )
        line = f"[{int(time.time())}] {target};2;1;1;{author};{comment}\n".encode()
        if len(line) > PIPE_BUF:
            raise AdapterError(
                TOOL,
                f"the acknowledgement is {len(line)} bytes; at most {PIPE_BUF} fit in one command, shorten the comment",
            )
        return line

    def _acknowledge_sync(self, host: str, service: str | None, line: bytes) -> None:
        try:
            self._find_sync(host, service)
        except AdapterUnavailable:
            pass  # no status.dat yet (Nagios just started): the FIFO decides whether Nagios is there
        self._write_sync(line)

    def _open_fifo(self) -> int:
        """The command FIFO opened for writing without blocking, or the AdapterError that explains why not."""
        path = self.command_file
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as err:
            if err.errno == errno.ENXIO:
                raise AdapterUnavailable(TOOL, f"is not running (nobody reads {path})") from None
            if err.errno == errno.ENOENT:
                raise AdapterUnavailable(
                    TOOL, f"command file {path} does not exist (is Nagios running with check_external_commands=1?)"
                ) from None
            if err.errno == errno.EACCES:
                raise AdapterError(
                    TOOL, f"may not write {path}: permission denied (opsloop's user needs the file's group)"
                ) from None
            raise AdapterUnavailable(TOOL, f"cannot open {path}: {err.strerror}") from None
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            # Appending to a regular file would "succeed" while nothing ever reads it.
            os.close(fd)
            raise AdapterError(TOOL, f"{path} is not a FIFO; set command_file to Nagios's command_file")
        return fd

    def _write_sync(self, line: bytes) -> None:
        fd = self._open_fifo()
        try:
            deadline = time.monotonic() + _EAGAIN_WAIT
            while True:
                try:
                    written = os.write(fd, line)
                    break
                except BlockingIOError:
                    # The pipe is full: Nagios is alive (it holds the FIFO open) but busy. A write of at
                    # most PIPE_BUF bytes is all-or-nothing, so retrying cannot duplicate a command.
                    if time.monotonic() > deadline:
                        raise AdapterUnavailable(
                            TOOL, f"is not reading its commands ({self.command_file} stayed full)"
                        ) from None
                    time.sleep(0.05)
                except BrokenPipeError:
                    raise AdapterUnavailable(
                        TOOL, f"stopped while the command was written to {self.command_file}"
                    ) from None
        finally:
            os.close(fd)
        if written != len(line):  # cannot happen for writes of at most PIPE_BUF bytes to a pipe
            raise AdapterError(TOOL, f"wrote only {written} of {len(line)} bytes to {self.command_file}")

    def _read_status(self) -> str:
        path = self.status_file
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            raise AdapterUnavailable(TOOL, f"status file {path} does not exist (is Nagios running?)") from None
        except OSError as err:
            raise AdapterError(TOOL, f"cannot read {path}: {err.strerror}") from None

    def _find_sync(self, host: str, service: str | None) -> dict[str, str]:
        kind = "servicestatus" if service is not None else "hoststatus"
        for block, fields in parse_status(self._read_status()):
            if (
                block == kind
                and fields.get("host_name") == host
                and (service is None or fields.get("service_description") == service)
            ):
                return fields
        raise AdapterNotFound(TOOL, f"has no {_describe(host, service)}")

    def _check_sync(self) -> str:
        info: dict[str, str] = {}
        program: dict[str, str] = {}
        for block, fields in parse_status(self._read_status()):
            if block == "info":
                info = fields
            elif block == "programstatus":
                program = fields
                break  # info comes first; the host and service blocks after it are not needed
        if not info:
            raise AdapterError(TOOL, f"{self.status_file} has no info block; is it Nagios's status_file?")
        # A crashed Nagios leaves status.dat behind (a clean stop removes it); only a reader on the FIFO
        # shows that Nagios runs now. Opening and closing it writes nothing, and Nagios opens its end
        # read-write, so a writer going away is no end-of-file to it (commands after a check still work).
        os.close(self._open_fifo())
        version = info.get("version", "(version unknown)")
        try:
            age = f"{max(0, int(time.time()) - int(info.get('created', '')))} s ago"
        except ValueError:
            age = "at an unknown time"
        notifications = "" if program.get("enable_notifications", "1") == "1" else ", notifications disabled"
        return f"Nagios {version}, status updated {age}{notifications}"
