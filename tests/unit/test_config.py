"""Config validation: every problem at once with its path; secrets never in YAML; the JSON Schema."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import Env, database_path, json_schema, load_config, parse_config
from bot.errors import ConfigError
from tests.support import config_data

ROOT = Path(__file__).resolve().parents[2]


def test_demo_config_is_valid() -> None:
    cfg = load_config(ROOT / "examples" / "demo.yml")
    assert cfg.approvals["plan.done"].from_ == "approvers"
    assert cfg.approvals["plan.done"].expire_after.total_seconds() == 1800


def test_every_problem_is_reported_with_its_path() -> None:
    data = config_data()
    data["approvals"] = {"plan.done": {"required": 0, "from": "nobody", "expire_after": "soon"}}
    data["roles"]["oncall"] = ["alice"]
    data["permissions"]["plan.*"] = ["ghosts"]
    data["chanels"] = {}
    data["integrations"] = {"jenkins": {"url": "https://ci", "token": "hunter2"}}
    with pytest.raises(ConfigError) as err:
        parse_config(data, "test.yml")
    paths = {p for p, _ in err.value.problems}
    assert "approvals.plan.done.required" in paths
    assert "approvals.plan.done.expire_after" in paths
    assert "roles" in paths  # `alice` is not a user id
    assert "chanels" in paths
    assert "integrations.jenkins.token" in paths
    messages = " ".join(m for _, m in err.value.problems)
    assert "token_env" in messages and "unknown key" in messages


def test_cross_references_are_checked() -> None:
    data = config_data()
    data["permissions"]["plan.*"] = ["ghosts"]
    data["approvals"]["plan.done"]["from"] = "nobody"
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert ("permissions.plan.*", "unknown role `ghosts`; define it under `roles`") in err.value.problems
    assert any(p == "approvals.plan.done.from" for p, _ in err.value.problems)


def test_yaml_errors_and_missing_files_are_sentences(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("roles: [unclosed\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    assert err.value.problems[0][0].startswith("line ")
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.yml")


def test_environment_contract(tmp_path: Path) -> None:
    env = Env.read(
        {
            "SLACK_API_URL": "http://127.0.0.1:9/api",
            "OPSLOOP_HTTP_PORT": "8080",
            "OPSLOOP_CONFIG": str(tmp_path / "c.yml"),
        }
    )
    assert env.api_url == "http://127.0.0.1:9/api/"
    assert env.http_port == 8080 and env.http_host == "127.0.0.1"
    assert Env.read({}).api_url == "https://slack.com/api/"
    with pytest.raises(ConfigError, match="OPSLOOP_HTTP_PORT"):
        Env.read({"OPSLOOP_HTTP_PORT": "http"})
    cfg = parse_config(config_data("rel.db"))
    assert database_path(cfg, env) == tmp_path / "rel.db"
    assert database_path(cfg, Env.read({"OPSLOOP_DB": "/x/y.db"})) == Path("/x/y.db")


def test_json_schema_describes_the_sections() -> None:
    schema = json_schema()
    assert {"storage", "roles", "permissions", "approvals", "console"} <= set(schema["properties"])
    rule = schema["$defs"]["ApprovalRule"]
    assert "from" in rule["properties"] and rule["required"] == ["from"]
