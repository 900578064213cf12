"""A deploy target that runs a command (helm, ansible, a script): the `DeployTarget` port.

Never a shell. The configured argv runs through `asyncio.create_subprocess_exec`; `{service}`,
`{version}`, `{env}` and `{image}` are replaced inside single arguments, in one pass (a value that
itself holds `{env}` stays as typed), so `1.2.3; rm -rf /` reaches the program as one argument and
nothing interprets it. `argv[0]` is taken literally: chat text never chooses the program. A version
holding NUL, a line break, or starting with `-` (it could pass for an option of the program) is
refused before anything runs.

The child gets a small clean environment: PATH, HOME and LANG from ours, OPSLOOP_SERVICE,
OPSLOOP_VERSION, OPSLOOP_ENV, OPSLOOP_IMAGE, and the variables named in `pass_env` (KUBECONFIG,
say), so the bot's Slack tokens never reach a deploy script.

Output: stdout and stderr are merged, split into lines (a `\\r` progress bar keeps its last state,
ANSI colours are dropped), each line redacted (and every line of a PEM private key masked whole),
and reported through `progress` when 20 lines are waiting or a second has passed since the last
report, whichever comes first. The last lines go into the result message of a failure.

Stopping: the command starts in its own session (process group). When `spec.timeout_s` passes the
whole group gets SIGTERM, then SIGKILL after `kill_grace` seconds, so children of a script die with
it; the same happens when the deploy task is cancelled. If the command exits but something it left
behind still holds its output open, we wait a moment, then stop that group too (a process writing
into a pipe nobody reads would hang later instead).

What a command target can't do: re-attach after a restart (the child died with us, or is beyond
reach), scale or restart a workload, or report replicas. `running_version` is deliberately simple:
with a `version_file` template (`/var/lib/app/{service}-{env}.version`) opsloop writes the version
there after each successful deploy or rollback and reads it back; without one it answers None.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
import os
import re
import shutil
import signal
import tempfile
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from bot.ports import (
    AdapterError,
    AdapterUnavailable,
    DeployProgress,
    DeployResult,
    ProgressFn,
    TargetSpec,
    WorkloadStatus,
)

log = logging.getLogger(__name__)

TOOL = "command"
MASK = "[redacted]"
BATCH_LINES = 20
BATCH_SECONDS = 1.0
MAX_LINE = 2000  # characters; a longer line is reported in pieces of this size
MAX_PARTIAL = 65536  # characters without a newline after which they count as a line anyway
MAX_TAIL = 3000  # characters of output in a failure message
DRAIN_SECONDS = 2.0  # after the command exits, how long its output may take to close
_PLACEHOLDER = re.compile(r"\{(service|version|env|image)\}")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")
_BASE_ENV = ("PATH", "HOME", "LANG")


class Redacts(Protocol):
    """What we need of the bot's redactor (`bot.redact.Redactor`)."""

    def text(self, s: str) -> str: ...


@dataclass(frozen=True)
class _Run:
    """One run of the command, for messages."""

    program: str  # basename of argv[0]
    doing: str  # "deploying 1.2.3" / "rolling back to 1.2.2"
    done: str  # "deployed 1.2.3" / "rolled back to 1.2.2"


class _Output:
    """Bytes from the pipe -> clean, redacted lines: the ones not yet reported and the last few."""

    def __init__(self, redactor: Redacts, tail: int) -> None:
        self._redactor = redactor
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial = ""
        self._in_key = False
        self.pending: list[str] = []
        self.tail: deque[str] = deque(maxlen=tail)

    def feed(self, data: bytes) -> None:
        """Take a chunk of output; complete lines become pending."""
        text = self._partial + self._decoder.decode(data)
        *lines, self._partial = text.split("\n")
        if len(self._partial) > MAX_PARTIAL:  # no newline in sight: don't hold on to it without bound
            lines.append(self._partial)
            self._partial = ""
        for line in lines:
            self._add(line)

    def close(self) -> None:
        """End of output: the last line may lack its newline."""
        rest = self._partial + self._decoder.decode(b"", final=True)
        self._partial = ""
        if rest:
            self._add(rest)

    def take(self) -> str:
        """The pending lines as one text, and none pending any more."""
        text = "\n".join(self.pending)
        self.pending = []
        return text

    def _add(self, raw: str) -> None:
        line = _ANSI.sub("", raw.rstrip("\r"))
        line = line.rsplit("\r", 1)[-1]  # a progress bar redrawn with \r: what a terminal shows last
        line = self._mask(line)  # whole, before it is cut, so no secret is split across pieces
        for start in range(0, max(len(line), 1), MAX_LINE):
            piece = line[start : start + MAX_LINE]
            self.pending.append(piece)
            self.tail.append(piece)

    def _mask(self, line: str) -> str:
        # The redactor sees one line at a time, so a PEM block spread over lines is masked here.
        if self._in_key:
            if "-----END" in line:
                self._in_key = False
            return MASK
        if "-----BEGIN" in line and "PRIVATE KEY-----" in line and "-----END" not in line:
            self._in_key = True
            return MASK
        return self._redactor.text(line)


class CommandTarget:
    """Deploys by running a configured command; one instance serves every service that uses one."""

    name = "command"
    resumable = False
    operates = False
    revisions = False

    def __init__(
        self,
        *,
        redactor: Redacts,
        pass_env: Iterable[str] = (),
        version_file: str | None = None,
        commands: Iterable[Sequence[str]] = (),
        cwd: str | None = None,
        kill_grace: float = 10.0,
        tail_lines: int = 15,
    ) -> None:
        """`commands`: the configured argv lists, for `check()` to find their programs."""
        self._redactor = redactor
        self._pass_env = tuple(pass_env)
        if version_file is not None and {m[1] for m in _PLACEHOLDER.finditer(version_file)} - {"service", "env"}:
            raise ValueError("a version file may use {service} and {env} only")
        self._version_file = version_file
        self._programs = tuple(dict.fromkeys(c[0] for c in commands if c))
        self._cwd = cwd
        self._grace = kill_grace
        self._tail = tail_lines

    # ------------------------------------------------------------------ the port

    async def deploy(self, spec: TargetSpec, version: str, image: str | None, progress: ProgressFn) -> DeployResult:
        """Run the command with `version`; ok when it exits 0."""
        return await self._run(spec, version, image, progress, rollback=False)

    async def rollback(
        self, spec: TargetSpec, to_version: str | None, image: str | None, progress: ProgressFn
    ) -> DeployResult:
        """Run the same command with the older version (which a command target must be told)."""
        if not to_version:
            raise AdapterError(TOOL, "a command target needs the version to roll back to")
        return await self._run(spec, to_version, image, progress, rollback=True)

    async def resume(self, spec: TargetSpec, version: str, progress: ProgressFn) -> DeployResult:
        """Impossible: the command was our child, and it is gone or out of reach after a restart."""
        raise AdapterError(TOOL, "a command deploy can't be re-attached after a restart")

    async def running_version(self, spec: TargetSpec) -> str | None:
        """The version recorded in the version file after the last successful run; None without one."""
        path = self._version_path(spec)
        if path is None:
            return None
        try:
            text = await asyncio.to_thread(_read_head, path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise AdapterError(TOOL, f"can't read the version file {path}: {exc.strerror or exc}") from None
        first = text.strip().splitlines()
        return first[0].strip() if first else None

    async def status(self, spec: TargetSpec) -> WorkloadStatus:
        """Only the version: a command target knows nothing about replicas."""
        version = await self.running_version(spec)
        if not self._version_file:
            note = "a command target reports no status (no version file is configured)"
        elif version is None:
            note = "a command target knows only the version it deployed, and it has deployed none here yet"
        else:
            note = "a command target reports only the version it last deployed"
        return WorkloadStatus(
            version=version, image=None, desired=0, ready=0, available=0, message=note, counts_replicas=False
        )

    async def scale(self, spec: TargetSpec, replicas: int) -> None:
        """Not for a command target: it runs a command, it does not own a workload."""
        raise AdapterError(TOOL, f"a command target can't scale {spec.service}: scale it with its own tools")

    async def restart(self, spec: TargetSpec, progress: ProgressFn) -> DeployResult:
        """Not for a command target (see `scale`)."""
        raise AdapterError(TOOL, f"a command target can't restart {spec.service}: restart it with its own tools")

    async def check(self) -> str:
        """Each configured program exists and is executable (found on PATH when it has no `/`)."""
        if not self._programs:
            return "command target: no command configured"
        for program in self._programs:
            if not await asyncio.to_thread(self._executable, program):
                raise AdapterUnavailable(TOOL, f"`{program}` is missing or not executable")
        verb = "is" if len(self._programs) == 1 else "are"
        return f"command target: {', '.join(self._programs)} {verb} executable"

    # ------------------------------------------------------------------ running

    async def _run(
        self, spec: TargetSpec, version: str, image: str | None, progress: ProgressFn, *, rollback: bool
    ) -> DeployResult:
        _check_value("version", version)
        if version.startswith("-"):
            raise AdapterError(TOOL, f"version `{version[:80]}` looks like an option; refused")
        if image is not None:
            _check_value("image", image)
        argv = self._argv(spec, version, image)
        run = _Run(
            program=os.path.basename(argv[0]) or argv[0],
            doing=f"rolling back to {version}" if rollback else f"deploying {version}",
            done=f"rolled back to {version}" if rollback else f"deployed {version}",
        )
        # Our own pipe rather than stdout=PIPE: on Python 3.11 `Process.wait()` also waits for the
        # pipes to close, which a leftover grandchild can hold open forever; and we can close our
        # end ourselves when the command is over.
        read_fd, write_fd = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=write_fd,
                stderr=write_fd,
                env=self._environ(spec, version, image),
                cwd=self._cwd,
                start_new_session=True,  # its own process group, so a timeout stops its children too
            )
        except OSError as exc:
            os.close(read_fd)
            if isinstance(exc, FileNotFoundError):
                raise AdapterUnavailable(TOOL, f"`{argv[0]}` was not found") from None
            if isinstance(exc, PermissionError):
                raise AdapterUnavailable(TOOL, f"`{argv[0]}` is not executable") from None
            raise AdapterUnavailable(TOOL, f"can't start `{argv[0]}`: {exc.strerror or exc}") from None
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)  # the child has its copy; ours would keep the pipe open forever
        try:
            result = await self._watch(proc, read_fd, spec, run, progress)
        finally:
            if proc.returncode is None:  # cancelled, or failed on our side: don't leave it running
                await self._stop(proc)
        if result.ok and self._version_file:
            result = await self._record(spec, version, result)
        return result

    async def _watch(
        self, proc: asyncio.subprocess.Process, read_fd: int, spec: TargetSpec, run: _Run, progress: ProgressFn
    ) -> DeployResult:
        """Report output while the command runs; stop it at the deadline; the result."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + spec.timeout_s
        out = _Output(self._redactor, self._tail)
        reader = asyncio.StreamReader()
        pipe = os.fdopen(read_fd, "rb", buffering=0)
        try:
            transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
        except BaseException:
            pipe.close()
            raise
        # A bounded queue: if we fall behind, the command blocks on its pipe instead of filling memory.
        chunks: asyncio.Queue[bytes] = asyncio.Queue(maxsize=64)
        pump = asyncio.create_task(_pump(reader, chunks))
        exited = asyncio.create_task(proc.wait())

        def elapsed() -> str:
            return f"{loop.time() - started:.0f} s"

        async def report(output: str = "") -> None:
            message = f"{run.program}: {run.doing} ({elapsed()})"
            try:
                await progress(DeployProgress(message=message, output=output))
            except Exception:
                # A card that fails to update must not abandon a running deploy.
                log.exception("progress report failed while %s", run.doing)

        eof = timed_out = False
        try:
            await report()
            last_report = loop.time()
            drain_until: float | None = None
            while not eof:
                now = loop.time()
                if now >= deadline:
                    timed_out = True
                    break
                if exited.done():
                    drain_until = drain_until or now + DRAIN_SECONDS
                    if now >= drain_until:
                        break  # exited, but a leftover child still holds the output open
                wake = min(deadline, drain_until or deadline, (last_report if out.pending else now) + BATCH_SECONDS)
                try:
                    chunk = await asyncio.wait_for(chunks.get(), timeout=max(wake - now, 0.001))
                except TimeoutError:
                    chunk = None
                if chunk == b"":
                    eof = True
                    out.close()
                elif chunk:
                    out.feed(chunk)
                now = loop.time()
                if out.pending and (eof or len(out.pending) >= BATCH_LINES or now - last_report >= BATCH_SECONDS):
                    await report(out.take())
                    last_report = loop.time()
            leftovers = not eof and not timed_out
            if not eof:
                await self._stop(proc)
                await _collect(chunks, out, DRAIN_SECONDS)
                out.close()
            code = await exited
            if out.pending:
                await report(out.take())
        finally:
            for task in (pump, exited):
                task.cancel()
            transport.close()  # whoever still holds the other end gets EPIPE, not a pipe that never drains
        return self._result(run, code, spec.timeout_s if timed_out else None, leftovers, out)

    def _result(self, run: _Run, code: int, timed_out: float | None, leftovers: bool, out: _Output) -> DeployResult:
        if timed_out is not None:
            message = f"{run.program} timed out after {timed_out:g} s while {run.doing} and was stopped"
        elif code < 0:
            message = f"{run.program} was killed by signal {-code} ({_signal_name(-code)}) while {run.doing}"
        elif code == 0:
            message = f"{run.program} {run.done}: exit code 0"
            if leftovers:
                message += " (processes it left holding its output were stopped)"
            return DeployResult(ok=True, message=message)
        else:
            message = f"{run.program} failed while {run.doing}: exit code {code}"
        if out.tail:
            tail = "\n".join(out.tail)
            if len(tail) > MAX_TAIL:  # a few very long lines: keep their ends, where errors usually are
                tail = "…" + tail[-MAX_TAIL:]
            message += "\nlast output:\n" + tail
        return DeployResult(ok=False, message=message)

    async def _stop(self, proc: asyncio.subprocess.Process) -> None:
        """SIGTERM to the whole group, SIGKILL after the grace period (to the group again: children
        that ignored SIGTERM or outlived the leader)."""
        _signal_group(proc, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), self._grace)
        except TimeoutError:
            pass
        finally:
            # Also on cancellation while waiting: nothing of the command may outlive this call.
            _signal_group(proc, signal.SIGKILL)

    async def _record(self, spec: TargetSpec, version: str, result: DeployResult) -> DeployResult:
        path = self._version_path(spec)
        if path is None:
            return result
        try:
            await asyncio.to_thread(_write_atomically, path, version + "\n")
        except OSError as exc:
            note = f" (the version could not be recorded in {path}: {exc.strerror or exc})"
            return DeployResult(ok=result.ok, message=result.message + note, revision=result.revision)
        return result

    # ------------------------------------------------------------------ argv and environment

    def _argv(self, spec: TargetSpec, version: str, image: str | None) -> list[str]:
        if not spec.argv:
            raise AdapterError(TOOL, f"no command is configured to deploy {spec.service} to {spec.env}")
        values = {"service": spec.service, "version": version, "env": spec.env, "image": image}
        for name in ("service", "env"):
            _check_value(name, values[name] or "")

        def fill(m: re.Match[str]) -> str:
            value = values[m[1]]
            if value is None:
                raise AdapterError(
                    TOOL, f"the command for {spec.service} in {spec.env} uses {{image}}, but no image is known"
                )
            return value

        # argv[0] stays literal: the program is chosen by the config, never by what was typed in chat.
        return [spec.argv[0], *(_PLACEHOLDER.sub(fill, arg) for arg in spec.argv[1:])]

    def _environ(self, spec: TargetSpec, version: str, image: str | None) -> dict[str, str]:
        ours = os.environ
        env = {k: ours[k] for k in _BASE_ENV if k in ours}
        env.setdefault("PATH", os.defpath)
        env.setdefault("LANG", "C.UTF-8")
        env.update({k: ours[k] for k in self._pass_env if k in ours})
        env.update(OPSLOOP_SERVICE=spec.service, OPSLOOP_VERSION=version, OPSLOOP_ENV=spec.env)
        if image:
            env["OPSLOOP_IMAGE"] = image
        return env

    def _version_path(self, spec: TargetSpec) -> str | None:
        if self._version_file is None:
            return None
        for name, value in (("service", spec.service), ("env", spec.env)):
            # Names from the config, but a path is built from them: keep them one plain component.
            if not value or "/" in value or value.startswith(".") or "\0" in value:
                raise AdapterError(TOOL, f"{name} `{value}` can't be part of the version file's name")
        return self._version_file.replace("{service}", spec.service).replace("{env}", spec.env)

    def _executable(self, program: str) -> bool:
        if "/" in program:
            path = program if self._cwd is None or os.path.isabs(program) else os.path.join(self._cwd, program)
            return os.path.isfile(path) and os.access(path, os.X_OK)
        # The child's PATH is ours (see _environ), so that is where exec will look.
        return shutil.which(program, path=os.environ.get("PATH", os.defpath)) is not None


async def _pump(stream: asyncio.StreamReader, chunks: asyncio.Queue[bytes]) -> None:
    """Move the command's output into `chunks`; b"" at the end."""
    while data := await stream.read(65536):
        await chunks.put(data)
    await chunks.put(b"")


async def _collect(chunks: asyncio.Queue[bytes], out: _Output, within: float) -> bool:
    """After a stop: take what output is left, for `within` seconds at most; True when it ended."""
    loop = asyncio.get_running_loop()
    until = loop.time() + within
    while (left := until - loop.time()) > 0:
        try:
            chunk = await asyncio.wait_for(chunks.get(), timeout=left)
        except TimeoutError:
            return False
        if chunk == b"":
            return True
        out.feed(chunk)
    return False


def _check_value(name: str, value: str) -> None:
    if "\0" in value or "\n" in value or "\r" in value:
        raise AdapterError(TOOL, f"the {name} contains a NUL or a line break; refused")


def _signal_group(proc: asyncio.subprocess.Process, sig: signal.Signals) -> None:
    # start_new_session made the command the leader of a group whose id is its pid.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _read_head(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read(4096)


def _write_atomically(path: str, text: str) -> None:
    """Write `text` to `path` through a temporary file, so a reader never sees half a version."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".version-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
