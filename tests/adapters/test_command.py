"""Contract tests: `CommandTarget` running real subprocesses (small Python and sh scripts made here).

Nothing here asserts how long something took: timeouts are given, and the tests wait for effects
(a process gone) with generous bounds.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

import pytest

from adapters.command import CommandTarget
from bot.ports import AdapterError, AdapterUnavailable, DeployProgress, DeployTarget, TargetSpec
from bot.redact import Redactor

pytestmark = pytest.mark.slow

PY = sys.executable
PROGRAM = os.path.basename(PY)  # what messages call the program: argv[0]
SECRET = "tok-Sup3r-Secret-Value-42"


class Progress:
    """Collects what a deploy reports."""

    def __init__(self) -> None:
        self.calls: list[DeployProgress] = []
        self.seen = asyncio.Event()

    async def __call__(self, p: DeployProgress) -> None:
        self.calls.append(p)
        if p.output:
            self.seen.set()

    @property
    def batches(self) -> list[list[str]]:
        return [p.output.split("\n") for p in self.calls if p.output]

    @property
    def lines(self) -> list[str]:
        return [line for batch in self.batches for line in batch]


def spec(*argv: str, timeout_s: float = 30.0, service: str = "api", env: str = "prod") -> TargetSpec:
    return TargetSpec(service=service, env=env, kind="command", argv=argv, timeout_s=timeout_s)


def script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text(body)
    return str(path)


def alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def gone(pid: int, within: float = 15.0) -> bool:
    until = time.monotonic() + within
    while alive(pid):
        if time.monotonic() > until:
            return False
        await asyncio.sleep(0.05)
    return True


@pytest.fixture
def target() -> CommandTarget:
    return CommandTarget(redactor=Redactor([SECRET]), kill_grace=0.5)


def test_implements_the_port(target: CommandTarget) -> None:
    port: DeployTarget = target
    assert (port.name, port.resumable) == ("command", False)


async def test_success_streams_output_in_batches(target: CommandTarget, tmp_path: Path) -> None:
    body = (
        "import sys, time\n"
        "print('first', flush=True)\n"
        "time.sleep(2.0)\n"  # long enough that `first` must have been reported on its own
        "for i in range(45):\n"
        "    print(f'line {i}', flush=True)\n"
        "    time.sleep(0.002)\n"
        "print('no newline at the end', end='')\n"
    )
    progress = Progress()
    result = await target.deploy(spec(PY, script(tmp_path, "ok.py", body)), "1.2.3", None, progress)

    assert result.ok
    assert "exit code 0" in result.message and "deployed 1.2.3" in result.message
    assert progress.lines == ["first", *(f"line {i}" for i in range(45)), "no newline at the end"]
    assert progress.batches[0] == ["first"]  # streamed while the command still ran
    assert len(progress.batches) < 47  # batched, not one report per line
    assert all(len(b) <= 45 for b in progress.batches)
    assert all("deploying 1.2.3" in p.message for p in progress.calls)


async def test_a_quiet_moment_flushes_what_is_waiting(target: CommandTarget, tmp_path: Path) -> None:
    body = "import time\nfor i in range(3): print(i, flush=True)\ntime.sleep(2.5)\nprint('end')\n"
    progress = Progress()
    await target.deploy(spec(PY, script(tmp_path, "quiet.py", body)), "1", None, progress)
    assert progress.batches == [["0", "1", "2"], ["end"]]  # three lines, fewer than 20: sent after about a second


async def test_failure_has_the_exit_code_and_the_last_lines(target: CommandTarget, tmp_path: Path) -> None:
    body = (
        "import sys\nfor i in range(30): print(f'step {i}', flush=True)\nprint('boom', file=sys.stderr)\nsys.exit(3)\n"
    )
    progress = Progress()
    result = await target.deploy(spec(PY, script(tmp_path, "fail.py", body)), "1.2.3", None, progress)

    assert not result.ok
    assert result.message.startswith(f"{PROGRAM} failed while deploying 1.2.3: exit code 3")
    assert "step 29" in result.message and "boom" in result.message  # stderr is merged in
    assert "step 0\n" not in result.message  # only the last lines
    assert "boom" in progress.lines


async def test_killed_by_a_signal(target: CommandTarget, tmp_path: Path) -> None:
    body = "import os, signal\nprint('about to die', flush=True)\nos.kill(os.getpid(), signal.SIGKILL)\n"
    result = await target.deploy(spec(PY, script(tmp_path, "die.py", body)), "1.2.3", None, Progress())
    assert not result.ok
    assert "killed by signal 9 (SIGKILL)" in result.message
    assert "about to die" in result.message


async def test_a_timeout_kills_the_whole_process_group(target: CommandTarget, tmp_path: Path) -> None:
    # The script and its child both ignore SIGTERM, so only the SIGKILL after the grace period ends them.
    pids = tmp_path / "pids"
    body = (
        "import os, signal, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', "
        "'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)'])\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}')\n"
        "print('started', flush=True)\n"
        "time.sleep(300)\n"
    )
    progress = Progress()
    result = await target.deploy(spec(PY, script(tmp_path, "hang.py", body), timeout_s=3), "1.2.3", None, progress)

    assert not result.ok
    assert result.message.startswith(f"{PROGRAM} timed out after 3 s while deploying 1.2.3 and was stopped")
    assert "started" in result.message
    leader, child = map(int, pids.read_text().split())
    assert await gone(leader)
    assert await gone(child)


async def test_a_leftover_child_holding_the_output_is_stopped(target: CommandTarget, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    argv = ("/bin/sh", "-c", f'sleep 300 & echo $! > "{pid_file}"; echo launched')
    result = await target.deploy(spec(*argv), "1.2.3", None, Progress())
    assert result.ok
    assert "exit code 0" in result.message and "stopped" in result.message
    assert await gone(int(pid_file.read_text()))


async def test_cancelling_the_deploy_stops_the_command(target: CommandTarget, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    argv = ("/bin/sh", "-c", f'sleep 300 & echo $! > "{pid_file}"; echo running; wait')
    progress = Progress()
    task = asyncio.create_task(target.deploy(spec(*argv), "1.2.3", None, progress))
    await asyncio.wait_for(progress.seen.wait(), 15)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await gone(int(pid_file.read_text()))


async def test_secrets_are_redacted_from_output_and_messages(target: CommandTarget, tmp_path: Path) -> None:
    body = (
        f"print('using token {SECRET} now')\n"
        "print('db password=hunter2-bad login ok')\n"
        "print('-----BEGIN RSA PRIVATE KEY-----')\n"
        "print('MIIEowIBAAKCAQEA7bq')\n"
        "print('-----END RSA PRIVATE KEY-----')\n"
        "print('after the key')\n"
        f"print('y' * 1990 + {SECRET!r})\n"  # the secret straddles the cut of a long line
        "raise SystemExit(1)\n"
    )
    progress = Progress()
    result = await target.deploy(spec(PY, script(tmp_path, "leak.py", body)), "1.2.3", None, progress)

    streamed = "\n".join(progress.lines)
    for leaked in (SECRET, SECRET[:10], SECRET[-10:], "hunter2-bad", "MIIEowIBAAKCAQEA7bq"):
        assert leaked not in streamed
        assert leaked not in result.message
    assert "using token [redacted] now" in progress.lines
    assert "db password=[redacted] login ok" in progress.lines
    assert "after the key" in progress.lines


async def test_placeholders_fill_single_arguments_and_nothing_runs(target: CommandTarget, tmp_path: Path) -> None:
    out = tmp_path / "argv.json"
    dump = script(tmp_path, "dump.py", f"import json, sys\njson.dump(sys.argv[1:], open({str(out)!r}, 'w'))\n")
    marker = tmp_path / "pwned"
    version = f"1.2.3; touch {marker} && $(touch {marker}) `touch {marker}` {{env}}"
    argv = (PY, dump, "--version={version}", "{version}", "{service}-{env}", "--image", "{image}", "{other} $HOME")

    result = await target.deploy(spec(*argv), version, "registry.example.com/shop/api@sha256:abc", Progress())

    assert result.ok, result.message
    assert json.loads(out.read_text()) == [
        f"--version={version}",
        version,  # one argument, and its `{env}` is left as typed
        "api-prod",
        "--image",
        "registry.example.com/shop/api@sha256:abc",
        "{other} $HOME",
    ]
    assert not marker.exists()


@pytest.mark.parametrize("version", ["1.2.3\nrm -rf /", "1.2.3\r", "1.2\x003", "-rf", "--force"])
async def test_dangerous_versions_are_refused_before_anything_runs(
    target: CommandTarget, tmp_path: Path, version: str
) -> None:
    marker = tmp_path / "ran"
    argv = ("/bin/sh", "-c", f'touch "{marker}"', "sh", "{version}")
    with pytest.raises(AdapterError):
        await target.deploy(spec(*argv), version, None, Progress())
    assert not marker.exists()


async def test_an_image_placeholder_needs_an_image(target: CommandTarget) -> None:
    with pytest.raises(AdapterError, match="no image is known"):
        await target.deploy(spec("/bin/echo", "{image}"), "1.2.3", None, Progress())


async def test_the_environment_is_clean(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KUBECONFIG", "/etc/kube/config")
    monkeypatch.setenv("OPSLOOP_WEBHOOK_TOKEN", "not-for-scripts")
    monkeypatch.setenv("SOME_OTHER_SECRET", "nope")
    target = CommandTarget(redactor=Redactor(), pass_env=("KUBECONFIG", "NOT_SET_ANYWHERE"))
    progress = Progress()
    # env(1) prints exactly what it was given (a Python child might add LC_CTYPE on its own).
    result = await target.deploy(spec("/usr/bin/env", env="staging"), "1.4.2", "reg/api:1.4.2", progress)
    assert result.ok, result.message

    env = dict(line.split("=", 1) for line in progress.lines)
    assert env.keys() <= {"PATH", "HOME", "LANG", "KUBECONFIG"} | {
        "OPSLOOP_SERVICE",
        "OPSLOOP_VERSION",
        "OPSLOOP_ENV",
        "OPSLOOP_IMAGE",
    }
    assert env["KUBECONFIG"] == "/etc/kube/config"
    assert (env["OPSLOOP_SERVICE"], env["OPSLOOP_VERSION"], env["OPSLOOP_ENV"], env["OPSLOOP_IMAGE"]) == (
        "api",
        "1.4.2",
        "staging",
        "reg/api:1.4.2",
    )
    assert "SOME_OTHER_SECRET" not in env and "OPSLOOP_WEBHOOK_TOKEN" not in env
    assert env["PATH"] == os.environ["PATH"]


async def test_a_missing_executable_is_unavailable(tmp_path: Path) -> None:
    plain = tmp_path / "deploy.sh"
    plain.write_text("#!/bin/sh\necho hi\n")
    plain.chmod(0o644)
    target = CommandTarget(redactor=Redactor(), commands=[["/nonexistent/deploy.sh", "{version}"]])
    with pytest.raises(AdapterUnavailable, match=r"/nonexistent/deploy\.sh"):
        await target.check()
    with pytest.raises(AdapterUnavailable, match="not found"):
        await target.deploy(spec("/nonexistent/deploy.sh", "{version}"), "1.2.3", None, Progress())
    with pytest.raises(AdapterUnavailable, match="not executable"):
        await target.deploy(spec(str(plain)), "1.2.3", None, Progress())
    with pytest.raises(AdapterUnavailable):
        await CommandTarget(redactor=Redactor(), commands=[[str(plain)]]).check()
    with pytest.raises(AdapterUnavailable):
        await CommandTarget(redactor=Redactor(), commands=[["no-such-program-opsloop"]]).check()


async def test_check_finds_programs_by_path_and_on_path() -> None:
    target = CommandTarget(redactor=Redactor(), commands=[[PY, "deploy.py"], ["sh", "-c", "true"], [PY]])
    assert await target.check() == f"command target: {PY}, sh are executable"
    one = CommandTarget(redactor=Redactor(), commands=[["sh"]])
    assert await one.check() == "command target: sh is executable"


async def test_rollback_needs_a_version_and_runs_the_same_command(target: CommandTarget, tmp_path: Path) -> None:
    with pytest.raises(AdapterError, match="needs the version to roll back to"):
        await target.rollback(spec("/bin/echo", "{version}"), None, None, Progress())
    progress = Progress()
    result = await target.rollback(spec("/bin/echo", "deploying", "{version}"), "1.2.2", None, progress)
    assert result.ok
    assert "rolled back to 1.2.2" in result.message
    assert progress.lines == ["deploying 1.2.2"]


async def test_what_a_command_target_cannot_do(target: CommandTarget) -> None:
    s = spec("/bin/true")
    with pytest.raises(AdapterError, match="can't be re-attached after a restart"):
        await target.resume(s, "1.2.3", Progress())
    with pytest.raises(AdapterError, match="can't scale"):
        await target.scale(s, 3)
    with pytest.raises(AdapterError, match="can't restart"):
        await target.restart(s, Progress())
    assert await target.running_version(s) is None
    status = await target.status(s)
    assert (status.version, status.desired, status.pods) == (None, 0, ())


async def test_a_version_file_records_what_was_deployed(tmp_path: Path) -> None:
    target = CommandTarget(redactor=Redactor(), version_file=str(tmp_path / "{service}-{env}.version"))
    s = spec("/bin/true")
    assert await target.running_version(s) is None
    assert (await target.deploy(s, "1.4.2", None, Progress())).ok
    assert (tmp_path / "api-prod.version").read_text() == "1.4.2\n"
    assert await target.running_version(s) == "1.4.2"
    assert (await target.status(s)).version == "1.4.2"

    assert not (await target.deploy(spec("/bin/false"), "1.5.0", None, Progress())).ok
    assert await target.running_version(s) == "1.4.2"  # a failed deploy changes nothing
    assert (await target.rollback(s, "1.4.1", None, Progress())).ok
    assert await target.running_version(s) == "1.4.1"
    assert await target.running_version(spec("/bin/true", env="staging")) is None


def test_a_version_file_may_not_use_the_version(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        CommandTarget(redactor=Redactor(), version_file=str(tmp_path / "{version}"))


async def test_a_progress_callback_that_fails_does_not_stop_the_deploy(target: CommandTarget) -> None:
    async def broken(p: DeployProgress) -> None:
        raise RuntimeError("slack is down")

    result = await target.deploy(spec("/bin/echo", "hello"), "1.2.3", None, broken)
    assert result.ok


async def test_output_is_cleaned_for_chat(target: CommandTarget, tmp_path: Path) -> None:
    body = (
        "import sys\n"
        "print('\\x1b[32mgreen\\x1b[0m ok')\n"
        "print('10%\\r50%\\r100%')\n"  # a progress bar: only its last state
        "print('x' * 5000)\n"
        "sys.stdout.flush()\n"
        "sys.stdout.buffer.write(b'caf\\xc3\\xa9 \\xff\\n')\n"  # UTF-8 and one invalid byte
    )
    progress = Progress()
    assert (await target.deploy(spec(PY, script(tmp_path, "fancy.py", body)), "1", None, progress)).ok
    lines = progress.lines
    assert lines[:2] == ["green ok", "100%"]
    assert [len(x) for x in lines[2:-1]] == [2000, 2000, 1000]  # a long line comes in pieces
    assert lines[-1] == "café \ufffd"
