"""The `opsloop` command as a user runs it: console scripted on stdin, check, schema, audit verify, errors."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import yaml

from tests.support import clean_environ, config_data, free_port

ROOT = Path(__file__).resolve().parents[2]


def opsloop(
    *args: str, stdin: str = "", env: dict[str, str] | None = None, cwd: Path = ROOT, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    environ = {**clean_environ(), "OPSLOOP_HTTP_PORT": "0", "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=environ,
        cwd=cwd,
        timeout=timeout,
    )


def write_config(tmp: Path, **overrides: object) -> Path:
    path = tmp / "opsloop.yml"
    path.write_text(yaml.safe_dump(config_data("opsloop.db", **overrides)))
    return path


def test_console_reads_commands_from_stdin_and_exits_cleanly(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    script = (
        "\n".join(
            [
                'plan new "Scripted item" critical',
                "plan done OPS-1",
                "/as bob",
                "click 3",
                "plan list all",
                "frobnicate",
            ]
        )
        + "\n"
    )
    res = opsloop("console", "--config", str(cfg), stdin=script)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "Created OPS-1: Scripted item" in out
    assert "Approval needed: plan.done" in out and "[3] Approve" in out
    assert "Approved; carrying it out now." in out
    assert "✅ OPS-1 Scripted item" in out
    assert "I don't know frobnicate" in out
    assert "{" not in out.split("Approval needed")[1].split("\n")[0]  # Block Kit is drawn, not dumped as JSON


def test_demo_config_runs_in_the_console(tmp_path: Path) -> None:
    res = opsloop(
        "console",
        "--config",
        str(ROOT / "examples" / "demo.yml"),
        stdin="help\nwhoami\n",
        env={"OPSLOOP_DB": str(tmp_path / "demo.db")},
    )
    assert res.returncode == 0, res.stderr
    assert "opsloop commands" in res.stdout and "U0ALICE" in res.stdout


def readme_demo_lines() -> list[str]:
    """The commands README.md tells a first-time user to type in the demo, comments dropped."""
    text = (ROOT / "README.md").read_text()
    block = text.split("In the demo you are `alice`. Try:", 1)[1].split("```", 2)[1]
    return [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.strip()]


def test_the_readmes_demo_does_what_its_comments_say(tmp_path: Path) -> None:
    # The README said `click 2` for "Approve" after the plan card gained numbered buttons, so a new user
    # pressed Done again; this runs the README's own lines.
    lines = readme_demo_lines()
    assert "plan done OPS-1" in lines and any(x.startswith("click ") for x in lines)
    res = opsloop(
        "console",
        "--config",
        str(ROOT / "examples" / "demo.yml"),
        stdin="\n".join(lines) + "\n",
        env={"OPSLOOP_DB": str(tmp_path / "demo.db")},
    )
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "@carol pressed “Approve”" in out and "Approved; carrying it out now." in out
    assert "✅ OPS-1 Rotate TLS certificates" in out  # `plan list all` after the approval
    assert "Recorded as feedback #1" in out
    assert "Not allowed: insights.audit needs the role admins" in out  # eve's `audit`, with the reason


def test_bad_config_lists_every_problem_and_exits_2(tmp_path: Path) -> None:
    data = config_data()
    data["approvals"] = {"plan.done": {"required": 0, "from": "ghosts"}}
    data["storage"]["pth"] = "x"
    (tmp_path / "bad.yml").write_text(yaml.safe_dump(data))
    res = opsloop("check", "--config", str(tmp_path / "bad.yml"))
    assert res.returncode == 2
    for path in ("approvals.plan.done.required", "storage.pth", "approvals.plan.done.from"):
        assert path in res.stderr
    assert "Traceback" not in res.stderr


def test_run_without_tokens_says_which_variable_and_where_to_get_it(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    res = opsloop("run", "--config", str(cfg))
    assert res.returncode == 2
    assert "SLACK_BOT_TOKEN is not set" in res.stderr and "OAuth & Permissions" in res.stderr
    res = opsloop("run", "--config", str(cfg), env={"SLACK_BOT_TOKEN": "xoxb-1"})
    assert res.returncode == 2 and "SLACK_SIGNING_SECRET is not set" in res.stderr


def test_locked_database_is_a_clear_error_at_start(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    holder = sqlite3.connect(tmp_path / "opsloop.db")
    holder.execute("CREATE TABLE x (y)")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        res = opsloop("console", "--config", str(cfg), stdin="help\n", timeout=90)
    finally:
        holder.rollback()
        holder.close()
    assert res.returncode == 1
    assert "locked by another process" in res.stderr and "Traceback" not in res.stderr


def test_check_reports_reachability(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, integrations={"jenkins": {"url": "http://127.0.0.1:1"}})
    port = free_port()
    res = opsloop(
        "check",
        "--config",
        str(cfg),
        env={"SLACK_BOT_TOKEN": "xoxb-x", "SLACK_API_URL": f"http://127.0.0.1:{port}/api/"},
    )
    assert res.returncode == 1
    assert "ok   storage.path" in res.stdout
    assert "FAIL SLACK_API_URL: cannot reach" in res.stdout
    assert "FAIL integrations.jenkins" in res.stdout


def test_config_schema_is_json_schema() -> None:
    res = opsloop("config", "schema")
    assert res.returncode == 0
    schema = json.loads(res.stdout)
    assert schema["type"] == "object" and "roles" in schema["properties"]


def test_audit_verify_names_the_first_broken_row(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    res = opsloop("console", "--config", str(cfg), stdin="help\nwhoami\nplan list\n")
    assert res.returncode == 0, res.stderr
    res = opsloop("audit", "verify", "--config", str(cfg))
    assert res.returncode == 0 and "intact: 3 rows" in res.stdout
    with sqlite3.connect(tmp_path / "opsloop.db") as db:
        db.execute("UPDATE audit SET actor = 'UMALLORY' WHERE id = 2")
    res = opsloop("audit", "verify", "--config", str(cfg))
    assert res.returncode == 1 and "BROKEN at row 2" in res.stdout


def test_python_dash_m_bot_is_the_same_program() -> None:
    res = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "opsloop"), "--help"],
        capture_output=True,
        text=True,
        env={**clean_environ(), "COLUMNS": "200"},
    )
    assert res.returncode == 0 and "console" in res.stdout and "audit" in res.stdout
    assert res.stdout == opsloop("--help").stdout
