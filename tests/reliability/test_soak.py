"""bench/soak.py (issue 7, figure 9) for 15 seconds, so the script cannot rot between `make soak` runs.

The real thing is `make soak` (10 minutes); here only what must hold however short the run is: the
processes start and stop, every kind of request is sent and acknowledged with 200, opsloop logs no
error, the outbox drains and the results JSON has its samples. Memory and latency are figures of the
long run, never asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_short_soak_runs_clean(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "bench.soak", "--duration", "15", "--sample", "1"]
    argv += ["--storm-every", "6", "--storm-size", "20", "--rate", "8", "--results", str(tmp_path)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [path] = tmp_path.glob("soak-*.json")
    data = json.loads(path.read_text())
    assert data["problems"] == [] and data["errors"] == [], (data["problems"], data["errors"])
    for kind in ("help", "plan new", "plan list", "deploy", "build", "status", "alerts", "feedback"):
        assert data["sent"].get(kind), (kind, data["sent"])
    assert data["storms"] >= 2 and data["hooks"] == {"200": data["hooks"]["200"]}, data["hooks"]
    assert data["acks"]["all"]["n"] == sum(data["sent"].values())
    assert len(data["samples"]) >= 10 and all(s["rss_kib"] > 0 for s in data["samples"])
    assert data["outbox"]["left"] == 0
    assert "memory (RSS of opsloop)" in done.stdout and "outbox depth" in done.stdout
