"""The load: a signed `/ops help` form body, the wrk Lua script that sends it, and wrk's parsed output."""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from bench.procs import BenchError

_TIME_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}  # -> milliseconds
_TIME = r"([\d.]+)(us|ms|s|m|h)"


def command_body(user_id: str, text: str, response_url: str) -> str:
    """A slash-command form body shaped like the one Slack (and the in-repo emulator) sends."""
    return urlencode(
        {
            "token": "bench-verification-token",
            "team_id": "T0TEST",
            "team_domain": "emulator",
            "channel_id": "C0OPS",
            "channel_name": "ops",
            "user_id": user_id,
            "user_name": "alice",
            "command": "/ops",
            "text": text,
            "api_app_id": "A0TEST",
            "is_enterprise_install": "false",
            "response_url": response_url,
            "trigger_id": "1000.2000.bench",
        }
    )


def signed_headers(secret: str, body: str, timestamp: int | None = None) -> dict[str, str]:
    """Slack's v0 signature headers for `body`; Bolt refuses timestamps older than 5 minutes."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    sig = "v0=" + hmac.new(secret.encode(), f"v0:{ts}:{body}".encode(), hashlib.sha256).hexdigest()
    return {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": sig,
    }


def write_lua(path: Path, secret: str, body: str) -> Path:
    """A wrk script posting the signed body; call it right before each run (the signature ages)."""
    if '"' in body or "\\" in body:  # a urlencoded body never has them; a Lua string literal must not
        raise BenchError("the request body cannot go into a Lua string literal")
    lines = ['wrk.method = "POST"', f'wrk.body = "{body}"']
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in signed_headers(secret, body).items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass(frozen=True)
class WrkResult:
    """One wrk run, parsed; latencies in milliseconds."""

    requests: int
    seconds: float
    rps: float
    avg_ms: float
    max_ms: float
    p50_ms: float
    p75_ms: float
    p90_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: dict[str, int] = field(default_factory=dict)
    raw: str = ""

    @property
    def errors(self) -> int:
        """Every failed request: HTTP status ≥ 400 and connect/read/write errors and timeouts."""
        return self.non_2xx + sum(self.socket_errors.values())

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "errors": self.errors}


def _ms(value: str, unit: str) -> float:
    return float(value) * _TIME_UNITS[unit]


def _need(pattern: str, text: str) -> re.Match[str]:
    m = re.search(pattern, text, re.M)
    if m is None:
        raise BenchError(f"wrk output has no match for {pattern!r}:\n{text}")
    return m


def parse(text: str) -> WrkResult:
    """Parse `wrk --latency` output (wrk 4.x)."""
    pct = {p: _ms(*_need(rf"^\s+{p}%\s+{_TIME}\s*$", text).groups()) for p in (50, 75, 90, 99)}
    lat = _need(rf"^\s+Latency\s+{_TIME}\s+{_TIME}\s+{_TIME}", text).groups()
    total = _need(rf"^\s+(\d+) requests in {_TIME}", text).groups()
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return WrkResult(
        requests=int(total[0]),
        seconds=_ms(total[1], total[2]) / 1000,
        rps=float(_need(r"^Requests/sec:\s+([\d.]+)", text).group(1)),
        avg_ms=_ms(lat[0], lat[1]),
        max_ms=_ms(lat[4], lat[5]),
        p50_ms=pct[50],
        p75_ms=pct[75],
        p90_ms=pct[90],
        p99_ms=pct[99],
        non_2xx=int(non2xx.group(1)) if non2xx else 0,
        socket_errors=dict(zip(("connect", "read", "write", "timeout"), map(int, sock.groups()), strict=True))
        if sock
        else {},
        raw=text,
    )


def wrk_binary() -> str:
    """wrk's path; installs the Debian package when running as root, otherwise says how."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("wrk is missing: apt-get install -y wrk", flush=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=False, stdout=subprocess.DEVNULL)
        found = shutil.which("wrk")
        if found:
            return found
        subprocess.run(["apt-get", "update", "-q"], check=False, stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=False, stdout=subprocess.DEVNULL)
        found = shutil.which("wrk")
        if found:
            return found
    raise BenchError(
        "wrk is not installed. Install it with `sudo apt-get install -y wrk` (Debian/Ubuntu), "
        "`brew install wrk` (macOS), or build it from https://github.com/wg/wrk, then run `make bench` again."
    )


def run(url: str, lua: Path, *, seconds: float, connections: int, threads: int) -> WrkResult:
    """One closed-loop wrk run: `connections` keep-alive connections, each sending as soon as answered."""
    argv = [
        wrk_binary(),
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "5s",
        "--latency",
        "-s",
        str(lua),
        url,
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if done.returncode != 0:
        raise BenchError(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    return parse(done.stdout)
