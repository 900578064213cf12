"""What else the machine is doing: the numbers only mean something if the server and wrk are alone.

Other sessions may run test suites on the same two cores. We cannot stop them, so we wait (a while)
for a quiet machine before each measured run and then account for every CPU second used during it:
busy time from /proc/stat minus the server's and wrk's own CPU time is "other load", reported per run.
"""

from __future__ import annotations

import hashlib
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_TICKS = os.sysconf("SC_CLK_TCK")
CODE = ("bot", "handlers", "adapters")  # what the measured server runs
QUIET_CORES = 0.25  # background busy-ness tolerated before a run starts


def busy_seconds() -> float:
    """CPU seconds spent busy on all cores since boot (user, nice, system, irq, softirq, steal)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / _TICKS


def children_cpu_seconds() -> float:
    """CPU time of this process's finished children (wrk, once it has been waited for)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def busy_cores(sample: float = 1.0) -> float:
    """How many cores were busy over the next `sample` seconds (this process sleeps meanwhile)."""
    before = busy_seconds()
    time.sleep(sample)
    return (busy_seconds() - before) / sample


def wait_quiet(max_wait: float) -> float:
    """Wait up to `max_wait` s until under QUIET_CORES cores are busy; returns the last reading."""
    deadline = time.monotonic() + max_wait
    cores = busy_cores()
    while cores > QUIET_CORES and time.monotonic() < deadline:
        cores = busy_cores()
    return cores


@dataclass
class CpuWindow:
    """CPU accounting over one measured run."""

    wall: float
    busy: float
    server: float
    server_main: float
    wrk: float

    @property
    def other_cores(self) -> float:
        """Average cores used by anything but the server and wrk (other sessions, the bench itself)."""
        return max(0.0, self.busy - self.server - self.wrk) / self.wall if self.wall > 0 else 0.0

    def to_json(self) -> dict[str, float]:
        return {
            "wall_s": round(self.wall, 3),
            "busy_cpu_s": round(self.busy, 3),
            "server_cpu_s": round(self.server, 3),
            "server_main_thread_cpu_s": round(self.server_main, 3),
            "wrk_cpu_s": round(self.wrk, 3),
            "other_cores": round(self.other_cores, 3),
        }


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return ""


def describe(wrk: str) -> dict[str, Any]:
    """The machine and software the numbers were taken on."""
    version = subprocess.run([wrk, "--version"], capture_output=True, text=True, check=False)
    return {
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "wrk": (version.stdout or version.stderr).splitlines()[0] if (version.stdout or version.stderr) else "",
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        # Which uncommitted state of the code was measured (the tree may be edited between runs).
        "git_diff_sha1": hashlib.sha1(_git("diff", "HEAD", "--", *CODE).encode()).hexdigest()[:12],
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
    }
