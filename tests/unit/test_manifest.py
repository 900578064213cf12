"""manifest.yml is exactly what the router serves; every command, button and form is documented."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from bot.app import GROUPS
from bot.manifest import manifest
from bot.slack import SLASH_COMMAND

ROOT = Path(__file__).resolve().parents[2]
ID = re.compile(r"^[a-z]+\.[a-z_]+$")


def test_manifest_file_matches_the_router() -> None:
    on_disk = yaml.safe_load((ROOT / "manifest.yml").read_text())
    assert on_disk == manifest(GROUPS), "manifest.yml is stale: run `opsloop manifest > manifest.yml`"


def test_manifest_declares_what_is_served() -> None:
    m = manifest(GROUPS)
    assert [c["command"] for c in m["features"]["slash_commands"]] == [SLASH_COMMAND]
    served = {s.callback for g in GROUPS for s in g.shortcuts}
    assert {s["callback_id"] for s in m["features"]["shortcuts"]} == served
    assert m["settings"]["interactivity"]["is_enabled"] and m["features"]["app_home"]["home_tab_enabled"]
    assert {"app_mention", "app_home_opened"} <= set(m["settings"]["event_subscriptions"]["bot_events"])
    assert {"commands", "chat:write", "app_mentions:read", "usergroups:read", "users:read"} <= set(
        m["oauth_config"]["scopes"]["bot"]
    )
    for s in m["features"]["shortcuts"]:
        assert len(s["name"]) <= 24 and len(s["description"]) <= 150


def test_every_handler_has_help_and_a_stage_verb_id() -> None:
    for g in GROUPS:
        for c in g.commands:
            assert ID.match(c.id), c.id
            assert c.summary, f"{c.id} has no docstring: `help` would show nothing"
        for a in g.actions:
            assert ID.match(a.id), a.id
            assert a.handler.__doc__, f"button {a.id} has no docstring"
        for s in g.submits:
            assert ID.match(s.callback) and s.handler.__doc__
        for s in g.shortcuts:
            assert ID.match(s.callback) and s.handler.__doc__
