"""Server processes the bench starts, watches (RSS, CPU time) and stops; nothing else is touched."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
READY = re.compile(r"^ready (\d+)$", re.M)
# slack_sdk ignores NO_PROXY, and a proxy for 127.0.0.1 would measure the proxy: no proxies anywhere.
_DROP_ENV = re.compile(r"^(SLACK_|OPSLOOP_|HTTPS?_PROXY$|https?_proxy$|ALL_PROXY$|all_proxy$|NO_PROXY$|no_proxy$)")
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_TICKS = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """A server that did not start, answered wrongly, or died: the numbers would mean nothing."""


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without Slack/opsloop settings or proxies, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not _DROP_ENV.match(k)}
    env.update(extra)
    return env


def free_port() -> int:
    """A port that was free a moment ago (for opsloop, which takes its port from the environment)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _stat_cpu(path: Path) -> float:
    """utime + stime of a /proc/…/stat file, in seconds."""
    stat = path.read_text()
    # Fields after the command name, which is in parentheses and may contain spaces.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


@dataclass
class Server:
    """One running server process and where its output goes."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    port: int = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def url(self, path: str = "/slack/events") -> str:
        return f"http://{HOST}:{self.port}{path}"

    def log_tail(self, lines: int = 15) -> str:
        """The end of the process's output, for error messages."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def status_kib(self, field: str) -> int:
        """A memory field of /proc/PID/status (VmRSS, VmHWM) in KiB; the process includes all its threads."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise BenchError(f"{self.name}: no {field} in /proc/{self.pid}/status")

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process so far (all threads, e.g. opsloop's store writer)."""
        return _stat_cpu(Path(f"/proc/{self.pid}/stat"))

    def main_thread_cpu_seconds(self) -> float:
        """CPU time of the main thread only (the event loop); the rest is other threads (opsloop's writer)."""
        return _stat_cpu(Path(f"/proc/{self.pid}/task/{self.pid}/stat"))

    def ensure_alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, wait, SIGKILL as a last resort; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def spawn(name: str, argv: Sequence[str], env: Mapping[str, str], log: Path, cwd: Path) -> Server:
    """Start a process with stdout and stderr into `log` (a file, so a chatty server never blocks on a pipe)."""
    with log.open("wb") as out:
        proc = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT, env=dict(env), cwd=cwd)
    return Server(name, proc, log)


def _wait(server: Server, ready: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        server.ensure_alive()
        if ready():
            return
        time.sleep(0.05)
    server.stop()
    raise BenchError(f"{server.name} did not {what} within {timeout:.0f} s:\n{server.log_tail()}")


def wait_announced(server: Server, timeout: float = 20.0) -> Server:
    """Wait for the `ready PORT` line of a bench.servers process; sets `server.port`."""

    def announced() -> bool:
        m = READY.search(server.log.read_text(errors="replace"))
        if m:
            server.port = int(m.group(1))
        return m is not None

    _wait(server, announced, timeout, "print `ready PORT`")
    return server


def wait_http(server: Server, path: str, timeout: float = 30.0) -> Server:
    """Wait until GET `path` answers 200 (opsloop's /healthz)."""

    def answers() -> bool:
        try:
            with _NO_PROXY.open(server.url(path), timeout=2) as resp:
                return int(resp.status) == 200
        except (OSError, urllib.error.URLError):
            return False

    _wait(server, answers, timeout, f"answer GET {path}")
    return server


def post(url: str, body: bytes, headers: Mapping[str, str], timeout: float = 10.0) -> tuple[int, str]:
    """One POST without proxies; returns (status, body text) for any status."""
    req = urllib.request.Request(url, data=body, headers=dict(headers), method="POST")
    try:
        with _NO_PROXY.open(req, timeout=timeout) as resp:
            return int(resp.status), resp.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


def wait_output(server: Server, pattern: str, timeout: float = 60.0, what: str = "") -> re.Match[str]:
    """Wait until the process's output matches `pattern` (a process that listens on no port of its own)."""
    regex = re.compile(pattern, re.M)
    found: list[re.Match[str]] = []

    def printed() -> bool:
        m = regex.search(server.log.read_text(errors="replace"))
        if m:
            found.append(m)
        return m is not None

    _wait(server, printed, timeout, what or f"print {pattern!r}")
    return found[0]


def request_json(url: str, data: Any = None, timeout: float = 60.0) -> Any:
    """GET (or, with `data`, POST as JSON) without proxies; the answer's JSON. BenchError on a non-2xx."""
    body = None if data is None else json.dumps(data).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with _NO_PROXY.open(req, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as err:
        raise BenchError(f"{url} answered {err.code}: {err.read().decode(errors='replace')[:300]}") from None
