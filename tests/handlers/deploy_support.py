"""What the deploy-stage tests share: a git repository with tagged versions, a deploy script for the
command target, configs for the command and Kubernetes targets, and ways to read cards and audit rows."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import aiohttp

from bot.store import rows
from tests.support import ALICE, BOB, CAROL, DAVE, SlackHarness

# Roles of these tests: bob deploys and approves (so his own vote is the self-approval case), carol
# (through @sre) and dave approve, alice is an admin who may break glass, eve is nobody.
ROLES: dict[str, list[str]] = {
    "admins": [ALICE],
    "approvers": [BOB, DAVE, "@sre"],
    "deployers": [BOB, ALICE],
    "developers": [DAVE, ALICE, BOB, CAROL],
}
PERMISSIONS: dict[str, list[str]] = {
    "insights.audit": ["admins", "approvers"],
    "plan.*": ["developers"],
    "feedback.*": ["everyone"],
    "deploy.*": ["deployers"],
    "operate.*": ["deployers"],
    "deploy.status": ["everyone"],  # reading is open; changing is for deployers
    "operate.status": ["everyone"],
}
TICKETS = "https://jira.example.com/browse/{key}"
APPROVALS_CHANNEL = "C0APR"


# --- a git repository with versions -------------------------------------------------------------------


def git(cwd: Path, *args: str, date: str | None = None, author: str = "Ann Lee") -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": author,
        "GIT_AUTHOR_EMAIL": "dev@example.com",
        "GIT_COMMITTER_NAME": "CI",
        "GIT_COMMITTER_EMAIL": "ci@example.com",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    if date:
        env |= {"GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date}
    done = subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True)
    return done.stdout.strip()


def make_repo(path: Path) -> dict[str, str]:
    """Tags v1.1.0, v1.2.0 and v1.3.0; between 1.1.0 and 1.2.0 two commits with ticket keys."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    shas: dict[str, str] = {}
    history = [
        ("Initial import", "Ann Lee", "v1.1.0"),
        ("SHOP-12 Faster checkout", "Bea Kim", None),
        ("Fix the login timeout (SHOP-13)", "Cy Ode", "v1.2.0"),
        ("SHOP-14 Dark mode", "Ann Lee", "v1.3.0"),
    ]
    for day, (message, author, tag) in enumerate(history, start=1):
        with (path / "changes.txt").open("a") as f:
            f.write(message + "\n")
        git(path, "add", "changes.txt")
        git(path, "commit", "-q", "-m", message, date=f"2026-03-0{day}T12:00:00+00:00", author=author)
        shas[message] = git(path, "rev-parse", "HEAD")
        if tag:
            git(path, "tag", tag)
    return shas


# --- the command target -------------------------------------------------------------------------------


def deploy_script(directory: Path, *, sleep: float = 0.0) -> Path:
    """A deploy command: appends `service version env` to deploys.log (one line per run, so a test can
    count runs); fails when a file `fail` exists beside it."""
    log = directory / "deploys.log"
    fail = directory / "fail"
    script = directory / "deploy.sh"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$1 $2 $3" >> "{log}"\n'
        'echo "deploying $1 $2 to $3"\n'
        + (f"sleep {sleep}\n" if sleep else "")
        + f'if [ -e "{fail}" ]; then echo "boom: health check failed" >&2; exit 3; fi\n'
        'echo "$1 $2 is live in $3"\n'
    )
    script.chmod(0o755)
    return script


def deploys(directory: Path) -> list[str]:
    """The runs of the deploy script, oldest first."""
    log = directory / "deploys.log"
    return log.read_text().splitlines() if log.exists() else []


def set_running(directory: Path, service: str, env: str, version: str) -> None:
    """What the command target reads back as the running version."""
    versions = directory / "versions"
    versions.mkdir(exist_ok=True)
    (versions / f"{service}-{env}").write_text(version + "\n")


def environments(
    *, required: int = 2, expire: str = "30m", bake: float = 0.0, auto_rollback: bool = True, passed_in: bool = False
) -> dict[str, Any]:
    prod: dict[str, Any] = {
        "approvals": {"required": required, "from": "approvers", "expire_after": expire},
        "bake": {"minutes": bake, "auto_rollback": auto_rollback, "rollback_on": ["critical"]},
        "break_glass": ["admins"],
    }
    if passed_in:
        prod["requires"] = {"passed_in": ["staging"]}
    return {"staging": {}, "prod": prod}


def command_config(tmp: Path, repo: Path, script: Path, **env_rules: Any) -> dict[str, Any]:
    """The `shop` service deployed by `script`, its code in `repo`; prod needs approvals."""
    return {
        "roles": ROLES,
        "permissions": PERMISSIONS,
        "services": {
            "shop": {
                "repo": {"path": str(repo), "branch": "main", "ticket_url": TICKETS},
                "deploy": {
                    "target": "command",
                    "command": [str(script), "{service}", "{version}", "{env}"],
                    "timeout": "1m",
                },
            }
        },
        "environments": environments(**env_rules),
        "integrations": {"command": {"version_file": str(tmp / "versions" / "{service}-{env}")}},
    }


def scripted_config(
    tmp: Path, *, running: str | None = "1.1.0", sleep: float = 0.0, **env_rules: Any
) -> dict[str, Any]:
    """`command_config` with its repo and deploy script made in `tmp`, and `running` (if any) in prod."""
    repo = tmp / "repo"
    make_repo(repo)
    script = deploy_script(tmp, sleep=sleep)
    if running is not None:
        set_running(tmp, "shop", "prod", running)
    return command_config(tmp, repo, script, **env_rules)


def kubernetes_config(
    kubeconfig: Path, *, image: str = "registry.example.com/shop/api", repo: Path | None = None, **env_rules: Any
) -> dict[str, Any]:
    """The `api` service as the Deployment `api` in namespace `shop` (prod) or `shop-staging`."""
    service: dict[str, Any] = {
        "deploy": {
            "target": "kubernetes",
            "namespace": "shop",
            "deployment": "api",
            "container": "api",
            "image": image,
            "timeout": "1m",
            "envs": {"staging": {"namespace": "shop-staging"}},
        }
    }
    if repo is not None:
        service["repo"] = {"path": str(repo), "branch": "main", "ticket_url": TICKETS}
    return {
        "roles": ROLES,
        "permissions": PERMISSIONS,
        "services": {"api": service},
        "environments": environments(**env_rules),
        # 20 s, not the 10 s default: a process's first Kubernetes call imports the client's API
        # modules inside its timeout (2-6 s on this shared machine), and these tests start cold.
        "integrations": {"kubernetes": {"kubeconfig": str(kubeconfig), "context": "emulator", "timeout": "20s"}},
    }


# --- reading what people see --------------------------------------------------------------------------


def release_cards(h: SlackHarness, channel: str = APPROVALS_CHANNEL) -> list[Any]:
    """The release cards (top-level messages whose fallback text is a release title) of a channel."""
    return [m for m in h.emu.top_level(channel) if m.text.startswith(("Deploy ", "Rollback ", "Scale ", "Restart "))]


def card_of(h: SlackHarness, title: str, channel: str = APPROVALS_CHANNEL) -> Any:
    """The one card whose text starts with `title` (fails when there are none or several)."""
    found = [m for m in release_cards(h, channel) if m.text.startswith(title)]
    assert len(found) == 1, [m.text for m in release_cards(h, channel)]
    return found[0]


def text_of(msg: Any) -> str:
    """Everything a person can read of a message: its fallback text and its blocks."""
    return msg.text + "\n" + json.dumps(msg.blocks, ensure_ascii=False)


def thread_text(h: SlackHarness, msg: Any) -> str:
    return "\n".join(text_of(m) for m in h.emu.replies(msg.channel, msg.ts))


def answer(h: SlackHarness, res: Any) -> dict[str, Any]:
    """What a slash command answered: the ack's body, or, when opsloop acked with "Working on it…"
    (its first Kubernetes call in a process can outlast Slack's 3 s), the late answer it posted to the
    command's response_url. Call it after the command has settled."""
    body = res.json if isinstance(res.json, dict) else {"text": res.body_text}
    if "Working on it" not in str(body.get("text")):
        return body
    late = [p.body for p in h.emu.responses if p.url == res.response_url and p.status == 200]
    assert late, f"no late answer to {res.response_url}"
    return late[-1]


def ephemerals(h: SlackHarness, user: str) -> list[str]:
    return [e.text + json.dumps(e.blocks, ensure_ascii=False) for e in h.emu.ephemerals if e.user == user]


async def audit_rows(h: SlackHarness, outcome: str | None = None) -> list[dict[str, Any]]:
    where, params = ("WHERE outcome = ?", (outcome,)) if outcome else ("", ())
    return await h.services.store.read(lambda db: rows(db, f"SELECT * FROM audit {where} ORDER BY id", params))


async def release_rows(h: SlackHarness) -> list[dict[str, Any]]:
    return await h.services.store.read(lambda db: rows(db, "SELECT * FROM releases ORDER BY id"))


async def post_alert(
    h: SlackHarness, service: str, env: str, *, name: str = "HighErrorRate", severity: str = "critical"
) -> int:
    """An Alertmanager webhook for `service` in `env`, as Alertmanager 0.25 sends it."""
    labels = {"alertname": name, "service": service, "env": env, "severity": severity}
    body = {
        "receiver": "opsloop",
        "status": "firing",
        "alerts": [
            {
                "status": "firing",
                "labels": labels,
                "annotations": {"summary": f"{name} for {service} in {env}"},
                "startsAt": "2026-11-26T04:22:05.094824942Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus.invalid/graph",
                "fingerprint": f"{service}{env}{name}".encode().hex()[:16],
            }
        ],
        "groupLabels": {"alertname": name},
        "commonLabels": labels,
        "commonAnnotations": {"summary": f"{name} for {service} in {env}"},
        "externalURL": "http://alertmanager.invalid",
        "version": "4",
        "groupKey": f'{{}}:{{alertname="{name}", service="{service}"}}',
        "truncatedAlerts": 0,
    }
    url = h.url.replace("/slack/events", "/hooks/alertmanager")
    headers = {"Authorization": "Bearer hook-secret-123"}
    async with aiohttp.ClientSession() as s, s.post(url, json=body, headers=headers) as r:
        return r.status
